// One NBD connection driven by the fuzzers, checking every byte the
// server sends against the protocol: option replies (magic, the option
// echoed, INFO_EXPORT before ACK, INFO and GO agreeing), and in
// transmission every reply (magic, a cookie in flight, chunk types that
// belong to the command, read chunks that tile the request, DONE last,
// one BLOCK_STATUS chunk per context with non-empty extents). Anything
// else is thrown as a Violation.
//
// With extended headers (NBD_OPT_EXTENDED_HEADERS) requests go out in the
// 32-byte form, a WRITE flagged PAYLOAD_LEN, and every reply must be an
// extended chunk echoing the request's offset: a simple reply, a compact
// chunk or a compact BLOCK_STATUS is then a violation, as is an extended
// chunk or BLOCK_STATUS_EXT when they were not negotiated.

import type tls from 'node:tls';
import {
  CHUNK,
  CMD,
  CMD_FLAG,
  FLAG_FIXED_NEWSTYLE,
  IHAVEOPT,
  INFO,
  META_ALLOCATION_DEPTH,
  META_BASE_ALLOCATION,
  NBD_ERR,
  NBDMAGIC,
  OPT,
  OPTION_REPLY_MAGIC,
  REP,
  EXTENDED_REPLY_MAGIC,
  EXTENDED_REQUEST_SIZE,
  REPLY_FLAG_DONE,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  TF,
} from '../protocol/nbd/constants.js';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeInfoRequest,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  isMalformed,
} from '../protocol/nbd/handshake-codec.js';
import {
  blockStatusPayloadSize,
  decodeChunkPayload,
  encodeBlockStatusPayload,
  encodeExtendedRequest,
  encodeRequest,
  type BlockDescriptor,
} from '../protocol/nbd/transmission-codec.js';
import { readU64 } from '../protocol/nbd/u64.js';
import type { OptionCase, RequestCase } from './arbitraries.js';
import { commandLabel, type Terms } from './model.js';
import { RawClient } from './nbd-client.js';
import type { Endpoint } from '../client/uri.js';
import { Violation } from './violation.js';

export interface HandshakeVariant {
  /** Client flags; bits beyond FIXED_NEWSTYLE|NO_ZEROES must make the server close. */
  clientFlags: number;
  structured: boolean;
  /** Ask NBD_OPT_EXTENDED_HEADERS (after STRUCTURED_REPLY when both). */
  extended?: boolean;
  /** Meta contexts to ask for. */
  meta: 'none' | 'base' | 'all';
  /** Ask NBD_OPT_INFO first and compare with what GO says. */
  infoFirst: boolean;
  /** Ask NBD_OPT_LIST first. */
  list: boolean;
  /** Enter transmission with the old NBD_OPT_EXPORT_NAME instead of GO. */
  exportName: boolean;
  /** Extra options sent first (ones that do not end the option phase). */
  junk: OptionCase[];
}

export const PLAIN_HANDSHAKE: HandshakeVariant = {
  clientFlags: 3,
  structured: true,
  extended: false,
  meta: 'base',
  infoFirst: false,
  list: false,
  exportName: false,
  junk: [],
};

export function describeHandshake(v: HandshakeVariant): string {
  const parts = [`flags=${v.clientFlags}`];
  if (v.junk.length) parts.push(`first ${v.junk.map((j) => j.label).join('; ')}`);
  if (v.list) parts.push('LIST');
  if (v.structured) parts.push('STRUCTURED_REPLY');
  if (v.extended) parts.push('EXTENDED_HEADERS');
  if (v.meta !== 'none') parts.push(`SET_META_CONTEXT ${v.meta === 'base' ? META_BASE_ALLOCATION : 'base:allocation+qemu:allocation-depth'}`);
  if (v.infoFirst) parts.push('INFO');
  parts.push(v.exportName ? 'EXPORT_NAME' : 'GO');
  return parts.join(', ');
}

interface ExportInfo {
  size: number;
  flags: number;
  maxPayload: number | null;
}

/** The result of one request: its error (0 for success), and what a success returned. */
export interface Outcome {
  errno: number;
  /** READ: the bytes, holes filled with zeroes (only on success). */
  data?: Buffer;
  /** BLOCK_STATUS: descriptors per context id. */
  extents?: Map<number, BlockDescriptor[]>;
}

