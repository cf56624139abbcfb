#!/usr/bin/env bash
# `make run`: start the sidecar on the embedded DashScope emulator, synthesize a
# sample through gRPC with `cosyvoice-sidecar say`, then keep serving until Ctrl-C.
# COSYVOICE_SIDECAR_LISTEN picks the address (default 127.0.0.1:50051);
# COSYVOICE_DEMO_OUT the directory for the sample and the logs (default out);
# COSYVOICE_DEMO_EXIT=1 stops after the sample (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
listen=${COSYVOICE_SIDECAR_LISTEN:-127.0.0.1:50051}
out=${COSYVOICE_DEMO_OUT:-out}
mkdir -p "$out"
"$bin/cosyvoice-sidecar" serve --emulator --listen "$listen" >"$out/sidecar.stdout" 2>"$out/sidecar.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
trap 'exit 0' INT TERM

for _ in $(seq 1 200); do  # at most 20 s for the pool to warm up
  grep -q '^serving on ' "$out/sidecar.stdout" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the sidecar did not start; its log ($out/sidecar.log):" >&2
    cat "$out/sidecar.log" >&2
    exit 1
  fi
  sleep 0.1
done
addr=$(sed -n 's/^serving on //p' "$out/sidecar.stdout")
[ -n "$addr" ] || { echo "the sidecar did not report its address in 20 s" >&2; exit 1; }
echo "sidecar serving on $addr (embedded emulator; log in $out/sidecar.log)"

"$bin/cosyvoice-sidecar" say --addr "$addr" -o "$out/sample.wav" \
  "Hello from cosyvoice-sidecar. This audio came through gRPC from a warm WebSocket pool."
echo "sample written to $out/sample.wav"

# `make run` installs the venv only; grpcurl comes with `make tools`.
if [ -x .tools/bin/grpcurl ]; then
  echo "try: .tools/bin/grpcurl -plaintext $addr list"
else
  echo "try: $bin/cosyvoice-sidecar say --addr $addr -o $out/hello.wav 'Hello again.'  (make tools adds .tools/bin/grpcurl)"
fi
if [ "${COSYVOICE_DEMO_EXIT:-}" = 1 ]; then exit 0; fi
echo "Ctrl-C stops the sidecar"
wait "$pid"
