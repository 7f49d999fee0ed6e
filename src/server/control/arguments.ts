// The arguments of a control request, checked one by one: each helper
// returns the value or throws ControlError('bad-argument') naming the key.

import { ControlError } from '../../protocol/control/codec.js';

export class Arguments {
  constructor(private readonly args: Record<string, unknown>) {}

  /** Fails on keys the command does not take, so a typo is not silently ignored. */
  only(...keys: string[]): this {
    for (const key of Object.keys(this.args)) {
      if (!keys.includes(key)) throw new ControlError('bad-argument', `unknown argument '${key}'${keys.length ? ` (takes ${keys.join(', ')})` : ' (takes none)'}`);
    }
    return this;
  }

  string(key: string): string {
    const value = this.optionalString(key);
    if (value === undefined) throw new ControlError('bad-argument', `${key} is required`);
    return value;
  }

  optionalString(key: string): string | undefined {
    const value = this.args[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'string' || value.length > 4096) throw new ControlError('bad-argument', `${key} must be a string of at most 4096 characters`);
    return value;
  }

  optionalInteger(key: string, min: number, max: number): number | undefined {
    const value = this.args[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      throw new ControlError('bad-argument', `${key} must be a whole number from ${min} to ${max}`);
    }
    return value;
  }

  optionalBoolean(key: string): boolean | undefined {
    const value = this.args[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'boolean') throw new ControlError('bad-argument', `${key} must be true or false`);
    return value;
  }

  optionalStrings(key: string): string[] | undefined {
    const value = this.args[key];
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value) || value.length > 64 || !value.every((v) => typeof v === 'string' && v.length <= 4096)) {
      throw new ControlError('bad-argument', `${key} must be a list of at most 64 strings`);
    }
    return value as string[];
  }
}
