#!/usr/bin/env bash
# A throwaway single-node Ceph cluster (one mon, one mgr, one bluestore OSD
# on a sparse file) for vblk's RBD tests. Everything lives in one directory:
# conf, keyrings, daemon data, logs, admin sockets and pid files; no
# systemd, no containers, the daemons run as the invoking user.
#
# Why it looks the way it does:
# - The mon listens on 127.0.0.1 at a free port picked at start (msgr2
#   only), so several clusters can run at once; mgr and OSD take their
#   ports from Ceph's own range, skipping ports in use.
# - bluestore's block file sits beside the OSD data directory, not at
#   <osd data>/block: mkfs puts a symlink there, and a file already in that
#   place makes it fail with ELOOP.
# - Pool size 1 and the redundancy/insecure-reclaim warnings off, so one
#   OSD reaches HEALTH_OK; small caches, so three daemons fit in ~0.5 GB.
# - osd_client_watch_timeout 10 s (default 30): a killed lock holder's
#   watch expires sooner, so tests that take over a dead holder's RBD lock
#   wait 10 s, not 30.
# - admin_socket, log_file and pid_file are set for the daemons only:
#   clients (rbd, qemu) sharing this conf must not claim the daemons' paths.

set -euo pipefail

BLOCK_SIZE=${CEPH_BLOCK_SIZE:-8G}
HEALTH_TIMEOUT=${CEPH_HEALTH_TIMEOUT:-120}
STOP_TIMEOUT=${CEPH_STOP_TIMEOUT:-20}

usage() {
  cat <<'EOF'
Usage: cluster.sh COMMAND DIR

A throwaway single-node Ceph cluster kept entirely inside DIR.

Commands:
  start DIR      create DIR if needed, build a fresh cluster in it (one mon on
                 127.0.0.1 at a free port, one mgr, one bluestore OSD on a
                 sparse file), create pool 'rbd' (size 1, rbd pool init) and
                 wait for HEALTH_OK
  stop DIR       stop all daemons (SIGTERM, SIGKILL after a bound); idempotent
  osd-stop DIR   stop only the OSD (I/O to the cluster hangs until osd-start)
  osd-start DIR  start the OSD again and wait until its placement groups are
                 active+clean
  status DIR     which daemons run, and `ceph -s`

Clients need only DIR/ceph.conf (it names DIR/ceph.client.admin.keyring).

Environment:
  CEPH_BLOCK_SIZE      size of the OSD's sparse block file (default 8G)
  CEPH_HEALTH_TIMEOUT  seconds to wait for HEALTH_OK (default 120)
  CEPH_STOP_TIMEOUT    seconds between SIGTERM and SIGKILL (default 20)

Examples:
  test/ceph/cluster.sh start /tmp/c1
  ceph -c /tmp/c1/ceph.conf -s
  rbd -c /tmp/c1/ceph.conf create --size 64M rbd/img
  qemu-img info rbd:rbd/img:conf=/tmp/c1/ceph.conf
  CEPH_CONF=/tmp/c1/ceph.conf rbd ls rbd
  test/ceph/cluster.sh osd-stop /tmp/c1; test/ceph/cluster.sh osd-start /tmp/c1
  test/ceph/cluster.sh stop /tmp/c1 && rm -rf /tmp/c1
EOF
}

say() { echo "ceph: $*"; }
die() { echo "ceph: error: $*" >&2; exit 1; }

# Runs a command quietly; its output shows only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; dump_and_die "'$*' failed"; }
}

# Runs the ceph CLI against this cluster with a bound, so a dead mon cannot hang us.
cephc() { ceph -c "$CONF" --connect-timeout 10 "$@"; }

