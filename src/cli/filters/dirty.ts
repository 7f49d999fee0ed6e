// --filter dirty: bitmap=NAME (several joined by +) started at open,
// granularity=SIZE (64 KiB, as QEMU's default).

import { DEFAULT_GRANULARITY, DirtyFilter, type DirtyConfig } from '../../device/filters/dirty.js';
import type { FilterParams } from '../filter-params.js';
import type { FilterKind } from '../filters.js';

function parse(params: FilterParams): DirtyConfig {
  const config: DirtyConfig = { bitmaps: [], granularity: DEFAULT_GRANULARITY };
  for (const [key, value] of params.entries()) {
    switch (key) {
      case 'bitmap': {
        const names = value.split('+');
        if (names.some((n) => n === '')) throw params.error(`bitmap needs a name (several joined by +)`);
        if (new Set(names).size !== names.length) throw params.error(`bitmap names a bitmap twice`);
        config.bitmaps = names;
        break;
      }
      case 'granularity': {
        const g = params.size(key, value);
        if (g < 512 || g > 2 ** 31 || (g & (g - 1)) !== 0) throw params.error(`granularity must be a power of two from 512 to 2G, not '${value}'`);
        config.granularity = g;
        break;
      }
      default:
        throw params.unknown(key);
    }
  }
  return config;
}

export const dirtyFilter: FilterKind<DirtyConfig> = {
  name: 'dirty',
  help: `  dirty   named dirty bitmaps, in memory, marking what is written, trimmed
          or zeroed; served as NBD meta contexts qemu:dirty-bitmap:NAME.
          bitmap=NAME (several joined by +; started at open; none),
          granularity=SIZE (a power of two, 512 to 2G; 64K)
`,
  parse,
  create: (next, config) => new DirtyFilter(next, config),
};
