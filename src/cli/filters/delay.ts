// --filter delay: its parameters. nbdkit's delay filter names (rdelay,
// wdelay, delay-read, ...) and the short ones (read=5ms, any=...)
// name the same delays; a specific operation's delay wins over any=.

import { DELAYED_OPS, DelayFilter, type DelayConfig, type DelayedOp } from '../../device/filters/delay.js';
import type { FilterParams } from '../filter-params.js';
import type { FilterKind } from '../filters.js';

/** Every key that sets one operation's delay, and the operation. */
const OP_KEYS: Record<string, DelayedOp> = { rdelay: 'read', wdelay: 'write' };
for (const op of DELAYED_OPS) OP_KEYS[op] = OP_KEYS[`delay-${op}`] = op;

function config(params: FilterParams): DelayConfig {
  const config: DelayConfig = { delays: {}, jitter: 0, seed: 0, offset: 0, length: Number.MAX_SAFE_INTEGER };
  let any = 0;
  for (const [key, value] of params.entries()) {
    const op = OP_KEYS[key];
    if (op) {
      if (config.delays[op] !== undefined) throw params.error(`${key} sets the ${op} delay a second time`);
      config.delays[op] = params.duration(key, value);
      continue;
    }
    switch (key) {
      case 'any':
        any = params.duration(key, value);
        break;
      case 'jitter':
        config.jitter = params.duration(key, value);
        break;
      case 'seed':
        config.seed = params.count(key, value);
        break;
      case 'offset':
        config.offset = params.size(key, value);
        break;
      case 'length':
        config.length = params.size(key, value);
        if (config.length === 0) throw params.error(`length must be above 0`);
        break;
      default:
        throw params.unknown(key);
    }
  }
  for (const op of DELAYED_OPS) config.delays[op] ??= any;
  return config;
}

export const delayFilter: FilterKind<DelayConfig> = {
  name: 'delay',
  help: `  delay   each request of a delayed operation waits before it reaches the
          image, on its own timer (concurrent requests wait side by side).
          read=, write=, flush=, trim=, zero=, cache=, extents= (or nbdkit's
          rdelay=, wdelay=, delay-read=, delay-write=, ...), any= (every
          operation not named): DURATION such as 5ms, 200us, 1s, 0.5 (a bare
          number is seconds; at least that, timers add up to ~1 ms; 0: none),
          jitter=DURATION (each delay uniform in [d - jitter, d + jitter],
          at least 0; 0), seed=N (for jitter; 0), offset=SIZE, length=SIZE
          (only requests overlapping the range wait; the whole disk)
`,
  parse: config,
  create: (next, config) => new DelayFilter(next, config),
};
