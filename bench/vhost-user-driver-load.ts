// A load generator on test/helpers/vhost-user-driver.ts, run as its own
// process by bench/vhost-user.ts --driver ts (so the client does not
// share an event loop with anything): `depth` requests per queue kept in
// flight for `seconds`, random or sequential offsets within the image,
// then one JSON line with kiops, gips and mean_lat_us, the fields
// blkio-bench's aggregate has. Reads check only their status; written
// data is whatever guest memory holds.

import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { VIRTIO_BLK_S } from '../src/protocol/vhost-user/virtio-constants.js';
import { VhostUserDriver } from '../test/helpers/vhost-user-driver.js';

const HELP = `Usage: node dist/bench/vhost-user-driver-load.js --socket PATH [options]

Options:
  --readwrite randread|randwrite|read|write   (default randread)
  --blocksize BYTES   multiple of 512 (default 4096)
  --iodepth N         requests in flight per queue (default 32)
  --queues N          (default 1)
  --runtime SEC       (default 5)
  --poll              poll the used rings instead of waiting on call eventfds
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      socket: { type: 'string' },
      readwrite: { type: 'string' },
      blocksize: { type: 'string' },
      iodepth: { type: 'string' },
      queues: { type: 'string' },
      runtime: { type: 'string' },
      poll: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || !values.socket) return void process.stdout.write(HELP);
  const rw = values.readwrite ?? 'randread';
  if (!['randread', 'randwrite', 'read', 'write'].includes(rw)) throw new Error(`--readwrite ${rw}`);
  const bs = Number(values.blocksize ?? 4096);
  const depth = Number(values.iodepth ?? 32);
  const queues = Number(values.queues ?? 1);
  const seconds = Number(values.runtime ?? 5);
  if (!(bs > 0 && bs % 512 === 0 && depth > 0 && queues > 0 && seconds > 0)) throw new Error('bad --blocksize, --iodepth, --queues or --runtime');

  const memoryMiB = Math.min(1024, Math.max(16, Math.ceil((queues * depth * (bs + 4096)) / (1 << 20)) * 2));
  const driver = await VhostUserDriver.connect(values.socket, {
    numQueues: queues,
    queueSize: Math.max(64, 2 ** Math.ceil(Math.log2(depth * 4))),
    memoryMiB,
    completions: values.poll ? 'poll' : 'call',
    eventIdx: true,
  });
  const blocks = Math.floor(driver.config!.capacity / bs);
  const write = rw.endsWith('write');
  const random = rw.startsWith('rand');
  const data = crypto.randomBytes(bs);
  let sequential = 0;
  let done = 0;
  let latencyNs = 0n;
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));

  const worker = async (queue: number): Promise<void> => {
    while (process.hrtime.bigint() < end) {
      const block = random ? crypto.randomInt(blocks) : sequential++ % blocks;
      const start = process.hrtime.bigint();
      const c = write ? await driver.write(queue, (block * bs) / 512, data) : await driver.read(queue, (block * bs) / 512, bs);
      if (c.status !== VIRTIO_BLK_S.OK) throw new Error(`request failed with status ${c.status}`);
      latencyNs += process.hrtime.bigint() - start;
      done++;
    }
  };
  const began = process.hrtime.bigint();
  await Promise.all(Array.from({ length: queues * depth }, (_, i) => worker(i % queues)));
  const elapsed = Number(process.hrtime.bigint() - began) / 1e9;
  await driver.close();
  const iops = done / elapsed;
  const aggregate = { kiops: iops / 1000, gips: (iops * bs) / 2 ** 30, mean_lat_us: Number(latencyNs / BigInt(Math.max(done, 1))) / 1000 };
  process.stdout.write(`${JSON.stringify({ aggregate })}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`vhost-user-driver-load: ${(err as Error).message}\n`);
  process.exit(1);
});
