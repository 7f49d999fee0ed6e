// The fuzzers must catch a server that breaks the rules: a tiny in-test
// NBD server (vblk's own handshake table, an in-memory disk) with one
// deliberate bug at a time. Each bug must be found, with a short
// reproduction, by the model-based suite.

import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { CHUNK, CMD, NBD_ERR, OPTION_HEADER_SIZE, REPLY_FLAG_DONE, REQUEST_SIZE, IHAVEOPT } from '../src/protocol/nbd/constants.js';
import { decodeClientFlags, decodeOptionHeader } from '../src/protocol/nbd/handshake-codec.js';
import { Handshake, type Agreement, type ExportSummary } from '../src/protocol/nbd/handshake.js';
import { blockStatusSize, decodeRequest, encodeBlockStatus, encodeChunkHeader, encodeErrorPayload, encodeSimpleReply } from '../src/protocol/nbd/transmission-codec.js';
import { ByteQueue } from '../src/server/byte-queue.js';
import { runModelSuite } from '../src/fuzz/suite.js';
import { tempDir } from './helpers/server.js';

type Bug = 'drops-high-writes' | 'all-zero-status' | 'wrong-cookie' | 'accepts-past-end';
const SIZE = 1 << 20;

const EXPORT: ExportSummary = {
  name: '',
  description: '',
  size: SIZE,
  capabilities: { readOnly: false, trim: false, fastZero: false, cache: false, multiConn: true, blockSizes: { minimum: 1, preferred: 4096, maximum: 1 << 20 } },
};

