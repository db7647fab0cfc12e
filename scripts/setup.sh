#!/usr/bin/env bash
# Installs everything lakefs-fuse needs on a fresh Debian machine (run as root, no stdin):
# Debian's fuse3, libfuse3-dev and pkg-config (plus test tools), then a virtualenv in .venv
# with the package and its pinned dependencies. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}

apt_pkgs=(fuse3 libfuse3-dev pkg-config)
[ "$want_test" = "--test" ] && apt_pkgs+=(attr fio stress-ng)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=""
# --test also brings the torch extra (~5.5 GB, ~75 s from local wheels) so CI runs tests/test_torch.py.
[ "$want_test" = "--test" ] && extras="[test,torch]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log=.venv/pip-install.log
  # pip is quiet here (its output goes to the log), so say what the next minutes are spent on.
  echo "setup: installing Python packages into $PWD/.venv (a few minutes${extras:+; with torch, ~5.5 GB}; log: $log)..." >&2
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" >"$log" 2>&1; then
    tail -30 "$log" >&2
    echo "setup: pip install failed (full log: $log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import pyfuse3, pyeclib.ec_iface, rocksdict, trio" || { echo "setup: install failed" >&2; exit 1; }
  if [ "$want_test" = "--test" ]; then
    .venv/bin/python -c "import torch, torchvision, PIL" || { echo "setup: torch extra install failed" >&2; exit 1; }
  fi
  touch "$stamp"
fi
