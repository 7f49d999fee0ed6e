// NBD over TLS with the clients people use: nbdinfo and nbdcopy (libnbd,
// GnuTLS) with nbds+unix URIs, qemu-img and qemu-io with tls-creds-x509 /
// tls-creds-psk objects, against vblk and, as the reference that keeps
// the tests honest, qemu-nbd with the same credentials. Every server in
// the table requires TLS: data written through TLS is read back and
// compared; a client certificate from another CA, a wrong key, an
// unknown PSK user and a plain-text client are refused (the last with
// NBD_REP_ERR_TLS_REQD). vblk's own modes follow: --tls on serves both
// kinds of client, --tls off answers STARTTLS with UNSUP, and without
// --tls-verify-peer a client with no certificate is served.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { OPT, REP } from '../../src/protocol/nbd/constants.js';
import { encodeClientFlags } from '../../src/protocol/nbd/handshake-codec.js';
import { RawClient } from '../helpers/nbd-client.js';
import { killAtEnd, serve, tempDir } from '../helpers/server.js';
import { makeTlsCreds, revokingServerDir, type TlsCreds } from '../helpers/tls-creds.js';
import { run, TOOL_ENV, type RunResult } from '../helpers/tools.js';

const SIZE = 8 << 20;

type Auth = 'x509' | 'psk';

interface TlsServer {
  name: string;
  auth: Auth;
  /** Serves a fresh SIZE-byte raw image; resolves to its UNIX socket. */
  start(t: Test, creds: TlsCreds): Promise<string>;
}

function image(t: Test): string {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, SIZE);
  return file;
}

