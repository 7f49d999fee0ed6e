// The server under a low open-file limit (ulimit -n) and more libnbd
// clients than descriptors: it holds as many connections as its cap
// (the limit minus what it has open minus a reserve, in its 'listening'
// line), closes the rest as they come, and says so in the log with the
// number dropped; at EMFILE itself libuv would close them without a
// word. Once the crowd leaves, a new client is served.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { libnbdCrowd } from '../helpers/libnbd-crowd.js';
import { serve, tempDir } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const OPEN_FILE_LIMIT = 128;
const CLIENTS = 200;
const SIZE = 1 << 20;

t.test(`under ulimit -n ${OPEN_FILE_LIMIT}, ${CLIENTS} clients: the cap holds, and every dropped connection is logged`, async (t) => {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, SIZE);
  const server = await serve(t, [file], { openFileLimit: OPEN_FILE_LIMIT });
  const cap = server.logs().find((l) => l.msg === 'listening')?.maxConnections;
  t.type(cap, 'number', `the listening line gives the cap (${cap})`);
  const maxConnections = cap as number;
  t.ok(maxConnections > 0 && maxConnections < OPEN_FILE_LIMIT, 'below the limit, above zero');

  const crowd = await libnbdCrowd(server.uri(), CLIENTS, SIZE);
  const refused = Object.values(crowd.errors).reduce((a, b) => a + b, 0);
  t.comment(`${crowd.ready} of ${CLIENTS} clients served, ${refused} dropped: ${JSON.stringify(crowd.errors)}`);
  t.equal(crowd.ready, maxConnections, 'exactly the cap was served: none was lost to EMFILE');
  t.equal(crowd.sized, crowd.ready, 'and each read the size');
  t.equal(crowd.stuck, 0, 'no client was left hanging');
  t.equal(crowd.ready + refused, CLIENTS);

  // The last report may wait out the rest of its interval (one second).
  const dropLines = (): Record<string, unknown>[] => server.logs().filter((l) => typeof l.dropped === 'number');
  const logged = (): number => dropLines().reduce((sum, l) => sum + (l.dropped as number), 0);
  for (let i = 0; i < 100 && logged() < refused; i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(logged(), refused, `the log counts every dropped connection (${dropLines().length} lines)`);
  const last = dropLines().at(-1);
  t.equal(last?.total, refused, 'the last line has the total');
  t.equal(last?.level, 40, 'as a warning');
  t.equal(last?.maxConnections, maxConnections, 'with the cap');

  const after = await run('nbdinfo', ['--size', server.uri()]);
  t.equal(after.stdout.trim(), String(SIZE), `a client after the crowd is served ${after.stderr}`);
  t.equal((await server.stop()).code, 0, 'the server shuts down cleanly');
});
