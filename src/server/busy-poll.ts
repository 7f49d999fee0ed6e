// Keeps the event loop polling for a short window while it waits for a
// client's next request, instead of letting it sleep in epoll_wait. A
// request that arrives within the window is picked up by the next
// non-blocking epoll_wait rather than by waking a halted CPU: on a
// virtual machine that wake-up (an IPI through the hypervisor) costs tens
// of microseconds, the bulk of a 4 KiB round trip at depth 1 (about 52 µs
// per request here without polling, 31 µs with a 30 µs window). The loop
// keeps turning through setImmediate, which makes libuv's next epoll_wait
// return at once, so every connection is still served in order. QEMU's
// iothreads poll the same way (poll-max-ns).
//
// Polling costs a core while the window is open. It only pays while the
// server waits for its clients: with requests in flight the wait is for
// the disk or a kernel worker, often long, and the spinning core was
// wanted by that worker (1 MiB reads: 7% slower when polling then). So
// the window opens only when no request is in flight anywhere, and closes
// as soon as one starts. Its length follows how long the server has
// been waiting for its clients (poll-window.ts): a client that comes back
// quickly is polled for, an idle or lightly loaded server polls not at
// all.

import { performance } from 'node:perf_hooks';
import { PollWindow } from './poll-window.js';

export class BusyPoll {
  private until = 0;
  private polling = false;
  private inflight = 0;
  /** When the server last became idle (nothing in flight, waiting for clients), ms; -1: not waiting. */
  private idleSince = -1;
  private readonly turn = (): void => {
    if (this.inflight === 0 && performance.now() < this.until) setImmediate(this.turn);
    else this.polling = false;
  };

  /** `maxUs` bounds the window; 0 turns polling off. */
  constructor(
    readonly maxUs: number,
    private readonly window = new PollWindow(maxUs),
  ) {}

  /** A request started: the loop now waits for its completion, not for a client. */
  begin(): void {
    if (this.inflight++ > 0 || this.idleSince < 0) return;
    this.window.observe((performance.now() - this.idleSince) * 1000);
    this.idleSince = -1;
  }

  /** A request finished. */
  end(): void {
    this.inflight--;
  }

  /** Something happened on a socket: with nothing in flight, poll for another window. */
  touch(): void {
    if (this.maxUs === 0 || this.inflight > 0) return;
    const now = performance.now();
    if (this.idleSince < 0) this.idleSince = now;
    const windowUs = this.window.current;
    if (windowUs === 0) return;
    this.until = now + windowUs / 1000;
    if (this.polling) return;
    this.polling = true;
    setImmediate(this.turn);
  }
}
