# Shared by the operation scripts: how they reach compose and `conclave ctl`.
#
# Every script works on the compose project in deploy/docker-compose.yml (project name from
# COMPOSE_PROJECT_NAME, `conclave` by default via deploy/.env). CONCLAVE_COMPOSE_FILE names other
# compose files, separated by colons as in COMPOSE_FILE (for TLS:
# deploy/docker-compose.yml:deploy/docker-compose.tls.yml). ctl runs inside a node's own
# container, against that node (over TLS when the container says so), so the host needs only
# Docker (with compose) and jq.

set -euo pipefail

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
compose_file_args=(-f "$deploy_dir/docker-compose.yml")
if [ -n "${CONCLAVE_COMPOSE_FILE:-}" ]; then
    IFS=: read -r -a compose_files <<<"$CONCLAVE_COMPOSE_FILE"
    compose_file_args=()
    for file in "${compose_files[@]}"; do
        [ -z "$file" ] || compose_file_args+=(-f "$file")
    done
    [ "${#compose_file_args[@]}" -gt 0 ] || { echo "CONCLAVE_COMPOSE_FILE names no file" >&2; exit 2; }
fi
if [ -z "${COMPOSE_PROJECT_NAME:-}" ]; then
    COMPOSE_PROJECT_NAME=$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$deploy_dir/.env")
fi
export COMPOSE_PROJECT_NAME
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    compose_cmd=(docker-compose)
fi
command -v jq >/dev/null || { echo "jq is needed (apt-get install jq)" >&2; exit 2; }

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# compose ARGS...: docker compose on the project, every profile visible.
compose() { "${compose_cmd[@]}" "${compose_file_args[@]}" --profile five "$@"; }

# The node services whose containers are running, in id order.
running_nodes() {
    compose ps --services --filter status=running | grep '^conclave-' | sort -t- -k2 -n || true
}

# The running container of SERVICE in this project, if any (found by compose's labels: `docker`
# answers in a fraction of the time `docker-compose` takes to start).
container_of() {
    docker ps -q \
        --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
        --filter "label=com.docker.compose.service=$1" | head -n1
}

# ctl_on SERVICE ARGS...: `conclave ctl ARGS` inside SERVICE's container, against its own node.
ctl_on() {
    local service=$1 container
    shift
    container=$(container_of "$service")
    [ -n "$container" ] || { echo "$service is not running" >&2; return 1; }
    docker exec "$container" /usr/local/bin/conclave ctl --endpoint 127.0.0.1:7000 "$@"
}

# A running, ready node other than the services given; fails if there is none.
ready_node() {
    local service skip
    for service in $(running_nodes); do
        for skip in "$@"; do
            [ "$service" = "$skip" ] && continue 2
        done
        if ctl_on "$service" ready >/dev/null 2>&1; then
            echo "$service"
            return 0
        fi
    done
    return 1
}

# wait_caught_up SERVICE SECONDS: until SERVICE's node is ready: a leader confirmed its leadership
# for it and it has applied everything that leader had committed (it has caught up).
wait_caught_up() {
    local service=$1 seconds=$2
    ctl_on "$service" ready --wait-s "$seconds" >&2 ||
        die "$service did not catch up within ${seconds}s"
}

# is_member SERVICE ID: whether node ID is in the membership SERVICE's node knows. Exits the
# script when the membership cannot be read: "unknown" must never pass for "not a member".
is_member() {
    local members
    members=$(ctl_on "$1" members list) || die "cannot read the membership from $1"
    jq -e --argjson id "$2" 'any(.[]; .id == $id)' >/dev/null <<<"$members"
}

# wait_removed SERVICE ID: until SERVICE's node no longer lists node ID (it learns of the change
# when the membership entry reaches it); fails the script after 30 s.
wait_removed() {
    local deadline=$((SECONDS + 30))
    while is_member "$1" "$2"; do
        [ "$SECONDS" -lt "$deadline" ] || die "node $2 is still a member after its removal"
        sleep 0.2
    done
}

# The named volume that holds node ID's data.
node_volume() {
    docker volume ls -q \
        --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
        --filter "label=com.docker.compose.volume=data-$1"
}
