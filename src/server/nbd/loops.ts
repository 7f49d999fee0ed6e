// More than one core for NBD (--threads N): the main event loop accepts
// every connection and runs its handshake; when transmission starts on an
// export that another loop can serve, the connection goes to the least
// busy of the N loops by connections held (the main one included; ties
// stay on the main loop, so a lone connection runs where it was accepted,
// and a worker thread starts only when a connection is first placed on
// it). Going means: the main loop stops reading, duplicates the socket's
// descriptor, posts it with the bytes it had read past GO and the
// agreement to a worker thread, and closes its own descriptor; the worker
// wraps the duplicate in a socket of its own and runs the transmission
// phase there (loop-worker.ts in cli/), with its own I/O engine and busy
// poll. The main loop keeps a stand-in for the connection, so the
// server's counting, limits and shutdown see it as before.
//
// What a loop can serve: raw images with nothing in between (no filter,
// no read-only view, no control socket's LiveImage), the one kind of
// device with no state of its own in memory: every loop opens it as a
// RawImage over the same descriptors (RawImage.share/adopt), so the page
// cache, the lock, FLUSH (fdatasync covers writes any loop completed) and
// the write-back failure mark are shared, and CAN_MULTI_CONN holds.
// qcow2 (metadata in memory), filters, memory disks, RBD and vhost-user
// stay on the main loop. What is not shared is each loop's gateway:
// overlapping requests are ordered among the connections of one loop, not
// across loops (as between nbdkit's threads or qemu-nbd's coroutines
// across connections), and a read sent from the page cache holds back
// writes of its own loop only.

