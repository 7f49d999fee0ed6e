// --filter error: its parameters (nbdkit's error filter names, plus a
// byte range, count and after).

import type { ErrorCode } from '../../device/errors.js';
import { ErrorFilter, type ErrorRule, type FilteredOp } from '../../device/filters/error.js';
import type { FilterParams } from '../filter-params.js';
import type { FilterKind } from '../filters.js';

const ERRORS: readonly ErrorCode[] = ['EIO', 'ENOSPC', 'EPERM', 'ENOMEM', 'EINVAL', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN'];
const OPS: readonly FilteredOp[] = ['read', 'write', 'flush', 'trim', 'zero'];

function rule(params: FilterParams): ErrorRule {
  const rule: ErrorRule = { ops: new Set(OPS), offset: 0, length: Number.MAX_SAFE_INTEGER, error: 'EIO', rate: 1, seed: 0, count: Infinity, after: 0 };
  const keys = new Set<string>();
  for (const [key, value] of params.entries()) {
    // errno is the and dm-flakey's word for nbdkit's error=.
    const name = key === 'errno' ? 'error' : key;
    if (keys.has(name)) throw params.error(`error and errno name the same thing: give one`);
    keys.add(name);
    switch (name) {
      case 'op': {
        const ops = value.split('+');
        if (ops.includes('any')) break;
        for (const op of ops) if (!OPS.includes(op as FilteredOp)) throw params.error(`op must be ${OPS.join(', ')} or any, not '${op}'`);
        rule.ops = new Set(ops as FilteredOp[]);
        break;
      }
      case 'offset':
        rule.offset = params.size(key, value);
        break;
      case 'length':
        rule.length = params.size(key, value);
        if (rule.length === 0) throw params.error(`length must be above 0`);
        break;
      case 'error':
        if (!ERRORS.includes(value as ErrorCode)) throw params.error(`${key} must be one of ${ERRORS.join(', ')}, not '${value}'`);
        rule.error = value as ErrorCode;
        break;
      case 'error-rate':
        rule.rate = params.probability(key, value);
        break;
      case 'seed':
        rule.seed = params.count(key, value);
        break;
      case 'count':
        rule.count = params.count(key, value);
        break;
      case 'after':
        rule.after = params.count(key, value);
        break;
      default:
        throw params.unknown(key);
    }
  }
  return rule;
}

export const errorFilter: FilterKind<ErrorRule> = {
  name: 'error',
  help: `  error   requests that match fail with an error and change nothing.
          op=read|write|flush|trim|zero|any (several joined by +; any),
          offset=SIZE, length=SIZE (the range a request must overlap;
          the whole disk), error=EIO|ENOSPC|EPERM|ENOMEM|EINVAL|EOVERFLOW|
          ENOTSUP|ESHUTDOWN (or errno=; EIO), error-rate=P (0 to 1 or N%;
          1: always), seed=N (for error-rate; 0), count=N (fail at most N;
          no limit), after=N (let the first N matching requests through; 0)
`,
  parse: rule,
  create: (next, config) => new ErrorFilter(next, config),
};
