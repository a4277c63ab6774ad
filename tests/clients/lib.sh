# Helpers for tests/clients/run.sh: steps and their tally, assertions, starting
# and stopping the registry. Sourced, not run.
#
# A workflow is a function that runs `step`s in order. A step runs its body in
# a subshell with `set -euo pipefail`, its output going to a log that is shown
# when it fails. `step` marks the step failed and carries on; `need` also
# aborts the rest of the workflow (the later steps depend on it), and those
# steps are then reported as "not run", not counted as failures. Both always
# return 0; `step_status` holds the body's exit status.
#
# Never call `step`, `need` or a workflow as the condition of `if`, `&&` or
# `||`: bash then ignores `set -e` inside the body and a failing command would
# not fail the step. In bodies, avoid `local x=$(...)`, which hides a failure.

STEP_TIMEOUT=${STEP_TIMEOUT:-300}
passed=0
failed=0
skipped=0
expected_failures=0
failures=()
expected_failure_names=()
kai_only_step=""
current_step_pid=""
workflow=""
workflow_aborted=""

section() {
    workflow=$1
    workflow_aborted=""
    printf '\n== %s\n' "$1"
}

# step NAME COMMAND [ARGS...]
step() {
    local name="$workflow/$1"
    shift
    step_status=0
    if [[ -n $workflow_aborted ]]; then
        printf 'skip %s (not run: %s failed)\n' "$name" "$workflow_aborted"
        step_status=1
        return 0
    fi
    local log="$LOG_DIR/${name//\//_}.log"
    local started=$SECONDS
    # In the background, so that a client hanging on the registry is ended
    # after $STEP_TIMEOUT seconds instead of hanging the suite.
    (
        set -euo pipefail
        shopt -s inherit_errexit
        "$@"
    ) >"$log" 2>&1 </dev/null &
    local body=$!
    current_step_pid=$body
    (
        sleep "$STEP_TIMEOUT"
        echo "step timed out after ${STEP_TIMEOUT}s: ending it" >>"$log"
        kill_tree "$body"
    ) &
    local watchdog=$!
    wait "$body"
    local status=$?
    kill_tree "$watchdog"
    wait "$watchdog" 2>/dev/null
    current_step_pid=""
    step_status=$status
    if ((status == 0)); then
        passed=$((passed + 1))
        printf 'ok   %s (%ss)\n' "$name" $((SECONDS - started))
        return 0
    fi
    if [[ -n $kai_only_step && $REGISTRY == reference ]]; then
        expected_failures=$((expected_failures + 1))
        expected_failure_names+=("$name")
        printf 'xfail %s (Kai-only: expected to fail on the reference registry)\n' "$name"
        tail -n 4 "$log" | sed 's/^/     | /'
        return 0
    fi
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL %s (exit %s, %ss; log %s)\n' "$name" "$status" $((SECONDS - started)) "$log"
    tail -n 25 "$log" | sed 's/^/     | /'
    return 0
}

# kai_only step|need NAME ...: a check of something the reference registry
# (distribution 2.8) does not do. Against REGISTRY=reference its failure is
# reported as "xfail" and not counted as failed; against Kai it counts.
kai_only() {
    kai_only_step=1
    "$@"
    kai_only_step=""
}

# need NAME COMMAND [ARGS...]: a step the rest of the workflow depends on.
need() {
    local name=$1
    local aborted_before=$workflow_aborted
    step "$@"
    if ((step_status != 0)) && [[ -z $aborted_before ]]; then
        workflow_aborted="$workflow/$name"
    fi
    return 0
}

# skip_workflow REASON: a client this workflow needs is absent.
skip_workflow() {
    if [[ ${CI:-} == true ]]; then
        failed=$((failed + 1))
        failures+=("$workflow (client missing under CI=true: $1)")
        printf 'FAIL %s: %s (CI=true: every client must be installed; run scripts/install-test-deps)\n' \
            "$workflow" "$1"
    else
        skipped=$((skipped + 1))
        printf 'skip %s: %s (run scripts/install-test-deps as root)\n' "$workflow" "$1"
    fi
}

# --- assertions (for step bodies; each prints what it compared) ------------------------------

expect_eq() {
    local what=$1 expected=$2 got=$3
    if [[ $expected != "$got" ]]; then
        printf 'expected %s:\n  %s\ngot:\n  %s\n' "$what" "$expected" "$got" >&2
        return 1
    fi
    printf 'ok: %s = %s\n' "$what" "$got"
}

expect_match() {
    local what=$1 pattern=$2 got=$3
    if [[ ! $got =~ $pattern ]]; then
        printf 'expected %s to match %s, got:\n  %s\n' "$what" "$pattern" "$got" >&2
        return 1
    fi
    printf 'ok: %s =~ %s\n' "$what" "$pattern"
}

