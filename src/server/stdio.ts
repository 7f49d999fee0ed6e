// --stdio: the one connection vblk was started on. libnbd's
// nbd_connect_command (nbdinfo/nbdcopy '[ CMD ]', nbdsh connect_command)
// runs the server with one end of a socketpair on both stdin and stdout,
// and so do inetd and systemd's Accept=yes with StandardInput=socket.
// vblk needs exactly that: one stream socket, read and written through
// descriptor 0, so the connection is a socket like any other (the
// direct-read fast path in socket-fd.ts reads descriptor 0, which is the
// client's socket). A pair of pipes (nbdkit -s takes those) is refused
// with a clear message. Once the socket is taken, /dev/null replaces it
// on stdout: nothing written to stdout by mistake can reach the client,
// and the socket closes when vblk closes descriptor 0.

import fs from 'node:fs';
import net from 'node:net';
import { duplicateOnto, socketInfo } from '../sys/socket-info.js';
import type { Endpoint } from './listeners.js';

const NEEDS = "--stdio needs a connected socket on stdin and stdout, as libnbd's nbd_connect_command, inetd and systemd's Accept=yes give";

function what(stat: fs.Stats): string {
  if (stat.isFIFO()) return 'a pipe';
  if (stat.isCharacterDevice()) return 'a terminal or device';
  if (stat.isFile()) return 'a file';
  return 'not a socket';
}

/** Checks stdin and stdout and takes the socket on them; throws an Error saying what is there instead. */
export function stdioConnection(): { socket: net.Socket; endpoint: Endpoint } {
  const stdin = fs.fstatSync(0);
  if (!stdin.isSocket()) throw new Error(`${NEEDS}; stdin is ${what(stdin)}`);
  const stdout = fs.fstatSync(1);
  if (stdout.dev !== stdin.dev || stdout.ino !== stdin.ino) throw new Error(`${NEEDS}; stdout is not the socket on stdin`);
  const info = socketInfo(0);
  if (!info.stream || info.listening || info.family === 'other') {
    throw new Error(`${NEEDS}; stdin is ${info.listening ? 'a listening socket (vblk takes those by socket activation, LISTEN_FDS)' : 'not a stream socket'}`);
  }
  const socket = new net.Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
  const devNull = fs.openSync('/dev/null', 'w');
  duplicateOnto(devNull, 1);
  fs.closeSync(devNull);
  return { socket, endpoint: { kind: 'inherited', fd: 0, name: 'stdio', family: info.family === 'unix' ? 'unix' : 'tcp', path: null } };
}
