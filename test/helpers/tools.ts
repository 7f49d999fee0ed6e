// Running the real clients. A missing client fails the test that needs it
// (never a skip): CI installs them all, and a test that silently does not
// run proves nothing. nbdsh runs Debian's python3 (a pyenv python3 earlier
// on PATH has no libnbd), hence /usr/bin first.

import { spawn, spawnSync } from 'node:child_process';

export const TOOL_ENV = { ...process.env, PATH: `/usr/bin:/bin:${process.env.PATH ?? ''}` };

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The Debian package that provides each client, for the error message. */
const PACKAGES: Record<string, string> = {
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'libnbd-bin and python3-libnbd',
  fio: 'fio',
  strace: 'strace',
  'systemd-socket-activate': 'systemd',
  certtool: 'gnutls-bin',
  psktool: 'gnutls-bin',
  ceph: 'ceph-common',
  rbd: 'ceph-common',
};

export function requireTool(name: string): void {
  const found = spawnSync('sh', ['-c', `command -v ${name}`], { env: TOOL_ENV }).status === 0;
  if (!found) throw new Error(`required tool '${name}' is missing; install ${PACKAGES[name] ?? name}`);
}

export function run(cmd: string, args: string[], options: { input?: string; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  requireTool(cmd);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: TOOL_ENV, cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    // A tool that exits without reading its input closes the pipe: EPIPE
    // here is not the test's failure (its exit code is).
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

/** Runs a Python snippet in nbdsh with the handle `h` connected to `uri` (base:allocation selected). */
export function nbdsh(uri: string, script: string): Promise<RunResult> {
  return run('nbdsh', ['--base-allocation', '-u', uri, '-c', script]);
}