async function vblkTls(t: Test, args: string[]): Promise<string> {
  const srv = await serve(t, [image(t), ...args]);
  t.match(srv.uris[0], /^nbds\+unix:\/\/\//, 'vblk prints an nbds+unix URI');
  return srv.socket;
}

/** qemu-nbd with TLS credentials: it always requires TLS, and x509 servers verify the client by default. */
async function qemuNbdTls(t: Test, object: string): Promise<string> {
  const dir = tempDir(t, 'vblk-qnbd-');
  const socket = path.join(dir, 'qemu.sock');
  const child = spawn('qemu-nbd', ['--object', object, '--tls-creds', 'tls0', '-t', '-e', '8', '-f', 'raw', '-k', socket, image(t)], {
    env: TOOL_ENV,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const alive = killAtEnd(t, child, exited);
  const deadline = Date.now() + 10_000;
  while (!fs.existsSync(socket)) {
    if (!alive() || Date.now() > deadline) throw new Error(`qemu-nbd did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return socket;
}

const SERVERS: TlsServer[] = [
  {
    name: 'vblk x509',
    auth: 'x509',
    start: (t, c) => vblkTls(t, ['--tls', 'require', '--tls-certs', c.server, '--tls-verify-peer']),
  },
  { name: 'vblk psk', auth: 'psk', start: (t, c) => vblkTls(t, ['--tls', 'require', '--tls-psk', c.pskFile]) },
  {
    name: 'qemu-nbd x509',
    auth: 'x509',
    start: (t, c) => qemuNbdTls(t, `tls-creds-x509,id=tls0,dir=${c.server},endpoint=server,verify-peer=on`),
  },
  {
    name: 'qemu-nbd psk',
    auth: 'psk',
    start: (t, c) => qemuNbdTls(t, `tls-creds-psk,id=tls0,dir=${path.dirname(c.pskFile)},endpoint=server`),
  },
];

/** Client-side credentials: the good ones, or the kind the server must refuse. */
interface ClientCreds {
  auth: Auth;
  /** x509: a tls-certificates directory. psk: a directory holding keys.psk. */
  dir: string;
  user?: string;
}

function good(creds: TlsCreds, auth: Auth): ClientCreds {
  return auth === 'x509' ? { auth, dir: creds.client } : { auth, dir: path.dirname(creds.pskFile), user: creds.pskUser };
}

function libnbdUri(socket: string, c: ClientCreds): string {
  if (c.auth === 'x509') return `nbds+unix:///?socket=${socket}&tls-certificates=${c.dir}`;
  return `nbds+unix://${c.user}@/?socket=${socket}&tls-psk-file=${path.join(c.dir, 'keys.psk')}`;
}

function qemuArgs(socket: string, c: ClientCreds): string[] {
  const object =
    c.auth === 'x509'
      ? `tls-creds-x509,id=tls0,dir=${c.dir},endpoint=client`
      : `tls-creds-psk,id=tls0,dir=${c.dir},username=${c.user},endpoint=client`;
  // QEMU checks the server certificate against a host name, which a UNIX socket lacks.
  const hostname = c.auth === 'x509' ? ',tls-hostname=localhost' : '';
  return ['--object', object, '--image-opts', `driver=nbd,path=${socket},tls-creds=tls0${hostname}`];
}

function ok(t: Test, r: RunResult, what: string): void {
  t.equal(r.code, 0, what, { stdout: r.stdout, stderr: r.stderr });
}

function refused(t: Test, r: RunResult, what: string): void {
  t.not(r.code, 0, what, { stdout: r.stdout, stderr: r.stderr });
}

/** Greeting, flags, one option: the reply type a plain-text client gets. */
async function plainReply(socket: string, option: number, payload = Buffer.alloc(0)): Promise<number> {
  const c = await RawClient.connect(socket);
  try {
    await c.greeting();
    c.send(encodeClientFlags(3));
    const replies = await c.option(option, payload);
    return replies[replies.length - 1].type;
  } finally {
    c.close();
  }
}

let creds: TlsCreds;
t.before(async () => {
  const root = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'vblk-tls-creds-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  creds = await makeTlsCreds(root);
});

for (const server of SERVERS) {
  t.test(server.name, async (t) => {
    const socket = await server.start(t, creds);
    const client = good(creds, server.auth);
    const work = tempDir(t, 'vblk-tls-data-');

    const info = await run('nbdinfo', ['--size', libnbdUri(socket, client)]);
    ok(t, info, 'nbdinfo connects');
    t.equal(info.stdout.trim(), String(SIZE), 'nbdinfo reads the size over TLS');

    const data = randomBytes(SIZE);
    const src = path.join(work, 'src.bin');
    const back = path.join(work, 'back.bin');
    fs.writeFileSync(src, data);
    ok(t, await run('nbdcopy', [src, libnbdUri(socket, client)]), 'nbdcopy writes the image');
    ok(t, await run('nbdcopy', [libnbdUri(socket, client), back]), 'nbdcopy reads it back');
    t.ok(fs.readFileSync(back).equals(data), 'what nbdcopy read is what it wrote');

    const io = await run('qemu-io', [...qemuArgs(socket, client), '-c', 'write -P 0x5a 1M 64k', '-c', 'read -P 0x5a 1M 64k', '-c', 'read -v 0 16']);
    ok(t, io, 'qemu-io writes and reads a pattern');
    t.notMatch(io.stdout, /Pattern verification failed/);
    const head = data.subarray(0, 16).toString('hex').replace(/(..)/g, '$1 ').trim();
    t.match(io.stdout.replace(/\s+/g, ' '), head, "qemu-io reads nbdcopy's bytes");
    const img = await run('qemu-img', ['info', '--output=json', ...qemuArgs(socket, client)]);
    ok(t, img, 'qemu-img info');
    t.equal(JSON.parse(img.stdout)['virtual-size'], SIZE);

    if (server.auth === 'x509') {
      refused(t, await run('nbdinfo', ['--size', libnbdUri(socket, { auth: 'x509', dir: creds.stranger })]), 'a certificate from another CA is refused (nbdinfo)');
      refused(t, await run('qemu-img', ['info', ...qemuArgs(socket, { auth: 'x509', dir: creds.stranger })]), 'and qemu-img');
    } else {
      const wrong = { auth: 'psk' as const, dir: path.dirname(creds.wrongPskFile), user: creds.pskUser };
      refused(t, await run('nbdinfo', ['--size', libnbdUri(socket, wrong)]), 'a wrong key is refused (nbdinfo)');
      refused(t, await run('qemu-img', ['info', ...qemuArgs(socket, wrong)]), 'and qemu-img');
      const stranger = { auth: 'psk' as const, dir: path.dirname(creds.strangerPskFile), user: 'mallory' };
      refused(t, await run('nbdinfo', ['--size', libnbdUri(socket, stranger)]), 'an unknown PSK user is refused');
    }

    refused(t, await run('nbdinfo', ['--size', `nbd+unix:///?socket=${socket}`]), 'a plain-text nbdinfo is refused');
    refused(t, await run('qemu-img', ['info', `nbd+unix:///?socket=${socket}`]), 'and a plain-text qemu-img');
    t.equal(await plainReply(socket, OPT.LIST), REP.ERR_TLS_REQD, 'plain LIST: TLS_REQD');
    t.equal(await plainReply(socket, OPT.STRUCTURED_REPLY), REP.ERR_TLS_REQD, 'plain STRUCTURED_REPLY: TLS_REQD');

    const after = await run('nbdinfo', ['--size', libnbdUri(socket, client)]);
    t.equal(after.stdout.trim(), String(SIZE), 'the server still serves a good client after the refusals');
  });
}

t.test('vblk logs who connected with what', async (t) => {
  const x509 = await serve(t, [image(t), '--tls', 'require', '--tls-certs', creds.server, '--tls-verify-peer']);
  ok(t, await run('nbdinfo', ['--size', libnbdUri(x509.socket, good(creds, 'x509'))]), 'nbdinfo over x509');
  const cert = x509.logs().find((l) => l.msg === 'TLS established');
  t.match(cert, { tls: 'x509', tlsVersion: /^TLSv1\.[23]$/, cipher: String, clientCert: /CN=vblk test client/ });
  const psk = await serve(t, [image(t), '--tls', 'require', '--tls-psk', creds.pskFile]);
  ok(t, await run('nbdinfo', ['--size', libnbdUri(psk.socket, good(creds, 'psk'))]), 'nbdinfo over PSK');
  t.match(
    psk.logs().find((l) => l.msg === 'TLS established'),
    { tls: 'psk', pskIdentity: creds.pskUser },
  );
  const wrong = { auth: 'psk' as const, dir: path.dirname(creds.wrongPskFile), user: creds.pskUser };
  refused(t, await run('nbdinfo', ['--size', libnbdUri(psk.socket, wrong)]), 'a wrong key');
  await new Promise((r) => setTimeout(r, 200));
  t.match(
    psk.logs().find((l) => l.msg === 'TLS handshake failed'),
    { pskIdentity: creds.pskUser },
    'the failed handshake is logged with the identity it offered',
  );
});

t.test('over TCP: the printed nbds:// URI works, with the server certificate checked against 127.0.0.1', async (t) => {
  const srv = await serve(t, [image(t), '--listen', '127.0.0.1:0', '--tls', 'require', '--tls-certs', creds.server], { socket: false });
  const uri = srv.uris[0];
  t.match(uri, /^nbds:\/\/127\.0\.0\.1:\d+\/$/);
  const r = await run('nbdinfo', ['--size', `${uri}?tls-certificates=${creds.client}`]);
  t.equal(r.stdout.trim(), String(SIZE), 'nbdinfo over TCP and TLS', { stderr: r.stderr });
  const psk = await serve(t, [image(t), '--listen', '127.0.0.1:0', '--tls', 'require', '--tls-psk', creds.pskFile], { socket: false });
  const withUser = psk.uris[0].replace('nbds://', `nbds://${creds.pskUser}@`);
  const p = await run('nbdinfo', ['--size', `${withUser}?tls-psk-file=${creds.pskFile}`]);
  t.equal(p.stdout.trim(), String(SIZE), 'and with PSK', { stderr: p.stderr });
});

t.test('--tls on: TLS clients and plain-text clients are both served', async (t) => {
  const srv = await serve(t, [image(t), '--tls', 'on', '--tls-certs', creds.server]);
  t.match(srv.uris[0], /^nbds\+unix:/);
  const tls = await run('nbdinfo', ['--size', libnbdUri(srv.socket, good(creds, 'x509'))]);
  t.equal(tls.stdout.trim(), String(SIZE), 'over TLS');
  const plain = await run('nbdinfo', ['--size', `nbd+unix:///?socket=${srv.socket}`]);
  t.equal(plain.stdout.trim(), String(SIZE), 'in plain text');
  t.equal(await plainReply(srv.socket, OPT.LIST), REP.ACK, 'LIST answers without TLS');
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 3 0 4k', '-c', 'read -P 3 0 4k', `nbd+unix:///?socket=${srv.socket}`]);
  ok(t, io, 'qemu-io in plain text');
});

t.test('--tls-certs without --tls-verify-peer: a client without a certificate is served', async (t) => {
  const srv = await serve(t, [image(t), '--tls', 'require', '--tls-certs', creds.server]);
  const caOnly = tempDir(t, 'vblk-ca-only-');
  fs.copyFileSync(path.join(creds.client, 'ca-cert.pem'), path.join(caOnly, 'ca-cert.pem'));
  const r = await run('nbdinfo', ['--size', libnbdUri(srv.socket, { auth: 'x509', dir: caOnly })]);
  t.equal(r.stdout.trim(), String(SIZE), 'served', { stderr: r.stderr });
  const verifying = await serve(t, [image(t), '--tls', 'require', '--tls-certs', creds.server, '--tls-verify-peer']);
  refused(t, await run('nbdinfo', ['--size', libnbdUri(verifying.socket, { auth: 'x509', dir: caOnly })]), 'and with --tls-verify-peer (control), refused');
});

t.test('--tls-verify-peer with ca-crl.pem: a revoked client certificate is refused', async (t) => {
  const dir = await revokingServerDir(creds, path.join(tempDir(t, 'vblk-crl-'), 'server'));
  const srv = await serve(t, [image(t), '--tls', 'require', '--tls-certs', dir, '--tls-verify-peer']);
  refused(t, await run('nbdinfo', ['--size', libnbdUri(srv.socket, good(creds, 'x509'))]), 'refused');
  await new Promise((r) => setTimeout(r, 200));
  t.match(srv.logs().find((l) => l.msg === 'closing connection: TLS client refused'), { reason: /CERT_REVOKED/ });
});

t.test('--tls off: STARTTLS is UNSUP and TLS clients fail', async (t) => {
  const srv = await serve(t, [image(t)]);
  t.match(srv.uris[0], /^nbd\+unix:/, 'a plain URI');
  t.equal(await plainReply(srv.socket, OPT.STARTTLS), REP.ERR_UNSUP);
  refused(t, await run('nbdinfo', ['--size', libnbdUri(srv.socket, good(creds, 'x509'))]), 'nbdinfo insisting on TLS fails');
});
