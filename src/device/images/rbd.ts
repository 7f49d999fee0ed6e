// A BlockDevice over a Ceph RBD image, through librbd (native/rbd/).
// Requests are librbd aio calls; librbd signals finished ones on an
// eventfd the event loop watches (the main addon's watchFd), and each
// wake-up takes every finished request in one drain() call, as the
// io_uring engine takes its completions. Buffers (guest memory included:
// readInto/writeFrom hand librbd the scatter list) are held here until
// their request completes. Read and write buffers come from the shared
// BufferPool and go back to it (recycle) once the reply is written or the
// write done: a fresh 1 MiB buffer per request had V8 running a full
// collection every ~20 requests, half of vblk's CPU on 1 MiB transfers.
//
// FUA is the write and then a flush, which in librbd covers that write;
// FLUSH is rbd_aio_flush. WRITE_ZEROES lets librbd deallocate whole
// objects unless NO_HOLE asks for them allocated (thick provisioning,
// which writes zeroes: so FAST_ZERO with NO_HOLE is refused). Block status
// is rbd_diff_iterate2 with the parent included (a clone's inherited data
// is data); by whole objects where the object map makes that a lookup
// (fast-diff, valid), by extents otherwise. CACHE is accepted and does
// nothing: librbd has no prefetch to ask for.
//
// A writable image takes RBD's exclusive lock and keeps it until closed,
// refusing to hand it over, so a second vblk or a QEMU cannot write the
// image underneath: `lock` says whether the second one fails, waits, or
// (off) shares it as librbd would by default.

import { DeviceError } from '../errors.js';
import { readBuffers } from '../../io/buffer-pool.js';
import { requireNative, type FdWatch } from '../../io/native.js';
import { rbdError, type NativeRbdImage, type RbdImageInfo } from '../../io/rbd-native.js';
import type { BlockDevice, Capabilities, Extent, ReadSegment, Request } from '../types.js';
import { connectCluster, type CephOptions } from './rbd-cluster.js';
import { imageSpec, parseRbdName, type RbdName } from './rbd-name.js';

export type RbdLockMode = 'fail' | 'wait' | 'off';

export interface RbdOpenOptions {
  readOnly: boolean;
  ceph?: CephOptions;
  /** For a writable image: what to do when another client holds its exclusive lock (default fail). */
  lock?: RbdLockMode;
  /** Told once when `lock: 'wait'` starts waiting, with the lock's holders. */
  onLockWait?: (owners: string[]) => void;
  /** Told once when a request finds this client blocklisted (another client broke its lock). */
  onFenced?: () => void;
}

export const RBD_FEATURE_LAYERING = 1;
export const RBD_FEATURE_EXCLUSIVE_LOCK = 4;
export const RBD_FEATURE_OBJECT_MAP = 8;
export const RBD_FEATURE_FAST_DIFF = 16;
const RBD_FLAG_FAST_DIFF_INVALID = 2;

/** Extents one block status request reports at most (NBD clients ask again for the rest). */
const MAX_EXTENTS = 1024;
const LOCK_RETRY_MS = 1000;

interface Pending {
  resolve: (result: number) => void;
  reject: (err: Error) => void;
  /** Keeps the request's buffers alive until librbd is done with them. */
  buffers: Buffer | Buffer[] | null;
}

/** Opens an rbd: image with its own connection to the cluster (shared with other images of the same settings). */
export async function openRbd(spec: string | RbdName, options: RbdOpenOptions): Promise<RbdImage> {
  const name = typeof spec === 'string' ? parseRbdName(spec) : spec;
  const { cluster, release } = await connectCluster(name, options.ceph ?? {});
  let image: NativeRbdImage | null = null;
  try {
    const readOnly = options.readOnly || name.snapshot !== null;
    image = await cluster.open(name.pool, name.namespace, name.image, name.snapshot, readOnly).catch((err) => {
      throw described(err, `rbd:${imageSpec(name)}`, name.snapshot === null ? 'pool or image' : 'pool, image or snapshot');
    });
    const info = await image.info();
    if (!readOnly && options.lock !== 'off') await takeLock(image, info, name, options);
    return new RbdImage(name, image, info, readOnly, release, options.onFenced);
  } catch (err) {
    await image?.close().catch(() => {});
    await release();
    throw rbdError(err);
  }
}

