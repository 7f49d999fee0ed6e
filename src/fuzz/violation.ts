// A server behaving against the protocol. Thrown from inside a property
// so fast-check shrinks the sequence that led to it; `rule` names the
// rule so one finding is reported once however often it recurs.

import type { Level } from './model.js';

export class Violation extends Error {
  constructor(
    readonly level: Level | 'CRASH',
    readonly rule: string,
    readonly detail: string,
  ) {
    super(`${level}: ${rule}: ${detail}`);
    this.name = 'Violation';
  }
}

export function isViolation(err: unknown): err is Violation {
  return err instanceof Violation;
}
