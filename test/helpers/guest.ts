// A real Linux guest under QEMU (TCG, no KVM here) whose only disk is a
// vhost-user-blk device on a UNIX socket, for end-to-end tests of
// vhost-user back ends.
//
// prepareGuest() builds, once per machine, a Debian kernel and a base
// initramfs (static busybox plus the virtio modules the disk needs, with
// their dependencies read from the modules themselves) from packages that
// `apt-get download` fetches from the Debian mirror apt is configured
// with; nothing else touches the network. The result is cached under
// $VBLK_GUEST_CACHE or $XDG_CACHE_HOME/vblk/guest (~/.cache/vblk/guest),
// built in a temporary directory and renamed into place, so concurrent
// test processes never see half of it. Delete the directory to rebuild.
//
// bootGuest() appends a small second archive to the base one: /init (mount,
// insmod, wait for /dev/vda, run the test's script, print its exit status,
// power off) and the test's script and files under /work. The script
// reports with `result KEY VALUE`, which prints a marked line on the serial
// console; bootGuest collects those. QEMU is killed on timeout and always
// when the test ends.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cpioArchive, type CpioEntry } from './cpio.js';
import { loadOrder, moduleTree } from './kernel-modules.js';
import { killAtEnd, tempDir, type Teardown } from './server.js';
import { requireTool, run } from './tools.js';

/** Bump when what goes into the cache changes, so old caches are rebuilt. */
const CACHE_FORMAT = 1;
const KERNEL_META_PACKAGE = 'linux-image-amd64';
const BUSYBOX_PACKAGE = 'busybox-static';
/** What /dev/vda needs in Debian's kernel (modules there, not built in). */
const GUEST_MODULES = ['virtio_pci', 'virtio_blk'];
const MARK = '@@vblk';

export interface Guest {
  dir: string;
  kernel: string;
  /** The base initramfs: busybox and the modules, no /init. */
  initramfs: string;
  /** Modules to insmod, in order, as paths inside the initramfs. */
  modules: string[];
  kernelRelease: string;
  /** Package names and versions the guest was built from. */
  packages: Record<string, string>;
  /** Bytes apt-get downloaded when the cache was built. */
  downloadedBytes: number;
}

type Log = (line: string) => void;
const stderrLog: Log = (line) => process.stderr.write(`${line}\n`);

export function guestCacheDir(): string {
  if (process.env.VBLK_GUEST_CACHE) return process.env.VBLK_GUEST_CACHE;
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'vblk', 'guest');
}

function readCached(dir: string): Guest | undefined {
  try {
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Omit<Guest, 'dir' | 'kernel' | 'initramfs'> & {
      format: number;
    };
    if (manifest.format !== CACHE_FORMAT) return undefined;
    const guest = { ...manifest, dir, kernel: path.join(dir, 'vmlinuz'), initramfs: path.join(dir, 'base.cpio') };
    return fs.existsSync(guest.kernel) && fs.existsSync(guest.initramfs) ? guest : undefined;
  } catch {
    return undefined;
  }
}

