// vblk serve: open the images, listen, print one NBD URI per export and
// listener on stdout, serve until SIGINT or SIGTERM, then shut down in
// order (see server/server.ts) and exit 0, or 1 if an export failed to
// flush or close. A second signal exits at once.
// Where it listens: --socket and --listen, or the listening sockets a
// service manager passed (socket activation, server/activation.ts), or,
// with --stdio, no listener at all: the one connection on stdin/stdout
// (server/stdio.ts), after which vblk shuts down as on a signal.

import fs from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { RawImage } from '../device/images/raw.js';
import { ENGINE_NAMES } from '../io/engine.js';
import { chooseEngine } from '../io/probe.js';
import { keepLargeAllocationsInHeap } from '../sys/syscalls.js';
import { BusyPoll } from '../server/busy-poll.js';
import { ExportRegistry } from '../server/exports.js';
import { inheritedSockets } from '../server/activation.js';
import { parseListenAddress, type Endpoint } from '../server/listeners.js';
import { stdioConnection } from '../server/stdio.js';
import { nbdFrontEnd } from '../server/nbd/connection.js';
import { ConnectionLoops, MAX_LOOPS } from '../server/nbd/loops.js';
import type { LoopExport, LoopInit } from '../server/nbd/loop-messages.js';
import { vhostUserFrontEnd } from '../server/vhost-user/front-end.js';
import { Server } from '../server/server.js';
import { ControlSocket } from '../server/control/control-socket.js';
import { numberOption, usage, UsageError, type Command } from './command.js';
import { FILTER_HELP, filterText, parseFilter } from './filters.js';
import { memorySize, openExports, type ExportSpec } from './open-exports.js';
import { createLogger } from './logger.js';
import { writePidFile } from './pid-file.js';
import { parseSize } from './size.js';
import { TLS_EXAMPLES, TLS_HELP, tlsFromOptions, type TlsValues } from './tls-options.js';
import { checkRbdName, RBD_NAME_HELP, RBD_SERVE_HELP, RBD_SERVE_OPTIONS, rbdServeOptions, type RbdServeValues } from './ceph-options.js';

interface ServeValues extends TlsValues, RbdServeValues {
  socket?: string;
  'vhost-user-blk'?: string[];
  'num-queues'?: string;
  'socket-mode'?: string;
  listen?: string[];
  export?: string[];
  description?: string[];
  'read-only'?: boolean;
  'force-share'?: boolean;
  create?: string;
  'handshake-timeout'?: string;
  'shutdown-timeout'?: string;
  'max-inflight'?: string;
  'poll-us'?: string;
  'send-file'?: boolean;
  threads?: string;
  engine?: string;
  direct?: boolean;
  'log-level'?: string;
  control?: string;
  stdio?: boolean;
  'pid-file'?: string;
}

