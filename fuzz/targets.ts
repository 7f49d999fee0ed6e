// Coverage-guided fuzz targets: each takes arbitrary bytes and drives one
// parser. A target returns normally for any input, malformed or not;
// throwing is a crash. The invariants checked besides "no throw" are the
// ones the codecs promise: what decodes re-encodes to the same message,
// and the handshake never leaves its phases or sends a reply it cannot frame.

import { checkRequest } from '../src/protocol/nbd/commands.js';
import { OPT, OPTION_HEADER_SIZE, REQUEST_SIZE } from '../src/protocol/nbd/constants.js';
import {
  decodeClientFlags,
  decodeInfoReply,
  decodeInfoRequest,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeServerReply,
  encodeInfoRequest,
  encodeMetaContextRequest,
  isMalformed,
} from '../src/protocol/nbd/handshake-codec.js';
import { Handshake, type ExportSummary } from '../src/protocol/nbd/handshake.js';
import { decodeChunkPayload, decodeReplyHeader, decodeRequest } from '../src/protocol/nbd/transmission-codec.js';

export interface Target {
  name: string;
  /** Source files whose coverage guides this target (paths under dist/). */
  covers: string[];
  run(data: Buffer): void;
}

function fail(message: string): never {
  throw new Error(`invariant: ${message}`);
}

/** The request decoder and the protocol checks of a request, under terms chosen by the first bytes. */
const requestDecoder: Target = {
  name: 'request-decoder',
  covers: ['src/protocol/nbd/transmission-codec.js', 'src/protocol/nbd/commands.js', 'src/protocol/nbd/u64.js'],
  run(data) {
    if (data.length < 3) return;
    const terms = { flags: data.readUInt16BE(0), structuredReplies: (data[2] & 1) === 1, extendedHeaders: (data[2] & 2) === 2, metaContextCount: data[2] >> 2 };
    for (let p = 3; p + REQUEST_SIZE <= data.length; p += REQUEST_SIZE) {
      const h = decodeRequest(data, p)!;
      if (!h) fail('decodeRequest returned null for a whole frame');
      const checked = checkRequest(h, terms);
      if ('request' in checked && checked.request.offset !== h.offset) fail('offset changed on the way to the device');
    }
    // Replies a client would decode from the same bytes.
    for (let p = 0; p < data.length; ) {
      const r = decodeReplyHeader(data, p);
      if (!r || r.kind === 'unknown') break;
      if (r.kind === 'simple') {
        p += 16;
        continue;
      }
      const end = p + 20 + r.length;
      if (end > data.length) break;
      decodeChunkPayload(r.type, data.subarray(p + 20, end));
      p = end;
    }
  },
};

/** The option payload decoders, with a round trip for what decodes. */
const optionDecoder: Target = {
  name: 'option-decoder',
  covers: ['src/protocol/nbd/handshake-codec.js'],
  run(data) {
    decodeOptionHeader(data);
    decodeOptionReplyHeader(data);
    const info = decodeInfoRequest(data);
    if (!isMalformed(info)) {
      const again = decodeInfoRequest(encodeInfoRequest(info));
      if (isMalformed(again) || again.name !== info.name || again.requests.join() !== info.requests.join()) fail('INFO request round trip');
    }
    const meta = decodeMetaContextRequest(data);
    if (!isMalformed(meta)) {
      const again = decodeMetaContextRequest(encodeMetaContextRequest(meta));
      if (isMalformed(again) || again.name !== meta.name || again.queries.join('\0') !== meta.queries.join('\0')) fail('meta context round trip');
    }
    decodeInfoReply(data);
    decodeServerReply(data);
    decodeMetaContextReply(data);
  },
};

const EXPORTS: ExportSummary[] = [
  {
    name: '',
    description: 'default',
    size: 1 << 20,
    capabilities: { readOnly: false, trim: true, fastZero: true, cache: true, multiConn: true, blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 } },
  },
  {
    name: 'ro',
    description: '',
    size: 4096,
    capabilities: { readOnly: true, trim: false, fastZero: false, cache: false, multiConn: false, blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 20 } },
  },
];
const catalog = { list: () => EXPORTS, find: (name: string) => EXPORTS.find((e) => e.name === name) };

/** The handshake state table, framed the way NbdConnection frames it. */
const handshake: Target = {
  name: 'handshake',
  covers: ['src/protocol/nbd/handshake.js', 'src/protocol/nbd/handshake-codec.js', 'src/protocol/nbd/strings.js'],
  run(data) {
    const hs = new Handshake(catalog);
    if (data.length && data[0] & 0x80) hs.shuttingDown = true;
    let p = 0;
    const flags = decodeClientFlags(data, p);
    if (flags === null) return;
    p += 4;
    let step = hs.receiveClientFlags(flags);
    while (step.phase === 'options') {
      const h = decodeOptionHeader(data, p);
      if (!h) return;
      p += OPTION_HEADER_SIZE;
      // Option data over 1 KiB stands for "too large to keep" (the connection skips it).
      const payload = h.length > 1024 ? null : data.subarray(p, p + h.length);
      if (payload && payload.length < h.length) return;
      p += payload ? h.length : 0;
      step = hs.receiveOption(h.option, payload);
      for (const b of step.send) {
        if (b.length > 20 + 2 * 4096 + 64 && !(h.option === OPT.LIST)) fail(`reply of ${b.length} bytes to option ${h.option}`);
      }
      if (step.phase !== hs.phase) fail('step and state disagree on the phase');
    }
    if (step.phase === 'transmission' && !step.agreement) fail('transmission without an agreement');
    if (step.phase !== 'transmission' && step.phase !== 'closed') fail(`ended in phase ${step.phase}`);
  },
};

export const TARGETS: Target[] = [requestDecoder, optionDecoder, handshake];
