// Linux reports a failed write-back once per open file, and every
// connection to an export shares one: without a sticky error, connection
// A's FLUSH got EIO and connection B's next FLUSH got OK although the
// data B had written before it was gone. The export here is a loop
// device whose backing file sits on a 1 MiB tmpfs, so write-back of
// anything past the first megabyte fails. Two libnbd connections
// (CAN_MULTI_CONN): after A's FLUSH fails, B's FLUSH and FUA writes must
// fail too, and the server must say so in its log, also when the two
// connections run on different event loops (--threads 2).

import t from 'tap';
import { loopWithFailingWriteback } from '../helpers/mounts.js';
import { serve } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const SCRIPT = `
import nbd, sys, json
uri = sys.argv[1]
a = nbd.NBD(); a.connect_uri(uri)
b = nbd.NBD(); b.connect_uri(uri)
out = {'multi_conn': a.can_multi_conn()}
def attempt(name, fn):
    try:
        fn(); out[name] = 'ok'
    except nbd.Error as e:
        out[name] = e.string or str(e)
attempt('b_write', lambda: b.pwrite(b'\\xbb' * (2 << 20), 8 << 20))
attempt('a_write', lambda: a.pwrite(b'\\xaa' * (2 << 20), 16 << 20))
attempt('a_flush', lambda: a.flush())
attempt('b_flush', lambda: b.flush())
attempt('b_fua_write', lambda: b.pwrite(b'\\xcc' * 4096, 0, nbd.CMD_FLAG_FUA))
attempt('b_plain_write', lambda: b.pwrite(b'\\xdd' * 4096, 0))
attempt('a_flush_again', lambda: a.flush())
print(json.dumps(out))
`;

// With --threads 2 the two connections run on two event loops, each with
// its own view of the image: the mark is shared between them.
for (const threads of ['1', '2']) t.test(`after a failed write-back, every connection gets EIO for FLUSH and FUA (--threads ${threads})`, async (t) => {
  const dev = loopWithFailingWriteback(t);
  const served = await serve(t, [dev, '--threads', threads]);
  const r = await run('/usr/bin/python3', ['-c', SCRIPT, served.uri()]);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  t.comment(JSON.stringify(out));
  t.equal(out.multi_conn, true, 'the export offers CAN_MULTI_CONN');
  t.equal(out.b_write, 'ok', 'writes into the page cache succeed');
  t.equal(out.a_write, 'ok');
  t.not(out.a_flush, 'ok', "A's FLUSH reports the failed write-back");
  t.not(out.b_flush, 'ok', "B's FLUSH does not claim B's lost data is durable");
  t.match(out.b_flush, /Input\/output error/, 'with EIO');
  t.not(out.b_fua_write, 'ok', 'FUA writes fail too');
  t.equal(out.b_plain_write, 'ok', 'plain writes go on');
  t.not(out.a_flush_again, 'ok', 'and FLUSH keeps failing');
  const loops = served.logs().filter((l) => l.msg === 'transmission started').map((l) => l.loop ?? 0);
  t.same(loops.sort(), threads === '1' ? [0, 0] : [0, 1], 'the connections ran on the loops --threads gives');
  const logged = served.logs().filter((l) => l.msg?.toString().startsWith('write-back failed'));
  t.equal(logged.length, 1, 'the server logs the failure once');
  t.equal(logged[0]?.level, 50, 'at error level');
  t.equal((await served.stop()).code, 1, 'and the final flush at shutdown fails, so the exit says so');
});
