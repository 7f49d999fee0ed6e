// Memory an idle server gives back. Under load the server holds pooled
// blocks, buffers the collector has not yet freed (it runs when the JS
// heap fills, and large buffers live outside it) and glibc's free heap,
// which the trim threshold raised in syscalls.ts keeps. Heavy clients
// left 1.35 GB behind for as long as nothing allocated. When the last
// connection has gone, the server empties the pools, runs a full
// collection and trims the heap: a few milliseconds, once.

import v8 from 'node:v8';
import vm from 'node:vm';
import { emptyPools } from './buffer-pool.js';
import { trimHeap } from '../sys/syscalls.js';

/** Array buffers found dead are freed on V8's background threads, shortly after the collection. */
const FREE_DELAY_MS = 100;

let collect: (() => void) | null | undefined;

/** V8's gc(), exposed at run time rather than by a command-line flag. */
function collector(): (() => void) | null {
  if (collect === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      collect = vm.runInNewContext('gc') as () => void;
    } catch {
      collect = null;
    }
  }
  return collect;
}

/** Empties the pools, collects, and trims the heap once the collector's background threads have freed what it found. */
export async function releaseIdleMemory(): Promise<void> {
  emptyPools();
  collector()?.();
  await new Promise((resolve) => setTimeout(resolve, FREE_DELAY_MS).unref());
  trimHeap();
}
