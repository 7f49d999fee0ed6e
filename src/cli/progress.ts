// Progress of long operations on stderr: a bar redrawn in place on a
// terminal, a line every tenth of the way otherwise (logs stay short).

import { formatSize } from './size.js';

export interface ProgressLine {
  update(done: number, total: number): void;
  finish(): void;
}

export function progressLine(label: string, stream: NodeJS.WriteStream = process.stderr): ProgressLine {
  let lastTenth = -1;
  let drawn = false;
  return {
    update(done, total) {
      const fraction = total > 0 ? done / total : 1;
      const pct = Math.floor(fraction * 100);
      const sizes = `${formatSize(done)} of ${formatSize(total)}`;
      if (stream.isTTY) {
        const width = 30;
        const filled = Math.round(fraction * width);
        stream.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(pct).padStart(3)}% ${sizes}   `);
        drawn = true;
        return;
      }
      const tenth = Math.floor(fraction * 10);
      if (tenth > lastTenth) {
        lastTenth = tenth;
        stream.write(`${label}: ${pct}% (${sizes})\n`);
      }
    },
    finish() {
      if (drawn) stream.write('\n');
    },
  };
}
