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
import { CMD, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO, NBD_ERR, OPT, OPTION_HEADER_SIZE, REP, REQUEST_MAGIC, REQUEST_SIZE, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE, TF } from '../src/protocol/nbd/constants.js';
import { decodeOptionHeader, encodeGreeting, encodeInfoReply, encodeOptionReply, type OptionHeader } from '../src/protocol/nbd/handshake-codec.js';
import { ByteQueue } from '../src/server/byte-queue.js';

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

function serve(socket: net.Socket, fd: number, size: number): void {
  const input = new ByteQueue();
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  /** An option or a request whose data has not all arrived yet. */
  let option: OptionHeader | null = null;
  let request: Buffer | null = null;
  socket.write(encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
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
        if (!option) {
          const bytes = input.take(OPTION_HEADER_SIZE);
          if (!bytes) return;
          option = decodeOptionHeader(bytes)!;
          if (option.magic !== IHAVEOPT || option.length > 65536) return void socket.destroy();
        }
        if (input.take(option.length) === null) return;
        const code = option.option;
        option = null;
        if (code === OPT.ABORT) return void socket.end(encodeOptionReply(code, REP.ACK));
        if (code !== OPT.GO) {
          socket.write(encodeOptionReply(code, REP.ERR_UNSUP));
          continue;
        }
        const info = encodeOptionReply(code, REP.INFO, encodeInfoReply({ type: INFO.EXPORT, size, flags: EXPORT_FLAGS }));
        socket.write(Buffer.concat([info, encodeOptionReply(code, REP.ACK)]));
        phase = 'transmission';
      } else {
        request ??= input.take(REQUEST_SIZE);
        if (!request) return;
        const type = request.readUInt16BE(6);
        const offset = Number(request.readBigUInt64BE(16));
        const length = request.readUInt32BE(24);
        if (request.readUInt32BE(0) !== REQUEST_MAGIC || (type === CMD.WRITE && length > MAX_LENGTH)) return void socket.destroy();
        const bad = length > MAX_LENGTH || offset + length > size;
        if (type === CMD.WRITE) {
          const data = input.take(length);
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
        request = null;
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
