// A promise-based NBD client: one connection, any number of requests in
// flight, replies matched by cookie in whatever order they come. Requests
// are encoded with the same codecs the server decodes them with; replies
// are taken off the input as whole frames whenever bytes arrive (simple
// replies, structured chunks, extended chunks), and a request settles
// when its last frame is in: a simple reply, or the chunk flagged DONE.
// A reply that breaks the protocol (unknown cookie, chunks outside the
// read, a simple reply under extended headers) ends the connection: every
// request still waiting rejects with the reason.

import {
  CHUNK,
  CMD,
  CMD_FLAG,
  EXTENDED_REPLY_SIZE,
  EXTENDED_REQUEST_SIZE,
  REPLY_FLAG_DONE,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  CHUNK_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
  EXTENDED_REPLY_MAGIC,
  TF,
  isChunkError,
} from '../protocol/nbd/constants.js';
import { isMalformed } from '../protocol/nbd/handshake-codec.js';
import { commandName } from '../protocol/nbd/commands.js';
import { nbdErrorName } from '../protocol/nbd/errors.js';
import {
  decodeChunkPayload,
  decodeReplyHeader,
  blockStatusPayloadSize,
  encodeBlockStatusPayload,
  encodeExtendedRequest,
  encodeRequest,
  type BlockDescriptor,
} from '../protocol/nbd/transmission-codec.js';
import type { Negotiated } from './negotiate.js';
import type { Wire } from './wire.js';

/** A request the server answered with an error. */
export class NbdError extends Error {
  constructor(
    /** The NBD error value (NBD_EIO = 5, ...). */
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'NbdError';
  }

  /** 'EIO', 'EINVAL', ... */
  get code(): string {
    return nbdErrorName(this.errno);
  }
}

export interface BlockExtent {
  length: number;
  /** Status bits of the context, e.g. STATE_HOLE | STATE_ZERO for base:allocation. */
  flags: number;
}

export interface ReadOptions {
  /** NBD_CMD_FLAG_DF: the data in one chunk. */
  df?: boolean;
}
export interface WriteOptions {
  fua?: boolean;
}
export interface ZeroOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: allocate rather than punch. */
  noHole?: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP unless it is faster than writing. */
  fastZero?: boolean;
}
export interface BlockStatusOptions {
  /** NBD_CMD_FLAG_REQ_ONE: one extent per context. */
  reqOne?: boolean;
  /** Only these of the selected contexts (extended headers with BLOCK_STATUS_PAYLOAD). */
  contexts?: string[];
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  data?: Buffer;
  extents?: Map<string, BlockExtent[]>;
  error?: NbdError;
}

type Header =
  | { kind: 'simple'; error: number; cookie: bigint }
  | { kind: 'chunk' | 'extended'; flags: number; type: number; cookie: bigint; offset?: number; length: number };

const TWO32 = 2 ** 32;
/** Largest reply payload accepted: a maximum READ plus its chunk prefix. */
const MAX_REPLY_PAYLOAD = (64 << 20) + 64;

export class NbdClient {
  private cookie = 0n;
  private readonly pending = new Map<bigint, Pending>();
  /** disconnect() waiting for the last request in flight to settle. */
  private drained: (() => void) | null = null;
  private header: Header | null = null;
  private magic: Buffer | null = null;
  private broken: Error | null = null;
  private disconnecting = false;
  private readonly contextNames: Map<number, string>;

  constructor(
    private readonly wire: Wire,
    readonly info: Negotiated,
  ) {
    this.contextNames = new Map([...info.metaContexts].map(([name, id]) => [id, name]));
    wire.listen(() => this.pump());
  }

  get size(): number {
    return this.info.size;
  }
  get readOnly(): boolean {
    return (this.info.flags & TF.READ_ONLY) !== 0;
  }
  get canFlush(): boolean {
    return (this.info.flags & TF.SEND_FLUSH) !== 0;
  }
  get canFua(): boolean {
    return (this.info.flags & TF.SEND_FUA) !== 0;
  }
  get canTrim(): boolean {
    return (this.info.flags & TF.SEND_TRIM) !== 0;
  }
  get canZero(): boolean {
    return (this.info.flags & TF.SEND_WRITE_ZEROES) !== 0;
  }
  get canFastZero(): boolean {
    return (this.info.flags & TF.SEND_FAST_ZERO) !== 0;
  }
  get canCache(): boolean {
    return (this.info.flags & TF.SEND_CACHE) !== 0;
  }
  get canMultiConn(): boolean {
    return (this.info.flags & TF.CAN_MULTI_CONN) !== 0;
  }
  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  read(offset: number, length: number, options: ReadOptions = {}): Promise<Buffer> {
    return this.request(CMD.READ, options.df ? CMD_FLAG.DF : 0, offset, length) as Promise<Buffer>;
  }

