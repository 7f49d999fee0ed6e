// The model-based property suite (fast-check's fc.commands): sequences of
// connects with handshake variants, requests (alone or pipelined),
// disconnects and abrupt closes over several connections at once, run
// against a live server and checked against the disk model and the
// protocol's rules (model.ts) and the reply checks (session.ts). A
// failure shrinks to a minimal sequence; runModelSuite returns it with
// the seed and path that replay it.

import fc from 'fast-check';
import { CMD, CMD_FLAG, META_BASE_ALLOCATION, STATE_ZERO } from '../protocol/nbd/constants.js';
import { optionRequest, rangeInside, nbdRequest, type ExportShape, type RequestCase } from './arbitraries.js';
import { DiskModel, errnoName, expectFor, flagList, commandLabel } from './model.js';
import { RawClient } from './nbd-client.js';
import { describeHandshake, describeRequests, PLAIN_HANDSHAKE, Session, type HandshakeVariant, type Outcome } from './session.js';
import type tls from 'node:tls';
import type { Endpoint } from '../client/uri.js';
import { isViolation, Violation } from './violation.js';

export interface SuiteOptions {
  endpoint: Endpoint;
  exportName: string;
  /** Send writes, trims and zeroes: only on an export that is scratch. */
  destructive: boolean;
  /** Connections open at once, at most. */
  connections?: number;
  /** How long any reply may take. */
  timeoutMs?: number;
  /** Whether the server still runs (a child process, say); checked after each failure. */
  alive?: () => boolean;
  /** Rules already reported: violations of these are ignored so others can surface. */
  ignoreRules?: Set<string>;
  /** Zero the export at the start of each run (small scratch exports): the model then knows every byte. */
  resetToZero?: boolean;
  /** Fuzz over TLS: STARTTLS with these options on every connection. */
  tls?: () => tls.ConnectionOptions;
  /**
   * Also connect with NBD_OPT_EXTENDED_HEADERS (half the connections) and
   * send what only they allow: 64-bit effect lengths, BLOCK_STATUS naming
   * contexts, payloads on commands that take none.
   */
  extended?: boolean;
}

/** What a first connection learnt about the export, which the generators need. */
export interface Probe {
  size: number;
  flags: number;
  structured: boolean;
  maxPayload: number;
}

export async function probe(endpoint: Endpoint, exportName: string, timeoutMs = 5000, tlsOptions?: () => tls.ConnectionOptions): Promise<Probe> {
  const s = await Session.open(endpoint, exportName, PLAIN_HANDSHAKE, { timeoutMs, tls: tlsOptions });
  const t = s!.terms;
  await s!.disconnect(timeoutMs).catch(() => undefined);
  return { size: t.size, flags: t.flags, structured: t.structured, maxPayload: t.maxPayload };
}

// --- model and real system ----------------------------------------------------

interface Model {
  open: boolean[];
}

class Real {
  readonly sessions: (Session | null)[];
  disk: DiskModel;
  readonly ignored: Violation[] = [];

  constructor(
    readonly opts: Required<Omit<SuiteOptions, 'alive' | 'ignoreRules' | 'tls'>> & Pick<SuiteOptions, 'alive' | 'ignoreRules' | 'tls'>,
    readonly size: number,
  ) {
    this.sessions = new Array<Session | null>(opts.connections).fill(null);
    this.disk = new DiskModel(size, false);
  }

  /** A violation of an ignored rule is recorded and the command carries on as if answered. */
  report(v: Violation): void {
    if (this.opts.ignoreRules?.has(v.rule)) this.ignored.push(v);
    else throw v;
  }

  closeAll(): void {
    for (const s of this.sessions) s?.close();
    this.sessions.fill(null);
  }

  /** After a failure: if the server is gone, that is the finding. */
  async diagnose(err: unknown, what: string): Promise<never> {
    const dead = this.opts.alive ? !this.opts.alive() : !(await reachable(this.opts.endpoint, this.opts.timeoutMs));
    if (dead) throw new Violation('CRASH', 'the server survives any request', `the server died after ${what}${isViolation(err) ? ` (${err.detail})` : ''}`);
    throw err;
  }
}

async function reachable(endpoint: Endpoint, timeoutMs: number): Promise<boolean> {
  await new Promise((r) => setTimeout(r, 50));
  try {
    const c = await RawClient.connect(endpoint, timeoutMs);
    c.timeoutMs = timeoutMs;
    await c.read(18);
    c.close();
    return true;
  } catch {
    return false;
  }
}

