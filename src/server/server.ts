// The server: listeners in, connections out, and an orderly shutdown.
// Each listener has a front end (NBD, vhost-user) that makes its
// connections (connection.ts); the server knows no protocol.
// Shutdown stops accepting, lets every busy connection answer
// what it has in flight (new requests get ESHUTDOWN), closes the ones
// still negotiating, then flushes and closes the exports and removes the
// UNIX socket files it made (never an inherited socket's). A connection
// that will not finish in time is cut. Besides listeners, the server can
// serve a connection it did not accept (--stdio: serveOne), or only the
// first one it accepts (--stdio under socket activation: serveFirstOnly).
// Connections past what the open-file limit leaves room for are closed
// as they come and logged (connection-limit.ts).
// Every export is flushed and closed even if another one fails; each
// failure is logged, and the shutdown then fails as a whole.

import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import { releaseIdleMemory } from '../io/idle-memory.js';
import type { Connection, FrontEnd } from './connection.js';
import { connectionLimit, DropLog } from './connection-limit.js';
import type { ExportRegistry } from './exports.js';
import { describeEndpoint, listen, listeningAddress, type Endpoint } from './listeners.js';

/** How long the server waits, once its last connection has gone, before it gives memory back. */
export const IDLE_RELEASE_MS = 1000;

export interface ServerOptions {
  shutdownTimeoutMs: number;
}

interface Listening {
  endpoint: Endpoint;
  server: net.Server;
  frontEnd: FrontEnd;
}

export class Server {
  private readonly listening: Listening[] = [];
  private readonly connections = new Set<Connection>();
  private readonly frontEnds = new Set<FrontEnd>();
  /** Told when a connection is gone, for those served as the only one (serveOne, serveFirstOnly). */
  private readonly whenGone = new Map<Connection, () => void>();
  private nextId = 1;
  private shutdownStarted: Promise<void> | null = null;
  private connectionsGone: (() => void) | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private onlyConnection: (() => void) | null = null;
  private maxConnections = Infinity;
  private readonly drops = new DropLog((dropped, total) =>
    this.log.warn({ dropped, total, maxConnections: this.maxConnections }, 'connections dropped: no descriptors left under the open-file limit'),
  );

  constructor(
    private readonly registry: ExportRegistry,
    private readonly options: ServerOptions,
    private readonly log: Logger,
  ) {}

