#!/usr/bin/env bash
# End-to-end suite: real clients (docker, buildah, skopeo, umoci) and replayed
# BuildKit / old-client HTTP traffic against a freshly started registry.
#
#   KAI_BIN=target/debug/kai tests/clients/run.sh            # against Kai
#   REGISTRY=reference tests/clients/run.sh                  # against distribution 2.8
#
# Environment:
#   REGISTRY          kai (default) | reference | command
#   KAI_BIN           the kai binary (default: the newer of target/{debug,release}/kai)
#   REGISTRY_COMMAND  with REGISTRY=command: a shell command that serves on a
#                     127.0.0.1 port and prints `listening on http://ADDR`
#   REGISTRY_USER, REGISTRY_PASSWORD
#                     credentials: handed to docker (config.json, and `docker
#                     login`), buildah/skopeo (REGISTRY_AUTH_FILE) and
#                     registry_http.py (Basic or Bearer challenge). For Kai they
#                     default to a user `ci` with a fresh password, created with
#                     `kai user create` before the start (authorization on)
#   AUTH=off          Kai without credentials and with authorization off
#   WORKFLOWS         which workflows to run, in order (default: all of
#                     docker buildah skopeo umoci buildkit referrers old-client auth tls)
#   DOCKER            the docker CLI (default: docker on PATH)
#   KEEP_WORK=1       keep the scratch directory (it is kept anyway on failure)
#
# Prints each client's version, one line per check (ok / FAIL / xfail / skip),
# and last `N passed, N failed`; exits non-zero on any failure. Everything it
# starts (registry, dockerd) is stopped on exit.
# shellcheck source-path=SCRIPTDIR
set -uo pipefail

SUITE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SUITE_DIR/../.." && pwd)
export SUITE_DIR
# Keep tests/clients free of __pycache__.
export PYTHONDONTWRITEBYTECODE=1

