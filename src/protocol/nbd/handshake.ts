// The server side of the fixed newstyle handshake as a small state table.
// Phases: 'client-flags' -> 'options' -> 'transmission', or 'closed' from
// either of the first two. Each phase takes one kind of event (client
// flags, then options), and each option has one handler in
// OPTION_HANDLERS that returns the replies to send and the phase that
// follows. No I/O happens here: the connection feeds
// decoded frames in and writes out what comes back, so every transition
// can be unit-tested with plain buffers.
//
// TLS (the protocol's "TLS support" section) is a policy: 'off' answers
// STARTTLS with UNSUP (NOTLS mode); 'on' offers it and serves every
// export either way (SELECTIVETLS with no TLS-only export); 'require'
// answers every option but ABORT and STARTTLS with TLS_REQD until TLS is
// up, and closes on EXPORT_NAME, so nothing about the exports leaks to
// a client that has not upgraded (FORCEDTLS). The ACK to STARTTLS comes
// in a step flagged `startTls`: the connection sends it and starts the
// TLS handshake. From then on the table counts TLS as started (a failed
// TLS handshake ends the connection) and has forgotten every option
// state negotiated before it, as the spec asks.

import {
  CLIENT_FLAGS_KNOWN,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  INFO,
  MAX_STRING,
  META_ALLOCATION_DEPTH,
  META_BASE_ALLOCATION,
  META_DIRTY_BITMAP,
  OPT,
  REP,
} from './constants.js';
import { transmissionFlags } from './commands.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOptionReply,
  encodeServerReply,
  isMalformed,
} from './handshake-codec.js';
import { limitedString } from './strings.js';

/** What the handshake needs to know about an export. */
export interface ExportSummary {
  name: string;
  description: string;
  size: number;
  capabilities: {
    readOnly: boolean;
    trim: boolean;
    fastZero: boolean;
    cache: boolean;
    multiConn: boolean;
    blockSizes: { minimum: number; preferred: number; maximum: number };
  };
  /** Names of the dirty bitmaps it keeps now (qemu:dirty-bitmap:NAME contexts). */
  dirtyBitmaps?(): string[];
}

export interface ExportCatalog {
  list(): ExportSummary[];
  find(name: string): ExportSummary | undefined;
}

export type Phase = 'client-flags' | 'options' | 'transmission' | 'closed';

/** Whether STARTTLS is refused ('off'), offered ('on') or required before anything else ('require'). */
export type TlsPolicy = 'off' | 'on' | 'require';
export const TLS_POLICIES: readonly TlsPolicy[] = ['off', 'on', 'require'];

export interface MetaContext {
  id: number;
  name: string;
}

/** What the client and server agreed on, handed to the transmission phase. */
export interface Agreement {
  export: ExportSummary;
  flags: number;
  structuredReplies: boolean;
  /** NBD_OPT_EXTENDED_HEADERS was agreed: 32-byte headers both ways (structured replies implied). */
  extendedHeaders: boolean;
  metaContexts: MetaContext[];
}

export interface Step {
  send: Buffer[];
  phase: Phase;
  /** Why the handshake closed, for the log. */
  reason?: string;
  agreement?: Agreement;
  /** Send `send` (the ACK to STARTTLS) in plain text, then run the TLS handshake as the server. */
  startTls?: boolean;
}

/** The meta contexts an export offers: every export's two, then one per dirty bitmap it keeps. */
function exportContexts(exp: ExportSummary): string[] {
  return [META_BASE_ALLOCATION, META_ALLOCATION_DEPTH, ...(exp.dirtyBitmaps?.() ?? []).map((n) => META_DIRTY_BITMAP + n)];
}

type OptionHandler = (hs: Handshake, option: number, payload: Buffer) => Step;

export class Handshake {
  phase: Phase = 'client-flags';
  noZeroes = false;
  /** Set by NBD_OPT_STRUCTURED_REPLY or NBD_OPT_EXTENDED_HEADERS. */
  structuredReplies = false;
  extendedHeaders = false;
  /** The last SET_META_CONTEXT: which export it named and what it selected. */
  metaSelection: { exportName: string; contexts: MetaContext[] } | null = null;
  shuttingDown = false;
  /** The client set FIXED_NEWSTYLE: without it the spec allows no TLS. */
  fixedNewstyle = false;
  /** STARTTLS was acknowledged: everything after it runs over TLS. */
  tlsStarted = false;

  constructor(
    readonly catalog: ExportCatalog,
    readonly tls: TlsPolicy = 'off',
  ) {}

  greeting(): Buffer {
    return encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  }

  receiveClientFlags(flags: number): Step {
    expectPhase(this, 'client-flags');
    const unknown = flags & ~CLIENT_FLAGS_KNOWN;
    if (unknown) return this.close(`client sent unknown flags 0x${(unknown >>> 0).toString(16)}`);
    // A client without FIXED_NEWSTYLE gets fixed-newstyle replies anyway,
    // which the protocol allows; such clients only send EXPORT_NAME.
    this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
    this.fixedNewstyle = (flags & FLAG_FIXED_NEWSTYLE) !== 0;
    if (this.tls === 'require' && !this.fixedNewstyle) return this.close('TLS is required and the client does not speak fixed newstyle');
    this.phase = 'options';
    return this.stay([]);
  }

