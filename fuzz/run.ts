// A small coverage-guided fuzzer for the parsers (fuzz/targets.ts),
// guided by V8's own block coverage through node:inspector: after each
// input it takes the precise coverage of the target's files (which also
// resets the counters), and an input that reaches a block no earlier
// input reached joins the corpus. Inputs are mutated libFuzzer-style:
// bit flips, interesting integers, inserts, deletes, copies and splices
// with other corpus entries. A throw is a crash: the input is saved under
// fuzz/crashes/ and the run exits 1.
//
// Jazzer.js was the first choice; its 4.x prebuilt addon needs glibc
// 2.38 (Debian 12 has 2.36) and 2.x downloads its binary at install, so
// it cannot install here from npm alone.
//
//   npm run fuzz -- --seconds 600 [--target NAME] [--seed N] [--no-save]

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { TARGETS, type Target } from './targets.js';

const here = path.dirname(fileURLToPath(import.meta.url)); // dist/fuzz
const ROOT = path.resolve(here, '../..');
const CORPUS = path.join(ROOT, 'fuzz/corpus');
const CRASHES = path.join(ROOT, 'fuzz/crashes');
const MAX_LEN = 4096;

interface CoverageRange {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface ScriptCoverage {
  url: string;
  functions: { ranges: CoverageRange[] }[];
}

class Coverage {
  private readonly session = new Session();

  constructor() {
    this.session.connect();
    this.post('Profiler.enable');
    this.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  }

  private post(method: string, params?: object): unknown {
    let out: unknown;
    let error: Error | null = null;
    // The in-process session answers synchronously.
    this.session.post(method, params ?? {}, (err, res) => {
      error = err;
      out = res;
    });
    if (error) throw error;
    return out;
  }

  /** Nested block ranges ever reported, per function. */
  private readonly blocks = new Map<string, Set<string>>();

