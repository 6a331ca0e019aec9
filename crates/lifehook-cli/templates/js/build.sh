#!/bin/sh
# Builds {{name}}.wasm from app.js. Needs Node.js 18+; the first build
# installs @bytecodealliance/componentize-js 0.23.0 into node_modules
# ($COMPONENTIZE_JS points at another installation).
set -eu
cd "$(dirname "$0")"
tool="${COMPONENTIZE_JS:-node_modules/.bin/componentize-js}"
if [ ! -x "$tool" ]; then
    npm install --no-audit --no-fund --silent @bytecodealliance/componentize-js@0.23.0
    tool=node_modules/.bin/componentize-js
fi
"$tool" app.js --wit wit -n hook -o {{name}}.wasm
