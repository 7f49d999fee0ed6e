// watchFd: the event loop calls back when an eventfd or a socket becomes
// readable, keeps calling while it stays readable, never after stop(), and
// reports what it cannot watch as an error. Absence of a callback is shown
// without a timer: a second watch, made readable at the same moment as
// the first, calls back in the same turn of the loop the first would have.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import t from 'tap';
import { type FdWatch, native } from '../src/io/native.js';
import { eventfd, eventfdRead, eventfdWrite } from '../src/sys/eventfd.js';
import { recvWithFds, sendWithFds, socketPair } from '../src/sys/fd-passing.js';

const needsAddon = { skip: native ? false : 'no native addon' };
type Teardown = { teardown(fn: () => void): void };

function efd(t: Teardown): number {
  const fd = eventfd();
  t.teardown(() => fs.closeSync(fd));
  return fd;
}

/** Watches `fd` until the test ends; `calls` counts callbacks. */
function watch(t: Teardown, fd: number, onReadable: (w: FdWatch) => void = () => {}) {
  const state = { calls: 0, errors: [] as (Error | null)[] };
  const w: FdWatch = native!.watchFd(fd, (err) => {
    state.calls++;
    if (err) state.errors.push(err);
    onReadable(w);
  });
  t.teardown(() => w.stop());
  return { w, state };
}

/** Resolves on the next callback of a fresh watch on a fresh eventfd written now. */
function sentinel(t: Teardown): Promise<void> {
  const fd = efd(t);
  return new Promise((resolve) => {
    const w = native!.watchFd(fd, () => {
      w.stop();
      resolve();
    });
    eventfdWrite(fd);
  });
}

t.test('an eventfd written from JavaScript calls back; the value is read; stop ends it', needsAddon, async (t) => {
  const fd = efd(t);
  const values: number[] = [];
  let woke!: () => void;
  let wakeUp = new Promise<void>((resolve) => (woke = resolve));
  const { w, state } = watch(t, fd, () => {
    values.push(eventfdRead(fd));
    woke();
  });
  eventfdWrite(fd, 3);
  eventfdWrite(fd, 4);
  await wakeUp;
  t.same(values, [7], 'one wake-up for both writes, the counter summed');
  wakeUp = new Promise<void>((resolve) => (woke = resolve));
  eventfdWrite(fd);
  await wakeUp;
  t.same(values, [7, 1]);
  t.same(state.errors, []);

  w.stop();
  w.stop();
  eventfdWrite(fd, 5);
  await sentinel(t);
  t.equal(state.calls, 2, 'no callback after stop()');
  t.equal(eventfdRead(fd), 5, 'the write is still there to read');
  t.equal(eventfdRead(fd), 0, 'and 0 once taken');
});

t.test('level-triggered: calls back again while not drained; stop() inside the callback', needsAddon, async (t) => {
  const fd = efd(t);
  let stopped!: () => void;
  const done = new Promise<void>((resolve) => (stopped = resolve));
  const { state } = watch(t, fd, (w) => {
    if (state.calls === 3) {
      w.stop();
      stopped();
    }
  });
  eventfdWrite(fd);
  await done;
  await sentinel(t);
  t.equal(state.calls, 3, 'three callbacks without a read, none after stop()');
  t.equal(eventfdRead(fd), 1, 'the counter was never read');
});

t.test('a socket: readable with data and descriptors, and at end of stream', needsAddon, async (t) => {
  const [front, back] = socketPair();
  t.teardown(() => fs.closeSync(back));
  const kick = efd(t);
  const got: { bytes: number; fds: number }[] = [];
  let next!: () => void;
  let arrived = new Promise<void>((resolve) => (next = resolve));
  watch(t, back, () => {
    const r = recvWithFds(back, Buffer.alloc(12), 8);
    if (!r) return;
    got.push({ bytes: r.bytes, fds: r.fds.length });
    r.fds.forEach((f) => fs.closeSync(f));
    next();
  });
  sendWithFds(front, Buffer.alloc(12), [kick]);
  await arrived;
  t.same(got, [{ bytes: 12, fds: 1 }]);
  arrived = new Promise<void>((resolve) => (next = resolve));
  fs.closeSync(front);
  await arrived;
  t.same(got[1], { bytes: 0, fds: 0 }, 'the peer closing wakes the watch, and reads as 0 bytes');
});

t.test('what cannot be watched is an error, not a crash', needsAddon, async (t) => {
  const fd = efd(t);
  watch(t, fd);
  t.throws(() => native!.watchFd(fd, () => {}), { code: 'EEXIST' }, 'a descriptor the loop already polls');
  const file = fs.openSync('/proc/self/status', 'r');
  t.teardown(() => fs.closeSync(file));
  t.throws(() => native!.watchFd(file, () => {}), { code: 'EPERM' }, 'a regular file (epoll refuses it)');
  t.throws(() => native!.watchFd(-1, () => {}), TypeError);
  t.throws(() => (native!.watchFd as (fd: unknown) => FdWatch)(fd), TypeError, 'no callback');
});

// In child processes: whether the loop exits, and where an exception goes.
function child(script: string) {
  const prelude = `
    import { native } from ${JSON.stringify(new URL('../src/io/native.js', import.meta.url).href)};
    import { eventfd, eventfdWrite } from ${JSON.stringify(new URL('../src/sys/eventfd.js', import.meta.url).href)};
  `;
  return spawnSync(process.execPath, ['--input-type=module', '-e', prelude + script], { encoding: 'utf8', timeout: 60_000 });
}

t.test('a watch keeps the process alive unless unref()ed', needsAddon, async (t) => {
  const unrefd = child(`native.watchFd(eventfd(), () => {}).unref(); console.log('end of script');`);
  t.equal(unrefd.status, 0, 'an unref()ed watch lets the process exit');
  t.match(unrefd.stdout, /end of script/);
  const kept = child(`
    const fd = eventfd();
    const w = native.watchFd(fd, () => { console.log('called back'); w.stop(); });
    w.unref().ref();
    setImmediate(() => eventfdWrite(fd));
  `);
  t.equal(kept.status, 0);
  t.match(kept.stdout, /called back/, 'a referenced watch lives until its callback has run');
});

t.test('an exception in the callback is an uncaught exception', needsAddon, async (t) => {
  const r = child(`
    process.on('uncaughtException', (err) => { console.log('caught: ' + err.message); w.stop(); });
    const fd = eventfd();
    const w = native.watchFd(fd, () => { throw new Error('thrown in the callback'); });
    eventfdWrite(fd);
  `);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stdout.trim(), 'caught: thrown in the callback', 'it reaches process.on(\'uncaughtException\') once');
});