async function check(cmd: string, args: string[], cwd?: string): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 600_000, ...(cwd ? { cwd } : {}) });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code ?? r.signal}):\n${r.stderr || r.stdout}`);
  return r.stdout;
}

/** The versioned kernel package the meta package points at, e.g. linux-image-6.1.0-56-amd64. */
async function kernelPackage(): Promise<string> {
  const r = await run('apt-cache', ['depends', KERNEL_META_PACKAGE]);
  const m = /Depends: (linux-image-\S+)/.exec(r.stdout);
  if (r.code !== 0 || !m) {
    throw new Error(
      `apt does not know ${KERNEL_META_PACKAGE}; run 'apt-get update' first (.ci/run does) so the guest kernel can be downloaded:\n${r.stderr}`,
    );
  }
  return m[1]!;
}

async function build(dir: string, log: Log): Promise<Guest> {
  for (const tool of ['apt-get', 'apt-cache', 'dpkg-deb']) requireTool(tool);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const work = fs.mkdtempSync(`${dir}.tmp-`);
  try {
    const kernelPkg = await kernelPackage();
    log(`guest: downloading ${kernelPkg} and ${BUSYBOX_PACKAGE} with apt-get`);
    const debs = path.join(work, 'debs');
    fs.mkdirSync(debs);
    await check('apt-get', ['download', '-q', kernelPkg, BUSYBOX_PACKAGE], debs);
    const packages: Record<string, string> = {};
    let downloadedBytes = 0;
    const root = path.join(work, 'root');
    for (const deb of fs.readdirSync(debs).filter((f) => f.endsWith('.deb'))) {
      const file = path.join(debs, deb);
      downloadedBytes += fs.statSync(file).size;
      const [name, version] = (await check('dpkg-deb', ['-f', file, 'Package', 'Version'])).trim().split('\n').map((l) => l.replace(/^\w+: /, ''));
      packages[name!] = version!;
      await check('dpkg-deb', ['-x', file, root]);
    }
    const vmlinuz = fs.readdirSync(path.join(root, 'boot')).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`${kernelPkg} has no boot/vmlinuz-*`);
    const kernelRelease = vmlinuz.slice('vmlinuz-'.length);
    const modulesDir = [path.join(root, 'lib/modules', kernelRelease), path.join(root, 'usr/lib/modules', kernelRelease)].find((d) => fs.existsSync(d));
    if (!modulesDir) throw new Error(`${kernelPkg} has no lib/modules/${kernelRelease}`);
    const modules = loadOrder(GUEST_MODULES, moduleTree(modulesDir));
    const busybox = [path.join(root, 'bin/busybox'), path.join(root, 'usr/bin/busybox')].find((f) => fs.existsSync(f));
    if (!busybox) throw new Error(`${BUSYBOX_PACKAGE} has no busybox binary`);

    const entries: CpioEntry[] = [
      { path: 'bin/busybox', kind: 'file', data: fs.readFileSync(busybox), mode: 0o755 },
      // The kernel opens /dev/console before /init runs (devtmpfs is not mounted yet).
      { path: 'dev/console', kind: 'chardev', major: 5, minor: 1 },
      ...['proc', 'sys', 'tmp', 'work'].map((d): CpioEntry => ({ path: d, kind: 'dir' })),
      ...modules.map((m): CpioEntry => ({ path: `lib/modules/${m.name}.ko`, kind: 'file', data: fs.readFileSync(m.file) })),
    ];
    const out = path.join(work, 'out');
    fs.mkdirSync(out);
    fs.copyFileSync(path.join(root, 'boot', vmlinuz), path.join(out, 'vmlinuz'));
    fs.writeFileSync(path.join(out, 'base.cpio'), cpioArchive(entries));
    const manifest = {
      format: CACHE_FORMAT,
      modules: modules.map((m) => `/lib/modules/${m.name}.ko`),
      kernelRelease,
      packages,
      downloadedBytes,
    };
    fs.writeFileSync(path.join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    try {
      fs.renameSync(out, dir);
    } catch (err) {
      // Another process finished first: use its copy.
      if (!readCached(dir)) throw err;
    }
    const guest = readCached(dir);
    if (!guest) throw new Error(`guest cache ${dir} is unreadable right after building it`);
    return guest;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

let prepared: Promise<Guest> | undefined;

/** The guest kernel and base initramfs, built on first use and cached (see the top of this file). */
export function prepareGuest(log: Log = stderrLog): Promise<Guest> {
  prepared ??= (async () => {
    const dir = guestCacheDir();
    const cached = readCached(dir);
    if (cached) return cached;
    if (fs.existsSync(dir)) throw new Error(`guest cache ${dir} is stale or damaged; delete it to rebuild`);
    const started = Date.now();
    const guest = await build(dir, log);
    const size = (f: string): string => `${(fs.statSync(f).size / 2 ** 20).toFixed(1)} MiB`;
    log(
      `guest: built in ${((Date.now() - started) / 1000).toFixed(1)} s from ${(guest.downloadedBytes / 2 ** 20).toFixed(1)} MiB of packages; ` +
        `cached kernel ${size(guest.kernel)}, initramfs ${size(guest.initramfs)} in ${dir}`,
    );
    return guest;
  })();
  prepared.catch(() => (prepared = undefined));
  return prepared;
}

/** /init: set up, load the disk's modules, run the script, report, power off. */
function initScript(modules: string[]): string {
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
echo "${MARK}-init $(cut -d' ' -f1 /proc/uptime)"
for m in ${modules.join(' ')}; do insmod $m || echo "${MARK}-error insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -b /dev/vda ] || echo "${MARK}-error no /dev/vda"
result() { echo "${MARK}-result $*"; }
cd /work
(. /work/script.sh)
echo "${MARK}-exit $? $(cut -d' ' -f1 /proc/uptime)"
# Let the serial port drain before the power goes.
sleep 0.2
poweroff -f
`;
}

export interface BootOptions {
  /** The vhost-user-blk back end's UNIX socket. */
  socket: string;
  numQueues?: number;
  memoryMiB?: number;
  cpus?: number;
  /** Shell (busybox ash) run in /work after /dev/vda appears; `result KEY VALUE` reports. */
  script: string;
  /** Extra files for the script, by path relative to /work. */
  files?: Record<string, Buffer | string>;
  timeoutMs?: number;
  /** Let QEMU (re)connect to the socket by itself (chardev reconnect=1). */
  reconnect?: boolean;
  /** Called for each `result KEY VALUE` line as it arrives (the test may act while the guest runs). */
  onResult?: (key: string, value: string) => void;
  log?: Log;
}

export interface BootResult {
  /** Everything on the serial console, with QEMU's own stderr after it. */
  console: string;
  /** QEMU's exit code (0 after the guest powered off), null when killed. */
  qemuExit: number | null;
  timedOut: boolean;
  /** The script's exit status, undefined if it never finished. */
  scriptExit: number | undefined;
  /** `result KEY VALUE` lines, by key (a later line wins). */
  results: Record<string, string>;
  /** Lines /init marked as errors (a module that did not load, no disk). */
  errors: string[];
  /** Wall time from spawning QEMU to its exit. */
  elapsedMs: number;
  /** Guest uptime when /init started, and when the script finished. */
  guestInitSeconds: number | undefined;
  guestDoneSeconds: number | undefined;
}

