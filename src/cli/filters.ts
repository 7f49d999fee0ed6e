// --filter NAME[:key=value,...]: the lab filters of device/filters/, as the
// command line names them (nbdkit's parameter names where a filter matches
// one of nbdkit's). Parsing checks every key and value up front, so a
// mistake is a usage error before anything is opened; stacking wraps the
// image so that the first filter given is the one nearest the client.

import type { ErrorCode } from '../device/errors.js';
import { ErrorFilter, type ErrorRule, type FilteredOp } from '../device/filters/error.js';
import type { BlockDevice } from '../device/types.js';
import { UsageError } from './command.js';
import { parseSize } from './size.js';

export type FilterSpec = { name: 'error'; rule: ErrorRule };

const ERRORS: readonly ErrorCode[] = ['EIO', 'ENOSPC', 'EPERM', 'ENOMEM', 'EINVAL', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN'];
const OPS: readonly FilteredOp[] = ['read', 'write', 'flush', 'trim', 'zero'];

export const FILTER_HELP = `Filters (--filter NAME[:key=value,...], repeatable; the first given is
nearest the client; a --filter before any --export applies to every
export, one after --export NAME=FILE only to NAME):
  error   requests that match fail with an error and change nothing.
          op=read|write|flush|trim|zero|any (several joined by +; any),
          offset=SIZE, length=SIZE (the range a request must overlap;
          the whole disk), error=EIO|ENOSPC|EPERM|ENOMEM|EINVAL|EOVERFLOW|
          ENOTSUP|ESHUTDOWN (EIO), error-rate=P (0 to 1 or N%; 1: always),
          seed=N (for error-rate; 0), count=N (fail at most N; no limit),
          after=N (let the first N matching requests through; 0)
`;

function parseParams(text: string, what: string): Map<string, string> {
  const params = new Map<string, string>();
  if (!text) return params;
  for (const pair of text.split(',')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--filter ${what}: '${pair}' is not key=value`);
    const key = pair.slice(0, eq);
    if (params.has(key)) throw new UsageError(`--filter ${what}: ${key} is given twice`);
    params.set(key, pair.slice(eq + 1));
  }
  return params;
}

function count(text: string, key: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) throw new UsageError(`--filter ${what}: ${key} must be a whole number, not '${text}'`);
  return n;
}

function size(text: string, key: string, what: string): number {
  try {
    return parseSize(text);
  } catch (err) {
    throw new UsageError(`--filter ${what}: ${key}: ${(err as Error).message}`);
  }
}

function rate(text: string, what: string): number {
  const percent = text.endsWith('%');
  const n = Number(percent ? text.slice(0, -1) : text) / (percent ? 100 : 1);
  if (!/^\d+(\.\d+)?%?$/.test(text) || !(n >= 0 && n <= 1)) throw new UsageError(`--filter ${what}: error-rate must be 0 to 1 or 0% to 100%, not '${text}'`);
  return n;
}

function errorRule(params: Map<string, string>, what: string): ErrorRule {
  const rule: ErrorRule = { ops: new Set(OPS), offset: 0, length: Number.MAX_SAFE_INTEGER, error: 'EIO', rate: 1, seed: 0, count: Infinity, after: 0 };
  for (const [key, value] of params) {
    switch (key) {
      case 'op': {
        const ops = value.split('+');
        if (ops.includes('any')) break;
        for (const op of ops) if (!OPS.includes(op as FilteredOp)) throw new UsageError(`--filter ${what}: op must be ${OPS.join(', ')} or any, not '${op}'`);
        rule.ops = new Set(ops as FilteredOp[]);
        break;
      }
      case 'offset':
        rule.offset = size(value, key, what);
        break;
      case 'length':
        rule.length = size(value, key, what);
        if (rule.length === 0) throw new UsageError(`--filter ${what}: length must be above 0`);
        break;
      case 'error':
        if (!ERRORS.includes(value as ErrorCode)) throw new UsageError(`--filter ${what}: error must be one of ${ERRORS.join(', ')}, not '${value}'`);
        rule.error = value as ErrorCode;
        break;
      case 'error-rate':
        rule.rate = rate(value, what);
        break;
      case 'seed':
        rule.seed = count(value, key, what);
        break;
      case 'count':
        rule.count = count(value, key, what);
        break;
      case 'after':
        rule.after = count(value, key, what);
        break;
      default:
        throw new UsageError(`--filter ${what}: unknown key '${key}' (see 'vblk serve --help')`);
    }
  }
  return rule;
}

/** Parses one --filter argument. */
export function parseFilter(text: string): FilterSpec {
  const colon = text.indexOf(':');
  const name = colon < 0 ? text : text.slice(0, colon);
  const params = parseParams(colon < 0 ? '' : text.slice(colon + 1), text);
  if (name === 'error') return { name, rule: errorRule(params, text) };
  throw new UsageError(`--filter ${text}: unknown filter '${name}' (filters: error)`);
}

/** The image under its filters, the first of `filters` nearest the client. */
export function applyFilters(device: BlockDevice, filters: readonly FilterSpec[]): BlockDevice {
  let top = device;
  for (const f of [...filters].reverse()) top = new ErrorFilter(top, f.rule);
  return top;
}
