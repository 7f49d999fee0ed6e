// --filter delay (device/filters/delay.ts) through fio's nbd engine: the
// completion-latency percentiles of delayed reads sit at the delay or
// above, writes are not delayed, jitter spreads reads over [d - j, d + j],
// and a range delays only the requests in it. The bounds are one-sided
// where they are sound: a delayed request can never finish before its
// delay (less fio's histogram resolution, 1/64 of a power of two: 0.07 ms
// at 5 ms), while the upper bounds are loose (a loaded machine adds time).
// A live configure() is tested in-process.

import t from 'tap';
import { DelayFilter } from '../src/device/filters/delay.js';
import { MemoryImage } from '../src/device/images/memory.js';
import { request } from '../src/device/types.js';
import { fioNbd } from './helpers/fio.js';
import { serve } from './helpers/server.js';

/** fio's histogram bins near 5-10 ms are ~0.07-0.13 ms wide; the reported value may sit that far below the real one. */
const BIN_MS = 0.15;

t.test('delay:read=5ms: read latencies p1..p99 at 5 ms or above; writes not delayed', async (t) => {
  const served = await serve(t, ['memory:16M', '--filter', 'delay:read=5ms']);
  const [job] = await fioNbd(served.uri(), ['--name=rw', '--rw=randrw', '--bs=4k', '--size=16M', '--iodepth=8', '--runtime=3', '--time_based']);
  const { read, write } = job!;
  t.ok(read.ios > 100 && write.ios > 100, `enough reads and writes (${read.ios}, ${write.ios})`);
  for (const [p, ms] of Object.entries(read.clatMs)) t.ok(ms >= 5 - BIN_MS, `read p${p} ${ms.toFixed(3)} ms >= 5 ms`);
  t.ok(read.clatMs['50']! < 5 + 20, `read p50 ${read.clatMs['50']} ms is near 5 ms (loose bound)`);
  t.ok(write.clatMs['50']! < 2.5, `write p50 ${write.clatMs['50']} ms is well below 5 ms`);
});

t.test('delay:read=10ms,jitter=5ms: reads spread over [5, 15] ms', async (t) => {
  const served = await serve(t, ['memory:16M', '--filter', 'delay:read=10ms,jitter=5ms,seed=3']);
  const [job] = await fioNbd(served.uri(), ['--name=r', '--rw=randread', '--bs=4k', '--size=16M', '--iodepth=8', '--runtime=3', '--time_based']);
  const p = job!.read.clatMs;
  t.ok(p['1']! >= 5 - BIN_MS, `p1 ${p['1']} ms >= 5 ms`);
  t.ok(p['1']! < 8, `p1 ${p['1']} ms is well below 10 ms: the spread reaches down`);
  t.ok(p['99']! > 12, `p99 ${p['99']} ms is well above 10 ms: the spread reaches up`);
  t.ok(p['99']! < 15 + 20, `p99 ${p['99']} ms is near 15 ms (loose bound)`);
});

t.test('delay:any=5ms,offset=1M,length=1M: only requests in the range wait', async (t) => {
  const served = await serve(t, ['memory:4M', '--filter', 'delay:any=5ms,offset=1M,length=1M']);
  const jobs = await fioNbd(served.uri(), [
    '--rw=randread', '--bs=4k', '--iodepth=4', '--runtime=2', '--time_based',
    '--name=inside', '--offset=1M', '--size=1M',
    '--name=outside', '--offset=2M', '--size=1M',
  ]);
  const inside = jobs.find((j) => j.name === 'inside')!.read.clatMs;
  const outside = jobs.find((j) => j.name === 'outside')!.read.clatMs;
  t.ok(inside['1']! >= 5 - BIN_MS, `inside: p1 ${inside['1']} ms >= 5 ms`);
  t.ok(outside['50']! < 2.5, `outside: p50 ${outside['50']} ms well below 5 ms`);
});

t.test('configure: delays set and cleared live; concurrent requests wait side by side; no timer for no delay', async (t) => {
  const filter = new DelayFilter(new MemoryImage(1 << 20), { delays: { read: 50 }, jitter: 0, seed: 0, offset: 0, length: Number.MAX_SAFE_INTEGER });
  const timed = async (n: number): Promise<number> => {
    const start = performance.now();
    await Promise.all(Array.from({ length: n }, (_, i) => filter.read(request('read', i * 4096, 4096))));
    return performance.now() - start;
  };
  const ten = await timed(10);
  t.ok(ten >= 50, `ten reads take the delay (${ten.toFixed(1)} ms)`);
  t.ok(ten < 10 * 50, `and not ten delays one after another (${ten.toFixed(1)} ms)`);
  filter.configure(null);
  let resolved = false;
  const read = filter.read(request('read', 0, 4096)).then(() => (resolved = true));
  await new Promise((r) => setImmediate(r));
  t.ok(resolved, 'with the delays cleared a read completes before any timer could fire');
  await read;
  filter.configure({ delays: { write: 50 }, jitter: 0, seed: 0, offset: 0, length: Number.MAX_SAFE_INTEGER });
  const start = performance.now();
  await filter.write(request('write', 0, 4096, { data: Buffer.alloc(4096) }));
  t.ok(performance.now() - start >= 49, 'a new write delay takes effect');
});