/** An addon error with what it was about, and a hint for the common ones. */
function described(err: unknown, what: string, missing = 'pool or image'): Error {
  const e = rbdError(err) as NodeJS.ErrnoException;
  const hint = e.code === 'ENOENT' ? ` (no such ${missing})` : e.code === 'EACCES' || e.code === 'EPERM' ? ' (the client is not allowed to)' : '';
  e.message = `${what}: ${e.message}${hint}`;
  return e;
}

/**
 * Who holds the image's lock: "client.ID (ADDRESS)" for a holder still
 * watching the image (alive), the bare address for one whose watch has
 * expired (it died without releasing the lock: librbd breaks such a
 * lock, blocklisting the dead client, when asked for it, which is how a
 * disk moves off a failed host).
 */
export async function lockHolders(image: NativeRbdImage): Promise<{ holder: string; alive: boolean }[]> {
  const owners = await image.lockOwners();
  if (owners.length === 0) return [];
  const watchers = await image.watchers();
  return owners.map((owner) => {
    const w = watchers.find((x) => x.address === owner);
    return w ? { holder: `${w.client} (${owner})`, alive: true } : { holder: owner, alive: false };
  });
}

async function liveHolders(image: NativeRbdImage): Promise<string[]> {
  return (await lockHolders(image)).filter((h) => h.alive).map((h) => h.holder);
}

async function takeLock(image: NativeRbdImage, info: RbdImageInfo, name: RbdName, options: RbdOpenOptions): Promise<void> {
  const what = `rbd:${imageSpec(name)}`;
  if ((info.features & RBD_FEATURE_EXCLUSIVE_LOCK) === 0) {
    throw new Error(`${what} has no exclusive-lock feature, so vblk cannot keep a second writer out: ` +
      `enable it (rbd feature enable ${imageSpec(name)} exclusive-lock) or serve it with --rbd-lock off`);
  }
  let told = false;
  for (;;) {
    // A live holder is a writer: librbd would hand it the lock on request, which is what we refuse to cause.
    let holders = await liveHolders(image);
    if (holders.length === 0) {
      try {
        await image.lockAcquire();
        return;
      } catch (err) {
        const e = rbdError(err) as NodeJS.ErrnoException;
        if (e.code !== 'EROFS' && e.code !== 'EBUSY' && e.code !== 'EAGAIN') throw described(e, what);
        holders = await liveHolders(image);
      }
    }
    if (options.lock !== 'wait') {
      throw Object.assign(new Error(`${what} is locked by ${holders.join(', ') || 'another client'}, which writes it (another vblk, or QEMU): ` +
        'stop that one first, or serve with --rbd-lock wait to wait for it'), { code: 'ELOCKED' });
    }
    if (!told) options.onLockWait?.(holders);
    told = true;
    await new Promise((r) => setTimeout(r, LOCK_RETRY_MS));
  }
}

export class RbdImage implements BlockDevice {
  readonly capabilities: Capabilities;
  readonly size: number;
  private readonly pending = new Map<number, Pending>();
  private readonly completions = new Float64Array(2 * 256);
  private readonly watch: FdWatch;
  private readonly wholeObjectMap: boolean;
  private nextId = 1;
  private closed = false;
  /** Called by drain() when the last request in flight has finished (close waits on it). */
  private onIdle: (() => void) | null = null;

  constructor(
    readonly name: RbdName,
    private readonly image: NativeRbdImage,
    readonly info: RbdImageInfo,
    readOnly: boolean,
    private readonly release: () => Promise<void>,
    private onFenced?: () => void,
  ) {
    this.size = info.size;
    this.wholeObjectMap = (info.features & RBD_FEATURE_FAST_DIFF) !== 0 && (info.flags & RBD_FLAG_FAST_DIFF_INVALID) === 0;
    this.capabilities = {
      readOnly,
      flush: true,
      trim: !readOnly,
      zero: !readOnly,
      fastZero: !readOnly,
      cache: true,
      extents: true,
      multiConn: true,
      blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    };
    this.watch = requireNative('rbd: images').watchFd(image.eventFd, () => this.drain());
    this.watch.unref();
  }

  get description(): string {
    return `RBD image ${imageSpec(this.name)}${this.capabilities.readOnly ? ', read-only' : ''}`;
  }

  /** Takes every finished request and settles it. */
  private drain(): void {
    for (;;) {
      const n = this.image.drain(this.completions);
      for (let i = 0; i < n; i++) {
        const id = this.completions[2 * i];
        const result = this.completions[2 * i + 1];
        const p = this.pending.get(id);
        if (!p) continue;
        this.pending.delete(id);
        if (result < 0) p.reject(this.failure(result));
        else p.resolve(result);
      }
      if (this.pending.size === 0) {
        this.watch.unref();
        this.onIdle?.();
      }
      if (n < this.completions.length / 2) return;
    }
  }