interface InFlight {
  req: RequestCase;
  outcome: Outcome;
  /** READ pieces received: [start, end) relative to the request. */
  pieces: [number, number][];
  contentChunks: number;
  done: boolean;
}

export interface SessionOptions {
  timeoutMs: number;
  /** Upgrade with STARTTLS right after the client flags, with these TLS options. */
  tls?: () => tls.ConnectionOptions;
}

export class Session {
  terms!: Terms;
  private cookie = 0n;

  private constructor(
    readonly client: RawClient,
    readonly exportName: string,
  ) {}

  /**
   * Connects and runs the handshake variant. Returns null when the
   * variant was one the server must refuse (unknown client flags) and
   * it did refuse it.
   */
  static async open(endpoint: Endpoint, exportName: string, v: HandshakeVariant, opts: SessionOptions): Promise<Session | null> {
    let client: RawClient;
    try {
      client = await RawClient.connect(endpoint, opts.timeoutMs);
    } catch (err) {
      throw new Violation('CRASH', 'the server accepts connections', `connect failed: ${(err as Error).message}`);
    }
    client.timeoutMs = opts.timeoutMs;
    const s = new Session(client, exportName);
    try {
      return await s.handshake(v, opts);
    } catch (err) {
      client.close();
      throw err;
    }
  }

  close(): void {
    this.client.close();
  }

  private async read(n: number, what: string, level: 'MUST' | 'SHOULD' = 'MUST'): Promise<Buffer> {
    try {
      return await this.client.read(n);
    } catch (err) {
      const closed = this.client.isClosed;
      throw new Violation(level, closed ? 'the server answers instead of closing' : 'the server answers in time', `${what}: ${(err as Error).message}`);
    }
  }

  // --- handshake ---------------------------------------------------------------

