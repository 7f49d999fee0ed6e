// TLS credentials for the client, read as libnbd and QEMU read them: an
// X.509 directory (ca-cert.pem to check the server; client-cert.pem and
// client-key.pem when the server checks clients too), or a PSK file of
// `username:hexkey` lines as psktool writes them. The server's name is
// checked against its certificate only when there is one to check: a
// TCP host, or tls-hostname for a UNIX socket.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { loadPskFile } from '../server/tls-credentials.js';
import type { Endpoint } from './uri.js';

export interface TlsOptions {
  /** An X.509 directory: ca-cert.pem, and client-cert.pem + client-key.pem if the server asks. */
  certificates?: string;
  /** A PSK file of `username:hexkey` lines. */
  pskFile?: string;
  /** The PSK identity (default: the login name, as libnbd). */
  username?: string;
  /** The name the server's certificate must carry (default: the TCP host; none for UNIX sockets). */
  hostname?: string;
  /** Check the server's certificate (default true). */
  verifyPeer?: boolean;
}

/** Reads the key for `username` from a psktool file (parsed as the server parses it). */
export function readPskFile(file: string, username: string): Buffer {
  const key = loadPskFile(file).get(username);
  if (!key) throw new Error(`${file}: no key for user '${username}'`);
  return key;
}

function readIfExists(file: string): Buffer | undefined {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** node:tls options for connecting to `endpoint` with these credentials. */
export function tlsConnectOptions(options: TlsOptions, endpoint: Endpoint): tls.ConnectionOptions {
  if (options.pskFile) {
    const identity = options.username ?? os.userInfo().username;
    const psk = readPskFile(options.pskFile, identity);
    return {
      minVersion: 'TLSv1.2',
      // PSK suites are not among Node's defaults; TLS 1.3 uses the key with its own suites.
      ciphers: `${tls.DEFAULT_CIPHERS}:PSK`,
      pskCallback: () => ({ psk, identity }),
      checkServerIdentity: () => undefined,
    };
  }
  if (!options.certificates) throw new Error('TLS needs credentials: tls-certificates=DIR or tls-psk-file=FILE');
  const dir = options.certificates;
  const ca = readIfExists(path.join(dir, 'ca-cert.pem'));
  if (!ca && options.verifyPeer !== false) throw new Error(`${dir}: no ca-cert.pem to check the server with`);
  const cert = readIfExists(path.join(dir, 'client-cert.pem'));
  const key = readIfExists(path.join(dir, 'client-key.pem'));
  if (!cert !== !key) throw new Error(`${dir}: client-cert.pem and client-key.pem go together`);
  const servername = options.hostname ?? ('host' in endpoint && net.isIP(endpoint.host) === 0 ? endpoint.host : undefined);
  const checkName = options.hostname ?? ('host' in endpoint ? endpoint.host : undefined);
  return {
    minVersion: 'TLSv1.2',
    ca,
    cert,
    key,
    crl: readIfExists(path.join(dir, 'ca-crl.pem')),
    rejectUnauthorized: options.verifyPeer !== false,
    ...(servername && { servername }),
    checkServerIdentity: (_host, peer) => (checkName === undefined ? undefined : tls.checkServerIdentity(checkName, peer)),
  };
}
