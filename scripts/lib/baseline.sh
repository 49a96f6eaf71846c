# The conclave binary of an earlier revision, for before/after figures from one run. Sourced.
#
#   baseline_binary REV    prints the path of REV's release binary, building it the first time
#                          (from `git archive REV`) and keeping it in target/baseline/REV.
#
# The baseline builds in a target directory of its own (target/baseline/target): sharing this
# checkout's would let cargo take one tree's generated protobuf code for the other's (git archive
# gives files their commit's date, so a build script's inputs look older than its last output).
# A failed build fails the caller: a baseline that silently is this checkout's binary would make
# every before/after ratio 1.0.

baseline_binary() { # rev
    local repo rev out src
    repo=$(git rev-parse --show-toplevel)
    rev=$(git -C "$repo" rev-parse --short=12 "$1^{commit}") || return 1
    out="$repo/target/baseline/$rev/conclave"
    if [ ! -x "$out" ]; then
        src="$repo/target/baseline/$rev/src"
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$repo" archive "$rev" | tar -x -C "$src"
        echo "building the baseline $rev (once; kept in $out)" >&2
        (cd "$src" && CARGO_TARGET_DIR="$repo/target/baseline/target" \
            cargo build --release --locked --quiet -p conclave) || {
            echo "the baseline $rev did not build" >&2
            return 1
        }
        cp "$repo/target/baseline/target/release/conclave" "$out.partial"
        mv "$out.partial" "$out"
        rm -rf "$src"
    fi
    echo "$out"
}
