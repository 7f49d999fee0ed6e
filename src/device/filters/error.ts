// The error filter: requests that match its rule fail with the rule's error
// and never reach the device; everything else passes through unchanged
// (nbdkit's error filter, plus a byte range, a count and a delay in
// requests). A rule matches by operation and by overlap with its range;
// among the matching requests it skips the first `after`, then fails each
// with probability `rate` (a seeded generator: the same seed fails the
// same requests of the same sequence), at most `count` times. The rule
// can be replaced or cleared while the filter serves (the control socket):
// its counts start again.

import { DeviceError, type ErrorCode } from '../errors.js';
import { prng } from '../seeded-random.js';
import { overlaps, request, type BlockDevice, type ReadSegment, type Request } from '../types.js';
import { Passthrough } from './passthrough.js';

export type FilteredOp = 'read' | 'write' | 'flush' | 'trim' | 'zero';

export interface ErrorRule {
  /** Operations the rule covers. */
  ops: ReadonlySet<FilteredOp>;
  /** Byte range [offset, offset + length); a flush has no range and matches any. */
  offset: number;
  length: number;
  error: ErrorCode;
  /** Probability that a matching request fails, 0 to 1. */
  rate: number;
  seed: number;
  /** Fail at most this many requests (Infinity: no limit). */
  count: number;
  /** Let this many matching requests through first. */
  after: number;
}

const OP_OF: Partial<Record<Request['op'], FilteredOp>> = { read: 'read', write: 'write', flush: 'flush', trim: 'trim', writeZeroes: 'zero' };

export class ErrorFilter extends Passthrough {
  readonly filterName = 'error';
  private rule: ErrorRule | null = null;
  private random = prng(0);
  private seen = 0;
  private failed = 0;

  constructor(next: BlockDevice, rule: ErrorRule) {
    super(next);
    this.configure(rule);
  }

  /** Replaces the rule (null: fail nothing) and starts its counts and random sequence again. */
  configure(rule: ErrorRule | null): void {
    this.rule = rule;
    this.random = prng(rule?.seed ?? 0);
    this.seen = 0;
    this.failed = 0;
  }

  override get description(): string {
    return `${this.next.description}, error filter`;
  }

  /** Throws the rule's error for a request it fails; lets the others through. */
  private check(req: Request): void {
    const op = OP_OF[req.op];
    const r = this.rule;
    if (!r || !op || !r.ops.has(op)) return;
    if (op !== 'flush' && !overlaps(req, r.offset, r.length)) return;
    if (this.seen++ < r.after || this.failed >= r.count) return;
    if (r.rate < 1 && this.random() >= r.rate) return;
    this.failed++;
    throw new DeviceError(r.error, `error filter: ${req.op} at ${req.offset}+${req.length} fails with ${r.error}`);
  }

  override async read(req: Request): Promise<ReadSegment[]> {
    this.check(req);
    return this.next.read(req);
  }

  protected override async readIntoNext(req: Request, into: Buffer[]): Promise<void> {
    this.check(req);
    return this.next.readInto!(req, into);
  }

  override async write(req: Request): Promise<void> {
    this.check(req);
    return this.next.write(req);
  }

  protected override async writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    this.check(req);
    return this.next.writeFrom!(req, from);
  }

  override async flush(): Promise<void> {
    this.check(request('flush', 0, 0));
    return this.next.flush();
  }

  override async trim(req: Request): Promise<void> {
    this.check(req);
    return this.next.trim(req);
  }

  override async writeZeroes(req: Request): Promise<void> {
    this.check(req);
    return this.next.writeZeroes(req);
  }
}
