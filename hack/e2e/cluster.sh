#!/usr/bin/env bash
# hack/e2e/cluster.sh: a real single-node Kubernetes for modelcast's e2e tests, built and run
# offline on this machine (as root): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and a kubelet on containerd + runc. There is no registry: the images are built
# here as docker-archive tars and imported into containerd, so pods use imagePullPolicy: Never.
#
# Usage: hack/e2e/cluster.sh deps|build|images|up|down|env|all      (all = deps build images up)
#   deps    install the Debian packages it needs (through hack/ensure-deps.sh)
#   build   build Kubernetes $K8S_VERSION from the Go module proxy; cached in $E2E_DIR/bin
#   images  build registry.k8s.io/pause:3.10, docker.io/library/busybox:e2e and
#           modelcast/csi-plugin:$IMAGE_TAG (the repository's cmd/csi-plugin) as tars
#   up      start the cluster (stopping a previous run first) and wait for the node to be Ready
#   down    stop everything, unmount what is left, delete etcd's data and containerd's state;
#           keeps the binaries, the Go build cache and the certificates
#   env     print `export KUBECONFIG=... KUBELET_DIR=... NODE_NAME=... NODE_IP=... E2E_DIR=...`
#           for `eval "$(hack/e2e/cluster.sh env)"`
#
# Knobs: E2E_DIR (/var/tmp/modelcast-e2e), K8S_VERSION (v1.33.13), NODE (e2e-node), NODE_IP (the
# machine's primary IPv4), KUBELET_DIR ($E2E_DIR/kubelet: the chart's kubeletDir), IMAGE_TAG (e2e),
# VERSION (git describe). Components log to $E2E_DIR/logs/.
#
# For the tests: / is not a shared mount on these machines, so up makes $E2E_DIR (and
# KUBELET_DIR) one: hostPath volumes with mountPropagation Bidirectional must lie below them
# (the plugin's cache root too, e.g. $E2E_DIR/modelcast/cache); down unmounts all that is below.
# There is no kube-proxy and no cluster DNS: from pods only the `kubernetes` Service
# (10.0.0.1:443) is reachable, NATed to the apiserver.
# shellcheck disable=SC2317 # most functions run through step(), where shellcheck cannot see the call
set -euo pipefail
cd "$(dirname "$0")/../.."

E2E_DIR=$(realpath -m "${E2E_DIR:-/var/tmp/modelcast-e2e}")
K8S_VERSION=${K8S_VERSION:-v1.33.13}
NODE=${NODE:-e2e-node}
IMAGE_TAG=${IMAGE_TAG:-e2e}
KUBELET_DIR=$(realpath -m "${KUBELET_DIR:-$E2E_DIR/kubelet}")
[ "$E2E_DIR" != / ] || { echo "cluster.sh: E2E_DIR must not be /" >&2; exit 2; }

bin=$E2E_DIR/bin
logs=$E2E_DIR/logs
run=$E2E_DIR/run
pki=$E2E_DIR/pki
etc=$E2E_DIR/etc
images=$E2E_DIR/images
sock=$run/containerd.sock
k8s_gocache=$E2E_DIR/go-build # the Kubernetes build's own Go cache, kept by down
plugin_image=modelcast/csi-plugin:$IMAGE_TAG
service_ip=10.0.0.1 # the `kubernetes` Service: first address of --service-cluster-ip-range
nat_chain=MODELCAST-E2E

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
system_kubectl=$(command -v kubectl || true) # before $bin joins PATH: build kubectl only without one
export PATH=$PATH:$bin
export KUBECONFIG=$pki/admin.kubeconfig

die() {
	echo "cluster.sh: $*" >&2
	exit 1
}

need_root() {
	[ "$(id -u)" -eq 0 ] || die "$1 needs root"
}

# step TITLE COMMAND...: runs one step and prints how long it took.
step() {
	local title=$1 start=$SECONDS
	shift
	echo "==> $title"
	"$@"
	echo "==> $title: $((SECONDS - start))s"
}

# node_ip: $NODE_IP, else the source address of the default route, else the first global IPv4.
node_ip() {
	local ip=${NODE_IP:-}
	[ -n "$ip" ] || ip=$(ip -4 route get 1.1.1.1 2>/dev/null |
		awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}') || true
	[ -n "$ip" ] || ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{sub(/\/.*/, "", $4); print $4; exit}') || true
	echo "${ip:-127.0.0.1}"
}

