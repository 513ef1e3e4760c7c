#!/bin/sh
# Builds the Porcupine driver against a fetched Porcupine checkout and runs it on the given
# histories. Usage: PORCUPINE_SRC=/path/to/porcupine benchmarks/porcupine/run.sh [-timeout 60s] [-per-key] FILE...
# Needs Go (Debian: apt-get install golang-go). Nothing is downloaded: the only dependency is
# the local copy named by PORCUPINE_SRC (e.g. `git clone https://github.com/anishathalye/porcupine`).
set -eu
: "${PORCUPINE_SRC:?set PORCUPINE_SRC to a checkout of github.com/anishathalye/porcupine}"
here=$(cd "$(dirname "$0")" && pwd)
build=${PORCUPINE_BUILD:-${TMPDIR:-/tmp}/kvstore-porcupine-driver}
mkdir -p "$build"
cp "$here/main.go" "$build/main.go"
cat > "$build/go.mod" <<MOD
module kvstore.local/porcupine-driver

go 1.16

require github.com/anishathalye/porcupine v0.0.0

replace github.com/anishathalye/porcupine => $(cd "$PORCUPINE_SRC" && pwd)
MOD
(cd "$build" && GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local go build -o porcupine-driver .)
exec "$build/porcupine-driver" "$@"