# Platforms of a manifest list / index on stdin, as sorted os/arch[/variant] words on one line.
platforms_of() {
    jq -r '.manifests[] | select(.platform) | .platform
        | [.os, .architecture, (.variant // empty)] | join("/")' | sort | tr '\n' ' ' | sed 's/ $//'
}

sha256_of() {
    printf 'sha256:%s' "$(sha256sum "$1" | cut -d' ' -f1)"
}

http() {
    python3 "$SUITE_DIR/registry_http.py" "$@"
}

# --- processes --------------------------------------------------------------------------------

started_pids=()

# kill_tree PID: SIGTERM a process and all its descendants, found by parent PID.
kill_tree() {
    local pid=$1 child
    kill -STOP "$pid" 2>/dev/null || return 0
    for child in $(pgrep -P "$pid"); do
        kill_tree "$child"
    done
    kill -TERM "$pid" 2>/dev/null
    kill -CONT "$pid" 2>/dev/null
}

# stop_pid PID NAME: SIGTERM, wait up to 20s, then SIGKILL.
stop_pid() {
    local pid=$1 name=$2
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 200)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "warning: $name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_announcement PID FILE: wait for `listening on http://ADDR` in FILE; print ADDR.
wait_for_announcement() {
    local pid=$1 file=$2 line
    for _ in $(seq 1 300); do
        line=$(grep -m1 -E '^listening on http://' "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            echo "${line#listening on http://}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "registry exited before announcing its address" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "registry did not print 'listening on http://ADDR' within 30s" >&2
    return 1
}

# wait_for_v2 ADDR PID: poll GET /v2/ until it answers 200 or 401.
wait_for_v2() {
    local addr=$1 pid=$2 code
    for _ in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/v2/" || true)
        if [[ $code == 200 || $code == 401 ]]; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "registry exited before answering /v2/" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "registry did not answer http://$addr/v2/ within 30s" >&2
    return 1
}

# reference_htpasswd: an htpasswd line (bcrypt) for $REGISTRY_USER / $REGISTRY_PASSWORD.
reference_htpasswd() {
    if command -v htpasswd >/dev/null; then
        htpasswd -nbB -C 4 "$REGISTRY_USER" "${REGISTRY_PASSWORD:-}"
        return
    fi
    # Cost 4, the least: distribution checks the hash on every request.
    # Python's crypt module (gone in 3.13) uses libxcrypt, which has bcrypt.
    python3 -W ignore -c 'import crypt, sys
print(sys.argv[1] + ":" + crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))' \
        "$REGISTRY_USER" "${REGISTRY_PASSWORD:-}"
}

# start_registry: start the registry named by $REGISTRY, set REGISTRY_ADDR and registry_pid.
start_registry() {
    local dir="$WORK/registry"
    mkdir -p "$dir/data"
    case $REGISTRY in
    kai)
        if [[ -n ${REGISTRY_USER:-} ]]; then
            # Authorization is on (Kai's default): the suite's user, made with
            # the CLI, owns the organisation `clients` that every workflow pushes to.
            printf '%s\n' "${REGISTRY_PASSWORD:-}" |
                "$KAI_BIN" user create "$REGISTRY_USER" --password-stdin --data "$dir/data" >&2 || return 1
            "$KAI_BIN" org create clients --owner "$REGISTRY_USER" --data "$dir/data" >&2 || return 1
        else
            export KAI_AUTH__ENABLED=false
        fi
        "$KAI_BIN" serve --listen 127.0.0.1:0 --data "$dir/data" >"$dir/stdout" 2>"$dir/stderr" &
        registry_pid=$!
        started_pids+=("$registry_pid")
        REGISTRY_ADDR=$(wait_for_announcement "$registry_pid" "$dir/stdout") || {
            tail -n 20 "$dir/stderr" >&2
            return 1
        }
        ;;
    reference)
        local port
        port=$(free_port)
        cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: kai-client-suite
EOF
        if [[ -n ${REGISTRY_USER:-} ]]; then
            # Exercise the suite's credential plumbing: distribution's htpasswd (Basic) auth.
            reference_htpasswd >"$dir/htpasswd" || return 1
            printf 'auth:\n  htpasswd:\n    realm: kai-client-suite\n    path: %s\n' "$dir/htpasswd" >>"$dir/config.yml"
        fi
        docker-registry serve "$dir/config.yml" >"$dir/stdout" 2>"$dir/stderr" &
        registry_pid=$!
        started_pids+=("$registry_pid")
        REGISTRY_ADDR=127.0.0.1:$port
        ;;
    command)
        # Any registry that prints `listening on http://ADDR` like Kai does.
        bash -c "$REGISTRY_COMMAND" >"$dir/stdout" 2>"$dir/stderr" &
        registry_pid=$!
        started_pids+=("$registry_pid")
        REGISTRY_ADDR=$(wait_for_announcement "$registry_pid" "$dir/stdout") || return 1
        ;;
    *)
        echo "REGISTRY must be kai, reference or command, not '$REGISTRY'" >&2
        return 1
        ;;
    esac
    wait_for_v2 "$REGISTRY_ADDR" "$registry_pid" || {
        tail -n 20 "$dir/stderr" >&2
        return 1
    }
}
