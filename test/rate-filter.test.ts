// --filter rate (device/filters/rate.ts) through fio's nbd engine: over
// 10 seconds fio gets the configured bytes/s, or requests/s, within 10%
// (the bound), and the same workload without the filter goes far
// faster than the limit, so the limit is what holds it back. A live
// configure() is tested in-process.

import t from 'tap';
import { RateFilter } from '../src/device/filters/rate.js';
import { MemoryImage } from '../src/device/images/memory.js';
import { request } from '../src/device/types.js';
import { fioNbd } from './helpers/fio.js';
import { serve } from './helpers/server.js';

const MiB = 1 << 20;
const read = (uri: string, bs: string, seconds: number) =>
  fioNbd(uri, ['--name=r', '--rw=randread', `--bs=${bs}`, '--size=32M', '--iodepth=8', `--runtime=${seconds}`, '--time_based']).then((j) => j[0]!.read);

t.test('rate:bytes=20M holds reads at 20 MiB/s within 10% over 10 s; unlimited is far faster', async (t) => {
  const limit = 20 * MiB;
  const control = await serve(t, ['memory:32M']);
  const free = await read(control.uri(), '64k', 2);
  t.ok(free.bytesPerSecond > 2 * limit, `without the filter: ${(free.bytesPerSecond / MiB).toFixed(1)} MiB/s, over twice the limit`);
  await control.stop();
  const served = await serve(t, ['memory:32M', '--filter', 'rate:bytes=20M']);
  const limited = await read(served.uri(), '64k', 10);
  const ratio = limited.bytesPerSecond / limit;
  t.ok(ratio > 0.9 && ratio < 1.1, `with rate:bytes=20M: ${(limited.bytesPerSecond / MiB).toFixed(2)} MiB/s (${(ratio * 100).toFixed(1)}% of the limit)`);
});

t.test('rate:requests=300 holds 4K reads at 300/s within 10% over 10 s; unlimited is far faster', async (t) => {
  const limit = 300;
  const control = await serve(t, ['memory:32M']);
  const free = await read(control.uri(), '4k', 2);
  t.ok(free.iops > 2 * limit, `without the filter: ${free.iops.toFixed(0)} requests/s, over twice the limit`);
  await control.stop();
  const served = await serve(t, ['memory:32M', '--filter', `rate:requests=${limit}`]);
  const limited = await read(served.uri(), '4k', 10);
  const ratio = limited.iops / limit;
  t.ok(ratio > 0.9 && ratio < 1.1, `with rate:requests=${limit}: ${limited.iops.toFixed(1)} requests/s (${(ratio * 100).toFixed(1)}%)`);
});

t.test('configure: a limit set live holds requests back in order; cleared, they pass at once', async (t) => {
  const filter = new RateFilter(new MemoryImage(MiB), { bytes: 0, readBytes: 0, writeBytes: 0, requests: 0 });
  const order: number[] = [];
  filter.configure({ bytes: 0, readBytes: 0, writeBytes: 0, requests: 100 });
  const limited = performance.now();
  // 100/s with a 0.1 s burst: 10 go at once, the other 20 take 0.2 s.
  await Promise.all(Array.from({ length: 30 }, (_, i) => filter.read(request('read', 0, 4096)).then(() => order.push(i))));
  t.ok(performance.now() - limited >= 199, `requests=100 holds 30 reads for 0.2 s at least (${(performance.now() - limited).toFixed(0)} ms)`);
  t.same(order, Array.from({ length: 30 }, (_, i) => i), 'in the order they came');
  filter.configure(null);
  let done = false;
  const last = filter.read(request('read', 0, 4096)).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  t.ok(done, 'cleared: a read passes with no timer');
  await last;
});
