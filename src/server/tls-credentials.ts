// TLS credentials as the QEMU tools keep them, so one set of files serves
// qemu-nbd, nbdkit and vblk alike:
//   - an X.509 directory laid out as QEMU's tls-creds-x509 object reads it
//     (ca-cert.pem, server-cert.pem, server-key.pem, optional ca-crl.pem);
//   - a PSK file as GnuTLS's psktool writes it, one `username:hexkey` a
//     line (qemu's tls-creds-psk and nbdkit's --tls-psk read the same).
// Every mistake comes back as an Error naming the file (and line), for
// the command line to report.

import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface X509Credentials {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  crl?: Buffer;
}

/** PSK identity (the psktool username) -> key. */
export type PskKeys = Map<string, Buffer>;

function readCredential(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(`${file}: cannot read the ${what} (${code === 'ENOENT' ? 'no such file' : (code ?? (err as Error).message)})`);
  }
}

/** Reads a tls-creds-x509 style directory (server side). */
export function loadX509Dir(dir: string): X509Credentials {
  if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`${dir}: not a directory`);
  const crlFile = path.join(dir, 'ca-crl.pem');
  const caFile = path.join(dir, 'ca-cert.pem');
  const ca = readCredential(caFile, 'CA certificate');
  // OpenSSL takes a CA file with no certificate in it without a word, and then trusts nobody.
  try {
    new X509Certificate(ca);
  } catch (err) {
    throw new Error(`${caFile}: not a PEM certificate (${(err as Error).message})`);
  }
  return {
    ca,
    cert: readCredential(path.join(dir, 'server-cert.pem'), 'server certificate'),
    key: readCredential(path.join(dir, 'server-key.pem'), 'server private key'),
    ...(fs.existsSync(crlFile) ? { crl: readCredential(crlFile, 'certificate revocation list') } : {}),
  };
}

/** The longest PSK identity TLS carries (RFC 4279: 2^16-1 bytes; OpenSSL's limit is 128 characters). */
const MAX_IDENTITY = 128;
/** OpenSSL hands the server callback room for at most 256 bytes of key. */
const MAX_KEY_BYTES = 256;

/** Parses psktool's `username:hexkey` lines; blank lines are skipped. */
export function parsePskKeys(text: string, file: string): PskKeys {
  const keys: PskKeys = new Map();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    const colon = line.indexOf(':');
    if (colon < 0) throw new Error(`${where}: expected username:hexkey`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (identity === '') throw new Error(`${where}: empty username`);
    if (Buffer.byteLength(identity) > MAX_IDENTITY) throw new Error(`${where}: username longer than ${MAX_IDENTITY} bytes`);
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new Error(`${where}: the key must be an even number of hex digits`);
    if (hex.length / 2 > MAX_KEY_BYTES) throw new Error(`${where}: key longer than ${MAX_KEY_BYTES} bytes`);
    if (keys.has(identity)) throw new Error(`${where}: username '${identity}' appears twice`);
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new Error(`${file}: no keys`);
  return keys;
}

export function loadPskFile(file: string): PskKeys {
  return parsePskKeys(readCredential(file, 'PSK file').toString('utf8'), file);
}
