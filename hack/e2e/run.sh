#!/usr/bin/env bash
# hack/e2e/run.sh: make e2e. Brings up the local cluster (hack/e2e/cluster.sh all: Kubernetes
# built once and cached under $E2E_DIR), runs the e2e suite against it (test/e2e: helm install
# of the chart, pods reading models through the plugin) and always tears the cluster down.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin

start=$(date +%s)
bash hack/ensure-deps.sh
bash hack/tools.sh
cleanup() {
	local rc=$?
	if [ "$rc" -ne 0 ] && [ -n "${E2E_DIR:-}" ]; then
		echo "=== e2e failed: the tail of the components' logs ($E2E_DIR/logs)" >&2
		for f in "$E2E_DIR"/logs/*.log; do
			[ -f "$f" ] || continue
			echo "--- $f" >&2
			tail -n 15 "$f" >&2
		done
	fi
	bash hack/e2e/cluster.sh down || true
	echo "=== e2e: $(($(date +%s) - start)) s, exit $rc"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash hack/e2e/cluster.sh all
eval "$(bash hack/e2e/cluster.sh env)"
export KUBECONFIG KUBELET_DIR NODE_NAME NODE_IP E2E_DIR
go test -tags e2e -count=1 -timeout 30m -v ./test/e2e/ 2>&1 | tee "$E2E_DIR/logs/e2e-test.log" | grep -vE '^[IW][0-9]{4} ' || true
grep -q '^--- PASS: TestE2E' "$E2E_DIR/logs/e2e-test.log" && ! grep -q '^--- FAIL' "$E2E_DIR/logs/e2e-test.log"
