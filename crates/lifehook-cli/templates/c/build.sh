#!/bin/sh
# Builds {{name}}.wasm from plugin.c: a WASI preview-1 module, which
# lifehook adapts into a component itself. Debian 12: apt-get install
# clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32 (or set CC to a
# wasi-sdk clang, with its sysroot).
set -eu
cd "$(dirname "$0")"
"${CC:-clang-16}" --target=wasm32-wasi -O2 -Wall -Wl,--strip-all -o {{name}}.wasm plugin.c
