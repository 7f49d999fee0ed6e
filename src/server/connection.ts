// What the server needs of a connection, whatever protocol it speaks, and
// of a front end that makes them. The server accepts sockets, counts and
// limits connections and runs the shutdown; a front end (server/nbd/,
// server/vhost-user/) owns each accepted socket from then on.

import type net from 'node:net';
import type { Logger } from 'pino';
import type { Address, Endpoint } from './listeners.js';

export interface Connection {
  /** Holds work the shutdown must let finish (NBD: in transmission; vhost-user: rings running). */
  readonly busy: boolean;
  start(): void;
  /** The server is shutting down: finish what is in flight, take nothing new, close when done. */
  beginShutdown(): void;
  /** Closes at once. */
  destroy(reason: string): void;
}

export interface FrontEnd {
  /** For the log: 'nbd' or 'vhost-user-blk'. */
  readonly protocol: string;
  /** Takes over an accepted socket; calls `closed` once the connection is gone. */
  connect(socket: net.Socket, endpoint: Endpoint, log: Logger, closed: (conn: Connection) => void): Connection;
  /** What clients connect to at a listener's address (NBD URIs, socket paths), for stdout. */
  addresses(address: Address): string[];
  /** At shutdown, once every connection is gone and before the exports close: stops what the front end runs besides them. */
  close?(): Promise<void>;
}
