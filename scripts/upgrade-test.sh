#!/usr/bin/env bash
# A rolling upgrade under load: builds an earlier commit's `conclave` (by default the commit
# before HEAD) in a worktree of its own, starts a chaos cluster on it, moves every node in turn
# to this tree's build while the workloads run, and checks the history (cluster-tests/README.md).
#
#   scripts/upgrade-test.sh [--from REV] [chaos arguments: --duration 40 --seed 1 --nemesis none]
#
# CHAOS_PROFILE=debug builds both in debug. Earlier builds are kept in target/upgrade-from/
# (conclave-<commit>-<profile>), so a second run against the same commit builds only this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
from=HEAD~1
if [ "${1:-}" = --from ]; then
  from=${2:?--from needs a revision}
  shift 2
fi
profile=${CHAOS_PROFILE:-release}
commit=$(git rev-parse --verify "$from^{commit}") || {
  echo "upgrade-test: no commit $from here (a shallow clone? fetch its history)" >&2
  exit 2
}
keep=$repo/target/upgrade-from
earlier=$keep/conclave-$commit-$profile
if [ ! -x "$earlier" ]; then
  echo "upgrade-test: building $(git log -1 --format='%h %s' "$commit" | cut -c1-72) ($profile)" >&2
  source_dir=$keep/src-$commit
  git worktree remove --force "$source_dir" 2>/dev/null || rm -rf "$source_dir"
  git worktree prune
  git worktree add --quiet --detach "$source_dir" "$commit"
  flags=(--locked -p conclave --bin conclave)
  if [ "$profile" = release ]; then flags+=(--release); fi
  # A target directory of its own: building there leaves this tree's build untouched, and
  # earlier commits share it, so the next one builds only what changed.
  (cd "$source_dir" && CARGO_TARGET_DIR=$keep/target cargo build "${flags[@]}" >&2)
  cp "$keep/target/$profile/conclave" "$earlier.partial"
  mv "$earlier.partial" "$earlier"
  git worktree remove --force "$source_dir"
fi

args=("$@")
has() { [[ " ${args[*]} " == *" $1 "* ]]; }
has --duration || args+=(--duration 40)
has --nemesis || args+=(--nemesis none)
has --seed || args+=(--seed 1)
exec ./cluster-tests/run.sh --upgrade-from "$earlier" "${args[@]}"
