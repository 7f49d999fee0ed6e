// DropLog: the first dropped connection is reported at once, the ones
// after it together once the interval is over, and nothing is lost at
// close. Drops here are synchronous, so they all come before any timer.

import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { DropLog } from '../src/server/connection-limit.js';

const INTERVAL_MS = 20;

t.test('reports the first drop at once and the rest at most once an interval, with totals', async (t) => {
  const reports: [number, number][] = [];
  const log = new DropLog((dropped, total) => reports.push([dropped, total]), INTERVAL_MS);
  for (let i = 0; i < 5; i++) log.drop();
  t.same(reports, [[1, 1]], 'the first at once, the next four held back');
  await sleep(INTERVAL_MS * 3);
  t.same(reports, [[1, 1], [4, 5]], 'the four together after the interval');
  await sleep(INTERVAL_MS * 3);
  t.equal(reports.length, 2, 'nothing more while nothing is dropped');
  log.drop();
  t.same(reports.at(-1), [1, 6], 'after a quiet interval a drop is reported at once again');
  log.drop();
  log.drop();
  log.close();
  t.same(reports.at(-1), [2, 8], 'close reports what was held back');
  await sleep(INTERVAL_MS * 3);
  t.equal(reports.length, 4, 'and stops the timer');
});
