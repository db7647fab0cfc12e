#!/usr/bin/env bash
# Start or stop N storage peers on loopback, and format a lake that uses them.
#
#   scripts/cluster.sh start [N] [DIR]   N peers (default 9) under DIR (default /tmp/lakefs-cluster),
#                                        ports 7101.., one secret, and a lake DIR/lake with EC 6+3
#   scripts/cluster.sh stop [DIR]        stop the peers (SIGTERM) and unmount DIR/mnt if mounted
#   scripts/cluster.sh status [DIR]      the lake's peers, up or down
#
# Then: .venv/bin/lakefs-fuse mount DIR/mnt --data DIR/lake
set -euo pipefail
cd "$(dirname "$0")/.."
L=.venv/bin/lakefs-fuse
cmd=${1:-}
case "$cmd" in
  start)
    n=${2:-9}; dir=${3:-/tmp/lakefs-cluster}
    mkdir -p "$dir/mnt"
    [ -f "$dir/secret" ] || { python3 -c "import secrets; print(secrets.token_hex(32))" > "$dir/secret"; chmod 600 "$dir/secret"; }
    args=()
    for i in $(seq 0 $((n - 1))); do
      port=$((7101 + i))
      mkdir -p "$dir/peer$i"
      nohup $L peer serve --data "$dir/peer$i" --listen "127.0.0.1:$port" --zone "z$((i % 3))" \
        --secret-file "$dir/secret" >"$dir/peer$i.log" 2>&1 &
      echo $! > "$dir/peer$i.pid"
      args+=(--net-peer "127.0.0.1:$port@z$((i % 3))")
    done
    k=$(( n >= 9 ? 6 : n - 3 > 0 ? n - 3 : 1 )); m=$(( n >= 9 ? 3 : n - k ))
    if [ ! -f "$dir/lake/lake.json" ]; then
      $L format --data "$dir/lake" --ec "$k+$m" --secret-file "$dir/secret" "${args[@]}"
    fi
    echo "peers started; mount with: $L mount $dir/mnt --data $dir/lake"
    ;;
  stop)
    dir=${2:-/tmp/lakefs-cluster}
    grep -q " $dir/mnt " /proc/mounts && $L umount "$dir/mnt" || true
    for f in "$dir"/peer*.pid; do [ -f "$f" ] && { kill "$(cat "$f")" 2>/dev/null || true; }; rm -f "$f"; done
    echo "stopped"
    ;;
  status)
    dir=${2:-/tmp/lakefs-cluster}
    $L peer list --data "$dir/lake"
    ;;
  *) echo "usage: $0 start [N] [DIR] | stop [DIR] | status [DIR]" >&2; exit 2 ;;
esac