busybox_is_static() {
	[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------- deps

cmd_deps() {
	# command (or file) the cluster uses : Debian package that provides it
	bash hack/ensure-deps.sh containerd:containerd ctr:containerd runc:runc etcd:etcd-server \
		busybox:busybox-static /usr/lib/cni/bridge:containernetworking-plugins \
		/usr/lib/cni/host-local:containernetworking-plugins /usr/lib/cni/loopback:containernetworking-plugins \
		openssl:openssl iptables:iptables conntrack:conntrack jq:jq curl:curl ip:iproute2 ss:iproute2 \
		mount:mount
	# Debian's busybox package is linked dynamically and passes the check above; images need
	# busybox-static (which replaces it).
	if ! busybox_is_static; then
		need_root "installing busybox-static"
		echo "cluster.sh: /bin/busybox is not static: installing busybox-static" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
	fi
}

# --------------------------------------------------------------------------------------- build

k8s_go() {
	GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local GOCACHE=$k8s_gocache go "$@"
}

# k8s_source: the k8s.io/kubernetes module, with its staging replace directives pointed at the
# published k8s.io/* modules (the module zip has neither staging/ nor vendor/).
k8s_source() {
	local src=$E2E_DIR/k8s-src staging=v0${K8S_VERSION#v1} dir
	dir=$(cd "$E2E_DIR" && k8s_go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .Dir)
	[ -d "$dir" ] || die "go mod download k8s.io/kubernetes@$K8S_VERSION gave no directory"
	rm -rf "$src"
	cp -r "$dir" "$src"
	chmod -R u+w "$src"
	rm -rf "$src"/go.work "$src"/go.work.sum "$src"/vendor
	sed -i -E "s#^(\s+k8s.io/[a-z0-9-]+) => \./staging/src/k8s.io/[a-z0-9-]+\$#\1 => \1 $staging#" "$src/go.mod"
	sed -i -E '/k8s.io\/sample-(apiserver|cli-plugin|controller)/d' "$src/go.mod"
	(cd "$src" && k8s_go mod download)
}

k8s_build_one() {
	local cmd=$1 ldflags="-s -w" minor p
	minor=$(cut -d. -f2 <<<"$K8S_VERSION")
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done
	(cd "$E2E_DIR/k8s-src" && k8s_go build -trimpath -ldflags "$ldflags" -o "$bin/.$cmd.tmp" "./cmd/$cmd")
	mv "$bin/.$cmd.tmp" "$bin/$cmd"
	echo "    $bin/$cmd: $(du -h "$bin/$cmd" | cut -f1)"
}

cmd_build() {
	local cmds=(kube-apiserver kubelet kube-controller-manager kube-scheduler) todo=() c
	[ -n "$system_kubectl" ] || cmds+=(kubectl)
	mkdir -p "$bin"
	# The stamp names the version of the binaries in $bin; each binary lands there only when built.
	if [ "$(cat "$bin/.k8s-version" 2>/dev/null)" != "$K8S_VERSION" ]; then
		rm -f "$bin"/kube-apiserver "$bin"/kubelet "$bin"/kube-controller-manager "$bin"/kube-scheduler "$bin"/kubectl
		echo "$K8S_VERSION" >"$bin/.k8s-version"
	fi
	for c in "${cmds[@]}"; do
		[ -x "$bin/$c" ] || todo+=("$c")
	done
	if [ "${#todo[@]}" -eq 0 ]; then
		echo "    Kubernetes $K8S_VERSION: cached in $bin (${cmds[*]})"
		return
	fi
	step "download k8s.io/kubernetes@$K8S_VERSION and its modules" k8s_source
	for c in "${todo[@]}"; do
		step "build $c $K8S_VERSION" k8s_build_one "$c"
	done
	rm -rf "$E2E_DIR/k8s-src"
}

# -------------------------------------------------------------------------------------- images

# mkimage ROOTFS REF OUT ENTRYPOINT: a one-layer docker-archive image of ROOTFS, without docker.
mkimage() {
	local root=$1 ref=$2 out=$3 entrypoint=$4 work diff
	work=$(mktemp -d "$images/mkimage.XXXXXX")
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=2020-01-01 -C "$root" -cf "$work/layer.tar" .
	diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
	jq -nc --arg arch "$(go env GOARCH)" --argjson entrypoint "$entrypoint" --arg diff "sha256:$diff" \
		'{architecture: $arch, os: "linux",
		  config: {Entrypoint: $entrypoint, Env: ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"], WorkingDir: "/"},
		  rootfs: {type: "layers", diff_ids: [$diff]}}' >"$work/config.json"
	jq -nc --arg ref "$ref" '[{Config: "config.json", RepoTags: [$ref], Layers: ["layer.tar"]}]' >"$work/manifest.json"
	tar -C "$work" -cf "$out.tmp" manifest.json config.json layer.tar
	mv "$out.tmp" "$out"
	rm -rf "$work"
	echo "    $ref: $out ($(du -h "$out" | cut -f1))"
}

# rootfs_base DIR: /tmp, /etc/passwd and /etc/group, /etc/mtab, and the host's CA bundle.
rootfs_base() {
	local root=$1
	mkdir -p "$root/bin" "$root/etc/ssl/certs" "$root/tmp"
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	ln -s /proc/mounts "$root/etc/mtab"
	if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
		cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
	fi
}

cmd_images() {
	busybox_is_static || die "/bin/busybox is missing or not static: run $0 deps"
	local root=$images/rootfs version applet
	version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo devel)}
	mkdir -p "$images"
	rm -rf "$root"
	mkdir -p "$root/pause" "$root/busybox" "$root/plugin"

	step "build pause (hack/e2e/pause)" \
		env CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$root/pause/pause" ./hack/e2e/pause
	step "build csi-plugin $version (cmd/csi-plugin)" \
		env CGO_ENABLED=0 go build -ldflags "-X github.com/modelcast/modelcast/internal/version.version=$version" \
		-o "$root/plugin/csi-plugin" ./cmd/csi-plugin

	rootfs_base "$root/busybox"
	cp /bin/busybox "$root/busybox/bin/busybox"
	for applet in $(/bin/busybox --list); do
		[ "$applet" = busybox ] || ln -s busybox "$root/busybox/bin/$applet"
	done

	# k8s.io/mount-utils runs mount and umount; sh is for kubectl exec.
	rootfs_base "$root/plugin"
	cp /bin/busybox "$root/plugin/bin/busybox"
	for applet in mount umount sh; do
		ln -s busybox "$root/plugin/bin/$applet"
	done

	step "write images" write_images
}

write_images() {
	mkimage "$images/rootfs/pause" registry.k8s.io/pause:3.10 "$images/pause.tar" '["/pause"]'
	mkimage "$images/rootfs/busybox" docker.io/library/busybox:e2e "$images/busybox.tar" '["/bin/sh"]'
	mkimage "$images/rootfs/plugin" "$plugin_image" "$images/plugin.tar" '["/csi-plugin"]'
	rm -rf "$images/rootfs"
}

# ----------------------------------------------------------------------------- processes, waits

# alive PID: the process exists and is not a zombie.
alive() {
	local state
	state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[ -n "$state" ] && [ "$state" != Z ]
}

# exe_name PID: the base name of the process's executable.
exe_name() {
	local exe
	exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
	exe=${exe% (deleted)}
	echo "${exe##*/}"
}

# ours PID: one of our components or containerd's shims: its executable is one of theirs and its
# command line names the state directory. Nothing else is ever signalled.
ours() {
	local cmdline
	case $(exe_name "$1") in
	containerd | containerd-shim-runc-v2 | etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet) ;;
	*) return 1 ;;
	esac
	cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$E2E_DIR/"* ]]
}

