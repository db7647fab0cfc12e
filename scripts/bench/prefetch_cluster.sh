#!/usr/bin/env bash
# Sampler-order prefetch on a cluster lake: a shuffled cold epoch over N small files, read one by
# one (the P3 loop), with and without the order handed to the mount's .prefetch, with and without
# --dataset. Same invocation, same data, ratios printed. Root (drop_caches); ~3 minutes.
#
#   scripts/bench/prefetch_cluster.sh [N_FILES] [DIR]      (defaults 3000, /tmp/lakefs-prefetch-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-3000}; DIR=${2:-/tmp/lakefs-prefetch-bench}
L=.venv/bin/lakefs-fuse
cleanup() { grep -q " $DIR/mnt " /proc/mounts && $L umount "$DIR/mnt" || true; scripts/cluster.sh stop "$DIR" >/dev/null || true; }
trap cleanup EXIT
rm -rf "$DIR"
scripts/cluster.sh start 9 "$DIR" 3 >/dev/null
M=$(cat "$DIR/meta")
mount_it() { $L mount "$DIR/mnt" --meta "$M" --secret-file "$DIR/secret" --no-disk-cache "$@" >/dev/null; }
mount_it
python3 - "$DIR/mnt" "$N" <<'PY'
import os, sys
mnt, n = sys.argv[1], int(sys.argv[2])
for c in range(10):
    os.makedirs(f"{mnt}/c{c}", exist_ok=True)
for i in range(n):
    with open(f"{mnt}/c{i % 10}/f{i}", "wb") as f:
        f.write(os.urandom(112640))
PY
$L umount "$DIR/mnt"
declare -A rate
for mode in "" "--dataset"; do
  for plan in noplan plan; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    # shellcheck disable=SC2086
    mount_it $mode
    rate["$plan$mode"]=$(python3 - "$DIR/mnt" "$N" "$plan" <<'PY'
import os, random, sys, time
mnt, n, plan = sys.argv[1], int(sys.argv[2]), sys.argv[3]
paths = [f"c{i % 10}/f{i}" for i in range(n)]
random.Random(1).shuffle(paths)
if plan == "plan":
    from lakefs_fuse.torch import prefetch
    assert prefetch([f"{mnt}/{p}" for p in paths])
t = time.monotonic()
for p in paths:
    with open(f"{mnt}/{p}", "rb") as f:
        f.read()
print(round(n / (time.monotonic() - t)))
PY
)
    $L umount "$DIR/mnt"
    echo "files/s ${plan}${mode:+ $mode}: ${rate[$plan$mode]}"
  done
done
python3 -c "
r = dict(a.split('=') for a in '''$(for k in "${!rate[@]}"; do echo "$k=${rate[$k]}"; done)'''.split())
print(f\"plan/noplan: {int(r['plan'])/int(r['noplan']):.2f}; with --dataset: {int(r['plan--dataset'])/int(r['noplan--dataset']):.2f}; dataset+plan / plain: {int(r['plan--dataset'])/int(r['noplan']):.2f}\")"
