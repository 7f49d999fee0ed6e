// The back end's view of the front end's memory regions: which regions a
// table may hold, and how a ring's user (front-end virtual) address
// becomes a guest-physical one. Regions are checked once, in bigints, and
// kept as numbers: every address and size of a region must stay within
// 2^53 - 1, which covers every real address space (user addresses below
// 2^57, guest-physical below 2^52) and lets the host and GuestMemory work
// in plain numbers. No two regions may overlap, in guest or user space,
// so a translation has exactly one answer.

import type { MemoryRegion } from './messages.js';

/** A region as the host maps it: `size` bytes of `fd` from `mmapOffset`. */
export interface GuestRegion {
  guestAddress: number;
  size: number;
  userAddress: number;
  mmapOffset: number;
}

const LIMIT = BigInt(Number.MAX_SAFE_INTEGER);

/** The region in numbers, or why it cannot be one. */
export function checkRegion(r: MemoryRegion): GuestRegion | string {
  if (r.size === 0n) return 'memory region of size 0';
  for (const [name, start] of [
    ['guest', r.guestAddress],
    ['user', r.userAddress],
    ['mmap offset', r.mmapOffset],
  ] as const) {
    if (start + r.size > LIMIT) return `memory region ${name} range 0x${start.toString(16)}+0x${r.size.toString(16)} ends past 2^53`;
  }
  return {
    guestAddress: Number(r.guestAddress),
    size: Number(r.size),
    userAddress: Number(r.userAddress),
    mmapOffset: Number(r.mmapOffset),
  };
}

function intersects(a: number, aSize: number, b: number, bSize: number): boolean {
  return a < b + bSize && b < a + aSize;
}

/** Why `r` cannot join `table`, or null when it can. */
export function overlapProblem(table: readonly GuestRegion[], r: GuestRegion): string | null {
  for (const o of table) {
    if (intersects(o.guestAddress, o.size, r.guestAddress, r.size)) {
      return `memory region at guest 0x${r.guestAddress.toString(16)} overlaps the one at guest 0x${o.guestAddress.toString(16)}`;
    }
    if (intersects(o.userAddress, o.size, r.userAddress, r.size)) {
      return `memory region at user 0x${r.userAddress.toString(16)} overlaps the one at user 0x${o.userAddress.toString(16)}`;
    }
  }
  return null;
}

/** Why the regions cannot form a table, or null when they can. */
export function tableProblem(regions: readonly GuestRegion[]): string | null {
  for (let i = 1; i < regions.length; i++) {
    const problem = overlapProblem(regions.slice(0, i), regions[i]!);
    if (problem) return problem;
  }
  return null;
}

/** The index of the region with the same guest address, user address and size (the mmap offset does not count). */
export function findRegion(table: readonly GuestRegion[], r: GuestRegion): number {
  return table.findIndex((o) => o.guestAddress === r.guestAddress && o.userAddress === r.userAddress && o.size === r.size);
}

/** The guest-physical address of user range [uva, uva + length) when one region holds all of it, else null. */
export function userToGuest(table: readonly GuestRegion[], uva: bigint, length: number): number | null {
  for (const r of table) {
    const start = BigInt(r.userAddress);
    if (uva >= start && uva + BigInt(length) <= start + BigInt(r.size)) return r.guestAddress + Number(uva - start);
  }
  return null;
}
