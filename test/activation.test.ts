// parseActivation: which LISTEN_* variables are for this process, and the
// errors for bad ones (the sockets themselves: interop/socket-activation).

import t from 'tap';
import { parseActivation } from '../src/server/activation.js';

const PID = 4242;

t.test('variables for another process, or none, are ignored', async (t) => {
  t.equal(parseActivation({}, PID), null, 'none set');
  t.equal(parseActivation({ LISTEN_PID: '1', LISTEN_FDS: '1' }, PID), null, "another process's");
  t.equal(parseActivation({ LISTEN_FDS: '1' }, PID), null, 'LISTEN_FDS without LISTEN_PID');
});

t.test('descriptors from 3, with names where given', async (t) => {
  t.same(parseActivation({ LISTEN_PID: String(PID), LISTEN_FDS: '1' }, PID), { fds: [3], names: [null] });
  t.same(parseActivation({ LISTEN_PID: String(PID), LISTEN_FDS: '3', LISTEN_FDNAMES: 'nbd:tcp:' }, PID), {
    fds: [3, 4, 5],
    names: ['nbd', 'tcp', null],
  });
});

t.test('bad values are errors that name the variable', async (t) => {
  const bad: [Record<string, string>, RegExp][] = [
    [{ LISTEN_PID: 'abc', LISTEN_FDS: '1' }, /LISTEN_PID=abc is not a process id/],
    [{ LISTEN_PID: '-1', LISTEN_FDS: '1' }, /LISTEN_PID=-1/],
    [{ LISTEN_PID: String(PID) }, /LISTEN_FDS is not set/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: 'two' }, /LISTEN_FDS=two is not a number/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '-1' }, /LISTEN_FDS=-1 is not a number/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '1.5' }, /LISTEN_FDS=1.5/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '0' }, /LISTEN_FDS=0, the service manager passed no sockets/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '99999' }, /LISTEN_FDS=99999 is more sockets/],
    [{ LISTEN_PID: String(PID), LISTEN_FDS: '2', LISTEN_FDNAMES: 'one' }, /LISTEN_FDNAMES has 1 name for LISTEN_FDS=2/],
  ];
  for (const [env, message] of bad) t.throws(() => parseActivation(env, PID), message, JSON.stringify(env));
});
