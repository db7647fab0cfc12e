#!/usr/bin/env bash
# Start or stop a local cluster on loopback: N storage peers and, optionally, M metadata servers.
#
#   scripts/cluster.sh start [N] [DIR] [M]  N peers (default 9) on ports 7101.. in 3 zones, one secret
#                                           DIR/secret, all under DIR (default /tmp/lakefs-cluster).
#                                           M = 0 (default): an embedded lake DIR/lake over the peers.
#                                           M = 3 or 5: M metadata servers (Raft) on ports 7201.., and
#                                           the lake formatted on them.
#   scripts/cluster.sh stop [DIR]           unmount DIR/mnt if mounted, stop every server (SIGTERM)
#   scripts/cluster.sh status [DIR]         peers up/down; with metadata servers also each member's
#                                           Raft role, term, commit/applied index, lag and health
#
# The mount command to use is printed by 'start' (and kept in DIR/mount-command).
set -euo pipefail
cd "$(dirname "$0")/.."
L=.venv/bin/lakefs-fuse
cmd=${1:-}

wait_for_leader() {
  local meta=$1 secret=$2
  for _ in $(seq 1 150); do
    $L meta status --meta "$meta" --secret-file "$secret" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "no metadata leader elected within 30 s; see the meta*.log files" >&2
  return 1
}

case "$cmd" in
  start)
    n=${2:-9}; dir=${3:-/tmp/lakefs-cluster}; nmeta=${4:-0}
    mkdir -p "$dir/mnt"
    [ -f "$dir/secret" ] || { python3 -c "import secrets; print(secrets.token_hex(32))" > "$dir/secret"; chmod 600 "$dir/secret"; }
    args=()
    for i in $(seq 0 $((n - 1))); do
      port=$((7101 + i))
      mkdir -p "$dir/peer$i"
      nohup $L peer serve --data "$dir/peer$i" --listen "127.0.0.1:$port" --zone "z$((i % 3))" \
        --secret-file "$dir/secret" >>"$dir/peer$i.log" 2>&1 &
      echo $! > "$dir/peer$i.pid"
      args+=(--net-peer "127.0.0.1:$port@z$((i % 3))")
    done
    k=$(( n >= 9 ? 6 : n - 3 > 0 ? n - 3 : 1 )); m=$(( n >= 9 ? 3 : n - k ))
    if [ "$nmeta" -gt 0 ]; then
      founders=""; meta=""
      for i in $(seq 1 "$nmeta"); do
        founders+="${founders:+,}$i=127.0.0.1:$((7200 + i))"; meta+="${meta:+,}127.0.0.1:$((7200 + i))"
      done
      for i in $(seq 1 "$nmeta"); do
        # --peers only on the very first start; afterwards each server knows its cluster from its log.
        peers=(); [ -f "$dir/meta$i/server.json" ] || peers=(--peers "$founders")
        nohup $L meta serve --id "$i" --data "$dir/meta$i" --listen "127.0.0.1:$((7200 + i))" \
          "${peers[@]}" --secret-file "$dir/secret" >>"$dir/meta$i.log" 2>&1 &
        echo $! > "$dir/meta$i.pid"
      done
      wait_for_leader "$meta" "$dir/secret"
      if [ ! -f "$dir/formatted" ]; then
        $L format --meta "$meta" --ec "$k+$m" --secret-file "$dir/secret" "${args[@]}"
        touch "$dir/formatted"
      fi
      echo "$meta" > "$dir/meta"
      echo "$L mount $dir/mnt --meta $meta --secret-file $dir/secret" > "$dir/mount-command"
    else
      if [ ! -f "$dir/lake/lake.json" ]; then
        $L format --data "$dir/lake" --ec "$k+$m" --secret-file "$dir/secret" "${args[@]}"
      fi
      echo "$L mount $dir/mnt --data $dir/lake" > "$dir/mount-command"
    fi
    echo "cluster started; mount with: $(cat "$dir/mount-command")"
    ;;
  stop)
    dir=${2:-/tmp/lakefs-cluster}
    grep -q " $dir/mnt " /proc/mounts && $L umount "$dir/mnt" || true
    for f in "$dir"/peer*.pid "$dir"/meta*.pid; do
      [ -f "$f" ] && { kill "$(cat "$f")" 2>/dev/null || true; }; rm -f "$f"
    done
    echo "stopped"
    ;;
  status)
    dir=${2:-/tmp/lakefs-cluster}
    if [ -f "$dir/meta" ]; then
      $L status --meta "$(cat "$dir/meta")" --secret-file "$dir/secret"
    else
      $L peer list --data "$dir/lake"
    fi
    ;;
  *) echo "usage: $0 start [N] [DIR] [M] | stop [DIR] | status [DIR]" >&2; exit 2 ;;
esac
