// Byte sizes as people write them: 512, 64K, 10G, 1.5T, 4MiB. Suffixes
// are binary (K = 1024), as in qemu-img and nbdkit.

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new Error(`'${text}' is not a size (examples: 1048576, 64K, 10G)`);
  const bytes = Number(m[1]) * UNITS[m[2].toUpperCase()];
  if (!Number.isSafeInteger(bytes)) throw new Error(`'${text}' is not a whole number of bytes below 8 PiB`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return i === 0 ? `${bytes} bytes` : `${Number(value.toFixed(2))} ${units[i]}`;
}
