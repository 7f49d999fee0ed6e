// BusyPoll: a touch keeps an immediate pending (the event loop does not
// sleep) until the window has passed; with a window of 0 it never does,
// nor while a request is in flight; the wait from a touch to the next
// request is what adapts the window. PollWindow: how the window grows and
// shrinks with those waits.

import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { BusyPoll } from '../src/server/busy-poll.js';
import { PollWindow, START_US } from '../src/server/poll-window.js';

function immediatePending(): boolean {
  return process.getActiveResourcesInfo().includes('Immediate');
}

/** A poll whose window is a second from the start, so that a busy machine's late timers cannot move a check across its edge. */
function secondLongPoll(): BusyPoll {
  return new BusyPoll(1_000_000, new PollWindow(1_000_000, 1_000_000));
}

t.test('a touch keeps the loop turning for the window, then lets it sleep', async (t) => {
  const poll = secondLongPoll();
  t.notOk(immediatePending(), 'nothing pending before');
  poll.touch();
  t.ok(immediatePending(), 'polling right after the touch');
  await sleep(600);
  t.ok(immediatePending(), 'still polling inside the window');
  poll.touch();
  await sleep(600);
  t.ok(immediatePending(), 'a second touch extended the window past the first');
  await sleep(1500);
  t.notOk(immediatePending(), 'stopped once the window passed');
});

t.test('a bound of 0 never polls, whatever the waits', async (t) => {
  const poll = new BusyPoll(0);
  for (let i = 0; i < 5; i++) {
    poll.touch();
    poll.begin();
    poll.end();
  }
  poll.touch();
  t.notOk(immediatePending());
});

t.test('a window that starts off does not poll', async (t) => {
  const poll = new BusyPoll(50);
  poll.touch();
  t.notOk(immediatePending());
});

t.test('no polling while a request is in flight', async (t) => {
  const poll = secondLongPoll();
  poll.touch();
  t.ok(immediatePending(), 'polling while idle');
  poll.begin();
  await sleep(20);
  t.notOk(immediatePending(), 'a request started: the loop may sleep until it completes');
  poll.touch();
  t.notOk(immediatePending(), 'activity with a request in flight opens no window');
  poll.end();
  poll.touch();
  t.ok(immediatePending(), 'idle again: polling again');
  await sleep(1100);
  t.notOk(immediatePending());
});

t.test('the wait from the first touch of an idle spell to the next request adapts the window', async (t) => {
  const seen: number[] = [];
  const window = new (class extends PollWindow {
    override observe(waitedUs: number): void {
      seen.push(waitedUs);
      super.observe(waitedUs);
    }
  })(1_000_000);
  const poll = new BusyPoll(1_000_000, window);
  poll.begin();
  t.same(seen, [], 'a request with no idle spell before it tells nothing');
  poll.end();
  poll.touch();
  await sleep(30);
  poll.touch(); // more activity in the same idle spell: the wait still counts from its start
  await sleep(30);
  poll.begin();
  poll.begin(); // a second request in flight: not the end of an idle spell
  t.equal(seen.length, 1, 'one observation per idle spell');
  t.ok(seen[0] >= 55_000 && seen[0] < 1_000_000, `waited ${seen[0]} µs, from the first touch`);
  t.ok(window.current >= START_US, 'a wait within the bound grew the window');
  poll.end();
  poll.end();
});

t.test('PollWindow grows on waits it just missed, holds on hits, shrinks on waits past the bound', async (t) => {
  const w = new PollWindow(50);
  t.equal(w.current, 0, 'off at first');
  w.observe(20);
  t.equal(w.current, START_US, 'a wait within the bound turns it on');
  const grown = [w.current];
  for (let i = 0; i < 6; i++) {
    w.observe(20);
    grown.push(w.current);
  }
  t.same(grown, [4, 8, 16, 32, 32, 32, 32], 'doubles until it covers the wait, then holds');
  w.observe(45);
  t.equal(w.current, 50, 'never past the bound');
  w.observe(50);
  t.equal(w.current, 50, 'a wait the window caught changes nothing');
  const shrunk: number[] = [];
  for (let i = 0; i < 6; i++) {
    w.observe(1000);
    shrunk.push(w.current);
  }
  t.same(shrunk, [25, 12.5, 6.25, 0, 0, 0], 'waits no window could catch halve it, then turn it off');
  t.equal(new PollWindow(50, 80).current, 50, 'a start above the bound is cut to it');
  const off = new PollWindow(0);
  off.observe(0.5);
  t.equal(off.current, 0, 'a bound of 0 stays off');
});
