// The journal's on-disk format: what the journal filter appends and what
// `vblk journal` reads. It lives under device/ beside the filter that
// writes it (it is a file format of the device layer, not a wire protocol,
// and cli/ reads it from below). Pure functions over Buffers, no I/O.
//
// A journal is a run of frames: u32 big-endian payload length, u32 crc32
// of the payload, then the payload, one msgpack map (records off, so each
// frame decodes on its own with no shared structure table: a reader can
// start anywhere a frame starts and a torn frame spoils nothing else).
// The first frame is the header. A crash mid-append leaves a short or
// garbled last frame; the reader stops at the last whole frame whose
// checksum holds and says why it stopped.

import { crc32 } from 'node:zlib';
import { Packr } from 'msgpackr';

export const JOURNAL_FORMAT = 'vblk-journal';
export const JOURNAL_VERSION = 1;
const FRAME_HEAD = 8;
/** Largest payload a reader accepts: a 32 MiB write and its fields, with room to spare. */
export const MAX_FRAME = 64 * 1024 * 1024;

export interface HeaderEntry {
  type: 'header';
  format: typeof JOURNAL_FORMAT;
  version: number;
  /** Size of the device in bytes when the journal began. */
  size: number;
  /** When the journal began, ms since the epoch. */
  created: number;
}
export interface WriteEntry {
  type: 'write';
  seq: number;
  offset: number;
  data: Buffer;
  fua: boolean;
}
/** A trim or a write of zeroes over a range. */
export interface RangeEntry {
  type: 'trim' | 'zero';
  seq: number;
  offset: number;
  length: number;
  fua: boolean;
  /** writeZeroes: the range stays allocated. */
  noHole: boolean;
}
export interface FlushEntry {
  type: 'flush';
  seq: number;
  /** The highest seq logged before the flush began: every entry up to it is durable once the flush completed. */
  covers: number;
}
export interface MarkEntry {
  type: 'mark';
  seq: number;
  name: string;
}
export type DataEntry = WriteEntry | RangeEntry;
export type JournalEntry = WriteEntry | RangeEntry | FlushEntry | MarkEntry;

const packr = new Packr({ useRecords: false, moreTypes: false });

/** One frame holding `entry`. */
export function encodeFrame(entry: HeaderEntry | JournalEntry): Buffer {
  const payload = packr.pack(entry);
  const frame = Buffer.allocUnsafe(FRAME_HEAD + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.writeUInt32BE(crc32(payload), 4);
  payload.copy(frame, FRAME_HEAD);
  return frame;
}

export interface DecodedJournal {
  header: HeaderEntry;
  entries: JournalEntry[];
  /** Bytes of whole frames read; anything after it was not read. */
  end: number;
  /** Why reading stopped before the end of the buffer (a torn or garbled tail), or null. */
  stopped: string | null;
}

export class JournalFormatError extends Error {}

const isNat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** The entry a payload holds, or a reason it holds none. */
function entryOf(value: unknown): HeaderEntry | JournalEntry | string {
  if (typeof value !== 'object' || value === null) return 'not a map';
  const e = value as Record<string, unknown>;
  switch (e.type) {
    case 'header':
      if (e.format !== JOURNAL_FORMAT || !isNat(e.version) || !isNat(e.size) || !isNat(e.created)) return 'a bad header';
      return e as unknown as HeaderEntry;
    case 'write':
      if (!isNat(e.seq) || !isNat(e.offset) || !(e.data instanceof Uint8Array) || typeof e.fua !== 'boolean') return 'a bad write entry';
      if (!Buffer.isBuffer(e.data)) e.data = Buffer.from(e.data.buffer, e.data.byteOffset, e.data.length);
      return e as unknown as WriteEntry;
    case 'trim':
    case 'zero':
      if (!isNat(e.seq) || !isNat(e.offset) || !isNat(e.length) || typeof e.fua !== 'boolean' || typeof e.noHole !== 'boolean') return `a bad ${e.type} entry`;
      return e as unknown as RangeEntry;
    case 'flush':
      if (!isNat(e.seq) || !isNat(e.covers)) return 'a bad flush entry';
      return e as unknown as FlushEntry;
    case 'mark':
      if (!isNat(e.seq) || typeof e.name !== 'string') return 'a bad mark entry';
      return e as unknown as MarkEntry;
    default:
      return `an entry of unknown type ${JSON.stringify(e.type)}`;
  }
}

/**
 * Reads the frames of a whole journal. Throws JournalFormatError when the
 * first frame is not a header of a version this code reads; otherwise
 * returns every whole entry and stops at the first frame that is short,
 * fails its checksum or does not decode.
 */
export function decodeJournal(buf: Buffer): DecodedJournal {
  let pos = 0;
  let stopped: string | null = null;
  let header: HeaderEntry | null = null;
  const entries: JournalEntry[] = [];
  let lastSeq = -1;
  while (pos < buf.length) {
    const at = `frame at byte ${pos}`;
    if (buf.length - pos < FRAME_HEAD) {
      stopped = `${at}: torn (${buf.length - pos} bytes of its head)`;
      break;
    }
    const length = buf.readUInt32BE(pos);
    if (length > MAX_FRAME) {
      stopped = `${at}: length ${length} is past the largest frame`;
      break;
    }
    if (buf.length - pos - FRAME_HEAD < length) {
      stopped = `${at}: torn (${buf.length - pos - FRAME_HEAD} of ${length} bytes)`;
      break;
    }
    const payload = buf.subarray(pos + FRAME_HEAD, pos + FRAME_HEAD + length);
    if (crc32(payload) !== buf.readUInt32BE(pos + 4)) {
      stopped = `${at}: checksum does not match`;
      break;
    }
    let entry: HeaderEntry | JournalEntry | string;
    try {
      entry = entryOf(packr.unpack(payload));
    } catch {
      entry = 'no msgpack value';
    }
    if (typeof entry === 'string') {
      stopped = `${at}: ${entry}`;
      break;
    }
    if (header === null) {
      if (entry.type !== 'header') throw new JournalFormatError('not a vblk journal: it does not begin with a header');
      if (entry.version !== JOURNAL_VERSION) throw new JournalFormatError(`journal format version ${entry.version}; this vblk reads ${JOURNAL_VERSION}`);
      header = entry;
    } else {
      if (entry.type === 'header' || entry.seq <= lastSeq) {
        stopped = `${at}: ${entry.type === 'header' ? 'a second header' : `seq ${entry.seq} after ${lastSeq}`}`;
        break;
      }
      lastSeq = entry.seq;
      entries.push(entry);
    }
    pos += FRAME_HEAD + length;
  }
  if (header === null) throw new JournalFormatError(`not a vblk journal: ${stopped ?? 'it is empty'}`);
  return { header, entries, end: pos, stopped };
}
