#!/usr/bin/env bash
# Sets everything up, then mounts an embedded lake (formatted on first use) and shows it.
#   scripts/run.sh [MOUNTPOINT]      default /mnt/lake; data in ~/.local/share/lakefs-fuse/lake
# Unmount with: .venv/bin/lakefs-fuse umount MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mnt=${1:-/mnt/lake}
mkdir -p "$mnt"
if grep -q " $(realpath "$mnt") fuse.lakefs " /proc/mounts; then
  echo "already mounted at $mnt"
else
  .venv/bin/lakefs-fuse mount "$mnt"
fi
df -h "$mnt" | tail -n +1
echo "lake mounted at $mnt — try: cp -r /usr/share/doc $mnt/ && ls $mnt"
