// A deliberately simple NBD client for tests and fuzzers that must send
// what real clients refuse to: bad magics, unknown flags, truncated
// requests. It speaks through the same codecs as the server, one frame at
// a time, over a UNIX socket or TCP (see uri.ts for NBD URIs).

import net from 'node:net';
import { CHUNK, IHAVEOPT, INFO, NBDMAGIC, OPT, REP, REPLY_FLAG_DONE } from '../protocol/nbd/constants.js';
import {
  decodeGreeting,
  decodeInfoReply,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  isMalformed,
  type Greeting,
} from '../protocol/nbd/handshake-codec.js';
import {
  decodeChunkPayload,
  decodeReplyHeader,
  encodeRequest,
  type ChunkPayload,
  type RequestFields,
} from '../protocol/nbd/transmission-codec.js';
import { ByteQueue } from '../server/byte-queue.js';
import type { Endpoint } from './uri.js';

export interface OptionReply {
  option: number;
  type: number;
  payload: Buffer;
}

export type Reply =
  | { kind: 'simple'; error: number; cookie: bigint; data: Buffer }
  | { kind: 'chunk'; flags: number; type: number; cookie: bigint; payload: ChunkPayload };

export class RawClient {
  private readonly input = new ByteQueue();
  private wake: (() => void) | null = null;
  private ended = false;
  readonly closed: Promise<void>;
  /** How long read() waits by default. */
  timeoutMs = 5000;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.input.push(d);
      this.wake?.();
    });
    this.closed = new Promise((resolve) => {
      const done = (): void => {
        this.ended = true;
        this.wake?.();
        resolve();
      };
      socket.on('close', done);
      socket.on('end', done);
      socket.on('error', () => undefined);
    });
  }

  /** Connects to a UNIX socket path, or to an endpoint (UNIX or TCP). */
  static connect(to: string | Endpoint, timeoutMs = 5000): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket =
        typeof to === 'string' ? net.connect(to) : 'path' in to ? net.connect(to.path) : net.connect(to.port, to.host);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(new RawClient(socket));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  /** Whether the server has closed (or the socket failed). */
  get isClosed(): boolean {
    return this.ended;
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.input.length;
  }

  send(...bufs: Buffer[]): void {
    for (const b of bufs) this.socket.write(b);
  }

  /** Exactly n bytes; rejects if the server closes first or time runs out. */
  async read(n: number, timeoutMs = this.timeoutMs): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = this.input.take(n);
      if (got) return Buffer.from(got);
      if (this.ended) throw new Error(`connection closed while waiting for ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  /** True if the server closes the connection within the time given. */
  async closesWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([this.closed.then(() => true as const), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.socket.destroy();
  }

  // --- handshake ---

  async greeting(): Promise<Greeting> {
    const g = decodeGreeting(await this.read(18))!;
    if (g.magic !== NBDMAGIC || g.optMagic !== IHAVEOPT) throw new Error('bad greeting');
    return g;
  }

  async optionReply(): Promise<OptionReply> {
    const h = decodeOptionReplyHeader(await this.read(20))!;
    return { option: h.option, type: h.type, payload: h.length ? await this.read(h.length) : Buffer.alloc(0) };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, payload: Buffer = Buffer.alloc(0)): Promise<OptionReply[]> {
    this.send(encodeOption(option, payload));
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      replies.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return replies;
    }
  }

  /** Greeting, flags, optional structured replies and base:allocation, then GO. */
  async handshake(
    options: { name?: string; structured?: boolean; meta?: boolean; flags?: number } = {},
  ): Promise<{ size: number; flags: number }> {
    await this.greeting();
    this.send(encodeClientFlags(options.flags ?? 3));
    const name = options.name ?? '';
    if (options.structured ?? true) await this.option(OPT.STRUCTURED_REPLY);
    if (options.meta) {
      await this.option(OPT.SET_META_CONTEXT, encodeMetaContextRequest({ name, queries: ['base:allocation'] }));
    }
    const replies = await this.option(OPT.GO, encodeInfoRequest({ name, requests: [] }));
    const last = replies[replies.length - 1];
    if (last.type !== REP.ACK) throw new Error(`GO failed: ${last.type.toString(16)} ${last.payload}`);
    for (const r of replies) {
      const info = decodeInfoReply(r.payload);
      if (r.type === REP.INFO && !isMalformed(info) && info.type === INFO.EXPORT && 'size' in info) {
        return { size: info.size, flags: info.flags };
      }
    }
    throw new Error('GO succeeded without NBD_INFO_EXPORT');
  }

  // --- transmission ---

  request(fields: RequestFields, payload?: Buffer): void {
    const header = Buffer.alloc(28);
    encodeRequest(header, 0, fields);
    this.send(header, ...(payload ? [payload] : []));
  }

  /** The next reply; `dataLength` is the payload of a successful simple READ reply. */
  async reply(dataLength = 0): Promise<Reply> {
    const magic = await this.read(4);
    const isSimple = magic.readUInt32BE(0) === 0x67446698;
    const rest = await this.read(isSimple ? 12 : 16);
    const h = decodeReplyHeader(Buffer.concat([magic, rest]))!;
    if (h.kind === 'simple') {
      const data = h.error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
      return { kind: 'simple', error: h.error, cookie: h.cookie, data };
    }
    if (h.kind === 'unknown') throw new Error(`bad reply magic 0x${h.magic.toString(16)}`);
    if (h.kind !== 'chunk') throw new Error('an extended reply header where none was negotiated');
    const payload = decodeChunkPayload(h.type, h.length ? await this.read(h.length) : Buffer.alloc(0));
    if (isMalformed(payload)) throw new Error(payload.malformed);
    return { kind: 'chunk', flags: h.flags, type: h.type, cookie: h.cookie, payload };
  }

  /** All chunks of one structured reply, up to the one flagged DONE. */
  async structuredReply(): Promise<Extract<Reply, { kind: 'chunk' }>[]> {
    const chunks: Extract<Reply, { kind: 'chunk' }>[] = [];
    for (;;) {
      const r = await this.reply();
      if (r.kind !== 'chunk') throw new Error('expected a structured reply chunk');
      chunks.push(r);
      if (r.flags & REPLY_FLAG_DONE) return chunks;
    }
  }
}

/** The error value of a reply, whether simple or an error chunk. */
export function replyError(r: Reply): number {
  if (r.kind === 'simple') return r.error;
  return r.payload.type === CHUNK.ERROR || r.payload.type === CHUNK.ERROR_OFFSET ? (r.payload as { error: number }).error : 0;
}
