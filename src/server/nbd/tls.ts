// The server side of NBD_OPT_STARTTLS: one secure context built at start
// (X.509 certificates or PSK keys), and the upgrade of a connection's
// plain socket to a TLS stream once the ACK has been written.
//
// The upgrade is a `tls.TLSSocket` over the accepted net.Socket, not a
// tls.Server: the TLS handshake starts in the middle of the NBD one.
// Such a socket is never checked by Node the way a tls.Server's are:
// OpenSSL is told to let every client certificate through and Node's
// server code reads the verdict afterwards, in code a bare TLSSocket does
// not run. So `established` reads the verdict itself (the same
// `verifyError()` on the socket's native handle that Node's server code
// calls), and fails closed if it cannot: no client is served on a
// certificate nothing checked.
//
// PSK: Node's `pskCallback` is OpenSSL's legacy server callback. In TLS
// 1.2 it works with the PSK cipher suites, which Node leaves out by
// default, so the ones with forward secrecy and AEAD are named; in TLS
// 1.3 OpenSSL takes the key from the same callback as an external PSK
// whose hash is SHA-256 (TLS_AES_128_GCM_SHA256 and
// TLS_CHACHA20_POLY1305_SHA256), which is what GnuTLS clients (libnbd,
// QEMU) send by default.

import type net from 'node:net';
import tls from 'node:tls';
import type { TlsPolicy } from '../../protocol/nbd/handshake.js';
import type { PskKeys, X509Credentials } from '../tls-credentials.js';

export interface TlsConfig {
  policy: Exclude<TlsPolicy, 'off'>;
  /** Certificates, or else `psk`. */
  x509?: X509Credentials;
  /** Ask every client for a certificate and refuse those the CA did not sign (X.509 only). */
  verifyPeer?: boolean;
  psk?: PskKeys;
}

/** TLS 1.2 suites for PSK: ECDHE or DHE for forward secrecy, AEAD only. */
const PSK_TLS12_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'DHE-PSK-CHACHA20-POLY1305',
];

/**
 * Node's TLS 1.3 suites and the PSK ones for TLS 1.2. Not Node's whole
 * default list: it ends in !PSK, which would take the PSK suites out
 * again, and its certificate suites are of no use without a certificate.
 */
function pskCiphers(): string {
  return [...tls.DEFAULT_CIPHERS.split(':').filter((c) => c.startsWith('TLS_')), ...PSK_TLS12_CIPHERS].join(':');
}

/** What a connection's upgrade returns: the TLS stream and who the client said it was. */
export interface TlsUpgrade {
  socket: tls.TLSSocket;
  /** The PSK identity the client offered (known or not), once it has. */
  pskIdentity: string | null;
}

/** Log fields of an established session, or why it must not be served. */
export type Established = { ok: true; fields: Record<string, unknown> } | { ok: false; reason: string };

export class NbdTls {
  readonly policy: Exclude<TlsPolicy, 'off'>;
  private readonly context: tls.SecureContext;

  /** Throws (with OpenSSL's message) if the credentials do not load. */
  constructor(private readonly config: TlsConfig) {
    if (!config.x509 === !config.psk) throw new Error('TLS needs X.509 credentials or PSK keys (one of the two)');
    if (config.verifyPeer && !config.x509) throw new Error('verifying client certificates needs X.509 credentials');
    this.policy = config.policy;
    this.context = tls.createSecureContext({
      minVersion: 'TLSv1.2',
      ...(config.x509 ?? {}),
      ...(config.psk ? { ciphers: pskCiphers(), dhparam: 'auto' } : {}),
    });
  }

  get kind(): 'x509' | 'psk' {
    return this.config.x509 ? 'x509' : 'psk';
  }

  /** Starts the server side of a TLS handshake over `socket`, whose plain-text part is over. */
  upgrade(socket: net.Socket): TlsUpgrade {
    const keys = this.config.psk;
    const upgrade: TlsUpgrade = {
      pskIdentity: null,
      socket: new tls.TLSSocket(socket, {
        isServer: true,
        secureContext: this.context,
        requestCert: this.config.verifyPeer === true,
        rejectUnauthorized: this.config.verifyPeer === true,
        ...(keys
          ? {
              pskCallback: (_socket: tls.TLSSocket, identity: string) => {
                upgrade.pskIdentity = identity;
                return keys.get(identity) ?? null;
              },
            }
          : {}),
      }),
    };
    return upgrade;
  }

  /** Once the TLS handshake is done: whether the client may go on, and what to log about it. */
  established(upgrade: TlsUpgrade): Established {
    const { socket } = upgrade;
    const fields: Record<string, unknown> = { tlsVersion: socket.getProtocol(), cipher: socket.getCipher()?.name };
    if (this.config.psk) {
      // The handshake cannot finish without a key the callback found.
      return { ok: true, fields: { ...fields, pskIdentity: upgrade.pskIdentity } };
    }
    if (!this.config.verifyPeer) return { ok: true, fields };
    const cert = socket.getPeerCertificate();
    if (!cert || !cert.subject) return { ok: false, reason: 'the client sent no certificate' };
    const subject = distinguishedName(cert.subject);
    const verdict = peerVerifyError(socket);
    if (verdict !== null) return { ok: false, reason: `client certificate '${subject}' refused: ${verdict}` };
    return { ok: true, fields: { ...fields, clientCert: subject, clientCertIssuer: distinguishedName(cert.issuer) } };
  }
}

/** OpenSSL's verdict on the client's certificate chain: null when it verified, else the error code. */
function peerVerifyError(socket: tls.TLSSocket): string | null {
  const handle = (socket as unknown as { ssl?: { verifyError?: () => (Error & { code?: string }) | null } }).ssl;
  if (typeof handle?.verifyError !== 'function') return 'this Node offers no way to check it';
  const err = handle.verifyError();
  return err ? (err.code ?? err.message) : null;
}

function distinguishedName(name: tls.Certificate): string {
  return Object.entries(name)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`)
    .join(',');
}