type Cmd = fc.AsyncCommand<Model, Real>;

class ConnectCmd implements Cmd {
  constructor(
    readonly slot: number,
    readonly variant: HandshakeVariant,
  ) {}
  check(m: Readonly<Model>): boolean {
    return !m.open[this.slot];
  }
  async run(m: Model, r: Real): Promise<void> {
    let s: Session | null;
    try {
      s = await Session.open(r.opts.endpoint, r.opts.exportName, this.variant, { timeoutMs: r.opts.timeoutMs, tls: r.opts.tls });
    } catch (err) {
      if (isViolation(err) && r.opts.ignoreRules?.has(err.rule)) {
        r.ignored.push(err);
        return;
      }
      return r.diagnose(err, `connecting with ${describeHandshake(this.variant)}`);
    }
    if (!s) return;
    if (s.terms.size !== r.size) {
      s.close();
      r.report(new Violation('MUST', 'the export size is the same on every connection', `${s.terms.size}, not ${r.size}`));
      return;
    }
    r.sessions[this.slot] = s;
    m.open[this.slot] = true;
  }
  toString(): string {
    return `connect#${this.slot}(${describeHandshake(this.variant)})`;
  }
}

class DisconnectCmd implements Cmd {
  constructor(
    readonly slot: number,
    readonly abrupt: boolean,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.open[this.slot];
  }
  async run(m: Model, r: Real): Promise<void> {
    const s = r.sessions[this.slot]!;
    r.sessions[this.slot] = null;
    m.open[this.slot] = false;
    if (this.abrupt) return s.close();
    try {
      await s.disconnect(r.opts.timeoutMs);
    } catch (err) {
      if (isViolation(err)) r.report(err);
      else throw err;
    }
  }
  toString(): string {
    return `${this.abrupt ? 'close' : 'disconnect'}#${this.slot}`;
  }
}

const MUTATING = new Set<number>([CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]);

function span(req: RequestCase): [number, number] {
  const off = Number(req.offset);
  return [off, off + req.length];
}