  private async handshake(v: HandshakeVariant, opts: SessionOptions): Promise<Session | null> {
    const g = decodeGreeting(await this.read(18, 'greeting'))!;
    if (g.magic !== NBDMAGIC || g.optMagic !== IHAVEOPT) {
      throw new Violation('MUST', 'greeting is NBDMAGIC, IHAVEOPT', `got 0x${g.magic.toString(16)} 0x${g.optMagic.toString(16)}`);
    }
    if (!(g.handshakeFlags & FLAG_FIXED_NEWSTYLE)) throw new Violation('SHOULD', 'the server is fixed newstyle', `handshake flags ${g.handshakeFlags}`);
    const serverNoZeroes = (g.handshakeFlags & 2) !== 0;
    const flags = v.clientFlags & (serverNoZeroes ? 0xffffffff : ~2);
    if (flags & ~3) {
      // The client flags carry a bit the server does not know: it MUST close.
      // Sending an option too tells "carries on" from "slow to close" at once.
      this.client.send(encodeClientFlags(flags), encodeOption(OPT.LIST));
      const head = await this.client.read(20, 3000).then(
        () => 'answered' as const,
        () => (this.client.isClosed ? ('closed' as const) : ('silent' as const)),
      );
      this.client.close();
      if (head === 'closed') return null;
      throw new Violation(
        'MUST',
        'an unknown client flag closes the connection',
        `client flags 0x${(flags >>> 0).toString(16)}: the server ${head === 'answered' ? 'answered NBD_OPT_LIST' : 'kept the connection open'}`,
      );
    }
    this.client.send(encodeClientFlags(flags));
    if (opts.tls) await this.startTls(opts.tls);
    let structured = false;
    let contexts: { id: number; name: string }[] = [];
    for (const j of v.junk) await this.junkOption(j);
    if (v.list) await this.option(OPT.LIST, Buffer.alloc(0), 'LIST');
    if (v.structured) {
      const replies = await this.option(OPT.STRUCTURED_REPLY, Buffer.alloc(0), 'STRUCTURED_REPLY');
      structured = replies.at(-1)!.type === REP.ACK;
    }
    let extended = false;
    if (v.extended) {
      const replies = await this.option(OPT.EXTENDED_HEADERS, Buffer.alloc(0), 'EXTENDED_HEADERS');
      extended = replies.at(-1)!.type === REP.ACK;
      if (extended && replies.at(-1)!.payload.length) throw new Violation('MUST', 'NBD_REP_ACK to EXTENDED_HEADERS has no data', `${replies.at(-1)!.payload.length} bytes`);
      if (extended) structured = true;
    }
    if (v.meta !== 'none' && structured) {
      const queries = v.meta === 'base' ? [META_BASE_ALLOCATION] : [META_BASE_ALLOCATION, META_ALLOCATION_DEPTH];
      const replies = await this.option(OPT.SET_META_CONTEXT, encodeMetaContextRequest({ name: this.exportName, queries }), 'SET_META_CONTEXT');
      if (replies.at(-1)!.type === REP.ACK) {
        for (const r of replies.slice(0, -1)) {
          if (r.type !== REP.META_CONTEXT) continue;
          const m = decodeMetaContextReply(r.payload);
          if (isMalformed(m)) throw new Violation('MUST', 'META_CONTEXT replies are well formed', m.malformed);
          if (!queries.includes(m.name)) throw new Violation('MUST', 'SET_META_CONTEXT selects only what was asked', `got '${m.name}'`);
          if (contexts.some((c) => c.id === m.id)) throw new Violation('MUST', 'meta context ids are unique', `id ${m.id} twice`);
          contexts.push(m);
        }
      }
    }
    let info: ExportInfo | null = null;
    if (v.infoFirst) info = await this.info(OPT.INFO);
    let exp: ExportInfo;
    if (v.exportName && !extended) {
      this.client.send(encodeOption(OPT.EXPORT_NAME, Buffer.from(this.exportName)));
      const reply = decodeExportNameReply(await this.read(10, 'EXPORT_NAME reply'))!;
      if (!(flags & 2)) {
        const pad = await this.read(124, 'the 124 zero bytes after EXPORT_NAME');
        if (!pad.every((b) => b === 0)) throw new Violation('MUST', 'EXPORT_NAME padding is zeroes', pad.toString('hex'));
      }
      exp = { size: reply.size, flags: reply.flags, maxPayload: null };
    } else {
      exp = await this.info(OPT.GO);
    }
    if (info && (info.size !== exp.size || info.flags !== exp.flags)) {
      throw new Violation(
        'MUST',
        'NBD_OPT_INFO and NBD_OPT_GO report the same export',
        `INFO said size ${info.size} flags 0x${info.flags.toString(16)}, GO said size ${exp.size} flags 0x${exp.flags.toString(16)}`,
      );
    }
    if (!(exp.flags & TF.HAS_FLAGS)) throw new Violation('MUST', 'transmission flags have HAS_FLAGS', `0x${exp.flags.toString(16)}`);
    if (!extended && exp.flags & TF.BLOCK_STATUS_PAYLOAD) {
      throw new Violation('SHOULD', 'BLOCK_STATUS_PAYLOAD only with extended headers', `0x${exp.flags.toString(16)}`);
    }
    this.terms = { size: exp.size, flags: exp.flags, structured, extended, contexts, maxPayload: exp.maxPayload ?? 32 << 20, maxPayloadAdvertised: exp.maxPayload !== null };
    return this;
  }

  /** STARTTLS and the TLS handshake; a server that refuses cannot be fuzzed over TLS. */
  private async startTls(options: () => tls.ConnectionOptions): Promise<void> {
    const last = (await this.option(OPT.STARTTLS, Buffer.alloc(0), 'STARTTLS')).at(-1)!;
    if (last.type !== REP.ACK) throw new Error(`the server refused STARTTLS (reply type 0x${last.type.toString(16)})`);
    try {
      await this.client.startTls(options());
    } catch (err) {
      throw new Violation('MUST', 'the TLS handshake after STARTTLS succeeds', (err as Error).message);
    }
  }

