// Records the writes and syncs that reach one file descriptor, in the
// order they leave vblk, for the power-loss tests (crash-states.ts).
// Transfers through the I/O engine are seen by an engine wrapper, which
// notes each write when it is submitted and again when it completes (it
// may reach the disk anywhere after the first, and a sync covers it only
// if the sync began after the second). ImageFile writes metadata with
// synchronous pwrites past the engine (see image-file.ts), so fs.writeSync
// is wrapped too, for that descriptor only; such a write is submitted and
// completed at once. A test checks the log is complete by replaying every
// write onto the starting file and comparing with the file as it ended.

import fs from 'node:fs';
import type { IoEngine, IoOp } from '../../src/io/engine.js';

export type Recorded =
  | { kind: 'write'; id: number; offset: number; data: Buffer }
  | { kind: 'written'; id: number }
  | { kind: 'sync'; id: number }
  | { kind: 'synced'; id: number };

export interface Recorder {
  /** The engine to give the image: the real one, recording. */
  engine: IoEngine;
  log: Recorded[];
  /** Starts recording transfers on `fd` (the image's descriptor). */
  watch(fd: number): void;
  /** Puts fs.writeSync back. */
  stop(): void;
}

type WriteSync = (fd: number, buffer: Buffer, offset: number, length: number, position: number) => number;

export function recordWrites(inner: IoEngine): Recorder {
  const log: Recorded[] = [];
  let fd = -1;
  let ids = 0;
  let insideEngine = 0;
  const original = fs.writeSync;
  const patched = function (this: unknown, ...args: unknown[]): number {
    const n = (original as (...a: unknown[]) => number).apply(this, args);
    if (args[0] === fd && insideEngine === 0) {
      const [, buffer, offset, , position] = args as Parameters<WriteSync>;
      if (typeof position !== 'number') throw new Error('write-recorder: a write without a position');
      const id = ++ids;
      log.push({ kind: 'write', id, offset: position, data: Buffer.from(buffer.subarray(offset, offset + n)) });
      log.push({ kind: 'written', id });
    }
    return n;
  };
  (fs as { writeSync: unknown }).writeSync = patched;

  const engine: IoEngine = {
    name: inner.name,
    allocate: (size) => inner.allocate(size),
    release: (buffer) => inner.release(buffer),
    close: () => inner.close(),
    async submit(ops: IoOp[]): Promise<void> {
      const mine: Recorded[] = [];
      for (const op of ops) {
        if (op.fd !== fd || op.kind === 'read') continue;
        const id = ++ids;
        const start: Recorded = op.kind === 'write' ? { kind: 'write', id, offset: op.position, data: Buffer.from(op.buffer) } : { kind: 'sync', id };
        log.push(start);
        mine.push(op.kind === 'write' ? { kind: 'written', id } : { kind: 'synced', id });
      }
      insideEngine++;
      let done: Promise<void>;
      try {
        done = inner.submit(ops);
      } finally {
        insideEngine--;
      }
      // A failed batch completes nothing: its writes stay possible, never certain.
      await done;
      log.push(...mine);
    },
  };
  return {
    engine,
    log,
    watch(watched) {
      fd = watched;
    },
    stop() {
      if (fs.writeSync === patched) (fs as { writeSync: unknown }).writeSync = original;
    },
  };
}
