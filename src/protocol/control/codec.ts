// The control socket's wire format, for labs that drive a running server
// (`vblk serve --control PATH`, `vblk ctl`). A frame is a 4-byte
// big-endian length, then that many bytes of one MessagePack value (maps
// as plain maps, no msgpackr records, so any MessagePack library reads
// them). A request is a map { id, command, args }; its response carries
// the same id and either { ok: true, result } or { ok: false, error:
// { code, message } }. Responses come in the order requests arrive.
// A frame longer than MAX_FRAME cannot be skipped safely (its length may
// be hostile): the reader reports it and the connection ends after the
// error response. A frame that holds bad MessagePack, or a value that is
// not a request, gets an error response (id null when none can be read)
// and the connection goes on.

import { Packr } from 'msgpackr';

/** The largest frame either side accepts, header excluded. */
export const MAX_FRAME = 1 << 20;

const HEADER = 4;

export type RequestId = number | string;

export interface ControlRequest {
  id: RequestId;
  command: string;
  args: Record<string, unknown>;
}

export type ControlErrorCode =
  /** The frame is not MessagePack, or not a request map. */
  | 'malformed'
  /** The frame is longer than MAX_FRAME. */
  | 'too-large'
  | 'unknown-command'
  /** An argument is missing, of the wrong type, or out of range. */
  | 'bad-argument'
  /** The thing named (export, filter, bitmap, snapshot) does not exist or is not there. */
  | 'not-found'
  /** The command was valid but could not be carried out. */
  | 'failed';

export type ControlResponse =
  | { id: RequestId; ok: true; result: unknown }
  | { id: RequestId | null; ok: false; error: { code: ControlErrorCode; message: string } };

export class ControlError extends Error {
  constructor(
    readonly code: ControlErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: true });

/** One value as a frame. */
export function encodeFrame(value: unknown): Buffer {
  const body = packr.pack(value);
  if (body.length > MAX_FRAME) throw new ControlError('too-large', `a ${body.length}-byte message is over the ${MAX_FRAME}-byte frame limit`);
  const header = Buffer.alloc(HEADER);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, body]);
}

/** Splits a byte stream into frame bodies; throws ControlError('too-large') for a frame over MAX_FRAME. */
export class FrameReader {
  private pending: Buffer[] = [];
  private buffered = 0;

  /** Bytes of an unfinished frame held back. */
  get partial(): number {
    return this.buffered;
  }

  push(chunk: Buffer): Buffer[] {
    this.pending.push(chunk);
    this.buffered += chunk.length;
    const frames: Buffer[] = [];
    while (this.buffered >= HEADER) {
      const data = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending);
      const length = data.readUInt32BE(0);
      if (length > MAX_FRAME) throw new ControlError('too-large', `a frame of ${length} bytes is over the ${MAX_FRAME}-byte limit`);
      if (data.length < HEADER + length) {
        this.pending = [data];
        break;
      }
      frames.push(data.subarray(HEADER, HEADER + length));
      const rest = data.subarray(HEADER + length);
      this.pending = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
    }
    return frames;
  }
}

/** The MessagePack value in a frame body; ControlError('malformed') when it is not one value. */
export function decodeValue(body: Buffer): unknown {
  try {
    return packr.unpack(body);
  } catch (err) {
    throw new ControlError('malformed', `not MessagePack: ${(err as Error).message}`);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value) && !(value instanceof Date);
}

/** The id of a value that looks like a request, or null: for an error response to a request that is otherwise bad. */
export function requestId(value: unknown): RequestId | null {
  if (!isRecord(value)) return null;
  const id = value.id;
  return (typeof id === 'number' && Number.isSafeInteger(id)) || (typeof id === 'string' && id.length <= 256) ? id : null;
}

/** A decoded value as a request; ControlError('malformed') says what is wrong with it. */
export function parseRequest(value: unknown): ControlRequest {
  if (!isRecord(value)) throw new ControlError('malformed', 'a request is a map { id, command, args }');
  const id = requestId(value);
  if (id === null) throw new ControlError('malformed', 'id must be an integer or a string of at most 256 characters');
  const { command, args } = value;
  if (typeof command !== 'string' || command.length === 0 || command.length > 64) throw new ControlError('malformed', 'command must be a string of 1 to 64 characters');
  if (args !== undefined && args !== null && !isRecord(args)) throw new ControlError('malformed', 'args must be a map');
  for (const key of Object.keys(value)) if (key !== 'id' && key !== 'command' && key !== 'args') throw new ControlError('malformed', `unknown request field '${key}'`);
  return { id, command, args: (args as Record<string, unknown> | undefined) ?? {} };
}

/** A response: throws nothing, whatever the result holds that MessagePack can carry. */
export function parseResponse(value: unknown): ControlResponse {
  if (!isRecord(value) || typeof value.ok !== 'boolean') throw new ControlError('malformed', 'a response is a map { id, ok, result | error }');
  const id = value.id === null ? null : requestId(value);
  if (value.ok) {
    if (id === null) throw new ControlError('malformed', 'a successful response has an id');
    return { id, ok: true, result: value.result };
  }
  const error = value.error;
  if (!isRecord(error) || typeof error.code !== 'string' || typeof error.message !== 'string') throw new ControlError('malformed', 'an error response has error { code, message }');
  return { id, ok: false, error: { code: error.code as ControlErrorCode, message: error.message } };
}
