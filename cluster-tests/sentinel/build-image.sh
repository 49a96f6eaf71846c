#!/usr/bin/env bash
# Builds the image of one Redis-with-Sentinel host from local files only (no registry, no base
# image), the way deploy/build-image.sh builds Conclave's: Debian's redis-server binary (it is
# also redis-sentinel), /bin/sh and every shared library they load, packed into a root
# filesystem and imported with `docker import`. A container runs redis-server and a Sentinel
# beside it, as LiveKit's docs deploy them (one of each per host), both reading their
# configuration from /data, which the chaos harness writes.
#
#   cluster-tests/sentinel/build-image.sh     # builds conclave-redis-sentinel:latest
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
image=conclave-redis-sentinel:latest
work=${CARGO_TARGET_DIR:-$repo/target}/sentinel-image

if ! docker info >/dev/null 2>&1; then
    echo "sentinel build-image: no Docker engine answers (docker info failed)" >&2
    exit 3
fi
"$repo/scripts/setup-test-deps.sh" >/dev/null

rm -rf "$work/rootfs"
mkdir -p "$work/rootfs/usr/bin" "$work/rootfs/bin" "$work/rootfs/data" "$work/rootfs/tmp" "$work/rootfs/etc"
cp -L /usr/bin/redis-server "$work/rootfs/usr/bin/redis-server"
cp -L /bin/sh "$work/rootfs/bin/sh"
for binary in /usr/bin/redis-server /bin/sh; do
    ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
        mkdir -p "$work/rootfs$(dirname "$lib")"
        cp -L "$lib" "$work/rootfs$lib"
    done
done
# Redis first; the Sentinel is the container's main process. Either dying ends the host, as
# `docker kill` does.
cat >"$work/rootfs/start.sh" <<'SCRIPT'
#!/bin/sh
/usr/bin/redis-server /data/redis.conf &
exec /usr/bin/redis-server /data/sentinel.conf --sentinel
SCRIPT
chmod 755 "$work/rootfs/start.sh"
printf 'root:x:0:0:root:/:/bin/sh\n' >"$work/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$work/rootfs/etc/group"
chmod 1777 "$work/rootfs/tmp"
tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/rootfs.tar" .
digest=$(sha256sum "$work/rootfs.tar" | cut -c1-16)
current=$(docker image inspect -f '{{index .Config.Labels "conclave.rootfs"}}' "$image" 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
    echo "sentinel build-image: $image is up to date (rootfs $digest)" >&2
    exit 0
fi
candidate=$(docker import \
    --change 'ENTRYPOINT ["/start.sh"]' \
    --change 'WORKDIR /data' \
    --change 'EXPOSE 6379 26379' \
    --change "LABEL conclave.rootfs=$digest" \
    "$work/rootfs.tar")
if ! docker run --rm --entrypoint /usr/bin/redis-server "$candidate" --version >/dev/null; then
    docker image rm "$candidate" >/dev/null 2>&1 || true
    echo "sentinel build-image: the new image does not run (redis-server --version)" >&2
    exit 1
fi
docker tag "$candidate" "$image"
echo "sentinel build-image: built $image (rootfs $digest, $(redis-server --version | cut -d' ' -f3))" >&2
