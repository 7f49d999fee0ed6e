// Waiting for a time on performance.now()'s clock. Node's timers count
// from the event loop's cached time, which can be behind by as long as
// the current loop turn has run, so setTimeout(d) may fire before d has
// passed; a filter that promises "at least d" sleeps again for what is left.

import { setTimeout as sleep } from 'node:timers/promises';

/** Resolves once performance.now() >= `at`. */
export async function waitUntil(at: number): Promise<void> {
  for (let left = at - performance.now(); left > 0; left = at - performance.now()) await sleep(Math.ceil(left));
}
