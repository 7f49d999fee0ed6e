// libblkio's example programs (blkio-info, blkio-copy, blkio-bench): a
// vhost-user-blk client nobody here wrote, with no VM. Debian 12 has no
// libblkio package; Debian 13's libblkio1 and libblkio-dev run here. They
// are fetched with apt through a private apt state and sources list (the
// machine's own apt sources are never changed), unpacked, and the
// examples libblkio-dev ships are compiled against them, once, into
// var/libblkio/ (built in a temporary directory and renamed into place,
// so test files running at once do not trip over each other).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const HOME = path.join(ROOT, 'var', 'libblkio');
const SUITE = 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n';
const PROGRAMS = ['blkio-info', 'blkio-copy', 'blkio-bench'] as const;

export type BlkioTools = Record<(typeof PROGRAMS)[number], string>;

function tools(dir: string): BlkioTools {
  return Object.fromEntries(PROGRAMS.map((p) => [p, path.join(dir, 'bin', p)])) as BlkioTools;
}

function build(dir: string): void {
  const run = (cmd: string, args: string[]): void => {
    try {
      execFileSync(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as { stderr?: Buffer; message: string };
      throw new Error(`libblkio: ${cmd} ${args.join(' ')} failed: ${e.stderr?.toString().trim() || e.message}`);
    }
  };
  for (const d of ['state/lists/partial', 'cache/archives/partial', 'root', 'bin']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.writeFileSync(path.join(dir, 'sources.list'), SUITE);
  const apt = [
    `-o=Dir::Etc::SourceList=${dir}/sources.list`,
    '-o=Dir::Etc::SourceParts=/dev/null',
    `-o=Dir::State::Lists=${dir}/state/lists`,
    `-o=Dir::Cache=${dir}/cache`,
    '-o=APT::Sandbox::User=root',
  ];
  run('apt-get', [...apt, '-qq', 'update']);
  run('apt-get', [...apt, '-qq', 'download', 'libblkio1', 'libblkio-dev']);
  for (const deb of fs.readdirSync(dir).filter((f) => f.endsWith('.deb'))) run('dpkg-deb', ['-x', deb, 'root']);
  const lib = path.join(dir, 'root/usr/lib/x86_64-linux-gnu');
  const examples = path.join(dir, 'root/usr/share/doc/libblkio-dev/examples');
  for (const p of PROGRAMS) {
    run('gcc', ['-O2', '-o', `bin/${p}`, path.join(examples, `${p}.c`), `-I${dir}/root/usr/include`, `-L${lib}`, '-Wl,-rpath,$ORIGIN/../root/usr/lib/x86_64-linux-gnu', '-lblkio', '-lpthread', '-lm']);
  }
}

/** The programs' paths, building them on first use (about 15 s; needs Debian's mirror). */
export function libblkioTools(): BlkioTools {
  if (fs.existsSync(tools(HOME)['blkio-bench'])) return tools(HOME);
  fs.mkdirSync(path.dirname(HOME), { recursive: true });
  const tmp = fs.mkdtempSync(`${HOME}.tmp-`);
  try {
    build(tmp);
    fs.renameSync(tmp, HOME);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (fs.existsSync(tools(HOME)['blkio-bench'])) return tools(HOME);
    throw err;
  }
  return tools(HOME);
}
