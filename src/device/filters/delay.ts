// The delay filter: each request of a delayed operation waits its delay
// before it goes to the next device, as a slow disk's latency would
// (nbdkit's delay filter, plus jitter and a byte range). Every request
// waits on its own timer, so concurrent requests overlap their waits and
// are not serialised. Jitter is uniform in [delay - jitter, delay +
// jitter] (never below 0), drawn from a seeded generator. An operation
// with no delay calls the next device directly: no timer, no promise.
// A request waits at least its delay, measured from its arrival (timers
// have millisecond resolution: it may wait up to about a millisecond more).

import { prng } from '../seeded-random.js';
import { overlaps, type BlockDevice, type Extent, type ReadSegment, type Request } from '../types.js';
import { Passthrough } from './passthrough.js';
import { waitUntil } from './wait-until.js';

export type DelayedOp = 'read' | 'write' | 'flush' | 'trim' | 'zero' | 'cache' | 'extents';

export const DELAYED_OPS: readonly DelayedOp[] = ['read', 'write', 'flush', 'trim', 'zero', 'cache', 'extents'];

export interface DelayConfig {
  /** Milliseconds per operation (0 or absent: none). */
  delays: Partial<Record<DelayedOp, number>>;
  /** Uniform spread ± around each delay, milliseconds. */
  jitter: number;
  seed: number;
  /** Byte range [offset, offset + length) a request must overlap to be delayed; a flush has no range and always is. */
  offset: number;
  length: number;
}

export class DelayFilter extends Passthrough {
  readonly filterName = 'delay';
  private config: DelayConfig | null = null;
  private random = prng(0);

  constructor(next: BlockDevice, config: DelayConfig) {
    super(next);
    this.configure(config);
  }

  /** Replaces the delays (null: none) and starts the jitter sequence again. */
  configure(config: DelayConfig | null): void {
    this.config = config;
    this.random = prng(config?.seed ?? 0);
  }

  override get description(): string {
    return `${this.next.description}, delay filter`;
  }

  /** Milliseconds this request waits (0: none). */
  private delayOf(op: DelayedOp, req: Request | null): number {
    const c = this.config;
    const d = c?.delays[op];
    if (!c || !d) return 0;
    if (req && !overlaps(req, c.offset, c.length)) return 0;
    return c.jitter ? Math.max(0, d + c.jitter * (2 * this.random() - 1)) : d;
  }

  /** Runs `go` after the request's delay, or at once when it has none. */
  private after<T>(op: DelayedOp, req: Request | null, go: () => Promise<T>): Promise<T> {
    const ms = this.delayOf(op, req);
    return ms > 0 ? waitUntil(performance.now() + ms).then(go) : go();
  }

  override read(req: Request): Promise<ReadSegment[]> {
    return this.after('read', req, () => this.next.read(req));
  }

  protected override readIntoNext(req: Request, into: Buffer[]): Promise<void> {
    return this.after('read', req, () => this.next.readInto!(req, into));
  }

  override write(req: Request): Promise<void> {
    return this.after('write', req, () => this.next.write(req));
  }

  protected override writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    return this.after('write', req, () => this.next.writeFrom!(req, from));
  }

  override flush(): Promise<void> {
    return this.after('flush', null, () => this.next.flush());
  }

  override trim(req: Request): Promise<void> {
    return this.after('trim', req, () => this.next.trim(req));
  }

  override writeZeroes(req: Request): Promise<void> {
    return this.after('zero', req, () => this.next.writeZeroes(req));
  }

  override cache(req: Request): Promise<void> {
    return this.after('cache', req, () => this.next.cache(req));
  }

  override blockStatus(req: Request): Promise<Extent[]> {
    return this.after('extents', req, () => this.next.blockStatus(req));
  }
}