  /** Reads option replies up to ACK or an error, checking each header. */
  private async option(option: number, payload: Buffer, label: string): Promise<{ type: number; payload: Buffer }[]> {
    this.client.send(encodeOption(option, payload));
    const replies: { type: number; payload: Buffer }[] = [];
    for (;;) {
      const h = decodeOptionReplyHeader(await this.read(20, `reply to ${label}`))!;
      if (h.magic !== OPTION_REPLY_MAGIC) throw new Violation('MUST', 'option replies have the reply magic', `0x${h.magic.toString(16)} after ${label}`);
      if (h.option !== option) throw new Violation('MUST', 'option replies name the option', `${h.option} for ${label} (${option})`);
      if (h.length > 16 << 20) throw new Violation('MUST', 'option replies are of sane size', `${h.length} bytes`);
      const data = h.length ? await this.read(h.length, `payload of a reply to ${label}`) : Buffer.alloc(0);
      replies.push({ type: h.type, payload: data });
      if (h.type === REP.ACK || h.type >= 0x80000000) return replies;
      if (![REP.SERVER, REP.INFO, REP.META_CONTEXT].includes(h.type as never)) {
        throw new Violation('MUST', 'option reply types are defined', `type ${h.type} for ${label}`);
      }
    }
  }

  private async info(option: number): Promise<ExportInfo> {
    const label = option === OPT.GO ? 'GO' : 'INFO';
    const replies = await this.option(option, encodeInfoRequest({ name: this.exportName, requests: [INFO.BLOCK_SIZE] }), label);
    const last = replies.at(-1)!;
    if (last.type !== REP.ACK) throw new Violation('MUST', `${label} for an existing export succeeds`, `reply type 0x${last.type.toString(16)}: ${last.payload}`);
    let exp: ExportInfo | null = null;
    let maxPayload: number | null = null;
    for (const r of replies.slice(0, -1)) {
      if (r.type !== REP.INFO) continue;
      const i = decodeInfoReply(r.payload);
      if (isMalformed(i)) throw new Violation('MUST', 'NBD_REP_INFO is well formed', i.malformed);
      if ('size' in i) exp = { size: i.size, flags: i.flags, maxPayload: null };
      if ('maximum' in i) {
        if (i.minimum === 0 || (i.minimum & (i.minimum - 1)) !== 0 || i.preferred < i.minimum || i.maximum < i.preferred) {
          // The spec asks min a power of two, preferred >= min, max >= preferred (or max a multiple of min).
          if (!(i.maximum % i.minimum === 0 && i.preferred >= i.minimum)) {
            throw new Violation('MUST', 'block sizes are consistent', JSON.stringify(i));
          }
        }
        maxPayload = i.maximum;
      }
    }
    if (!exp) throw new Violation('MUST', `${label} sends NBD_INFO_EXPORT before ACK`, 'none came');
    return { ...exp, maxPayload };
  }

  /** An option sent before the real handshake; checks only what every server must do. */
  private async junkOption(j: OptionCase): Promise<void> {
    const replies = await this.option(j.option, j.payload, j.label);
    const last = replies.at(-1)!;
    const known = Object.values(OPT).includes(j.option as never) && j.option !== OPT.PEEK_EXPORT;
    if (!known && last.type !== REP.ERR_UNSUP) {
      throw new Violation('MUST', 'an unknown option gets NBD_REP_ERR_UNSUP', `${j.label}: reply type 0x${last.type.toString(16)}`);
    }
    const malformed =
      (j.option === OPT.INFO || j.option === OPT.GO) ? isMalformed(decodeInfoRequest(j.payload))
      : j.option === OPT.LIST_META_CONTEXT || j.option === OPT.SET_META_CONTEXT ? isMalformed(decodeMetaContextRequest(j.payload))
      : j.option === OPT.LIST || j.option === OPT.STRUCTURED_REPLY ? j.payload.length > 0
      : false;
    if (malformed && last.type === REP.ACK) throw new Violation('SHOULD', 'a malformed option gets an error', `${j.label} got ACK`);
  }

  // --- transmission ------------------------------------------------------------

  nextCookie(): bigint {
    return ++this.cookie;
  }

  /**
   * The request as this connection sends it. With extended headers a WRITE
   * carries PAYLOAD_LEN, a BLOCK_STATUS with `contextIds` its payload, and
   * another command flagged PAYLOAD_LEN a small payload (which the server
   * must take and refuse); without them `contextIds` means nothing.
   */
  adapt(q: RequestCase): RequestCase {
    if (!this.terms.extended) {
      // A compact header carries 32 bits of length; say what is sent.
      const length = q.length > 0xffffffff ? q.length % 2 ** 32 : q.length;
      return q.contextIds || length !== q.length ? { ...q, length, contextIds: undefined } : q;
    }
    if (q.type === CMD.WRITE && q.payload) return { ...q, flags: q.flags | CMD_FLAG.PAYLOAD_LEN };
    if (q.type === CMD.BLOCK_STATUS && q.contextIds) {
      return { ...q, flags: q.flags | CMD_FLAG.PAYLOAD_LEN };
    }
    if (q.flags & CMD_FLAG.PAYLOAD_LEN && !q.payload) {
      const payload = Buffer.alloc(Math.min(q.length, 64), 0x5a);
      return { ...q, length: payload.length, payload, label: `${q.label} with a ${payload.length}-byte payload` };
    }
    return q;
  }