import type { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { releaseIdleMemory } from '../../io/idle-memory.js';
import type { FromLoop, LoopExport, LoopInit, ToLoop } from './loop-messages.js';

/** Most loops --threads gives, whatever the machine has: past it, one process's page cache and locks are the limit. */
export const MAX_LOOPS = 16;

/** A connection that runs on a worker loop, as the main loop reaches it. */
export interface RemoteConnection {
  shutdown(): void;
  destroy(reason: string): void;
}

/** Where a new transmission runs: here (counted until `leave`), or on a worker. */
export type Placement = { here: true; leave(): void } | { here: false; worker: LoopWorker };

export type SpawnLoop = (init: LoopInit) => Worker;

export class LoopWorker {
  /** Its connections, each with what to call when it has closed. */
  private readonly connections = new Map<number, () => void>();
  /** Connections waiting for the thread to start, counted in its load meanwhile. */
  private waiting = 0;
  private worker: Worker | null = null;
  private started: Promise<boolean> | null = null;
  /** Set while an idle thread is on its way out; the next start waits for it. */
  private retiring: Promise<void> | null = null;
  private alive = false;
  private dead = false;

  constructor(
    readonly loop: number,
    private readonly spawn: () => Worker,
    private readonly log: Logger,
  ) {}

  get load(): number {
    return this.dead ? Infinity : this.connections.size + this.waiting;
  }

  /**
   * Starts the thread the first time a connection is placed on it;
   * resolves true once it is ready for connections, false when it could
   * not start (logged; the connection then stays on the main loop).
   * `load` counts the caller until it resolves.
   */
  whenReady(): Promise<boolean> {
    this.waiting++;
    this.started ??= (this.retiring ?? Promise.resolve()).then(() => this.start());
    return this.started.finally(() => this.waiting--);
  }

  private start(): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      let worker: Worker;
      try {
        worker = this.spawn();
      } catch (err) {
        this.startFailed((err as Error).message);
        resolve(false);
        return;
      }
      const failed = (reason: string): void => {
        if (this.alive) return this.failed(reason);
        this.startFailed(reason);
        resolve(false);
      };
      // A thread that retired (idle) says nothing more to this one.
      const current = (): boolean => this.worker === worker;
      worker.on('error', (err) => current() && failed(`loop ${this.loop} failed: ${err.message}`));
      worker.on('exit', (code) => {
        if (current() && !this.dead) failed(`loop ${this.loop} exited with status ${code}`);
      });
      worker.on('message', (msg: FromLoop) => {
        if (!current()) return;
        if (msg.type === 'closed') this.closed(msg.id);
        if (msg.type === 'idle') this.retire();
        if (msg.type === 'ready' && !this.dead) {
          this.alive = true;
          this.log.info({ loop: this.loop }, 'connection loop started');
          resolve(true);
        }
      });
      this.worker = worker;
    });
  }

  /**
   * The thread has had no connection for a while: it ends, and gives
   * back its heap, pools and engine (a thread at rest holds ~14 MB); the
   * next connection placed here starts another.
   */
  private retire(): void {
    if (!this.alive || this.connections.size > 0 || this.waiting > 0) return;
    const worker = this.worker!;
    this.worker = null;
    this.started = null;
    this.alive = false;
    this.retiring = new Promise<void>((resolve) => {
      worker.once('exit', () => resolve());
      worker.postMessage({ type: 'close' } satisfies ToLoop);
    }).then(() => {
      this.retiring = null;
      this.log.debug({ loop: this.loop }, 'idle connection loop ended');
      return releaseIdleMemory();
    });
  }

  serve(message: Extract<ToLoop, { type: 'serve' }>, closed: () => void): RemoteConnection {
    const { id } = message;
    this.connections.set(id, closed);
    this.worker!.postMessage(message, [message.input.buffer as ArrayBuffer, message.reply.buffer as ArrayBuffer]);
    return {
      shutdown: () => this.post({ type: 'shutdown', id }),
      destroy: (reason) => this.post({ type: 'destroy', id, reason }),
    };
  }

  /** Asks the loop to finish and waits until its thread has gone. */
  async close(): Promise<void> {
    await this.retiring;
    if (!(await this.started)) return;
    const worker = this.worker!;
    await new Promise<void>((resolve) => {
      worker.once('exit', () => resolve());
      this.post({ type: 'close' });
      this.alive = false;
      this.dead = true;
    });
  }

  private post(message: ToLoop): void {
    if (this.alive) this.worker!.postMessage(message);
  }

  private closed(id: number): void {
    const closed = this.connections.get(id);
    this.connections.delete(id);
    closed?.();
  }

  private startFailed(reason: string): void {
    this.dead = true;
    this.log.error({ loop: this.loop, reason }, 'connection loop could not start: its connections stay on the main loop');
  }

  /** The thread died (a bug): its connections went with it. */
  private failed(reason: string): void {
    if (this.dead) return;
    this.alive = false;
    this.dead = true;
    this.log.error({ loop: this.loop, connections: this.connections.size, reason }, 'connection loop failed: its connections are gone');
    for (const id of [...this.connections.keys()]) this.closed(id);
  }
}

export class ConnectionLoops {
  private here = 0;
  private nextId = 1;
  private readonly workers: LoopWorker[];
  private readonly served: Set<string>;

  /** `count` worker loops for `exports`, each started when a connection is first placed on it. */
  constructor(count: number, exports: LoopExport[], init: Omit<LoopInit, 'loop' | 'exports'>, spawn: SpawnLoop, log: Logger) {
    this.workers = Array.from({ length: count }, (_, i) => new LoopWorker(i + 1, () => spawn({ ...init, loop: i + 1, exports }), log));
    this.served = new Set(exports.map((e) => e.name));
    log.info({ loops: count + 1, exports: exports.map((e) => e.name) }, 'connection loops');
  }

  /** Where a connection that starts transmission on `exportName` runs; null: here, as every connection not spread. */
  place(exportName: string): Placement | null {
    if (!this.served.has(exportName)) return null;
    // Ties stay here: a single connection never starts a thread.
    const worker = this.workers.reduce((a, b) => (b.load < a.load ? b : a));
    if (worker.load < this.here) return { here: false, worker };
    this.here++;
    let left = false;
    return {
      here: true,
      leave: () => {
        if (!left) this.here--;
        left = true;
      },
    };
  }

  /** An id for a connection posted to a loop (the loops' own, apart from the log's conn). */
  connectionId(): number {
    return this.nextId++;
  }

  /** Every connection is gone: stops the worker loops that were started. */
  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.close()));
  }
}
