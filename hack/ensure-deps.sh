#!/usr/bin/env bash
# Installs the Debian packages modelcast's tests need, when they are missing.
# Usage: hack/ensure-deps.sh [command:package ...]   (defaults to the list below)
set -euo pipefail

# command the tests run : Debian package that provides it
deps=(
	"mount:mount"
	"ip:iproute2"
	"redis-server:redis-server"
)
[ "$#" -gt 0 ] && deps=("$@")

missing=()
for d in "${deps[@]}"; do
	cmd=${d%%:*} pkg=${d#*:}
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-deps: missing ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
	exit 1
fi
echo "ensure-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
