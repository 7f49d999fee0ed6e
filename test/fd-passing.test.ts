// File descriptors over a UNIX socket pair, the way a vhost-user front end
// sends them: a 12-byte header carrying the descriptors, then a payload.
// Read as the back end must (exactly the header, then the payload), each
// message gets its own descriptors; too many descriptors are an error
// that leaks none of them.

import fs from 'node:fs';
import t from 'tap';
import { eventfd } from '../src/sys/eventfd.js';
import { MAX_FDS_PER_MESSAGE, recvWithFds, sendWithFds, socketPair } from '../src/sys/fd-passing.js';
import { memfdCreate } from '../src/sys/memfd.js';

type Teardown = { teardown(fn: () => void): void };

function closeLater(t: Teardown, ...fds: number[]): number[] {
  t.teardown(() => fds.forEach((fd) => fs.closeSync(fd)));
  return fds;
}

function pair(t: Teardown): [number, number] {
  const [a, b] = socketPair();
  closeLater(t, a, b);
  return [a, b];
}

/** A vhost-user-shaped header: request, flags (version 1), payload size. */
function header(request: number, size: number): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt32LE(request, 0);
  h.writeUInt32LE(1, 4);
  h.writeUInt32LE(size, 8);
  return h;
}

const sameFile = (a: number, b: number) => {
  const [x, y] = [fs.fstatSync(a), fs.fstatSync(b)];
  return x.ino === y.ino && x.dev === y.dev;
};
const openFds = () => fs.readdirSync('/proc/self/fd').length;
/** O_CLOEXEC as /proc/self/fdinfo shows it (octal flags). */
function closeOnExec(fd: number): boolean {
  const flags = /flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1];
  return (parseInt(flags, 8) & 0o2000000) !== 0;
}

function recvExactly(fd: number, length: number, maxFds: number) {
  const buffer = Buffer.alloc(length);
  const r = recvWithFds(fd, buffer, maxFds);
  return { ...r!, data: buffer.subarray(0, r?.bytes ?? 0) };
}

t.test('each message\'s descriptors arrive with its own 12-byte header', async (t) => {
  const [front, back] = pair(t);
  const [memfd, kick, call] = closeLater(t, memfdCreate('vblk-fd-test'), eventfd(), eventfd());
  // A message with no descriptors, then one carrying two, then one carrying one.
  const payloadA = Buffer.from('eight by');
  sendWithFds(front, Buffer.concat([header(1, 8), payloadA]));
  t.equal(sendWithFds(front, header(5, 40), [memfd, kick]), 12, 'the header goes with the descriptors');
  const payloadB = Buffer.alloc(40, 0xb);
  t.equal(sendWithFds(front, payloadB), 40, 'the payload on its own');
  sendWithFds(front, Buffer.concat([header(13, 8), Buffer.alloc(8, 0xc)]), [call]);

  const a = recvExactly(back, 12, 8);
  t.same([a.bytes, a.fds], [12, []], 'first header, no descriptors');
  t.equal(a.data.readUInt32LE(0), 1);
  t.same(recvExactly(back, 8, 8).data, payloadA, 'its payload');

  const b = recvExactly(back, 12, 8);
  t.equal(b.data.readUInt32LE(0), 5, 'second header');
  t.equal(b.fds.length, 2, 'with two descriptors');
  closeLater(t, ...b.fds);
  t.ok(sameFile(b.fds[0], memfd) && sameFile(b.fds[1], kick), 'the memfd and the kick eventfd, in order');
  t.ok(b.fds.every(closeOnExec), 'received close-on-exec');
  const p = recvExactly(back, 40, 8);
  t.same([p.data, p.fds], [payloadB, []], 'its payload, no descriptors');

  const c = recvExactly(back, 12, 8);
  closeLater(t, ...c.fds);
  t.equal(c.data.readUInt32LE(0), 13);
  t.ok(c.fds.length === 1 && sameFile(c.fds[0], call), 'third header, the call eventfd');
  t.equal(recvExactly(back, 8, 8).bytes, 8);
  t.equal(recvWithFds(back, Buffer.alloc(12), 8), null, 'then nothing waiting: null, not a block');

  const received = Buffer.from('through the passed memfd');
  fs.writeSync(b.fds[0], received, 0, received.length, 0);
  const check = Buffer.alloc(received.length);
  fs.readSync(memfd, check, 0, check.length, 0);
  t.same(check, received, 'the passed descriptor is the same file');
});