const HELP = `Usage: vblk serve [FILE] [options]

Serve FILE over NBD (and vhost-user-blk) as the default export (the empty name), together with
any named exports. Images may be raw or qcow2; a qcow2 image's backing
chain is opened read-only below it. FILE may also be memory:SIZE, a disk
in memory (sparse, gone when vblk exits; each export that names one gets
its own), or an RBD image in a Ceph cluster (see RBD images below). Prints one NBD URI per export and listener on stdout
once it is accepting connections (nothing with --stdio or under socket
activation, where the URIs are only logged); logs go to
stderr as JSON lines. SIGINT or SIGTERM finishes the requests in flight,
flushes, removes the sockets it made and exits 0. If an export's final flush or close fails, that is
logged, the other exports are still flushed and closed, and the exit
status is 1.

Options:
  --socket PATH            listen on a UNIX socket at PATH
  --stdio                  serve one NBD connection on stdin/stdout, which
                           must be one socket (as libnbd's
                           nbd_connect_command, inetd or systemd's
                           Accept=yes with StandardInput=socket give), then
                           shut down and exit 0 when the client goes;
                           nothing but NBD goes to stdout
  --pid-file FILE          write vblk's process id to FILE once it is
                           accepting connections; removed at exit
  --vhost-user-blk [NAME=]PATH
                           also serve export NAME (default: the default
                           export) to a VMM as a vhost-user-blk device on the
                           UNIX socket PATH: the guest's virtio-blk queues
                           are read in its shared memory (repeatable)
  --num-queues N           virtqueues each vhost-user-blk device offers
                           (default: one per core, at most 8)
  --socket-mode MODE       permissions of the socket file, octal (default 0600)
  --listen [HOST:]PORT     also listen on TCP; HOST defaults to 127.0.0.1,
                           [::1]:PORT for IPv6 (repeatable)
  --export NAME=FILE[:ro]  add the export NAME served from FILE; ':ro' makes
                           it read-only (repeatable)
  --description [NAME=]TEXT
                           the description clients see for export NAME (or
                           the default export) in NBD_OPT_LIST and INFO;
                           none by default (repeatable)
  --filter NAME[:key=value,...]
                           put a lab filter between the clients and the
                           image (see Filters below)
  --control PATH           also listen for lab commands (vblk ctl) on a UNIX
                           socket at PATH, mode 0600: exports, stats, filter
                           settings, power cuts, journal marks, dirty
                           bitmaps, live snapshots, shutdown
${TLS_HELP}${RBD_SERVE_HELP}  --read-only              serve every export read-only
  -U, --force-share        do not lock read-only images, so they can be
                           served while QEMU writes them (like qemu-nbd -U);
                           without it vblk locks images as QEMU does and
                           refuses one another process is writing
  --create SIZE            create FILE as a sparse raw image of SIZE first,
                           if it does not exist (SIZE like 1G, 512M, 4096)
  --handshake-timeout SEC  time a client has to choose an export (default 10)
  --shutdown-timeout SEC   time to finish requests in flight at shutdown
                           before connections are cut (default 30)
  --max-inflight N         requests in flight per connection before vblk
                           stops reading from it (default 64)
  --poll-us N              with no request in flight, keep the event loop
                           polling for at most N microseconds after socket
                           activity or a vhost-user completion before it
                           sleeps: a client's next request (or a guest's
                           next kick) is then picked up without waking a
                           halted CPU. The window adapts: it grows while
                           clients come back within N µs and shrinks to
                           nothing when they do not, so an idle or lightly
                           loaded server does not poll (default 50; 0 turns
                           it off, for hosts where an idle core must stay
                           idle)
  --send-file              send large reads (64 KiB and more) of a raw image
                           whose data is in the page cache to UNIX-socket
                           clients from the file itself (sendfile), not
                           copied: less CPU for vblk, more for the client,
                           whose kernel pays more to receive the file's
                           pages than the copy cost (1 MiB reads here:
                           vblk 600 -> 440 µs each, fio 270 -> 640 µs, and
                           a fifth fewer MB/s), so it is off by default;
                           for clients with CPU to spare
  --threads N              run NBD connections on N event loops, each a
                           thread with its own I/O engine: the handshake
                           runs on the main loop, and a connection to a raw
                           image with no filter moves to the least busy loop
                           when transmission starts (qcow2, filters, memory
                           and RBD disks, TLS, vhost-user and a server with
                           --control stay on the main loop). Overlapping
                           requests are ordered among the connections of
                           one loop. 'auto' (the default): one per core, at
                           most ${MAX_LOOPS}; one with --stdio
  --engine NAME            how to do the I/O: auto (default), sync, threads,
                           uring or posix-aio; 'vblk info --engines' lists
                           what this host has
  --direct                 bypass the page cache (O_DIRECT on Linux,
                           F_NOCACHE on macOS); any request still works
  --log-level LEVEL        fatal, error, warn, info, debug, trace or silent
                           (default info)
  -h, --help               show this help

Socket activation: started by systemd (or systemd-socket-activate) with
LISTEN_PID set to its process id, vblk serves NBD on the listening sockets
passed in LISTEN_FDS (descriptors 3, 4, ...) instead of --socket and
--listen, which it then refuses; it leaves the sockets' files alone at
exit. --vhost-user-blk still listens on its own socket. With --stdio too,
it serves the first connection on them and exits when that one ends: so
libnbd's '[ vblk serve --stdio IMG ]', which starts its command by socket
activation, gets one server for its one connection.

${RBD_NAME_HELP}
${FILTER_HELP}
Examples:
  vblk serve disk.img --socket /tmp/vblk.sock
      qemu-io -f raw nbd+unix:///?socket=/tmp/vblk.sock
  vblk serve disk.img --socket /tmp/vblk.sock --export ro=disk.img:ro \\
      --description 'scratch disk' --description 'ro=the same disk, read-only'
      nbdinfo --list nbd+unix:///?socket=/tmp/vblk.sock
  vblk serve base.img --socket /tmp/vblk.sock --export iso=boot.iso:ro
      nbdinfo --list nbd+unix:///?socket=/tmp/vblk.sock
  vblk serve disk.img --listen 10809 --read-only
      nbdinfo nbd://127.0.0.1:10809
${TLS_EXAMPLES}  vblk serve disk.img --socket /tmp/vblk.sock --engine uring --direct
  vblk serve disk.img --socket /tmp/vblk.sock --threads 4
      nbdcopy --connections=4 nbd+unix:///?socket=/tmp/vblk.sock copy.img
      (each of nbdcopy's connections on a loop of its own)
  vblk serve disk.qcow2 --socket /tmp/vblk.sock --control /tmp/vblk.ctl
      vblk ctl /tmp/vblk.ctl snapshot create before-upgrade
  vblk serve top.qcow2 --socket /tmp/vblk.sock
      nbdinfo --map=qemu:allocation-depth nbd+unix:///?socket=/tmp/vblk.sock
  vblk serve var/default.img --create 1G --socket var/vblk.sock
  vblk serve memory:1G --socket /tmp/vblk.sock
      qemu-io -f raw -c 'write -P 1 0 1M' nbd+unix:///?socket=/tmp/vblk.sock
  vblk serve disk.img --socket /tmp/vblk.sock \\
      --filter error:op=read,offset=1M,length=1M,error=EIO
      (reads that touch [1 MiB, 2 MiB) fail with EIO, all else works)
  vblk serve disk.qcow2 --vhost-user-blk /tmp/vhost.sock --num-queues 2
      qemu-system-x86_64 -m 1G \\
        -object memory-backend-memfd,id=mem,size=1G,share=on \\
        -numa node,memdev=mem \\
        -chardev socket,id=disk0,path=/tmp/vhost.sock,reconnect=1 \\
        -device vhost-user-blk-pci,chardev=disk0,num-queues=2 ...
  vblk serve disk.img --socket /tmp/vblk.sock --vhost-user-blk /tmp/vhost.sock
      (the same image over NBD and to a VM at once: one device, one lock)
  nbdsh -c 'h.connect_command(["vblk", "serve", "--stdio", "disk.img"])' \\
        -c 'print(h.get_size())'
      (the client starts vblk on a socketpair; vblk flushes, closes and
      exits 0 when the client is done)
  systemd-socket-activate -l /run/vblk.sock -- vblk serve disk.img
      nbdinfo nbd+unix:///?socket=/run/vblk.sock
      (as a systemd .socket unit with ListenStream=/run/vblk.sock and a
      .service running 'vblk serve disk.img' would)
  nbdinfo -- [ vblk serve --stdio disk.img ]
  nbdcopy -- [ vblk serve --stdio disk.img ] backup.raw
      (libnbd starts vblk by socket activation; vblk serves that one
      connection and exits; without --stdio libnbd stops it with SIGTERM)
  systemd-socket-activate --inetd -a -l /tmp/vblk.sock -- \\
        vblk serve --stdio --read-only disk.img
      (a vblk for each connection, as systemd's Accept=yes runs it)
  vblk serve disk.img --socket /tmp/vblk.sock --pid-file /tmp/vblk.pid &
      while [ ! -e /tmp/vblk.pid ]; do sleep 0.1; done   # ready now
`;

