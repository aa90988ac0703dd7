#!/usr/bin/env bash
# Generates what the API types in pkg/apis imply, with controller-gen from the Go module proxy:
# the deepcopy methods (zz_generated.deepcopy.go beside the types) and the CRDs, into
# charts/modelcast/crds/ (Helm installs a chart's crds/ before its templates).
#
# hack/generate.sh DIR writes both into DIR instead and changes nothing in the tree: the test
# that the committed files are current (pkg/apis/modelcast/v1alpha1) compares with that.
set -euo pipefail
cd "$(dirname "$0")/.."
CONTROLLER_GEN=sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0
if [ $# -gt 0 ]; then
	mkdir -p "$1"
	exec go run "$CONTROLLER_GEN" object crd paths=./pkg/apis/... output:object:dir="$1" output:crd:dir="$1"
fi
go run "$CONTROLLER_GEN" object crd paths=./pkg/apis/... output:crd:dir=charts/modelcast/crds
