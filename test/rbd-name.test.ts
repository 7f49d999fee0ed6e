// rbd: names in QEMU's syntax (pure parsing and printing), and what a
// name and vblk's --ceph-* options make of the librados settings.

import fc from 'fast-check';
import t from 'tap';
import { connectionSettings } from '../src/device/images/rbd-cluster.js';
import { formatRbdName, imageSpec, parseRbdName } from '../src/device/images/rbd-name.js';

t.test('names QEMU writes', async (t) => {
  t.same(parseRbdName('rbd:vms/disk1'), { pool: 'vms', namespace: '', image: 'disk1', snapshot: null, options: [] });
  t.same(parseRbdName('rbd:vms/team-a/disk1@gold'), { pool: 'vms', namespace: 'team-a', image: 'disk1', snapshot: 'gold', options: [] });
  t.same(parseRbdName('rbd:rbd/img:conf=/etc/ceph/lab.conf:id=vblk:mon_host=10.0.0.1\\:6789'), {
    pool: 'rbd',
    namespace: '',
    image: 'img',
    snapshot: null,
    options: [['conf', '/etc/ceph/lab.conf'], ['id', 'vblk'], ['mon_host', '10.0.0.1:6789']],
  });
  t.same(parseRbdName('rbd:p/we\\@ird\\:name@s\\/1').image, 'we@ird:name', 'escaped @ and : belong to the image name');
  t.same(parseRbdName('rbd:p/i@s\\/1').snapshot, 's/1', 'and an escaped / to the snapshot');
  t.equal(imageSpec(parseRbdName('rbd:p/ns/i@s:id=x')), 'p/ns/i@s', 'imageSpec is what the rbd CLI calls it');
});

t.test('mistakes are RangeErrors that say what is wrong', async (t) => {
  const cases: [string, RegExp][] = [
    ['disk.img', /not an RBD name/],
    ['rbd:', /expected rbd:POOL\/IMAGE/],
    ['rbd:pool', /expected rbd:POOL\/IMAGE/],
    ['rbd:pool/', /no empty part/],
    ['rbd:/img', /no empty part/],
    ['rbd:a/b/c/d', /expected rbd:POOL\/IMAGE or rbd:POOL\/NAMESPACE\/IMAGE/],
    ['rbd:p/i@', /snapshot name after '@' is empty/],
    ['rbd:p/i:conf', /expected KEY=VALUE after ':', not 'conf'/],
    ['rbd:p/i:=x', /expected KEY=VALUE/],
  ];
  for (const [name, message] of cases) t.throws(() => parseRbdName(name), { name: 'RangeError', message }, name);
});

t.test('printing and parsing again gives the same name, whatever the characters', async () => {
  const part = fc.string({ minLength: 1, maxLength: 12, unit: fc.constantFrom('a', 'Z', '0', '-', '_', '.', ':', '@', '/', '\\', '=', ' ') });
  fc.assert(
    fc.property(
      part, fc.option(part, { nil: '' }), part, fc.option(part, { nil: null }),
      fc.array(fc.tuple(fc.stringMatching(/^[a-z_]{1,10}$/), part), { maxLength: 3 }),
      (pool, namespace, image, snapshot, options) => {
        const name = { pool, namespace, image, snapshot, options };
        const again = parseRbdName(formatRbdName(name));
        if (JSON.stringify(again) !== JSON.stringify(name)) throw new Error(`${formatRbdName(name)} -> ${JSON.stringify(again)}`);
      },
    ),
  );
});

t.test('connection settings: vblk options, the name winning, timeouts', async (t) => {
  const plain = connectionSettings(parseRbdName('rbd:p/i'), {});
  t.same(plain, { id: null, conf: null, settings: [['client_mount_timeout', '30']] }, 'nothing given: the ceph CLI defaults, a bounded mount');
  const options = connectionSettings(parseRbdName('rbd:p/i'), { conf: '/c.conf', id: 'vblk', keyring: '/k', timeout: 7 });
  t.same(options, {
    id: 'vblk',
    conf: '/c.conf',
    settings: [['keyring', '/k'], ['client_mount_timeout', '30'], ['rados_osd_op_timeout', '7'], ['rados_mon_op_timeout', '7']],
  });
  const named = connectionSettings(parseRbdName('rbd:p/i:conf=/n.conf:id=other:keyring=/nk:client_mount_timeout=5'), { conf: '/c.conf', id: 'vblk', keyring: '/k' });
  t.same(named, { id: 'other', conf: '/n.conf', settings: [['keyring', '/nk'], ['client_mount_timeout', '5']] }, "the name's own settings win");
});
