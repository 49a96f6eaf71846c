#!/usr/bin/env bash
# Replaces node ID whose volume was lost (or is to be discarded): removes it from the membership,
# starts it again on an empty volume, adds it back, and waits until it has caught up.
#
#   deploy/ops/replace-node.sh 2
#
# A node that lost its data must not rejoin as it was: with an empty log it could vote for a
# leader missing acknowledged writes. Conclave refuses to start such a node ("node 2's data was
# lost"); this is the way back.
. "$(dirname "$0")/lib.sh"

id=${1:?usage: replace-node.sh ID}
service=conclave-$id
anchor=$(ready_node "$service") || die "no other node knows a leader"

log "stopping $service and discarding its volume"
compose rm -sf "$service"
if is_member "$anchor" "$id"; then
    log "removing node $id from the membership (via $anchor)"
    ctl_on "$anchor" members remove "$id" --wait-s 60 >/dev/null
    wait_removed "$anchor" "$id"
fi
volume=$(node_volume "$id")
[ -z "$volume" ] || docker volume rm "$volume" >/dev/null

log "starting $service on an empty volume"
compose up -d --no-deps "$service"
log "adding node $id back (it catches up as a learner, then votes)"
ctl_on "$anchor" members add "$id" "$service:7000" --wait-s 120 >/dev/null
wait_caught_up "$service" 120
log "node $id replaced"
"$(dirname "$0")/status.sh"
