#!/usr/bin/env bash
# Regenerate the checked-in code of every language from protos/.
#   scripts/gen-protos.sh          write Python (clients/python), Go (clients/go) and the
#                                  descriptor set that server reflection serves
#                                  (sidecar/rpc/descriptors.binpb: every file with its imports
#                                  and its comments, see sidecar/rpc/_reflection.py)
#   scripts/gen-protos.sh --check  generate into a scratch folder and fail on any drift
# Java is generated from the same file at build time by Maven (clients/java/pom.xml).
# Needs the venv (grpcio-tools, mypy-protobuf) and .tools (protoc-gen-go, -go-grpc)
# on PATH: run it through `make proto` / `make proto-check`.
set -euo pipefail
cd "$(dirname "$0")/.."
GO_MODULE=github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go
PROTOS=(cosyvoice/sidecar/v1/synthesizer.proto cosyvoice/sidecar/v1/status.proto)

check=false
[ "${1:-}" = "--check" ] && check=true
if $check; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  out_py=$scratch/python out_go=$scratch/go out_set=$scratch/descriptors.binpb
  mkdir -p "$out_py" "$out_go"
else
  out_py=clients/python out_go=clients/go out_set=sidecar/rpc/descriptors.binpb
fi

python -m grpc_tools.protoc -I protos \
  --python_out="$out_py" --grpc_python_out="$out_py" \
  --mypy_out="$out_py" --mypy_grpc_out="$out_py" \
  "${PROTOS[@]}"

python -m grpc_tools.protoc -I protos \
  --include_imports --include_source_info --descriptor_set_out="$out_set" \
  "${PROTOS[@]}"

if command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; then
  python -m grpc_tools.protoc -I protos \
    --go_out="$out_go" --go_opt=module=$GO_MODULE \
    --go-grpc_out="$out_go" --go-grpc_opt=module=$GO_MODULE \
    "${PROTOS[@]}"
elif [ -n "${CI:-}" ] || $check; then
  echo "error: protoc-gen-go / protoc-gen-go-grpc not on PATH (run 'make tools')" >&2
  exit 1
else
  echo "warning: Go generators missing; Go code not regenerated" >&2
fi

if $check; then
  status=0
  for f in $(cd "$out_py" && find . -name '*.py*' -type f); do
    diff -u "clients/python/$f" "$out_py/$f" || status=1
  done
  for f in $(cd "$out_go" && find . -name '*.go' -type f); do
    diff -u "clients/go/$f" "$out_go/$f" || status=1
  done
  cmp sidecar/rpc/descriptors.binpb "$out_set" || status=1
  if [ $status -ne 0 ]; then
    echo "error: generated code is out of date; run 'make proto' and commit" >&2
    exit 1
  fi
  echo "generated code matches protos/"
fi