  /** Header and payload of a request as the negotiated headers put them. */
  private frames(req: RequestCase): Buffer[] {
    if (!this.terms.extended) {
      const header = Buffer.alloc(REQUEST_SIZE);
      encodeRequest(header, 0, req);
      return req.payload ? [header, req.payload] : [header];
    }
    let payload = req.payload;
    if (req.contextIds && req.flags & CMD_FLAG.PAYLOAD_LEN) {
      payload = Buffer.alloc(blockStatusPayloadSize(req.contextIds.length));
      encodeBlockStatusPayload(payload, 0, { length: req.length, contextIds: req.contextIds });
    }
    const header = Buffer.alloc(EXTENDED_REQUEST_SIZE);
    const length = req.flags & CMD_FLAG.PAYLOAD_LEN ? (payload?.length ?? 0) : req.length;
    encodeExtendedRequest(header, 0, { ...req, length });
    return req.flags & CMD_FLAG.PAYLOAD_LEN && payload ? [header, payload] : [header];
  }

  /** Sends the requests at once, then reads until each has its final reply. */
  async exchange(reqs: RequestCase[]): Promise<Outcome[]> {
    const flights = new Map<bigint, InFlight>();
    const frames: Buffer[] = [];
    for (const req of reqs) {
      if (flights.has(req.cookie)) throw new Error('duplicate cookie in one exchange');
      flights.set(req.cookie, { req, outcome: { errno: 0 }, pieces: [], contentChunks: 0, done: false });
      frames.push(...this.frames(req));
    }
    this.client.send(Buffer.concat(frames));
    let left = reqs.length;
    while (left > 0) {
      const magic = (await this.read(4, `reply to ${describeRequests(reqs)}`)).readUInt32BE(0);
      if ((await this.readReply(flights, magic)) === 'done') left--;
    }
    return reqs.map((r) => flights.get(r.cookie)!.outcome);
  }

  /** Reads one reply or chunk after its magic; 'done' when a request has its final reply. */
  private async readReply(flights: Map<bigint, InFlight>, magic: number): Promise<'done' | 'more'> {
    if (magic === SIMPLE_REPLY_MAGIC) {
      if (this.terms.extended) throw new Violation('MUST', 'no simple replies with extended headers', 'got a simple reply');
      const rest = await this.read(12, 'simple reply');
      const errno = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const f = this.flight(flights, cookie);
      const isRead = f.req.type === CMD.READ;
      if (f.pieces.length || f.contentChunks) throw new Violation('MUST', 'no simple reply after structured chunks', `cookie ${cookie}`);
      if (this.terms.structured && isRead) {
        throw new Violation('MUST', 'with structured replies a READ gets a structured reply', `simple reply (error ${errno}) to ${f.req.label}`);
      }
      if (f.req.type === CMD.BLOCK_STATUS && errno === 0) throw new Violation('MUST', 'BLOCK_STATUS succeeds with a structured reply', f.req.label);
      f.outcome.errno = errno;
      if (errno === 0 && isRead) f.outcome.data = await this.read(f.req.length, `data of ${f.req.label}`);
      this.checkErrno(errno, f.req);
      f.done = true;
      return 'done';
    }
    if (magic === EXTENDED_REPLY_MAGIC && !this.terms.extended) throw new Violation('MUST', 'no extended replies unless negotiated', 'got an extended chunk');
    if (magic !== STRUCTURED_REPLY_MAGIC && magic !== EXTENDED_REPLY_MAGIC) throw new Violation('MUST', 'replies have a reply magic', `0x${magic.toString(16)}`);
    if (!this.terms.structured) throw new Violation('MUST', 'no structured replies unless negotiated', 'got a chunk');
    if (magic === STRUCTURED_REPLY_MAGIC && this.terms.extended) throw new Violation('MUST', 'with extended headers every reply is an extended chunk', 'got a structured chunk');
    const extended = magic === EXTENDED_REPLY_MAGIC;
    const rest = await this.read(extended ? 28 : 16, 'chunk header');
    const flags = rest.readUInt16BE(0);
    const type = rest.readUInt16BE(2);
    const cookie = rest.readBigUInt64BE(4);
    const length = extended ? readU64(rest, 20) : rest.readUInt32BE(12);
    const f = this.flight(flights, cookie);
    if (extended && rest.readBigUInt64BE(12) !== BigInt(f.req.offset)) {
      throw new Violation('MUST', "extended replies echo the request's offset", `${rest.readBigUInt64BE(12)} for ${f.req.label}`);
    }
    if (length > (64 << 20) + 64) throw new Violation('MUST', 'chunks are no larger than the request allows', `${length} bytes`);
    const payload = decodeChunkPayload(type, length ? await this.read(length, 'chunk payload') : Buffer.alloc(0));
    if (isMalformed(payload)) throw new Violation('MUST', 'chunk payloads are well formed', `${payload.malformed} (${f.req.label})`);
    this.chunk(f, flags, payload);
    if (flags & REPLY_FLAG_DONE) {
      this.finishStructured(f);
      return 'done';
    }
    return 'more';
  }

