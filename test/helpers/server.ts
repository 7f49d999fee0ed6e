// Starts `vblk serve` as a child process on a UNIX socket in a fresh
// temporary directory and always stops it when the test ends. The server
// counts as ready when it logs 'ready' (its URIs are in that line too).
// Or under systemd-socket-activate, which listens and starts vblk on the
// first connection (socketActivated).

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireTool, TOOL_ENV } from './tools.js';

/** The compiled CLI: this file is dist/test/helpers/server.js. */
export const VBLK = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Served {
  socket: string;
  dir: string;
  uris: string[];
  /** URI of an export over the UNIX socket ('' for the default export). */
  uri(name?: string): string;
  proc: ChildProcess;
  exited: Promise<Exit>;
  /** Everything the server logged so far, one JSON object per line. */
  logs(): Record<string, unknown>[];
  /** Sends a signal (SIGTERM by default) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<Exit>;
}

/**
 * Kills `proc` (SIGKILL) when the test ends if it still runs, and waits
 * for `exited`. Returns whether it still runs.
 */
export function killAtEnd(t: Teardown, proc: ChildProcess, exited: Promise<unknown>): () => boolean {
  let alive = true;
  void exited.then(() => (alive = false));
  t.teardown(async () => {
    if (alive) {
      proc.kill('SIGKILL');
      await exited;
    }
  });
  return () => alive;
}

/** A short temporary directory (UNIX socket paths must stay under 108 bytes). */
export function tempDir(t: Teardown, prefix = 'vblk-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs the CLI to completion (in `cwd`, with `env`: by default the test's own). */
export function vblk(args: string[], cwd?: string, env?: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VBLK, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * --engine, --direct and --threads for the engine matrix
 * (test/engine-matrix.mjs); --threads not when the test gives its own.
 */
function engineArgs(testArgs: string[]): string[] {
  const args = process.env.VBLK_TEST_ENGINE ? ['--engine', process.env.VBLK_TEST_ENGINE] : [];
  if (process.env.VBLK_TEST_DIRECT === '1') args.push('--direct');
  if (process.env.VBLK_TEST_THREADS && !testArgs.includes('--threads')) args.push('--threads', process.env.VBLK_TEST_THREADS);
  return args;
}

/**
 * `vblk serve ARGS --socket DIR/vblk.sock`, waiting until it is ready.
 * Pass `socket: false` to leave --socket out (the args then carry it or --listen),
 * `openFileLimit` to run it under `ulimit -n` (soft and hard: Node raises the soft limit to the hard one),
 * `prefix` to run it under another program (e.g. strace; `proc` is then that program).
 */
export async function serve(
  t: Teardown,
  args: string[],
  options: { socket?: boolean; readyTimeoutMs?: number; openFileLimit?: number; prefix?: string[] } = {},
): Promise<Served> {
  const dir = tempDir(t, 'vblk-srv-');
  const socket = path.join(dir, 'vblk.sock');
  const full = [...(options.socket === false ? args : [...args, '--socket', socket]), ...engineArgs(args)];
  const command = [VBLK, 'serve', ...full];
  const [program, ...argv] = options.prefix
    ? [...options.prefix, process.execPath, ...command]
    : options.openFileLimit === undefined
      ? [process.execPath, ...command]
      : ['sh', '-c', `ulimit -n ${options.openFileLimit} && exec "$0" "$@"`, process.execPath, ...command];
  const proc = spawn(program!, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stdout!.resume();
  proc.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<Exit>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const alive = killAtEnd(t, proc, exited);
  const logs = (): Record<string, unknown>[] =>
    stderr
      .split('\n')
      .slice(0, -1) // the last line may not be complete yet
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  const deadline = Date.now() + (options.readyTimeoutMs ?? 15_000);
  let ready: Record<string, unknown> | undefined;
  while (!(ready = logs().find((l) => l.msg === 'ready'))) {
    if (!alive() || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`vblk serve ${full.join(' ')} did not become ready:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const uris = ready.uris as string[];
  return {
    socket,
    dir,
    uris,
    uri: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`,
    proc,
    exited,
    logs,
    stop: async (signal = 'SIGTERM') => {
      if (alive()) proc.kill(signal);
      return exited;
    },
  };
}

export interface Activated {
  proc: ChildProcess;
  exited: Promise<Exit>;
  /** What the activated vblk printed on stdout (systemd-socket-activate execs it in its own process). */
  stdout(): string;
  /** systemd-socket-activate's lines and vblk's log lines. */
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<Exit>;
}

/**
 * `systemd-socket-activate ACTIVATE -- COMMAND`, once it is listening;
 * COMMAND defaults to this CLI's `vblk serve` with `args`, and is started
 * on the first connection. Killed when the test ends.
 */
export async function socketActivated(t: Teardown, activate: string[], args: string[], command = [process.execPath, VBLK, 'serve']): Promise<Activated> {
  requireTool('systemd-socket-activate');
  const proc = spawn('systemd-socket-activate', [...activate, '--', ...command, ...args], { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<Exit>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const alive = killAtEnd(t, proc, exited);
  const deadline = Date.now() + 15_000;
  while (!/^Listening on .* as \d+\.$/m.test(stderr)) {
    if (!alive() || Date.now() > deadline) throw new Error(`systemd-socket-activate ${activate.join(' ')} is not listening:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc,
    exited,
    stdout: () => stdout,
    stderr: () => stderr,
    stop: async (signal = 'SIGTERM') => {
      if (alive()) proc.kill(signal);
      return exited;
    },
  };
}
