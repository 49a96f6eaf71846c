#!/usr/bin/env bash
# Restarts every running node, one at a time: followers first, the leader last. Each node gets
# SIGTERM (it finishes in-flight calls, hands its leadership over if it leads, then stops),
# starts again from its volume, and must have caught up before the next one goes. Before each
# restart every member must be ready, so a quorum is up throughout and clients that know more
# than one node see no failed request.
#
#   deploy/ops/rolling-restart.sh
. "$(dirname "$0")/lib.sh"

# Every member is running and ready: restarting one of them then leaves a quorum.
all_members_ready() {
    local anchor members id
    anchor=$(ready_node) || die "no node is ready; not restarting anything"
    members=$(ctl_on "$anchor" members list) || die "cannot read the membership from $anchor"
    for id in $(jq -r '.[].id' <<<"$members"); do
        ctl_on "conclave-$id" ready --wait-s 30 >/dev/null 2>&1 ||
            die "member conclave-$id is not ready: restarting another node could cost the quorum"
    done
    echo "$anchor"
}

pending=$(running_nodes)
[ -n "$pending" ] || die "no node is running"
log "rolling restart of" $pending
while [ -n "$pending" ]; do
    anchor=$(all_members_ready)
    leader=$(ctl_on "$anchor" status | jq -r .leader)
    # A follower if one is left, else the leader (it hands over as it stops).
    next=$(grep -vx "conclave-$leader" <<<"$pending" | head -n1 || true)
    [ -n "$next" ] || next=$(head -n1 <<<"$pending")
    log "restarting $next (leader: conclave-$leader)"
    compose restart -t 10 "$next"
    wait_caught_up "$next" 60
    pending=$(grep -vx "$next" <<<"$pending" || true)
done
log "rolling restart done"
"$(dirname "$0")/status.sh"