/** --threads: a number of loops, or auto (one per core up to MAX_LOOPS; one for --stdio's one connection). */
function threadCount(value: string | undefined, stdio: boolean): number {
  if (value === undefined || value === 'auto') return stdio ? 1 : Math.min(os.availableParallelism(), MAX_LOOPS);
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_LOOPS) throw new UsageError(`--threads must be auto or a whole number from 1 to ${MAX_LOOPS}`);
  return n;
}

/** Why the server shuts down, for the log, when it is not a signal. */
const SHUTDOWN_CAUSES: Record<string, string> = {
  control: 'shutdown asked for on the control socket',
  'client gone': 'the --stdio client has gone',
};

/** A --filter before any --export applies to every export, one after --export NAME=FILE to NAME only. */
function assignFilters(specs: ExportSpec[], order: { name: string; value: string | undefined }[]): void {
  let target: string | null = null;
  for (const { name, value } of order) {
    if (name === 'export') target = parseExport(value!).name;
    if (name !== 'filter') continue;
    const filter = parseFilter(value!);
    for (const s of specs) if (target === null || s.name === target) (s.filters ??= []).push(filter);
  }
}

function parseExport(spec: string): ExportSpec {
  const eq = spec.indexOf('=');
  if (eq < 0) throw new UsageError(`--export ${spec}: expected NAME=FILE or NAME=FILE:ro`);
  let file = spec.slice(eq + 1);
  const readOnly = file.endsWith(':ro');
  if (readOnly) file = file.slice(0, -3);
  if (!file) throw new UsageError(`--export ${spec}: no file given`);
  return { name: spec.slice(0, eq), file, readOnly };
}

