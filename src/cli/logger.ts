// pino on stderr, so stdout stays free for what commands print (URIs,
// info). Synchronous writes: log lines are per connection, not per
// request, unless debug is on.

import { pino, type Logger } from 'pino';
import { UsageError } from './command.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function createLogger(level: string): Logger {
  if (!LOG_LEVELS.includes(level)) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  return pino(
    { name: 'vblk', level, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 2, sync: true }),
  );
}
