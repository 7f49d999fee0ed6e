// A throwaway single-node Ceph cluster for one test: test/ceph/cluster.sh
// builds it in a fresh temporary directory, and a teardown always stops
// its daemons (they run detached, so nothing else would) before the
// directory goes. A failed start throws with the script's output, which
// ends with `ceph -s` and the tail of the daemon logs.

import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { tempDir, type Teardown } from './server.js';
import { run, TOOL_ENV } from './tools.js';

/** The script in the source tree: this file is dist/test/helpers/ceph.js. */
export const CLUSTER_SH = fileURLToPath(new URL('../../../test/ceph/cluster.sh', import.meta.url));

export interface Ceph {
  dir: string;
  /** DIR/ceph.conf: enough for any client (it names the keyring). */
  conf: string;
  keyring: string;
  /** A size-1 pool initialised for RBD. */
  pool: 'rbd';
  /** Environment for spawning clients: TOOL_ENV with CEPH_CONF set. */
  env: NodeJS.ProcessEnv;
  /** Stops the OSD: I/O hangs (or times out) until osdStart(). */
  osdStop(): Promise<void>;
  /** Starts the OSD again and waits until its placement groups are active+clean. */
  osdStart(): Promise<void>;
  /** Runs `rbd -c conf ...args`; resolves to stdout, rejects with stderr on failure. */
  rbd(args: string[], timeoutMs?: number): Promise<string>;
  /** Runs `ceph -c conf ...args`; resolves to stdout, rejects with stderr on failure. */
  ceph(args: string[], timeoutMs?: number): Promise<string>;
}

/** Runs a command and returns its stdout, or throws with what it printed. */
async function output(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) {
    const how = r.signal ? `was killed by ${r.signal}` : `exited with ${r.code}`;
    throw new Error(`${path.basename(cmd)} ${args.join(' ')} ${how}\n${r.stderr}${r.stdout}`);
  }
  return r.stdout;
}

/** Runs one cluster.sh command on `dir`. */
export function cluster(command: 'start' | 'stop' | 'osd-stop' | 'osd-start' | 'status', dir: string): Promise<string> {
  return output(CLUSTER_SH, [command, dir], 300_000);
}

export async function startCeph(t: Teardown): Promise<Ceph> {
  const dir = tempDir(t, 'vblk-ceph-');
  // Registered after tempDir's removal, so it runs first (teardowns run last-in first-out).
  t.teardown(() => cluster('stop', dir));
  await cluster('start', dir);
  const conf = path.join(dir, 'ceph.conf');
  return {
    dir,
    conf,
    keyring: path.join(dir, 'ceph.client.admin.keyring'),
    pool: 'rbd',
    env: { ...TOOL_ENV, CEPH_CONF: conf },
    osdStop: async () => void (await cluster('osd-stop', dir)),
    osdStart: async () => void (await cluster('osd-start', dir)),
    rbd: (args, timeoutMs) => output('rbd', ['-c', conf, ...args], timeoutMs),
    ceph: (args, timeoutMs) => output('ceph', ['-c', conf, ...args], timeoutMs),
  };
}