  async listen(endpoint: Endpoint, frontEnd: FrontEnd): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => this.accept(socket, endpoint, frontEnd));
    const backlog = await listen(server, endpoint);
    this.listening.push({ endpoint, server, frontEnd });
    this.frontEnds.add(frontEnd);
    // Counted again with each listener: every one holds a descriptor.
    this.maxConnections = connectionLimit();
    const where = describeEndpoint(endpoint, this.port(server));
    this.log.info({ listen: where, protocol: frontEnd.protocol, backlog, maxConnections: this.maxConnections }, 'listening');
  }

  /** What clients connect to: for each listener, its front end's addresses (one NBD URI per export, ...). */
  addresses(): string[] {
    return this.listening.flatMap(({ endpoint, server, frontEnd }) => {
      const address = listeningAddress(endpoint, server);
      return address ? frontEnd.addresses(address) : [];
    });
  }

  /** Serves one connection on a socket the server did not accept (--stdio); resolves once it has closed. */
  serveOne(socket: net.Socket, endpoint: Endpoint, frontEnd: FrontEnd): Promise<void> {
    return new Promise((resolve) => {
      this.log.info({ connection: describeEndpoint(endpoint), protocol: frontEnd.protocol }, 'serving one connection');
      this.accept(socket, endpoint, frontEnd, resolve);
    });
  }

  /**
   * The next connection accepted on any listener is the only one: the
   * listeners close behind it (--stdio under socket activation, as
   * libnbd's '[ CMD ]' starts a server). Resolves once it has closed.
   */
  serveFirstOnly(): Promise<void> {
    return new Promise((resolve) => (this.onlyConnection = resolve));
  }

  shutdown(): Promise<void> {
    this.shutdownStarted ??= this.doShutdown();
    return this.shutdownStarted;
  }

  private port(server: net.Server): number | undefined {
    const address = server.address();
    return typeof address === 'object' && address ? address.port : undefined;
  }

  /** Takes a connection; `gone` is told once it has closed (the socket may close earlier: NBD connections can move to another loop). */
  private accept(socket: net.Socket, endpoint: Endpoint, frontEnd: FrontEnd, gone?: () => void): void {
    if (this.shutdownStarted) {
      socket.destroy();
      gone?.();
      return;
    }
    if (this.connections.size >= this.maxConnections) {
      socket.destroy();
      this.drops.drop();
      return;
    }
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    const only = this.onlyConnection;
    if (only) {
      this.onlyConnection = null;
      for (const l of this.listening) l.server.close();
    }
    const log = this.log.child({ conn: this.nextId++ });
    const conn = frontEnd.connect(socket, endpoint, log, (c) => this.forget(c));
    this.frontEnds.add(frontEnd);
    const told = gone ?? only;
    if (told) this.whenGone.set(conn, told);
    this.connections.add(conn);
    conn.start();
  }

  private forget(conn: Connection): void {
    this.connections.delete(conn);
    this.whenGone.get(conn)?.();
    this.whenGone.delete(conn);
    this.checkDrained();
    if (this.connections.size === 0 && !this.shutdownStarted) {
      this.idleTimer = setTimeout(() => void this.releaseMemory(), IDLE_RELEASE_MS).unref();
    }
  }

  /** No connection left: give back what the last ones made the server hold (io/idle-memory.ts). */
  private async releaseMemory(): Promise<void> {
    this.idleTimer = null;
    const before = process.memoryUsage.rss();
    await releaseIdleMemory();
    this.log.debug({ rssBefore: before, rssAfter: process.memoryUsage.rss() }, 'idle: memory released');
  }

  /** During shutdown: wakes doShutdown once no connection is busy. */
  private checkDrained(): void {
    if (this.connectionsGone && ![...this.connections].some((c) => c.busy)) this.connectionsGone();
  }

  private async doShutdown(): Promise<void> {
    this.log.info({ connections: this.connections.size }, 'shutting down');
    // close() stops accepting at once; its callback waits for every connection.
    const closed = Promise.all(this.listening.map(({ server }) => new Promise((resolve) => server.close(resolve))));
    const drained = new Promise<void>((resolve) => {
      this.connectionsGone = resolve;
    });
    for (const conn of this.connections) conn.beginShutdown();
    this.checkDrained();
    const timer = setTimeout(() => {
      this.log.warn({ connections: this.connections.size }, 'shutdown timeout: cutting connections');
      for (const conn of this.connections) conn.destroy('shutdown timeout');
    }, this.options.shutdownTimeoutMs);
    await drained;
    clearTimeout(timer);
    for (const conn of this.connections) conn.destroy('server shutdown');
    await closed;
    this.drops.close();
    await Promise.all([...this.frontEnds].map((f) => f.close?.()));
    const exports = await this.registry.closeAll();
    for (const { endpoint } of this.listening) {
      if (endpoint.kind === 'unix') fs.rmSync(endpoint.path, { force: true });
    }
    for (const { name, failures } of exports) {
      if (failures.length === 0) this.log.info({ export: name }, 'export closed');
      for (const { step, error } of failures) this.log.error({ export: name, err: error }, `export failed to ${step}`);
    }
    const failed = exports.filter((e) => e.failures.length > 0).map((e) => `'${e.name}'`);
    if (failed.length > 0) {
      throw new Error(`${failed.length} export${failed.length === 1 ? '' : 's'} failed to flush or close: ${failed.join(', ')}`);
    }
    this.log.info('shutdown complete');
  }
}
