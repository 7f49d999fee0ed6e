// The hostile-bytes property: bring a connection into a handshake or
// transmission state with valid traffic, then send mutated or random
// bytes in random pieces and end the input. Whatever the bytes, the
// server must answer or close within a bounded time: it may never hang
// on a connection whose client has finished. Callers check the rest of
// the property around it (the server lives, its memory stays bounded,
// other connections keep working): see test/fuzz-hostile.test.ts.

import fc from 'fast-check';
import { CMD, OPT } from '../protocol/nbd/constants.js';
import { encodeClientFlags, encodeInfoRequest, encodeOption } from '../protocol/nbd/handshake-codec.js';
import {
  chunking,
  encodeRequestCase,
  mutatedBytes,
  optionFrame,
  requestFrame,
  splitBytes,
  type ExportShape,
} from './arbitraries.js';
import { RawClient } from './nbd-client.js';
import type { Endpoint } from '../client/uri.js';
import { Violation } from './violation.js';

export const HOSTILE_STATES = [
  'client-flags',
  'options',
  'options-structured',
  'mid-option',
  'transmission-simple',
  'transmission-structured',
  'mid-write',
] as const;
export type HostileState = (typeof HOSTILE_STATES)[number];

export interface HostileCase {
  state: HostileState;
  bytes: Buffer;
  /** Sizes of the writes the bytes are cut into. */
  pieces: number[];
}

export function describeHostile(c: HostileCase): string {
  return `${c.state}: ${c.bytes.length} bytes ${c.bytes.subarray(0, 48).toString('hex')}${c.bytes.length > 48 ? '…' : ''} in pieces [${c.pieces}]`;
}

/** Bytes that are valid in a state, for mutation. */
function validIn(state: HostileState, shape: ExportShape): fc.Arbitrary<Buffer> {
  const frames = (arb: fc.Arbitrary<{ bytes: Buffer }>): fc.Arbitrary<Buffer> =>
    fc.array(arb, { minLength: 1, maxLength: 4 }).map((fs) => Buffer.concat(fs.map((f) => f.bytes)));
  switch (state) {
    case 'client-flags':
      return fc.tuple(fc.integer({ min: 0, max: 3 }), frames(optionFrame(shape))).map(([f, rest]) => Buffer.concat([encodeClientFlags(f), rest]));
    case 'options':
    case 'options-structured':
    case 'mid-option':
      return frames(optionFrame(shape));
    default:
      return frames(requestFrame(shape));
  }
}

export function hostileCase(shape: ExportShape): fc.Arbitrary<HostileCase> {
  return fc.constantFrom(...HOSTILE_STATES).chain((state) =>
    fc.record({
      state: fc.constant(state),
      bytes: fc.oneof(
        { weight: 2, arbitrary: validIn(state, shape).chain((b) => mutatedBytes(b, 6)) },
        { weight: 1, arbitrary: validIn(state, shape) },
        { weight: 1, arbitrary: fc.uint8Array({ maxLength: 600 }).map((b) => Buffer.from(b)) },
      ),
      pieces: chunking,
    }),
  );
}

/** The valid traffic that leads into a state; the last frame may be left incomplete on purpose. */
function prefix(state: HostileState, exportName: string): Buffer[] {
  if (state === 'client-flags') return [];
  const flags = encodeClientFlags(3);
  if (state === 'options') return [flags];
  const structured = encodeOption(OPT.STRUCTURED_REPLY);
  if (state === 'options-structured') return [flags, structured];
  if (state === 'mid-option') {
    // An INFO option announced with 64 more bytes than it sends: the hostile bytes finish it.
    const payload = encodeInfoRequest({ name: exportName, requests: [] });
    const header = encodeOption(OPT.INFO, payload);
    header.writeUInt32BE(payload.length + 64, 12);
    return [flags, header];
  }
  const go = encodeOption(OPT.GO, encodeInfoRequest({ name: exportName, requests: [] }));
  if (state === 'transmission-simple') return [flags, go];
  if (state === 'transmission-structured') return [flags, structured, go];
  // mid-write: a WRITE of 4096 bytes whose payload has only begun.
  const write = encodeRequestCase({ type: CMD.WRITE, flags: 0, cookie: 1n, offset: 0, length: 4096, label: '' }).subarray(0, 28);
  return [flags, structured, go, write, Buffer.alloc(100, 0x5a)];
}

/**
 * Runs one hostile case on a new connection. Resolves once the server
 * closed; throws a Violation if it neither closes nor stops talking
 * within `timeoutMs` after the client ended its side.
 */
export async function runHostile(endpoint: Endpoint, exportName: string, c: HostileCase, opts: { timeoutMs: number }): Promise<void> {
  const client = await RawClient.connect(endpoint, opts.timeoutMs);
  try {
    client.send(...prefix(c.state, exportName));
    for (const piece of splitBytes(c.bytes, c.pieces)) {
      client.send(piece);
      await new Promise((r) => setImmediate(r));
    }
    client.socket.end();
    if (!(await client.closesWithin(opts.timeoutMs))) {
      throw new Violation('MUST', 'the server answers or closes in bounded time', `still open ${opts.timeoutMs} ms after the client ended: ${describeHostile(c)}`);
    }
  } finally {
    client.close();
  }
}
