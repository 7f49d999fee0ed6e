// vblk/client: an NBD client for Node, promise-based, built on the codecs
// the server uses. Connect by NBD URI (nbd://, nbd+unix://, and the TLS
// forms nbds://, nbds+unix:// with libnbd's tls-* query parameters), then
// read, write, flush, trim, zero, cache and ask block status with every
// flag, many requests in flight. Extended headers and structured replies
// are negotiated when the server offers them.
//
//   import { connect } from 'vblk/client';
//   const disk = await connect('nbd+unix:///?socket=/tmp/vblk.sock');
//   await disk.write(0, Buffer.alloc(4096, 1), { fua: true });
//   const data = await disk.read(0, 4096);
//   await disk.disconnect();

import type tls from 'node:tls';
import { NbdClient } from './client.js';
import { OPT } from '../protocol/nbd/constants.js';
import { abort, greet, listExports as listOnWire, listMetaContexts, negotiate, option, OptionError, queryExport, startTls, type BlockSizes, type TlsMode } from './negotiate.js';
import { tlsConnectOptions, type TlsOptions } from './tls-credentials.js';
import { parseNbdUri, type Target } from './uri.js';
import { Wire } from './wire.js';

export { NbdClient, NbdError, type BlockExtent, type BlockStatusOptions, type ReadOptions, type WriteOptions, type ZeroOptions } from './client.js';
export { OptionError, type BlockSizes, type Negotiated, type TlsMode } from './negotiate.js';
export { readPskFile, type TlsOptions } from './tls-credentials.js';
export { parseNbdUri, formatNbdUri, type Endpoint, type Target } from './uri.js';
export { STATE_HOLE, STATE_ZERO, META_BASE_ALLOCATION, META_ALLOCATION_DEPTH } from '../protocol/nbd/constants.js';

export interface ConnectOptions {
  /** The export to use instead of the URI's. */
  exportName?: string;
  /** STARTTLS: 'require' for nbds URIs, 'off' for nbd ones unless given. */
  tls?: TlsMode;
  /** Credentials; the URI's tls-* parameters fill in what is not given. */
  tlsOptions?: TlsOptions;
  /** Ask for structured replies (default true). */
  structuredReplies?: boolean;
  /** Ask for extended headers (default true); a server without them gets structured replies. */
  extendedHeaders?: boolean;
  /** Meta contexts to select for block status (default: base:allocation where replies are structured). */
  metaContexts?: string[];
  /** How long connecting and each handshake step may take (default 30 s). */
  timeoutMs?: number;
}

interface Resolved {
  target: Target;
  tls: TlsMode;
  tlsOptions: () => tls.ConnectionOptions;
  timeoutMs: number;
}

function resolve(uri: string | Target, options: ConnectOptions): Resolved {
  const target = typeof uri === 'string' ? parseNbdUri(uri) : uri;
  const tlsMode = options.tls ?? (target.tls ? 'require' : 'off');
  const credentials = { ...target.tlsParams, ...options.tlsOptions };
  return {
    target,
    tls: tlsMode,
    tlsOptions: () => tlsConnectOptions(credentials, target.endpoint),
    timeoutMs: options.timeoutMs ?? 30_000,
  };
}

/** Connects, negotiates and enters the transmission phase of one export. */
export async function connect(uri: string | Target, options: ConnectOptions = {}): Promise<NbdClient> {
  const r = resolve(uri, options);
  const wire = await Wire.connect(r.target.endpoint, r.timeoutMs);
  try {
    const structured = options.structuredReplies ?? true;
    const info = await negotiate(wire, {
      exportName: options.exportName ?? r.target.exportName,
      tls: r.tls,
      tlsOptions: r.tlsOptions,
      structuredReplies: structured,
      extendedHeaders: options.extendedHeaders ?? structured,
      metaContexts: options.metaContexts ?? (structured ? ['base:allocation'] : []),
    });
    return new NbdClient(wire, info);
  } catch (err) {
    wire.destroy();
    throw err;
  }
}

/**
 * Several connections to one export, as nbdcopy opens them: only when the
 * export says they are consistent (NBD_FLAG_CAN_MULTI_CONN); otherwise one.
 */
export async function connectMany(uri: string | Target, count: number, options: ConnectOptions = {}): Promise<NbdClient[]> {
  const first = await connect(uri, options);
  if (count <= 1 || !first.canMultiConn) return [first];
  const rest = await Promise.allSettled(Array.from({ length: count - 1 }, () => connect(uri, options)));
  const failed = rest.find((r) => r.status === 'rejected');
  const clients = [first, ...rest.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
  if (failed) {
    for (const c of clients) c.destroy();
    throw failed.reason;
  }
  return clients;
}

/** Opens a connection, runs `body` in the option phase, then ABORTs. */
async function inOptionPhase<T>(uri: string | Target, options: ConnectOptions, body: (wire: Wire, r: Resolved) => Promise<T>): Promise<T> {
  const r = resolve(uri, options);
  const wire = await Wire.connect(r.target.endpoint, r.timeoutMs);
  try {
    await greet(wire);
    await startTls(wire, r.tls, r.tlsOptions);
    const result = await body(wire, r);
    await abort(wire);
    return result;
  } finally {
    wire.destroy();
  }
}

/** The exports a server lists (NBD_OPT_LIST). */
export function listExports(uri: string | Target, options: ConnectOptions = {}): Promise<{ name: string; description: string }[]> {
  return inOptionPhase(uri, options, (wire) => listOnWire(wire));
}

export interface ExportInfo {
  name: string;
  size: number;
  flags: number;
  blockSizes: BlockSizes | null;
  description: string | null;
  /** Every meta context the export offers. */
  metaContexts: string[];
}

/** What a server says about an export without entering transmission (NBD_OPT_INFO). */
export function exportInfo(uri: string | Target, options: ConnectOptions = {}): Promise<ExportInfo> {
  return inOptionPhase(uri, options, async (wire, r) => {
    const name = options.exportName ?? r.target.exportName;
    const info = await queryExport(wire, name);
    let metaContexts: string[] = [];
    try {
      await option(wire, OPT.STRUCTURED_REPLY);
      metaContexts = await listMetaContexts(wire, name);
    } catch (err) {
      // A server without structured replies has no meta contexts.
      if (!(err instanceof OptionError)) throw err;
    }
    return { name, ...info, metaContexts };
  });
}
