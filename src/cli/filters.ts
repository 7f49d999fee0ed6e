// --filter NAME[:key=value,...]: the lab filters of device/filters/, as the
// command line names them (nbdkit's parameter names where a filter matches
// one of nbdkit's). Each filter's parameters are parsed in cli/filters/,
// every key and value up front, so a mistake is a usage error before
// anything is opened; stacking wraps the image so that the first filter
// given is the one nearest the client.

import type { BlockDevice } from '../device/types.js';
import { UsageError } from './command.js';
import { FilterParams } from './filter-params.js';
import { delayFilter } from './filters/delay.js';
import { dirtyFilter } from './filters/dirty.js';
import { errorFilter } from './filters/error.js';
import { journalFilter } from './filters/journal.js';
import { powerCutFilter } from './filters/power-cut.js';
import { rateFilter } from './filters/rate.js';

/** One kind of filter as the command line knows it: its help, its parameters, how to make one. */
export interface FilterKind<Config> {
  name: string;
  /** Lines for `vblk serve --help`. */
  help: string;
  parse(params: FilterParams): Config;
  create(next: BlockDevice, config: Config): BlockDevice;
}

/** One --filter, parsed. */
export interface FilterSpec {
  name: string;
  /** As given. */
  text: string;
  /** The parameters, parsed: what a live filter of this kind takes in configure(). */
  config: unknown;
  /** A new filter of this spec over `next`. */
  create(next: BlockDevice): BlockDevice;
}

const KINDS: readonly FilterKind<never>[] = [errorFilter, delayFilter, rateFilter, powerCutFilter, journalFilter, dirtyFilter] as FilterKind<never>[];

export const FILTER_HELP = `Filters (--filter NAME[:key=value,...], repeatable; the first given is
nearest the client; a --filter before any --export applies to every
export, one after --export NAME=FILE only to NAME):
${KINDS.map((k) => k.help).join('')}`;

/** Parses one --filter argument. */
export function parseFilter(text: string): FilterSpec {
  const colon = text.indexOf(':');
  const name = colon < 0 ? text : text.slice(0, colon);
  const kind = KINDS.find((k) => k.name === name) as FilterKind<unknown> | undefined;
  if (!kind) throw new UsageError(`--filter ${text}: unknown filter '${name}' (filters: ${KINDS.map((k) => k.name).join(', ')})`);
  const config = kind.parse(new FilterParams(colon < 0 ? '' : text.slice(colon + 1), text));
  return { name, text, config, create: (next) => kind.create(next, config) };
}

/** The --filter text each filter was made from (for the control socket's listings). */
const texts = new WeakMap<BlockDevice, string>();

export function filterText(filter: BlockDevice): string | undefined {
  return texts.get(filter);
}

/** The image under its filters, the first of `filters` nearest the client. */
export function applyFilters(device: BlockDevice, filters: readonly FilterSpec[]): BlockDevice {
  let top = device;
  for (const f of [...filters].reverse()) {
    top = f.create(top);
    texts.set(top, f.text);
  }
  return top;
}