function overlaps(a: RequestCase, b: RequestCase): boolean {
  const [a0, a1] = span(a);
  const [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

class RequestCmd implements Cmd {
  constructor(
    readonly slot: number,
    readonly reqs: RequestCase[],
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.open[this.slot];
  }
  async run(m: Model, r: Real): Promise<void> {
    const s = r.sessions[this.slot]!;
    const reqs = this.reqs.map((q) => s.adapt({ ...q, cookie: s.nextCookie() }));
    let outcomes: Outcome[];
    try {
      outcomes = await s.exchange(reqs);
    } catch (err) {
      s.close();
      r.sessions[this.slot] = null;
      m.open[this.slot] = false;
      if (isViolation(err) && err.level !== 'CRASH') {
        // A request the protocol calls invalid may not justify a hang-up, but it is not a MUST.
        const invalid = reqs.some((q) => expectFor(q, s.terms).errno !== null);
        const v = invalid && err.rule === 'the server answers instead of closing' ? new Violation('SHOULD', 'invalid requests get an error, not a hang-up', err.detail) : err;
        try {
          r.report(v);
        } catch (e) {
          return r.diagnose(e, describeRequests(reqs));
        }
        // Whatever was written may or may not have landed.
        for (const q of reqs) if (MUTATING.has(q.type)) r.disk.forget(...rangeOf(q, r.size));
        return;
      }
      return r.diagnose(err, describeRequests(reqs));
    }
    reqs.forEach((q, i) => this.judge(r, s, reqs, q, outcomes[i]));
  }

  private judge(r: Real, s: Session, all: RequestCase[], q: RequestCase, o: Outcome): void {
    const exp = expectFor(q, s.terms);
    const got = o.errno;
    const racing = all.some((other) => other !== q && MUTATING.has(other.type) && overlaps(q, other));
    if (MUTATING.has(q.type) && exp.errno === null && !(q.type === CMD.TRIM && got === 0)) {
      // The model follows what the server says happened.
      const [start, length] = rangeOf(q, r.size);
      if (got !== 0 || racing) r.disk.forget(start, length);
      else if (q.type === CMD.WRITE) r.disk.write(start, q.payload!);
      else r.disk.zero(start, length);
    } else if (q.type === CMD.TRIM && got === 0) {
      r.disk.forget(...rangeOf(q, r.size));
    } else if (MUTATING.has(q.type) && got === 0) {
      // Accepted though invalid: whatever it did, the bytes it names are unknown now.
      r.disk.forget(...rangeOf(q, r.size));
    }
    if (exp.errno === null) {
      if (got !== 0 && !exp.alsoAccepted.includes(got)) {
        r.report(new Violation(exp.level, exp.rule, `${q.label} failed with ${errnoName(got)}`));
      }
    } else if (got === 0) {
      r.report(new Violation(exp.level, exp.rule, `${q.label} succeeded${exp.what ? ` (${exp.what})` : ''}`));
    } else if (got !== exp.errno && !exp.alsoAccepted.includes(got)) {
      r.report(new Violation('SHOULD', exp.rule, `${q.label} failed with ${errnoName(got)}`));
    }
    if (got !== 0 || racing) return;
    if (q.type === CMD.READ && o.data) {
      const bad = r.disk.checkRead(Number(q.offset), o.data);
      if (bad) {
        r.report(new Violation('MUST', 'reads return what was written', `byte ${bad.at} is 0x${bad.got.toString(16)}, expected 0x${bad.expected.toString(16)} (${q.label})`));
      }
    }
    if (q.type === CMD.BLOCK_STATUS && o.extents) {
      const base = s.terms.contexts.find((c) => c.name === META_BASE_ALLOCATION);
      const list = base ? o.extents.get(base.id) : undefined;
      let pos = Number(q.offset);
      for (const e of list ?? []) {
        const len = Math.min(e.length, r.size - pos);
        if (e.flags & STATE_ZERO && len > 0) {
          const at = r.disk.knownNonZero(pos, len);
          if (at !== null) {
            r.report(new Violation('MUST', 'extents agree with the data', `base:allocation says [${pos}, ${pos + len}) reads as zeroes, but byte ${at} is not (${q.label})`));
          }
        }
        pos += e.length;
      }
    }
  }

  toString(): string {
    return `request#${this.slot}(${describeRequests(this.reqs)})`;
  }
}

function rangeOf(q: RequestCase, size: number): [number, number] {
  const start = Math.min(size, Number(q.offset));
  return [start, Math.max(0, Math.min(size, start + q.length) - start)];
}

// --- generators -----------------------------------------------------------------

function handshakeVariant(shape: ExportShape, extended: boolean): fc.Arbitrary<HandshakeVariant> {
  // Junk options are those that cannot change what the handshake agrees.
  const junk = optionRequest(shape, { ending: false }).filter(
    (o) => ![4, 5, 8, 10, 11].includes(o.option) && !(o.option === 1 || o.option === 2 || o.option === 7),
  );
  return fc.record({
    clientFlags: fc.oneof({ weight: 12, arbitrary: fc.constantFrom(3, 1) }, { weight: 1, arbitrary: fc.integer({ min: 2, max: 31 }).map((b) => (3 | (1 << b)) >>> 0) }),
    structured: fc.boolean(),
    extended: extended ? fc.boolean() : fc.constant(false),
    meta: fc.constantFrom('none' as const, 'base' as const, 'all' as const),
    infoFirst: fc.boolean(),
    list: fc.boolean(),
    exportName: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    junk: fc.array(junk, { maxLength: 2 }),
  });
}

/** Contexts a BLOCK_STATUS may name (SET_META_CONTEXT numbers them from 1): some valid, some not. */
const contextChoice = fc.constantFrom<number[] | undefined>(undefined, undefined, [1], [1], [2], [1, 2], [2, 1], [3], [1, 1], []);

/** A valid request on a range inside the export, with flags that apply to it. */
function validRequest(shape: ExportShape, destructive: boolean): fc.Arbitrary<RequestCase> {
  const types = destructive
    ? [CMD.READ, CMD.READ, CMD.WRITE, CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES, CMD.FLUSH, CMD.BLOCK_STATUS, CMD.CACHE]
    : [CMD.READ, CMD.READ, CMD.FLUSH, CMD.BLOCK_STATUS, CMD.CACHE];
  const flagsFor: Record<number, number[]> = {
    [CMD.READ]: [0, CMD_FLAG.DF, CMD_FLAG.FUA],
    [CMD.WRITE]: [0, 0, CMD_FLAG.FUA],
    [CMD.TRIM]: [0, CMD_FLAG.FUA],
    [CMD.WRITE_ZEROES]: [0, CMD_FLAG.NO_HOLE, CMD_FLAG.FAST_ZERO, CMD_FLAG.NO_HOLE | CMD_FLAG.FUA, CMD_FLAG.FAST_ZERO | CMD_FLAG.NO_HOLE],
    [CMD.FLUSH]: [0],
    [CMD.BLOCK_STATUS]: [0, CMD_FLAG.REQ_ONE],
    [CMD.CACHE]: [0],
  };
  return fc
    .record({ type: fc.constantFrom(...types), range: rangeInside(shape, 64 << 10), pick: fc.nat(), fill: fc.integer({ min: 0, max: 255 }), seed: fc.nat() })
    .map(({ type, range, pick, fill, seed }) => {
      const options = flagsFor[type];
      const flags = options[pick % options.length];
      const { offset, length } = type === CMD.FLUSH ? { offset: 0, length: 0 } : range;
      let payload: Buffer | undefined;
      if (type === CMD.WRITE) {
        payload = Buffer.alloc(length, fill);
        // A little variety inside the payload, so misplaced bytes show.
        for (let i = 0; i < length; i += 509) payload[i] = (seed + i) & 0xff;
      }
      return { type, flags, offset, length, cookie: 0n, payload, label: `${commandLabel(type)} flags=${flagList(flags)} offset=${offset} length=${length}${payload ? ` fill=0x${fill.toString(16)}` : ''}` };
    });
}

/**
 * What extended headers add: BLOCK_STATUS naming contexts, and effect
 * lengths past 2^32 (past the end of a test export, so refused; a server
 * that cut them to 32 bits would act on them instead).
 */
function extendedRequest(shape: ExportShape, destructive: boolean): fc.Arbitrary<RequestCase> {
  const types = destructive ? [CMD.BLOCK_STATUS, CMD.TRIM, CMD.WRITE_ZEROES, CMD.CACHE] : [CMD.BLOCK_STATUS, CMD.CACHE];
  return fc
    .record({ type: fc.constantFrom(...types), range: rangeInside(shape, 64 << 10), wide: fc.boolean(), contextIds: contextChoice })
    .map(({ type, range, wide, contextIds }) => {
      const length = wide ? 2 ** 32 + range.length : range.length;
      const ids = type === CMD.BLOCK_STATUS ? contextIds : undefined;
      return { type, flags: 0, offset: range.offset, length, cookie: 0n, contextIds: ids, label: `${commandLabel(type)} offset=${range.offset} length=${length}${ids ? ` contexts=[${ids.join(',')}]` : ''}` };
    });
}

/** Anything: every command and flag, boundary offsets and lengths (writes only when destructive). */
function anyRequest(shape: ExportShape, destructive: boolean): fc.Arbitrary<RequestCase> {
  return nbdRequest(shape, { maxWritePayload: 64 << 10 }).filter(
    (q) => q.type !== CMD.DISC && (q.type !== CMD.WRITE || q.payload !== undefined) && (destructive || !MUTATING.has(q.type)),
  );
}

export function commandsArbitrary(shape: ExportShape, opts: { destructive: boolean; connections: number; extended?: boolean }): fc.Arbitrary<Iterable<Cmd>> {
  const extended = opts.extended ?? false;
  // Most traffic goes to the first connection, so sequences do not wait long for a connect.
  const slot = fc.oneof(
    { weight: 6, arbitrary: fc.constant(0) },
    { weight: 3, arbitrary: fc.integer({ min: 0, max: opts.connections - 1 }) },
  );
  const request = extended
    ? fc.oneof(
        { weight: 5, arbitrary: validRequest(shape, opts.destructive) },
        { weight: 2, arbitrary: anyRequest(shape, opts.destructive) },
        { weight: 2, arbitrary: extendedRequest(shape, opts.destructive) },
      )
    : fc.oneof({ weight: 5, arbitrary: validRequest(shape, opts.destructive) }, { weight: 2, arbitrary: anyRequest(shape, opts.destructive) });
  return fc.commands(
    [
      fc.tuple(slot, handshakeVariant(shape, extended)).map(([s, v]) => new ConnectCmd(s, v)),
      fc.tuple(slot, handshakeVariant(shape, extended)).map(([s, v]) => new ConnectCmd(s, v)),
      fc.tuple(slot, request).map(([s, q]) => new RequestCmd(s, [q])),
      fc.tuple(slot, request).map(([s, q]) => new RequestCmd(s, [q])),
      fc.tuple(slot, request).map(([s, q]) => new RequestCmd(s, [q])),
      fc.tuple(slot, fc.array(request, { minLength: 2, maxLength: 4 })).map(([s, qs]) => new RequestCmd(s, qs)),
      fc.tuple(slot, fc.boolean()).map(([s, abrupt]) => new DisconnectCmd(s, abrupt)),
    ],
    { maxCommands: 60, size: 'max' },
  );
}

// --- running it --------------------------------------------------------------

export interface SuiteRun {
  /** fast-check's options: numRuns, seed, path, interruptAfterTimeLimit... */
  params: fc.Parameters<[Iterable<Cmd>]>;
}

export interface Finding {
  violation: Violation;
  /** The shrunk sequence of commands, one per line. */
  reproduction: string[];
  seed: number;
  path: string;
}

export interface SuiteResult {
  runs: number;
  seed: number;
  finding: Finding | null;
  /** Violations of ignored rules seen on the way. */
  ignored: Violation[];
  interrupted: boolean;
}

export async function runModelSuite(opts: SuiteOptions, run: SuiteRun['params']): Promise<SuiteResult> {
  const full = { connections: 3, timeoutMs: 5000, resetToZero: false, extended: false, ...opts };
  const info = await probe(full.endpoint, full.exportName, full.timeoutMs, full.tls);
  const shape: ExportShape = { size: info.size, maxPayload: info.maxPayload, names: [full.exportName] };
  const ignored: Violation[] = [];
  let last = null as Violation | null;
  // Once the server died, nothing shorter can be tried: every later run
  // passes, so fast-check keeps the sequence that killed it.
  let dead = false;
  const property = fc.asyncProperty(commandsArbitrary(shape, { destructive: full.destructive, connections: full.connections, extended: full.extended }), async (cmds) => {
    if (dead) return;
    const real = new Real(full, info.size);
    try {
      if (full.resetToZero && full.destructive) {
        await zeroExport(full, info.size);
        real.disk = new DiskModel(info.size, true);
      }
      await fc.asyncModelRun(() => ({ model: { open: new Array<boolean>(full.connections).fill(false) }, real }), cmds);
    } catch (err) {
      if (isViolation(err)) last = err;
      if (isViolation(err) && err.level === 'CRASH') dead = true;
      throw err;
    } finally {
      real.closeAll();
      ignored.push(...real.ignored);
    }
  });
  const details = await fc.check(property, { ...run });
  const result: SuiteResult = { runs: details.numRuns, seed: details.seed, finding: null, ignored, interrupted: details.interrupted };
  if (details.failed && details.counterexample) {
    const violation = isViolation(details.errorInstance) ? details.errorInstance : last ?? new Violation('MUST', 'the suite runs', String(details.errorInstance));
    const ran = ranCommands(details.counterexample[0]);
    // A dead server cannot be asked again, so a crash is not shrunk: the
    // reproduction is the connection the last step used, and that step.
    const reproduction = violation.level === 'CRASH' ? lastStepAndItsConnect(ran) : ran;
    result.finding = { violation, reproduction, seed: details.seed, path: details.counterexamplePath ?? '' };
  } else if (details.failed) {
    throw details.errorInstance;
  }
  return result;
}

/** The commands of a counterexample that ran (fast-check's wrappers know), up to the failing one. */
function ranCommands(cmds: Iterable<Cmd>): string[] {
  const wrappers = [...cmds] as unknown as { hasRan?: boolean; toString(): string }[];
  const ran = wrappers.filter((w) => w.hasRan !== false);
  return ran.map((w) => w.toString());
}

function lastStepAndItsConnect(ran: string[]): string[] {
  const last = ran.at(-1);
  const slot = last && /#(\d+)\(/.exec(last)?.[1];
  if (!last || slot === undefined || last.startsWith('connect#')) return ran;
  const connect = [...ran].reverse().find((c) => c.startsWith(`connect#${slot}(`));
  return connect ? [connect, last] : ran;
}

async function zeroExport(opts: Required<Pick<SuiteOptions, 'endpoint' | 'exportName' | 'timeoutMs'>> & Pick<SuiteOptions, 'tls'>, size: number): Promise<void> {
  const s = (await Session.open(opts.endpoint, opts.exportName, { ...PLAIN_HANDSHAKE, meta: 'none' }, { timeoutMs: opts.timeoutMs, tls: opts.tls }))!;
  try {
    const step = 1 << 20;
    for (let off = 0; off < size; off += step) {
      const length = Math.min(step, size - off);
      const [o] = await s.exchange([{ type: CMD.WRITE, flags: 0, offset: off, length, cookie: s.nextCookie(), payload: Buffer.alloc(length), label: `reset: WRITE zeroes at ${off}` }]);
      if (o.errno) throw new Error(`could not reset the export: ${errnoName(o.errno)}`);
    }
  } finally {
    s.close();
  }
}
