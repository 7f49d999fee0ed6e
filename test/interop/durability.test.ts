// Durability: what vblk acknowledges with FUA or a FLUSH must be in the
// image, and must have been made stable before the reply went out.
//
// (a) Writes acknowledged with FUA, or followed by an acknowledged flush,
//     are all in the file after the server is killed with SIGKILL while
//     the client is still connected (so no clean-up path can help).
// (b) kill -9 cannot tell page cache from stable storage, so the server is
//     also run under strace: an NBD FLUSH must cause fdatasync/fsync on the
//     image before its reply; a FUA write must go to a descriptor opened
//     with O_DSYNC/O_SYNC (or use RWF_DSYNC, or be followed by a sync)
//     before its reply; and a plain write with no flush must cause no sync
//     at all (the negative control). strace sees system calls only, so this
//     runs for the engines that make them (sync, threads, posix-aio); the
//     io_uring engine's requests never appear as system calls and is
//     covered by (a) only.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, VBLK, vblk } from '../helpers/server.js';
import { requireTool, TOOL_ENV } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 16 * MiB;

/** Engines this host has, from `vblk info --engines`. */
async function engines(): Promise<string[]> {
  const r = await vblk(['info', '--engines']);
  if (r.code !== 0) throw new Error(`vblk info --engines failed: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .map((l) => /^(\S+)\s+yes\b/.exec(l)?.[1])
    .filter((e): e is string => !!e);
}

function emptyImage(file: string, size: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

function alive(proc: ChildProcess): boolean {
  return proc.exitCode === null && proc.signalCode === null;
}

function exitOf(proc: ChildProcess): Promise<void> {
  return alive(proc) ? new Promise((resolve) => proc.once('exit', () => resolve())) : Promise.resolve();
}

/**
 * An nbdsh client that runs SCRIPT, which prints a line when its work is
 * acknowledged and then waits on stdin, keeping the connection open.
 */
function startClient(t: Test, script: string): { proc: ChildProcess; output: () => string; waitFor: (re: RegExp, ms?: number) => Promise<void> } {
  requireTool('nbdsh');
  const proc = spawn('nbdsh', ['-c', script], { env: TOOL_ENV, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  proc.on('error', () => undefined);
  t.teardown(async () => {
    if (alive(proc)) {
      proc.kill('SIGKILL');
      await exitOf(proc);
    }
  });
  const waitFor = async (re: RegExp, ms = 20_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!re.test(out)) {
      if (!alive(proc)) throw new Error(`nbdsh exited before printing ${re}:\n${out}`);
      if (Date.now() > deadline) throw new Error(`nbdsh did not print ${re} in time:\n${out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { proc, output: () => out, waitFor };
}

/** Closes the client's stdin and waits for it to go (it may fail: its server is gone). */
async function finishClient(proc: ChildProcess): Promise<void> {
  proc.stdin!.end();
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exitOf(proc);
  clearTimeout(timer);
}

// --- (a) kill -9 ---------------------------------------------------------

interface AckedWrite {
  offset: number;
  length: number;
  byte: number;
  how: string;
}

const ACKED: AckedWrite[] = [
  { offset: 0, length: 4096, byte: 0x5a, how: 'FUA' },
  { offset: 1 * MiB + 3, length: 1000, byte: 0x5b, how: 'FUA, unaligned' },
  { offset: 2 * MiB, length: 1 * MiB, byte: 0x5c, how: 'FUA, 1 MiB' },
  { offset: 4 * MiB, length: 64 * KiB, byte: 0x6a, how: 'plain, then flush' },
  { offset: 5 * MiB + 17, length: 5000, byte: 0x6b, how: 'plain, unaligned, then flush' },
  { offset: 6 * MiB, length: 256 * KiB, byte: 0x00, how: 'write zeroes with FUA over data' },
  { offset: 6 * MiB + 256 * KiB, length: 4096, byte: 0x7c, how: 'data next to the FUA zeroes' },
];

const KILL_SCRIPT = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(URI)
FUA = nbd.CMD_FLAG_FUA
h.pwrite(b'\\x5a' * 4096, 0, FUA)
h.pwrite(b'\\x5b' * 1000, 1024 * 1024 + 3, FUA)
h.pwrite(b'\\x5c' * (1024 * 1024), 2 * 1024 * 1024, FUA)
h.pwrite(b'\\x6a' * (64 * 1024), 4 * 1024 * 1024)
h.pwrite(b'\\x6b' * 5000, 5 * 1024 * 1024 + 17)
h.flush()
h.pwrite(b'\\xee' * (256 * 1024 + 4096), 6 * 1024 * 1024)
h.flush()
h.zero(256 * 1024, 6 * 1024 * 1024, FUA)
h.pwrite(b'\\x7c' * 4096, 6 * 1024 * 1024 + 256 * 1024, FUA)
print('acked', flush=True)
sys.stdin.readline()
`;

t.test('(a) acknowledged FUA and flushed writes survive kill -9 of the server', async (t) => {
  const list = await engines();
  t.ok(list.length > 0, `engines on this host: ${list.join(', ')}`);
  for (const engine of ['default', ...list]) {
    await t.test(`engine ${engine}`, async (t) => {
      const file = emptyImage(path.join(tempDir(t), 'disk.img'), SIZE);
      const served = await serve(t, engine === 'default' ? [file] : [file, '--engine', engine]);
      const client = startClient(t, `URI = ${JSON.stringify(served.uri())}\n${KILL_SCRIPT}`);
      await client.waitFor(/^acked$/m);
      // Killed while the client is still connected: no disconnect or
      // shutdown path gets a chance to write anything out.
      served.proc.kill('SIGKILL');
      const exit = await served.exited;
      t.equal(exit.signal, 'SIGKILL', 'the server died of SIGKILL');
      await finishClient(client.proc);

      const fd = fs.openSync(file, 'r');
      try {
        for (const w of ACKED) {
          const buf = Buffer.alloc(w.length);
          fs.readSync(fd, buf, 0, w.length, w.offset);
          const bad = buf.findIndex((b) => b !== w.byte);
          t.equal(bad, -1, `${w.how}: ${w.length} bytes of 0x${w.byte.toString(16)} at ${w.offset} are in the file${bad >= 0 ? ` (not at ${w.offset + bad})` : ''}`);
        }
      } finally {
        fs.closeSync(fd);
      }
      t.equal(fs.statSync(file).size, SIZE, 'the file keeps its size');
    });
  }
});

// --- (b) strace ----------------------------------------------------------

interface Call {
  name: string;
  pid: number;
  args: string;
  ret: number | null;
  /** Index of the line where the call started and where it returned. */
  start: number;
  end: number;
}

/** Reads an `strace -f -o` file into calls, joining `<unfinished ...>` with `<... resumed>`. */
function parseStrace(text: string): Call[] {
  const calls: Call[] = [];
  const pending = new Map<string, Call>();
  const lines = text.split('\n');
  const retOf = (s: string): number | null => {
    const m = /\)\s+=\s+(-?\d+|0x[0-9a-f]+)/.exec(s);
    return m ? Number(m[1]) : null;
  };
  lines.forEach((line, i) => {
    let m = /^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$/.exec(line);
    if (m) {
      const key = `${m[1]}:${m[2]}`;
      const call = pending.get(key);
      if (call) {
        pending.delete(key);
        const rest = m[3];
        const close = rest.lastIndexOf(') ');
        call.args += close >= 0 ? rest.slice(0, close) : rest;
        call.ret = retOf(rest);
        call.end = i;
      }
      return;
    }
    m = /^(\d+)\s+(\w+)\((.*)$/.exec(line);
    if (!m) return;
    const [, pid, name, rest] = m;
    if (rest.endsWith('<unfinished ...>')) {
      const call: Call = { name, pid: Number(pid), args: rest.slice(0, -'<unfinished ...>'.length).trimEnd(), ret: null, start: i, end: -1 };
      pending.set(`${pid}:${name}`, call);
      calls.push(call);
      return;
    }
    const eq = rest.lastIndexOf(') = ');
    const eqAlt = eq >= 0 ? eq : rest.lastIndexOf(')');
    calls.push({ name, pid: Number(pid), args: eqAlt >= 0 ? rest.slice(0, eqAlt) : rest, ret: retOf(rest), start: i, end: i });
  });
  return calls;
}

function fdOf(call: Call): number {
  return Number(/^(-?\d+)/.exec(call.args)?.[1] ?? -1);
}

interface Analysis {
  opens: { fd: number; flags: string; at: number }[];
  /** Flags of the image descriptor FD as of line I, or null if FD was not an image descriptor then. */
  imageFlags(fd: number, i: number): string | null;
  /** File writes that cover OFFSET. */
  writesAt(offset: number): Call[];
  /** fdatasync/fsync calls on an image descriptor that succeeded. */
  syncs: Call[];
  /** Writes to the client's socket (replies), in order. */
  replies: Call[];
}

function analyse(calls: Call[], image: string): Analysis {
  const events: { kind: 'open' | 'close'; fd: number; flags: string; at: number }[] = [];
  for (const c of calls) {
    if ((c.name === 'openat' || c.name === 'open') && c.args.includes(JSON.stringify(image)) && c.ret !== null && c.ret >= 0) {
      events.push({ kind: 'open', fd: c.ret, flags: /(O_[A-Z_|]+)/.exec(c.args.slice(c.args.indexOf(JSON.stringify(image))))?.[1] ?? '', at: c.end });
    }
    if (c.name === 'close' && c.ret === 0) events.push({ kind: 'close', fd: fdOf(c), flags: '', at: c.end });
  }
  events.sort((a, b) => a.at - b.at);
  const imageFlags = (fd: number, i: number): string | null => {
    let flags: string | null = null;
    for (const e of events) {
      if (e.at > i) break;
      if (e.fd === fd) flags = e.kind === 'open' ? e.flags : null;
    }
    return flags;
  };
  // Client sockets: what accept returned, and their duplicates (with --threads a connection moves to another loop on one).
  const conns = new Set<number>();
  for (const c of [...calls].sort((a, b) => a.start - b.start)) {
    if (c.ret === null || c.ret < 0) continue;
    if (c.name === 'accept4' || c.name === 'accept') conns.add(c.ret);
    if (c.name === 'fcntl' && c.args.includes('F_DUPFD') && conns.has(fdOf(c))) conns.add(c.ret);
  }
  const fileWrites = calls.filter((c) => ['pwrite64', 'pwritev', 'pwritev2'].includes(c.name) && imageFlags(fdOf(c), c.start) !== null);
  const offsetOf = (c: Call): number => {
    const m = c.name === 'pwritev2' ? /,\s*(\d+),\s*[\w|]+\s*$/.exec(c.args) : /,\s*(\d+)\s*$/.exec(c.args);
    return m ? Number(m[1]) : -1;
  };
  return {
    opens: events.filter((e) => e.kind === 'open').map(({ fd, flags, at }) => ({ fd, flags, at })),
    imageFlags,
    writesAt: (offset) =>
      fileWrites.filter((c) => {
        const o = offsetOf(c);
        return o >= 0 && c.ret !== null && c.ret > 0 && o <= offset && offset < o + c.ret;
      }),
    syncs: calls.filter((c) => (c.name === 'fdatasync' || c.name === 'fsync') && c.ret === 0 && imageFlags(fdOf(c), c.start) !== null),
    replies: calls.filter((c) => ['write', 'writev', 'sendmsg', 'sendto'].includes(c.name) && conns.has(fdOf(c))),
  };
}

const TRACE_SCRIPT = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(URI)
h.pwrite(b'\\x01' * 4096, 1 * 1024 * 1024)                     # W1: plain
h.flush()                                                    # F
h.pwrite(b'\\x02' * 4096, 2 * 1024 * 1024, nbd.CMD_FLAG_FUA)  # W2: FUA
h.pwrite(b'\\x03' * 4096, 3 * 1024 * 1024)                     # W3: plain, never flushed
print('acked', flush=True)
sys.stdin.readline()
`;

/** Runs `vblk serve` under strace, drives TRACE_SCRIPT, kills the server, returns the trace. */
async function traceRun(t: Test, engine: string): Promise<{ trace: string; image: string }> {
  requireTool('strace');
  const dir = tempDir(t, 'vblk-st-');
  const image = emptyImage(path.join(dir, 'disk.img'), SIZE);
  const socket = path.join(dir, 's.sock');
  const traceFile = path.join(dir, 'trace');
  const syscalls = 'openat,open,close,accept,accept4,fcntl,pwrite64,pwritev,pwritev2,write,writev,sendmsg,sendto,fdatasync,fsync';
  const strace = spawn(
    'strace',
    ['-f', '-s', '0', '-e', `trace=${syscalls}`, '-o', traceFile, process.execPath, VBLK, 'serve', image, '--socket', socket, '--engine', engine],
    { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  strace.stdout!.resume();
  strace.stderr!.on('data', (d) => (stderr += d));
  let serverPid: number | null = null;
  const stop = async (): Promise<void> => {
    if (serverPid !== null) {
      try {
        process.kill(serverPid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (alive(strace)) {
      const timer = setTimeout(() => strace.kill('SIGKILL'), 10_000);
      await exitOf(strace);
      clearTimeout(timer);
    }
  };
  t.teardown(async () => {
    if (serverPid === null && alive(strace)) {
      // The server never reported its pid: take strace's child, then stop.
      serverPid = childOf(strace.pid!);
    }
    await stop();
    if (alive(strace)) strace.kill('SIGKILL');
  });

  const deadline = Date.now() + 30_000;
  while (!/"msg":"ready"/.test(stderr)) {
    if (!alive(strace) || Date.now() > deadline) {
      serverPid = childOf(strace.pid!);
      await stop();
      throw new Error(`vblk serve under strace did not become ready:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  serverPid = Number(/"pid":(\d+)/.exec(stderr)?.[1] ?? childOf(strace.pid!));
  t.ok(serverPid > 0, `the server runs as pid ${serverPid} under strace`);

  const client = startClient(t, `URI = ${JSON.stringify(`nbd+unix:///?socket=${socket}`)}\n${TRACE_SCRIPT}`);
  await client.waitFor(/^acked$/m);
  // Kill the server with the client still connected, so no disconnect or
  // shutdown path adds a sync, and let strace write out the trace.
  await stop();
  await finishClient(client.proc);
  return { trace: fs.readFileSync(traceFile, 'utf8'), image };
}

/** The pid of the first child of PID, or null. */
function childOf(pid: number): number | null {
  try {
    const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/);
    return children[0] ? Number(children[0]) : null;
  } catch {
    return null;
  }
}

interface Verdict {
  /** What the checks found, for the messages. */
  notes: string[];
  opened: boolean;
  oneWriteEach: boolean;
  inOrder: boolean;
  repliesAfterWrites: boolean;
  plainW1NoSync: boolean;
  flushSynced: boolean;
  flushReplyAfterSync: boolean;
  fuaStable: boolean;
  plainW3NoSync: boolean;
  plainNotDsync: boolean;
}

/** Judges a trace of TRACE_SCRIPT: W1 plain at 1 MiB, FLUSH, W2 FUA at 2 MiB, W3 plain at 3 MiB. */
function judge(trace: string, image: string): Verdict {
  const a = analyse(parseStrace(trace), image);
  const v: Verdict = {
    notes: [],
    opened: a.opens.length > 0,
    oneWriteEach: false,
    inOrder: false,
    repliesAfterWrites: false,
    plainW1NoSync: false,
    flushSynced: false,
    flushReplyAfterSync: false,
    fuaStable: false,
    plainW3NoSync: false,
    plainNotDsync: false,
  };
  const flags = (c: Call): string => a.imageFlags(fdOf(c), c.start) ?? '';
  const isSync = (f: string): boolean => /\bO_(D)?SYNC\b/.test(f);
  const replyAfter = (i: number): Call | undefined => a.replies.find((r) => r.start > i);
  const syncsBetween = (from: number, to: number): Call[] => a.syncs.filter((s) => s.end > from && s.end < to);

  const [w1, w2, w3] = [a.writesAt(1 * MiB), a.writesAt(2 * MiB), a.writesAt(3 * MiB)];
  v.oneWriteEach = w1.length === 1 && w2.length === 1 && w3.length === 1;
  if (!v.oneWriteEach) {
    v.notes.push(`pwrites found at 1/2/3 MiB: ${w1.length}/${w2.length}/${w3.length}`);
    return v;
  }
  const [W1, W2, W3] = [w1[0], w2[0], w3[0]];
  v.inOrder = W1.end < W2.start && W2.end < W3.start;
  // Every write returns before the reply that acknowledges it.
  v.repliesAfterWrites = [W1, W2, W3].every((w) => {
    const r = replyAfter(w.start);
    return r !== undefined && r.start > w.end;
  });
  const r1 = replyAfter(W1.end);
  const r2 = replyAfter(W2.end);
  if (!r1 || !r2) {
    v.notes.push('no reply seen after W1 or W2');
    return v;
  }
  // W1 is plain: no sync between its write and its reply.
  v.plainW1NoSync = syncsBetween(W1.start, r1.start).length === 0;
  // FLUSH: between W1's reply and W2, a sync on the image, then the flush's reply.
  const flushSyncs = syncsBetween(r1.start, W2.start);
  v.flushSynced = flushSyncs.length > 0;
  if (v.flushSynced) {
    const sync = flushSyncs[0];
    v.notes.push(`FLUSH: ${sync.name}(${fdOf(sync)})`);
    const rf = replyAfter(sync.end);
    v.flushReplyAfterSync = rf !== undefined && rf.start < W2.start;
  }
  // FUA: an O_DSYNC/O_SYNC descriptor, RWF_DSYNC/RWF_SYNC, or a sync before the reply.
  const viaFlags = isSync(flags(W2));
  const viaRwf = W2.name === 'pwritev2' && /RWF_D?SYNC/.test(W2.args);
  const viaSync = syncsBetween(W2.end, r2.start).length > 0;
  v.fuaStable = viaFlags || viaRwf || viaSync;
  v.notes.push(`FUA: ${W2.name} on fd ${fdOf(W2)} (${flags(W2)})${viaRwf ? ' with RWF_DSYNC' : ''}${viaSync ? ', then a sync' : ''}`);
  // W3 is plain and never flushed: no sync from it to the end of the trace.
  v.plainW3NoSync = syncsBetween(W3.start, Number.MAX_SAFE_INTEGER).length === 0;
  v.plainNotDsync = !isSync(flags(W1)) && !isSync(flags(W3));
  v.notes.push(`plain: ${W1.name} on fd ${fdOf(W1)} (${flags(W1)}), ${W3.name} on fd ${fdOf(W3)} (${flags(W3)})`);
  return v;
}

/** The lines of TRACE that matter, shown when a check fails. */
function excerpt(trace: string, image: string): { trace: string } {
  return { trace: trace.split('\n').filter((l) => /pwrite|sync|accept|O_DSYNC|O_SYNC/.test(l) || l.includes(image)).join('\n') };
}

const traces = new Map<string, { trace: string; image: string }>();

t.test('(b) under strace: FLUSH and FUA reach stable storage before the reply; plain writes do not sync', async (t) => {
  const list = (await engines()).filter((e) => ['sync', 'threads', 'posix-aio'].includes(e));
  t.ok(list.includes('sync') && list.includes('threads'), `engines that strace can see: ${list.join(', ')}`);
  for (const engine of list) {
    await t.test(`engine ${engine}`, async (t) => {
      const run = await traceRun(t, engine);
      traces.set(engine, run);
      const v = judge(run.trace, run.image);
      const where = { ...excerpt(run.trace, run.image), notes: v.notes };
      t.ok(v.opened, 'strace saw the image being opened', where);
      t.ok(v.oneWriteEach, 'W1, W2 and W3 each reached the image in one pwrite', where);
      t.ok(v.inOrder, 'the writes happen in the order sent', where);
      t.ok(v.repliesAfterWrites, 'every write returns before its reply goes out', where);
      t.ok(v.flushSynced, 'FLUSH: fdatasync/fsync on an image descriptor', where);
      t.ok(v.flushReplyAfterSync, 'FLUSH: the reply goes out after the sync returned', where);
      t.ok(v.fuaStable, `FUA write is stable before its reply: ${v.notes.find((n) => n.startsWith('FUA')) ?? ''}`, where);
      t.ok(v.plainW1NoSync, 'negative control: plain W1 causes no sync before its reply', where);
      t.ok(v.plainW3NoSync, 'negative control: plain W3 with no flush causes no fdatasync/fsync at all', where);
      t.ok(v.plainNotDsync, 'negative control: plain writes do not go through an O_DSYNC descriptor', where);
    });
  }
});

t.test('(b) the trace checks reject traces of a server that does not sync', async (t) => {
  const sample = traces.get('sync');
  t.ok(sample, 'a trace from the sync engine is at hand');
  if (!sample) return;
  const { trace, image } = sample;
  t.ok(Object.values(judge(trace, image)).every((x) => x === true || Array.isArray(x)), 'the real trace passes');
  const lines = trace.split('\n');
  const isSyncLine = (l: string): boolean => /^\d+\s+(<\.\.\. )?(fdatasync|fsync)\b/.test(l);

  // No fdatasync at all: FLUSH fails.
  const noSync = lines.filter((l) => !isSyncLine(l)).join('\n');
  t.equal(judge(noSync, image).flushSynced, false, 'without the fdatasync line, FLUSH is judged not synced');

  // The flush reply sent before the sync.
  const si = lines.findIndex(isSyncLine);
  const swapped = [...lines];
  const ri = swapped.findIndex((l, i) => i > si && /^\d+\s+(write|writev|sendmsg)\((\d+)/.test(l) && !/^\d+\s+write\((1|2),/.test(l));
  [swapped[si], swapped[ri]] = [swapped[ri], swapped[si]];
  t.equal(judge(swapped.join('\n'), image).flushReplyAfterSync, false, 'a flush reply before the sync is caught');

  // No O_DSYNC descriptor: FUA fails.
  const noDsync = trace.replace(/\|O_DSYNC|O_DSYNC\|/g, '');
  t.equal(judge(noDsync, image).fuaStable, false, 'a FUA write on a plain descriptor with no sync is caught');

  // A sync after the plain W3: the negative control fires.
  const w3 = lines.findIndex((l) => /pwrite64\((\d+), .*, 3145728\)/.test(l));
  const fd = /pwrite64\((\d+)/.exec(lines[w3] ?? '')?.[1];
  const pid = /^(\d+)/.exec(lines[w3] ?? '')?.[1];
  const extra = [...lines.slice(0, w3 + 1), `${pid} fdatasync(${fd}) = 0`, ...lines.slice(w3 + 1)].join('\n');
  t.equal(judge(extra, image).plainW3NoSync, false, 'a sync after a plain write is caught');
});
