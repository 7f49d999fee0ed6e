// Socket activation as systemd passes it (sd_listen_fds(3)): LISTEN_PID
// names the process the sockets are for, LISTEN_FDS how many there are
// (descriptors 3, 4, ...), LISTEN_FDNAMES optionally names them,
// colon-separated. Variables meant for another process (LISTEN_PID is
// not ours: a parent's, leaked into us) are ignored; ones meant for us
// are taken and unset, so nothing vblk starts mistakes them for its own,
// and the descriptors are made close-on-exec, as sd_listen_fds does.
// Every descriptor must be a listening UNIX or TCP stream socket: a
// connected one means a service with Accept=yes, which wants --stdio.

import { socketInfo, type SocketInfo } from '../sys/socket-info.js';
import { setCloseOnExec } from '../sys/syscalls.js';

/** The first descriptor a service manager passes (after stdin, stdout, stderr). */
export const LISTEN_FDS_START = 3;

export interface Activation {
  fds: number[];
  /** LISTEN_FDNAMES, one per descriptor, or null each where it was not given. */
  names: (string | null)[];
}

export interface InheritedSocket {
  fd: number;
  name: string | null;
  family: 'unix' | 'tcp';
  /** A UNIX socket's path, when it has one. */
  path: string | null;
}

/** Reads the variables: null when they are not for process `pid`; throws an Error that says what is wrong with them. */
export function parseActivation(env: NodeJS.ProcessEnv, pid: number): Activation | null {
  const { LISTEN_PID: forPid, LISTEN_FDS: count, LISTEN_FDNAMES: names } = env;
  if (forPid === undefined) return null;
  if (!/^[1-9]\d*$/.test(forPid)) throw new Error(`socket activation: LISTEN_PID=${forPid} is not a process id`);
  if (Number(forPid) !== pid) return null;
  if (count === undefined) throw new Error('socket activation: LISTEN_PID is this process but LISTEN_FDS is not set');
  if (!/^\d+$/.test(count)) throw new Error(`socket activation: LISTEN_FDS=${count} is not a number of descriptors`);
  const n = Number(count);
  if (n === 0) throw new Error('socket activation: LISTEN_FDS=0, the service manager passed no sockets');
  if (n > 1024) throw new Error(`socket activation: LISTEN_FDS=${count} is more sockets than vblk will take (1024)`);
  const split = names === undefined ? null : names.split(':');
  if (split && split.length !== n) {
    throw new Error(`socket activation: LISTEN_FDNAMES has ${split.length} name${split.length === 1 ? '' : 's'} for LISTEN_FDS=${n} sockets`);
  }
  const fds = Array.from({ length: n }, (_, i) => LISTEN_FDS_START + i);
  return { fds, names: fds.map((_, i) => split?.[i] || null) };
}

function describe(fd: number): SocketInfo {
  try {
    return socketInfo(fd);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBADF') throw new Error(`socket activation: descriptor ${fd} (of LISTEN_FDS) is not open`);
    if (code === 'ENOTSOCK') throw new Error(`socket activation: descriptor ${fd} (of LISTEN_FDS) is not a socket`);
    throw new Error(`socket activation: descriptor ${fd} cannot be inspected (${code ?? (err as Error).message})`);
  }
}

/** Checks one passed descriptor and makes it vblk's. */
function inherit(fd: number, name: string | null): InheritedSocket {
  const info = describe(fd);
  const which = `socket activation: descriptor ${fd}${name ? ` (${name})` : ''}`;
  if (info.family === 'other') throw new Error(`${which} is neither a UNIX nor a TCP socket`);
  if (!info.stream) throw new Error(`${which} is not a stream socket; NBD needs SOCK_STREAM`);
  if (!info.listening) {
    throw new Error(`${which} is a connection, not a listening socket; for a service with Accept=yes run 'vblk serve --stdio'`);
  }
  setCloseOnExec(fd);
  return { fd, name, family: info.family === 'unix' ? 'unix' : 'tcp', path: info.path };
}

/**
 * The listening sockets a service manager passed this process, checked
 * and taken (the variables are unset), or null when there are none for it.
 */
export function inheritedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): InheritedSocket[] | null {
  const activation = parseActivation(env, pid);
  if (!activation) return null;
  const sockets = activation.fds.map((fd, i) => inherit(fd, activation.names[i]));
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  return sockets;
}
