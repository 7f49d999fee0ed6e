// OverlapQueue: overlapping writes run in arrival order, reads wait only
// for earlier overlapping writes, and requests that do not overlap never
// wait.

import fc from 'fast-check';
import t from 'tap';
import { OverlapQueue, type Ticket } from '../src/io/overlap-queue.js';

/** Lets every pending promise callback run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Nothing active: a write over everything is admitted at once (and released again). */
function isEmpty(q: OverlapQueue): boolean {
  const r = q.acquire(0, Number.MAX_SAFE_INTEGER, true);
  if (r instanceof Promise) return false;
  q.release(r);
  return true;
}

/** Tracks when an acquire is admitted. */
class Entry {
  ticket: Ticket | null = null;
  readonly immediate: boolean;
  constructor(q: OverlapQueue, offset: number, length: number, exclusive: boolean, admitted: string[], readonly name: string) {
    const r = q.acquire(offset, length, exclusive);
    this.immediate = !(r instanceof Promise);
    if (r instanceof Promise) {
      void r.then((ticket) => {
        this.ticket = ticket;
        admitted.push(name);
      });
    } else {
      this.ticket = r;
      admitted.push(name);
    }
  }
  get running(): boolean {
    return this.ticket !== null;
  }
}

function setup(): { q: OverlapQueue; admitted: string[]; write: (name: string, o: number, l: number) => Entry; read: (name: string, o: number, l: number) => Entry } {
  const q = new OverlapQueue();
  const admitted: string[] = [];
  return {
    q,
    admitted,
    write: (name, o, l) => new Entry(q, o, l, true, admitted, name),
    read: (name, o, l) => new Entry(q, o, l, false, admitted, name),
  };
}

t.test('non-overlapping requests never wait', async (t) => {
  const { q, write, read } = setup();
  const a = write('a', 0, 10);
  const b = write('b', 10, 10); // adjacent is not overlapping
  const c = read('c', 20, 5);
  const d = write('d', 100, 1);
  const f = write('f', 90, 10); // ends where d starts
  const g = read('g', 0, 10); // overlaps a, so it is the one that waits
  for (const e of [a, b, c, d, f]) t.ok(e.immediate, `${e.name} admitted at once`);
  t.notOk(g.immediate, 'g overlaps the write a and waits');
  q.release(a.ticket!);
  await settle();
  t.ok(g.running, 'until a is released');
  for (const e of [b, c, d, f, g]) q.release(e.ticket!);
  t.ok(isEmpty(q), 'all released');
});

t.test('overlapping reads never wait for each other', async (t) => {
  const { read } = setup();
  const entries = [read('r1', 0, 100), read('r2', 50, 100), read('r3', 0, 1000)];
  for (const e of entries) t.ok(e.immediate, `${e.name} admitted at once`);
});

t.test('overlapping writes wait in arrival order', async (t) => {
  const { q, admitted, write } = setup();
  const w1 = write('w1', 0, 10);
  const w2 = write('w2', 5, 10);
  const w3 = write('w3', 0, 10);
  const w4 = write('w4', 9, 1);
  await settle();
  t.same(admitted, ['w1'], 'only the first runs');
  t.notOk(w2.immediate || w3.immediate || w4.immediate, 'the others got promises');
  q.release(w1.ticket!);
  await settle();
  t.same(admitted, ['w1', 'w2'], 'w2 next; w3 still waits for w2 although w1 is done');
  q.release(w2.ticket!);
  await settle();
  t.same(admitted, ['w1', 'w2', 'w3'], 'then w3');
  t.notOk(w4.running, 'w4 overlaps w3 and waits');
  q.release(w3.ticket!);
  await settle();
  t.same(admitted, ['w1', 'w2', 'w3', 'w4']);
  q.release(w4.ticket!);
  t.ok(isEmpty(q), 'all released');
});

t.test('a later write does not overtake an earlier one even when the blocker goes first', async (t) => {
  const { q, admitted, write } = setup();
  const w1 = write('w1', 0, 10);
  const w2 = write('w2', 0, 10);
  const w3 = write('w3', 20, 10);
  await settle();
  t.same(admitted, ['w1', 'w3'], 'w3 overlaps nothing');
  q.release(w3.ticket!);
  await settle();
  t.notOk(w2.running, 'releasing an unrelated ticket wakes nobody');
  q.release(w1.ticket!);
  await settle();
  t.ok(w2.running);
});

t.test('reads wait only for earlier overlapping writes', async (t) => {
  const { q, admitted, write, read } = setup();
  const r0 = read('r0', 0, 10);
  const w1 = write('w1', 5, 10);
  const r2 = read('r2', 0, 10);
  const r3 = read('r3', 20, 10);
  await settle();
  t.ok(r0.immediate, 'a read with nothing before it runs');
  t.notOk(w1.immediate, 'the write waits for the earlier read it overlaps');
  t.notOk(r2.immediate, 'a read waits for an earlier write it overlaps, even one not yet running');
  t.ok(r3.immediate, 'a read overlapping nothing runs');
  t.same(admitted, ['r0', 'r3']);
  q.release(r0.ticket!);
  await settle();
  t.same(admitted, ['r0', 'r3', 'w1']);
  t.notOk(r2.running);
  q.release(w1.ticket!);
  await settle();
  t.ok(r2.running, 'the read runs once the write is done');

  const fresh = setup();
  const w = fresh.write('w', 0, 10);
  const rBefore = fresh.read('r-later', 10, 10);
  t.ok(w.immediate && rBefore.immediate, 'a read right after a write does not overlap it');
});

