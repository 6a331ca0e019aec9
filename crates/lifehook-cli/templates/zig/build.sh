#!/bin/sh
# Builds {{name}}.wasm from plugin.zig: a WASI preview-1 module, which
# lifehook adapts into a component itself. Needs Zig (0.17 tested, from the
# PyPI package `ziglang`: the first build installs it into .venv; $ZIG
# points at another one).
set -eu
cd "$(dirname "$0")"
if [ -n "${ZIG:-}" ]; then
    zig="$ZIG"
else
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet ziglang==0.17.1
    fi
    zig=".venv/bin/python -m ziglang"
fi
$zig build-exe -target wasm32-wasi -O ReleaseSmall -lc -femit-bin={{name}}.wasm plugin.zig
