#!/usr/bin/env bash
# Create .venv at the repo root and install sernet-stream with the given extras, every
# dependency at the version its lock file in requirements/ names (two machines get the same set).
# Usage: scripts/setup.sh [EXTRAS]   e.g. worker,broker; base = the edge install (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
lock="requirements/${extras//,/-}.txt"
if [[ ! -f "$lock" ]]; then
  echo "no lock file $lock for extras '$extras'; locks: $(ls requirements | tr '\n' ' ')" >&2
  echo "(scripts/lock.sh writes them)" >&2
  exit 2
fi
python3 -m venv .venv
# torch==2.13.0 (training extra) resolves to the CPU wheel on this machine's disk
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r "$lock"
target="."
[[ "$extras" != base ]] && target=".[${extras}]"
.venv/bin/pip install --quiet --no-deps -e "$target"
