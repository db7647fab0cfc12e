#!/usr/bin/env bash
# Start or stop a local cluster on loopback: N storage peers and, optionally, M metadata servers.
#
#   scripts/cluster.sh start [--port P] [N] [DIR] [M]
#                            N peers (default 9) on 127.0.0.1 ports P, P+1, ... (P default 7101) in 3
#                            zones, one secret DIR/secret, all under DIR (default /tmp/lakefs-cluster).
#                            M = 0 (default): an embedded lake DIR/lake over the peers.
#                            M = 3 or 5: M metadata servers (Raft) on ports P+100, P+101, ..., and the
#                            lake formatted on them.
#                            A port in use is refused before anything starts, and the lake is formatted
#                            only once every server listens. On a cluster already started, the servers
#                            still running are left alone and the stopped ones are started again, with
#                            the ports and counts the lake was formatted with (DIR/layout).
#   scripts/cluster.sh stop [DIR]     unmount every mount of DIR's lake on this machine (refused if one
#                                     is busy), then stop every server (SIGTERM) and wait for them
#   scripts/cluster.sh status [DIR]   peers up/down; with metadata servers also each member's Raft role,
#                                     term, commit/applied index, lag and health. Exit 3 if a server of
#                                     DIR is not running.
#
# The mount command to use is printed by 'start' (and kept in DIR/mount-command).
set -euo pipefail
usage() { echo "usage: $0 start [--port P] [N] [DIR] [M] | stop [DIR] | status [DIR]" >&2; exit 2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
cmd=${1:-}
[ $# -gt 0 ] && shift
port_opt=""
pos=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || usage; port_opt=$2; shift 2 ;;
    --port=*) port_opt=${1#--port=}; shift ;;
    -*) usage ;;
    *) pos+=("$1"); shift ;;
  esac
done
# DIR is taken relative to where the script was called from, and kept absolute from here on.
case "$cmd" in start) dir_arg=${pos[1]:-} ;; *) dir_arg=${pos[0]:-} ;; esac
dir=$(realpath -m -- "${dir_arg:-/tmp/lakefs-cluster}")
cd "$(dirname "$0")/.."
ROOT=$PWD
L=$ROOT/.venv/bin/lakefs-fuse

