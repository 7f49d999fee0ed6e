// NBD URIs (the NBD URI specification, as libnbd and QEMU read them):
//   nbd://HOST[:PORT]/EXPORT            TCP, port 10809 by default
//   nbd+unix:///EXPORT?socket=PATH      UNIX socket
// The export name is the path without its leading slash, percent-decoded.
// TLS forms (nbds://, nbds+unix://) are refused: the fuzzer speaks plain.

export type Endpoint = { path: string } | { host: string; port: number };

export interface Target {
  endpoint: Endpoint;
  exportName: string;
  uri: string;
}

export function parseNbdUri(uri: string): Target {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new Error(`'${uri}' is not a URI; expected nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH`);
  }
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd+unix:') {
    const path = url.searchParams.get('socket');
    if (!path) throw new Error(`${uri}: nbd+unix URIs need ?socket=PATH`);
    return { endpoint: { path }, exportName, uri };
  }
  if (url.protocol === 'nbd:') {
    if (!url.hostname) throw new Error(`${uri}: no host`);
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = url.port ? Number(url.port) : 10809;
    return { endpoint: { host, port }, exportName, uri };
  }
  throw new Error(`${uri}: unsupported scheme ${url.protocol} (nbd: and nbd+unix: are; TLS is not)`);
}

/** A URI for an endpoint and export name. */
export function formatNbdUri(endpoint: Endpoint, exportName = ''): string {
  const name = encodeURIComponent(exportName);
  if ('path' in endpoint) return `nbd+unix:///${name}?socket=${endpoint.path}`;
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `nbd://${host}:${endpoint.port}/${name}`;
}
