// Connections to Ceph clusters, shared: every rbd: image a process opens
// with the same client name, configuration file and settings uses one
// librados connection (as QEMU shares one per configuration), which is
// shut down when the last image on it closes. The settings are what the
// ceph CLI would use (its defaults, $CEPH_CONF, $CEPH_ARGS) plus vblk's
// options (--ceph-conf, --ceph-id, --ceph-keyring) and the KEY=VALUE
// pairs of the name, which win: a backing file named in a qcow2 header
// carries its own.

import { rbdError, rbdNative, rbdUnavailable, type NativeRbdCluster } from '../../io/rbd-native.js';
import type { RbdName } from './rbd-name.js';

export interface CephOptions {
  /** A ceph.conf; default: $CEPH_CONF, then where the ceph CLI looks. */
  conf?: string;
  /** The client name without "client." (default admin). */
  id?: string;
  keyring?: string;
  /**
   * Seconds a request to an OSD or a monitor may wait before it fails
   * (with EIO to clients); absent or 0: it waits until the cluster answers.
   */
  timeout?: number;
}

/** Seconds to reach the monitors before giving up (librados waits 300 by default). */
const MOUNT_TIMEOUT = '30';

interface Shared {
  connecting: Promise<NativeRbdCluster>;
  users: number;
}

const connections = new Map<string, Shared>();

/** What librados is told for `name` under `options`: client id, configuration file, settings. */
export function connectionSettings(name: RbdName, options: CephOptions): { id: string | null; conf: string | null; settings: [string, string][] } {
  const given = new Map(name.options);
  const settings: [string, string][] = [];
  const set = (key: string, value: string | undefined): void => {
    if (value !== undefined && !given.has(key)) settings.push([key, value]);
  };
  set('keyring', options.keyring);
  set('client_mount_timeout', MOUNT_TIMEOUT);
  if (options.timeout) {
    set('rados_osd_op_timeout', String(options.timeout));
    set('rados_mon_op_timeout', String(options.timeout));
  }
  for (const [key, value] of name.options) if (key !== 'id' && key !== 'conf') settings.push([key, value]);
  return { id: given.get('id') ?? options.id ?? null, conf: given.get('conf') ?? options.conf ?? null, settings };
}

/** A connection for `name`, and the function that gives it back. */
export async function connectCluster(name: RbdName, options: CephOptions): Promise<{ cluster: NativeRbdCluster; release: () => Promise<void> }> {
  if (!rbdNative) throw Object.assign(new Error(`rbd: images need the RBD addon, which is unavailable: ${rbdUnavailable}`), { code: 'ERR_RBD_UNAVAILABLE' });
  const { id, conf, settings } = connectionSettings(name, options);
  const key = JSON.stringify([id, conf, settings]);
  let shared = connections.get(key);
  if (!shared) {
    shared = { connecting: rbdNative.Cluster.connect(id, conf, settings), users: 0 };
    connections.set(key, shared);
  }
  shared.users++;
  const entry = shared;
  let cluster: NativeRbdCluster;
  try {
    cluster = await entry.connecting;
  } catch (err) {
    if (--entry.users === 0) connections.delete(key);
    // Everyone waiting on one connection gets the same error: each gets its own copy, hint added once.
    const e = rbdError(err) as NodeJS.ErrnoException;
    const hint =
      e.code === 'ENOENT' && conf === null ? ': no ceph.conf was found, or it names no monitor (give --ceph-conf FILE or set CEPH_CONF)'
      : e.code === 'EACCES' || e.code === 'EPERM' ? `: the monitors refused client.${id ?? 'admin'} (its key, --ceph-id and --ceph-keyring)`
      : e.code === 'ETIMEDOUT' ? `: no monitor answered in ${MOUNT_TIMEOUT} s (is the cluster up, and mon_host right?)`
      : '';
    throw Object.assign(new Error(`${e.message}${hint}`), { code: e.code, errno: e.errno });
  }
  let released = false;
  return {
    cluster,
    release: async () => {
      if (released) return;
      released = true;
      if (--entry.users > 0) return;
      connections.delete(key);
      await cluster.shutdown();
    },
  };
}
