// vblk serve's TLS options: psktool's file format read line by line with
// errors that name the line, and every command-line mistake (no
// credentials, both kinds, missing or broken files, a bad --tls value)
// refused with exit status 2 before anything is served.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { parsePskKeys } from '../src/server/tls-credentials.js';
import { tempDir, vblk } from './helpers/server.js';
import { makeTlsCreds } from './helpers/tls-creds.js';

t.test('psktool lines: username:hexkey, blank lines skipped', async (t) => {
  const keys = parsePskKeys('alice:00ff10\n\nbob:0A0b\r\n', 'k.psk');
  t.same([...keys.keys()], ['alice', 'bob']);
  t.same(keys.get('alice'), Buffer.from([0, 0xff, 0x10]));
  t.same(keys.get('bob'), Buffer.from([0x0a, 0x0b]));
});

t.test('bad PSK lines are errors naming the file and line', async (t) => {
  const cases: [string, RegExp][] = [
    ['alice', /k\.psk:1: expected username:hexkey/],
    ['alice:00\nbob', /k\.psk:2: expected username:hexkey/],
    [':00ff', /k\.psk:1: empty username/],
    ['alice:0g', /k\.psk:1: the key must be an even number of hex digits/],
    ['alice:abc', /even number of hex digits/],
    ['alice:', /even number of hex digits/],
    ['a:b:00', /even number of hex digits/],
    ['alice:00\nalice:11', /k\.psk:2: username 'alice' appears twice/],
    [`${'u'.repeat(129)}:00`, /username longer than 128 bytes/],
    [`alice:${'00'.repeat(257)}`, /key longer than 256 bytes/],
    ['\n\n', /k\.psk: no keys/],
  ];
  for (const [text, error] of cases) t.throws(() => parsePskKeys(text, 'k.psk'), error, JSON.stringify(text.slice(0, 20)));
});

t.test('TLS command-line mistakes exit 2 with one clear line', async (t) => {
  const dir = tempDir(t);
  const creds = await makeTlsCreds(dir);
  const img = path.join(dir, 'x.img');
  fs.writeFileSync(img, Buffer.alloc(4096));
  const sock = path.join(dir, 'x.sock');
  const noKey = path.join(dir, 'no-key');
  fs.mkdirSync(noKey);
  fs.copyFileSync(path.join(creds.server, 'ca-cert.pem'), path.join(noKey, 'ca-cert.pem'));
  fs.copyFileSync(path.join(creds.server, 'server-cert.pem'), path.join(noKey, 'server-cert.pem'));
  const mismatched = path.join(dir, 'mismatched');
  fs.mkdirSync(mismatched);
  for (const f of ['ca-cert.pem', 'server-cert.pem']) fs.copyFileSync(path.join(creds.server, f), path.join(mismatched, f));
  fs.copyFileSync(path.join(creds.client, 'client-key.pem'), path.join(mismatched, 'server-key.pem'));
  const garbled = path.join(dir, 'garbled');
  fs.mkdirSync(garbled);
  for (const f of ['ca-cert.pem', 'server-key.pem']) fs.copyFileSync(path.join(creds.server, f), path.join(garbled, f));
  fs.writeFileSync(path.join(garbled, 'server-cert.pem'), '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n');
  const junkCa = path.join(dir, 'junk-ca');
  fs.mkdirSync(junkCa);
  for (const f of ['server-cert.pem', 'server-key.pem']) fs.copyFileSync(path.join(creds.server, f), path.join(junkCa, f));
  fs.writeFileSync(path.join(junkCa, 'ca-cert.pem'), 'this is no certificate\n');
  const badPsk = path.join(dir, 'bad.psk');
  fs.writeFileSync(badPsk, 'alice:00ff\nbob=1234\n');

  const base = ['serve', img, '--socket', sock];
  const cases: [string[], RegExp][] = [
    [['--tls', 'maybe'], /--tls must be off, on or require, not 'maybe'/],
    [['--tls', 'on'], /--tls on needs credentials: --tls-certs DIR or --tls-psk FILE/],
    [['--tls', 'require'], /--tls require needs credentials/],
    [['--tls-certs', creds.server], /--tls-certs need --tls on or --tls require/],
    [['--tls', 'off', '--tls-psk', creds.pskFile], /--tls-psk need --tls on or --tls require/],
    [['--tls', 'on', '--tls-certs', creds.server, '--tls-psk', creds.pskFile], /give --tls-certs or --tls-psk, not both/],
    [['--tls', 'on', '--tls-psk', creds.pskFile, '--tls-verify-peer'], /--tls-verify-peer needs --tls-certs/],
    [['--tls', 'on', '--tls-certs', path.join(dir, 'nowhere')], /nowhere: not a directory/],
    [['--tls', 'on', '--tls-certs', noKey], /no-key\/server-key\.pem: cannot read the server private key \(no such file\)/],
    [['--tls', 'on', '--tls-certs', creds.client], /client\/server-cert\.pem: cannot read the server certificate/],
    [['--tls', 'on', '--tls-certs', mismatched], /--tls-certs .*mismatched: server-key\.pem is not the key of server-cert\.pem/],
    [['--tls', 'on', '--tls-certs', garbled], /--tls-certs .*garbled: bad base64 decode/],
    [['--tls', 'on', '--tls-certs', junkCa], /junk-ca\/ca-cert\.pem: not a PEM certificate/],
    [['--tls', 'on', '--tls-psk', path.join(dir, 'none.psk')], /none\.psk: cannot read the PSK file \(no such file\)/],
    [['--tls', 'on', '--tls-psk', badPsk], /bad\.psk:2: expected username:hexkey/],
  ];
  for (const [args, error] of cases) {
    const r = await vblk([...base, ...args]);
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`);
    t.match(r.stderr, error, `${args.join(' ')}: says why`);
    t.equal(r.stderr.trim().split('\n').length <= 2, true, 'in a line or two', { stderr: r.stderr });
    t.notOk(fs.existsSync(sock), 'nothing was served');
  }
});

t.test('serve --help documents the TLS options with examples', async (t) => {
  const r = await vblk(['serve', '--help']);
  for (const option of ['--tls off|on|require', '--tls-certs DIR', '--tls-verify-peer', '--tls-psk FILE']) t.match(r.stdout, option);
  t.match(r.stdout, /nbds\+unix:\/\/\/\?socket=.*tls-certificates=/);
  t.match(r.stdout, /psktool -u alice -p keys\.psk/);
});
