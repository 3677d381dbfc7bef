#!/usr/bin/env bash
# redis-image.sh builds the local Docker image graflow/redis:7.0 that the test
# harness (internal/redistest) runs through testcontainers-go.
#
# No registry is reachable from our machines, so the image is not pulled: it is
# assembled from the host's redis-server binary plus every shared library it
# links (as listed by ldd) and imported with `docker import`.
#
# Idempotent: it installs redis-server only when missing and builds the image
# only when `docker image inspect` does not find it. When the Docker engine
# does not answer it exits 0 with a message; the harness then falls back to a
# redis-server child process.
set -euo pipefail

IMAGE="${GRAFLOW_REDIS_IMAGE:-graflow/redis:7.0}"
REDIS_BIN=/usr/bin/redis-server

log() { printf 'redis-image: %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		log "need root to run: $*"
		return 1
	fi
}

install_redis() {
	log "redis-server not found; installing it with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	if ! as_root apt-get install -y --no-install-recommends redis-server; then
		log "install failed; running apt-get update and retrying"
		as_root apt-get update
		as_root apt-get install -y --no-install-recommends redis-server
	fi
}

if [ ! -x "$REDIS_BIN" ]; then
	install_redis
fi
"$REDIS_BIN" --version >&2

if ! command -v docker >/dev/null 2>&1; then
	log "docker CLI not installed; skipping image build (tests fall back to a redis-server process)"
	exit 0
fi
if ! timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
	log "docker engine not answering; skipping image build (tests fall back to a redis-server process)"
	exit 0
fi

# Test binaries of several packages may run this at once; build only once.
if command -v flock >/dev/null 2>&1; then
	exec 9>"${TMPDIR:-/tmp}/graflow-redis-image.lock"
	flock 9
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
	log "image $IMAGE already present"
	exit 0
fi

log "building $IMAGE from $REDIS_BIN"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# The binary itself. On Debian /usr/bin/redis-server is a symlink to
# redis-check-rdb and picks its mode from argv[0], so it must be copied under
# the redis-server name (cp -L dereferences).
mkdir -p "$root/usr/bin" "$root/data" "$root/tmp"
chmod 1777 "$root/tmp"
cp -L "$REDIS_BIN" "$root/usr/bin/redis-server"

# Every library ldd resolves, plus the dynamic loader, at the path the
# binary asks for (symlinks dereferenced).
libs="$(ldd "$REDIS_BIN" | awk '
	$2 == "=>" && $3 ~ /^\// { print $3 }
	$1 ~ /^\// { print $1 }
')"
for lib in $libs; do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done

tar -C "$root" -c . | docker import \
	-c 'CMD ["/usr/bin/redis-server", "--protected-mode", "no", "--bind", "0.0.0.0", "--port", "6379", "--dir", "/data", "--save", "", "--appendonly", "no"]' \
	-c 'EXPOSE 6379' \
	-c 'WORKDIR /data' \
	-m "graflow: redis-server from the host, see scripts/redis-image.sh" \
	- "$IMAGE" >/dev/null

# Smoke check: the binary runs inside the image.
docker run --rm "$IMAGE" /usr/bin/redis-server --version >&2
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
