// Which engines this host can run, and which one `auto` picks. Probing
// happens once, at start-up: is the addon loaded, does the kernel let us
// set up an io_uring (seccomp and sysctls can forbid it), is there a POSIX
// AIO completion mechanism. Asking by name for an engine the host cannot
// run is an error, never a silent fallback.

import { BufferPool } from './buffer-pool.js';
import { DirectIo } from './direct-io.js';
import { ENGINE_NAMES, type EngineName, type IoEngine } from './engine.js';
import { native, nativeUnavailable } from './native.js';
import { RingEngine } from './ring-engine.js';
import { SyncEngine } from './sync-engine.js';
import { ThreadsEngine } from './threads-engine.js';

export const DIRECT_ALIGNMENT = 4096;

export interface EngineReport {
  name: EngineName;
  available: boolean;
  detail: string;
}

let reports: EngineReport[] | null = null;

export function engineReports(): EngineReport[] {
  if (reports) return reports;
  const ring = (name: EngineName, probe: (() => string | null) | undefined, how: string): EngineReport => {
    if (!probe) return { name, available: false, detail: nativeUnavailable ?? 'native addon missing' };
    const why = probe();
    return why === null ? { name, available: true, detail: how } : { name, available: false, detail: why };
  };
  const pool = process.env.UV_THREADPOOL_SIZE ?? '4';
  reports = [
    { name: 'sync', available: true, detail: 'pread/pwrite on the event loop' },
    { name: 'threads', available: true, detail: `fs.read/fs.write on libuv's thread pool (${pool} threads)` },
    ring('uring', native?.Uring.probe, 'io_uring: page-cache reads by RWF_NOWAIT, the rest through the ring, eventfd completions'),
    ring(
      'posix-aio',
      native?.Aio.probe,
      process.platform === 'linux'
        ? "lio_listio on glibc's user-space AIO threads, eventfd notification per batch"
        : 'lio_listio with kqueue (EVFILT_AIO) completions',
    ),
  ];
  return reports;
}

export interface EngineChoice {
  engine: IoEngine;
  reason: string;
}

function build(name: EngineName): IoEngine {
  switch (name) {
    case 'sync':
      return new SyncEngine();
    case 'threads':
      return new ThreadsEngine();
    case 'uring':
      return new RingEngine('uring', native!.Uring);
    case 'posix-aio':
      return new RingEngine('posix-aio', native!.Aio);
  }
}

/**
 * The engine for `requested` ('auto' or a name). auto prefers io_uring and
 * falls back to the thread pool; it never picks sync (a cache miss blocks
 * every client) or posix-aio (slower than the thread pool on Linux).
 */
export function chooseEngine(requested: string): EngineChoice {
  const all = engineReports();
  if (requested === 'auto') {
    const uring = all.find((r) => r.name === 'uring')!;
    if (uring.available) return { engine: build('uring'), reason: 'auto: io_uring is available' };
    return { engine: build('threads'), reason: `auto: threads, because io_uring is not: ${uring.detail}` };
  }
  const report = all.find((r) => r.name === requested);
  if (!report) throw new Error(`unknown engine '${requested}' (choose auto, ${ENGINE_NAMES.join(', ')})`);
  if (!report.available) throw new Error(`the ${requested} engine is not available here: ${report.detail}`);
  return { engine: build(report.name), reason: `chosen with --engine ${requested}` };
}

/** The same engine with direct I/O's alignment rules handled, or why it cannot be. */
export function directEngine(inner: IoEngine): IoEngine {
  if (!native) throw new Error(`--direct needs aligned buffers from the native addon: ${nativeUnavailable}`);
  const pool = new BufferPool(native.alignedBuffer, DIRECT_ALIGNMENT);
  return new DirectIo(inner, pool, native.addressModulo);
}