/** --socket-mode, for every UNIX socket. */
function socketMode(v: ServeValues): number {
  const mode = v['socket-mode'] === undefined ? 0o600 : parseInt(v['socket-mode'], 8);
  if (!(mode >= 0 && mode <= 0o777)) throw new UsageError('--socket-mode must be octal, like 0600 or 660');
  return mode;
}

/** --vhost-user-blk [NAME=]PATH: a socket for export NAME, or for the default export. */
function parseVhostUser(spec: string, specs: ExportSpec[], socketMode: number): { name: string; endpoint: Endpoint } {
  const eq = spec.indexOf('=');
  const named = eq >= 0 && specs.some((s) => s.name === spec.slice(0, eq));
  const name = named ? spec.slice(0, eq) : '';
  const socketPath = named ? spec.slice(eq + 1) : spec;
  if (!specs.some((s) => s.name === name)) throw new UsageError(`--vhost-user-blk ${spec}: there is no default export; name one (NAME=PATH)`);
  if (!socketPath) throw new UsageError(`--vhost-user-blk ${spec}: no socket path`);
  return { name, endpoint: { kind: 'unix', path: socketPath, mode: socketMode } };
}

/** --description [NAME=]TEXT: the export NAME's description, or the default export's. */
function describe(specs: ExportSpec[], arg: string): void {
  const eq = arg.indexOf('=');
  const named = eq >= 0 ? specs.find((s) => s.name === arg.slice(0, eq)) : undefined;
  const target = named ?? specs.find((s) => s.name === '');
  const text = named ? arg.slice(eq + 1) : arg;
  if (!target) throw new UsageError(`--description ${arg}: no export named '${eq >= 0 ? arg.slice(0, eq) : ''}'`);
  if (Buffer.byteLength(text) > 4096) throw new UsageError(`--description: at most 4096 bytes, got ${Buffer.byteLength(text)}`);
  target.description = text;
}

