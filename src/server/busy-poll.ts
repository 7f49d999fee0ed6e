// Keeps the event loop polling for a short window after socket activity
// instead of letting it sleep in epoll_wait. A request that arrives
// within the window is picked up by the next non-blocking epoll_wait
// rather than by waking a halted CPU: on a virtual machine that wake-up
// (an IPI through the hypervisor) costs tens of microseconds, the bulk of
// a 4 KiB round trip at depth 1 (about 52 µs per request here without
// polling, 31 µs with a 30 µs window). QEMU polls its iothreads the same
// way (poll-max-ns). The loop keeps turning through setImmediate, which
// makes libuv's next epoll_wait return at once, so every connection and
// ring completion is still served in order. The price is CPU while the
// window is open; an idle server polls not at all.

import { performance } from 'node:perf_hooks';

export class BusyPoll {
  private until = 0;
  private polling = false;
  private readonly turn = (): void => {
    if (performance.now() < this.until) setImmediate(this.turn);
    else this.polling = false;
  };

  /** `windowUs` 0 turns polling off. */
  constructor(private readonly windowUs: number) {}

  /** Something happened on a socket: keep polling for another window. */
  touch(): void {
    if (this.windowUs === 0) return;
    this.until = performance.now() + this.windowUs / 1000;
    if (this.polling) return;
    this.polling = true;
    setImmediate(this.turn);
  }
}
