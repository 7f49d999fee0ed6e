// A deliberately simple NBD client for tests and fuzzers that must send
// what real clients refuse to: bad magics, unknown flags, truncated
// requests. It speaks through the same codecs as the server, one frame at
// a time, over the client library's Wire (UNIX or TCP, STARTTLS); for a
// client that behaves, use vblk/client.

import type { Duplex } from 'node:stream';
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
import type { Endpoint } from '../client/uri.js';
import { Wire } from '../client/wire.js';

export interface OptionReply {
  option: number;
  type: number;
  payload: Buffer;
}

export type Reply =
  | { kind: 'simple'; error: number; cookie: bigint; data: Buffer }
  | { kind: 'chunk'; flags: number; type: number; cookie: bigint; payload: ChunkPayload };

export class RawClient extends Wire {
  /** Over a stream already connected (a TLS socket made with node:tls after STARTTLS's ACK, say) or, by connect(), a new one. */
  constructor(socket: Duplex) {
    super(socket);
    this.timeoutMs = 5000;
  }

  /** Connects to a UNIX socket path, or to an endpoint (UNIX or TCP). */
  static override connect<T extends Wire>(this: new (socket: Duplex) => T, to: string | Endpoint, timeoutMs = 5000): Promise<T> {
    return Wire.connect.call(this, to, timeoutMs) as Promise<T>;
  }

  close(): void {
    this.destroy();
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
