#!/usr/bin/env bash
# Builds the tools the tests run that Debian does not package, into bin/tools (once):
# helm, from the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=v3.22.0
mkdir -p bin/tools
if ! [ -x bin/tools/helm ] || ! bin/tools/helm version --template '{{.Version}}' 2>/dev/null | grep -q "^${HELM_VERSION%.*}"; then
	echo "tools: building helm $HELM_VERSION into bin/tools" >&2
	GOBIN="$PWD/bin/tools" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
