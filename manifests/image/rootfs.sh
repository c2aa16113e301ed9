#!/bin/sh
# The runtime image's root filesystem: the given programs under /usr/local/bin, the shared
# libraries they load (as `ldd` resolves them, at the same paths) and nothing else: no shell,
# no package manager.
#
#   manifests/image/rootfs.sh DEST PROGRAM...
#
# manifests/Dockerfile builds its final stage with it (`FROM scratch`, then this tree), and the
# real-runtime test (tests/tests/runtime.rs) builds the image it runs with the same script from
# the release build: the two images have the same content.
set -eu
dest=$1
shift
mkdir -p "$dest/usr/local/bin"
for program in "$@"; do
    install -m 0755 "$program" "$dest/usr/local/bin/$(basename "$program")"
    # `ldd` prints `name => /path (addr)` for libraries and `/path (addr)` for the loader.
    ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
        while read -r lib; do
            mkdir -p "$dest$(dirname "$lib")"
            cp -L "$lib" "$dest$lib"
        done
done