  async write(offset: number, data: Buffer, options: WriteOptions = {}): Promise<void> {
    await this.request(CMD.WRITE, options.fua ? CMD_FLAG.FUA : 0, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(CMD.FLUSH, 0, 0, 0);
  }

  async trim(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    await this.request(CMD.TRIM, options.fua ? CMD_FLAG.FUA : 0, offset, length);
  }

  async zero(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    const flags = (options.fua ? CMD_FLAG.FUA : 0) | (options.noHole ? CMD_FLAG.NO_HOLE : 0) | (options.fastZero ? CMD_FLAG.FAST_ZERO : 0);
    await this.request(CMD.WRITE_ZEROES, flags, offset, length);
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.request(CMD.CACHE, 0, offset, length);
  }

  /** Extents per selected meta context, by context name. */
  blockStatus(offset: number, length: number, options: BlockStatusOptions = {}): Promise<Map<string, BlockExtent[]>> {
    if (this.info.metaContexts.size === 0) return Promise.reject(new Error('no meta context was selected: connect with metaContexts'));
    const flags = options.reqOne ? CMD_FLAG.REQ_ONE : 0;
    let payload: Buffer | undefined;
    if (options.contexts) {
      if (!(this.info.flags & TF.BLOCK_STATUS_PAYLOAD)) return Promise.reject(new Error('the server does not take context lists with BLOCK_STATUS'));
      const ids = options.contexts.map((name) => this.info.metaContexts.get(name));
      if (ids.some((id) => id === undefined)) return Promise.reject(new Error(`not a selected context: ${options.contexts.join(', ')}`));
      // request() flags it PAYLOAD_LEN, as every payload under extended headers.
      payload = Buffer.alloc(blockStatusPayloadSize(ids.length));
      encodeBlockStatusPayload(payload, 0, { length, contextIds: ids as number[] });
    }
    return this.request(CMD.BLOCK_STATUS, flags, offset, length, payload) as Promise<Map<string, BlockExtent[]>>;
  }

  /** NBD_CMD_DISC once every request has its answer, then close. */
  async disconnect(): Promise<void> {
    if (this.disconnecting) return;
    this.disconnecting = true;
    if (this.pending.size > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    if (!this.broken && !this.wire.isClosed) {
      this.wire.send(this.encode(CMD.DISC, 0, 0, 0));
      this.wire.end();
      await this.wire.closesWithin(5000);
    }
    this.wire.destroy();
  }

  /** Closes at once; requests still waiting reject. */
  destroy(): void {
    this.fail(new Error('the connection was closed by the client'));
  }

  private request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<unknown> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.disconnecting) return Promise.reject(new Error('the client is disconnecting'));
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      return Promise.reject(new RangeError(`offset ${offset} and length ${length} must be non-negative safe integers`));
    }
    if (!this.info.extendedHeaders && length >= TWO32) {
      return Promise.reject(new RangeError(`a length of ${length} needs extended headers, which were not negotiated`));
    }
    const cookie = ++this.cookie;
    // With extended headers a payload's length is what the header carries (PAYLOAD_LEN).
    const withPayload = this.info.extendedHeaders && payload ? flags | CMD_FLAG.PAYLOAD_LEN : flags;
    const wireLength = this.info.extendedHeaders && payload ? payload.length : length;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { type, offset, length, resolve, reject });
      const header = this.encode(type, withPayload, offset, wireLength, cookie);
      if (payload) this.wire.send(header, payload);
      else this.wire.send(header);
    });
  }

  private encode(type: number, flags: number, offset: number, length: number, cookie = ++this.cookie): Buffer {
    const fields = { flags, type, cookie, offset, length };
    if (this.info.extendedHeaders) {
      const buf = Buffer.allocUnsafe(EXTENDED_REQUEST_SIZE);
      encodeExtendedRequest(buf, 0, fields);
      return buf;
    }
    const buf = Buffer.allocUnsafe(REQUEST_SIZE);
    encodeRequest(buf, 0, fields);
    return buf;
  }

  // --- replies ---

  private pump(): void {
    try {
      while (!this.broken && this.frame());
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    if (this.wire.isClosed && !this.broken) {
      const why = this.wire.error ? `: ${this.wire.error.message}` : '';
      this.fail(new Error(`the server closed the connection${why}`));
    }
  }

  /** Takes one whole frame off the input and applies it; false when more bytes are needed. */
  private frame(): boolean {
    const input = this.wire.input;
    if (!this.header) {
      const h = this.readHeader();
      if (!h) return false;
      this.header = h;
    }
    const h = this.header;
    const p = this.pending.get(h.cookie);
    if (!p) throw new Error(`the server answered cookie ${h.cookie}, which no request in flight has`);
    const payloadLength = h.kind === 'simple' ? (h.error === 0 && p.type === CMD.READ ? p.length : 0) : h.length;
    const payload = payloadLength === 0 ? Buffer.alloc(0) : input.take(payloadLength);
    if (!payload) return false;
    this.header = null;
    if (h.kind === 'simple') {
      if (h.error !== 0) this.settle(h.cookie, p, new NbdError(h.error, `${describe(p)}: ${nbdErrorName(h.error)}`));
      else this.settle(h.cookie, p, p.type === CMD.READ ? payload : undefined);
      return true;
    }
    if (h.kind === 'extended' && h.offset !== p.offset) throw new Error(`an extended reply to ${describe(p)} names offset ${h.offset}`);
    this.chunk(p, h.type, payload);
    if (h.flags & REPLY_FLAG_DONE) this.settle(h.cookie, p, p.error ?? this.result(p));
    return true;
  }

  private readHeader(): Header | null {
    const input = this.wire.input;
    if (this.info.extendedHeaders) {
      const bytes = input.take(EXTENDED_REPLY_SIZE);
      if (!bytes) return null;
      const h = decodeReplyHeader(bytes);
      if (!h || h.kind !== 'extended') throw new Error(`expected an extended reply, got magic 0x${bytes.readUInt32BE(0).toString(16)}`);
      if (h.length > MAX_REPLY_PAYLOAD) throw new Error(`a reply chunk of ${h.length} bytes`);
      return h;
    }
    if (!this.magic) {
      const m = input.take(4);
      if (!m) return null;
      this.magic = Buffer.from(m);
    }
    const magic = this.magic.readUInt32BE(0);
    if (magic !== SIMPLE_REPLY_MAGIC && magic !== STRUCTURED_REPLY_MAGIC) {
      throw new Error(`bad reply magic 0x${magic.toString(16)}${magic === EXTENDED_REPLY_MAGIC ? ' (extended, not negotiated)' : ''}`);
    }
    if (magic === STRUCTURED_REPLY_MAGIC && !this.info.structuredReplies) throw new Error('a structured reply, which was not negotiated');
    const rest = input.take((magic === SIMPLE_REPLY_MAGIC ? SIMPLE_REPLY_SIZE : CHUNK_HEADER_SIZE) - 4);
    if (!rest) return null;
    const h = decodeReplyHeader(Buffer.concat([this.magic, rest]))!;
    this.magic = null;
    if (h.kind === 'chunk' && h.length > MAX_REPLY_PAYLOAD) throw new Error(`a reply chunk of ${h.length} bytes`);
    return h as Header;
  }

  private chunk(p: Pending, type: number, payload: Buffer): void {
    const c = decodeChunkPayload(type, payload);
    if (isMalformed(c)) throw new Error(`${describe(p)}: ${c.malformed}`);
    if (isChunkError(type)) {
      if (!('error' in c)) throw new Error(`${describe(p)}: unknown error chunk type 0x${type.toString(16)}`);
      p.error ??= new NbdError(c.error, `${describe(p)}: ${nbdErrorName(c.error)}${c.message ? `: ${c.message}` : ''}`);
      return;
    }
    if ('unknown' in c) throw new Error(`${describe(p)}: unknown chunk type ${type}`);
    if (c.type === CHUNK.NONE) return;
    if (c.type === CHUNK.OFFSET_DATA || c.type === CHUNK.OFFSET_HOLE) {
      if (p.type !== CMD.READ) throw new Error(`${describe(p)}: a read chunk`);
      const length = c.type === CHUNK.OFFSET_DATA ? c.data.length : c.size;
      const start = c.offset - p.offset;
      if (start < 0 || start + length > p.length || length === 0) throw new Error(`${describe(p)}: a chunk of [${c.offset}, +${length})`);
      if (c.type === CHUNK.OFFSET_DATA && length === p.length) p.data = c.data;
      else {
        p.data ??= Buffer.alloc(p.length);
        if (c.type === CHUNK.OFFSET_DATA) c.data.copy(p.data, start);
      }
      return;
    }
    if (c.type === CHUNK.BLOCK_STATUS || c.type === CHUNK.BLOCK_STATUS_EXT) {
      if (p.type !== CMD.BLOCK_STATUS) throw new Error(`${describe(p)}: a block status chunk`);
      if ((c.type === CHUNK.BLOCK_STATUS_EXT) !== this.info.extendedHeaders) throw new Error(`${describe(p)}: block status chunk type ${c.type}`);
      const name = this.contextNames.get(c.contextId);
      if (name === undefined) throw new Error(`${describe(p)}: status for context id ${c.contextId}, which was not selected`);
      p.extents ??= new Map();
      p.extents.set(name, c.extents.map((e: BlockDescriptor) => ({ length: e.length, flags: e.flags })));
    }
  }

  private result(p: Pending): unknown {
    if (p.type === CMD.READ) return p.data ?? Buffer.alloc(p.length);
    if (p.type === CMD.BLOCK_STATUS) return p.extents ?? new Map();
    return undefined;
  }

  private settle(cookie: bigint, p: Pending, outcome: unknown): void {
    this.pending.delete(cookie);
    if (outcome instanceof Error) p.reject(outcome);
    else p.resolve(outcome);
    if (this.pending.size === 0) this.drained?.();
  }

  private fail(err: Error): void {
    if (this.broken) return;
    this.broken = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.drained?.();
    this.wire.destroy();
  }
}

function describe(p: Pending): string {
  return `${commandName(p.type)} at ${p.offset}+${p.length}`;
}
