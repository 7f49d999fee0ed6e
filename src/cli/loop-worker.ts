// A connection loop of `vblk serve --threads N` (server/nbd/loops.ts): a
// worker thread with its own event loop, I/O engine and busy poll. It
// serves the raw images the main loop shared with it (RawImage.adopt:
// the same descriptors) to the connections the main loop hands over at
// transmission start, and says when each has closed. A second after its
// last connection has gone it says it is idle, and the main loop ends it
// unless a connection is on its way (the thread's heap, pools and engine
// go with it). Told to close, it waits for
// its devices and closes them (the final flush is the main loop's),
// frees its engine and lets its thread end.

import net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { RawImage } from '../device/images/raw.js';
import { chooseEngine } from '../io/probe.js';
import { BusyPoll } from '../server/busy-poll.js';
import { ExportRegistry } from '../server/exports.js';
import { NbdConnection } from '../server/nbd/connection.js';
import { IDLE_RELEASE_MS } from '../server/server.js';
import type { FromLoop, LoopInit, ToLoop } from '../server/nbd/loop-messages.js';
import { createLogger } from './logger.js';

const init = workerData as LoopInit;
const port = parentPort!;
const log = createLogger(init.logLevel).child({ loop: init.loop });
const { engine } = chooseEngine(init.engine);
const registry = new ExportRegistry();
for (const e of init.exports) {
  const image = RawImage.adopt(e.share, engine, (file, err) =>
    log.error({ export: e.name, file, err: err.message }, 'write-back failed: FLUSH and FUA writes fail from now on, until the image is served again'),
  );
  registry.add(e.name, image, e.description);
}
const options = { handshakeTimeoutMs: 0, limits: init.limits, busyPoll: new BusyPoll(init.pollUs), sendFile: init.sendFile };
const connections = new Map<number, NbdConnection>();
let idleTimer: NodeJS.Timeout | null = null;

function post(message: FromLoop): void {
  port.postMessage(message);
}

function serve(message: Extract<ToLoop, { type: 'serve' }>): void {
  const { id, agreement } = message;
  const socket = new net.Socket({ fd: message.fd, readable: true, writable: true, allowHalfOpen: true });
  // The main loop's bindings, but for the logger's name, which this loop's logger has already.
  const bindings = Object.fromEntries(Object.entries(message.bindings).filter(([key]) => key !== 'name'));
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = null;
  const conn = new NbdConnection(socket, registry, options, log.child(bindings), () => {
    connections.delete(id);
    post({ type: 'closed', id });
    if (connections.size === 0) idleTimer = setTimeout(() => post({ type: 'idle' }), IDLE_RELEASE_MS).unref();
  });
  connections.set(id, conn);
  const { exportName, ...terms } = agreement;
  conn.adopt({ ...terms, export: registry.find(exportName)! }, Buffer.from(message.reply), Buffer.from(message.input));
}

async function close(): Promise<void> {
  for (const conn of connections.values()) conn.destroy('server shutdown');
  if (idleTimer) clearTimeout(idleTimer);
  const exports = registry.list();
  await Promise.all(exports.map((e) => e.gateway.drain()));
  await Promise.all(exports.map((e) => e.gateway.device.close()));
  engine.close();
  port.close();
}

port.on('message', (message: ToLoop) => {
  switch (message.type) {
    case 'serve':
      return serve(message);
    case 'shutdown':
      return connections.get(message.id)?.beginShutdown();
    case 'destroy':
      return connections.get(message.id)?.destroy(message.reason);
    case 'close':
      return void close();
  }
});
post({ type: 'ready' });
