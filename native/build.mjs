// Builds the native addons during `npm ci` / `npm install`. It never fails
// the install: when there is no compiler or no Node headers, the reason
// goes to native/build/error.log, vblk runs with the sync and threads
// engines, and `vblk info --engines` and the server log say why.
// The RBD addon (native/rbd/, librbd and librados) is built apart, so a
// host without Ceph's development files loses rbd: images and nothing
// else; its reason goes to native/rbd/build/error.log.
// Node's headers are taken from npm's nodedir setting or from the
// install prefix of this node (Debian's nodejs has them in
// /usr/include/node), so nothing is downloaded.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

function nodeGyp() {
  if (process.env.npm_config_node_gyp) return process.env.npm_config_node_gyp;
  try {
    return createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    return null;
  }
}

function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null;
}

/** The line of a failed build that says what went wrong. */
function summary(output) {
  const lines = output.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.find((l) => /error:|not found|No such file|stack Error/i.test(l)) ?? lines.at(-1) ?? 'unknown failure';
}

/** Builds the addon in `directory`; on failure writes its error.log, warns with `lost`, and returns false. */
function build(directory, name, lost) {
  const buildDir = path.join(directory, 'build');
  const errorLog = path.join(buildDir, 'error.log');
  const fail = (output) => {
    fs.mkdirSync(buildDir, { recursive: true });
    const reason = summary(output);
    fs.writeFileSync(errorLog, `${reason}\n\n${output.trim()}\n`);
    console.warn(`vblk: the ${name} was not built: ${reason}\nvblk: ${lost}; details in ${path.relative(process.cwd(), errorLog)}`);
    return false;
  };
  const gyp = nodeGyp();
  if (!gyp) return fail('node-gyp not found');
  const dir = nodeDir();
  if (!dir) return fail('Node headers not found (set npm config nodedir, or install the nodejs headers)');
  const result = spawnSync(process.execPath, [gyp, 'rebuild', `--directory=${directory}`, `--nodedir=${dir}`], {
    encoding: 'utf8',
    env: { ...process.env, JOBS: process.env.JOBS ?? '2' },
  });
  if (result.status !== 0) return fail(`${result.stdout ?? ''}\n${result.stderr ?? ''}\nnode-gyp exited with ${result.status ?? result.signal}`);
  fs.rmSync(errorLog, { force: true });
  console.log(`vblk: ${name} built`);
  return true;
}

if (build(here, 'native addon', 'the uring and posix-aio engines and --direct are unavailable')) {
  build(path.join(here, 'rbd'), 'RBD addon', 'rbd: images are unavailable (Debian: apt-get install librbd-dev, then node native/build.mjs)');
}
