#!/usr/bin/env bash
# Regenerate the lock files in requirements/ from pyproject.toml, one per install that
# scripts/setup.sh, the Dockerfiles and the README name. Needs uv (pip install uv); the torch
# CPU wheel is found in /opt/wheels where this machine keeps it.
# Usage: scripts/lock.sh [--upgrade]
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-uv}"
for extras in base worker broker worker,broker mic training test bench all; do
  out="requirements/${extras//,/-}.txt"
  args=()
  [[ "$extras" != base ]] && for e in ${extras//,/ }; do args+=(--extra "$e"); done
  "$uv" pip compile pyproject.toml "${args[@]}" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --find-links /opt/wheels --no-header --quiet "$@" -o "$out"
  sed -i "1i # Lock for: pip install -r $out (extras: $extras). Regenerate: scripts/lock.sh" "$out"
done
