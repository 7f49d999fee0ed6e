// The byte stream under a client: what the server sent, queued as it
// arrived, read off the front either in exact sizes (the handshake,
// where every step waits for its answer) or by a listener that takes
// whole frames as they become available (the transmission phase, where
// replies come in any order). STARTTLS replaces the socket under it: the
// plain socket stops being read and the TLS stream over it takes its
// place, with nothing queued from before.

import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { ByteQueue } from '../server/byte-queue.js';
import type { Endpoint } from './uri.js';

export class Wire {
  readonly input = new ByteQueue();
  private wake: (() => void) | null = null;
  private ended = false;
  private failure: Error | null = null;
  private onInput: (() => void) | null = null;
  private markClosed!: () => void;
  /** Settles when the server has closed (or the socket failed). */
  readonly closed = new Promise<void>((resolve) => (this.markClosed = resolve));
  /** How long read() waits by default. */
  timeoutMs = 30_000;

  constructor(public socket: Duplex) {
    this.attach(socket);
  }

  /** Connects to a UNIX socket (an endpoint, or just its path) or a TCP endpoint. */
  static connect<T extends Wire>(this: new (socket: Duplex) => T, to: Endpoint | string, timeoutMs = 30_000): Promise<T> {
    const endpoint = typeof to === 'string' ? { path: to } : to;
    return new Promise((resolve, reject) => {
      const socket = 'path' in endpoint ? net.connect(endpoint.path) : net.connect(endpoint.port, endpoint.host);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to ${describeEndpoint(endpoint)} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.setNoDelay(true);
        const wire = new this(socket);
        wire.timeoutMs = timeoutMs;
        resolve(wire);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`cannot connect to ${describeEndpoint(endpoint)}: ${err.message}`));
      });
    });
  }

  private attach(socket: Duplex): void {
    socket.on('data', (d: Buffer) => {
      this.input.push(d);
      this.wake?.();
      this.onInput?.();
    });
    const done = (): void => {
      if (this.ended) return;
      this.ended = true;
      this.wake?.();
      this.onInput?.();
      this.markClosed();
    };
    socket.on('end', done);
    socket.on('close', done);
    socket.on('error', (err: Error) => {
      this.failure ??= err;
      done();
    });
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.input.length;
  }

  /** Whether the server has closed (or the socket failed). */
  get isClosed(): boolean {
    return this.ended;
  }

  /** The socket's error, if it failed. */
  get error(): Error | null {
    return this.failure;
  }

  /** Called whenever bytes arrive or the stream ends; replaces read(). */
  listen(onInput: () => void): void {
    this.onInput = onInput;
  }

  send(...bufs: Buffer[]): void {
    if (bufs.length === 1) this.socket.write(bufs[0]);
    else {
      this.socket.cork();
      for (const b of bufs) this.socket.write(b);
      this.socket.uncork();
    }
  }

  /** Exactly n bytes; rejects if the server closes first or time runs out. */
  async read(n: number, timeoutMs = this.timeoutMs): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = this.input.take(n);
      if (got) return Buffer.from(got);
      if (this.ended) {
        const why = this.failure ? `: ${this.failure.message}` : '';
        throw new Error(`the server closed the connection while ${n} bytes were awaited${why}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  /** True if the server closes the connection within the time given. */
  closesWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    return Promise.race([this.closed.then(() => true as const), timeout]).finally(() => clearTimeout(timer));
  }

  /**
   * Runs the TLS handshake over the current socket and continues on the
   * TLS stream. Bytes already queued would have come in plain text after
   * the server agreed to STARTTLS: that is refused.
   */
  async startTls(options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
    if (this.input.length > 0) throw new Error(`the server sent ${this.input.length} plain-text bytes after agreeing to STARTTLS`);
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('end');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    plain.on('error', () => undefined);
    const secure = tls.connect({ ...options, socket: plain });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        secure.destroy();
        reject(new Error(`TLS handshake timed out after ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      secure.once('secureConnect', () => {
        clearTimeout(timer);
        resolve();
      });
      secure.once('error', (err) => {
        clearTimeout(timer);
        secure.destroy();
        reject(new Error(`TLS handshake failed: ${err.message}`));
      });
      secure.once('close', () => {
        clearTimeout(timer);
        reject(new Error('the server closed the connection during the TLS handshake'));
      });
    });
    secure.removeAllListeners('error');
    secure.removeAllListeners('close');
    this.socket = secure;
    this.attach(secure);
    return secure;
  }

  /** Ends our side gracefully (TLS close_notify, then FIN). */
  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function describeEndpoint(endpoint: Endpoint): string {
  return 'path' in endpoint ? endpoint.path : `${endpoint.host}:${endpoint.port}`;
}