  private flight(flights: Map<bigint, InFlight>, cookie: bigint): InFlight {
    const f = flights.get(cookie);
    if (!f) throw new Violation('MUST', 'replies carry the cookie of a request in flight', `cookie ${cookie}`);
    if (f.done) throw new Violation('MUST', 'nothing follows the DONE chunk of a request', `cookie ${cookie} (${f.req.label})`);
    return f;
  }

  private checkErrno(errno: number, req: RequestCase): void {
    if (errno !== 0 && !Object.values(NBD_ERR).includes(errno as never)) {
      throw new Violation('SHOULD', 'error values are ones the protocol defines', `${errno} for ${req.label}`);
    }
  }

  private chunk(f: InFlight, flags: number, p: ReturnType<typeof decodeChunkPayload> & object): void {
    const req = f.req;
    const type = (p as { type: number }).type;
    if (type === CHUNK.ERROR || type === CHUNK.ERROR_OFFSET) {
      const e = p as { error: number; offset?: number };
      if (e.error === 0) throw new Violation('MUST', 'error chunks carry a non-zero error', req.label);
      this.checkErrno(e.error, req);
      if (e.offset !== undefined && (e.offset < Number(req.offset) || e.offset >= Number(req.offset) + req.length)) {
        throw new Violation('MUST', 'ERROR_OFFSET lies inside the request', `${e.offset} for ${req.label}`);
      }
      if (!f.outcome.errno) f.outcome.errno = e.error;
      return;
    }
    if (type === CHUNK.NONE) {
      if (!(flags & REPLY_FLAG_DONE)) throw new Violation('MUST', 'a NONE chunk carries DONE', req.label);
      return;
    }
    if (type === CHUNK.OFFSET_DATA || type === CHUNK.OFFSET_HOLE) {
      if (req.type !== CMD.READ) throw new Violation('MUST', 'only READ gets data chunks', `${type} for ${req.label}`);
      const start = (p as { offset: number }).offset - Number(req.offset);
      const len = 'data' in p ? (p as { data: Buffer }).data.length : (p as { size: number }).size;
      if (len === 0) throw new Violation('MUST', 'data and hole chunks are not empty', req.label);
      if (start < 0 || start + len > req.length) throw new Violation('MUST', 'read chunks lie inside the request', `[${start}, ${start + len}) of ${req.label}`);
      for (const [a, b] of f.pieces) {
        if (start < b && a < start + len) throw new Violation('MUST', 'read chunks do not overlap', `[${start}, ${start + len}) and [${a}, ${b}) of ${req.label}`);
      }
      f.pieces.push([start, start + len]);
      f.contentChunks++;
      if (!f.outcome.data) f.outcome.data = Buffer.alloc(req.length);
      if ('data' in p) (p as { data: Buffer }).data.copy(f.outcome.data, start);
      return;
    }
    if (type === CHUNK.BLOCK_STATUS || type === CHUNK.BLOCK_STATUS_EXT) {
      if (req.type !== CMD.BLOCK_STATUS) throw new Violation('MUST', 'only BLOCK_STATUS gets status chunks', req.label);
      if ((type === CHUNK.BLOCK_STATUS_EXT) !== !!this.terms.extended) {
        throw new Violation('MUST', 'BLOCK_STATUS_EXT exactly when extended headers are in use', `chunk type ${type} (${req.label})`);
      }
      const s = p as { contextId: number; extents: BlockDescriptor[] };
      if (!this.answered(req).some((c) => c.id === s.contextId)) throw new Violation('MUST', 'status chunks name a selected context', `id ${s.contextId}`);
      f.outcome.extents ??= new Map();
      if (f.outcome.extents.has(s.contextId)) throw new Violation('MUST', 'one status chunk per context', `id ${s.contextId} twice`);
      f.outcome.extents.set(s.contextId, s.extents);
      return;
    }
    throw new Violation('MUST', 'chunk types are defined', `${type} for ${req.label}`);
  }