require_commands() {
  local cmd
  for cmd in ceph-mon ceph-mgr ceph-osd ceph rbd ceph-authtool monmaptool python3; do
    command -v "$cmd" >/dev/null 2>&1 ||
      die "command '$cmd' is missing (Debian: apt-get install ceph-mon ceph-mgr ceph-osd ceph-common)"
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_of() { # name (mon.a, mgr.x, osd.0) -> pid if the daemon runs
  local file="$DIR/run/$1.pid" pid comm
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  # A stale pid file may name a pid that now belongs to someone else.
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "ceph-${1%%.*}" ]] || return 1
  echo "$pid"
}

stop_daemon() { # name
  local pid i
  pid=$(pid_of "$1") || { rm -f "$DIR/run/$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$1 ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$DIR/run/$1.pid"
  say "$1 stopped"
}

dump_and_die() {
  echo "ceph: error: $*" >&2
  cephc -s >&2 2>&1 || true
  local log
  for log in "$DIR"/log/*.log; do
    [[ -f $log ]] || continue
    echo "--- tail of $log" >&2
    tail -n 20 "$log" >&2
  done
  exit 1
}

write_conf() { # port fsid
  cat >"$CONF" <<EOF
[global]
fsid = $2
mon_host = v2:127.0.0.1:$1
keyring = $DIR/ceph.client.admin.keyring
run_dir = $DIR/run
crash_dir = $DIR/crash
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_allow_insecure_global_id_reclaim = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0

[mon]
mon_data = $DIR/mon/\$cluster-\$id
mon_cluster_log_file = $DIR/log/\$cluster.log
admin_socket = $DIR/run/\$name.asok
pid_file = $DIR/run/\$name.pid
log_file = $DIR/log/\$name.log

[mgr]
mgr_data = $DIR/mgr/\$cluster-\$id
keyring = $DIR/mgr/\$cluster-\$id/keyring
admin_socket = $DIR/run/\$name.asok
pid_file = $DIR/run/\$name.pid
log_file = $DIR/log/\$name.log
public_addr = 127.0.0.1

[osd]
osd_data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
osd_objectstore = bluestore
bluestore_block_path = $DIR/osd/\$cluster-\$id.block
bluestore_cache_autotune = false
bluestore_cache_size = 64M
osd_memory_target = 1G
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_client_watch_timeout = 10
admin_socket = $DIR/run/\$name.asok
pid_file = $DIR/run/\$name.pid
log_file = $DIR/log/\$name.log
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
EOF
}

start_mon() { # Picks a free port, writes the conf, makes and starts mon.a.
  local fsid attempt port
  fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$DIR/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/ceph.client.admin.keyring" >/dev/null
  # Another cluster starting at the same moment may take the port between
  # the check and the mon's bind: then try again with another one.
  for attempt in 1 2 3; do
    port=$(free_port)
    write_conf "$port" "$fsid"
    rm -rf "$DIR/mon/ceph-a"
    mkdir -p "$DIR/mon/ceph-a"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
      >>"$DIR/log/mkfs.log" 2>&1 || dump_and_die "ceph-mon --mkfs failed"
    ceph-mon -c "$CONF" -i a >>"$DIR/log/daemons.log" 2>&1 || true
    if pid_of mon.a >/dev/null && cephc mon stat >/dev/null 2>&1; then
      say "mon up on 127.0.0.1:$port"
      return 0
    fi
    stop_daemon mon.a >/dev/null
    say "mon did not start on port $port (attempt $attempt)"
  done
  dump_and_die "mon did not start"
}

start_mgr() {
  mkdir -p "$DIR/mgr/ceph-x"
  cephc auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$DIR/mgr/ceph-x/keyring" >/dev/null
  ceph-mgr -c "$CONF" -i x >>"$DIR/log/daemons.log" 2>&1 || dump_and_die "ceph-mgr failed to start"
  say "mgr started"
}

create_osd() {
  local uuid key id
  uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  key=$(ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}\n' "$key" >"$DIR/osd-secret.json"
  id=$(cephc osd new "$uuid" -i "$DIR/osd-secret.json")
  rm -f "$DIR/osd-secret.json"
  [[ $id == 0 ]] || dump_and_die "expected osd id 0, the mon gave '$id'"
  mkdir -p "$DIR/osd/ceph-0"
  ceph-authtool --create-keyring "$DIR/osd/ceph-0/keyring" --name osd.0 --add-key "$key" >/dev/null
  truncate -s "$BLOCK_SIZE" "$DIR/osd/ceph-0.block"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$DIR/log/mkfs.log" 2>&1 ||
    dump_and_die "ceph-osd --mkfs failed (see $DIR/log/mkfs.log)"
  say "osd.0 created (bluestore on a sparse $BLOCK_SIZE file)"
}

run_osd() {
  ceph-osd -c "$CONF" -i 0 >>"$DIR/log/daemons.log" 2>&1 || dump_and_die "ceph-osd failed to start"
}

wait_for() { # description, then a command that succeeds once the state is reached
  local what=$1 deadline=$((SECONDS + HEALTH_TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || dump_and_die "no $what after ${HEALTH_TIMEOUT}s"
    sleep 0.5
  done
}

osd_up() { [[ $(cephc osd stat -f json) == *'"num_up_osds":1'* ]]; }
pgs_clean() { # every placement group active+clean (and there is at least one)
  cephc pg stat -f json | python3 -c '
import json, sys
s = json.load(sys.stdin)["pg_summary"]
states = s.get("num_pg_by_state", [])
sys.exit(0 if s["num_pgs"] > 0 and all(x["name"] == "active+clean" for x in states) else 1)'
}
health_ok() { [[ $(cephc health) == HEALTH_OK* ]]; }

cmd_start() {
  require_commands
  [[ -e $CONF ]] && die "$DIR already holds a cluster (stop it and remove the directory first)"
  mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash" "$DIR/mon" "$DIR/mgr" "$DIR/osd"
  local began=$SECONDS
  start_mon
  start_mgr
  create_osd
  run_osd
  wait_for "osd.0 up" osd_up
  say "osd.0 up"
  quiet cephc osd pool create rbd 8 8
  quiet cephc osd pool set rbd size 1 --yes-i-really-mean-it
  quiet rbd -c "$CONF" pool init rbd
  say "pool rbd created"
  wait_for HEALTH_OK health_ok
  say "HEALTH_OK after $((SECONDS - began))s; conf $CONF"
}

cmd_stop() {
  [[ -d $DIR/run ]] || { say "nothing runs in $DIR"; return 0; }
  # OSD and mgr together (each takes about 2 s), then the mon: an OSD
  # whose mon is gone waits osd_mon_shutdown_timeout (5 s) to say goodbye.
  stop_daemon osd.0 &
  stop_daemon mgr.x &
  wait
  stop_daemon mon.a
}

cmd_osd_stop() {
  stop_daemon osd.0
}

cmd_osd_start() {
  [[ -e $CONF ]] || die "no cluster in $DIR"
  pid_of osd.0 >/dev/null && { say "osd.0 already runs"; return 0; }
  run_osd
  wait_for "osd.0 up" osd_up
  wait_for "active+clean placement groups" pgs_clean
  say "osd.0 up, placement groups active+clean"
}

cmd_status() {
  local name pid
  for name in mon.a mgr.x osd.0; do
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
  if pid_of mon.a >/dev/null; then cephc -s; fi
}

case ${1:-} in
  -h | --help | help) usage; exit 0 ;;
  start | stop | osd-stop | osd-start | status) ;;
  '') usage >&2; exit 2 ;;
  *) echo "cluster.sh: unknown command '$1'" >&2; usage >&2; exit 2 ;;
esac
[[ $# == 2 ]] || { echo "cluster.sh: $1 needs exactly one argument, DIR" >&2; exit 2; }
DIR=$(realpath -m -- "$2")
CONF=$DIR/ceph.conf
case $1 in
  start) cmd_start ;;
  stop) cmd_stop ;;
  osd-stop) cmd_osd_stop ;;
  osd-start) cmd_osd_start ;;
  status) cmd_status ;;
esac
