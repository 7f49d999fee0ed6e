// How long the event loop polls for a client's next request (busy-poll.ts),
// adapted to how long the server has actually been waiting, after QEMU's
// poll-grow/poll-shrink for its iothreads. Polling pays only when the next
// request comes soon: then it is picked up without the wake-up of a halted
// CPU, which on a virtual machine costs both latency and CPU. When it comes
// late, every microsecond of the window was spent for nothing, and the
// wake-up is paid anyway. So after each wait:
// - the window caught the request (the wait was no longer than the window):
//   it stays;
// - the wait was longer than the window but no longer than the largest
//   window allowed: a longer window would have caught it, so it doubles
//   (from a few microseconds when it was off);
// - the wait was longer than the largest window: polling could not have
//   caught it, so the window halves, and below a few microseconds stops.
// A client at depth 1 that answers within the largest window gets a window
// that covers its think time within a handful of requests; an idle or
// lightly loaded server (a request now and then) polls not at all.

/** Where a window that was off starts, and below which a shrinking one stops, µs. */
export const START_US = 4;

export class PollWindow {
  private us: number;

  /** `maxUs` bounds the window (0: never poll); `initialUs` is where it starts (0: off until waits show it pays). */
  constructor(
    readonly maxUs: number,
    initialUs = 0,
  ) {
    this.us = Math.min(initialUs, maxUs);
  }

  /** The window to poll for now, µs (0: do not poll). */
  get current(): number {
    return this.us;
  }

  /** The server waited `waitedUs` between becoming idle and its next request. */
  observe(waitedUs: number): void {
    if (waitedUs <= this.us || this.maxUs === 0) return;
    if (waitedUs > this.maxUs) this.us = this.us / 2 < START_US ? 0 : this.us / 2;
    else this.us = Math.min(this.maxUs, Math.max(START_US, this.us * 2));
  }
}
