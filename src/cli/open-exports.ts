// Opening the images behind `vblk serve`'s exports. One server opens each
// image once, however many exports name it (by any path: the file's
// device and inode decide): one descriptor, one lock, one cache, so a
// read-write and a read-only export of the same image work together, as
// with nbd-server and qemu-nbd, instead of the second open colliding with
// the first one's lock. The image is opened writable when any export of
// it is; read-only exports see it through a read-only view. `memory:SIZE`
// is a disk in memory instead of a file, its own for each export that
// names one. An rbd: name is an image in a Ceph cluster, identified by its
// pool, namespace, image and snapshot. With `live` (a server with a
// control socket) each image file sits in a LiveImage, so a snapshot can
// switch it under its exports; RBD images do not (their snapshots are the
// cluster's, taken with vblk snapshot or rbd snap).

import fs from 'node:fs';
import type { Logger } from 'pino';
import { readOnlyView } from '../device/filters/read-only.js';
import { LiveImage } from '../device/images/live.js';
import { MemoryImage } from '../device/images/memory.js';
import { openImage, type OpenOptions } from '../device/images/open.js';
import { imageSpec, isRbdName, parseRbdName } from '../device/images/rbd-name.js';
import type { BlockDevice } from '../device/types.js';
import type { ExportRegistry } from '../server/exports.js';
import { applyFilters, type FilterSpec } from './filters.js';
import { parseSize } from './size.js';

export interface ExportSpec {
  name: string;
  file: string;
  readOnly: boolean;
  /** Sent to clients that ask (NBD_INFO_DESCRIPTION, NBD_OPT_LIST); none by default. */
  description?: string;
  /** Lab filters between this export's clients and the image, the first nearest the clients. */
  filters?: FilterSpec[];
}

type ImageOptions = Omit<OpenOptions, 'readOnly' | 'onWritebackError'> & { live?: boolean };

const MEMORY = 'memory:';

/** The size a `memory:SIZE` spec asks for, or null when `file` names a file. */
export function memorySize(file: string): number | null {
  return file.startsWith(MEMORY) ? parseSize(file.slice(MEMORY.length)) : null;
}

function identity(spec: ExportSpec, index: number): string {
  if (memorySize(spec.file) !== null) return `memory #${index}`;
  if (isRbdName(spec.file)) return `rbd:${imageSpec(parseRbdName(spec.file))}`;
  const st = fs.statSync(spec.file);
  return `${st.dev}:${st.ino}`;
}

/** Opens every spec's image (each once) and adds the exports to the registry. */
export async function openExports(specs: ExportSpec[], options: ImageOptions, registry: ExportRegistry, log: Logger): Promise<void> {
  const groups = new Map<string, ExportSpec[]>();
  specs.forEach((s, i) => {
    const key = identity(s, i);
    groups.set(key, [...(groups.get(key) ?? []), s]);
  });
  for (const group of groups.values()) {
    const readOnly = group.every((s) => s.readOnly);
    const names = group.map((s) => s.name);
    const onWritebackError = (file: string, err: Error): void =>
      log.error({ exports: names, file, err: err.message }, 'write-back failed: FLUSH and FUA writes fail from now on, until the image is served again');
    const memory = memorySize(group[0].file);
    const open = (file: string): Promise<BlockDevice> => openImage(file, { ...options, readOnly, onWritebackError });
    const file = group[0].file;
    const live = options.live && !isRbdName(file);
    const device: BlockDevice = memory !== null ? new MemoryImage(memory) : live ? new LiveImage(file, await open(file), open) : await open(file);
    for (const s of group) {
      const view = s.readOnly && !readOnly ? readOnlyView(device) : device;
      registry.add(s.name, applyFilters(view, s.filters ?? []), s.description ?? '');
      log.info({ export: s.name, file: s.file, readOnly: s.readOnly, shared: group.length > 1, filters: (s.filters ?? []).map((f) => f.name) }, 'export ready');
    }
  }
}
