#!/usr/bin/env bash
# The install procedure of the container image, in one place: the Dockerfile
# runs it in its two stages, and tests/deploy runs the same two steps in a clean
# virtualenv (the test for an image no Docker engine here can build).
#
#   install-runtime.sh wheels WHEELHOUSE
#       Build stage: wheels of this project (the directory above this script)
#       and of every runtime dependency into WHEELHOUSE. Anything that must be
#       compiled is compiled here, never in the runtime image.
#   install-runtime.sh install WHEELHOUSE VENV
#       Runtime stage: create the virtualenv VENV if it does not exist, install
#       the project from WHEELHOUSE only (no index, no compiler, no network),
#       check the dependency set, and smoke-test what the entrypoint loads.
#
# PYTHON names the interpreter that builds wheels and creates VENV (default
# python3). pip reads the rest of its settings from the environment: the
# Dockerfile sets PIP_NO_CACHE_DIR, the tests reuse pip's cache, and
# PIP_CONSTRAINT pins dependency versions when a constraints file is given.
set -euo pipefail

PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  echo "usage: $0 wheels WHEELHOUSE | install WHEELHOUSE VENV" >&2
  exit 2
}

build_wheels() {
  local wheelhouse=$1
  mkdir -p "$wheelhouse"
  "$PYTHON" -m pip wheel --wheel-dir "$wheelhouse" "$project"
}

install_runtime() {
  local wheelhouse=$1 venv=$2
  if [[ ! -x $venv/bin/python ]]; then
    "$PYTHON" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --no-index --find-links "$wheelhouse" cosyvoice-sidecar
  "$venv/bin/python" -m pip check
  # Everything `serve` imports (server, health, reflection, telemetry) must
  # resolve from the installed wheels alone, not only the lazy CLI module.
  "$venv/bin/python" -c 'import sidecar.server, sidecar.emulator, cosyvoice_sidecar_client'
  "$venv/bin/cosyvoice-sidecar" --version
  "$venv/bin/cosyvoice-sidecar" serve --help >/dev/null
}

case ${1:-} in
  wheels) [[ $# -eq 2 ]] || usage; build_wheels "$2" ;;
  install) [[ $# -eq 3 ]] || usage; install_runtime "$2" "$3" ;;
  *) usage ;;
esac
