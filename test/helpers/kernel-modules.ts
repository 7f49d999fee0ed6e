// Which kernel modules a guest must insmod, and in what order. Debian's
// kernel package ships no modules.dep (depmod makes it at install time), so
// the dependencies are read from each module's own `.modinfo` ELF section
// ("depends=a,b"), the same place modinfo and depmod read them from.

import fs from 'node:fs';
import path from 'node:path';

/** Module name as the kernel spells it in depends= (dashes become underscores). */
function moduleName(file: string): string {
  return path.basename(file).replace(/\.ko$/, '').replace(/-/g, '_');
}

/** The key=value strings of an ELF64 little-endian module's .modinfo section. */
export function readModinfo(elf: Buffer): Map<string, string[]> {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) {
    throw new Error('not an ELF64 little-endian file (a compressed module?)');
  }
  const shoff = Number(elf.readBigUInt64LE(0x28));
  const shentsize = elf.readUInt16LE(0x3a);
  const shnum = elf.readUInt16LE(0x3c);
  const shstrndx = elf.readUInt16LE(0x3e);
  if (shoff + shnum * shentsize > elf.length || shstrndx >= shnum) throw new Error('ELF section table out of range');
  const section = (i: number): { name: number; offset: number; size: number } => {
    const at = shoff + i * shentsize;
    return { name: elf.readUInt32LE(at), offset: Number(elf.readBigUInt64LE(at + 24)), size: Number(elf.readBigUInt64LE(at + 32)) };
  };
  const names = section(shstrndx);
  const nameOf = (off: number): string => {
    const start = names.offset + off;
    return elf.toString('latin1', start, elf.indexOf(0, start));
  };
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (nameOf(s.name) !== '.modinfo') continue;
    const info = new Map<string, string[]>();
    for (const entry of elf.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
    }
    return info;
  }
  throw new Error('no .modinfo section');
}

export interface ModuleTree {
  /** Every *.ko file, by module name. */
  files: Map<string, string>;
  /** Modules compiled into the kernel (modules.builtin): nothing to load. */
  builtin: Set<string>;
}

/** The modules of one kernel release, from its /lib/modules/RELEASE directory. */
export function moduleTree(dir: string): ModuleTree {
  const files = new Map<string, string>();
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith('.ko')) files.set(moduleName(entry.name), path.join(entry.parentPath, entry.name));
  }
  const builtinList = path.join(dir, 'modules.builtin');
  const builtin = new Set(fs.existsSync(builtinList) ? fs.readFileSync(builtinList, 'utf8').split('\n').filter(Boolean).map(moduleName) : []);
  return { files, builtin };
}

/**
 * The modules `wanted` needs with their dependencies, each after the ones it
 * depends on (the order for insmod). Throws naming a module that is missing.
 */
export function loadOrder(wanted: string[], tree: ModuleTree): { name: string; file: string }[] {
  const order: { name: string; file: string }[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (name: string, neededBy: string): void => {
    if (done.has(name) || tree.builtin.has(name)) return;
    if (visiting.has(name)) throw new Error(`kernel modules: dependency cycle through ${name}`);
    const file = tree.files.get(name);
    if (!file) throw new Error(`kernel module ${name} (needed by ${neededBy}) is neither in the kernel package nor built in`);
    visiting.add(name);
    const depends = (readModinfo(fs.readFileSync(file)).get('depends') ?? []).flatMap((d) => d.split(',')).filter(Boolean);
    for (const dep of depends) visit(dep, name);
    visiting.delete(name);
    done.add(name);
    order.push({ name, file });
  };
  for (const name of wanted) visit(name, 'the guest');
  return order;
}
