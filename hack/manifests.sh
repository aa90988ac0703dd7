#!/usr/bin/env bash
# Renders the Helm chart, its CRDs included, into deploy/modelcast.yaml: plain manifests for
# `kubectl apply`.
# TestManifestsCurrent fails when they differ from what the chart renders.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/tools.sh
{
	cat <<'HEAD'
# modelcast, rendered from charts/modelcast by `make manifests` (do not edit: edit the chart).
# Installs into kube-system with the chart's defaults, except redis.mode=none: without Redis
# every node reads its models from OSS itself. For broadcasting, install with Helm (a bundled
# or an external Redis), or set broadcast.db in the ConfigMap's config.json and
# MODELCAST_REDIS_PASSWORD in the node DaemonSet.
HEAD
	bin/tools/helm template modelcast charts/modelcast --namespace kube-system --set redis.mode=none --include-crds
} > deploy/modelcast.yaml
