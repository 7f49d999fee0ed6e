// A device served over NBD from the test's own process, for tests that
// call a filter's methods (cut, mark, ...) between runs of real clients.
// Clients must run as child processes without blocking the event loop
// (tools.ts run), or the server cannot answer them.

import path from 'node:path';
import { pino } from 'pino';
import type { BlockDevice } from '../../src/device/types.js';
import { BusyPoll } from '../../src/server/busy-poll.js';
import { ExportRegistry } from '../../src/server/exports.js';
import { nbdFrontEnd } from '../../src/server/nbd/connection.js';
import { Server } from '../../src/server/server.js';
import { tempDir, type Teardown } from './server.js';

export interface InProcess {
  uri: string;
  /** Flushes and closes the device; also done when the test ends. */
  shutdown(): Promise<void>;
}

/** Serves `device` as the default export on a UNIX socket in a new temp dir (or `dir`). */
export async function serveInProcess(t: Teardown, device: BlockDevice, dir = tempDir(t)): Promise<InProcess> {
  const registry = new ExportRegistry();
  registry.add('', device);
  const server = new Server(registry, { shutdownTimeoutMs: 10_000 }, pino({ level: 'silent' }));
  const nbd = nbdFrontEnd(registry, {
    handshakeTimeoutMs: 10_000,
    limits: { maxInflight: 64, maxInflightBytes: 128 << 20, maxBacklogBytes: 64 << 20, maxSkippedPayload: 128 << 20 },
    busyPoll: new BusyPoll(0),
  });
  const socket = path.join(dir, 'in-process.sock');
  await server.listen({ kind: 'unix', path: socket, mode: 0o600 }, nbd);
  t.teardown(() => server.shutdown());
  return { uri: `nbd+unix:///?socket=${socket}`, shutdown: () => server.shutdown() };
}
