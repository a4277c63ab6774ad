# TLS at a hostname: a second Kai with `--tls auto` on this machine's LAN
# address. The Docker engine refuses its certificate until `kai setup docker`
# installs the CA in /etc/docker/certs.d/ADDR:PORT (the path dockerd reads; it
# has no flag to move it), then pushes and pulls over HTTPS; `kai doctor`
# agrees. A loopback address would prove nothing: Docker skips certificate
# checks for 127.0.0.0/8. Needs root, dockerd, a LAN address and Kai; the
# certs.d entry is removed at the end.

tls_dir() { echo "$WORK/tls"; }

# The registry as clients name it: ADDR:PORT.
tls_registry() { cat "$(tls_dir)/registry"; }

tls_lan_address() {
    python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.connect(("8.8.8.8", 53))
    print(s.getsockname()[0])
except OSError:
    pass'
}

tls_wait_kai() {
    local dir line
    dir=$(tls_dir)
    for _ in $(seq 1 300); do
        line=$(grep -m1 -E '^listening on https://' "$dir/stdout" 2>/dev/null || true)
        if [[ -n $line ]]; then
            echo "${line#listening on https://}" >"$dir/registry"
            echo "kai serves https://$(tls_registry)"
            return 0
        fi
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "kai exited; its log:"
            cat "$dir/stderr"
            return 1
        fi
        sleep 0.1
    done
    echo "kai did not print 'listening on https://ADDR' within 30s"
    return 1
}

tls_push_untrusted() {
    local registry output
    registry=$(tls_registry)
    docker_build "$registry/clients/tls:v1" "hello over tls $RUN_ID"
    if output=$("$DOCKER" push "$registry/clients/tls:v1" 2>&1); then
        echo "$output"
        echo "docker pushed to a registry whose CA it does not trust"
        return 1
    fi
    echo "$output"
    expect_match "docker's refusal" 'x509|certificate' "$output"
}

tls_setup_docker() {
    local registry dir
    registry=$(tls_registry)
    dir=$(tls_dir)
    "$KAI_BIN" setup docker --host "$registry" --data "$dir/data" --print
    "$KAI_BIN" setup docker --host "$registry" --data "$dir/data"
    cmp "$dir/data/tls/ca.crt" "/etc/docker/certs.d/$registry/ca.crt"
}

tls_push_pull() {
    local registry dir output pushed served content
    registry=$(tls_registry)
    dir=$(tls_dir)
    output=$("$DOCKER" push "$registry/clients/tls:v1")
    echo "$output"
    pushed=$(grep -oE 'digest: sha256:[0-9a-f]{64}' <<<"$output" | cut -d' ' -f2)
    served=$(curl -sS --http2 --cacert "$dir/data/tls/ca.crt" -o /dev/null -D - \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "https://$registry/v2/clients/tls/manifests/v1" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p' | tr -d '\r')
    expect_eq "digest docker push printed = digest served over HTTPS" "$pushed" "$served"
    "$DOCKER" rmi "$registry/clients/tls:v1"
    "$DOCKER" pull "$registry/clients/tls:v1"
    content=$(docker_file_content "$registry/clients/tls:v1" /hello.txt)
    expect_eq "/hello.txt in the pulled image" "hello over tls $RUN_ID" "$content"
}

tls_doctor() {
    local registry dir output
    registry=$(tls_registry)
    dir=$(tls_dir)
    # The system store of this check: the Kai CA (doctor reads SSL_CERT_FILE as Go and OpenSSL do).
    output=$(SSL_CERT_FILE=$dir/data/tls/ca.crt HOME=$dir/home "$KAI_BIN" doctor "https://$registry")
    echo "$output"
    expect_match "tls docker line" 'ok    tls docker    the Docker engine trusts the server' "$output"
    expect_match "round trip line" 'ok    round trip' "$output"
}

workflow_tls() {
    section tls
    if [[ $REGISTRY != kai ]]; then
        skipped=$((skipped + 1))
        echo "skip tls: Kai's own TLS (kai serve --tls auto, kai setup, kai doctor)"
        return 0
    fi
    if ! command -v dockerd >/dev/null || ! command -v "$DOCKER" >/dev/null; then
        skip_workflow "dockerd or the docker CLI is not installed"
        return 0
    fi
    if (($(id -u) != 0)); then
        skip_workflow "dockerd and /etc/docker/certs.d need root"
        return 0
    fi
    local address dir
    address=$(tls_lan_address)
    if [[ -z $address ]]; then
        skipped=$((skipped + 1))
        echo "skip tls: no non-loopback address (Docker does not check certificates on 127.0.0.0/8)"
        return 0
    fi
    dir=$(tls_dir)
    mkdir -p "$dir/data" "$dir/home"
    local certs_d_existed=""
    [[ -d /etc/docker/certs.d ]] && certs_d_existed=yes
    # Authentication off: this workflow is about trust; the others cover logins.
    KAI_AUTH__ENABLED=false "$KAI_BIN" serve --tls auto --hostname "$address" --listen "$address:0" \
        --data "$dir/data" >"$dir/stdout" 2>"$dir/stderr" &
    local kai_pid=$!
    echo "$kai_pid" >"$dir/pid"
    started_pids+=("$kai_pid")
    need start tls_wait_kai
    docker_start_daemon
    need daemon docker_wait_daemon
    need push-refused-before-setup tls_push_untrusted
    need setup-docker tls_setup_docker
    step push-pull tls_push_pull
    step doctor tls_doctor
    stop_pid "$dockerd_pid" dockerd
    unset DOCKER_HOST
    stop_pid "$kai_pid" "kai (tls)"
    if [[ -s $dir/registry ]]; then
        rm -rf "/etc/docker/certs.d/$(tls_registry)"
    fi
    if [[ -z $certs_d_existed ]]; then
        rmdir /etc/docker/certs.d 2>/dev/null || true
    fi
}
