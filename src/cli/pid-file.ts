// --pid-file: the server's process id, written once it is ready (as
// qemu-nbd --pid-file and nbdkit -P do), so that the file existing means
// clients can connect. It is written whole under a temporary name and
// renamed into place, so a reader never sees it half written, and it is
// removed when the process exits, however it exits short of a kill -9,
// unless another process has written its own id there since.

import fs from 'node:fs';
import path from 'node:path';

export function writePidFile(file: string): void {
  const target = path.resolve(file);
  const content = `${process.pid}\n`;
  const temporary = `${target}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(temporary, content, { mode: 0o644 });
    fs.renameSync(temporary, target);
  } catch (err) {
    fs.rmSync(temporary, { force: true });
    throw new Error(`cannot write the pid file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  process.once('exit', () => {
    try {
      if (fs.readFileSync(target, 'utf8') === content) fs.unlinkSync(target);
    } catch {
      // Already gone, or no longer readable: nothing of ours to remove.
    }
  });
}
