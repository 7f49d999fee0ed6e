// What vblk's commands do to RBD images besides serving them: create,
// describe, snapshot (create, list, revert, delete) and clone. These are
// the cluster's own operations through librbd, so the rbd CLI sees the
// result (rbd info, rbd snap ls, rbd children). A clone is RBD layering:
// the parent snapshot is protected first (clone format 1 needs it; with
// format 2 it does no harm), and the clone reads through to it until
// written.

import { rbdError, type NativeRbdCluster, type NativeRbdImage, type RbdImageInfo, type RbdSnapshot } from '../../io/rbd-native.js';
import { connectCluster, type CephOptions } from './rbd-cluster.js';
import { imageSpec, parseRbdName, type RbdName } from './rbd-name.js';
import { lockHolders, RBD_FEATURE_EXCLUSIVE_LOCK, RBD_FEATURE_FAST_DIFF, RBD_FEATURE_LAYERING, RBD_FEATURE_OBJECT_MAP } from './rbd.js';

const FEATURE_NAMES: [number, string][] = [
  [RBD_FEATURE_LAYERING, 'layering'],
  [2, 'striping'],
  [RBD_FEATURE_EXCLUSIVE_LOCK, 'exclusive-lock'],
  [RBD_FEATURE_OBJECT_MAP, 'object-map'],
  [RBD_FEATURE_FAST_DIFF, 'fast-diff'],
  [32, 'deep-flatten'],
  [64, 'journaling'],
  [128, 'data-pool'],
  [256, 'operations'],
  [512, 'migrating'],
  [1024, 'non-primary'],
  [2048, 'dirty-cache'],
];

export function featureNames(features: number): string[] {
  return FEATURE_NAMES.filter(([bit]) => (features & bit) !== 0).map(([, name]) => name);
}

function nameOf(spec: string | RbdName): RbdName {
  return typeof spec === 'string' ? parseRbdName(spec) : spec;
}

/** Runs `work` on a connection for `name`, then gives the connection back. */
async function withCluster<T>(name: RbdName, ceph: CephOptions, work: (cluster: NativeRbdCluster) => Promise<T>): Promise<T> {
  const { cluster, release } = await connectCluster(name, ceph);
  try {
    return await work(cluster);
  } catch (err) {
    const e = rbdError(err);
    e.message = `rbd:${imageSpec(name)}: ${e.message}`;
    throw e;
  } finally {
    await release();
  }
}

/** Runs `work` on the image `name` opened without taking its lock (read-only unless `writable`). */
async function withImage<T>(name: RbdName, ceph: CephOptions, writable: boolean, work: (image: NativeRbdImage) => Promise<T>): Promise<T> {
  return withCluster(name, ceph, async (cluster) => {
    const image = await cluster.open(name.pool, name.namespace, name.image, name.snapshot, !writable);
    try {
      return await work(image);
    } finally {
      await image.close();
    }
  });
}

export interface RbdCreateOptions {
  /** Object size in bytes, a power of two (default: the cluster's, 4 MiB). */
  objectSize?: number;
  /** RBD_FEATURE_* bits (default: the cluster's rbd_default_features). */
  features?: number;
}

export async function createRbd(spec: string | RbdName, size: number, ceph: CephOptions, options: RbdCreateOptions = {}): Promise<void> {
  const name = nameOf(spec);
  if (name.snapshot !== null) throw new RangeError(`rbd:${imageSpec(name)}: an image to create has no @SNAPSHOT`);
  const order = options.objectSize ? Math.log2(options.objectSize) : 0;
  if (!Number.isInteger(order)) throw new RangeError(`object size ${options.objectSize} is not a power of two`);
  await withCluster(name, ceph, (cluster) => cluster.create(name.pool, name.namespace, name.image, size, order, options.features ?? -1));
}

export interface RbdDescription extends RbdImageInfo {
  name: string;
  featureNames: string[];
  snapshots: RbdSnapshot[];
  lockOwners: string[];
}