  private finishStructured(f: InFlight): void {
    f.done = true;
    const req = f.req;
    if (f.outcome.errno) {
      delete f.outcome.data;
      delete f.outcome.extents;
      return;
    }
    if (req.type === CMD.READ) {
      const covered = f.pieces.reduce((n, [a, b]) => n + (b - a), 0);
      if (covered !== req.length) throw new Violation('MUST', 'a successful READ covers the request', `${covered} of ${req.length} bytes (${req.label})`);
      if (req.flags & CMD_FLAG.DF && f.contentChunks > 1) throw new Violation('MUST', 'DF reads come in one chunk', `${f.contentChunks} chunks (${req.label})`);
      f.outcome.data ??= Buffer.alloc(0);
      return;
    }
    if (req.type === CMD.BLOCK_STATUS) {
      const got = f.outcome.extents ?? new Map<number, BlockDescriptor[]>();
      for (const c of this.answered(req)) {
        const list = got.get(c.id);
        if (!list) throw new Violation('MUST', 'BLOCK_STATUS answers for every selected context', `${c.name} missing (${req.label})`);
        if (list.some((e) => e.length === 0)) throw new Violation('MUST', 'no zero-length extents', `${c.name} (${req.label})`);
        if (req.flags & CMD_FLAG.REQ_ONE && (list.length !== 1 || list[0].length > req.length)) {
          throw new Violation('MUST', 'REQ_ONE gets one extent no longer than asked', `${JSON.stringify(list)} (${req.label})`);
        }
        const total = list.reduce((n, e) => n + e.length, 0);
        if (Number(req.offset) + total > this.terms.size) {
          throw new Violation('SHOULD', 'extents stay inside the export', `${total} bytes from ${req.offset} (${req.label})`);
        }
        const beforeLast = total - list[list.length - 1].length;
        if (beforeLast >= req.length) throw new Violation('SHOULD', 'only the last extent goes past the request', `${JSON.stringify(list)} (${req.label})`);
      }
    }
  }

  /** The contexts a BLOCK_STATUS must answer: those its payload names, or all selected. */
  private answered(req: RequestCase): { id: number; name: string }[] {
    if (!(req.contextIds && req.flags & CMD_FLAG.PAYLOAD_LEN)) return this.terms.contexts;
    return this.terms.contexts.filter((c) => req.contextIds!.includes(c.id));
  }

  /** NBD_CMD_DISC: nothing comes back and the server closes. */
  async disconnect(timeoutMs: number): Promise<void> {
    this.client.send(...this.frames({ type: CMD.DISC, flags: 0, cookie: this.nextCookie(), offset: 0, length: 0, label: 'DISC' }));
    const closed = await this.client.closesWithin(timeoutMs);
    const extra = this.client.buffered;
    this.client.close();
    if (extra) throw new Violation('MUST', 'NBD_CMD_DISC gets no reply', `${extra} bytes came back`);
    if (!closed) throw new Violation('SHOULD', 'the server closes after NBD_CMD_DISC', `still open after ${timeoutMs} ms`);
  }
}

export function describeRequests(reqs: RequestCase[]): string {
  return reqs.map((r) => r.label).join(' + ');
}

export { commandLabel };
