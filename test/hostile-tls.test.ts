// What a client that abuses STARTTLS gets: a closed connection where the
// protocol leaves nothing else (garbage or a cut instead of a TLS
// handshake, plain text pipelined behind STARTTLS, a certificate nobody
// signed), the protocol's answer where it has one (STARTTLS twice is
// INVALID, option state from before TLS is gone), and never a server
// that stops serving the others: after each case a real client (nbdinfo
// over TLS) is served. Many clients that stop in the middle of the TLS
// handshake are cut by the handshake timeout and leave no memory behind.
// The hostile side is the raw client (src/fuzz/nbd-client.ts) and
// node:tls.

import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import { CMD, META_BASE_ALLOCATION, NBD_ERR, OPT, REP } from '../src/protocol/nbd/constants.js';
import { encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption } from '../src/protocol/nbd/handshake-codec.js';
import { RawClient, replyError } from './helpers/nbd-client.js';
import { serve, tempDir, type Served } from './helpers/server.js';
import { makeTlsCreds, type TlsCreds } from './helpers/tls-creds.js';
import { run } from './helpers/tools.js';

const SIZE = 4 << 20;

let creds: TlsCreds;
t.before(async () => {
  const root = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'vblk-tls-creds-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  creds = await makeTlsCreds(root);
});

async function server(t: Test, extra: string[] = ['--tls', 'require', '--tls-certs', creds.server, '--tls-verify-peer']): Promise<Served> {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, SIZE);
  return serve(t, [file, ...extra]);
}

/** A real client, nbdinfo over TLS with the good certificate, is still served. */
async function stillServes(t: Test, srv: Served): Promise<void> {
  const r = await run('nbdinfo', ['--size', `nbds+unix:///?socket=${srv.socket}&tls-certificates=${creds.client}`]);
  t.equal(r.stdout.trim(), String(SIZE), 'a TLS client is still served', { stderr: r.stderr });
}

/** Greeting and client flags. */
async function opened(srv: Served): Promise<RawClient> {
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.send(encodeClientFlags(3));
  return c;
}

function clientCert(dir: string): tls.ConnectionOptions {
  return {
    ca: fs.readFileSync(path.join(creds.server, 'ca-cert.pem')),
    cert: fs.readFileSync(path.join(dir, 'client-cert.pem')),
    key: fs.readFileSync(path.join(dir, 'client-key.pem')),
    servername: 'localhost',
  };
}

/** STARTTLS (ACK expected), then a node:tls client over the same socket; resolves once its handshake is done. */
async function startTls(t: Test, c: RawClient, options: tls.ConnectionOptions): Promise<RawClient> {
  const [ack] = await c.option(OPT.STARTTLS);
  t.equal(ack.type, REP.ACK, 'STARTTLS is acknowledged');
  const secure = tls.connect({ socket: c.socket, ...options });
  await once(secure, 'secureConnect');
  return new RawClient(secure);
}

const go = (c: RawClient): Promise<{ type: number }[]> => c.option(OPT.GO, encodeInfoRequest({ name: '', requests: [] }));

t.test('a normal TLS session through the raw client: GO and a READ over TLS', async (t) => {
  const srv = await server(t);
  const c = await startTls(t, await opened(srv), clientCert(creds.client));
  t.equal((await go(c)).at(-1)?.type, REP.ACK);
  c.request({ flags: 0, type: CMD.READ, cookie: 5n, offset: 0, length: 4096 });
  const r = await c.reply(4096);
  t.same([r.kind, replyError(r), r.cookie], ['simple', 0, 5n]);
  c.close();
});

t.test('garbage instead of a TLS handshake after the ACK closes the connection', async (t) => {
  const srv = await server(t);
  const c = await opened(srv);
  const [ack] = await c.option(OPT.STARTTLS);
  t.equal(ack.type, REP.ACK);
  c.send(encodeOption(OPT.LIST), Buffer.from('GET / HTTP/1.0\r\n\r\n'));
  t.ok(await c.closesWithin(5000), 'closed');
  await stillServes(t, srv);
  t.ok(srv.logs().some((l) => l.msg === 'TLS handshake failed'), 'the failure is logged');
});

