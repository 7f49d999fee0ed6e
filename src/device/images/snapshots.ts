// External snapshots of an image chain. Taking snapshot NAME of disk.qcow2
// freezes the current top under a new name, disk@NAME.qcow2, and puts a
// fresh empty overlay at disk.qcow2 on top of it, so whatever serves or
// boots disk.qcow2 keeps its path. Snapshots are the layers of the chain
// whose names follow that pattern. Revert drops everything above a
// snapshot (newer snapshots included) and starts a fresh overlay on it;
// delete streams a snapshot's clusters into the layer above and takes it
// out of the chain; fork starts a second overlay on a frozen layer.
// Forks are not tracked: reverting or deleting a snapshot another
// overlay depends on breaks that overlay, so the CLI says so.

import fs from 'node:fs';
import path from 'node:path';
import type { IoEngine } from '../../io/engine.js';
import { streamOut, type Progress } from './chain-ops.js';
import { backingChain, detectFormat, openLayer } from './open.js';
import { createQcow2 } from './qcow2/create.js';

export interface Snapshot {
  name: string;
  file: string;
  /** When it was taken: the frozen file's change time (the rename). */
  created: Date;
  diskUsage: number;
}

const NAME = /^[A-Za-z0-9._-]+$/;

function parts(image: string): { dir: string; stem: string; ext: string } {
  const ext = path.extname(image);
  return { dir: path.dirname(path.resolve(image)), stem: path.basename(image, ext), ext };
}

export function snapshotFile(image: string, name: string): string {
  if (!NAME.test(name)) throw new Error(`snapshot name '${name}' may only have letters, digits, '.', '_' and '-'`);
  const { dir, stem, ext } = parts(image);
  return path.join(dir, `${stem}@${name}${ext}`);
}

async function virtualSize(file: string, engine: IoEngine): Promise<number> {
  const layer = await openLayer(file, engine);
  const size = layer.size;
  await layer.close();
  return size;
}

/** A new empty overlay at `file` on `below`, written beside it first and then renamed into place. */
async function freshOverlay(file: string, below: string, engine: IoEngine): Promise<void> {
  const size = await virtualSize(below, engine);
  const temp = `${file}.new-${process.pid}`;
  createQcow2(temp, {
    size,
    backingFile: path.relative(path.dirname(path.resolve(file)), path.resolve(below)),
    backingFormat: detectFormat(below),
  });
  fs.renameSync(temp, file);
}

export async function createSnapshot(image: string, name: string, engine: IoEngine): Promise<Snapshot> {
  const frozen = snapshotFile(image, name);
  if (fs.existsSync(frozen)) throw new Error(`snapshot '${name}' exists already (${frozen})`);
  const size = await virtualSize(image, engine);
  const format = detectFormat(image);
  fs.renameSync(image, frozen);
  try {
    createQcow2(image, { size, backingFile: path.basename(frozen), backingFormat: format });
  } catch (err) {
    fs.renameSync(frozen, image);
    throw err;
  }
  return describe(name, frozen);
}

function describe(name: string, file: string): Snapshot {
  const st = fs.statSync(file);
  return { name, file, created: st.ctime, diskUsage: st.blocks * 512 };
}

/** The snapshots in image's chain, newest first. */
export function listSnapshots(image: string): Snapshot[] {
  const { stem, ext } = parts(image);
  const out: Snapshot[] = [];
  for (const layer of backingChain(image).slice(1)) {
    const base = path.basename(layer.file);
    if (!base.startsWith(`${stem}@`) || !base.endsWith(ext)) continue;
    const name = base.slice(stem.length + 1, base.length - ext.length);
    if (NAME.test(name)) out.push(describe(name, layer.file));
  }
  return out;
}

function findSnapshot(image: string, name: string): { file: string; index: number; chain: { file: string }[] } {
  const file = snapshotFile(image, name);
  const chain = backingChain(image);
  const index = chain.findIndex((l) => path.resolve(l.file) === file);
  if (index <= 0) throw new Error(`there is no snapshot '${name}' in the chain of ${image}`);
  return { file, index, chain };
}

/** Drops every layer above snapshot `name`; `image` becomes a fresh overlay on it. Returns the dropped files. */
export async function revertSnapshot(image: string, name: string, engine: IoEngine): Promise<string[]> {
  const { file, index, chain } = findSnapshot(image, name);
  await freshOverlay(image, file, engine);
  const dropped = chain.slice(1, index).map((l) => l.file);
  for (const f of dropped) fs.rmSync(f);
  return [path.resolve(image), ...dropped];
}

/** Merges snapshot `name` into the layer above it and removes its file. */
export async function deleteSnapshot(image: string, name: string, engine: IoEngine, progress?: Progress): Promise<void> {
  const { file } = findSnapshot(image, name);
  await streamOut(image, file, engine, progress);
  fs.rmSync(file);
}

/** A second overlay `newTop` on snapshot `name`. */
export async function forkSnapshot(image: string, name: string, newTop: string, engine: IoEngine): Promise<void> {
  const { file } = findSnapshot(image, name);
  if (fs.existsSync(newTop)) throw new Error(`${newTop} already exists`);
  await freshOverlay(newTop, file, engine);
}
