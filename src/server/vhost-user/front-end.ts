// The vhost-user-blk front end: one listening socket serves one export
// (a VMM attaches one disk per socket). What the guest sees of the disk,
// its virtio-blk settings, comes from the export's capabilities here, so
// the limits a guest reads are the ones the gateway holds it to.

import type { Logger } from 'pino';
import { blkIdBytes, type BlkSettings } from '../../protocol/vhost-user/blk-config.js';
import type { BusyPoll } from '../busy-poll.js';
import type { FrontEnd } from '../connection.js';
import type { ServedExport } from '../exports.js';
import { VhostUserConnection } from './connection.js';

/** Most sectors one DISCARD or WRITE_ZEROES segment may cover (16 MiB, as qemu-storage-daemon's 32768). */
const ZERO_SECTORS = 32768;
/** Data segments per request (seg_max): a 128-entry ring less header and status, as QEMU and libvhost-user. */
const SEG_MAX = 126;

export function blkSettings(served: ServedExport, numQueues: number): BlkSettings {
  const caps = served.capabilities;
  return {
    capacity: served.size,
    readOnly: caps.readOnly,
    flush: caps.flush,
    blockSize: 512,
    physicalBlockSize: 4096,
    optIoSize: caps.blockSizes.preferred,
    segMax: SEG_MAX,
    numQueues,
    discard: caps.trim ? { maxSectors: ZERO_SECTORS, maxSegments: 1, sectorAlignment: 8 } : null,
    writeZeroes: caps.readOnly ? null : { maxSectors: ZERO_SECTORS, maxSegments: 1, mayUnmap: caps.trim },
    id: blkIdBytes(served.gateway.id),
  };
}

/** `busyPoll`: the server's polling window (busy-poll.ts), opened after completions as for NBD replies. */
export function vhostUserFrontEnd(served: ServedExport, numQueues: number, busyPoll: BusyPoll): FrontEnd {
  const settings = blkSettings(served, numQueues);
  return {
    protocol: 'vhost-user-blk',
    connect: (socket, _endpoint, log: Logger, closed) => new VhostUserConnection(socket, served, settings, busyPoll, log, closed),
    addresses: (address) => (address.kind === 'unix' ? [`vhost-user-blk:${address.path}`] : []),
  };
}
