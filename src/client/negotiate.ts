// The client's side of the fixed newstyle handshake, one option at a
// time: greeting and flags, STARTTLS when asked, extended headers or
// structured replies, meta contexts, then GO (or the old EXPORT_NAME for
// a server that has no GO). Listing exports and asking about one end
// with ABORT instead. Every reply is checked for its magic and for
// naming the option it answers; an error reply becomes an OptionError
// that carries the server's message.

import tls from 'node:tls';
import {
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  NBDMAGIC,
  OPT,
  OPTION_REPLY_MAGIC,
  REP,
  isReplyError,
} from '../protocol/nbd/constants.js';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  isMalformed,
} from '../protocol/nbd/handshake-codec.js';
import type { Wire } from './wire.js';

/** An option the server answered with an error reply. */
export class OptionError extends Error {
  constructor(
    readonly option: number,
    /** The reply type, e.g. REP.ERR_TLS_REQD. */
    readonly reply: number,
    message: string,
  ) {
    super(message);
    this.name = 'OptionError';
  }

  /** The reply's name, e.g. 'NBD_REP_ERR_TLS_REQD'. */
  get code(): string {
    return replyName(this.reply);
  }
}

export function replyName(type: number): string {
  for (const [name, v] of Object.entries(REP)) if (v === type) return `NBD_REP_${name}`;
  return `reply type 0x${type.toString(16)}`;
}

function optionName(option: number): string {
  for (const [name, v] of Object.entries(OPT)) if (v === option) return `NBD_OPT_${name}`;
  return `option ${option}`;
}

export interface OptionReply {
  type: number;
  payload: Buffer;
}

export type TlsMode = 'off' | 'allow' | 'require';

