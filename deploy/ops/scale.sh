#!/usr/bin/env bash
# Grows the cluster to five nodes or shrinks it back to three, online, one node at a time.
#
#   deploy/ops/scale.sh 5   # start conclave-4 and conclave-5, add each (learner, caught up,
#                           # voter), then start their media nodes
#   deploy/ops/scale.sh 3   # stop media-5 and media-4, remove nodes 5 and 4 from the
#                           # membership, then remove their containers and volumes
. "$(dirname "$0")/lib.sh"

size=${1:?usage: scale.sh 5|3}
case $size in
5)
    for id in 4 5; do
        service=conclave-$id
        anchor=$(ready_node "$service") || die "no node knows a leader"
        log "starting $service (it waits to be added)"
        compose up -d --no-deps "$service"
        log "adding node $id (via $anchor)"
        ctl_on "$anchor" members add "$id" "$service:7000" --wait-s 120 >/dev/null
        wait_caught_up "$service" 120
        compose up -d --no-deps "media-$id"
    done
    ;;
3)
    for id in 5 4; do
        service=conclave-$id
        compose rm -sf "media-$id"
        anchor=$(ready_node "$service") || die "no node knows a leader"
        if is_member "$anchor" "$id"; then
            log "removing node $id (via $anchor)"
            ctl_on "$anchor" members remove "$id" --wait-s 60 >/dev/null
        wait_removed "$anchor" "$id"
        fi
        compose rm -sf "$service"
        volume=$(node_volume "$id")
        [ -z "$volume" ] || docker volume rm "$volume" >/dev/null
    done
    ;;
*) die "size must be 5 or 3" ;;
esac
log "cluster at $size nodes"
"$(dirname "$0")/status.sh"
