// The exports a server offers: each name maps to one device behind one
// gateway, shared by every connection to it. Sharing is what makes
// CAN_MULTI_CONN true: a FLUSH on any connection syncs the one file that
// all of them wrote through.

import { Gateway } from '../device/gateway.js';
import type { BlockDevice } from '../device/types.js';
import type { ExportCatalog, ExportSummary } from '../protocol/nbd/handshake.js';

export interface ServedExport extends ExportSummary {
  gateway: Gateway;
}

export class ExportRegistry implements ExportCatalog {
  private readonly exports = new Map<string, ServedExport>();

  add(name: string, device: BlockDevice, description = ''): ServedExport {
    if (this.exports.has(name)) throw new Error(`export '${name || '(default)'}' is given twice`);
    const served: ServedExport = {
      name,
      description,
      size: device.size,
      capabilities: device.capabilities,
      gateway: new Gateway(device),
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

  /** Waits for running requests, flushes and closes every device. */
  async closeAll(): Promise<void> {
    // Exports of one image share its device (cli/open-exports.ts): close it once.
    const closed = new Set<BlockDevice>();
    for (const e of this.exports.values()) {
      await e.gateway.drain();
      if (closed.has(e.gateway.device)) continue;
      closed.add(e.gateway.device);
      if (!e.capabilities.readOnly) await e.gateway.device.flush();
      await e.gateway.device.close();
    }
    this.exports.clear();
  }
}
