// Many real libnbd clients connecting at once, from one Python process:
// every handle starts its connection (aio_connect_uri) before any of them
// is driven, then one poll() loop drives all their handshakes, and each
// handle that got through asks the size (get_size). The handles stay
// open until the script ends, so the server holds them all at once.
// Python's libnbd is Debian's (python3-libnbd), hence /usr/bin/python3.

import { run } from './tools.js';

const SCRIPT = String.raw`
import json, nbd, resource, select, sys, time

uri, count, expected_size, limit_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = count + 64
if soft < want:
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below the {want} descriptors {count} clients need")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

errors = {}
def failed(e):
    key = str(e).split(": ", 1)[-1]
    errors[key] = errors.get(key, 0) + 1

handles = []
for _ in range(count):
    h = nbd.NBD()
    try:
        h.aio_connect_uri(uri)
        handles.append(h)
    except nbd.Error as e:
        failed(e)

deadline = time.monotonic() + limit_s
pending = handles
ready = []
while pending and time.monotonic() < deadline:
    poller, by_fd, still = select.poll(), {}, []
    for h in pending:
        if h.aio_is_ready():
            ready.append(h)
        elif h.aio_is_dead() or h.aio_is_closed():
            failed("the handle died")
        else:
            d = h.aio_get_direction()
            events = (select.POLLIN if d & nbd.AIO_DIRECTION_READ else 0) | (select.POLLOUT if d & nbd.AIO_DIRECTION_WRITE else 0)
            by_fd[h.aio_get_fd()] = h
            poller.register(h.aio_get_fd(), events)
            still.append(h)
    pending = still
    for fd, revents in poller.poll(100):
        h = by_fd[fd]
        try:
            if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
                h.aio_notify_read()
            elif revents & select.POLLOUT:
                h.aio_notify_write()
        except nbd.Error as e:
            failed(e)
            pending.remove(h)

sized = sum(1 for h in ready if h.get_size() == expected_size)
print(json.dumps({"ready": len(ready), "sized": sized, "stuck": len(pending), "errors": errors}))
`;

export interface CrowdResult {
  /** Handles whose handshake finished. */
  ready: number;
  /** Of those, how many then read the expected size. */
  sized: number;
  /** Handles still negotiating when the time ran out. */
  stuck: number;
  /** Why the others failed, with how many each. */
  errors: Record<string, number>;
}

/** Connects `count` libnbd clients to `uri` at once and drives them for at most `limitS` seconds. */
export async function libnbdCrowd(uri: string, count: number, expectedSize: number, limitS = 60): Promise<CrowdResult> {
  const r = await run('/usr/bin/python3', ['-c', SCRIPT, uri, String(count), String(expectedSize), String(limitS)], {
    timeoutMs: (limitS + 60) * 1000,
  });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !line.startsWith('{')) throw new Error(`libnbd clients failed (exit ${r.code ?? r.signal}): ${r.stderr}${r.stdout}`);
  return JSON.parse(line) as CrowdResult;
}