  private failure(result: number): Error {
    const e = rbdError(Object.assign(new Error(''), { errno: result })) as NodeJS.ErrnoException;
    if (e.code === 'ESHUTDOWN') {
      // librados's EBLOCKLISTED: another client broke our lock and fenced us off.
      this.onFenced?.();
      this.onFenced = undefined;
      return new DeviceError('EIO', `rbd:${imageSpec(this.name)}: this client was blocklisted (another client took the image's lock)`);
    }
    e.message = `rbd:${imageSpec(this.name)}: ${e.code ?? `error ${-result}`}`;
    return e;
  }

  /** Submits one aio call under a new id; settles with librbd's result. */
  private submit(call: (id: number) => number, buffers: Buffer | Buffer[] | null): Promise<number> {
    if (this.closed) return Promise.reject(new DeviceError('ESHUTDOWN', 'the image is closed'));
    const id = this.nextId++;
    const rc = call(id);
    if (rc < 0) return Promise.reject(this.failure(rc));
    if (this.pending.size === 0) this.watch.ref();
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, buffers }));
  }

  payloadBuffer(size: number): Buffer {
    return readBuffers.allocate(size);
  }

  recycle(buffer: Buffer): void {
    readBuffers.release(buffer);
  }

  async read(req: Request): Promise<ReadSegment[]> {
    const data = readBuffers.allocate(req.length);
    try {
      await this.readInto(req, [data]);
    } catch (err) {
      readBuffers.release(data);
      throw err;
    }
    return [{ offset: req.offset, length: req.length, data }];
  }

  async readInto(req: Request, into: Buffer[]): Promise<void> {
    const target = into.length === 1 ? into[0] : into;
    const done = await this.submit((id) => this.image.read(id, target, req.offset), target);
    if (done < req.length) zeroFrom(into, done);
  }

  async write(req: Request): Promise<void> {
    await this.writeFrom(req, [req.data!]);
  }

  async writeFrom(req: Request, from: Buffer[]): Promise<void> {
    const source = from.length === 1 ? from[0] : from;
    await this.submit((id) => this.image.write(id, source, req.offset), source);
    if (req.fua) await this.flush();
  }

  async flush(): Promise<void> {
    await this.submit((id) => this.image.flush(id), null);
  }

  async trim(req: Request): Promise<void> {
    await this.submit((id) => this.image.discard(id, req.offset, req.length), null);
    if (req.fua) await this.flush();
  }

  async writeZeroes(req: Request): Promise<void> {
    if (req.fastZero && req.noHole) throw new DeviceError('ENOTSUP', 'allocated zeroes are written as data on RBD, which is not fast');
    await this.submit((id) => this.image.writeZeroes(id, req.offset, req.length, req.noHole), null);
    if (req.fua) await this.flush();
  }

  async cache(): Promise<void> {}

  async blockStatus(req: Request): Promise<Extent[]> {
    const found = await this.image.diff(req.offset, req.length, this.wholeObjectMap, req.reqOne ? 1 : MAX_EXTENTS);
    const end = req.offset + req.length;
    const extents: Extent[] = [];
    let at = req.offset;
    const add = (length: number, data: boolean): void => {
      if (length <= 0) return;
      const last = extents.at(-1);
      if (last && last.hole === !data) last.length += length;
      else extents.push({ length, hole: !data, zero: !data });
      at += length;
    };
    for (let i = 0; i < found.length; i += 3) {
      const from = Math.max(found[i], at);
      const to = Math.min(found[i] + found[i + 1], end);
      if (to <= from) continue;
      add(from - at, false);
      add(to - from, found[i + 2] === 1);
    }
    // All of the range when the map was complete; up to the last extent found when it was cut short.
    if (found.length / 3 < (req.reqOne ? 1 : MAX_EXTENTS) || extents.length === 0) add(end - at, false);
    return req.reqOne ? extents.slice(0, 1) : extents;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pending.size > 0) await new Promise<void>((resolve) => (this.onIdle = resolve));
    this.watch.stop();
    try {
      await this.image.close();
    } finally {
      await this.release();
    }
  }
}

/** Zeroes the buffers from byte `from` of their concatenation on (a read that ended early, at the image's end). */
function zeroFrom(buffers: Buffer[], from: number): void {
  let start = 0;
  for (const b of buffers) {
    if (start + b.length > from) b.fill(0, Math.max(0, from - start));
    start += b.length;
  }
}
