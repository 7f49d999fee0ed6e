// --filter journal: its one parameter, the log file.

import { JournalFilter, type JournalConfig } from '../../device/filters/journal.js';
import type { FilterParams } from '../filter-params.js';
import type { FilterKind } from '../filters.js';

function config(params: FilterParams): JournalConfig {
  let file: string | undefined;
  for (const [key, value] of params.entries()) {
    if (key !== 'file') throw params.unknown(key);
    if (!value) throw params.error('file must name a file');
    file = value;
  }
  if (file === undefined) throw params.error('file=LOG is required');
  return { file };
}

export const journalFilter: FilterKind<JournalConfig> = {
  name: 'journal',
  help: `  journal every write, trim, zero and flush is appended to a log with its
          data and a sequence number, in the order the requests complete;
          a FUA request or a flush completes once its entries are synced.
          file=LOG (created, or truncated). Read it with 'vblk journal'
`,
  parse: config,
  create: (next, config) => new JournalFilter(next, config),
};
