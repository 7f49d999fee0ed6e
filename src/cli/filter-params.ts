// The key=value,... part of --filter NAME[:key=value,...] and the value
// types filters share. Every mistake is a UsageError that names the
// filter as the user wrote it, so it reads well on the command line and
// from the control socket alike.

import { UsageError } from './command.js';
import { parseSize } from './size.js';

/** A filter's parameters by key, each given once; `what` is the whole --filter text, for messages. */
export class FilterParams {
  private readonly values = new Map<string, string>();

  constructor(
    text: string,
    readonly what: string,
  ) {
    if (!text) return;
    for (const pair of text.split(',')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) throw this.error(`'${pair}' is not key=value`);
      const key = pair.slice(0, eq);
      if (this.values.has(key)) throw this.error(`${key} is given twice`);
      this.values.set(key, pair.slice(eq + 1));
    }
  }

  error(message: string): UsageError {
    return new UsageError(`--filter ${this.what}: ${message}`);
  }

  /** Every key and its value, in the order given. */
  entries(): [string, string][] {
    return [...this.values];
  }

  unknown(key: string): UsageError {
    return this.error(`unknown key '${key}' (see 'vblk serve --help')`);
  }

  count(key: string, text: string): number {
    const n = Number(text);
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) throw this.error(`${key} must be a whole number, not '${text}'`);
    return n;
  }

  size(key: string, text: string): number {
    try {
      return parseSize(text);
    } catch (err) {
      throw this.error(`${key}: ${(err as Error).message}`);
    }
  }

  /** A probability: 0 to 1, or 0% to 100%. */
  probability(key: string, text: string): number {
    const percent = text.endsWith('%');
    const n = Number(percent ? text.slice(0, -1) : text) / (percent ? 100 : 1);
    if (!/^\d+(\.\d+)?%?$/.test(text) || !(n >= 0 && n <= 1)) throw this.error(`${key} must be 0 to 1 or 0% to 100%, not '${text}'`);
    return n;
  }

  /** A duration in milliseconds: 5ms, 200us, 1s, 0.5s; a bare number is seconds (nbdkit's SECS). */
  duration(key: string, text: string): number {
    const m = /^(\d+(?:\.\d+)?)(s|ms|us)?$/.exec(text);
    if (!m) throw this.error(`${key} must be a duration such as 5ms, 200us, 1s or 0.5 (seconds), not '${text}'`);
    return Number(m[1]) * { s: 1000, ms: 1, us: 0.001 }[(m[2] ?? 's') as 's' | 'ms' | 'us'];
  }
}
