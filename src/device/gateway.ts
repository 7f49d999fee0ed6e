// The gateway stands between the protocols and the devices. It checks a
// request once (read-only, range, size), keeps overlapping requests in
// order, fills in what a device lacks (zeroing by writing zero buffers,
// flush on a read-only export, a contiguous read where the device
// returned holes) and turns every failure into a DeviceError. Devices
// behind it may assume a request is valid.
// The control socket can pause a gateway (new requests wait, running ones
// finish) to switch the image under a live export, and retire one (every
// request fails with ESHUTDOWN) when its export is removed. It keeps
// counts of what it served for `vblk ctl stats`.

import { DeviceError, toDeviceError } from './errors.js';
import { OverlapQueue, type Ticket } from '../io/overlap-queue.js';
import { writeZeroes } from './write-zeroes.js';
import { joinSegments, scatterSegments, totalLength, type BlockDevice, type Capabilities, type Extent, type ReadSegment, type Request, type Result } from './types.js';

function isMutating(op: Request['op']): boolean {
  return op === 'write' || op === 'trim' || op === 'writeZeroes';
}

/** What a gateway has served, for the control socket's stats. */
export interface GatewayStats {
  requests: Record<Request['op'], number>;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
  inFlight: number;
}

export class Gateway {
  private readonly order = new OverlapQueue();
  private running = 0;
  private idleWaiters: (() => void)[] = [];
  /** Set while paused: new requests wait for it. */
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;
  private retired = false;
  private readonly counts: Omit<GatewayStats, 'inFlight'> = {
    requests: { read: 0, write: 0, flush: 0, trim: 0, writeZeroes: 0, cache: 0, blockStatus: 0, getId: 0 },
    errors: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };

  constructor(
    readonly device: BlockDevice,
    /** The device's identity for virtio-blk's GET_ID (at most 20 bytes are sent). */
    readonly id = '',
  ) {}

  get size(): number {
    return this.device.size;
  }

  get capabilities(): Capabilities {
    return this.device.capabilities;
  }

  /** Resolves once no request is running, so the device can be closed safely. */
  drain(): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** New requests wait until resume(); resolves once the running ones have finished. */
  pause(): Promise<void> {
    this.gate ??= new Promise((resolve) => (this.openGate = resolve));
    return this.drain();
  }

  resume(): void {
    this.openGate?.();
    this.gate = this.openGate = null;
  }

  /** Every request from now on fails with ESHUTDOWN (its export is gone); resolves once the running ones have finished. */
  retire(): Promise<void> {
    this.retired = true;
    this.resume();
    return this.drain();
  }

  stats(): GatewayStats {
    return { ...this.counts, requests: { ...this.counts.requests }, inFlight: this.running };
  }

  /**
   * Runs a request. A read answered with file segments (sendFile) stays
   * running, and keeps overlapping writes waiting, until the caller calls
   * its result's release.
   */
  async execute(req: Request): Promise<Result> {
    if (this.gate) await this.gate;
    if (this.retired) throw new DeviceError('ESHUTDOWN', 'the export has been removed');
    this.check(req);
    this.counts.requests[req.op]++;
    this.running++;
    let held = false;
    try {
      const result = await this.admit(req);
      if (req.op === 'read') this.counts.bytesRead += req.length;
      else if (req.op === 'write') this.counts.bytesWritten += req.length;
      held = result.op === 'read' && result.release !== undefined;
      return result;
    } catch (err) {
      this.counts.errors++;
      throw err;
    } finally {
      if (!held) this.finished();
    }
  }

  /**
   * Runs a read now when it needs no waiting: the device answers it at once
   * (data in the page cache) and no earlier overlapping write is running.
   * Null when it would wait, or fail: execute() then does it all. Saves
   * the promises of execute() on the common path (4 KiB reads at depth 1:
   * a dozen promises per request).
   */
  tryExecute(req: Request): Result | null {
    if (req.op !== 'read' || req.length === 0 || req.into || !this.device.tryRead || this.gate || this.retired) return null;
    try {
      this.check(req);
    } catch {
      return null;
    }
    const ticket = this.order.tryAcquire(req.offset, req.length, false);
    if (!ticket) return null;
    let segments: ReadSegment[] | null = null;
    try {
      segments = this.device.tryRead(req);
    } catch {
      // execute() reads again and reports the failure.
    }
    if (!segments) {
      this.order.release(ticket);
      return null;
    }
    this.counts.requests.read++;
    this.counts.bytesRead += req.length;
    const result = readResult(req, segments);
    if (!result.segments.some((s) => s.file)) {
      this.order.release(ticket);
      return result;
    }
    this.running++;
    return this.held(result, ticket);
  }

  private finished(): void {
    if (--this.running === 0) this.idleWaiters.splice(0).forEach((wake) => wake());
  }

