# The conclave binary of an earlier revision, for before/after figures from one run. Sourced.
#
#   baseline_binary REV    prints the path of REV's release binary, building it the first time
#                          (from `git archive REV`, in the shared target directory, so only the
#                          workspace's own crates compile) and keeping it in target/baseline/REV.
#
# The build overwrites target/release/conclave: build this checkout's binary after calling it.

baseline_binary() { # rev
    local repo rev out src
    repo=$(git rev-parse --show-toplevel)
    rev=$(git -C "$repo" rev-parse --short=12 "$1^{commit}")
    out="$repo/target/baseline/$rev/conclave"
    if [ ! -x "$out" ]; then
        src="$repo/target/baseline/$rev/src"
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$repo" archive "$rev" | tar -x -C "$src"
        echo "building the baseline $rev (once; kept in $out)" >&2
        (cd "$src" && CARGO_TARGET_DIR="$repo/target" cargo build --release --locked --quiet -p conclave)
        cp "$repo/target/release/conclave" "$out.partial"
        mv "$out.partial" "$out"
        rm -rf "$src"
    fi
    echo "$out"
}
