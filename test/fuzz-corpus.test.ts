// The coverage-guided targets over their committed corpus: every input
// that ever reached new code in a parser must still go through it without
// a throw. (`npm run fuzz` grows the corpus; this keeps it as a regression suite.)

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { TARGETS } from '../fuzz/targets.js';

const CORPUS = fileURLToPath(new URL('../../fuzz/corpus/', import.meta.url));

for (const target of TARGETS) {
  t.test(target.name, (t) => {
    const dir = path.join(CORPUS, target.name);
    const files = fs.existsSync(dir) ? fs.readdirSync(dir) : [];
    t.ok(files.length > 0, `${files.length} corpus inputs`);
    let failed = 0;
    for (const f of files) {
      try {
        target.run(fs.readFileSync(path.join(dir, f)));
      } catch (err) {
        failed++;
        t.fail(`${f}: ${(err as Error).message}`);
      }
    }
    t.equal(failed, 0, 'no input throws');
    t.end();
  });
}
