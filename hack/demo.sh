#!/usr/bin/env bash
# make demo, in two parts. Needs only Go.
#  1. One node: an OSS emulator serves a generated model (safetensors shards, config, tokenizer);
#     `csi-plugin fetch` downloads it with parallel ranged GETs and verifies every object's CRC-64.
#  2. Broadcast: DEMO_NODES node agents (the node's real cache, chain and data plane) on
#     127.0.0.10, .11, … stage the same model; only the chain's head reads it from OSS.
#     Redis is an embedded miniredis unless DEMO_REDIS=host:port names one.
# Knobs: DEMO_SIZE (default 1GiB), DEMO_DIR (part 1's target; default a temporary directory),
# DEMO_RATE (part 1's emulator egress limit; default none), DEMO_NODES (4),
# DEMO_BROADCAST_RATE (part 2's OSS egress, default 250MB per second).
set -euo pipefail
cd "$(dirname "$0")/.."

size=${DEMO_SIZE:-1GiB}
work=$(mktemp -d -t modelcast-demo.XXXXXX)
model_dir=${DEMO_DIR:-$work/model}
emu_pid=
cleanup() {
	[ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null && wait "$emu_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> building"
make -s build

# The demo signs its requests like a real client: the emulator checks V4 signatures.
export OSS_ACCESS_KEY_ID=LTAIdemo0000modelcast OSS_ACCESS_KEY_SECRET=demo-secret-not-for-production
export OSS_REGION=cn-demo

echo "==> 1. one node: starting the OSS emulator with a ${size} model"
bin/ossemu --listen 127.0.0.1:0 --addr-file "$work/addr" --region "$OSS_REGION" \
	--bucket models --generate "models/demo/Qwen-demo/=${size}" ${DEMO_RATE:+--egress-rate "$DEMO_RATE"} \
	2>"$work/ossemu.log" &
emu_pid=$!
for _ in $(seq 600); do
	[ -s "$work/addr" ] && break
	kill -0 "$emu_pid" 2>/dev/null || { echo "emulator exited:" >&2; cat "$work/ossemu.log" >&2; exit 1; }
	sleep 0.1
done
[ -s "$work/addr" ] || { echo "emulator did not start:" >&2; cat "$work/ossemu.log" >&2; exit 1; }
endpoint=$(cat "$work/addr")

echo "==> csi-plugin fetch oss://models/demo/Qwen-demo/ from $endpoint"
bin/csi-plugin fetch -endpoint "$endpoint" oss://models/demo/Qwen-demo/ "$model_dir"

echo "==> files"
(cd "$model_dir" && ls -l)
echo "==> stopping the emulator"
kill -TERM "$emu_pid" && wait "$emu_pid" || true
emu_pid=

echo
echo "==> 2. broadcast: ${DEMO_NODES:-4} nodes stage the same ${size} model through one chain"
go run ./hack/demo --nodes "${DEMO_NODES:-4}" --size "$size" --rate "${DEMO_BROADCAST_RATE:-250MB}" --bin bin
