// ReplyWriter over a real UNIX socket: replies gathered in a tick leave
// in order, through writev on the descriptor when the stream holds
// nothing and through the stream for whatever the kernel did not take;
// every `written` callback runs once its reply is out; the backlog counts
// gathered bytes; flush() before end() loses nothing; and without a
// descriptor (as under TLS) the corked stream does the same job.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { BusyPoll } from '../src/server/busy-poll.js';
import { ReplyWriter } from '../src/server/nbd/reply-writer.js';
import { socketFd } from '../src/server/socket-fd.js';
import { requireNative } from '../src/io/native.js';

// The descriptor path is the addon's writev: CI builds the addon, so a missing one fails here.
requireNative('the reply writer tests');

interface Pair {
  server: net.Socket;
  client: net.Socket;
  close(): void;
}

async function socketPair(allowHalfOpen = false): Promise<Pair> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-reply-writer-'));
  const sock = path.join(dir, 's');
  const listener = net.createServer({ allowHalfOpen });
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  await new Promise<void>((resolve) => listener.listen(sock, resolve));
  const client = net.connect(sock);
  const server = await accepted;
  return {
    server,
    client,
    close: () => {
      server.destroy();
      client.destroy();
      listener.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Everything the client receives until `bytes` have come. */
function receive(client: net.Socket, bytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  return new Promise((resolve) => {
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= bytes) {
        client.off('data', onData);
        resolve(Buffer.concat(chunks));
      }
    };
    client.on('data', onData);
  });
}

/** Reply i: a 16-byte header naming i, and (for odd i) a payload of `size` bytes of i's pattern. */
function reply(i: number, size: number): [Buffer, Buffer | null] {
  const header = Buffer.alloc(16, 0);
  header.writeUInt32BE(i, 0);
  header.write('reply', 4);
  return [header, i % 2 ? Buffer.alloc(size, i & 0xff) : null];
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

for (const mode of ['descriptor', 'stream'] as const) {
  t.test(`${mode}: replies of one tick, far more than the socket holds, arrive whole and in order`, async (t) => {
    const pair = await socketPair();
    t.teardown(pair.close);
    const writer = new ReplyWriter(pair.server, new BusyPoll(0), mode === 'descriptor' ? socketFd(pair.server) : null);
    pair.client.pause();
    const count = 400;
    const size = 64 << 10;
    const expected: Buffer[] = [];
    const written: number[] = [];
    for (let i = 0; i < count; i++) {
      const [header, payload] = reply(i, size);
      expected.push(header, ...(payload ? [payload] : []));
      writer.send(header, payload, () => written.push(i));
    }
    const total = expected.reduce((n, b) => n + b.length, 0);
    t.equal(writer.backlog, mode === 'descriptor' ? total : pair.server.writableLength, 'the backlog counts what was gathered');
    await tick();
    if (mode === 'descriptor') t.ok(writer.backlog > 0 && writer.backlog < total, `the kernel took part (${total - writer.backlog} of ${total} bytes), the stream holds the rest`);
    else t.equal(writer.backlog, pair.server.writableLength, 'the backlog is the stream\'s');
    t.ok(written.length < count, 'replies still in the stream are not reported written');
    const arriving = receive(pair.client, total);
    pair.client.resume();
    const got = await arriving;
    t.equal(got.length, total, 'every byte arrived');
    t.ok(got.equals(Buffer.concat(expected)), 'in the order sent');
    await tick();
    t.same(written, Array.from({ length: count }, (_, i) => i), 'every callback ran once, in order');
    t.equal(writer.backlog, 0);
  });
}

t.test('descriptor: a tick whose replies all fit leaves in one writev, callbacks run before the next tick', async (t) => {
  const pair = await socketPair();
  t.teardown(pair.close);
  const writer = new ReplyWriter(pair.server, new BusyPoll(0), socketFd(pair.server));
  const written: number[] = [];
  const arriving = receive(pair.client, 3 * 16 + 4096);
  for (let i = 0; i < 3; i++) writer.send(...reply(i, 4096), () => written.push(i));
  t.same(written, [], 'nothing before the tick ends');
  await new Promise<void>((resolve) => process.nextTick(resolve));
  t.same(written, [0, 1, 2], 'all written at the end of the tick');
  t.equal(pair.server.writableLength, 0, 'and nothing went through the stream');
  const got = await arriving;
  t.equal(got.readUInt32BE(0), 0);
  t.equal(got.readUInt32BE(16), 1);
  t.equal(got.readUInt32BE(16 + 16 + 4096), 2);
});

t.test('descriptor: flush() before end() sends what the tick gathered', async (t) => {
  const pair = await socketPair();
  t.teardown(pair.close);
  const writer = new ReplyWriter(pair.server, new BusyPoll(0), socketFd(pair.server));
  const ended = new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    pair.client.on('data', (c: Buffer) => chunks.push(c));
    pair.client.on('end', () => resolve(Buffer.concat(chunks)));
  });
  writer.send(...reply(7, 100));
  writer.flush();
  pair.server.end();
  const got = await ended;
  t.equal(got.length, 116, 'the reply came before the end of the stream');
  t.equal(got.readUInt32BE(0), 7);
});

t.test('descriptor: a peer that has gone ends the connection with the write error, not a crash', async (t) => {
  // Half open, the server side stays writable after the client's end.
  const pair = await socketPair(true);
  t.teardown(pair.close);
  const writer = new ReplyWriter(pair.server, new BusyPoll(0), socketFd(pair.server));
  const closed = new Promise<Error | undefined>((resolve) => {
    let error: Error | undefined;
    pair.server.on('error', (err) => (error = err));
    pair.server.on('close', () => resolve(error));
  });
  pair.client.destroy();
  await new Promise((resolve) => setTimeout(resolve, 50));
  let written = false;
  writer.send(...reply(1, 4096), () => (written = true));
  const error = await closed;
  t.match(error, { code: /^(EPIPE|ECONNRESET)$/ }, 'the socket closed with the error');
  t.ok(written, 'the reply\'s callback ran all the same, as a failed stream write\'s does');
});