function buggyServer(bug: Bug, socketPath: string): Promise<net.Server> {
  const disk = Buffer.alloc(SIZE);
  const server = net.createServer((sock) => {
    const input = new ByteQueue();
    const hs = new Handshake({ list: () => [EXPORT], find: (n) => (n === '' ? EXPORT : undefined) });
    let agreement: Agreement | null = null;
    let pendingWrite: { h: ReturnType<typeof decodeRequest> & object } | null = null;
    let option: { option: number; length: number } | null = null;
    sock.on('error', () => undefined);
    sock.write(hs.greeting());
    const reply = (cookie: bigint, errno: number, data?: Buffer): void => {
      if (agreement!.structuredReplies) {
        if (errno) {
          const b = Buffer.alloc(26);
          encodeErrorPayload(b, encodeChunkHeader(b, 0, REPLY_FLAG_DONE, CHUNK.ERROR, cookie, 6), errno, Buffer.alloc(0));
          sock.write(b);
        } else if (data) {
          const b = Buffer.alloc(28);
          encodeChunkHeader(b, 0, REPLY_FLAG_DONE, CHUNK.OFFSET_DATA, cookie, 8 + data.length);
          sock.write(b.subarray(0, 20));
          sock.write(Buffer.concat([Buffer.alloc(8), data]).fill(0, 0, 0));
        } else {
          const b = Buffer.alloc(16);
          encodeSimpleReply(b, 0, 0, cookie);
          sock.write(b);
        }
        return;
      }
      const b = Buffer.alloc(16);
      encodeSimpleReply(b, 0, errno, cookie);
      sock.write(data && !errno ? Buffer.concat([b, data]) : b);
    };
    const request = (h: NonNullable<ReturnType<typeof decodeRequest>>, payload?: Buffer): void => {
      const cookie = bug === 'wrong-cookie' && h.type === CMD.FLUSH ? h.cookie + 1n : h.cookie;
      const pastEnd = h.offset + h.length > SIZE;
      if (h.type === CMD.DISC) return void sock.end();
      if (h.flags & ~({ [CMD.READ]: agreement!.structuredReplies ? 5 : 1, [CMD.WRITE_ZEROES]: 3, [CMD.BLOCK_STATUS]: 9 }[h.type] ?? 1) || ![CMD.READ, CMD.WRITE, CMD.FLUSH, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS].includes(h.type as never)) return reply(cookie, NBD_ERR.EINVAL);
      if (h.type === CMD.BLOCK_STATUS && !agreement!.metaContexts.length) return reply(cookie, NBD_ERR.EINVAL);
      if (h.type === CMD.FLUSH) return reply(cookie, h.offset || h.length ? NBD_ERR.EINVAL : 0);
      if (h.type === CMD.READ && h.length > 1 << 20) return reply(cookie, NBD_ERR.EINVAL);
      if (pastEnd && (bug !== 'accepts-past-end' || h.type === CMD.BLOCK_STATUS)) return reply(cookie, h.type === CMD.WRITE || h.type === CMD.WRITE_ZEROES ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL);
      if (pastEnd) return reply(cookie, 0, h.type === CMD.READ ? Buffer.alloc(Math.min(h.length, 1 << 20)) : undefined);
      if (h.type === CMD.READ) {
        if (h.length > 1 << 20) return reply(cookie, NBD_ERR.EINVAL);
        if (agreement!.structuredReplies && h.length === 0) {
          const b = Buffer.alloc(20);
          encodeChunkHeader(b, 0, REPLY_FLAG_DONE, CHUNK.NONE, cookie, 0);
          return void sock.write(b);
        }
        const data = Buffer.from(disk.subarray(h.offset, h.offset + h.length));
        if (!agreement!.structuredReplies) return reply(cookie, 0, data);
        const b = Buffer.alloc(28);
        encodeChunkHeader(b, 0, REPLY_FLAG_DONE, CHUNK.OFFSET_DATA, cookie, 8 + data.length);
        b.writeBigUInt64BE(BigInt(h.offset), 20);
        return void sock.write(Buffer.concat([b, data]));
      }
      if (h.type === CMD.WRITE) {
        if (!(bug === 'drops-high-writes' && h.offset >= SIZE / 2)) payload!.copy(disk, h.offset);
        return reply(cookie, 0);
      }
      if (h.type === CMD.WRITE_ZEROES) {
        disk.fill(0, h.offset, h.offset + h.length);
        return reply(cookie, 0);
      }
      // BLOCK_STATUS: one extent to the end of the request per context.
      const zero = bug === 'all-zero-status' || disk.subarray(h.offset, h.offset + h.length).every((x) => x === 0);
      if (h.length === 0) return reply(cookie, NBD_ERR.EINVAL);
      agreement!.metaContexts.forEach((c, i) => {
        const size = blockStatusSize(1);
        const b = Buffer.alloc(20 + size);
        const flags = c.name === 'base:allocation' ? (zero ? 2 : 0) : 1;
        encodeBlockStatus(b, encodeChunkHeader(b, 0, i === agreement!.metaContexts.length - 1 ? REPLY_FLAG_DONE : 0, CHUNK.BLOCK_STATUS, cookie, size), c.id, [{ length: h.length, flags }]);
        sock.write(b);
      });
    };
    sock.on('data', (d: Buffer) => {
      input.push(d);
      for (;;) {
        if (!agreement) {
          if (hs.phase === 'client-flags') {
            const b = input.take(4);
            if (!b) return;
            const step = hs.receiveClientFlags(decodeClientFlags(b)!);
            if (step.phase === 'closed') return void sock.destroy();
            continue;
          }
          if (!option) {
            const b = input.take(OPTION_HEADER_SIZE);
            if (!b) return;
            const h = decodeOptionHeader(b)!;
            if (h.magic !== IHAVEOPT || h.length > 65536) return void sock.destroy();
            option = h;
          }
          const payload = input.take(option.length);
          if (!payload) return;
          const step = hs.receiveOption(option.option, payload);
          option = null;
          for (const b of step.send) sock.write(b);
          if (step.phase === 'closed') return void sock.end();
          if (step.agreement) agreement = step.agreement;
          continue;
        }
        if (pendingWrite) {
          const payload = input.take(pendingWrite.h.length);
          if (!payload) return;
          const h = pendingWrite.h;
          pendingWrite = null;
          request(h, Buffer.from(payload));
          continue;
        }
        const b = input.take(REQUEST_SIZE);
        if (!b) return;
        const h = decodeRequest(b)!;
        if (h.type === CMD.WRITE && h.length > 0) {
          if (h.length > 1 << 20) return void sock.destroy();
          pendingWrite = { h };
          continue;
        }
        request(h);
      }
    });
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

const EXPECTED: Record<Bug, RegExp> = {
  'drops-high-writes': /reads return what was written/,
  'all-zero-status': /extents agree with the data/,
  'wrong-cookie': /replies carry the cookie of a request in flight/,
  'accepts-past-end': /past the end/,
};

for (const bug of Object.keys(EXPECTED) as Bug[]) {
  t.test(`a server that ${bug.replace(/-/g, ' ')} is caught`, async (t) => {
    const socket = path.join(tempDir(t), 's.sock');
    const server = await buggyServer(bug, socket);
    t.teardown(() => server.close());
    const r = await runModelSuite({ endpoint: { path: socket }, exportName: '', destructive: true, timeoutMs: 2000 }, { seed: 1, numRuns: 300 });
    t.ok(r.finding, 'a finding');
    t.match(r.finding?.violation.rule, EXPECTED[bug], r.finding?.violation.message ?? 'no finding');
    t.ok(r.finding && r.finding.reproduction.length <= 4, `shrunk to ${r.finding?.reproduction.length} steps:\n${r.finding?.reproduction.join('\n')}`);
  });
}
