// Loads the RBD addon (native/rbd/, librbd and librados, built by `npm ci`
// where librbd's development files are installed) and types what it
// offers. Without it vblk runs as before and rbd: images are refused with
// `rbdUnavailable` as the reason. Its completions are read through the
// main addon's watchFd, so it needs that addon too. VBLK_NO_RBD=1 turns it
// off to exercise that path.

import fs from 'node:fs';
import { createRequire } from 'node:module';
import util from 'node:util';
import { fileURLToPath } from 'node:url';
import { native, nativeUnavailable } from './native.js';

export interface RbdImageInfo {
  size: number;
  objectSize: number;
  /** RBD_FEATURE_* bits. */
  features: number;
  /** RBD_FLAG_* bits (object map or fast diff invalid). */
  flags: number;
  parent: { pool: string; namespace: string; image: string; snapshot: string } | null;
}

export interface RbdSnapshot {
  id: number;
  name: string;
  size: number;
  protected: boolean;
}

/** One open image (native/rbd/src/image.cc). Submissions return 0 or a negative errno. */
export interface NativeRbdImage {
  /** librbd writes it when requests complete; drain() takes them. */
  readonly eventFd: number;
  size(): number;
  info(): Promise<RbdImageInfo>;
  read(id: number, into: Buffer | Buffer[], offset: number): number;
  write(id: number, from: Buffer | Buffer[], offset: number): number;
  discard(id: number, offset: number, length: number): number;
  /** allocate: keep the range provisioned (thick) instead of letting it be deallocated. */
  writeZeroes(id: number, offset: number, length: number, allocate: boolean): number;
  flush(id: number): number;
  /** Writes (id, result) pairs of finished requests into `out`; returns how many. Call again while it fills `out`. */
  drain(out: Float64Array): number;
  /** The allocated extents in range as (offset, length, exists) triples, at most `maxExtents` of them, the parent's included. */
  diff(offset: number, length: number, wholeObject: boolean, maxExtents: number): Promise<Float64Array>;
  snapshots(): Promise<RbdSnapshot[]>;
  snapCreate(name: string): Promise<void>;
  snapRemove(name: string): Promise<void>;
  snapRollback(name: string): Promise<void>;
  snapProtect(name: string): Promise<void>;
  snapUnprotect(name: string): Promise<void>;
  /** Takes the exclusive lock and keeps it (no hand-over on request) until close. */
  lockAcquire(): Promise<void>;
  /** The lock holders' addresses. */
  lockOwners(): Promise<string[]>;
  /** The clients with the image open: a lock holder not among them has died (its watch expired). */
  watchers(): Promise<{ address: string; client: string }[]>;
  /** Changes the image's size; smaller only with allowShrink (RBD refuses otherwise). */
  resize(size: number, allowShrink: boolean): Promise<void>;
  /** No request may be in flight. */
  close(): Promise<void>;
}

/** One librados connection (native/rbd/src/cluster.cc). */
export interface NativeRbdCluster {
  open(pool: string, namespace: string, image: string, snapshot: string | null, readOnly: boolean): Promise<NativeRbdImage>;
  /** order 0 and features -1: the cluster's defaults. */
  create(pool: string, namespace: string, image: string, size: number, order: number, features: number): Promise<void>;
  clone(parentPool: string, parentNamespace: string, parent: string, snapshot: string, pool: string, namespace: string, image: string): Promise<void>;
  shutdown(): Promise<void>;
}

export interface NativeRbd {
  Cluster: { connect(id: string | null, confFile: string | null, settings: [string, string][]): Promise<NativeRbdCluster> };
  librbdVersion(): string;
}

const BUILD = fileURLToPath(new URL('../../../native/rbd/build/', import.meta.url));

function load(): { addon: NativeRbd | null; reason: string | null } {
  if (process.env.VBLK_NO_RBD === '1') return { addon: null, reason: 'disabled by VBLK_NO_RBD=1' };
  if (!native) return { addon: null, reason: nativeUnavailable ?? 'the native addon is missing' };
  try {
    return { addon: createRequire(import.meta.url)(`${BUILD}Release/vblk_rbd.node`) as NativeRbd, reason: null };
  } catch (err) {
    const log = `${BUILD}error.log`;
    if (fs.existsSync(log)) return { addon: null, reason: `the RBD addon failed to build: ${fs.readFileSync(log, 'utf8').split('\n')[0]}` };
    return { addon: null, reason: `the RBD addon did not load: ${(err as Error).message.split('\n')[0]}` };
  }
}

const loaded = load();

export const rbdNative: NativeRbd | null = loaded.addon;
export const rbdUnavailable: string | null = loaded.reason;

/**
 * An error from the addon with its errno named (code 'ENOENT' and so on),
 * as Node's own system errors are.
 */
export function rbdError(err: unknown): Error {
  const e = err as Error & { errno?: number; code?: string };
  if (typeof e?.errno === 'number' && e.code === undefined) {
    try {
      e.code = util.getSystemErrorName(e.errno);
    } catch {
      // not an errno Node knows: leave the code unset
    }
  }
  return e;
}