export interface NegotiateOptions {
  exportName: string;
  tls: TlsMode;
  /** Built only when STARTTLS is sent. */
  tlsOptions: () => tls.ConnectionOptions;
  structuredReplies: boolean;
  extendedHeaders: boolean;
  metaContexts: string[];
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface Negotiated {
  exportName: string;
  size: number;
  /** Transmission flags (TF.*). */
  flags: number;
  /** NBD_INFO_BLOCK_SIZE, when the server sent it. */
  blockSizes: BlockSizes | null;
  description: string | null;
  structuredReplies: boolean;
  extendedHeaders: boolean;
  /** The selected meta contexts, by name: their ids. */
  metaContexts: Map<string, number>;
  /** The TLS session, when there is one. */
  tls: { protocol: string | null; cipher: string } | null;
}

/** Reads the greeting and sends the client flags; returns whether the server dropped the zero padding. */
export async function greet(wire: Wire): Promise<{ noZeroes: boolean }> {
  const g = decodeGreeting(await wire.read(18))!;
  if (g.magic !== NBDMAGIC) throw new Error('the server did not greet with NBDMAGIC: not an NBD server');
  if (g.optMagic !== IHAVEOPT) throw new Error('the server speaks the oldstyle handshake, which this client does not');
  if (!(g.handshakeFlags & FLAG_FIXED_NEWSTYLE)) throw new Error('the server is not fixed newstyle');
  const noZeroes = (g.handshakeFlags & FLAG_NO_ZEROES) !== 0;
  wire.send(encodeClientFlags(FLAG_FIXED_NEWSTYLE | (noZeroes ? FLAG_NO_ZEROES : 0)));
  return { noZeroes };
}

/** Sends an option and reads its replies up to ACK or an error; an error reply throws. */
export async function option(wire: Wire, opt: number, payload: Buffer = Buffer.alloc(0)): Promise<OptionReply[]> {
  wire.send(encodeOption(opt, payload));
  const replies: OptionReply[] = [];
  for (;;) {
    const h = decodeOptionReplyHeader(await wire.read(20))!;
    if (h.magic !== OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic 0x${h.magic.toString(16)}`);
    if (h.option !== opt) throw new Error(`the reply to ${optionName(opt)} names ${optionName(h.option)}`);
    if (h.length > 16 << 20) throw new Error(`option reply of ${h.length} bytes`);
    const data = h.length ? await wire.read(h.length) : Buffer.alloc(0);
    if (isReplyError(h.type)) {
      const text = data.toString('utf8');
      throw new OptionError(opt, h.type, `${optionName(opt)}: ${replyName(h.type)}${text ? `: ${text}` : ''}`);
    }
    if (h.type === REP.ACK) return replies;
    replies.push({ type: h.type, payload: data });
  }
}

/** STARTTLS as the mode asks; returns whether the connection is now TLS. */
export async function startTls(wire: Wire, mode: TlsMode, options: () => tls.ConnectionOptions): Promise<boolean> {
  if (mode === 'off') return false;
  if (mode === 'allow') {
    if (!(await optional(wire, OPT.STARTTLS))) return false;
  } else {
    await option(wire, OPT.STARTTLS);
  }
  await wire.startTls(options());
  return true;
}

/** Extended headers if wanted and offered, else structured replies if wanted. */
async function replyStyle(wire: Wire, o: NegotiateOptions): Promise<{ structured: boolean; extended: boolean }> {
  if (o.extendedHeaders && (await optional(wire, OPT.EXTENDED_HEADERS))) return { structured: true, extended: true };
  if (o.structuredReplies && (await optional(wire, OPT.STRUCTURED_REPLY))) return { structured: true, extended: false };
  return { structured: false, extended: false };
}

/** An option the server may refuse: true for ACK, false for UNSUP/POLICY. */
async function optional(wire: Wire, opt: number): Promise<boolean> {
  try {
    await option(wire, opt);
    return true;
  } catch (err) {
    if (err instanceof OptionError && (err.reply === REP.ERR_UNSUP || err.reply === REP.ERR_POLICY)) return false;
    throw err;
  }
}

/** The whole handshake up to the transmission phase. */
export async function negotiate(wire: Wire, o: NegotiateOptions): Promise<Negotiated> {
  const { noZeroes } = await greet(wire);
  const secure = await startTls(wire, o.tls, o.tlsOptions);
  const style = await replyStyle(wire, o);
  const metaContexts = new Map<string, number>();
  if (o.metaContexts.length > 0) {
    if (!style.structured) throw new Error('meta contexts need structured replies, which the server does not offer');
    const replies = await option(wire, OPT.SET_META_CONTEXT, encodeMetaContextRequest({ name: o.exportName, queries: o.metaContexts }));
    for (const r of replies) {
      const m = decodeMetaContextReply(r.payload);
      if (r.type !== REP.META_CONTEXT || isMalformed(m)) throw new Error('malformed reply to NBD_OPT_SET_META_CONTEXT');
      metaContexts.set(m.name, m.id);
    }
  }
  const info = await go(wire, o.exportName, noZeroes);
  const session = secure ? (wire.socket as tls.TLSSocket) : null;
  return {
    exportName: o.exportName,
    ...info,
    structuredReplies: style.structured,
    extendedHeaders: style.extended,
    metaContexts,
    tls: session ? { protocol: session.getProtocol(), cipher: session.getCipher().name } : null,
  };
}

type ExportInfo = Pick<Negotiated, 'size' | 'flags' | 'blockSizes' | 'description'>;

/** Reads the NBD_REP_INFO replies of INFO or GO. */
function exportInfo(replies: OptionReply[]): ExportInfo {
  let exp: { size: number; flags: number } | null = null;
  let blockSizes: BlockSizes | null = null;
  let description: string | null = null;
  for (const r of replies) {
    if (r.type !== REP.INFO) continue;
    const i = decodeInfoReply(r.payload);
    if (isMalformed(i)) throw new Error(`malformed NBD_REP_INFO: ${i.malformed}`);
    if ('size' in i) exp = { size: i.size, flags: i.flags };
    if ('maximum' in i) blockSizes = { minimum: i.minimum, preferred: i.preferred, maximum: i.maximum };
    if ('description' in i) description = i.description;
  }
  if (!exp) throw new Error('the server did not send NBD_INFO_EXPORT');
  return { ...exp, blockSizes, description };
}

const INFO_WANTED = [INFO.DESCRIPTION, INFO.BLOCK_SIZE];

async function go(wire: Wire, name: string, noZeroes: boolean): Promise<ExportInfo> {
  try {
    return exportInfo(await option(wire, OPT.GO, encodeInfoRequest({ name, requests: INFO_WANTED })));
  } catch (err) {
    if (!(err instanceof OptionError) || err.reply !== REP.ERR_UNSUP) throw err;
  }
  // A server without GO: the old way, which closes the connection if the name is unknown.
  wire.send(encodeOption(OPT.EXPORT_NAME, Buffer.from(name, 'utf8')));
  const reply = decodeExportNameReply(await wire.read(10))!;
  if (!noZeroes) await wire.read(124);
  return { size: reply.size, flags: reply.flags, blockSizes: null, description: null };
}

/** INFO for one export (without entering transmission). */
export async function queryExport(wire: Wire, name: string): Promise<ExportInfo> {
  return exportInfo(await option(wire, OPT.INFO, encodeInfoRequest({ name, requests: INFO_WANTED })));
}

/** The exports the server lists. */
export async function listExports(wire: Wire): Promise<{ name: string; description: string }[]> {
  return (await option(wire, OPT.LIST)).map((r) => {
    const s = decodeServerReply(r.payload);
    if (r.type !== REP.SERVER || isMalformed(s)) throw new Error('malformed reply to NBD_OPT_LIST');
    return { name: s.name, description: s.details };
  });
}

/** The meta contexts an export offers for the queries (all of them for none). */
export async function listMetaContexts(wire: Wire, name: string, queries: string[] = []): Promise<string[]> {
  return (await option(wire, OPT.LIST_META_CONTEXT, encodeMetaContextRequest({ name, queries }))).map((r) => {
    const m = decodeMetaContextReply(r.payload);
    if (r.type !== REP.META_CONTEXT || isMalformed(m)) throw new Error('malformed reply to NBD_OPT_LIST_META_CONTEXT');
    return m.name;
  });
}

/** Ends the option phase politely. */
export async function abort(wire: Wire): Promise<void> {
  wire.send(encodeOption(OPT.ABORT));
  // The server may answer ACK or just close; either is fine.
  await wire.closesWithin(1000);
  wire.destroy();
}
