// The model the property suites check a server against: what the disk
// holds, as far as the client can know it, and what the protocol says
// each request must get. Pure: no sockets.
//
// The disk model keeps 4 KiB pages of bytes with a "known" mask. Bytes
// the client wrote (or zeroed) are known; TRIM, a failed write or writes
// racing each other make bytes unknown; a read of unknown bytes teaches
// the model what they hold. On a scratch export made for the run the
// whole disk starts known (zeroes); on someone else's export it starts
// unknown and is learnt.

import { CMD, CMD_FLAG, NBD_ERR, TF } from '../protocol/nbd/constants.js';

const PAGE = 4096;

interface Page {
  data: Uint8Array;
  /** null: every byte known. */
  known: Uint8Array | null;
}

export class DiskModel {
  private readonly pages = new Map<number, Page>();

  constructor(
    readonly size: number,
    /** Whether bytes nobody wrote are known to be zero. */
    private readonly startsZero: boolean,
  ) {}

  private page(index: number, create: boolean): Page | null {
    let p = this.pages.get(index);
    if (!p && create) {
      p = { data: new Uint8Array(PAGE), known: this.startsZero ? null : new Uint8Array(PAGE) };
      this.pages.set(index, p);
    }
    return p ?? null;
  }

  private each(offset: number, length: number, fn: (p: Page | null, index: number, from: number, to: number, at: number) => void, create: boolean): void {
    const end = Math.min(this.size, offset + length);
    for (let pos = offset; pos < end; ) {
      const index = Math.floor(pos / PAGE);
      const from = pos - index * PAGE;
      const to = Math.min(PAGE, end - index * PAGE);
      fn(this.page(index, create), index, from, to, pos - offset);
      pos += to - from;
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.each(offset, data.length, (p, _i, from, to, at) => {
      p!.data.set(data.subarray(at, at + to - from), from);
      if (p!.known) {
        p!.known.fill(1, from, to);
        if (p!.known.every((k) => k === 1)) p!.known = null;
      }
    }, true);
  }

  zero(offset: number, length: number): void {
    this.each(offset, length, (p, i, from, to) => {
      if (from === 0 && to === PAGE && this.startsZero) {
        this.pages.delete(i);
        return;
      }
      const page = p ?? this.page(i, true)!;
      page.data.fill(0, from, to);
      if (page.known) {
        page.known.fill(1, from, to);
        if (page.known.every((k) => k === 1)) page.known = null;
      }
    }, false);
  }

  /** The bytes may now hold anything (trimmed, or a write that failed or raced). */
  forget(offset: number, length: number): void {
    this.each(offset, length, (p, i, from, to) => {
      const page = p ?? this.page(i, true)!;
      if (!page.known) page.known = new Uint8Array(PAGE).fill(1);
      page.known.fill(0, from, to);
    }, false);
  }

  /**
   * Compares what a read returned with what is known; returns the offset
   * of the first byte that disagrees (and what was expected), or null.
   * Then learns the bytes it did not know.
   */
  checkRead(offset: number, data: Uint8Array): { at: number; expected: number; got: number } | null {
    let bad: { at: number; expected: number; got: number } | null = null;
    this.each(offset, data.length, (p, _i, from, to, at) => {
      if (bad) return;
      for (let k = from; k < to; k++) {
        const known = !p ? this.startsZero : !p.known || p.known[k] === 1;
        if (!known) continue;
        const expected = p ? p.data[k] : 0;
        const got = data[at + k - from];
        if (expected !== got) {
          bad = { at: offset + at + k - from, expected, got };
          return;
        }
      }
    }, false);
    if (!bad) this.learn(offset, data);
    return bad;
  }

  private learn(offset: number, data: Uint8Array): void {
    this.each(offset, data.length, (p, i, from, to, at) => {
      if (!p && this.startsZero) return;
      const page = p ?? this.page(i, true)!;
      if (!page.known) return;
      page.data.set(data.subarray(at, at + to - from), from);
      page.known.fill(1, from, to);
      if (page.known.every((k) => k === 1)) page.known = null;
    }, false);
  }

  /** Whether any known byte in the range is not zero (a ZERO status there would be a lie). */
  knownNonZero(offset: number, length: number): number | null {
    let found: number | null = null;
    this.each(offset, length, (p, _i, from, to, at) => {
      if (found !== null || !p) return;
      for (let k = from; k < to; k++) {
        if ((!p.known || p.known[k] === 1) && p.data[k] !== 0) {
          found = offset + at + k - from;
          return;
        }
      }
    }, false);
    return found;
  }
}

// --- the protocol's rules for a request --------------------------------------

/** What the handshake left the client with. */
export interface Terms {
  size: number;
  flags: number;
  structured: boolean;
  /** NBD_OPT_EXTENDED_HEADERS agreed: 64-bit effect lengths, PAYLOAD_LEN. */
  extended?: boolean;
  /** Meta contexts selected: id and name. */
  contexts: { id: number; name: string }[];
  /** Largest payload the server said it takes (32 MiB when it did not say). */
  maxPayload: number;
  /** Whether the server said so (NBD_INFO_BLOCK_SIZE); if not, larger requests may still work. */
  maxPayloadAdvertised?: boolean;
}

export type Level = 'MUST' | 'SHOULD';

export interface Expectation {
  /** null: the request is valid and should succeed. */
  errno: number | null;
  /** Other error values accepted without a finding. */
  alsoAccepted: number[];
  /** What the rule is, for the report. */
  rule: string;
  /** How bad it is to answer something else. */
  level: Level;
  /** What in this request the rule is about, when the rule is general. */
  what?: string;
}

export interface RequestShape {
  type: number;
  flags: number;
  offset: number | bigint;
  /** The payload length under PAYLOAD_LEN, except for BLOCK_STATUS with contextIds: its effect length. */
  length: number;
  /** BLOCK_STATUS with PAYLOAD_LEN: the contexts its payload names. */
  contextIds?: number[];
}

const KNOWN_FLAGS = 0x3f;

/**
 * Flags each command may carry besides FUA. Written out from the spec
 * here rather than imported from protocol/nbd/commands.ts: a model that
 * shares the server's tables would share its mistakes.
 */
const COMMAND_FLAGS: Record<number, number> = {
  [CMD.READ]: CMD_FLAG.DF,
  [CMD.WRITE]: 0,
  [CMD.FLUSH]: 0,
  [CMD.TRIM]: 0,
  [CMD.CACHE]: 0,
  [CMD.WRITE_ZEROES]: CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO,
  [CMD.BLOCK_STATUS]: CMD_FLAG.REQ_ONE,
};

const NEEDS: Record<number, number> = {
  [CMD.FLUSH]: TF.SEND_FLUSH,
  [CMD.TRIM]: TF.SEND_TRIM,
  [CMD.CACHE]: TF.SEND_CACHE,
  [CMD.WRITE_ZEROES]: TF.SEND_WRITE_ZEROES,
};

function err(errno: number, rule: string, level: Level = 'SHOULD', alsoAccepted: number[] = [], what?: string): Expectation {
  return { errno, alsoAccepted, rule, level, ...(what ? { what } : {}) };
}

/**
 * What the protocol says a request must get, given the terms. The order
 * of the checks is the order a careful server applies them; where two
 * rules apply, either error is accepted.
 */
export function expectFor(r: RequestShape, t: Terms): Expectation {
  const offset = typeof r.offset === 'bigint' ? r.offset : BigInt(r.offset);
  const end = offset + BigInt(r.length);
  const size = BigInt(t.size);
  const readOnly = (t.flags & TF.READ_ONLY) !== 0;
  const mutating = r.type === CMD.WRITE || r.type === CMD.TRIM || r.type === CMD.WRITE_ZEROES;
  const name = commandLabel(r.type);
  if (!(r.type in COMMAND_FLAGS)) return err(NBD_ERR.EINVAL, `${name} is unknown: EINVAL`);
  if (r.flags & ~KNOWN_FLAGS) return err(NBD_ERR.EINVAL, 'undefined command flags: EINVAL');
  // PAYLOAD_LEN exists only with extended headers.
  const payloadLen = t.extended ? CMD_FLAG.PAYLOAD_LEN : 0;
  const stray = r.flags & ~(CMD_FLAG.FUA | payloadLen | COMMAND_FLAGS[r.type]);
  // Several errors may apply at once; a server may report any of them.
  const others: number[] = [];
  if (mutating && readOnly) others.push(NBD_ERR.EPERM);
  if (end > size && r.type !== CMD.FLUSH) others.push(NBD_ERR.EINVAL, NBD_ERR.ENOSPC);
  if (stray) return err(NBD_ERR.EINVAL, 'flags that do not apply to the command: EINVAL', 'SHOULD', others, `${flagList(stray)} on ${name}`);
  if (t.extended) {
    const hasPayload = (r.flags & CMD_FLAG.PAYLOAD_LEN) !== 0;
    if (r.type === CMD.WRITE && !hasPayload) return err(NBD_ERR.EINVAL, 'with extended headers WRITE carries PAYLOAD_LEN: EINVAL', 'SHOULD', others);
    if (hasPayload && r.type !== CMD.WRITE) {
      if (r.type !== CMD.BLOCK_STATUS || !(t.flags & TF.BLOCK_STATUS_PAYLOAD)) {
        return err(NBD_ERR.EINVAL, 'a payload the command does not take: consumed, then EINVAL', 'SHOULD', others, name);
      }
      const ids = r.contextIds ?? [];
      const known = ids.every((id) => t.contexts.some((c) => c.id === id));
      if (ids.length === 0 || !known || new Set(ids).size !== ids.length) {
        return err(NBD_ERR.EINVAL, 'BLOCK_STATUS naming no, unknown or duplicate contexts: EINVAL', 'MUST', others, `contexts [${ids.join(',')}]`);
      }
    }
  }
  if (r.flags & CMD_FLAG.FUA && !(t.flags & TF.SEND_FUA)) return err(NBD_ERR.EINVAL, 'flags not advertised: EINVAL', 'SHOULD', others, 'FUA');
  if (r.flags & CMD_FLAG.DF && !(t.flags & TF.SEND_DF)) return err(NBD_ERR.EINVAL, 'flags not advertised: EINVAL', 'SHOULD', others, 'DF');
  if (r.flags & CMD_FLAG.FAST_ZERO && !(t.flags & TF.SEND_FAST_ZERO)) {
    return err(NBD_ERR.EINVAL, 'flags not advertised: EINVAL', 'SHOULD', others, 'FAST_ZERO');
  }
  const needs = NEEDS[r.type];
  if (needs && !(t.flags & needs) && !(readOnly && mutating)) return err(NBD_ERR.EINVAL, 'commands not advertised: EINVAL', 'SHOULD', others, name);
  if (r.type === CMD.BLOCK_STATUS && t.contexts.length === 0) {
    return err(NBD_ERR.EINVAL, 'BLOCK_STATUS without a meta context: EINVAL', 'SHOULD', others);
  }
  if (mutating && readOnly) {
    const range = end > size ? [NBD_ERR.EINVAL, NBD_ERR.ENOSPC] : [];
    return err(NBD_ERR.EPERM, `${name} on a read-only export: EPERM`, 'MUST', range);
  }
  if (r.type === CMD.FLUSH) {
    if (offset !== 0n || r.length !== 0) return { errno: null, alsoAccepted: [NBD_ERR.EINVAL], rule: 'FLUSH with a range: succeed or EINVAL', level: 'SHOULD' };
    return { errno: null, alsoAccepted: [], rule: 'FLUSH succeeds', level: 'MUST' };
  }
  if (end > size) {
    const write = r.type === CMD.WRITE || r.type === CMD.WRITE_ZEROES;
    return write
      ? err(NBD_ERR.ENOSPC, `${name} past the end: ENOSPC`, 'SHOULD')
      : err(NBD_ERR.EINVAL, `${name} past the end: EINVAL`, 'SHOULD');
  }
  if ((r.type === CMD.READ || r.type === CMD.WRITE) && r.length > t.maxPayload) {
    if (!t.maxPayloadAdvertised) {
      // Without NBD_INFO_BLOCK_SIZE, 32 MiB is only what clients should stay under.
      return { errno: null, alsoAccepted: [NBD_ERR.EINVAL, NBD_ERR.EOVERFLOW, NBD_ERR.ENOMEM], rule: `${name} over 32 MiB: any answer but a hang-up`, level: 'SHOULD' };
    }
    return err(NBD_ERR.EINVAL, `${name} over the maximum payload: EINVAL`, 'SHOULD', [NBD_ERR.EOVERFLOW, NBD_ERR.ENOMEM]);
  }
  if (r.type === CMD.BLOCK_STATUS && r.length === 0) {
    return { errno: null, alsoAccepted: [NBD_ERR.EINVAL], rule: 'BLOCK_STATUS of zero bytes: EINVAL or an answer', level: 'SHOULD' };
  }
  const accepted: number[] = [];
  // Zero-length requests are unspecified: a server may refuse them with EINVAL (but not hang up).
  if (r.length === 0) accepted.push(NBD_ERR.EINVAL);
  // Past the maximum block size, commands without a payload may be refused
  // with EINVAL or EOVERFLOW where they would cost more than a maximum-sized one.
  if (r.length > t.maxPayload) accepted.push(NBD_ERR.EINVAL, NBD_ERR.EOVERFLOW);
  // FAST_ZERO may always be refused with ENOTSUP.
  if (r.type === CMD.WRITE_ZEROES && r.flags & CMD_FLAG.FAST_ZERO) accepted.push(NBD_ERR.ENOTSUP);
  // A DF read too large to send unfragmented may get EOVERFLOW.
  if (r.type === CMD.READ && r.flags & CMD_FLAG.DF && r.length > 64 << 10) accepted.push(NBD_ERR.EOVERFLOW);
  return { errno: null, alsoAccepted: accepted, rule: `${name} in range succeeds`, level: 'MUST' };
}

export function commandLabel(type: number): string {
  const entry = Object.entries(CMD).find(([, v]) => v === type);
  return entry ? `NBD_CMD_${entry[0]}` : `command ${type}`;
}

export function flagList(flags: number): string {
  const names = Object.entries(CMD_FLAG)
    .filter(([, bit]) => flags & bit)
    .map(([n]) => n);
  if (flags & ~KNOWN_FLAGS) names.push(`0x${(flags & ~KNOWN_FLAGS).toString(16)}`);
  return names.join('|') || '0';
}

export function errnoName(errno: number): string {
  const entry = Object.entries(NBD_ERR).find(([, v]) => v === errno);
  return entry ? entry[0] : errno === 0 ? 'OK' : `error ${errno}`;
}