t.test('a TLS handshake cut in the middle', async (t) => {
  const srv = await server(t);
  const c = await opened(srv);
  const [ack] = await c.option(OPT.STARTTLS);
  t.equal(ack.type, REP.ACK);
  const secure = tls.connect({ socket: c.socket, ...clientCert(creds.client) });
  secure.on('error', () => undefined);
  // The first bytes of the server's flight (ServerHello...) arrive; the client goes away.
  const raw = c.socket;
  await new Promise<void>((resolve) => raw.once('readable', () => resolve()).once('close', () => resolve()));
  raw.destroy();
  await stillServes(t, srv);
});

t.test('STARTTLS twice: the second is INVALID and the session goes on over TLS', async (t) => {
  const srv = await server(t);
  const c = await startTls(t, await opened(srv), clientCert(creds.client));
  const [again] = await c.option(OPT.STARTTLS);
  t.equal(again.type, REP.ERR_INVALID, 'INVALID');
  const [withData] = await c.option(OPT.STARTTLS, Buffer.from('x'));
  t.equal(withData.type, REP.ERR_INVALID, 'INVALID with data too');
  t.equal((await go(c)).at(-1)?.type, REP.ACK, 'GO still works');
  c.close();
});

t.test('options from before TLS are forgotten; replayed after it they count afresh', async (t) => {
  const srv = await server(t, ['--tls', 'on', '--tls-certs', creds.server]);
  const c = await opened(srv);
  t.equal((await c.option(OPT.STRUCTURED_REPLY))[0].type, REP.ACK, 'structured replies before TLS');
  const set = await c.option(OPT.SET_META_CONTEXT, encodeMetaContextRequest({ name: '', queries: [META_BASE_ALLOCATION] }));
  t.equal(set.at(-1)?.type, REP.ACK, 'a context selected before TLS');
  const s = await startTls(t, c, clientCert(creds.client));
  t.equal((await s.option(OPT.SET_META_CONTEXT, encodeMetaContextRequest({ name: '', queries: [META_BASE_ALLOCATION] }))).at(-1)?.type,
    REP.ERR_INVALID, 'meta contexts need structured replies again');
  t.equal((await s.option(OPT.STRUCTURED_REPLY))[0].type, REP.ACK, 'STRUCTURED_REPLY replayed is accepted, not INVALID');
  t.equal((await go(s)).at(-1)?.type, REP.ACK);
  s.request({ flags: 0, type: CMD.BLOCK_STATUS, cookie: 9n, offset: 0, length: 4096 });
  const [chunk] = await s.structuredReply();
  t.equal(replyError(chunk), NBD_ERR.EINVAL, 'BLOCK_STATUS: no context survived STARTTLS');
  s.close();

  const r = await server(t);
  const d = await opened(r);
  t.equal((await d.option(OPT.STRUCTURED_REPLY))[0].type, REP.ERR_TLS_REQD, 'under require: TLS_REQD before TLS');
  const e = await startTls(t, d, clientCert(creds.client));
  t.equal((await e.option(OPT.STRUCTURED_REPLY))[0].type, REP.ACK, 'the same option replayed after TLS is served');
  t.equal((await e.option(OPT.LIST)).at(-1)?.type, REP.ACK, 'and LIST');
  e.close();
});

t.test('plain text pipelined behind STARTTLS: hard disconnect, no ACK', async (t) => {
  const srv = await server(t);
  for (const [what, tail] of [
    ['an option', encodeOption(OPT.LIST)],
    ['a TLS ClientHello sent before the ACK', Buffer.from('160301002c010000280303', 'hex')],
  ] as const) {
    const c = await opened(srv);
    c.send(Buffer.concat([encodeOption(OPT.STARTTLS), tail]));
    t.ok(await c.closesWithin(5000), `${what}: closed`);
    t.equal(c.buffered, 0, `${what}: nothing was sent back, not even the ACK`);
  }
  await stillServes(t, srv);
  t.ok(srv.logs().some((l) => typeof l.reason === 'string' && /after NBD_OPT_STARTTLS before its reply/.test(l.reason)), 'logged as a violation');
});

