// vblk serve --stdio: one NBD connection on the socket a client started
// vblk on (libnbd's nbd_connect_command: a socketpair on stdin and
// stdout; inetd-style activation: the accepted connection), then an
// orderly shutdown and exit 0 once the client goes. Nothing but NBD may
// reach stdout, writes must be in the image when vblk has exited, and
// a pipe on stdin is refused with one line.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { socketActivated, tempDir, VBLK } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const SIZE = 16 << 20;

function image(t: Test, fill?: (buffer: Buffer) => void): string {
  const file = path.join(tempDir(t), 'disk.img');
  const content = Buffer.alloc(SIZE);
  fill?.(content);
  fs.writeFileSync(file, content);
  return file;
}

/** Every 4 KiB block starts with 1000 bytes of its number (mod 256), so misplaced data shows. */
function pattern(buffer: Buffer): void {
  for (let i = 0; i < buffer.length; i += 4096) buffer.fill(i / 4096, i, i + 1000);
}

const SERVE = (file: string, ...args: string[]): string[] => [process.execPath, VBLK, 'serve', '--stdio', file, ...args];

t.test('nbdsh connect_command: writes land in the image, flushed by the time vblk has exited', async (t) => {
  const dir = tempDir(t);
  const file = image(t);
  const source = path.join(dir, 'source.raw');
  const content = Buffer.alloc(SIZE);
  pattern(content);
  fs.writeFileSync(source, content);
  // Writes of 4 MiB go through the direct read of the payload from the
  // socket's descriptor (socket-fd.ts), here descriptor 0.
  const script = `
import os
h.connect_command(${JSON.stringify(SERVE(file, '--log-level', 'debug'))})
data = open(${JSON.stringify(source)}, 'rb').read()
for off in range(0, len(data), 4 << 20):
    h.pwrite(data[off:off + (4 << 20)], off)
for off in range(0, len(data), 1 << 20):
    assert h.pread(1 << 20, off) == data[off:off + (1 << 20)], off
print(h.get_size())
h.shutdown()
del h
# libnbd does not wait for the server it started (its only child): nbdsh does.
_, status = os.wait()
print(os.waitstatus_to_exitcode(status))
`;
  const r = await run('nbdsh', ['-c', script]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, `${SIZE}\n0\n`, 'nbdsh read the size, and vblk exited 0 when nbdsh closed the connection');
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, file]);
  t.equal(compare.code, 0, `the image is what was written: ${compare.stdout}`);
  t.match(r.stderr, /"sendBuffer":\d+,"msg":"send buffer"/, "descriptor 0 is the connection's socket (its send buffer was widened)");
  t.match(r.stderr, /"msg":"the --stdio client has gone"/, 'vblk saw the client go');
  t.match(r.stderr, /"msg":"shutdown complete"/, 'and shut down in order');
});

t.test('a socketpair by hand: the first bytes are the greeting, none follow the last reply, exit 0', async (t) => {
  const file = image(t);
  const script = `
import json, os, socket, subprocess, sys
import nbd
a, b = socket.socketpair()
p = subprocess.Popen(sys.argv[1:], stdin=b, stdout=b, stderr=subprocess.PIPE)
b.close()
first = a.recv(16, socket.MSG_PEEK | socket.MSG_WAITALL)
h = nbd.NBD()
h.connect_socket(os.dup(a.fileno()))
h.pwrite(b'\\xab' * (1 << 20), 1 << 20)
h.flush()
h.shutdown()
del h
rest = b''
while True:
    chunk = a.recv(65536)
    if not chunk:
        break
    rest += chunk
code = p.wait(timeout=60)
print(json.dumps({'first': first.decode('latin1'), 'rest': len(rest), 'code': code, 'stderr': p.stderr.read().decode()}))
`;
  const r = await run('python3', ['-c', script, ...SERVE(file)]);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { first: string; rest: number; code: number; stderr: string };
  t.equal(out.first, 'NBDMAGICIHAVEOPT', 'the first bytes on stdout are the NBD greeting (no URI)');
  t.equal(out.rest, 0, 'nothing after the last reply: the socket just closes');
  t.equal(out.code, 0, 'vblk exits 0');
  t.notMatch(out.stderr, /"level":[4-6]\d/, 'no warning or error logged');
  const content = fs.readFileSync(file);
  t.ok(content.subarray(1 << 20, 2 << 20).every((b) => b === 0xab), 'the write is in the image');
  t.ok(content.subarray(0, 1 << 20).every((b) => b === 0), 'and only there');
});

