// bench/node-floor: the least a Node.js NBD server can cost, to tell
// what vblk's own code costs per request from what the runtime does.
// It negotiates fixed newstyle with NBD_OPT_GO only (every other option
// is refused), then answers READ, WRITE and FLUSH with simple replies
// from synchronous pread/pwrite/fdatasync in the 'data' handler, the
// socket corked meanwhile: no queue, no promise, no structured reply, no
// checks beyond the framing.
// It is not a server anyone should run; `node dist/bench/nbd.js
// --servers vblk,node-floor,...` runs it beside the others, and on a row
// where vblk costs about what it costs there is nothing left in vblk's
// code to take out.

import fs from 'node:fs';
import net from 'node:net';
import { CMD, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, GREETING_SIZE, IHAVEOPT, NBD_ERR, NBDMAGIC, OPT, OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE, OPTION_REPLY_MAGIC, REP, REQUEST_MAGIC, REQUEST_SIZE, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE, TF } from '../src/protocol/nbd/constants.js';

const HELP = `Usage: node dist/bench/node-floor.js SOCKET IMAGE

Serves IMAGE read-write over NBD on the UNIX socket SOCKET, with as little
code as NBD allows, as the Node.js baseline for bench/nbd.ts.

Example:
  node dist/bench/node-floor.js /tmp/floor.sock /tmp/disk.raw &
  nbdinfo 'nbd+unix:///?socket=/tmp/floor.sock'
`;

/** FLUSH is all it offers beyond reads and writes. */
const EXPORT_FLAGS = TF.HAS_FLAGS | TF.SEND_FLUSH;
const MAX_LENGTH = 32 << 20;

/** Bytes received and not yet framed: taken whole when a frame is complete. */
class Input {
  private chunks: Buffer[] = [];
  length = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  take(n: number): Buffer | null {
    if (this.length < n) return null;
    if (n === 0) return Buffer.alloc(0);
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0];
    const bytes = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.length -= n;
    return bytes;
  }
}

function optionReply(option: number, type: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(OPTION_REPLY_HEADER_SIZE);
  header.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(type >>> 0, 12);
  header.writeUInt32BE(payload.length, 16);
  return Buffer.concat([header, payload]);
}

function serve(socket: net.Socket, fd: number, size: number): void {
  const input = new Input();
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  /** An option or request header whose data has not all arrived yet. */
  let waiting: Buffer | null = null;
  const greeting = Buffer.alloc(GREETING_SIZE);
  greeting.writeBigUInt64BE(NBDMAGIC, 0);
  greeting.writeBigUInt64BE(IHAVEOPT, 8);
  greeting.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  socket.write(greeting);
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  // The replies to what one read brought leave in one writev.
  socket.on('data', (chunk: Buffer) => {
    input.push(chunk);
    socket.cork();
    try {
      answer();
    } finally {
      socket.uncork();
    }
  });

  function answer(): void {
    for (;;) {
      if (phase === 'flags') {
        if (!input.take(4)) return;
        phase = 'options';
      } else if (phase === 'options') {
        const header = waiting ?? input.take(OPTION_HEADER_SIZE);
        if (!header) return;
        const option = header.readUInt32BE(8);
        const length = header.readUInt32BE(12);
        if (header.readBigUInt64BE(0) !== IHAVEOPT || length > 65536) return void socket.destroy();
        waiting = header;
        if (input.take(length) === null) return;
        waiting = null;
        if (option === OPT.ABORT) return void socket.end(optionReply(option, REP.ACK, Buffer.alloc(0)));
        if (option !== OPT.GO) {
          socket.write(optionReply(option, REP.ERR_UNSUP, Buffer.alloc(0)));
          continue;
        }
        const info = Buffer.alloc(12);
        info.writeBigUInt64BE(BigInt(size), 2);
        info.writeUInt16BE(EXPORT_FLAGS, 10);
        socket.write(Buffer.concat([optionReply(option, REP.INFO, info), optionReply(option, REP.ACK, Buffer.alloc(0))]));
        phase = 'transmission';
      } else {
        const request = waiting ?? input.take(REQUEST_SIZE);
        if (!request) return;
        const type = request.readUInt16BE(6);
        const offset = Number(request.readBigUInt64BE(16));
        const length = request.readUInt32BE(24);
        if (request.readUInt32BE(0) !== REQUEST_MAGIC || (type === CMD.WRITE && length > MAX_LENGTH)) return void socket.destroy();
        const bad = length > MAX_LENGTH || offset + length > size;
        if (type === CMD.WRITE) {
          const data = input.take(length);
          waiting = data === null ? request : null;
          if (data === null) return;
          if (!bad) fs.writeSync(fd, data, 0, length, offset);
        }
        if (type === CMD.DISC) return void socket.end();
        const reply = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + (type === CMD.READ && !bad ? length : 0));
        reply.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
        reply.writeUInt32BE(bad ? NBD_ERR.EINVAL : 0, 4);
        request.copy(reply, 8, 8, 16);
        if (!bad && type === CMD.READ) fs.readSync(fd, reply, SIMPLE_REPLY_SIZE, length, offset);
        if (!bad && type === CMD.FLUSH) fs.fdatasyncSync(fd);
        socket.write(reply);
      }
    }
  }
}

function main(): void {
  const [socketPath, image] = process.argv.slice(2);
  if (!socketPath || !image || process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(HELP);
    process.exit(socketPath === '--help' || socketPath === '-h' ? 0 : 2);
  }
  const fd = fs.openSync(image, 'r+');
  const size = fs.fstatSync(fd).size;
  fs.rmSync(socketPath, { force: true });
  net.createServer((socket) => serve(socket, fd, size)).listen(socketPath);
  process.on('SIGTERM', () => process.exit(0));
}

main();