// What the 12-byte read protects against: a greedy read of a message
// without descriptors runs on into the next header and takes its
// descriptors with it (if this starts failing, the kernel has changed).
t.test('negative control: reading past a header attaches the next message\'s descriptors', async (t) => {
  const [front, back] = pair(t);
  const [kick] = closeLater(t, eventfd());
  sendWithFds(front, Buffer.concat([header(1, 4), Buffer.alloc(4)]));
  sendWithFds(front, header(12, 0), [kick]);
  const greedy = recvExactly(back, 4096, 8);
  closeLater(t, ...greedy.fds);
  t.equal(greedy.bytes, 28, 'one read took both messages');
  t.equal(greedy.fds.length, 1, 'and the second message\'s descriptor with the first');
});

t.test('more descriptors than room: an error, and none of them leak', async (t) => {
  const [front, back] = pair(t);
  const fds = closeLater(t, eventfd(), eventfd(), eventfd(), eventfd());
  const before = openFds();
  sendWithFds(front, header(5, 0), fds);
  t.throws(() => recvWithFds(back, Buffer.alloc(12), 2), { code: 'ERR_FDS_TRUNCATED', bytes: 12 }, 'MSG_CTRUNC is reported');
  t.equal(openFds(), before, 'the two that fit were closed, the kernel dropped the rest');

  sendWithFds(front, header(5, 0), fds.slice(0, 1));
  t.throws(() => recvWithFds(back, Buffer.alloc(12), 0), { code: 'ERR_FDS_TRUNCATED' }, 'no room at all');
  t.equal(openFds(), before);

  sendWithFds(front, header(5, 0), fds);
  const exact = recvWithFds(back, Buffer.alloc(12), 4)!;
  closeLater(t, ...exact.fds);
  t.equal(exact.fds.length, 4, 'exactly enough room is enough');
  t.ok(fds.every((fd) => fs.fstatSync(fd)), 'the sender keeps its own descriptors');
});

t.test('end of stream, bad arguments, closed descriptors', async (t) => {
  const [front, back] = socketPair();
  closeLater(t, back);
  sendWithFds(front, Buffer.from('x'));
  fs.closeSync(front);
  t.equal(recvWithFds(back, Buffer.alloc(12), 8)!.bytes, 1, 'what was sent before the close');
  t.same(recvWithFds(back, Buffer.alloc(12), 8), { bytes: 0, fds: [] }, 'then 0 bytes: the peer closed');
  t.throws(() => sendWithFds(back, Buffer.from('x')), { code: 'EPIPE' }, 'sending to a closed peer is EPIPE, not SIGPIPE');
  t.throws(() => recvWithFds(front, Buffer.alloc(1), 0), { code: 'EBADF', syscall: 'recvmsg' }, 'a closed descriptor');
  t.throws(() => recvWithFds(back, Buffer.alloc(1), MAX_FDS_PER_MESSAGE + 1), RangeError);
  t.throws(() => sendWithFds(back, Buffer.from('x'), new Array(MAX_FDS_PER_MESSAGE + 1).fill(0)), RangeError);
  t.throws(() => sendWithFds(back, Buffer.from('x'), [-1]), RangeError);
  t.throws(() => sendWithFds(back, Buffer.alloc(0), [0]), /at least one byte/);
});

t.test('a full socket: sendWithFds returns 0 instead of blocking', async (t) => {
  const [front] = pair(t);
  const chunk = Buffer.alloc(64 * 1024);
  let sent = 0;
  let n: number;
  while ((n = sendWithFds(front, chunk)) > 0) sent += n;
  t.ok(sent > 0, `the socket buffer took ${sent} bytes before it was full`);
  t.equal(n, 0);
});