t.test('inetd-style activation (systemd-socket-activate --inetd -a): a vblk --stdio per connection', async (t) => {
  const file = image(t, pattern);
  const sock = path.join(tempDir(t), 'vblk.sock');
  const act = await socketActivated(t, ['--inetd', '-a', '-l', sock], ['--stdio', '--read-only', file]);
  const uri = `nbd+unix:///?socket=${sock}`;
  for (const block of [0, 5, 4095]) {
    const r = await run('qemu-io', ['-f', 'raw', '-r', '-c', `read -P ${block % 256} ${block * 4096} 1000`, uri]);
    t.equal(r.code, 0, `connection for block ${block}: ${r.stdout}${r.stderr}`);
  }
  t.equal((await run('nbdinfo', ['--size', uri])).stdout.trim(), String(SIZE), 'nbdinfo too');
  t.equal(act.stdout(), '', 'nothing on the activator\'s stdout');
  const deadline = Date.now() + 15_000;
  const gone = (): number => act.stderr().match(/"msg":"shutdown complete"/g)?.length ?? 0;
  while (gone() < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.equal(gone(), 4, 'each of the four vblk processes shut down in order');
  t.match(act.stderr(), /Child \d+ died with code 0/, 'and exited 0');
});

t.test('a pipe on stdin, or two sockets, are refused with one line; --stdio with a listener exits 2', async (t) => {
  const file = image(t);
  const out = path.join(tempDir(t), 'stdout');
  const piped = await run('sh', ['-c', ': | "$0" "$@" >"$OUT"'.replace('$OUT', out), ...SERVE(file)]);
  t.equal(piped.code, 1);
  t.match(piped.stderr, /^vblk: --stdio needs a connected socket on stdin and stdout, .*; stdin is a pipe\n$/);
  t.equal(fs.readFileSync(out, 'utf8'), '', 'nothing on stdout');
  // Node's spawn gives a child a socket of its own on each of stdin and stdout.
  const apart = await run(process.execPath, SERVE(file).slice(1));
  t.equal(apart.code, 1);
  t.match(apart.stderr, /^vblk: --stdio needs .*; stdout is not the socket on stdin\n$/);
  t.equal(apart.stdout, '', 'nothing on stdout');
  const both = await run(process.execPath, [...SERVE(file).slice(1), '--socket', path.join(tempDir(t), 's.sock')]);
  t.equal(both.code, 2);
  t.match(both.stderr, /^vblk: serve: --stdio serves the one connection on stdin\/stdout: leave out --socket, --listen and --vhost-user-blk; see 'vblk serve --help'\n$/);
});

t.test('SIGTERM during a --stdio session: the write is kept, exit 0; --pid-file is there while serving', async (t) => {
  const file = image(t);
  const pidFile = path.join(tempDir(t), 'vblk.pid');
  const script = `
import json, os, socket, subprocess, sys
import nbd
a, b = socket.socketpair()
p = subprocess.Popen(sys.argv[1:], stdin=b, stdout=b, stderr=subprocess.DEVNULL)
b.close()
h = nbd.NBD()
h.connect_socket(os.dup(a.fileno()))
pid_file = open(${JSON.stringify(pidFile)}).read()
h.pwrite(b'\\x11' * 65536, 0)
p.terminate()
code = p.wait(timeout=60)
print(json.dumps({'pidFile': pid_file, 'pid': p.pid, 'code': code, 'pidFileAfter': os.path.exists(${JSON.stringify(pidFile)})}))
`;
  const r = await run('python3', ['-c', script, ...SERVE(file, '--pid-file', pidFile)]);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { pidFile: string; pid: number; code: number; pidFileAfter: boolean };
  t.equal(out.pidFile, `${out.pid}\n`, 'the pid file holds the pid once the connection is served');
  t.equal(out.code, 0, 'SIGTERM: exit 0');
  t.equal(out.pidFileAfter, false, 'the pid file is removed');
  t.ok(fs.readFileSync(file).subarray(0, 65536).every((b) => b === 0x11), 'the write is in the image');
});
