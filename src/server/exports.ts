// The exports a server offers, to every front end alike: each name maps
// to one device behind one gateway, shared by every connection to it.
// Sharing is what makes CAN_MULTI_CONN true: a FLUSH on any connection
// syncs the one file that all of them wrote through.

import { dirtyBitmapNames } from '../device/filters/dirty.js';
import { Gateway } from '../device/gateway.js';
import type { BlockDevice, Capabilities } from '../device/types.js';

/** One export, as every front end sees it (the NBD handshake reads it as its ExportCatalog). */
export interface ServedExport {
  name: string;
  /** What clients are told it is; '' for nothing. */
  description: string;
  size: number;
  capabilities: Capabilities;
  gateway: Gateway;
  /** Names of the dirty bitmaps its chain keeps now (device/filters/dirty.ts). */
  dirtyBitmaps(): string[];
}

export class ExportRegistry {
  private readonly exports = new Map<string, ServedExport>();

  add(name: string, device: BlockDevice, description = ''): ServedExport {
    if (this.exports.has(name)) throw new Error(`export '${name || '(default)'}' is given twice`);
    const served: ServedExport = {
      name,
      description,
      size: device.size,
      capabilities: device.capabilities,
      gateway: new Gateway(device, name || 'vblk'),
      dirtyBitmaps: () => dirtyBitmapNames(device),
    };
    this.exports.set(name, served);
    return served;
  }

  find(name: string): ServedExport | undefined {
    return this.exports.get(name);
  }

  list(): ServedExport[] {
    return [...this.exports.values()];
  }

  /**
   * Takes an export away (the control socket): new connections cannot
   * choose it, requests on connections that did fail with ESHUTDOWN once
   * the running ones have finished; then its chain is flushed and closed,
   * unless another export still serves the same image.
   */
  async remove(name: string): Promise<ExportClosed> {
    const e = this.exports.get(name);
    if (!e) throw new Error(`no export '${name}'`);
    this.exports.delete(name);
    await e.gateway.retire();
    const image = bottom(e.gateway.device);
    if ([...this.exports.values()].some((other) => bottom(other.gateway.device) === image)) return { name, failures: [] };
    return closeExport([e]);
  }

  /**
   * Waits for running requests, then flushes and closes every device, all
   * of them even when some fail (a device whose flush failed is still
   * closed). Says how each one went.
   */
  async closeAll(): Promise<ExportClosed[]> {
    const all = [...this.exports.values()];
    // A read-only view must not read from a device already closed under it.
    await Promise.all(all.map((e) => e.gateway.drain()));
    // Exports of one image share its device (cli/open-exports.ts), each perhaps through its own
    // filters and read-only view: it is closed once, through one export's chain.
    const byDevice = new Map<BlockDevice, ServedExport[]>();
    for (const e of all) {
      const image = bottom(e.gateway.device);
      byDevice.set(image, [...(byDevice.get(image) ?? []), e]);
    }
    const closing = [...byDevice.values()].map((group) => closeExport(group));
    this.exports.clear();
    return Promise.all(closing);
  }
}

export interface ExportClosed {
  name: string;
  /** What failed, in order: the final flush, the close, or both. */
  failures: { step: 'flush' | 'close'; error: unknown }[];
}

function bottom(device: BlockDevice): BlockDevice {
  let d = device;
  while (d.next) d = d.next;
  return d;
}

async function closeExport(group: ServedExport[]): Promise<ExportClosed> {
  // A writable export's chain: a read-only view neither flushes nor closes what it shows.
  const e = group.find((g) => !g.capabilities.readOnly) ?? group[0]!;
  const closed: ExportClosed = { name: group.map((g) => g.name).join(', '), failures: [] };
  try {
    if (!e.capabilities.readOnly) await e.gateway.device.flush();
  } catch (error) {
    closed.failures.push({ step: 'flush', error });
  }
  try {
    await e.gateway.device.close();
  } catch (error) {
    closed.failures.push({ step: 'close', error });
  }
  return closed;
}
