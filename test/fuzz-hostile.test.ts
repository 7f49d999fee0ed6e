// The hostile-bytes property against a live vblk: mutated and random byte
// streams in every handshake and transmission state. The server never
// dies, answers or closes each connection in bounded time, keeps its
// memory bounded, and a connection opened before keeps working
// throughout. Bounded budget: a fixed seed plus one printed random seed.

import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { CMD } from '../src/protocol/nbd/constants.js';
import { describeHostile, hostileCase, runHostile } from '../src/fuzz/hostile.js';
import { RawClient } from '../src/fuzz/nbd-client.js';
import { serve, tempDir } from './helpers/server.js';

const SIZE = 1 << 20;
const FIXED_SEED = 7041;
const RANDOM_SEED = Number(process.env.VBLK_FUZZ_SEED ?? Math.floor(Math.random() * 0x7fffffff));
const RUNS = Number(process.env.VBLK_FUZZ_RUNS ?? 1000);

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

t.comment(`hostile-bytes seeds: fixed ${FIXED_SEED}, random ${RANDOM_SEED} (VBLK_FUZZ_SEED=${RANDOM_SEED} to repeat)`);

t.test('hostile bytes in every state', async (t) => {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  const srv = await serve(t, [file, '--handshake-timeout', '2']);
  let alive = true;
  void srv.exited.then(() => (alive = false));
  const canary = await RawClient.connect(srv.socket);
  await canary.handshake();
  let cookie = 0n;
  const canaryReads = async (): Promise<boolean> => {
    canary.request({ flags: 0, type: CMD.READ, cookie: ++cookie, offset: 0, length: 4096 });
    const chunks = await canary.structuredReply();
    return chunks.at(-1)!.cookie === cookie;
  };
  const baseline = rssKiB(srv.proc.pid!);
  let peak = baseline;
  const shape = { size: SIZE };
  for (const seed of [FIXED_SEED, RANDOM_SEED]) {
    const details = await fc.check(
      fc.asyncProperty(hostileCase(shape), async (c) => {
        await runHostile({ path: srv.socket }, '', c, { timeoutMs: 3000 });
        peak = Math.max(peak, rssKiB(srv.proc.pid!));
        if (!alive) throw new Error(`the server died: ${describeHostile(c)}`);
      }),
      { seed, numRuns: RUNS },
    );
    t.equal(
      details.failed ? `${String(details.errorInstance)}\nseed ${details.seed} path ${details.counterexamplePath}\n${details.counterexample?.map((c) => describeHostile(c)).join('\n')}` : null,
      null,
      `${details.numRuns} hostile streams, seed ${seed}: every connection closed in time`,
    );
    t.ok(await canaryReads(), 'the connection opened before still reads');
  }
  t.ok(alive, 'the server never died');
  t.ok(peak - baseline < 256 * 1024, `memory stayed bounded: RSS ${baseline} KiB at start, at most ${peak} KiB`);
  canary.close();
});