is_number() { [[ $1 =~ ^[0-9]+$ ]]; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# running NAME: DIR/NAME.pid names a live process that is this cluster's server NAME (a pid file
# left by a server that died, or a pid since reused by another process, does not count).
running() {
  local pid
  pid=$(cat "$dir/$1.pid" 2>/dev/null) || return 1
  is_number "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--data $dir/$1 "
}

# serving NAME PORT: NAME runs and it is NAME's process that listens on PORT (ss names the owner;
# where ss is missing, that something listens there has to do).
serving() {
  running "$1" || return 1
  if command -v ss >/dev/null; then
    ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$(cat "$dir/$1.pid"),"
  else
    listening "$2"
  fi
}

# "N M P" (peers, metadata servers, first port) of the lake in DIR: DIR/layout, written when the lake
# was formatted, or for a cluster started before DIR/layout existed, its directories and the old ports.
layout() {
  if [ -f "$dir/layout" ]; then
    cat "$dir/layout"
  else
    echo "$(find "$dir" -maxdepth 1 -type d -name 'peer[0-9]*' | wc -l)" \
      "$(find "$dir" -maxdepth 1 -type d -name 'meta[0-9]*' | wc -l)" 7101
  fi
}

# servers N M P: one "NAME PORT" line per server (peers on P.., metadata servers on P+100..).
servers() {
  local i
  for i in $(seq 0 $(($1 - 1))); do echo "peer$i $(($3 + i))"; done
  for i in $(seq 1 "$2"); do echo "meta$i $(($3 + 99 + i))"; done
}

# Stop the servers named on stdin (one NAME a line): SIGTERM, then wait up to 30 s for them to exit.
stop_servers() {
  local name pid pids=() left=() deadline=$((SECONDS + 30))
  while read -r name _; do
    if running "$name"; then pids+=("$(cat "$dir/$name.pid")"); kill "${pids[-1]}" 2>/dev/null || true; fi
    rm -f "$dir/$name.pid"
  done
  while :; do
    left=()
    for pid in "${pids[@]}"; do  # a zombie has an empty command line: it counts as gone
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--data $dir/" && left+=("$pid")
    done
    [ ${#left[@]} -eq 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.1
  done
  echo "cluster.sh: servers still running after 30 s (pids ${left[*]})" >&2
  return 1
}

wait_for_leader() {
  local meta=$1 secret=$2
  for _ in $(seq 1 150); do
    "$L" meta status --meta "$meta" --secret-file "$secret" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# The mountpoints of DIR's lake on this machine: DIR/mnt, and every lakefs-fuse mount whose
# registration names DIR/lake or one of DIR's metadata servers.
lake_mounts() {
  "$ROOT/.venv/bin/python" - "$dir" <<'EOF'
import sys
from pathlib import Path

from lakefs_fuse.mount.daemon import FSTYPE, mounts, read_registry

d = Path(sys.argv[1])
meta = set((d / "meta").read_text().strip().split(",")) if (d / "meta").is_file() else set()
for _src, mnt, fstype in mounts():
    if fstype != FSTYPE:
        continue
    reg = read_registry(Path(mnt)) or {}
    if mnt == str(d / "mnt") or reg.get("data_dir") == str(d / "lake") or meta & set(reg.get("meta") or ()):
        print(mnt)
EOF
}

case "$cmd" in
  start)
    n=${pos[0]:-}; nmeta=${pos[2]:-}
    for v in "$n" "$nmeta" "$port_opt"; do [ -z "$v" ] || is_number "$v" || usage; done
    formatted=""
    if [ -f "$dir/layout" ] || [ -f "$dir/lake/lake.json" ] || [ -f "$dir/formatted" ]; then
      # The lake knows its servers by address: keep the counts and ports it was formatted with.
      formatted=1
      read -r rn rmeta rbase < <(layout)
      [ -z "$n" ] || [ "$n" = "$rn" ] || die "the lake in $dir was formatted over $rn peers, not $n"
      [ -z "$nmeta" ] || [ "$nmeta" = "$rmeta" ] || die "the lake in $dir has $rmeta metadata servers, not $nmeta"
      [ -z "$port_opt" ] || [ "$port_opt" = "$rbase" ] ||
        die "the lake in $dir knows its servers on ports $rbase..; start it without --port"
      n=$rn; nmeta=$rmeta; base=$rbase
    else
      n=${n:-9}; nmeta=${nmeta:-0}; base=${port_opt:-7101}
    fi
    [ "$n" -ge 1 ] || die "N must be at least 1"
    { [ "$base" -ge 1 ] && [ $((base + 99 + nmeta)) -le 65535 ]; } || die "--port $base: the ports do not fit below 65536"
    founders=""; meta=""; args=()
    for i in $(seq 1 "$nmeta"); do
      founders+="${founders:+,}$i=127.0.0.1:$((base + 99 + i))"; meta+="${meta:+,}127.0.0.1:$((base + 99 + i))"
    done
    for i in $(seq 0 $((n - 1))); do args+=(--net-peer "127.0.0.1:$((base + i))@z$((i % 3))"); done
    # Servers of DIR still running stay as they are; a port anyone else holds stops everything here.
    to_start=()
    while read -r name port; do
      if running "$name"; then
        echo "$name is running already (pid $(cat "$dir/$name.pid"))"
        continue
      fi
      if listening "$port"; then
        [ -n "$formatted" ] && die "127.0.0.1:$port (for $name) is in use by another process; the lake in $dir" \
          "knows $name by that address: free the port"
        die "127.0.0.1:$port (for $name) is in use by another process; choose other ports with --port P" \
          "(peers use P.., metadata servers P+100..)"
      fi
      to_start+=("$name $port")
    done < <(servers "$n" "$nmeta" "$base")
    mkdir -p "$dir/mnt"
    # Private from its first byte (umask), not made private after it was written.
    [ -f "$dir/secret" ] || (umask 077 && python3 -c "import secrets; print(secrets.token_hex(32))" >"$dir/secret.new" &&
      mv "$dir/secret.new" "$dir/secret")
    started=()
    abort() {  # stop what this start started, then fail with the reason
      [ ${#started[@]} -eq 0 ] || printf '%s\n' "${started[@]}" | stop_servers || true
      die "$@"
    }
    for entry in "${to_start[@]}"; do
      read -r name port <<<"$entry"
      case "$name" in
        peer*)
          i=${name#peer}
          mkdir -p "$dir/$name"
          nohup "$L" peer serve --data "$dir/$name" --listen "127.0.0.1:$port" --zone "z$((i % 3))" \
            --secret-file "$dir/secret" >>"$dir/$name.log" 2>&1 &
          ;;
        meta*)
          i=${name#meta}
          # --peers only on the very first start; afterwards each server knows its cluster from its log.
          peers=(); [ -f "$dir/$name/server.json" ] || peers=(--peers "$founders")
          nohup "$L" meta serve --id "$i" --data "$dir/$name" --listen "127.0.0.1:$port" \
            "${peers[@]}" --secret-file "$dir/secret" >>"$dir/$name.log" 2>&1 &
          ;;
      esac
      echo $! >"$dir/$name.pid"
      started+=("$name")
    done
    # Nothing is formatted before every server listens on its own port.
    while read -r name port; do
      deadline=$((SECONDS + 30))
      until serving "$name" "$port"; do
        running "$name" || abort "$name did not start on 127.0.0.1:$port: $(tail -n 1 "$dir/$name.log" 2>/dev/null)"
        [ "$SECONDS" -lt "$deadline" ] || abort "$name is not listening on 127.0.0.1:$port after 30 s; see $dir/$name.log"
        sleep 0.1
      done
    done < <(servers "$n" "$nmeta" "$base")
    k=$(( n >= 9 ? 6 : n - 3 > 0 ? n - 3 : 1 )); m=$(( n >= 9 ? 3 : n - k ))
    if [ "$nmeta" -gt 0 ]; then
      wait_for_leader "$meta" "$dir/secret" ||
        abort "no metadata leader elected within 30 s; see the meta*.log files in $dir"
      if [ ! -f "$dir/formatted" ]; then
        "$L" format --meta "$meta" --ec "$k+$m" --secret-file "$dir/secret" "${args[@]}" || abort "format failed"
        touch "$dir/formatted"
      fi
      echo "$meta" >"$dir/meta"
      mount=("$L" mount "$dir/mnt" --meta "$meta" --secret-file "$dir/secret")
    else
      if [ ! -f "$dir/lake/lake.json" ]; then
        "$L" format --data "$dir/lake" --ec "$k+$m" --secret-file "$dir/secret" "${args[@]}" || abort "format failed"
      fi
      mount=("$L" mount "$dir/mnt" --data "$dir/lake")
    fi
    echo "$n $nmeta $base" >"$dir/layout"
    line=$(printf '%q ' "${mount[@]}")
    echo "${line% }" >"$dir/mount-command"
    echo "cluster started; mount with: $(cat "$dir/mount-command")"
    ;;
  stop)
    [ -d "$dir" ] || die "$dir does not exist"
    # The mounts first, while the servers can still take what they hold; a mount left on stopped
    # servers would wait for them for minutes.
    mapfile -t mnts < <(lake_mounts)
    for mnt in "${mnts[@]}"; do
      "$L" umount "$mnt" || die "servers left running: $mnt could not be unmounted; close what uses it and stop again"
    done
    read -r rn rmeta rbase < <(layout)
    { servers "$rn" "$rmeta" "$rbase"; for f in "$dir"/*.pid; do if [ -f "$f" ]; then basename "$f" .pid; fi; done; } |
      awk '{print $1}' | sort -u | stop_servers || exit 1
    echo "stopped"
    ;;
  status)
    [ -d "$dir" ] || die "$dir does not exist"
    rc=0
    if [ -f "$dir/meta" ]; then
      "$L" status --meta "$(cat "$dir/meta")" --secret-file "$dir/secret" || rc=$?
    else
      "$L" peer list --data "$dir/lake" || rc=$?
    fi
    read -r rn rmeta rbase < <(layout)
    down=()
    while read -r name port; do
      serving "$name" "$port" || down+=("$name (127.0.0.1:$port)")
    done < <(servers "$rn" "$rmeta" "$rbase")
    if [ ${#down[@]} -gt 0 ]; then
      echo "cluster.sh: not running: ${down[*]}; 'start' starts them again (logs: $dir/NAME.log)" >&2
      exit 3
    fi
    exit "$rc"
    ;;
  *) usage ;;
esac