# start NAME COMMAND...: runs a component in its own session, logging to $logs/NAME.log.
start() {
	local name=$1
	shift
	[ -f "$logs/$name.log" ] && mv "$logs/$name.log" "$logs/$name.previous.log"
	# setsid may fork: the pid file is written by the process that then becomes the component.
	# shellcheck disable=SC2016 # expanded by that inner bash
	setsid bash -c 'echo $$ >"$0"; exec "$@"' "$run/$name.pid" "$@" >"$logs/$name.log" 2>&1 </dev/null &
	local i
	for ((i = 0; i < 50; i++)); do
		[ -s "$run/$name.pid" ] && return 0
		sleep 0.1
	done
	die "$name did not start; see $logs/$name.log"
}

# stop_pid PID NAME [SIGNAL]: SIGNAL (default SIGTERM), then SIGKILL after 20 s.
stop_pid() {
	local pid=$1 name=$2 signal=${3:-TERM} i
	if ! alive "$pid" || ! ours "$pid"; then
		return 0
	fi
	kill -s "$signal" "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		alive "$pid" || return 0
		sleep 0.2
	done
	echo "    $name ($pid) ignored SIG$signal for 20s: SIGKILL"
	kill -9 "$pid" 2>/dev/null || true
}

# pids_of NAME: the component's processes: the one its pid file names, and any other of ours
# running that executable (left by a run whose pid files are gone).
pids_of() {
	local p
	{
		[ ! -s "$run/$1.pid" ] || cat "$run/$1.pid"
		for p in /proc/[0-9]*; do
			p=${p#/proc/}
			if [ "$(exe_name "$p")" = "$1" ] && ours "$p"; then
				echo "$p"
			fi
		done
	} | sort -u
}

# stop NAME: stops the component NAME, wherever it was started from.
stop() {
	local name=$1 pid
	for pid in $(pids_of "$name"); do
		if ! alive "$pid" || ! ours "$pid"; then
			continue
		fi
		echo "    stopping $name ($pid)"
		stop_pid "$pid" "$name"
	done
	rm -f "$run/$name.pid"
}

# stop_shims: shims whose containerd is gone (their containers are their children: killed first).
stop_shims() {
	local shim child
	for shim in $(pids_of containerd-shim-runc-v2); do
		for child in $(ps -o pid= --ppid "$shim" 2>/dev/null); do
			kill -9 "$child" 2>/dev/null || true
		done
		echo "    stopping orphaned containerd-shim-runc-v2 ($shim)"
		stop_pid "$shim" containerd-shim-runc-v2 KILL
	done
}

# wait_for SECONDS WHAT COMPONENT COMMAND...: polls COMMAND; when it times out or COMPONENT
# exits, prints the tail of COMPONENT's log and fails.
wait_for() {
	local secs=$1 what=$2 name=$3 start=$SECONDS pid=""
	shift 3
	[ -f "$run/$name.pid" ] && pid=$(cat "$run/$name.pid")
	until "$@" >/dev/null 2>&1; do
		if [ -n "$pid" ] && ! alive "$pid"; then
			echo "cluster.sh: $name exited while waiting for $what; last lines of $logs/$name.log:" >&2
			tail -n 40 "$logs/$name.log" >&2 || true
			return 1
		fi
		if ((SECONDS - start >= secs)); then
			echo "cluster.sh: no $what after ${secs}s; last lines of $logs/$name.log:" >&2
			tail -n 40 "$logs/$name.log" >&2 || true
			return 1
		fi
		sleep 0.5
	done
	echo "    $what after $((SECONDS - start))s"
}

ctr_() {
	timeout 60 ctr --address "$sock" -n k8s.io "$@"
}

containerd_alive() {
	[ -S "$sock" ] && command -v ctr >/dev/null && timeout 10 ctr --address "$sock" version >/dev/null 2>&1
}

port_free() {
	[ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

# ------------------------------------------------------------------------------------- mounts

# mounts_below DIR: mount points strictly below DIR, deepest first.
mounts_below() {
	local m
	awk '{print $5}' /proc/self/mountinfo | while read -r m; do
		m=$(printf '%b' "$m") # mountinfo escapes blanks and backslashes as octal
		[[ $m == "$1"/* ]] && echo "$m"
	done | sort -ru
}

unmount_below() {
	local dir=$1 m pass
	for ((pass = 0; pass < 5; pass++)); do # stacked mounts come off one per pass
		[ -n "$(mounts_below "$dir")" ] || return 0
		mounts_below "$dir" | while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
	[ -z "$(mounts_below "$dir")" ] || echo "    still mounted below $dir: $(mounts_below "$dir" | tr '\n' ' ')" >&2
}

# shared_mount DIR MARKER: makes DIR a shared mount (a bind mount onto itself, which MARKER
# records for down), so that containers may mount below it with Bidirectional propagation.
shared_mount() {
	if ! mountpoint -q "$1"; then
		mount --bind "$1" "$1"
		touch "$2"
	fi
	mount --make-rshared "$1"
	echo "    $1: shared mount"
}

# unshare_mount DIR MARKER: undoes shared_mount (only the bind mount it made).
unshare_mount() {
	[ -f "$2" ] || return 0
	if mountpoint -q "$1"; then
		umount "$1" 2>/dev/null || umount -l "$1" || true
	fi
	rm -f "$2"
}

# remove DIR...: rm -rf, but only where nothing is mounted (never through a leftover bind mount).
remove() {
	local d
	for d in "$@"; do
		[ -e "$d" ] || continue
		if [ -n "$(mounts_below "$d")" ]; then
			echo "    not removing $d: something is still mounted below it" >&2
			continue
		fi
		rm -rf --one-file-system "$d"
	done
}

# ----------------------------------------------------------------------------------------- up

certs() (
	local ip=$1 subject
	subject="$NODE $ip"
	if [ -f "$pki/admin.kubeconfig" ] && [ "$(cat "$pki/subject" 2>/dev/null)" = "$subject" ]; then
		echo "    kept from a previous run ($pki)"
		return
	fi
	rm -rf "$pki"
	mkdir -p "$pki"
	cd "$pki"
	openssl genrsa -out ca.key 2048 2>/dev/null
	openssl req -x509 -new -key ca.key -days 3650 -subj /CN=modelcast-e2e-ca -out ca.crt
	cert kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$service_ip,IP:$ip" apiserver
	cert admin system:masters "" admin
	cert kube-apiserver-kubelet-client system:masters "" apiserver-kubelet-client
	cert "system:node:$NODE" system:nodes "DNS:$NODE,DNS:localhost,IP:127.0.0.1,IP:$ip" kubelet
	cert system:kube-controller-manager "" "" controller-manager
	cert system:kube-scheduler "" "" scheduler
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	local user
	for user in admin kubelet controller-manager scheduler; do
		cat >"$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {certificate-authority: $pki/ca.crt, server: "https://127.0.0.1:6443"}
users:
- name: $user
  user: {client-certificate: $pki/$user.crt, client-key: $pki/$user.key}
contexts:
- name: e2e
  context: {cluster: e2e, user: $user}
current-context: e2e
EOF
	done
	rm -f ./*.csr ./*.ext ca.srl
	echo "$subject" >subject
)

# cert CN O SAN FILE: FILE.crt and FILE.key signed by the CA; a server certificate when SAN is set.
cert() {
	local cn=$1 o=$2 san=$3 f=$4 subj="/CN=$1"
	[ -z "$o" ] || subj="/O=$o/CN=$cn"
	openssl genrsa -out "$f.key" 2048 2>/dev/null
	openssl req -new -key "$f.key" -subj "$subj" -out "$f.csr"
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=digitalSignature,keyEncipherment"
		if [ -n "$san" ]; then
			echo "extendedKeyUsage=serverAuth,clientAuth"
			echo "subjectAltName=$san"
		else
			echo "extendedKeyUsage=clientAuth"
		fi
	} >"$f.ext"
	openssl x509 -req -in "$f.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$f.ext" -out "$f.crt" 2>/dev/null
}

start_containerd() {
	mkdir -p "$E2E_DIR/cni/net.d" "$E2E_DIR/cni/ipam" "$E2E_DIR/containerd"
	cat >"$etc/containerd.toml" <<EOF
version = 2
root = "$E2E_DIR/containerd/root"
state = "$E2E_DIR/containerd/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$E2E_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # root here may not lower oom_score_adj: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF"
  restrict_oom_score_adj = true
  # network namespaces under the state directory, so that down finds and unmounts them
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$E2E_DIR/cni/net.d"
EOF
	cat >"$E2E_DIR/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "e2e-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$E2E_DIR/cni/ipam"}}]}
EOF
	start containerd containerd --config "$etc/containerd.toml"
	wait_for 30 "containerd" containerd containerd_alive
	local t
	for t in pause busybox plugin; do
		ctr_ images import "$images/$t.tar" >/dev/null
	done
	ctr_ images ls -q | grep -v '^sha256:' | sed 's/^/    image /'
}

start_etcd() {
	mkdir -p "$E2E_DIR/etcd"
	chmod 700 "$E2E_DIR/etcd"
	start etcd etcd --name e2e --data-dir "$E2E_DIR/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster e2e=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
	wait_for 30 "etcd healthy" etcd curl -sf http://127.0.0.1:2379/health
}

start_apiserver() {
	local ip=$1
	start kube-apiserver "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
		--bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$ip" \
		--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
		--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$pki/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP,Hostname \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
		--service-cluster-ip-range=10.0.0.0/24 --authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction --allow-privileged=true \
		--cert-dir="$run/apiserver-certs"
	wait_for 120 "kube-apiserver ready" kube-apiserver kubectl get --raw /readyz
}

# nat_rules add|delete: pods and the host reach the apiserver at the `kubernetes` Service's
# address, as kube-proxy would arrange (there is none here).
nat_rules() {
	command -v iptables >/dev/null || return 0
	local ip=${2:-} hook
	for hook in PREROUTING OUTPUT; do
		while iptables -t nat -C "$hook" -j "$nat_chain" 2>/dev/null; do
			iptables -t nat -D "$hook" -j "$nat_chain"
		done
	done
	iptables -t nat -F "$nat_chain" 2>/dev/null || true
	iptables -t nat -X "$nat_chain" 2>/dev/null || true
	[ "$1" = add ] || return 0
	if iptables -t nat -N "$nat_chain" &&
		iptables -t nat -A "$nat_chain" -d "$service_ip/32" -p tcp --dport 443 -j DNAT --to-destination "$ip:6443" &&
		iptables -t nat -I PREROUTING -j "$nat_chain" &&
		iptables -t nat -I OUTPUT -j "$nat_chain"; then
		echo "    $service_ip:443 (Service kubernetes) -> $ip:6443"
	else
		echo "cluster.sh: warning: no NAT rule for $service_ip:443: pods cannot reach the API server" >&2
	fi
}

start_controllers() {
	start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$pki/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$pki/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$pki/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key" \
		--root-ca-file="$pki/ca.crt" --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
		--controllers='*,-node-ipam-controller,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller' \
		--pvclaimbinder-sync-period=2s
	start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$pki/scheduler.kubeconfig" \
		--authentication-kubeconfig="$pki/scheduler.kubeconfig" --authorization-kubeconfig="$pki/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false
	wait_for 60 "kube-controller-manager healthy" kube-controller-manager curl -skf https://127.0.0.1:10257/healthz
	wait_for 60 "kube-scheduler healthy" kube-scheduler curl -skf https://127.0.0.1:10259/healthz
}

node_ready() {
	[ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

node_untainted() {
	[ -z "$(kubectl get node "$NODE" -o jsonpath='{.spec.taints}')" ]
}

start_kubelet() {
	local ip=$1
	mkdir -p "$KUBELET_DIR" "$E2E_DIR/pod-logs" "$E2E_DIR/volume-plugins"
	[[ $KUBELET_DIR == "$E2E_DIR"/* ]] || shared_mount "$KUBELET_DIR" "$E2E_DIR/.bound-kubelet-dir"
	cat >"$etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
failSwapOn: false
podLogsDir: $E2E_DIR/pod-logs
volumePluginDir: $E2E_DIR/volume-plugins
resolvConf: /etc/resolv.conf
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
serializeImagePulls: false
# the imported images cannot be pulled again: never garbage-collect them, never evict for disk
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
	start kubelet "$bin/kubelet" --config="$etc/kubelet.yaml" --kubeconfig="$pki/kubelet.kubeconfig" \
		--root-dir="$KUBELET_DIR" --hostname-override="$NODE" --node-ip="$ip" --v=2
	wait_for 180 "node $NODE Ready" kubelet node_ready
	wait_for 60 "node $NODE without taints" kube-controller-manager node_untainted
	wait_for 60 "ServiceAccount default/default" kube-controller-manager kubectl get serviceaccount default -n default
}

check_ports() {
	local p holder
	for p in 2379 2380 2381 6443 10248 10250 10257 10259; do
		port_free "$p" && continue
		holder=$(ss -Hltnp "sport = :$p" 2>/dev/null | grep -o 'users:.*' | head -n1)
		die "port $p is in use by another process (${holder:-unknown}); is another cluster running?"
	done
}

cmd_up() {
	need_root up
	local start=$SECONDS ip c t
	ip=$(node_ip)
	for c in kube-apiserver kubelet kube-controller-manager kube-scheduler; do
		[ -x "$bin/$c" ] || die "$bin/$c is missing: run $0 build"
	done
	command -v kubectl >/dev/null || die "no kubectl: run $0 build"
	for t in pause busybox plugin; do
		[ -s "$images/$t.tar" ] || die "$images/$t.tar is missing: run $0 images"
	done
	for c in containerd runc etcd openssl iptables curl jq ss; do
		command -v "$c" >/dev/null || die "$c is missing: run $0 deps"
	done

	step "stop a previous run" cmd_down
	check_ports
	mkdir -p "$logs" "$run" "$etc"
	step "shared mount" shared_mount "$E2E_DIR" "$E2E_DIR/.bound-e2e-dir"
	step "certificates" certs "$ip"
	step "containerd" start_containerd
	step "etcd" start_etcd
	step "kube-apiserver" start_apiserver "$ip"
	step "NAT for the kubernetes Service" nat_rules add "$ip"
	step "kube-controller-manager and kube-scheduler" start_controllers
	step "kubelet" start_kubelet "$ip"
	echo "==> cluster up in $((SECONDS - start))s"
	echo "    node:        $NODE"
	echo "    node IP:     $ip"
	echo "    kubelet dir: $KUBELET_DIR (the chart's kubeletDir)"
	echo "    images:      registry.k8s.io/pause:3.10 docker.io/library/busybox:e2e $plugin_image (imagePullPolicy: Never)"
	echo "    logs:        $logs/"
	echo "    environment: eval \"\$($0 env)\""
}

# --------------------------------------------------------------------------------------- down

# kill_containers: every container containerd runs for us, killed and deleted (the shims exit).
kill_containers() {
	containerd_alive || return 0
	local ids id
	ids=$(ctr_ tasks ls -q 2>/dev/null) || return 0
	[ -n "$ids" ] || return 0
	echo "    killing $(wc -w <<<"$ids") containers"
	for id in $ids; do
		ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
	done
	for id in $ids; do
		ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
	done
}

cmd_down() {
	need_root down
	local name
	# the kubelet first, or it restarts the containers; etcd after the apiserver, which otherwise
	# waits for it while shutting down
	stop kubelet
	kill_containers
	for name in kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do
		stop "$name"
	done
	stop_shims
	unmount_below "$E2E_DIR"
	unmount_below "$KUBELET_DIR"
	unshare_mount "$KUBELET_DIR" "$E2E_DIR/.bound-kubelet-dir"
	unshare_mount "$E2E_DIR" "$E2E_DIR/.bound-e2e-dir"
	if command -v ip >/dev/null && ip link show cni0 >/dev/null 2>&1; then
		ip link delete cni0
	fi
	nat_rules delete
	remove "$E2E_DIR/etcd" "$E2E_DIR/containerd" "$E2E_DIR/cni" "$E2E_DIR/pod-logs" "$run"
	# the kubelet's state goes too, when it is ours
	[[ $KUBELET_DIR != "$E2E_DIR"/* ]] || remove "$KUBELET_DIR"
}

# ---------------------------------------------------------------------------------------- env

cmd_env() {
	printf 'export KUBECONFIG=%q KUBELET_DIR=%q NODE_NAME=%q NODE_IP=%q E2E_DIR=%q\n' \
		"$KUBECONFIG" "$KUBELET_DIR" "$NODE" "$(node_ip)" "$E2E_DIR"
	if [ -z "$system_kubectl" ] && [ -x "$bin/kubectl" ]; then
		# shellcheck disable=SC2016 # $PATH is for the eval, not for now
		printf 'export PATH=$PATH:%q\n' "$bin"
	fi
}

main() {
	case ${1:-} in
	deps) step deps cmd_deps ;;
	build) step build cmd_build ;;
	images) step images cmd_images ;;
	up) cmd_up ;;
	down) step down cmd_down ;;
	env) cmd_env ;;
	all)
		all_start=$SECONDS
		step deps cmd_deps
		step build cmd_build
		step images cmd_images
		cmd_up
		echo "==> all: $((SECONDS - all_start))s"
		;;
	*)
		echo "usage: $0 deps|build|images|up|down|env|all" >&2
		exit 2
		;;
	esac
	# bash reads a script as it runs it: exit here, so that an edit of this file while it runs
	# cannot make it run whatever then lies after the call below
	exit 0
}

main "$@"