t.test('a client certificate another CA signed, sent anyway, is refused', async (t) => {
  const srv = await server(t);
  const c = await opened(srv);
  // GnuTLS clients keep such a certificate to themselves; node:tls sends what it is given.
  const s = await startTls(t, c, clientCert(creds.stranger));
  s.send(encodeOption(OPT.LIST));
  t.ok(await s.closesWithin(5000), 'closed before any option is answered');
  t.equal(s.buffered, 0, 'no reply');
  await stillServes(t, srv);
  const refusal = srv.logs().find((l) => l.msg === 'closing connection: TLS client refused');
  t.match(refusal, { reason: /vblk test stranger.*refused/ }, 'logged with the subject and the reason', { logs: srv.logs().slice(3, 8) });

  // Control: the good certificate through the same code is served.
  const good = await startTls(t, await opened(srv), clientCert(creds.client));
  t.equal((await good.option(OPT.LIST)).at(-1)?.type, REP.ACK);
  good.close();
});

t.test('TLS versions: 1.2 is served (certificates and PSK), 1.1 is refused', async (t) => {
  const srv = await server(t);
  const v12 = await startTls(t, await opened(srv), { ...clientCert(creds.client), maxVersion: 'TLSv1.2' });
  t.equal((v12.socket as tls.TLSSocket).getProtocol(), 'TLSv1.2');
  t.equal((await v12.option(OPT.LIST)).at(-1)?.type, REP.ACK, 'TLS 1.2 with certificates');
  v12.close();

  const old = await opened(srv);
  const [ack] = await old.option(OPT.STARTTLS);
  t.equal(ack.type, REP.ACK);
  const secure = tls.connect({ socket: old.socket, ...clientCert(creds.client), minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
  await once(secure, 'error');
  await stillServes(t, srv);
  t.match(
    srv.logs().find((l) => l.msg === 'TLS handshake failed'),
    { reason: /unsupported protocol/ },
    'the server refused TLS 1.1 (not the client itself)',
  );

  const psk = await server(t, ['--tls', 'require', '--tls-psk', creds.pskFile]);
  const key = Buffer.from(fs.readFileSync(creds.pskFile, 'utf8').trim().split(':')[1], 'hex');
  const s = await startTls(t, await opened(psk), {
    maxVersion: 'TLSv1.2',
    ciphers: 'ECDHE-PSK-CHACHA20-POLY1305',
    pskCallback: () => ({ identity: creds.pskUser, psk: key }),
    checkServerIdentity: () => undefined,
  });
  t.equal((s.socket as tls.TLSSocket).getProtocol(), 'TLSv1.2');
  t.equal((await s.option(OPT.LIST)).at(-1)?.type, REP.ACK, 'TLS 1.2 with PSK');
  s.close();
});

/** The server process's resident memory, from /proc. */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

/** A client that gets STARTTLS's ACK and then stops: silent, or half a ClientHello. */
async function stalled(srv: Served, i: number): Promise<Duplex> {
  const c = await opened(srv);
  const [ack] = await c.option(OPT.STARTTLS);
  if (ack.type !== REP.ACK) throw new Error('STARTTLS refused');
  if (i % 2 === 1) c.send(Buffer.from('16030102000100', 'hex'));
  return c.socket;
}

t.test('many clients that never finish the TLS handshake are cut; memory stays bounded', async (t) => {
  const srv = await server(t, ['--tls', 'require', '--tls-certs', creds.server, '--tls-verify-peer', '--handshake-timeout', '1']);
  const CLIENTS = 150;
  const ROUNDS = 5;
  const sizes: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const sockets = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => stalled(srv, i)));
    await stillServes(t, srv);
    const closed = await Promise.all(sockets.map((s) => (s.destroyed ? Promise.resolve(true) : once(s, 'close').then(() => true))));
    t.equal(closed.length, CLIENTS, `round ${round + 1}: every stalled client was cut`);
    // The server gives memory back a second after its last connection (server.ts).
    await new Promise((r) => setTimeout(r, 1500));
    sizes.push(rss(srv.proc.pid!));
  }
  const timeouts = srv.logs().filter((l) => l.msg === 'connection closed' && l.reason === 'TLS handshake timed out').length;
  t.equal(timeouts, CLIENTS * ROUNDS, 'each was cut by the handshake timeout, in its TLS handshake');
  t.ok(sizes[ROUNDS - 1] < sizes[0] + (64 << 20), `RSS after round 1 and round ${ROUNDS}: ${sizes.map((s) => (s / 2 ** 20).toFixed(0)).join(', ')} MiB`);
});