export const serve: Command<ServeValues> = {
  name: 'serve',
  summary: 'serve disk images over NBD and vhost-user-blk',
  help: HELP,
  options: {
    socket: { type: 'string' },
    'vhost-user-blk': { type: 'string', multiple: true },
    filter: { type: 'string', multiple: true },
    'num-queues': { type: 'string' },
    'socket-mode': { type: 'string' },
    listen: { type: 'string', multiple: true },
    export: { type: 'string', multiple: true },
    description: { type: 'string', multiple: true },
    'read-only': { type: 'boolean' },
    'force-share': { type: 'boolean', short: 'U' },
    create: { type: 'string' },
    'handshake-timeout': { type: 'string' },
    'shutdown-timeout': { type: 'string' },
    'max-inflight': { type: 'string' },
    'poll-us': { type: 'string' },
    'send-file': { type: 'boolean' },
    threads: { type: 'string' },
    engine: { type: 'string' },
    direct: { type: 'boolean' },
    'log-level': { type: 'string' },
    control: { type: 'string' },
    ...RBD_SERVE_OPTIONS,
    stdio: { type: 'boolean' },
    'pid-file': { type: 'string' },
    tls: { type: 'string' },
    'tls-certs': { type: 'string' },
    'tls-verify-peer': { type: 'boolean' },
    'tls-psk': { type: 'string' },
  },

  async run(v, positionals, order) {
    if (positionals.length > 1) throw new UsageError(`expected one FILE, got ${positionals.length}`);
    const specs = (v.export ?? []).map(parseExport);
    if (positionals[0]) specs.unshift({ name: '', file: positionals[0], readOnly: false });
    assignFilters(specs, order);
    if (specs.length === 0) throw new UsageError('nothing to serve: give FILE or --export NAME=FILE');
    for (const s of specs) s.readOnly ||= v['read-only'] === true;
    for (const s of specs) usage(() => memorySize(s.file));
    for (const s of specs) checkRbdName(s.file);
    const rbd = rbdServeOptions(v);
    for (const d of v.description ?? []) describe(specs, d);
    if (v.create !== undefined) {
      if (!positionals[0] || memorySize(positionals[0]) !== null) throw new UsageError('--create needs FILE');
      const size = usage(() => parseSize(v.create!));
      if (!fs.existsSync(positionals[0])) RawImage.create(positionals[0], size);
    }
    const endpoints: Endpoint[] = [];
    if (v.socket) endpoints.push({ kind: 'unix', path: v.socket, mode: socketMode(v) });
    for (const spec of v.listen ?? []) endpoints.push({ kind: 'tcp', ...usage(() => parseListenAddress(spec)) });
    const vhostUser = (v['vhost-user-blk'] ?? []).map((spec) => parseVhostUser(spec, specs, socketMode(v)));
    const numQueues = numberOption('num-queues', v['num-queues'], Math.min(8, os.availableParallelism()), 1, 64);
    if (v.stdio && (endpoints.length > 0 || vhostUser.length > 0)) {
      throw new UsageError('--stdio serves the one connection on stdin/stdout: leave out --socket, --listen and --vhost-user-blk');
    }
    if (v['pid-file'] === '') throw new UsageError('--pid-file needs a file name');
    const inherited = inheritedSockets();
    if (inherited && endpoints.length > 0) {
      throw new UsageError(`the service manager passed ${inherited.length} listening socket${inherited.length === 1 ? '' : 's'} (LISTEN_FDS): leave out --socket and --listen`);
    }
    for (const socket of inherited ?? []) endpoints.push({ kind: 'inherited', ...socket });
    if (endpoints.length === 0 && vhostUser.length === 0 && !v.stdio) {
      throw new UsageError('nowhere to listen: give --socket PATH, --listen [HOST:]PORT, --vhost-user-blk PATH or --stdio, or start vblk by socket activation');
    }
    // Taken before the images are opened: nothing may reach stdout after this.
    const stdio = v.stdio && !inherited ? stdioConnection() : null;
    const options = {
      handshakeTimeoutMs: numberOption('handshake-timeout', v['handshake-timeout'], 10, 0.1, 3600) * 1000,
      shutdownTimeoutMs: numberOption('shutdown-timeout', v['shutdown-timeout'], 30, 0, 3600) * 1000,
      limits: {
        maxInflight: numberOption('max-inflight', v['max-inflight'], 64, 1, 4096),
        maxInflightBytes: 128 << 20,
        maxBacklogBytes: 64 << 20,
        maxSkippedPayload: 128 << 20,
      },
      busyPoll: new BusyPoll(numberOption('poll-us', v['poll-us'], 50, 0, 10_000)),
      sendFile: v['send-file'] ?? false,
      tls: tlsFromOptions(v),
    };
    const log = createLogger(v['log-level'] ?? 'info');

    const requested = v.engine ?? 'auto';
    if (requested !== 'auto' && !(ENGINE_NAMES as readonly string[]).includes(requested)) {
      throw new UsageError(`--engine must be auto, ${ENGINE_NAMES.join(', ')}`);
    }
    const { engine, reason } = chooseEngine(requested);
    keepLargeAllocationsInHeap();
    const direct = v.direct === true;
    const registry = new ExportRegistry();
    const forceShare = v['force-share'] === true;
    const onRbdLockWait = (image: string, owners: string[]): void => log.warn({ image, owners }, 'waiting for the RBD image\'s exclusive lock');
    const onRbdFenced = (image: string): void =>
      log.error({ image }, 'this server was blocklisted: another client broke its lock on the RBD image, and its requests fail with EIO from now on');
    const imageOptions = { engine, direct, forceShare, live: v.control !== undefined, ...rbd, onRbdLockWait, onRbdFenced };
    const imageLog = log.child({ engine: engine.name, direct, reason });
    try {
      const writable = specs.find((s) => !s.readOnly);
      if (forceShare && writable) throw new UsageError(`--force-share needs read-only exports; '${writable.file}' is writable`);
      await openExports(specs, imageOptions, registry, imageLog);
    } catch (err) {
      await registry.closeAll();
      engine.close();
      throw err;
    }
    const threads = threadCount(v.threads, v.stdio === true);
    const shared = registry.list().flatMap((e): LoopExport[] => (e.gateway.device instanceof RawImage ? [{ name: e.name, description: e.description, share: e.gateway.device.share() }] : []));
    const loopInit = { engine: engine.name, limits: options.limits, pollUs: options.busyPoll.maxUs, sendFile: options.sendFile, logLevel: v['log-level'] ?? 'info' };
    const spawnLoop = (workerData: LoopInit): Worker => new Worker(new URL('./loop-worker.js', import.meta.url), { workerData });
    const loops = threads > 1 && shared.length > 0 ? new ConnectionLoops(threads - 1, shared, loopInit, spawnLoop, log) : undefined;
    const server = new Server(registry, options, log);
    const nbd = nbdFrontEnd(registry, { ...options, loops });
    let stop = (): void => undefined;
    const control =
      v.control === undefined
        ? null
        : new ControlSocket(
            {
              registry,
              engine,
              addExport: async ({ name, file, readOnly, filters }) => {
                const spec: ExportSpec = { name, file, readOnly, filters: filters.map(parseFilter) };
                if (forceShare && !readOnly) throw new Error(`the server runs with --force-share: '${name}' must be read-only`);
                await openExports([spec], imageOptions, registry, imageLog);
              },
              parseFilter,
              filterText,
              shutdown: () => stop(),
            },
            log.child({ control: v.control }),
          );
    try {
      for (const e of endpoints) await server.listen(e, nbd);
      for (const { name, endpoint } of vhostUser) await server.listen(endpoint, vhostUserFrontEnd(registry.find(name)!, numQueues, options.busyPoll));
      await control?.listen(v.control!, 0o600);
      if (v['pid-file'] !== undefined) writePidFile(v['pid-file']);
    } catch (err) {
      // Export failures are logged by the shutdown; the listen error is the one to report.
      await control?.close();
      await loops?.close();
      await server.shutdown().catch(() => undefined);
      engine.close();
      throw err;
    }
    // --stdio: one connection, then exit; under socket activation (libnbd's '[ CMD ]') the first one accepted.
    const served = stdio ? server.serveOne(stdio.socket, stdio.endpoint, nbd) : v.stdio ? server.serveFirstOnly() : null;
    const uris = server.addresses();
    // Under socket activation stdout may be the client's own (libnbd's '[ CMD ]'): the URIs go only to the log, as qemu-nbd and nbdkit print none.
    if (!stdio && !inherited) process.stdout.write(uris.map((u) => `${u}\n`).join(''));
    log.info({ uris }, 'ready');

    return new Promise<number>((resolve) => {
      let signalled = false;
      let stopping = false;
      const onSignal = (signal: NodeJS.Signals | 'control' | 'client gone'): void => {
        // A second signal exits at once; a signal during a shutdown something else began (libnbd
        // sends SIGTERM once its --stdio connection is gone) is the first one and lets it finish.
        const isSignal = signal !== 'control' && signal !== 'client gone';
        if (isSignal && signalled) {
          log.warn({ signal }, 'second signal: exiting without finishing');
          process.exit(1);
        }
        signalled ||= isSignal;
        if (stopping) return;
        stopping = true;
        log.info({ signal }, SHUTDOWN_CAUSES[signal] ?? 'signal received');
        (control?.close() ?? Promise.resolve())
          .then(() => server.shutdown())
          .then(
            () => 0,
            (err: unknown) => {
              log.error({ err }, 'shutdown failed');
              return 1;
            },
          )
          .then((code) => {
            engine.close();
            resolve(code);
          });
      };
      stop = () => onSignal('control');
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      void served?.then(() => onSignal('client gone'));
    });
  },
};
