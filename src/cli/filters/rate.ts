// --filter rate: its parameters. bytes= is bytes per second with a size
// suffix (the rate:bytes=50M); nbdkit's rate=, read-rate= and
// write-rate= are bits per second as nbdkit has them (1M = 2^20 bits here).

import { RateFilter, type RateConfig } from '../../device/filters/rate.js';
import type { FilterParams } from '../filter-params.js';
import type { FilterKind } from '../filters.js';

function config(params: FilterParams): RateConfig {
  const config: RateConfig = { bytes: 0, readBytes: 0, writeBytes: 0, requests: 0 };
  const bits = (key: string, value: string) => params.size(key, value) / 8;
  for (const [key, value] of params.entries()) {
    switch (key) {
      case 'bytes':
        config.bytes = params.size(key, value);
        break;
      case 'read-bytes':
        config.readBytes = params.size(key, value);
        break;
      case 'write-bytes':
        config.writeBytes = params.size(key, value);
        break;
      case 'rate':
        config.bytes = bits(key, value);
        break;
      case 'read-rate':
        config.readBytes = bits(key, value);
        break;
      case 'write-rate':
        config.writeBytes = bits(key, value);
        break;
      case 'requests':
        config.requests = params.count(key, value);
        break;
      default:
        throw params.unknown(key);
    }
  }
  if (params.entries().some(([k]) => k === 'bytes') && params.entries().some(([k]) => k === 'rate')) throw params.error(`bytes and rate both set the limit: give one`);
  return config;
}

export const rateFilter: FilterKind<RateConfig> = {
  name: 'rate',
  help: `  rate    limits per export; requests over a limit wait their turn in the
          order they came (never fail); a burst of 0.1 s of a limit at most.
          bytes=SIZE (bytes/s of reads and writes, e.g. 50M), read-bytes=,
          write-bytes= (bytes/s of one direction), rate=, read-rate=,
          write-rate= (the same in bits/s, nbdkit's names), requests=N (per
          second, any operation); each 0 or absent: no limit
`,
  parse: config,
  create: (next, config) => new RateFilter(next, config),
};