# shellcheck source=lib.sh
source "$SUITE_DIR/lib.sh"
for file in "$SUITE_DIR"/workflows/*.sh; do
    # shellcheck source=/dev/null
    source "$file"
done

# docker.io puts dockerd in /usr/sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

REGISTRY=${REGISTRY:-kai}
DOCKER=${DOCKER:-docker}
WORKFLOWS=${WORKFLOWS:-docker buildah skopeo umoci buildkit referrers old-client auth tls}
# Makes each run's file contents unique, so a stale image cannot pass for a pulled one.
RUN_ID="$(date +%s)-$$"
export RUN_ID

if [[ $REGISTRY == kai && -z ${KAI_BIN:-} ]]; then
    # shellcheck disable=SC2012 # two fixed paths; ls -t picks the newer build
    KAI_BIN=$(ls -t "$REPO_ROOT"/target/debug/kai "$REPO_ROOT"/target/release/kai 2>/dev/null | head -n1)
fi
if [[ $REGISTRY == kai && ( -z ${KAI_BIN:-} || ! -x ${KAI_BIN:-} ) ]]; then
    echo "run.sh: no kai binary: build it (cargo build) or set KAI_BIN; REGISTRY=reference runs against distribution" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

# Short, so that dockerd's exec-root sockets stay under the 108-byte limit.
WORK=$(mktemp -d /tmp/kai-clients.XXXXXX)
LOG_DIR=$WORK/logs
mkdir -p "$LOG_DIR"
# Our own docker CLI config: `docker manifest create` keeps its lists there.
export DOCKER_CONFIG=$WORK/docker-config
mkdir -p "$DOCKER_CONFIG"
# buildah takes $DOCKER_CONFIG/config.json as its default auth file and
# fails ("checking authfile") when it is absent.
echo '{"auths": {}}' >"$DOCKER_CONFIG/config.json"
registry_pid=""
# shellcheck disable=SC2034 # set by workflows/docker.sh
dockerd_pid=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $current_step_pid ]]; then
        kill_tree "$current_step_pid"
    fi
    local index
    for ((index = ${#started_pids[@]} - 1; index >= 0; index--)); do
        stop_pid "${started_pids[index]}" "process ${started_pids[index]}"
    done
    # dockerd stops its own containerd; if dockerd had to be killed, stop that too.
    local containerd_pid_file=$WORK/docker/exec/containerd/containerd.pid
    if [[ -f $containerd_pid_file ]]; then
        stop_pid "$(cat "$containerd_pid_file")" containerd
    fi
    if [[ ${KEEP_WORK:-} == 1 || $failed -gt 0 || $status -ne 0 ]]; then
        echo "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Kai runs with authorization on: a user made with `kai user create`, with a
# fresh password, unless REGISTRY_USER is given (AUTH=off: no credentials,
# authorization off).
if [[ $REGISTRY == kai && -z ${REGISTRY_USER:-} && ${AUTH:-on} != off ]]; then
    REGISTRY_USER=ci
    REGISTRY_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
fi

if [[ -n ${REGISTRY_USER:-} ]]; then
    auth=$(printf '%s:%s' "$REGISTRY_USER" "${REGISTRY_PASSWORD:-}" | base64 -w0)
    # Written once the address is known, below.
fi

echo "== versions"
case $REGISTRY in
kai) echo "registry: kai ($KAI_BIN) $("$KAI_BIN" --version 2>/dev/null || echo '(no --version)')" ;;
reference) echo "registry: reference, $(docker-registry --version)" ;;
command) echo "registry: command: $REGISTRY_COMMAND" ;;
esac
for client in "$DOCKER" dockerd buildah skopeo umoci curl jq python3; do
    if command -v "$client" >/dev/null; then
        printf '%s: %s\n' "$client" "$("$client" --version 2>&1 | head -n1)"
    else
        printf '%s: not installed\n' "$client"
    fi
done

section registry
if ! start_registry 2>"$LOG_DIR/registry_start.log"; then
    failed=$((failed + 1))
    failures+=("registry/start")
    echo "FAIL registry/start"
    sed 's/^/     | /' "$LOG_DIR/registry_start.log"
    echo "$passed passed, $failed failed"
    exit 1
fi
passed=$((passed + 1))
echo "ok   registry/start: $REGISTRY at http://$REGISTRY_ADDR (pid $registry_pid)"
REG=$REGISTRY_ADDR
export REGISTRY_URL="http://$REGISTRY_ADDR"

if [[ -n ${auth:-} ]]; then
    printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$REG" "$auth" >"$DOCKER_CONFIG/config.json"
    cp "$DOCKER_CONFIG/config.json" "$WORK/auth.json"
    export REGISTRY_AUTH_FILE=$WORK/auth.json
    export REGISTRY_USER REGISTRY_PASSWORD
fi

for name in $WORKFLOWS; do
    case $name in
    docker) workflow_docker ;;
    buildah) workflow_buildah ;;
    skopeo) workflow_skopeo ;;
    umoci) workflow_umoci ;;
    buildkit) workflow_buildkit ;;
    referrers) workflow_referrers ;;
    old-client) workflow_old_client ;;
    auth) workflow_auth ;;
    tls) workflow_tls ;;
    *)
        echo "unknown workflow '$name'" >&2
        failed=$((failed + 1))
        failures+=("$name (unknown workflow)")
        ;;
    esac
done

section registry
# The contract: SIGTERM stops the registry.
kill -TERM "$registry_pid" 2>/dev/null
stopped=""
for _ in $(seq 1 100); do
    if ! kill -0 "$registry_pid" 2>/dev/null; then
        stopped=yes
        break
    fi
    sleep 0.1
done
if [[ -n $stopped ]]; then
    wait "$registry_pid"
    echo "ok   registry/stops-on-sigterm (exit status $?)"
    passed=$((passed + 1))
else
    echo "FAIL registry/stops-on-sigterm: still running 10s after SIGTERM"
    failed=$((failed + 1))
    failures+=("registry/stops-on-sigterm")
fi

echo
if ((${#failures[@]} > 0)); then
    echo "failed: ${failures[*]}"
fi
if ((expected_failures > 0)); then
    echo "$expected_failures expected failures (Kai-only checks on the reference registry): ${expected_failure_names[*]}"
fi
if ((skipped > 0)); then
    echo "$skipped workflows skipped: clients missing"
fi
echo "$passed passed, $failed failed"
((failed == 0))
