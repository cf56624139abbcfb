#!/usr/bin/env bash
# Usage: require.sh COMMAND
# Fails when COMMAND is not on PATH: client tests never turn into silent skips,
# in CI or anywhere else.
set -euo pipefail
if ! command -v "$1" >/dev/null 2>&1; then
  echo "error: '$1' is required for these tests but is not on PATH${CI:+ (CI is set)}" >&2
  exit 1
fi