t.test('a waiting write is not overtaken by a later read it overlaps', async (t) => {
  const { q, admitted, write, read } = setup();
  const r1 = read('r1', 0, 10);
  const w = write('w', 0, 10);
  const r2 = read('r2', 0, 10);
  await settle();
  t.same(admitted, ['r1']);
  q.release(r1.ticket!);
  await settle();
  t.same(admitted, ['r1', 'w'], 'the write goes before the read that came after it');
  q.release(w.ticket!);
  await settle();
  t.ok(r2.running);
});

t.test('tryAcquire takes a ticket only when nothing is in the way, and leaves no trace when it refuses', async (t) => {
  const { q, admitted, write } = setup();
  const w1 = write('w1', 0, 10);
  t.equal(q.tryAcquire(5, 10, false), null, 'a read over a running write is refused');
  t.equal(q.tryAcquire(0, 1, true), null, 'so is a write');
  const r = q.tryAcquire(10, 10, false);
  t.ok(r, 'a read next to it is not');
  t.equal(q.tryAcquire(15, 1, true), null, 'a write over that read is refused');
  const w2 = write('w2', 0, 10);
  q.release(w1.ticket!);
  await settle();
  t.same(admitted, ['w1', 'w2'], 'the refused tickets held nobody up');
  q.release(w2.ticket!);
  q.release(r!);
  t.ok(isEmpty(q), 'and nothing of them is left');
});

t.test('releasing an unknown or already released ticket changes nothing', async (t) => {
  const { q, admitted, write } = setup();
  const w1 = write('w1', 0, 10);
  write('w2', 0, 10);
  const w3 = write('w3', 0, 10);
  q.release(w1.ticket!);
  await settle();
  t.same(admitted, ['w1', 'w2']);
  q.release(w1.ticket!); // twice
  await settle();
  t.same(admitted, ['w1', 'w2'], 'a second release does not wake w3');
  t.notOk(w3.running);
  const stranger = new OverlapQueue().acquire(0, 10, true) as Ticket;
  q.release(stranger);
  await settle();
  t.notOk(w3.running, "a ticket of another queue wakes nobody");
});

t.test('any interleaving: no conflicting overlap runs at once, conflicts run in arrival order, nothing deadlocks', async (t) => {
  interface Acq {
    kind: 'acquire';
    offset: number;
    length: number;
    exclusive: boolean;
    /** Try first, as the gateway does for reads (tryAcquire), then wait the usual way. */
    tryFirst: boolean;
  }
  interface Rel {
    kind: 'release';
    pick: number;
  }
  const step = fc.oneof(
    fc.record({ kind: fc.constant('acquire' as const), offset: fc.nat({ max: 60 }), length: fc.integer({ min: 1, max: 20 }), exclusive: fc.boolean(), tryFirst: fc.boolean() }),
    fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(step, { maxLength: 40 }), async (steps: (Acq | Rel)[]) => {
      const q = new OverlapQueue();
      interface Req {
        seq: number;
        start: number;
        end: number;
        exclusive: boolean;
        ticket: Ticket | null;
        startedAt: number;
        released: boolean;
      }
      const all: Req[] = [];
      let clock = 0;
      const conflict = (a: Req, b: Req): boolean => (a.exclusive || b.exclusive) && a.start < b.end && b.start < a.end;
      const running = (): Req[] => all.filter((r) => r.ticket && !r.released);
      const check = (): void => {
        const now = running();
        for (const a of now) for (const b of now) if (a !== b && conflict(a, b)) throw new Error(`#${a.seq} and #${b.seq} conflict and run together`);
        const waiting = all.filter((r) => !r.ticket);
        if (waiting.length > 0 && now.length === 0) throw new Error('deadlock: requests wait with nothing running');
      };
      const run = async (s: Acq | Rel): Promise<void> => {
        if (s.kind === 'acquire') {
          const req: Req = { seq: all.length, start: s.offset, end: s.offset + s.length, exclusive: s.exclusive, ticket: null, startedAt: -1, released: false };
          // Must it wait? Only if an earlier, unreleased request conflicts with it.
          const mustWait = all.some((o) => !o.released && conflict(o, req));
          all.push(req);
          const tried = s.tryFirst ? q.tryAcquire(s.offset, s.length, s.exclusive) : null;
          if (s.tryFirst && (tried === null) !== mustWait) throw new Error(`#${req.seq}: tryAcquire ${tried ? 'took a ticket' : 'refused'}, expected ${mustWait ? 'refusal' : 'a ticket'}`);
          const r = tried ?? q.acquire(s.offset, s.length, s.exclusive);
          if ((r instanceof Promise) !== mustWait) throw new Error(`#${req.seq}: waits=${r instanceof Promise}, expected ${mustWait}`);
          if (r instanceof Promise) {
            void r.then((ticket) => {
              req.ticket = ticket;
              req.startedAt = clock++;
            });
          } else {
            req.ticket = r;
            req.startedAt = clock++;
          }
        } else {
          const now = running();
          if (now.length === 0) return;
          const victim = now[s.pick % now.length];
          victim.released = true;
          q.release(victim.ticket!);
        }
        await settle();
        check();
      };
      for (const s of steps) await run(s);
      // Drain: release everything still running until all have run.
      for (let guard = 0; guard < 1000 && all.some((r) => !r.released); guard++) {
        const now = running();
        if (now.length === 0) throw new Error('deadlock while draining');
        now[0].released = true;
        q.release(now[0].ticket!);
        await settle();
        check();
      }
      if (!isEmpty(q)) throw new Error('tickets left behind');
      for (const a of all) {
        for (const b of all) {
          if (a.seq < b.seq && conflict(a, b) && a.startedAt > b.startedAt) throw new Error(`#${b.seq} overtook #${a.seq}`);
        }
      }
      return true;
    }),
    { seed: 42, numRuns: 150 },
  );
  t.pass('the property held');
});
