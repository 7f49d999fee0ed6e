// The journal filter: every write, trim, zero and flush that passes is
// appended to a log file (device/journal/codec.ts) with a sequence number
// and its data, so `vblk journal` can list it, replay it up to a mark and
// build the states a power cut may leave.
//
// The order rule (dm-log-writes'): an entry is logged when its request
// COMPLETES on the device below, so seq order is an order the device
// really could have applied the requests in. A flush records `covers`,
// the highest seq logged when it began: those entries, and only those,
// are durable once the flush completed; the flush entry itself is
// appended when the flush completes. A write still in flight when a flush
// began is not covered, even if it completes before the flush does.
//
// Durability follows the request's: a FUA request, a flush and a mark
// complete only after their entries (and all before them) are
// fdatasync'd; other entries go out in batches without waiting.

import type { BlockDevice, Request } from '../types.js';
import { encodeFrame, JOURNAL_FORMAT, JOURNAL_VERSION, type JournalEntry } from '../journal/codec.js';
import { JournalLogFile } from '../journal/log-file.js';
import { Passthrough } from './passthrough.js';

export interface JournalConfig {
  /** The log file: created, or truncated if it exists. */
  file: string;
}

export interface JournalStats {
  file: string;
  /** The last seq given out (0: none). */
  seq: number;
  writes: number;
  trims: number;
  zeroes: number;
  flushes: number;
  marks: number;
  /** Bytes of the log file. */
  bytes: number;
}

/** An entry before it has its seq. */
type Unsequenced = JournalEntry extends infer E ? (E extends JournalEntry ? Omit<E, 'seq'> : never) : never;

export class JournalFilter extends Passthrough {
  readonly filterName = 'journal';
  private readonly log: JournalLogFile;
  private seq = 0;
  private readonly counts = { write: 0, trim: 0, zero: 0, flush: 0, mark: 0 };

  constructor(next: BlockDevice, config: JournalConfig) {
    super(next);
    this.log = new JournalLogFile(config.file, encodeFrame({ type: 'header', format: JOURNAL_FORMAT, version: JOURNAL_VERSION, size: next.size, created: Date.now() }));
  }

  override get description(): string {
    return `${this.next.description}, journal to ${this.log.path}`;
  }

  /** Logs an entry with the next seq; durable before it resolves when `durable`. */
  private async record(entry: Unsequenced, durable: boolean): Promise<number> {
    const seq = ++this.seq;
    this.counts[entry.type]++;
    await this.log.append(encodeFrame({ ...entry, seq } as JournalEntry));
    if (durable) await this.log.sync();
    return seq;
  }

  override async write(req: Request): Promise<void> {
    // The data is copied: the caller may reuse its buffer once the write completes.
    const data = Buffer.from(req.data!);
    await this.next.write(req);
    await this.record({ type: 'write', offset: req.offset, data, fua: req.fua }, req.fua);
  }

  protected override async writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    const data = Buffer.concat(from);
    await this.next.writeFrom!(req, from);
    await this.record({ type: 'write', offset: req.offset, data, fua: req.fua }, req.fua);
  }

  override async trim(req: Request): Promise<void> {
    await this.next.trim(req);
    await this.record({ type: 'trim', offset: req.offset, length: req.length, fua: req.fua, noHole: false }, req.fua);
  }

  override async writeZeroes(req: Request): Promise<void> {
    await this.next.writeZeroes(req);
    await this.record({ type: 'zero', offset: req.offset, length: req.length, fua: req.fua, noHole: req.noHole }, req.fua);
  }

  override async flush(): Promise<void> {
    const covers = this.seq;
    await this.next.flush();
    await this.record({ type: 'flush', covers }, true);
  }

  /** Logs a named mark after everything logged so far (`vblk journal replay --to NAME`); durable when it resolves. */
  async mark(name: string): Promise<{ seq: number }> {
    return { seq: await this.record({ type: 'mark', name }, true) };
  }

  stats(): JournalStats {
    const c = this.counts;
    return { file: this.log.path, seq: this.seq, writes: c.write, trims: c.trim, zeroes: c.zero, flushes: c.flush, marks: c.mark, bytes: this.log.appended };
  }

  override async close(): Promise<void> {
    try {
      await this.log.close();
    } finally {
      await this.next.close();
    }
  }
}
