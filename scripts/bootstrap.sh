#!/usr/bin/env bash
# Create or refresh .venv from uv.lock; a stamp of the lock's hash makes a second run instant.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stamp=.venv/.bootstrap-stamp
want=$(cat uv.lock pyproject.toml "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi

if command -v uv >/dev/null; then
  uv=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  uv=(python3 -m uv)
else
  echo "bootstrap: installing uv with pip"
  # --isolated: ignore pip config and PIP_* variables (they may point at local wheel folders).
  python3 -m pip install --isolated --quiet --disable-pip-version-check uv \
    || python3 -m pip install --isolated --quiet --disable-pip-version-check --user --break-system-packages uv
  uv=(python3 -m uv)
fi

echo "bootstrap: syncing .venv from uv.lock (first time: a few GB of wheels, about a minute)"
start=$SECONDS
# --compile-bytecode: every .py compiled once here. Without it a process compiles torch's sources again at each
# start wherever bytecode is not written back (PYTHONDONTWRITEBYTECODE, a read-only venv): 7 of the 12 s that
# `fracture classify` of one file took on this machine, and the same in every worker and web process started.
"${uv[@]}" sync --frozen --python 3.11 --compile-bytecode
echo "$want" >"$stamp"
echo "bootstrap: .venv ready in $((SECONDS - start))s"
