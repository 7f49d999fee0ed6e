// Listening sockets and the NBD URIs that name them. A UNIX socket path
// left behind by a dead server is replaced; one a live server still
// answers on is refused, so two servers never share a path. The socket
// is created under a umask that gives it exactly the requested mode.
// The listen backlog is the system's maximum (net.core.somaxconn), not
// Node's 511: a UNIX socket whose queue is full refuses a connect at once
// (EAGAIN), so with 511, 103 to 405 of 1,000 libnbd clients connecting
// together were turned away while the server was still accepting.
// An inherited socket (socket activation, activation.ts) is already
// bound and listening: vblk listens on its descriptor, and neither
// claims nor removes its path, which belongs to the service manager;
// listening again sets its queue to the system's maximum, as for its own.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { InheritedSocket } from './activation.js';

export type Endpoint =
  | { kind: 'unix'; path: string; mode: number }
  | { kind: 'tcp'; host: string; port: number }
  | ({ kind: 'inherited' } & InheritedSocket);

/** Whether connections through the endpoint are UNIX socket connections. */
export function isUnixEndpoint(endpoint: Endpoint): boolean {
  return endpoint.kind === 'unix' || (endpoint.kind === 'inherited' && endpoint.family === 'unix');
}

/** For the log: a path, HOST:PORT, or the descriptor. */
export function describeEndpoint(endpoint: Endpoint, port?: number): string {
  if (endpoint.kind === 'unix') return endpoint.path;
  if (endpoint.kind === 'tcp') return `${endpoint.host}:${port ?? endpoint.port}`;
  return `fd ${endpoint.fd}${endpoint.name ? ` (${endpoint.name})` : ''}${endpoint.path ? ` ${endpoint.path}` : ''}`;
}

/** 'stale' only when nobody listens (ECONNREFUSED); anything else might be a live, busy server. */
function probeSocket(socketPath: string): Promise<'live' | 'stale' | NodeJS.ErrnoException> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve('live');
    });
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED' ? 'stale' : err));
  });
}

/** Makes `socketPath` free to listen on, or explains why it is not. */
export async function claimSocketPath(socketPath: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) throw new Error(`${socketPath} exists and is not a socket; refusing to replace it`);
  const state = await probeSocket(socketPath);
  if (state === 'live') throw new Error(`another server is already listening on ${socketPath}`);
  if (state !== 'stale') {
    throw new Error(`${socketPath} exists and cannot be probed (${state.code ?? state.message}); is a server using it?`);
  }
  fs.unlinkSync(socketPath);
}

const SOMAXCONN = '/proc/sys/net/core/somaxconn';
/** Where the system's maximum cannot be read (not Linux): Linux's default since 5.4; larger asks are cut to the maximum anyway. */
const FALLBACK_BACKLOG = 4096;

/** The largest listen backlog the system grants. */
export function listenBacklog(): number {
  try {
    const max = Number(fs.readFileSync(SOMAXCONN, 'utf8').trim());
    if (Number.isInteger(max) && max > 0) return max;
  } catch {
    // Not Linux, or no /proc: the fallback.
  }
  return FALLBACK_BACKLOG;
}

/** Starts `server` listening on the endpoint with the system's largest backlog; resolves to that backlog once it is accepting. */
export async function listen(server: net.Server, endpoint: Endpoint): Promise<number> {
  const backlog = listenBacklog();
  if (endpoint.kind === 'unix') await claimSocketPath(endpoint.path);
  const previousUmask = endpoint.kind === 'unix' ? process.umask(0o777 & ~endpoint.mode) : null;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (): void => {
        server.off('error', reject);
        resolve();
      };
      if (endpoint.kind === 'unix') server.listen({ path: endpoint.path, backlog }, done);
      else if (endpoint.kind === 'tcp') server.listen({ port: endpoint.port, host: endpoint.host, backlog }, done);
      else server.listen({ fd: endpoint.fd, backlog }, done);
    });
  } finally {
    if (previousUmask !== null) process.umask(previousUmask);
  }
  // The umask can only take bits away; chmod makes the mode exact.
  if (endpoint.kind === 'unix') fs.chmodSync(endpoint.path, endpoint.mode);
  return backlog;
}

/** Where clients reach a listener: a UNIX socket's path or a TCP address. */
export type Address = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** The address of a listening server, or null for an inherited socket that has none to print (abstract or unbound). */
export function listeningAddress(endpoint: Endpoint, server: net.Server): Address | null {
  const bound = server.address();
  const tcp = typeof bound === 'object' && bound ? bound : null;
  if (endpoint.kind === 'unix') return { kind: 'unix', path: endpoint.path };
  if (endpoint.kind === 'tcp') return { kind: 'tcp', host: endpoint.host, port: tcp?.port ?? endpoint.port };
  if (endpoint.family === 'unix') return endpoint.path === null ? null : { kind: 'unix', path: endpoint.path };
  return tcp && { kind: 'tcp', host: tcp.address, port: tcp.port };
}

/** An export's NBD URI at an address; `tls` gives the nbds forms, which make libnbd and QEMU insist on TLS. */
export function exportUri(address: Address, exportName: string, tls = false): string {
  const name = encodeURIComponent(exportName);
  const scheme = tls ? 'nbds' : 'nbd';
  if (address.kind === 'unix') {
    const socket = path.resolve(address.path).split('/').map(encodeURIComponent).join('/');
    return `${scheme}+unix:///${name}?socket=${socket}`;
  }
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}/${name}`;
}

/** Parses HOST:PORT, [V6]:PORT or PORT (host 127.0.0.1). */
export function parseListenAddress(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]:|([^:]*):)?(\d+)$/.exec(spec);
  if (!m) throw new Error(`--listen ${spec}: expected HOST:PORT, [IPv6]:PORT or PORT`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`--listen ${spec}: port ${port} is out of range`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

