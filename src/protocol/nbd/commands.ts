// Turns a decoded NBD request header into the device Request, after the
// checks that belong to the protocol: unknown commands, flags that are
// unknown, do not apply to the command or were not advertised, and
// commands the handshake did not enable. Range, size and read-only checks
// belong to the gateway, which applies them to every front end alike.
//
// With extended headers a request's length is an effect length of up to
// 64 bits, except under NBD_CMD_FLAG_PAYLOAD_LEN, where it counts the
// payload that follows: WRITE must carry the flag; BLOCK_STATUS may, and
// its payload then names the effect length and the contexts to answer.

import type { Request } from '../../device/types.js';
import { CMD, CMD_FLAG, NBD_ERR, TF } from './constants.js';
import type { MetaContext } from './handshake.js';
import { isMalformed } from './handshake-codec.js';
import { decodeBlockStatusPayload, type RequestHeader } from './transmission-codec.js';

/** What the handshake settled that decides which requests are valid. */
export interface TransmissionTerms {
  flags: number;
  structuredReplies: boolean;
  extendedHeaders: boolean;
  metaContextCount: number;
}

export type Refusal = { errno: number; message: string };
export type Checked = { request: Request } | Refusal;

/** Whole names, made once: a request's name is a key in the connection's counts. */
const COMMAND_NAMES: Record<number, string> = {
  [CMD.READ]: 'NBD_CMD_READ',
  [CMD.WRITE]: 'NBD_CMD_WRITE',
  [CMD.DISC]: 'NBD_CMD_DISC',
  [CMD.FLUSH]: 'NBD_CMD_FLUSH',
  [CMD.TRIM]: 'NBD_CMD_TRIM',
  [CMD.CACHE]: 'NBD_CMD_CACHE',
  [CMD.WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES',
  [CMD.BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
};

export function commandName(type: number): string {
  return COMMAND_NAMES[type] ?? `command ${type}`;
}

const OPS: Record<number, Request['op']> = {
  [CMD.READ]: 'read',
  [CMD.WRITE]: 'write',
  [CMD.FLUSH]: 'flush',
  [CMD.TRIM]: 'trim',
  [CMD.CACHE]: 'cache',
  [CMD.WRITE_ZEROES]: 'writeZeroes',
  [CMD.BLOCK_STATUS]: 'blockStatus',
};

/** Flags each command accepts, besides FUA which every command accepts. */
const COMMAND_FLAGS: Record<number, number> = {
  [CMD.READ]: CMD_FLAG.DF,
  [CMD.WRITE]: 0,
  [CMD.FLUSH]: 0,
  [CMD.TRIM]: 0,
  [CMD.CACHE]: 0,
  [CMD.WRITE_ZEROES]: CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO,
  [CMD.BLOCK_STATUS]: CMD_FLAG.REQ_ONE,
};

/** Transmission flag that must have been advertised for a command flag. */
const FLAG_NEEDS: [number, number, string][] = [
  [CMD_FLAG.FUA, TF.SEND_FUA, 'FUA'],
  [CMD_FLAG.DF, TF.SEND_DF, 'DF'],
  [CMD_FLAG.FAST_ZERO, TF.SEND_FAST_ZERO, 'FAST_ZERO'],
];

/** Transmission flag that must have been advertised for a command. */
const COMMAND_NEEDS: Record<number, number> = {
  [CMD.FLUSH]: TF.SEND_FLUSH,
  [CMD.TRIM]: TF.SEND_TRIM,
  [CMD.CACHE]: TF.SEND_CACHE,
  [CMD.WRITE_ZEROES]: TF.SEND_WRITE_ZEROES,
};

function invalid(message: string): Refusal {
  return { errno: NBD_ERR.EINVAL, message };
}

/**
 * Checks a request header. With extended headers and PAYLOAD_LEN on a
 * BLOCK_STATUS, `h.length` must already be the effect length from the
 * payload (see blockStatusPayload).
 */
export function checkRequest(h: RequestHeader, terms: TransmissionTerms): Checked {
  const op = OPS[h.type];
  if (op === undefined) return invalid(`unknown command ${h.type}`);
  const name = commandName(h.type);
  const payloadLen = terms.extendedHeaders ? CMD_FLAG.PAYLOAD_LEN : 0;
  const stray = h.flags & ~(CMD_FLAG.FUA | payloadLen | COMMAND_FLAGS[h.type]);
  if (stray) return invalid(`flags 0x${stray.toString(16)} are not valid on ${name}`);
  if (terms.extendedHeaders) {
    const hasPayload = (h.flags & CMD_FLAG.PAYLOAD_LEN) !== 0;
    if (op === 'write' && !hasPayload) return invalid('NBD_CMD_WRITE needs NBD_CMD_FLAG_PAYLOAD_LEN with extended headers');
    if (hasPayload && op !== 'write' && !(op === 'blockStatus' && terms.flags & TF.BLOCK_STATUS_PAYLOAD)) {
      return invalid(`${name} takes no payload`);
    }
  }
  for (const [flag, needs, flagName] of FLAG_NEEDS) {
    if (h.flags & flag && !(terms.flags & needs)) return invalid(`${flagName} was not advertised`);
  }
  const readOnly = (terms.flags & TF.READ_ONLY) !== 0;
  const needs = COMMAND_NEEDS[h.type];
  // Writes to a read-only export go on to the gateway, which answers EPERM.
  if (needs && !(terms.flags & needs) && !(readOnly && op !== 'flush' && op !== 'cache')) {
    return invalid(`${name} was not advertised`);
  }
  if (op === 'blockStatus' && terms.metaContextCount === 0) {
    return invalid('NBD_CMD_BLOCK_STATUS without a negotiated metadata context');
  }
  if (op === 'flush' && (h.offset !== 0 || h.length !== 0)) {
    return invalid('NBD_CMD_FLUSH must have offset and length zero');
  }
  return {
    request: {
      op,
      offset: h.offset,
      length: h.length,
      fua: (h.flags & CMD_FLAG.FUA) !== 0,
      noHole: (h.flags & CMD_FLAG.NO_HOLE) !== 0,
      fastZero: (h.flags & CMD_FLAG.FAST_ZERO) !== 0,
      reqOne: (h.flags & CMD_FLAG.REQ_ONE) !== 0,
      df: !terms.structuredReplies || (h.flags & CMD_FLAG.DF) !== 0,
    },
  };
}

/**
 * The payload of a BLOCK_STATUS sent with PAYLOAD_LEN: its effect length
 * and the negotiated contexts it names, each once.
 */
export function blockStatusPayload(payload: Buffer, negotiated: MetaContext[]): { length: number; contexts: MetaContext[] } | Refusal {
  const decoded = decodeBlockStatusPayload(payload);
  if (isMalformed(decoded)) return invalid(decoded.malformed);
  const contexts: MetaContext[] = [];
  for (const id of decoded.contextIds) {
    const c = negotiated.find((m) => m.id === id);
    if (!c) return invalid(`metadata context ${id} was not negotiated`);
    if (contexts.includes(c)) return invalid(`metadata context ${id} named twice`);
    contexts.push(c);
  }
  return { length: decoded.length, contexts };
}

/** Transmission flags for an export with these capabilities. */
export function transmissionFlags(
  caps: { readOnly: boolean; trim: boolean; fastZero: boolean; cache: boolean; multiConn: boolean },
  structuredReplies: boolean,
  extendedHeaders = false,
): number {
  let flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA;
  if (caps.readOnly) flags |= TF.READ_ONLY;
  else {
    flags |= TF.SEND_WRITE_ZEROES;
    if (caps.trim) flags |= TF.SEND_TRIM;
    if (caps.fastZero) flags |= TF.SEND_FAST_ZERO;
  }
  if (caps.cache) flags |= TF.SEND_CACHE;
  if (caps.multiConn) flags |= TF.CAN_MULTI_CONN;
  if (structuredReplies || extendedHeaders) flags |= TF.SEND_DF;
  if (extendedHeaders) flags |= TF.BLOCK_STATUS_PAYLOAD;
  return flags;
}
