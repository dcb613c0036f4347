#!/usr/bin/env bash
# Moves a binary's debug info (the release profile keeps line tables, for
# backtraces with file and line) into BINARY.debug beside it, and leaves
# BINARY without it, linked to that file by name (gdb and perf find it).
# The Dockerfile ships the stripped binary; tests/deploy.rs runs this on the
# test build's binary.
set -euo pipefail
bin="${1:?usage: split-debuginfo.sh BINARY}"
objcopy --only-keep-debug "$bin" "$bin.debug"
objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$bin.debug" "$bin"
