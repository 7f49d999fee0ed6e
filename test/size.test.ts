import t from 'tap';
import { formatSize, parseSize } from '../src/cli/size.js';

t.test('parseSize reads bytes and binary suffixes', async (t) => {
  t.equal(parseSize('4096'), 4096);
  t.equal(parseSize('64K'), 65536);
  t.equal(parseSize('10G'), 10 * 2 ** 30);
  t.equal(parseSize('1.5T'), 1.5 * 2 ** 40);
  t.equal(parseSize('4MiB'), 4 * 2 ** 20);
  t.equal(parseSize('2m'), 2 * 2 ** 20);
});

t.test('parseSize rejects what is not a whole size', async (t) => {
  for (const bad of ['', 'G', '-1', '1X', '0.5', '1.3K', '9P9', `${2 ** 60}`]) {
    t.throws(() => parseSize(bad), `rejects '${bad}'`);
  }
});

t.test('formatSize', async (t) => {
  t.equal(formatSize(512), '512 bytes');
  t.equal(formatSize(1 << 30), '1 GiB');
  t.equal(formatSize(1536), '1.5 KiB');
});