  /**
   * An option and its payload. `payload` is null when the option data was
   * too large to keep and was skipped.
   */
  receiveOption(option: number, payload: Buffer | null): Step {
    expectPhase(this, 'options');
    if (this.tls === 'require' && !this.tlsStarted && option !== OPT.STARTTLS && option !== OPT.ABORT) {
      if (option === OPT.EXPORT_NAME) return this.close('NBD_OPT_EXPORT_NAME before TLS, which is required');
      return this.error(option, REP.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
    }
    // SET_META_CONTEXT replaces the earlier selection even when it fails, however it fails.
    if (option === OPT.SET_META_CONTEXT) this.metaSelection = null;
    if (payload === null) {
      if (option === OPT.EXPORT_NAME) return this.close('NBD_OPT_EXPORT_NAME with an oversized name');
      return this.error(option, REP.ERR_TOO_BIG, 'option data too large');
    }
    if (this.shuttingDown && option !== OPT.ABORT) {
      if (option === OPT.EXPORT_NAME) return this.close('server is shutting down');
      return this.error(option, REP.ERR_SHUTDOWN, 'server is shutting down');
    }
    const handler = OPTION_HANDLERS[option];
    if (!handler) return this.error(option, REP.ERR_UNSUP, `option ${option} is not supported`);
    return handler(this, option, payload);
  }

  // --- helpers for handlers ---

  stay(send: Buffer[]): Step {
    return { send, phase: this.phase };
  }

  close(reason: string, send: Buffer[] = []): Step {
    this.phase = 'closed';
    return { send, phase: 'closed', reason };
  }

  error(option: number, type: number, message: string, send: Buffer[] = []): Step {
    return this.stay([...send, encodeOptionReply(option, type, limitedString(message))]);
  }

  enterTransmission(exp: ExportSummary, send: Buffer[]): Step {
    const sel = this.metaSelection;
    const agreement: Agreement = {
      export: exp,
      flags: transmissionFlags(exp.capabilities, this.structuredReplies, this.extendedHeaders),
      structuredReplies: this.structuredReplies,
      extendedHeaders: this.extendedHeaders,
      // BLOCK_STATUS needs the last SET_META_CONTEXT to have named this export.
      metaContexts: sel && sel.exportName === exp.name ? sel.contexts : [],
    };
    this.phase = 'transmission';
    return { send, phase: 'transmission', agreement };
  }
}

function expectPhase(hs: Handshake, phase: Phase): void {
  if (hs.phase !== phase) throw new Error(`handshake event for phase ${phase} arrived in phase ${hs.phase}`);
}

// --- one handler per option ----------------------------------------------

function exportName(hs: Handshake, _option: number, payload: Buffer): Step {
  if (payload.length > MAX_STRING) return hs.close('NBD_OPT_EXPORT_NAME longer than 4096 bytes');
  // It has no way to refuse, and extended headers forbid it.
  if (hs.extendedHeaders) return hs.close('NBD_OPT_EXPORT_NAME after NBD_OPT_EXTENDED_HEADERS');
  const name = payload.toString('utf8');
  const exp = hs.catalog.find(name);
  if (!exp) return hs.close(`NBD_OPT_EXPORT_NAME for unknown export '${name}'`);
  const step = hs.enterTransmission(exp, []);
  step.send.push(encodeExportNameReply({ size: exp.size, flags: step.agreement!.flags }, hs.noZeroes));
  return step;
}

function abort(hs: Handshake, option: number): Step {
  return hs.close('client sent NBD_OPT_ABORT', [encodeOptionReply(option, REP.ACK)]);
}

function list(hs: Handshake, option: number, payload: Buffer): Step {
  if (payload.length !== 0) return hs.error(option, REP.ERR_INVALID, 'NBD_OPT_LIST takes no data');
  const servers = hs.catalog
    .list()
    .map((e) => encodeOptionReply(option, REP.SERVER, encodeServerReply({ name: e.name, details: e.description })));
  return hs.stay([...servers, encodeOptionReply(option, REP.ACK)]);
}

function startTls(hs: Handshake, option: number, payload: Buffer): Step {
  if (hs.tls === 'off') return hs.error(option, REP.ERR_UNSUP, 'TLS is not enabled on this server');
  if (!hs.fixedNewstyle) return hs.error(option, REP.ERR_POLICY, 'TLS needs fixed newstyle negotiation');
  if (hs.tlsStarted) return hs.error(option, REP.ERR_INVALID, 'TLS is already active');
  if (payload.length !== 0) return hs.error(option, REP.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
  hs.tlsStarted = true;
  // "The server MUST NOT preserve any negotiation state ... issued before this command."
  hs.structuredReplies = false;
  hs.extendedHeaders = false;
  hs.metaSelection = null;
  return { ...hs.stay([encodeOptionReply(option, REP.ACK)]), startTls: true };
}

function infoOrGo(hs: Handshake, option: number, payload: Buffer): Step {
  const req = decodeInfoRequest(payload);
  if (isMalformed(req)) return hs.error(option, REP.ERR_INVALID, req.malformed);
  const exp = hs.catalog.find(req.name);
  if (!exp) return hs.error(option, REP.ERR_UNKNOWN, `export '${req.name}' not found`);
  const flags = transmissionFlags(exp.capabilities, hs.structuredReplies, hs.extendedHeaders);
  const info = (i: Parameters<typeof encodeInfoReply>[0]): Buffer => encodeOptionReply(option, REP.INFO, encodeInfoReply(i));
  const send = [info({ type: INFO.EXPORT, size: exp.size, flags })];
  if (req.requests.includes(INFO.NAME)) send.push(info({ type: INFO.NAME, name: exp.name }));
  if (req.requests.includes(INFO.DESCRIPTION) && exp.description) {
    send.push(info({ type: INFO.DESCRIPTION, description: exp.description }));
  }
  // Always sent: a client that did not ask still learns the maximum payload.
  send.push(info({ type: INFO.BLOCK_SIZE, ...exp.capabilities.blockSizes }));
  send.push(encodeOptionReply(option, REP.ACK));
  return option === OPT.GO ? hs.enterTransmission(exp, send) : hs.stay(send);
}

function structuredReply(hs: Handshake, option: number, payload: Buffer): Step {
  if (payload.length !== 0) return hs.error(option, REP.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
  if (hs.extendedHeaders) return hs.error(option, REP.ERR_EXT_HEADER_REQD, 'extended headers are negotiated and take precedence');
  if (hs.structuredReplies) return hs.error(option, REP.ERR_INVALID, 'structured replies are already negotiated');
  hs.structuredReplies = true;
  return hs.stay([encodeOptionReply(option, REP.ACK)]);
}

/**
 * Contexts a query selects: exact names only, or with `wildcard` (LIST) a
 * bare namespace or qemu:dirty-bitmap: too, as qemu-nbd lists them.
 */
function matchQuery(known: string[], query: string, wildcard: boolean): string[] | 'invalid' {
  const colon = query.indexOf(':');
  if (colon <= 0) return 'invalid';
  if (known.includes(query)) return [query];
  if (wildcard && (query === query.slice(0, colon + 1) || query === META_DIRTY_BITMAP)) {
    return known.filter((c) => c.startsWith(query));
  }
  return [];
}

function metaContext(hs: Handshake, option: number, payload: Buffer): Step {
  const set = option === OPT.SET_META_CONTEXT;
  if (!hs.structuredReplies) {
    return hs.error(option, REP.ERR_INVALID, 'meta contexts need structured replies first');
  }
  const req = decodeMetaContextRequest(payload);
  if (isMalformed(req)) return hs.error(option, REP.ERR_INVALID, req.malformed);
  const exp = hs.catalog.find(req.name);
  if (!exp) return hs.error(option, REP.ERR_UNKNOWN, `export '${req.name}' not found`);
  const known = exportContexts(exp);
  const names = new Set<string>();
  if (req.queries.length === 0 && !set) known.forEach((c) => names.add(c));
  for (const q of req.queries) {
    const matched = matchQuery(known, q, !set);
    if (matched === 'invalid') return hs.error(option, REP.ERR_INVALID, `query '${q}' has no namespace`);
    matched.forEach((c) => names.add(c));
  }
  const contexts = [...names].map((name, i) => ({ id: set ? i + 1 : 0, name }));
  if (set) hs.metaSelection = { exportName: req.name, contexts };
  return hs.stay([
    ...contexts.map((c) => encodeOptionReply(option, REP.META_CONTEXT, encodeMetaContextReply(c))),
    encodeOptionReply(option, REP.ACK),
  ]);
}

/** Extended headers imply structured replies and may follow them. */
function extendedHeaders(hs: Handshake, option: number, payload: Buffer): Step {
  if (payload.length !== 0) return hs.error(option, REP.ERR_INVALID, 'NBD_OPT_EXTENDED_HEADERS takes no data');
  if (hs.extendedHeaders) return hs.error(option, REP.ERR_INVALID, 'extended headers are already negotiated');
  hs.extendedHeaders = true;
  hs.structuredReplies = true;
  return hs.stay([encodeOptionReply(option, REP.ACK)]);
}

export const OPTION_HANDLERS: Record<number, OptionHandler> = {
  [OPT.EXPORT_NAME]: exportName,
  [OPT.ABORT]: abort,
  [OPT.LIST]: list,
  [OPT.STARTTLS]: startTls,
  [OPT.INFO]: infoOrGo,
  [OPT.GO]: infoOrGo,
  [OPT.STRUCTURED_REPLY]: structuredReply,
  [OPT.LIST_META_CONTEXT]: metaContext,
  [OPT.SET_META_CONTEXT]: metaContext,
  [OPT.EXTENDED_HEADERS]: extendedHeaders,
};

