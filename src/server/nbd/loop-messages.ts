// What the main event loop and a connection loop (a worker thread, see
// loops.ts) say to each other. Plain data only: everything here crosses
// postMessage, so an export is named, not passed, and a socket goes as a
// descriptor number (threads share the process's descriptor table).

import type { RawShare } from '../../device/images/raw.js';
import type { Agreement } from '../../protocol/nbd/handshake.js';
import type { SessionLimits } from './transmission-session.js';

/** One export a loop can serve: a raw image's descriptors, shared. */
export interface LoopExport {
  name: string;
  description: string;
  share: RawShare;
}

/** What a connection loop is started with (its workerData). */
export interface LoopInit {
  /** 1, 2, ...: the main loop is 0. For the log. */
  loop: number;
  exports: LoopExport[];
  /** The engine the main loop chose (uring, threads, ...): every loop runs its own of that kind. */
  engine: string;
  limits: SessionLimits;
  pollUs: number;
  /** --send-file */
  sendFile: boolean;
  logLevel: string;
}

/** An agreement as it is posted: the export by name (the loop has its own view of it). */
export type PostedAgreement = Omit<Agreement, 'export'> & { exportName: string };

export type ToLoop =
  | {
      type: 'serve';
      id: number;
      /** A duplicate of the socket's descriptor, the loop's to close. */
      fd: number;
      /** The reply to GO (or EXPORT_NAME's), not yet sent: the loop sends it first. */
      reply: Uint8Array;
      /** What the client sent after GO that the main loop had already read. */
      input: Uint8Array;
      agreement: PostedAgreement;
      /** The connection's log bindings on the main loop ({ conn: N }). */
      bindings: Record<string, unknown>;
    }
  | { type: 'shutdown'; id: number }
  | { type: 'destroy'; id: number; reason: string }
  /** Every connection is gone: wait for the devices, free the engine and exit. */
  | { type: 'close' };

/** 'idle': no connection for a second; the main loop may tell it to close. */
export type FromLoop = { type: 'ready' } | { type: 'closed'; id: number } | { type: 'idle' };
