#!/bin/sh
# Builds {{name}}.wasm from app.py. Needs Python 3.10+; the first build
# installs componentize-py 0.25.1 into .venv ($COMPONENTIZE_PY points at
# another installation).
set -eu
cd "$(dirname "$0")"
tool="${COMPONENTIZE_PY:-.venv/bin/componentize-py}"
if [ ! -x "$tool" ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet componentize-py==0.25.1
    tool=.venv/bin/componentize-py
fi
"$tool" -d wit -w hook componentize app -o {{name}}.wasm
