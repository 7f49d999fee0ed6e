// A writer for the cpio "newc" format, the one the Linux kernel unpacks as
// an initramfs. The kernel accepts several archives one after the other in
// one initrd, so a cached base archive (busybox, modules) and a small
// per-boot one (/init, the test's script and files) are simply
// concatenated. Parent directories are added before the files in them.

export type CpioEntry =
  | { path: string; kind: 'file'; data: Buffer | string; mode?: number }
  | { path: string; kind: 'dir' }
  | { path: string; kind: 'symlink'; target: string }
  | { path: string; kind: 'chardev'; major: number; minor: number };

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function header(fields: number[], name: string): Buffer {
  const hex = fields.map((f) => f.toString(16).padStart(8, '0')).join('');
  const nameBytes = Buffer.from(`${name}\0`);
  const head = Buffer.from(`070701${hex}`, 'ascii');
  return Buffer.concat([head, nameBytes, Buffer.alloc(pad4(head.length + nameBytes.length))]);
}

function record(ino: number, mode: number, data: Buffer, name: string, rdev: [number, number] = [0, 0]): Buffer {
  const nlink = (mode & 0o170000) === S_IFDIR ? 2 : 1;
  // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev[0], rdev[1], Buffer.byteLength(name) + 1, 0];
  return Buffer.concat([header(fields, name), data, Buffer.alloc(pad4(data.length))]);
}

/** One complete newc archive (ending in its TRAILER!!! record) holding `entries`. */
export function cpioArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const seen = new Set<string>();
  let ino = 1;
  const addDir = (dir: string): void => {
    if (dir === '' || seen.has(dir)) return;
    addDir(dir.slice(0, Math.max(0, dir.lastIndexOf('/'))));
    seen.add(dir);
    parts.push(record(ino++, S_IFDIR | 0o755, Buffer.alloc(0), dir));
  };
  for (const entry of entries) {
    const name = entry.path.replace(/^\/+/, '');
    if (name === '' || name.split('/').includes('..')) throw new Error(`cpio: bad path '${entry.path}'`);
    if (entry.kind === 'dir') {
      addDir(name);
      continue;
    }
    if (seen.has(name)) throw new Error(`cpio: '${entry.path}' is in the archive twice`);
    addDir(name.slice(0, Math.max(0, name.lastIndexOf('/'))));
    seen.add(name);
    if (entry.kind === 'file') {
      const data = typeof entry.data === 'string' ? Buffer.from(entry.data) : entry.data;
      parts.push(record(ino++, S_IFREG | (entry.mode ?? 0o644), data, name));
    } else if (entry.kind === 'symlink') {
      parts.push(record(ino++, S_IFLNK | 0o777, Buffer.from(entry.target), name));
    } else {
      parts.push(record(ino++, S_IFCHR | 0o600, Buffer.alloc(0), name, [entry.major, entry.minor]));
    }
  }
  parts.push(record(0, 0, Buffer.alloc(0), 'TRAILER!!!'));
  return Buffer.concat(parts);
}
