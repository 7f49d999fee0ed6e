// The rate filter: limits of bytes per second (all data, or reads and
// writes apart) and of requests per second for one export. Each limit is
// a token bucket kept as the time its tokens run out (GCRA): a request of
// cost c is released when the bucket has c tokens, a tenth of a second of
// burst at most, and moves that time on by c / rate. Release times only
// grow, so requests go on in the order they came (FIFO); none ever fails.
// A request under no limit calls the next device directly.

import type { BlockDevice, ReadSegment, Request } from '../types.js';
import { Passthrough } from './passthrough.js';
import { waitUntil } from './wait-until.js';

export interface RateConfig {
  /** Bytes per second of reads and writes together (0: no limit). */
  bytes: number;
  /** Bytes per second of reads only, of writes only (0: no limit). */
  readBytes: number;
  writeBytes: number;
  /** Requests per second of any operation (0: no limit). */
  requests: number;
}

/** Seconds of tokens a bucket holds when it has been idle. */
const BURST_SECONDS = 0.1;

/** One limit: the time (ms, performance.now()) by which the tokens taken so far are paid for; full when that is past. */
class Bucket {
  private paidAt = 0;

  constructor(private readonly perSecond: number) {}

  /** Takes `cost` tokens; the time they are there (≤ now: at once). */
  take(cost: number, now: number): number {
    this.paidAt = Math.max(this.paidAt, now) + (cost / this.perSecond) * 1000;
    return this.paidAt - BURST_SECONDS * 1000;
  }
}

const bucket = (perSecond: number): Bucket | null => (perSecond > 0 ? new Bucket(perSecond) : null);

export class RateFilter extends Passthrough {
  readonly filterName = 'rate';
  private bytes: Bucket | null = null;
  private readBytes: Bucket | null = null;
  private writeBytes: Bucket | null = null;
  private requests: Bucket | null = null;

  constructor(next: BlockDevice, config: RateConfig) {
    super(next);
    this.configure(config);
  }

  /** Replaces the limits (null: none) with full buckets; requests already waiting keep their times. */
  configure(config: RateConfig | null): void {
    this.bytes = bucket(config?.bytes ?? 0);
    this.readBytes = bucket(config?.readBytes ?? 0);
    this.writeBytes = bucket(config?.writeBytes ?? 0);
    this.requests = bucket(config?.requests ?? 0);
  }

  override get description(): string {
    return `${this.next.description}, rate filter`;
  }

  /** Runs `go` when every limit the request is under lets it through. */
  private when<T>(bytes: number, direction: Bucket | null, go: () => Promise<T>): Promise<T> {
    if (!this.requests && !(bytes && (this.bytes || direction))) return go();
    const now = performance.now();
    let at = this.requests ? this.requests.take(1, now) : now;
    if (bytes && this.bytes) at = Math.max(at, this.bytes.take(bytes, now));
    if (bytes && direction) at = Math.max(at, direction.take(bytes, now));
    return at > now ? waitUntil(at).then(go) : go();
  }

  override read(req: Request): Promise<ReadSegment[]> {
    return this.when(req.length, this.readBytes, () => this.next.read(req));
  }

  protected override readIntoNext(req: Request, into: Buffer[]): Promise<void> {
    return this.when(req.length, this.readBytes, () => this.next.readInto!(req, into));
  }

  override write(req: Request): Promise<void> {
    return this.when(req.length, this.writeBytes, () => this.next.write(req));
  }

  protected override writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    return this.when(req.length, this.writeBytes, () => this.next.writeFrom!(req, from));
  }

  override flush(): Promise<void> {
    return this.when(0, null, () => this.next.flush());
  }

  override trim(req: Request): Promise<void> {
    return this.when(0, null, () => this.next.trim(req));
  }

  override writeZeroes(req: Request): Promise<void> {
    return this.when(0, null, () => this.next.writeZeroes(req));
  }

  override cache(req: Request): Promise<void> {
    return this.when(0, null, () => this.next.cache(req));
  }
}