export function parseConsole(text: string): Pick<BootResult, 'scriptExit' | 'results' | 'errors' | 'guestInitSeconds' | 'guestDoneSeconds'> {
  const results: Record<string, string> = {};
  const errors: string[] = [];
  let scriptExit: number | undefined;
  let guestInitSeconds: number | undefined;
  let guestDoneSeconds: number | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^${MARK}-result (\\S+) ?(.*)$`).exec(line))) results[m[1]!] = m[2]!;
    else if ((m = new RegExp(`^${MARK}-error (.*)$`).exec(line))) errors.push(m[1]!);
    else if ((m = new RegExp(`^${MARK}-init (\\S+)`).exec(line))) guestInitSeconds = Number(m[1]);
    else if ((m = new RegExp(`^${MARK}-exit (\\d+) (\\S+)`).exec(line))) {
      scriptExit = Number(m[1]);
      guestDoneSeconds = Number(m[2]);
    }
  }
  return { scriptExit, results, errors, guestInitSeconds, guestDoneSeconds };
}

/**
 * Boots the guest with a vhost-user-blk disk on `socket`, runs the script and
 * waits for the power-off (or the timeout, 300 s by default). Never throws
 * for what happens in the guest: the test asserts on the result.
 */
export async function bootGuest(t: Teardown, options: BootOptions): Promise<BootResult> {
  requireTool('qemu-system-x86_64');
  const log = options.log ?? stderrLog;
  const guest = await prepareGuest(log);
  const numQueues = options.numQueues ?? 1;
  const memoryMiB = options.memoryMiB ?? 256;
  const cpus = options.cpus ?? 1;
  const timeoutMs = options.timeoutMs ?? 300_000;

  const dir = tempDir(t, 'vblk-guest-');
  const work: CpioEntry[] = Object.entries(options.files ?? {}).map(([name, data]) => ({ path: `work/${name}`, kind: 'file', data }));
  const initrd = path.join(dir, 'initrd');
  fs.writeFileSync(
    initrd,
    Buffer.concat([
      fs.readFileSync(guest.initramfs),
      cpioArchive([
        { path: 'init', kind: 'file', data: initScript(guest.modules), mode: 0o755 },
        { path: 'work/script.sh', kind: 'file', data: options.script },
        ...work,
      ]),
    ]),
  );

  const args = [
    '-accel', 'tcg',
    '-machine', 'pc,memory-backend=mem',
    '-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`,
    '-m', `${memoryMiB}M`,
    '-smp', String(cpus),
    '-nodefaults', '-nographic', '-no-reboot',
    '-serial', 'stdio', '-monitor', 'none',
    '-kernel', guest.kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet',
    '-chardev', `socket,id=c0,path=${options.socket}${options.reconnect ? ',reconnect=1' : ''}`,
    '-device', `vhost-user-blk-pci,chardev=c0,num-queues=${numQueues}`,
  ]; // prettier-ignore

  log(`guest: booting (${cpus} vCPU, ${memoryMiB} MiB, ${numQueues} queue${numQueues === 1 ? '' : 's'}) on ${options.socket}`);
  const started = Date.now();
  const proc: ChildProcess = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // 'close', not 'exit': the console's last lines may still be in the pipe at exit.
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)));
  killAtEnd(t, proc, exited);

  let consoleText = '';
  let stderr = '';
  let pending = '';
  const seconds = (): string => `${((Date.now() - started) / 1000).toFixed(1)} s`;
  proc.stdout!.on('data', (chunk: Buffer) => {
    consoleText += chunk.toString('latin1');
    pending += chunk.toString('latin1');
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith(`${MARK}-init`)) log(`guest: /init started after ${seconds()}`);
      else if (line.startsWith(`${MARK}-exit`)) log(`guest: script finished after ${seconds()}: ${line.trim()}`);
      else if (line.startsWith(`${MARK}-error`)) log(`guest: ${line.trim()}`);
      else if (options.onResult && line.startsWith(`${MARK}-result`)) {
        const results = parseConsole(line).results;
        for (const [key, value] of Object.entries(results)) options.onResult(key, value);
      }
    }
  });
  proc.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    log(`guest: timed out after ${seconds()}, killing QEMU`);
    proc.kill('SIGKILL');
  }, timeoutMs);
  const qemuExit = await exited;
  clearTimeout(timer);
  const elapsedMs = Date.now() - started;
  log(`guest: QEMU exited (${qemuExit ?? 'killed'}) after ${seconds()}`);
  return {
    console: stderr ? `${consoleText}\n--- QEMU stderr ---\n${stderr}` : consoleText,
    qemuExit,
    timedOut,
    elapsedMs,
    ...parseConsole(consoleText),
  };
}
