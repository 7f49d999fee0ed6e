// At shutdown every export is flushed and closed even when another one's
// final flush or close fails; each failure is logged with its export, and
// `vblk serve` exits 1. In process with devices that fail on cue, then
// with the real thing: an export on a loop device whose backing file sits
// in a tmpfs too small for what is written, so the writes it acknowledged
// into the page cache cannot all be written back and its final flush
// fails with EIO. That part skips only where this host cannot use a loop
// device (not root, none free).

import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { DeviceError } from '../../src/device/errors.js';
import type { BlockDevice, Capabilities } from '../../src/device/types.js';
import { BusyPoll } from '../../src/server/busy-poll.js';
import { ExportRegistry } from '../../src/server/exports.js';
import { nbdFrontEnd } from '../../src/server/nbd/connection.js';
import { Server } from '../../src/server/server.js';
import { loopWithFailingWriteback } from '../helpers/mounts.js';
import { serve, tempDir } from '../helpers/server.js';
import { cannotMount } from '../helpers/system.js';
import { nbdsh } from '../helpers/tools.js';

/** Records flush and close; `fails` names the call that throws. Nothing else is ever called. */
class ShutdownDevice implements BlockDevice {
  readonly size = 1 << 20;
  readonly description = 'shutdown test device';
  readonly capabilities: Capabilities;
  readonly calls: string[] = [];

  constructor(
    private readonly fails: 'flush' | 'close' | null,
    readOnly = false,
  ) {
    this.capabilities = {
      readOnly,
      flush: true,
      trim: false,
      zero: false,
      fastZero: false,
      cache: false,
      extents: false,
      multiConn: true,
      blockSizes: { minimum: 1, preferred: 4096, maximum: 1 << 20 },
    };
  }

  private async call(name: 'flush' | 'close'): Promise<void> {
    this.calls.push(name);
    if (this.fails === name) throw new DeviceError('EIO', `${name} failed on cue`);
  }

  flush(): Promise<void> {
    return this.call('flush');
  }

  close(): Promise<void> {
    return this.call('close');
  }

  private unused(): never {
    throw new Error('not used by this test');
  }

  read = (): never => this.unused();
  write = (): never => this.unused();
  trim = (): never => this.unused();
  writeZeroes = (): never => this.unused();
  cache = (): never => this.unused();
  blockStatus = (): never => this.unused();
}

t.test('in process: a failing flush or close does not stop the other exports', async (t) => {
  const devices = {
    first: new ShutdownDevice(null),
    'flush-fails': new ShutdownDevice('flush'),
    'close-fails': new ShutdownDevice('close'),
    'read-only': new ShutdownDevice(null, true),
    last: new ShutdownDevice(null),
  };
  const registry = new ExportRegistry();
  for (const [name, device] of Object.entries(devices)) registry.add(name, device);
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  const server = new Server(registry, { shutdownTimeoutMs: 10_000 }, log);
  const nbd = nbdFrontEnd(registry, {
    handshakeTimeoutMs: 10_000,
    limits: { maxInflight: 64, maxInflightBytes: 128 << 20, maxBacklogBytes: 64 << 20, maxSkippedPayload: 128 << 20 },
    busyPoll: new BusyPoll(0),
  });
  const socket = path.join(tempDir(t), 'vblk.sock');
  await server.listen({ kind: 'unix', path: socket, mode: 0o600 }, nbd);

  await t.rejects(server.shutdown(), /2 exports failed/, 'shutdown reports the failures');
  t.same(devices.first.calls, ['flush', 'close'], 'the export before the failures is flushed and closed');
  t.same(devices['flush-fails'].calls, ['flush', 'close'], 'one whose flush failed is still closed');
  t.same(devices['close-fails'].calls, ['flush', 'close'], 'one whose close fails was flushed first');
  t.same(devices['read-only'].calls, ['close'], 'a read-only one is closed without a flush');
  t.same(devices.last.calls, ['flush', 'close'], 'the export after the failures is flushed and closed');

  const failed = lines.filter((l) => l.level === 50 && l.export !== undefined);
  t.same(
    failed.map((l) => [l.export, l.msg, (l.err as { message: string }).message]).sort(),
    [
      ['close-fails', 'export failed to close', 'close failed on cue'],
      ['flush-fails', 'export failed to flush', 'flush failed on cue'],
    ],
    'each failure is logged with its export and error',
  );
  const closed = lines.filter((l) => l.msg === 'export closed').map((l) => l.export);
  t.same(closed.sort(), ['first', 'last', 'read-only'], 'the others are logged as closed');
  t.notOk(fs.existsSync(socket), 'the socket file is removed all the same');
});

const noLoop = cannotMount();
if (noLoop) console.log(`# skipping the loop device test: ${noLoop}`);

t.test('vblk serve: an export whose final flush fails is logged, the others closed, exit 1', { skip: noLoop ?? false }, async (t) => {
  const loop = loopWithFailingWriteback(t);
  const good = path.join(tempDir(t), 'good.img');
  fs.writeFileSync(good, '');
  fs.truncateSync(good, 8 << 20);
  const srv = await serve(t, ['--export', `bad=${loop}`, '--export', `good=${good}`]);
  // 2 MiB of writes without a flush: they land in the page cache and are acknowledged.
  const write = 'for i in range(32): h.pwrite(b"\\x5a" * 65536, i * 65536)';
  for (const name of ['bad', 'good']) {
    const r = await nbdsh(srv.uri(name), write);
    t.equal(r.code, 0, `the writes to ${name} are acknowledged ${r.stderr}`);
  }
  const exit = await srv.stop('SIGTERM');
  t.same(exit, { code: 1, signal: null }, 'vblk serve exits 1');
  const logs = srv.logs();
  t.match(
    logs.filter((l) => l.level === 50 && l.export === 'bad'),
    [{ msg: 'export failed to flush', err: { message: /EIO/ } }],
    'the failed flush is logged with its export',
  );
  t.ok(logs.some((l) => l.msg === 'export closed' && l.export === 'good'), 'the other export is flushed and closed');
  t.ok(logs.some((l) => l.msg === 'shutdown failed'), 'and the shutdown is reported as failed');
});
