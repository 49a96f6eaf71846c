#!/usr/bin/env bash
# Prints each running node's view of the cluster (one JSON line per node) and the leader.
#
#   deploy/ops/status.sh
. "$(dirname "$0")/lib.sh"

nodes=$(running_nodes)
[ -n "$nodes" ] || die "no node is running (docker-compose -f deploy/docker-compose.yml up -d)"
for service in $nodes; do
    if status=$(ctl_on "$service" status 2>/dev/null); then
        echo "$status" | jq -c '{id, role, leader, term, applied, members: [.members[] | "\(.id)\(if .voter then "" else "(learner)" end)"]}'
    else
        echo "{\"service\": \"$service\", \"error\": \"not answering\"}"
    fi
done
