#!/usr/bin/env bash
# Builds the conclave image from local files only: no registry, no base image.
#
# The release binaries (`conclave` and the media-node simulator) and the shared libraries they
# load are packed into a root filesystem and imported with `docker import`. The root filesystem's
# digest is the image's label, so when nothing changed the existing image is kept (the cargo
# build is then a no-op and the whole run takes a few seconds).
#
#   deploy/build-image.sh            # builds conclave:latest
#   CONCLAVE_IMAGE=conclave:test deploy/build-image.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
image=${CONCLAVE_IMAGE:-conclave:latest}
target=${CARGO_TARGET_DIR:-$repo/target}
work=$target/image
started=$(date +%s%3N)

if ! docker info >/dev/null 2>&1; then
    echo "build-image: no Docker engine answers (docker info failed)" >&2
    exit 3
fi

echo "build-image: cargo build --release (conclave, media_node)" >&2
(cd "$repo" && cargo build --release --locked --quiet -p conclave --bin conclave --example media_node)

rm -rf "$work/rootfs"
mkdir -p "$work/rootfs/usr/local/bin" "$work/rootfs/data" "$work/rootfs/certs" "$work/rootfs/ca" \
    "$work/rootfs/public" "$work/rootfs/etc" \
    "$work/rootfs/tmp"
for binary in "$target/release/conclave" "$target/release/examples/media_node"; do
    # Symbols stay (for panics' backtraces); debug line tables go.
    strip --strip-debug -o "$work/rootfs/usr/local/bin/$(basename "$binary")" "$binary"
    # Every shared library the binary loads, the dynamic loader included, at its own path.
    ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
        mkdir -p "$work/rootfs$(dirname "$lib")"
        cp -L "$lib" "$work/rootfs$lib"
    done
done
# Name resolution for service names (glibc reads this; Docker provides resolv.conf and hosts).
echo 'hosts: files dns' >"$work/rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/sbin/nologin\nconclave:x:65532:65532:conclave:/data:/sbin/nologin\n' >"$work/rootfs/etc/passwd"
printf 'root:x:0:\nconclave:x:65532:\n' >"$work/rootfs/etc/group"
chmod 1777 "$work/rootfs/tmp"

# A reproducible archive: fixed order, times and owners (the data and certificate directories,
# /ca, /certs and /public, belong to the unprivileged user the node runs as, and a new named
# volume inherits that).
tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner \
    -C "$work/rootfs" --exclude=./data --exclude=./ca --exclude=./certs --exclude=./public --exclude=./tmp -cf "$work/rootfs.tar" .
tar --mtime='@0' --owner=65532 --group=65532 --numeric-owner \
    -C "$work/rootfs" -rf "$work/rootfs.tar" ./ca ./certs ./data ./public ./tmp
digest=$(sha256sum "$work/rootfs.tar" | cut -c1-16)

current=$(docker image inspect -f '{{index .Config.Labels "conclave.rootfs"}}' "$image" 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
    echo "build-image: $image is up to date (rootfs $digest)" >&2
else
    previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
    # Imported untagged and tagged only once it runs: a broken image must never carry the
    # digest label, or the next run would take it for up to date.
    candidate=$(docker import \
        --change 'ENTRYPOINT ["/usr/local/bin/conclave"]' \
        --change 'CMD ["--help"]' \
        --change 'USER 65532:65532' \
        --change 'WORKDIR /data' \
        --change 'ENV RUST_BACKTRACE=1' \
        --change 'EXPOSE 7000 6379' \
        --change "LABEL conclave.rootfs=$digest" \
        "$work/rootfs.tar")
    # It must run: every library the binaries load is in it.
    if ! docker run --rm "$candidate" --version >/dev/null ||
        ! docker run --rm --entrypoint /usr/local/bin/media_node "$candidate" --help >/dev/null; then
        docker image rm "$candidate" >/dev/null 2>&1 || true
        echo "build-image: the new image does not run (conclave --version, media_node --help)" >&2
        exit 1
    fi
    docker tag "$candidate" "$image"
    # The image it replaces goes too, unless a container still uses it.
    [ -z "$previous" ] || docker image rm "$previous" >/dev/null 2>&1 || true
    echo "build-image: built $image (rootfs $digest, $(du -h "$work/rootfs.tar" | cut -f1))" >&2
fi
elapsed=$(($(date +%s%3N) - started))
printf 'build-image: done in %d.%d s\n' $((elapsed / 1000)) $((elapsed % 1000 / 100)) >&2
