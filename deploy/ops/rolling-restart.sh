#!/usr/bin/env bash
# Restarts every running node, one at a time: followers first, the leader last. Each node gets
# SIGTERM (it finishes in-flight calls, then stops), starts again from its volume, and must have
# caught up with the leader before the next one goes, so a quorum is up throughout and clients
# that know more than one node see no failed request.
#
#   deploy/ops/rolling-restart.sh
. "$(dirname "$0")/lib.sh"

anchor=$(ready_node) || die "no node knows a leader; not restarting anything"
leader=$(ctl_on "$anchor" status | jq -r .leader)
order=()
for service in $(running_nodes); do
    [ "$service" = "conclave-$leader" ] || order+=("$service")
done
[ -n "$(running_nodes | grep -x "conclave-$leader")" ] && order+=("conclave-$leader")

log "rolling restart of ${order[*]} (leader: conclave-$leader)"
for service in "${order[@]}"; do
    log "restarting $service"
    compose restart -t 10 "$service"
    wait_caught_up "$service" 60
done
log "rolling restart done"
"$(dirname "$0")/status.sh"
