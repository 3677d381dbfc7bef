#!/usr/bin/env bash
# graflow-image.sh builds the Docker image graflow/graflow:dev from the
# Dockerfile at the repository's root (make image).
#
# No registry is reachable from our machines, so nothing is pulled:
#   - the Dockerfile's build stage starts FROM graflow/go-builder:<go version>,
#     which this script assembles from the host's Go toolchain (GOROOT, a
#     /bin/sh to run RUN lines, the CA bundle) and loads with `docker import`
#     when it is missing;
#   - the modules come from the host's module cache (the Go module proxy is
#     reached from the host only): the script copies the working tree (files
#     git tracks or would track) into a temporary build context and adds a
#     vendor/ directory there with `go mod vendor -o`. The repository never
#     holds a vendor/ directory.
# The final stage is FROM scratch: the static binary, the CA bundle, a
# numeric non-root user.
#
# The build stage is tagged graflow/graflow:dev-build so that its layers
# (the compiled dependencies above all) stay the cache of the next build;
# the dangling images that earlier builds of the same image left are
# removed (only those: they carry the label io.graflow.image).
#
# Environment: GRAFLOW_IMAGE (graflow/graflow:dev), GO (go).
set -euo pipefail

IMAGE="${GRAFLOW_IMAGE:-graflow/graflow:dev}"
GO="${GO:-go}"

log() { printf 'graflow-image: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

cd "$(dirname "$0")/.."

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed: install Docker Engine, then run make image again"
timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
	die "the Docker engine does not answer (is dockerd running, may this user use it?)"

# One build at a time on this machine: builds share the builder image and
# the cache, and the clean-up below must not race another build.
if command -v flock >/dev/null 2>&1; then
	exec 9>"${TMPDIR:-/tmp}/graflow-image.lock"
	flock 9
fi

goversion="$("$GO" env GOVERSION)" # go1.26.8
goroot="$("$GO" env GOROOT)"
builder="graflow/go-builder:${goversion#go}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# copy_with_libs copies the dynamically linked program $1 into the root
# filesystem $2, with every library ldd resolves and the dynamic loader
# (as scripts/redis-image.sh does for redis-server).
copy_with_libs() {
	local bin="$1" root="$2" lib
	mkdir -p "$root$(dirname "$bin")"
	cp -L "$bin" "$root$bin"
	for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

build_builder() {
	log "building $builder from the host's Go toolchain ($goroot)"
	local root="$tmp/rootfs"
	mkdir -p "$root/usr/local/go" "$root/tmp" "$root/root" "$root/etc/ssl/certs"
	chmod 1777 "$root/tmp"
	# The toolchain without its own tests and documentation (not needed to build).
	tar -C "$goroot" --exclude=./test --exclude=./doc --exclude=./api --exclude=./misc -c . |
		tar -C "$root/usr/local/go" -x
	copy_with_libs /bin/sh "$root"
	[ -f /etc/ssl/certs/ca-certificates.crt ] ||
		die "/etc/ssl/certs/ca-certificates.crt not found (apt-get install ca-certificates)"
	cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
	tar -C "$root" -c . | docker import \
		-c 'ENV PATH=/usr/local/go/bin:/usr/bin:/bin' \
		-c 'ENV HOME=/root' \
		-c 'ENV GOTOOLCHAIN=local' \
		-c 'ENV GOPROXY=off' \
		-m "graflow: the host's Go toolchain, see scripts/graflow-image.sh" \
		- "$builder" >/dev/null
	docker run --rm "$builder" go version >&2
	rm -rf "$root"
}

if ! docker image inspect "$builder" >/dev/null 2>&1; then
	build_builder
fi

# The build context: the working tree's source as git sees it (tracked and
# untracked files, not the ignored ones: no bin/, no .data/), or the whole
# tree but those outside a git checkout; then vendor/.
ctx="$tmp/context"
mkdir -p "$ctx"
if command -v git >/dev/null 2>&1 && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
		tar --null -T - -c | tar -C "$ctx" -x
else
	tar --exclude=./.git --exclude=./bin --exclude=./.data -c . | tar -C "$ctx" -x
fi
"$GO" mod vendor -o "$ctx/vendor"
# The layer cache keys on file modes too: make them independent of the
# checkout's umask (a git archive unpacks go.mod as 664).
chmod -R u+rwX,go+rX,go-w "$ctx"

# Every package graflow imports from outside the module, the standard
# library's included: the build stage compiles them in a layer of their
# own, reused until the set changes, so a build compiles the module alone.
deps="$("$GO" list -deps -f '{{if .Standard}}{{.ImportPath}}{{else if not .Module.Main}}{{.ImportPath}}{{end}}' ./cmd/graflow | tr '\n' ' ')"

start=$(date +%s)
docker build --target build -t "$IMAGE-build" \
	--build-arg GO_BUILDER="$builder" --build-arg GRAFLOW_DEPS="$deps" "$ctx"
docker build -t "$IMAGE" \
	--build-arg GO_BUILDER="$builder" --build-arg GRAFLOW_DEPS="$deps" "$ctx"
docker image prune -f --filter label=io.graflow.image >/dev/null

# Smoke check: the binary runs, as a non-root user.
docker run --rm "$IMAGE" --help >/dev/null 2>&1 || die "$IMAGE: /graflow --help failed"
user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
case "$user" in
"" | 0 | 0:* | root | root:*) die "$IMAGE runs as root (USER \"$user\")" ;;
esac
log "built $IMAGE in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes, user $user)"
