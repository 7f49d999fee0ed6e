// BusyPoll: a touch keeps an immediate pending (the event loop does not
// sleep) until the window has passed; with a window of 0 it never does,
// nor while a request is in flight.

import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { BusyPoll } from '../src/server/busy-poll.js';

function immediatePending(): boolean {
  return process.getActiveResourcesInfo().includes('Immediate');
}

t.test('a touch keeps the loop turning for the window, then lets it sleep', async (t) => {
  // A window of a second, so that a busy machine's late timers cannot
  // move a check across its edge.
  const poll = new BusyPoll(1_000_000);
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

t.test('a window of 0 never polls', async (t) => {
  const poll = new BusyPoll(0);
  poll.touch();
  t.notOk(immediatePending());
});

t.test('no polling while a request is in flight', async (t) => {
  const poll = new BusyPoll(1_000_000);
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
