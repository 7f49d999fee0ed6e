// TLS credentials for tests, made with GnuTLS's certtool and psktool (the
// tools QEMU's documentation uses), laid out as QEMU's tls-creds-x509
// directories: a server directory (ca-cert.pem, server-cert.pem,
// server-key.pem) and a client one (ca-cert.pem, client-cert.pem,
// client-key.pem) as libnbd's tls-certificates= and QEMU's
// endpoint=client read them. A second, unrelated CA signs the
// "stranger" client, whom --tls-verify-peer must refuse. ECDSA P-256 keys:
// quick to make, and every client here speaks them.

import fs from 'node:fs';
import path from 'node:path';
import { run } from './tools.js';

export interface TlsCreds {
  /** Server directory: ca-cert.pem, server-cert.pem, server-key.pem. */
  server: string;
  /** Client directory signed by the same CA. */
  client: string;
  /** Client directory whose CA (and certificate) the server does not know; its ca-cert.pem is the server's CA, so the client trusts the server. */
  stranger: string;
  /** psktool's file with the key of `pskUser`, named keys.psk in a directory of its own (QEMU's tls-creds-psk dir=). */
  pskFile: string;
  /** The same user with another key (also a keys.psk alone in its directory). */
  wrongPskFile: string;
  /** A user the server's file does not name. */
  strangerPskFile: string;
  pskUser: string;
  /** The CA's certificate and key (what signed server and client). */
  ca: { cert: string; key: string };
}

const DAYS = 'expiration_days = 2\n';

async function certtool(args: string[]): Promise<void> {
  const r = await run('certtool', args);
  if (r.code !== 0) throw new Error(`certtool ${args.join(' ')} failed: ${r.stderr}`);
}

async function privateKey(file: string): Promise<void> {
  await certtool(['--generate-privkey', '--key-type=ecdsa', '--curve=secp256r1', '--outfile', file]);
}

async function selfSignedCa(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const key = path.join(dir, `${name}-key.pem`);
  const cert = path.join(dir, `${name}-cert.pem`);
  const template = path.join(dir, `${name}.info`);
  fs.writeFileSync(template, `cn = vblk test ${name}\nca\ncert_signing_key\ncrl_signing_key\n${DAYS}`);
  await privateKey(key);
  await certtool(['--generate-self-signed', '--load-privkey', key, '--template', template, '--outfile', cert]);
  return { cert, key };
}

async function signed(dir: string, role: 'server' | 'client', ca: { cert: string; key: string }, cn: string): Promise<void> {
  const key = path.join(dir, `${role}-key.pem`);
  const cert = path.join(dir, `${role}-cert.pem`);
  const template = path.join(dir, `${role}.info`);
  const usage = role === 'server' ? 'tls_www_server\ndns_name = localhost\nip_address = 127.0.0.1\n' : 'tls_www_client\n';
  fs.writeFileSync(template, `organization = vblk tests\ncn = ${cn}\n${usage}signing_key\n${DAYS}`);
  await privateKey(key);
  await certtool([
    '--generate-certificate',
    '--load-privkey', key,
    '--load-ca-certificate', ca.cert,
    '--load-ca-privkey', ca.key,
    '--template', template,
    '--outfile', cert,
  ]);
  fs.rmSync(template);
}

async function psk(file: string, user: string): Promise<void> {
  const r = await run('psktool', ['-u', user, '-p', file]);
  if (r.code !== 0) throw new Error(`psktool failed: ${r.stderr}`);
}

/** Makes every credential under `root` (a test's temporary directory). */
export async function makeTlsCreds(root: string): Promise<TlsCreds> {
  const caDir = path.join(root, 'ca');
  fs.mkdirSync(caDir, { recursive: true });
  const ca = await selfSignedCa(caDir, 'ca');
  const otherCa = await selfSignedCa(caDir, 'other-ca');
  const creds: TlsCreds = {
    server: path.join(root, 'server'),
    client: path.join(root, 'client'),
    stranger: path.join(root, 'stranger'),
    pskFile: path.join(root, 'psk', 'keys.psk'),
    wrongPskFile: path.join(root, 'wrong-psk', 'keys.psk'),
    strangerPskFile: path.join(root, 'stranger-psk', 'keys.psk'),
    pskUser: 'alice',
    ca,
  };
  for (const dir of [creds.server, creds.client, creds.stranger, ...[creds.pskFile, creds.wrongPskFile, creds.strangerPskFile].map(path.dirname)]) {
    fs.mkdirSync(dir, { recursive: true });
  }
  for (const dir of [creds.server, creds.client, creds.stranger]) fs.copyFileSync(ca.cert, path.join(dir, 'ca-cert.pem'));
  await signed(creds.server, 'server', ca, 'localhost');
  await signed(creds.client, 'client', ca, 'vblk test client');
  await signed(creds.stranger, 'client', otherCa, 'vblk test stranger');
  await psk(creds.pskFile, creds.pskUser);
  await psk(creds.wrongPskFile, creds.pskUser);
  await psk(creds.strangerPskFile, 'mallory');
  return creds;
}

/** A copy of the server directory whose ca-crl.pem revokes the client certificate. */
export async function revokingServerDir(creds: TlsCreds, dir: string): Promise<string> {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(creds.server)) fs.copyFileSync(path.join(creds.server, f), path.join(dir, f));
  const template = path.join(dir, 'crl.info');
  fs.writeFileSync(template, 'crl_next_update = 2\ncrl_number = 1\n');
  await certtool([
    '--generate-crl',
    '--load-ca-privkey', creds.ca.key,
    '--load-ca-certificate', creds.ca.cert,
    '--load-certificate', path.join(creds.client, 'client-cert.pem'),
    '--template', template,
    '--outfile', path.join(dir, 'ca-crl.pem'),
  ]);
  fs.rmSync(template);
  return dir;
}
