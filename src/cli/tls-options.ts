// `vblk serve`'s TLS options, turned into the NBD front end's NbdTls:
// --tls off|on|require, and the credentials, --tls-certs DIR (QEMU's
// tls-creds-x509 layout) with --tls-verify-peer, or --tls-psk FILE
// (psktool's format). Every mistake is a UsageError (exit 2).

import { TLS_POLICIES, type TlsPolicy } from '../protocol/nbd/handshake.js';
import { NbdTls } from '../server/nbd/tls.js';
import { loadPskFile, loadX509Dir } from '../server/tls-credentials.js';
import { usage, UsageError } from './command.js';

export interface TlsValues {
  tls?: string;
  'tls-certs'?: string;
  'tls-verify-peer'?: boolean;
  'tls-psk'?: string;
}

export const TLS_HELP = `  --tls off|on|require     NBD_OPT_STARTTLS: off (default) refuses it; on
                           offers it and still serves plain-text clients;
                           require answers every option with TLS_REQD until
                           the client has upgraded. on and require need
                           --tls-certs or --tls-psk, and the URIs printed
                           become nbds:// and nbds+unix://
  --tls-certs DIR          X.509 credentials in QEMU's tls-creds-x509 layout:
                           DIR/ca-cert.pem, DIR/server-cert.pem,
                           DIR/server-key.pem and optionally DIR/ca-crl.pem
  --tls-verify-peer        ask every client for a certificate and refuse
                           those the CA in --tls-certs did not sign (or the
                           CRL revokes)
  --tls-psk FILE           pre-shared keys instead of certificates: one
                           username:hexkey a line, as psktool writes them
                           (the username is the client's PSK identity)
`;

export const TLS_EXAMPLES = `  vblk serve disk.img --socket /tmp/vblk.sock --tls require --tls-certs /etc/pki/vblk
      nbdinfo 'nbds+unix:///?socket=/tmp/vblk.sock&tls-certificates=/etc/pki/client'
      qemu-img info --object tls-creds-x509,id=tls0,dir=/etc/pki/client,endpoint=client \\
        --image-opts driver=nbd,path=/tmp/vblk.sock,tls-creds=tls0
  psktool -u alice -p keys.psk
  vblk serve disk.img --listen 10809 --tls require --tls-psk keys.psk
      nbdinfo 'nbds://127.0.0.1:10809/?tls-psk-file=keys.psk&tls-username=alice'
`;

/** The NBD front end's TLS, or undefined when TLS is off. */
export function tlsFromOptions(v: TlsValues): NbdTls | undefined {
  const policy = (v.tls ?? 'off') as TlsPolicy;
  if (!TLS_POLICIES.includes(policy)) throw new UsageError(`--tls must be off, on or require, not '${v.tls}'`);
  const certs = v['tls-certs'];
  const psk = v['tls-psk'];
  const verifyPeer = v['tls-verify-peer'] === true;
  if (policy === 'off') {
    const given = [certs !== undefined && '--tls-certs', psk !== undefined && '--tls-psk', verifyPeer && '--tls-verify-peer'].filter(Boolean);
    if (given.length > 0) throw new UsageError(`${given.join(' and ')} need --tls on or --tls require`);
    return undefined;
  }
  if (certs === undefined && psk === undefined) throw new UsageError(`--tls ${policy} needs credentials: --tls-certs DIR or --tls-psk FILE`);
  if (certs !== undefined && psk !== undefined) throw new UsageError('give --tls-certs or --tls-psk, not both');
  if (verifyPeer && certs === undefined) throw new UsageError('--tls-verify-peer needs --tls-certs (a PSK client is authenticated by its key)');
  const x509 = certs === undefined ? undefined : usage(() => loadX509Dir(certs));
  const keys = psk === undefined ? undefined : usage(() => loadPskFile(psk));
  return usage(() => {
    try {
      return new NbdTls({ policy, x509, psk: keys, verifyPeer });
    } catch (err) {
      const e = err as Error & { code?: string; reason?: string };
      const why = e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH' ? 'server-key.pem is not the key of server-cert.pem' : (e.reason ?? e.message);
      throw new Error(`${certs === undefined ? '--tls-psk' : `--tls-certs ${certs}`}: ${why}`);
    }
  });
}
