// The reply builders in both header forms: structured chunks (20-byte
// headers) and extended chunks (32-byte headers echoing the request's
// offset), BLOCK_STATUS cut below 2^32 and BLOCK_STATUS_EXT carrying
// 64-bit lengths whole.

import t from 'tap';
import { CHUNK, CHUNK_HEADER_SIZE, EXTENDED_REPLY_SIZE, REPLY_FLAG_DONE, STATE_HOLE, STATE_ZERO } from '../src/protocol/nbd/constants.js';
import { isMalformed } from '../src/protocol/nbd/handshake-codec.js';
import { blockStatusChunks, errorChunk, noneChunk, readChunks, type Frame, type ReplyTo } from '../src/protocol/nbd/replies.js';
import { decodeChunkPayload, decodeReplyHeader } from '../src/protocol/nbd/transmission-codec.js';

const GiB = 2 ** 30;
const compactTo: ReplyTo = { cookie: 7n, offset: 3 * GiB, extended: false };
const extendedTo: ReplyTo = { ...compactTo, extended: true };
const contexts = [
  { id: 1, name: 'base:allocation' },
  { id: 2, name: 'qemu:allocation-depth' },
];

function parse([header, data]: Frame) {
  const h = decodeReplyHeader(header)!;
  if (h.kind !== 'chunk' && h.kind !== 'extended') throw new Error(`not a chunk: ${h.kind}`);
  const size = h.kind === 'chunk' ? CHUNK_HEADER_SIZE : EXTENDED_REPLY_SIZE;
  const payload = Buffer.concat([header.subarray(size), data ?? Buffer.alloc(0)]);
  if (payload.length !== h.length) throw new Error(`length field ${h.length}, payload ${payload.length}`);
  const p = decodeChunkPayload(h.type, payload);
  if (isMalformed(p)) throw new Error(p.malformed);
  return { h, p };
}

t.test('a 6 GiB hole: one BLOCK_STATUS_EXT descriptor, or a compact one cut below 2^32', async (t) => {
  const extents = [{ length: 6 * GiB, hole: true, zero: true }];
  const ext = blockStatusChunks(extendedTo, contexts, extents).map(parse);
  t.same(ext.map(({ h }) => [h.kind, h.type, h.flags & REPLY_FLAG_DONE]), [['extended', CHUNK.BLOCK_STATUS_EXT, 0], ['extended', CHUNK.BLOCK_STATUS_EXT, 1]]);
  t.same(ext[0].p, { type: CHUNK.BLOCK_STATUS_EXT, contextId: 1, extents: [{ length: 6 * GiB, flags: STATE_HOLE | STATE_ZERO }] });
  t.same(ext.map(({ h }) => (h as { offset: number }).offset), [3 * GiB, 3 * GiB], 'the offset echoed');

  const compact = blockStatusChunks(compactTo, contexts, extents).map(parse);
  t.same(compact.map(({ h }) => [h.kind, h.type]), [['chunk', CHUNK.BLOCK_STATUS], ['chunk', CHUNK.BLOCK_STATUS]]);
  t.same(compact[0].p, { type: CHUNK.BLOCK_STATUS, contextId: 1, extents: [{ length: 2 ** 32 - 512, flags: STATE_HOLE | STATE_ZERO }] }, 'cut, not wrapped');

  const many = [
    { length: 3 * GiB, hole: false, zero: false },
    { length: 2 * GiB, hole: true, zero: true },
    { length: GiB, hole: false, zero: false },
  ];
  const cut = parse(blockStatusChunks(compactTo, [contexts[0]], many)[0]).p as { extents: { length: number }[] };
  t.same(cut.extents.map((e) => e.length), [3 * GiB, GiB - 512], 'a list is cut where its total would reach 2^32');
  const whole = parse(blockStatusChunks(extendedTo, [contexts[0]], many)[0]).p as { extents: { length: number }[] };
  t.same(whole.extents.map((e) => e.length), [3 * GiB, 2 * GiB, GiB], 'and kept whole in BLOCK_STATUS_EXT');
  const small = parse(blockStatusChunks(compactTo, [contexts[0]], [{ length: 4096, hole: false, zero: false }])[0]).p;
  t.same(small, { type: CHUNK.BLOCK_STATUS, contextId: 1, extents: [{ length: 4096, flags: 0 }] }, 'small answers unchanged');
});

t.test('error, none and read chunks in both forms', async (t) => {
  for (const to of [compactTo, extendedTo]) {
    const kind = to.extended ? 'extended' : 'chunk';
    const e = parse(errorChunk(to, 22, 'bad'));
    t.same([e.h.kind, e.h.type, e.h.flags, e.h.cookie], [kind, CHUNK.ERROR, REPLY_FLAG_DONE, 7n], `${kind} error`);
    t.same(e.p, { type: CHUNK.ERROR, error: 22, message: 'bad' });
    const n = parse(noneChunk(to));
    t.same([n.h.kind, n.h.type, n.h.length], [kind, CHUNK.NONE, 0], `${kind} none`);
    const data = Buffer.from('hello');
    const r = readChunks(to, [{ offset: 3 * GiB + 512, length: 5, data }, { offset: 3 * GiB + 517, length: 100, data: null }]).map(parse);
    t.same(r.map(({ h }) => [h.kind, h.type, h.flags]), [[kind, CHUNK.OFFSET_DATA, 0], [kind, CHUNK.OFFSET_HOLE, REPLY_FLAG_DONE]]);
    t.same(r[0].p, { type: CHUNK.OFFSET_DATA, offset: 3 * GiB + 512, data }, 'the payload keeps the data offset');
    if (to.extended) t.same(r.map(({ h }) => (h as { offset: number }).offset), [3 * GiB, 3 * GiB], 'the header echoes the request offset');
  }
  const far = parse(noneChunk({ cookie: 1n, offset: 2n ** 64n - 1n, extended: true }));
  t.equal((far.h as { offset: number }).offset, 2 ** 64, 'an exact bigint offset goes out (decoded rounded here)');
});
