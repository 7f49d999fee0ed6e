// How many connections fit under the open-file limit, and a log of the
// ones turned away. At EMFILE libuv accepts and closes connections
// without a word (it keeps a spare descriptor for that), so the server
// stops short of the limit itself: each connection costs one descriptor,
// and the cap is the limit minus what is open once the exports and
// listeners are (images, rings, the event loop's own) minus a reserve for
// what opens later. Connections past the cap are closed at once and
// logged at most once per DROP_LOG_INTERVAL_MS with their count, so a
// flood of them cannot flood the log.

import fs from 'node:fs';
import { openFileLimit } from '../sys/syscalls.js';

/** Descriptors kept free for what the server opens after it starts listening. */
export const DESCRIPTOR_RESERVE = 32;
export const DROP_LOG_INTERVAL_MS = 1000;

/** Descriptors this process has open (null where it cannot tell). */
function openDescriptors(): number | null {
  for (const dir of ['/proc/self/fd', '/dev/fd']) {
    try {
      return fs.readdirSync(dir).length;
    } catch {
      // Try the next; neither means no count.
    }
  }
  return null;
}

/** The most connections to hold at once; Infinity where the limit cannot be read or there is none. */
export function connectionLimit(): number {
  let limit: number;
  try {
    limit = openFileLimit();
  } catch {
    return Infinity;
  }
  const open = openDescriptors();
  if (!Number.isFinite(limit) || open === null) return Infinity;
  return Math.max(0, limit - open - DESCRIPTOR_RESERVE);
}

/**
 * Counts dropped connections and reports them through `report` (how
 * many since the last report, and in all): the first at once, then what
 * came since, at most once an interval.
 */
export class DropLog {
  private unreported = 0;
  private total = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly report: (dropped: number, total: number) => void,
    private readonly intervalMs = DROP_LOG_INTERVAL_MS,
  ) {}

  drop(): void {
    this.unreported++;
    this.total++;
    if (!this.timer) this.flush();
  }

  /** Reports what is left and stops the timer. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.unreported > 0) this.report(this.unreported, this.total);
    this.unreported = 0;
  }

  private readonly flush = (): void => {
    if (this.unreported === 0) {
      this.timer = null;
      return;
    }
    this.report(this.unreported, this.total);
    this.unreported = 0;
    this.timer = setTimeout(this.flush, this.intervalMs);
    this.timer.unref();
  };
}