export async function describeRbd(spec: string | RbdName, ceph: CephOptions): Promise<RbdDescription> {
  const name = nameOf(spec);
  // Opened writable (which takes no lock until a write) when it can be: librbd tells the lock's holders only then.
  const head = name.snapshot === null;
  return withImage(name, ceph, head, async (image) => {
    const info = await image.info();
    const locking = head && (info.features & RBD_FEATURE_EXCLUSIVE_LOCK) !== 0;
    return {
      name: imageSpec(name),
      ...info,
      featureNames: featureNames(info.features),
      snapshots: await image.snapshots(),
      lockOwners: locking ? (await lockHolders(image)).map((h) => (h.alive ? h.holder : `${h.holder} (gone: its watch expired)`)) : [],
    };
  });
}

export async function listRbdSnapshots(spec: string | RbdName, ceph: CephOptions): Promise<RbdSnapshot[]> {
  return withImage(nameOf(spec), ceph, false, (image) => image.snapshots());
}

function writableName(spec: string | RbdName): RbdName {
  const name = nameOf(spec);
  if (name.snapshot !== null) throw new RangeError(`rbd:${imageSpec(name)}: name the image without @SNAPSHOT`);
  return name;
}

export async function createRbdSnapshot(spec: string | RbdName, snapshot: string, ceph: CephOptions): Promise<void> {
  await withImage(writableName(spec), ceph, true, (image) => image.snapCreate(snapshot));
}

/** Rolls the image back to `snapshot`: every byte written since is gone. */
export async function revertRbdSnapshot(spec: string | RbdName, snapshot: string, ceph: CephOptions): Promise<void> {
  await withImage(writableName(spec), ceph, true, (image) => image.snapRollback(snapshot));
}

/** The image's snapshot named `snapshot`, or ENOENT. */
async function snapshotNamed(image: NativeRbdImage, snapshot: string): Promise<RbdSnapshot> {
  const snap = (await image.snapshots()).find((s) => s.name === snapshot);
  if (!snap) throw Object.assign(new Error(`no snapshot '${snapshot}'`), { code: 'ENOENT' });
  return snap;
}

/** Removes `snapshot` (unprotecting it first; refused while clones depend on it). */
export async function deleteRbdSnapshot(spec: string | RbdName, snapshot: string, ceph: CephOptions): Promise<void> {
  await withImage(writableName(spec), ceph, true, async (image) => {
    if ((await snapshotNamed(image, snapshot)).protected) await image.snapUnprotect(snapshot);
    await image.snapRemove(snapshot);
  });
}

/** Makes `target` a clone (copy-on-write child) of `source`, which names a snapshot. */
export async function cloneRbd(source: string | RbdName, target: string | RbdName, ceph: CephOptions): Promise<void> {
  const from = nameOf(source);
  const to = writableName(target);
  if (from.snapshot === null) throw new RangeError(`rbd:${imageSpec(from)}: clone from a snapshot, rbd:POOL/IMAGE@SNAPSHOT`);
  const parent = { ...from, snapshot: null };
  await withImage(parent, ceph, true, async (image) => {
    if (!(await snapshotNamed(image, from.snapshot!)).protected) await image.snapProtect(from.snapshot!);
  });
  await withCluster(from, ceph, (cluster) => cluster.clone(from.pool, from.namespace, from.image, from.snapshot!, to.pool, to.namespace, to.image));
}

/** Sets the image's size to `newSize(current)`; a smaller size needs `shrink`. Returns both sizes. */
export async function resizeRbd(spec: string | RbdName, newSize: (current: number) => number, shrink: boolean, ceph: CephOptions): Promise<{ from: number; to: number }> {
  return withImage(writableName(spec), ceph, true, async (image) => {
    const from = image.size();
    const to = newSize(from);
    if (to < from && !shrink) throw new RangeError(`shrinking from ${from} to ${to} bytes loses what lies past the new end: give --shrink`);
    await image.resize(to, shrink);
    return { from, to };
  });
}
