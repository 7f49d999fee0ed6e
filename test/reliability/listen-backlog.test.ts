// 1,000 real libnbd clients connecting to one UNIX socket at once, all
// before the first handshake is driven: every one must get through the
// handshake and read the export's size. A UNIX socket whose accept queue
// is full refuses a connect at once (libnbd: "server backlog overflowed",
// EAGAIN), so this holds only with a backlog larger than the crowd; with
// Node's default of 511 a hundred or more were refused here.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { libnbdCrowd } from '../helpers/libnbd-crowd.js';
import { serve, tempDir } from '../helpers/server.js';

const CLIENTS = 1000;
const SIZE = 1 << 20;

t.test(`${CLIENTS} libnbd clients connecting at once all finish their handshake`, async (t) => {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, SIZE);
  const server = await serve(t, [file]);
  const listening = server.logs().find((l) => l.msg === 'listening')!;
  t.equal(listening.backlog, Number(fs.readFileSync('/proc/sys/net/core/somaxconn', 'utf8')), 'the backlog is net.core.somaxconn');
  t.ok((listening.backlog as number) > CLIENTS, `the backlog (${listening.backlog}) holds the crowd; raise net.core.somaxconn if not`);

  const crowd = await libnbdCrowd(server.uri(), CLIENTS, SIZE);
  t.comment(`${crowd.ready} of ${CLIENTS} libnbd clients accepted`);
  t.same(crowd.errors, {}, 'no client was refused');
  t.equal(crowd.ready, CLIENTS, 'every client finished the handshake');
  t.equal(crowd.sized, CLIENTS, 'and read the size');
  t.equal(crowd.stuck, 0);
  t.notOk(server.logs().some((l) => l.level === 50 || l.level === 60), 'nothing was logged as an error');
  t.equal((await server.stop()).code, 0, 'the server shuts down cleanly');
});