  private async admit(req: Request): Promise<Result> {
    if (req.op === 'flush') {
      if (!this.capabilities.readOnly) await this.guard(this.device.flush());
      return { op: 'flush' };
    }
    if (req.op === 'getId') return { op: 'getId', id: this.id };
    if (req.length === 0) return this.empty(req);
    const admitted = this.order.acquire(req.offset, req.length, isMutating(req.op));
    const ticket: Ticket = admitted instanceof Promise ? await admitted : admitted;
    let held = false;
    try {
      const result = await this.guard(this.run(req));
      if (result.op !== 'read' || !result.segments.some((s) => s.file)) return result;
      held = true;
      return this.held(result, ticket);
    } finally {
      if (!held) this.order.release(ticket);
    }
  }

  /** A read answered with file segments keeps its range, and counts as running, until the caller releases it. */
  private held(result: Result & { op: 'read' }, ticket: Ticket): Result {
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.order.release(ticket);
      this.finished();
    };
    return { ...result, release };
  }

  /** A buffer for a WRITE payload of `size` bytes, from the device where it has them (aligned for direct I/O). */
  payloadBuffer(size: number): Buffer {
    return this.device.payloadBuffer?.(size) ?? Buffer.allocUnsafe(size);
  }

  /** A read's data or a write's payload is no longer used: the device may reuse its buffer. */
  recycle(buffer: Buffer): void {
    this.device.recycle?.(buffer);
  }

  private check(req: Request): void {
    const { op, offset, length } = req;
    if (isMutating(op) && this.capabilities.readOnly) throw new DeviceError('EPERM', 'the export is read-only');
    if (op === 'flush' || op === 'getId') return;
    if (offset > this.size || length > this.size - offset) {
      const what = `${op} of ${length} bytes at offset ${offset}`;
      const code = op === 'write' || op === 'writeZeroes' ? 'ENOSPC' : 'EINVAL';
      throw new DeviceError(code, `${what} goes past the end of the ${this.size}-byte export`);
    }
    const max = this.capabilities.blockSizes.maximum;
    if ((op === 'read' || op === 'write') && length > max) {
      throw new DeviceError('EINVAL', `${op} of ${length} bytes exceeds the maximum of ${max}`);
    }
    if (op === 'blockStatus' && length === 0) throw new DeviceError('EINVAL', 'block status of zero bytes');
    if (op === 'write' && (req.from ? totalLength(req.from) : req.data?.length) !== length) {
      throw new DeviceError('EINVAL', 'write payload length mismatch');
    }
    if (op === 'read' && req.into && totalLength(req.into) !== length) throw new DeviceError('EINVAL', 'read destination length mismatch');
  }

  private empty(req: Request): Result {
    return req.op === 'read' ? { op: 'read', segments: [] } : ({ op: req.op } as Result);
  }

  private async run(req: Request): Promise<Result> {
    const caps = this.capabilities;
    switch (req.op) {
      case 'read': {
        if (req.into) {
          await this.readInto(req, req.into);
          return { op: 'read', segments: [] };
        }
        // Filters may look at or change what they read: file segments come only from an image served as it is.
        return readResult(req, await this.device.read(req.sendFile && this.device.next ? { ...req, sendFile: false } : req));
      }
      case 'write':
        if (req.from && this.device.writeFrom) await this.device.writeFrom(req, req.from);
        else await this.device.write(req.from ? { ...req, data: Buffer.concat(req.from) } : req);
        return { op: 'write' };
      case 'trim':
        if (caps.trim) await this.device.trim(req);
        return { op: 'trim' };
      case 'writeZeroes':
        await writeZeroes(this.device, req);
        return { op: 'writeZeroes' };
      case 'cache':
        if (caps.cache) await this.device.cache(req);
        return { op: 'cache' };
      case 'blockStatus':
        return { op: 'blockStatus', extents: oneOrMore(req, await this.device.blockStatus(req)) };
      default:
        throw new DeviceError('EINVAL', `unknown operation ${String(req.op)}`);
    }
  }

  /** A read into the request's buffers: straight in where the device can, else read and copied. */
  private async readInto(req: Request, into: Buffer[]): Promise<void> {
    if (this.device.readInto) return this.device.readInto(req, into);
    const segments = await this.device.read(req);
    scatterSegments(req.offset, into, segments);
    for (const s of segments) if (s.data) this.device.recycle?.(s.data);
  }

  private async guard<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      throw toDeviceError(err);
    }
  }
}

/** A read's result: with df, one data segment (unless the data is left in the file). */
function readResult(req: Request, segments: ReadSegment[]): Result & { op: 'read' } {
  const whole = req.df && !segments.some((s) => s.file);
  return { op: 'read', segments: whole ? contiguous(req, segments) : segments };
}

/** One data segment covering the whole request, zero-filling any holes. */
function contiguous(req: Request, segments: ReadSegment[]): ReadSegment[] {
  return [{ offset: req.offset, length: req.length, data: joinSegments(req.offset, req.length, segments) }];
}

/** At least one extent, and with reqOne exactly one no longer than the request. */
function oneOrMore(req: Request, extents: Extent[]): Extent[] {
  if (extents.length === 0) return [{ length: req.length, hole: false, zero: false }];
  if (!req.reqOne) return extents;
  const first = extents[0];
  return [{ ...first, length: Math.min(first.length, req.length) }];
}
