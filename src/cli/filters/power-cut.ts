// --filter power-cut: its parameters (the defaults of a cut that names
// none, and the bound on the volatile layer).

import { PowerCutFilter, type CutPolicy, type PowerCutConfig } from '../../device/filters/power-cut.js';
import type { FilterParams } from '../filter-params.js';
import type { FilterKind } from '../filters.js';

const POLICIES: readonly CutPolicy[] = ['all', 'random', 'torn'];
const MIN_DIRTY = 1 << 20;

function config(params: FilterParams): PowerCutConfig {
  const config: PowerCutConfig = { policy: 'all', seed: null, maxDirty: 256 << 20 };
  for (const [key, value] of params.entries()) {
    switch (key) {
      case 'policy':
        if (!POLICIES.includes(value as CutPolicy)) throw params.error(`policy must be ${POLICIES.join(', ')}, not '${value}'`);
        config.policy = value as CutPolicy;
        break;
      case 'seed':
        config.seed = params.count(key, value);
        if (config.seed >= 2 ** 32) throw params.error(`seed must be below 2^32, not ${value}`);
        break;
      case 'max-dirty':
        config.maxDirty = params.size(key, value);
        if (config.maxDirty < MIN_DIRTY) throw params.error(`max-dirty must be at least 1M, not '${value}'`);
        break;
      default:
        throw params.unknown(key);
    }
  }
  return config;
}

export const powerCutFilter: FilterKind<PowerCutConfig> = {
  name: 'power-cut',
  help: `  power-cut  a disk with a volatile write cache: writes, trims and zero
          writes since the last flush are held in memory (reads see them),
          FUA ones go to the image at once, a flush writes them down; a cut
          (vblk ctl ... power-cut) drops them as a power loss would and
          serving goes on. flush is advertised even over memory:.
          policy=all|random|torn (a cut's default: drop everything; keep a
          seeded random half of the requests, whole; keep a random half of
          their 512-byte sectors; all), seed=N (a cut's default seed; a new
          one each cut, reported), max-dirty=SIZE (memory the cache may
          hold; when full the oldest requests are written back first, as a
          disk's cache does; 256M)
`,
  parse: config,
  create: (next, config) => new PowerCutFilter(next, config),
};
