// NBD URIs (the NBD URI specification, as libnbd and QEMU read them):
//   nbd://HOST[:PORT]/EXPORT            TCP, port 10809 by default
//   nbd+unix:///EXPORT?socket=PATH      UNIX socket
//   nbds://..., nbds+unix://...         the same, TLS required
// The export name is the path without its leading slash, percent-decoded.
// TLS credentials come as libnbd's query parameters: tls-certificates=DIR
// (ca-cert.pem, client-cert.pem, client-key.pem), tls-psk-file=FILE with
// the username as the URI's user (nbds://alice@host/) or tls-username=NAME,
// tls-hostname=NAME, tls-verify-peer=false.

export type Endpoint = { path: string } | { host: string; port: number };

export interface TlsUriParams {
  certificates?: string;
  pskFile?: string;
  username?: string;
  hostname?: string;
  verifyPeer?: boolean;
}

export interface Target {
  endpoint: Endpoint;
  exportName: string;
  uri: string;
  /** nbds: and nbds+unix: URIs: the connection must be upgraded with STARTTLS. */
  tls: boolean;
  tlsParams: TlsUriParams;
}

const SCHEMES: Record<string, { unix: boolean; tls: boolean }> = {
  'nbd:': { unix: false, tls: false },
  'nbds:': { unix: false, tls: true },
  'nbd+unix:': { unix: true, tls: false },
  'nbds+unix:': { unix: true, tls: true },
};

export function parseNbdUri(uri: string): Target {
  // WHATWG URLs refuse a user with no host (nbds+unix://alice@/...), which libnbd takes.
  const unixUser = /^(nbds?\+unix:\/\/)([^@/]+)@\//i.exec(uri);
  let url: URL;
  try {
    url = new URL(unixUser ? unixUser[1] + uri.slice(unixUser[0].length - 1) : uri);
  } catch {
    throw new Error(`'${uri}' is not a URI; expected nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH`);
  }
  const scheme = SCHEMES[url.protocol];
  if (!scheme) throw new Error(`${uri}: unsupported scheme ${url.protocol} (nbd:, nbds:, nbd+unix: and nbds+unix: are)`);
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  const user = decodeURIComponent(unixUser ? unixUser[2] : url.username);
  const q = url.searchParams;
  const verify = q.get('tls-verify-peer');
  if (verify !== null && verify !== 'true' && verify !== 'false') throw new Error(`${uri}: tls-verify-peer must be true or false`);
  const tlsParams: TlsUriParams = {
    ...(q.has('tls-certificates') && { certificates: q.get('tls-certificates')! }),
    ...(q.has('tls-psk-file') && { pskFile: q.get('tls-psk-file')! }),
    // libnbd takes the PSK username from the URI's user part (nbds://alice@host/); tls-username too.
    ...((user || q.has('tls-username')) && { username: q.get('tls-username') ?? user }),
    ...(q.has('tls-hostname') && { hostname: q.get('tls-hostname')! }),
    ...(verify !== null && { verifyPeer: verify === 'true' }),
  };
  if (scheme.unix) {
    const path = q.get('socket');
    if (!path) throw new Error(`${uri}: ${url.protocol.slice(0, -1)} URIs need ?socket=PATH`);
    return { endpoint: { path }, exportName, uri, tls: scheme.tls, tlsParams };
  }
  if (!url.hostname) throw new Error(`${uri}: no host`);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = url.port ? Number(url.port) : 10809;
  return { endpoint: { host, port }, exportName, uri, tls: scheme.tls, tlsParams };
}

/** A URI for an endpoint and export name. */
export function formatNbdUri(endpoint: Endpoint, exportName = '', tls = false): string {
  const name = encodeURIComponent(exportName);
  const s = tls ? 'nbds' : 'nbd';
  if ('path' in endpoint) return `${s}+unix:///${name}?socket=${endpoint.path}`;
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `${s}://${host}:${endpoint.port}/${name}`;
}