  /**
   * Features of what ran since the last call, in scripts whose URL ends
   * with one of `files`: each block run, with its count in buckets
   * (1, 2, 3, 4-7, 8-15, ...). V8 lists a nested block only where its
   * count differs from the enclosing range, so a block of a function
   * that ran, and that is not listed this time, ran as often as the
   * function did.
   */
  take(files: string[]): string[] {
    const res = this.post('Profiler.takePreciseCoverage') as { result: ScriptCoverage[] };
    const keys: string[] = [];
    const bucket = (n: number): number => (n < 4 ? n : 31 - Math.clz32(n));
    for (const s of res.result) {
      const file = files.find((f) => s.url.endsWith(f));
      if (!file) continue;
      for (const fn of s.functions) {
        const [whole, ...nested] = fn.ranges;
        if (!whole || whole.count === 0) continue;
        const id = `${file}:${whole.startOffset}`;
        keys.push(`${id}:${bucket(whole.count)}`);
        let known = this.blocks.get(id);
        if (!known) this.blocks.set(id, (known = new Set()));
        const listed = new Set<string>();
        for (const r of nested) {
          const block = `${r.startOffset}-${r.endOffset}`;
          known.add(block);
          listed.add(block);
          if (r.count > 0) keys.push(`${id}/${block}:${bucket(r.count)}`);
        }
        for (const block of known) if (!listed.has(block)) keys.push(`${id}/${block}:${bucket(whole.count)}`);
      }
    }
    return keys;
  }
}

/** xorshift32: a seeded random source so a run can be repeated. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

const INTERESTING_32 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x1000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 4096, 4097, 0x25609513, 0x49484156, 0x454f5054, 6, 7, 8, 10, 11];

function mutate(input: Buffer, corpus: Buffer[], rand: () => number): Buffer {
  let b = Buffer.from(input);
  const n = 1 + Math.floor(rand() * 4);
  const at = (len: number): number => Math.floor(rand() * Math.max(1, len));
  for (let i = 0; i < n; i++) {
    switch (Math.floor(rand() * 7)) {
      case 0:
        if (b.length) b[at(b.length)] ^= 1 << Math.floor(rand() * 8);
        break;
      case 1:
        if (b.length) b[at(b.length)] = Math.floor(rand() * 256);
        break;
      case 2:
        if (b.length >= 4) {
          const v = INTERESTING_32[Math.floor(rand() * INTERESTING_32.length)];
          b.writeUInt32BE(v >>> 0, at(b.length - 3));
        }
        break;
      case 3: {
        const p = at(b.length + 1);
        const ins = Buffer.alloc(1 + Math.floor(rand() * 16));
        for (let k = 0; k < ins.length; k++) ins[k] = Math.floor(rand() * 256);
        b = Buffer.concat([b.subarray(0, p), ins, b.subarray(p)]);
        break;
      }
      case 4: {
        const p = at(b.length);
        b = Buffer.concat([b.subarray(0, p), b.subarray(p + 1 + Math.floor(rand() * 16))]);
        break;
      }
      case 5: {
        const other = corpus[Math.floor(rand() * corpus.length)];
        if (other?.length) {
          const from = at(other.length);
          const piece = other.subarray(from, from + 1 + Math.floor(rand() * 64));
          const p = at(b.length + 1);
          b = Buffer.concat([b.subarray(0, p), piece, b.subarray(p)]);
        }
        break;
      }
      default: {
        const other = corpus[Math.floor(rand() * corpus.length)];
        if (other) b = Buffer.concat([b.subarray(0, at(b.length + 1)), other.subarray(at(other.length))]);
      }
    }
  }
  return b.length > MAX_LEN ? b.subarray(0, MAX_LEN) : b;
}

function hash(b: Buffer): string {
  return createHash('sha1').update(b).digest('hex');
}

function loadCorpus(target: Target): Buffer[] {
  const dir = path.join(CORPUS, target.name);
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .sort()
    .map((f) => fs.readFileSync(path.join(dir, f)));
}

interface RunResult {
  execs: number;
  corpus: number;
  added: number;
  features: number;
  crash: string | null;
}

function fuzzTarget(target: Target, cov: Coverage, ms: number, seed: number, save: boolean): RunResult {
  const rand = rng(seed);
  const seen = new Set<string>();
  const corpus: Buffer[] = [];
  const dir = path.join(CORPUS, target.name);
  let added = 0;
  let execs = 0;
  const exec = (input: Buffer): string | null => {
    cov.take(target.covers); // reset the counters
    execs++;
    try {
      target.run(input);
    } catch (err) {
      return (err as Error).stack ?? String(err);
    }
    return null;
  };
  const consider = (input: Buffer, isNew: boolean): string | null => {
    const crash = exec(input);
    if (crash) return crash;
    let fresh = false;
    for (const k of cov.take(target.covers)) {
      if (!seen.has(k)) {
        seen.add(k);
        fresh = true;
      }
    }
    if (fresh) {
      corpus.push(input);
      if (isNew && save) {
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, hash(input)), input);
        added++;
      }
    }
    return null;
  };
  for (const input of [Buffer.alloc(0), ...loadCorpus(target)]) {
    const crash = consider(input, false);
    if (crash) return report(input, crash);
  }
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    for (let i = 0; i < 200; i++) {
      const base = corpus[Math.floor(rand() * corpus.length)] ?? Buffer.alloc(0);
      const input = mutate(base, corpus, rand);
      const crash = consider(input, true);
      if (crash) return report(input, crash);
    }
  }
  return { execs, corpus: corpus.length, added, features: seen.size, crash: null };

  function report(input: Buffer, crash: string): RunResult {
    fs.mkdirSync(CRASHES, { recursive: true });
    const file = path.join(CRASHES, `${target.name}-${hash(input)}`);
    fs.writeFileSync(file, input);
    return { execs, corpus: corpus.length, added, features: seen.size, crash: `${crash}\ninput saved to ${path.relative(ROOT, file)}` };
  }
}

function main(): number {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string' },
      target: { type: 'string' },
      seed: { type: 'string' },
      'no-save': { type: 'boolean' },
      replay: { type: 'string' },
    },
  });
  const seconds = Number(values.seconds ?? 60);
  const seed = Number(values.seed ?? Math.floor(Math.random() * 0x7fffffff));
  const targets = values.target ? TARGETS.filter((t) => t.name === values.target) : TARGETS;
  if (!targets.length) {
    process.stderr.write(`unknown target; targets: ${TARGETS.map((t) => t.name).join(', ')}\n`);
    return 2;
  }
  if (values.replay) {
    const input = fs.readFileSync(values.replay);
    for (const t of targets) t.run(input);
    process.stdout.write(`${values.replay}: no crash\n`);
    return 0;
  }
  const cov = new Coverage();
  let failed = false;
  for (const t of targets) {
    const r = fuzzTarget(t, cov, (seconds * 1000) / targets.length, seed, !values['no-save']);
    process.stdout.write(
      `${t.name}: ${r.execs} inputs in ${Math.round(seconds / targets.length)} s, ${r.features} features (blocks × hit buckets), corpus ${r.corpus} (${r.added} new), seed ${seed}\n`,
    );
    if (r.crash) {
      process.stdout.write(`CRASH in ${t.name}:\n${r.crash}\n`);
      failed = true;
    }
  }
  return failed ? 1 : 0;
}

process.exit(main());
