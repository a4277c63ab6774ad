# Docker engine against the registry: a private dockerd (its own socket, data
# and exec roots, containerd namespace and config file), so it neither needs
# nor disturbs a system Docker. Images are built FROM scratch, so nothing is
# pulled from outside.

docker_dir() { echo "$WORK/docker"; }

docker_start_daemon() {
    local dir
    dir=$(docker_dir)
    mkdir -p "$dir"
    echo '{}' >"$dir/daemon.json"
    # The unix socket path limit (108 bytes) applies to exec-root/containerd/*.sock: $WORK is short.
    dockerd \
        --config-file "$dir/daemon.json" \
        --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
        --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/pid" \
        --containerd-namespace kai-client-suite --containerd-plugins-namespace kai-client-suite-plugins \
        --host "unix://$dir/docker.sock" --insecure-registry "$REG" \
        >"$dir/dockerd.log" 2>&1 &
    dockerd_pid=$!
    started_pids+=("$dockerd_pid")
    export DOCKER_HOST="unix://$dir/docker.sock"
}

docker_wait_daemon() {
    for _ in $(seq 1 300); do
        if "$DOCKER" version >/dev/null 2>&1; then
            "$DOCKER" version
            return 0
        fi
        if ! kill -0 "$dockerd_pid" 2>/dev/null; then
            echo "dockerd exited; its log:"
            tail -n 30 "$(docker_dir)/dockerd.log"
            return 1
        fi
        sleep 0.1
    done
    echo "dockerd did not answer within 30s"
    tail -n 30 "$(docker_dir)/dockerd.log"
    return 1
}

# docker_build TAG CONTENT: a FROM scratch image holding /hello.txt.
docker_build() {
    local tag=$1 content=$2 context
    context=$(docker_dir)/context-${tag//[:\/]/_}
    mkdir -p "$context"
    printf '%s\n' "$content" >"$context/hello.txt"
    printf 'FROM scratch\nCOPY hello.txt /hello.txt\n' >"$context/Dockerfile"
    # The legacy builder: the docker CLI here has no buildx plugin, and dockerd's
    # built-in BuildKit is not needed for FROM scratch + COPY.
    DOCKER_BUILDKIT=0 "$DOCKER" build -t "$tag" "$context"
}

docker_build_push_image() {
    docker_build "$REG/clients/docker:v1" "hello from docker $RUN_ID"
    "$DOCKER" image inspect --format '{{.Os}}/{{.Architecture}}' "$REG/clients/docker:v1"
}

# docker login with the suite's credentials (what config.json held is logged out first).
docker_login() {
    "$DOCKER" logout "$REG" || true
    printf '%s' "$REGISTRY_PASSWORD" | "$DOCKER" login --username "$REGISTRY_USER" --password-stdin "$REG"
    grep -q "$REG" "$DOCKER_CONFIG/config.json"
}

# Pushing into a namespace the user may not write is refused.
docker_push_denied() {
    local output
    "$DOCKER" tag "$REG/clients/docker:v1" "$REG/not-clients/docker:v1"
    if output=$("$DOCKER" push "$REG/not-clients/docker:v1" 2>&1); then
        echo "$output"
        echo "the push into another namespace succeeded"
        return 1
    fi
    echo "$output"
    expect_match "docker's error" 'denied|unauthorized|insufficient' "$output"
    "$DOCKER" rmi "$REG/not-clients/docker:v1" >/dev/null
}

docker_push() {
    local output pushed served
    output=$("$DOCKER" push "$REG/clients/docker:v1")
    echo "$output"
    pushed=$(grep -oE 'digest: sha256:[0-9a-f]{64}' <<<"$output" | cut -d' ' -f2)
    served=$(http digest clients/docker v1)
    expect_eq "digest docker push printed = digest the registry serves for the tag" "$pushed" "$served"
    echo "$pushed" >"$(docker_dir)/pushed-digest"
}

docker_rmi_pull() {
    local pushed repo_digests
    pushed=$(cat "$(docker_dir)/pushed-digest")
    "$DOCKER" rmi "$REG/clients/docker:v1"
    if "$DOCKER" image inspect "$REG/clients/docker:v1" >/dev/null 2>&1; then
        echo "image still present after docker rmi"
        return 1
    fi
    "$DOCKER" pull "$REG/clients/docker:v1"
    repo_digests=$("$DOCKER" image inspect --format '{{join .RepoDigests " "}}' "$REG/clients/docker:v1")
    expect_eq "RepoDigests after pull" "$REG/clients/docker@$pushed" "$repo_digests"
}

# docker_file_content IMAGE PATH: print a file of an image (docker create + docker cp).
docker_file_content() {
    local image=$1 path=$2 container
    # FROM scratch images have no command; create never runs it.
    container=$("$DOCKER" create "$image" /nonexistent)
    "$DOCKER" cp "$container:$path" - | tar -xO
    "$DOCKER" rm "$container" >/dev/null
}

docker_pulled_content() {
    local content
    content=$(docker_file_content "$REG/clients/docker:v1" /hello.txt)
    expect_eq "/hello.txt in the pulled image" "hello from docker $RUN_ID" "$content"
}

docker_manifest_inspect_single() {
    local manifest image_id
    manifest=$("$DOCKER" manifest inspect --insecure "$REG/clients/docker:v1")
    echo "$manifest"
    image_id=$("$DOCKER" image inspect --format '{{.Id}}' "$REG/clients/docker:v1")
    expect_eq "mediaType" application/vnd.docker.distribution.manifest.v2+json "$(jq -r .mediaType <<<"$manifest")"
    expect_eq "config digest = local image ID" "$image_id" "$(jq -r .config.digest <<<"$manifest")"
    expect_eq "layer count" 1 "$(jq '.layers | length' <<<"$manifest")"
}

docker_pull_arm64() {
    local pushed architecture content
    # The multi-arch image is pushed over raw HTTP in BuildKit's order.
    pushed=$(http push-shape multi-arch docker-multi clients/docker-multi v1)
    "$DOCKER" pull --platform linux/arm64 "$REG/clients/docker-multi:v1"
    architecture=$("$DOCKER" image inspect --format '{{.Os}}/{{.Architecture}}' "$REG/clients/docker-multi:v1")
    expect_eq "platform of the pulled image" linux/arm64 "$architecture"
    content=$(docker_file_content "$REG/clients/docker-multi:v1" /platform.txt)
    expect_eq "/platform.txt in the pulled image" linux/arm64 "$content"
    content=$(docker_file_content "$REG/clients/docker-multi:v1" /hello.txt)
    expect_eq "/hello.txt in the pulled image" "hello from docker-multi" "$content"
    echo "index $pushed"
}

docker_manifest_inspect_multi() {
    local list
    list=$("$DOCKER" manifest inspect --insecure "$REG/clients/docker-multi:v1")
    echo "$list"
    # The OCI index as pushed; a CLI that Accepts only Docker types (20.10) gets a Docker list.
    expect_match "mediaType" '^application/vnd\.(oci\.image\.index\.v1|docker\.distribution\.manifest\.list\.v2)\+json$' \
        "$(jq -r .mediaType <<<"$list")"
    expect_eq "platforms" "linux/amd64 linux/arm/v7 linux/arm64" "$(platforms_of <<<"$list")"
}

docker_manifest_list() {
    local list=$REG/clients/docker-list:v1 output pushed dir
    dir=$(docker_dir)
    docker_build "$REG/clients/docker:arm64" "hello from docker arm64 $RUN_ID"
    "$DOCKER" push "$REG/clients/docker:arm64"
    "$DOCKER" manifest create --insecure "$list" "$REG/clients/docker:v1" "$REG/clients/docker:arm64"
    "$DOCKER" manifest annotate --os linux --arch arm64 "$list" "$REG/clients/docker:arm64"
    output=$("$DOCKER" manifest push --insecure "$list")
    echo "$output"
    pushed=$(grep -oE 'sha256:[0-9a-f]{64}' <<<"$output" | tail -n1)
    http fetch clients/docker-list v1 "$dir/list.json" >"$dir/list.headers"
    cat "$dir/list.headers" "$dir/list.json"
    expect_eq "Content-Type" "application/vnd.docker.distribution.manifest.list.v2+json" \
        "$(sed -n 's/^Content-Type: //p' "$dir/list.headers")"
    expect_eq "body mediaType" "application/vnd.docker.distribution.manifest.list.v2+json" \
        "$(jq -r .mediaType "$dir/list.json")"
    expect_eq "Docker-Content-Digest = digest docker manifest push printed" "$pushed" \
        "$(sed -n 's/^Docker-Content-Digest: //p' "$dir/list.headers")"
    expect_eq "sha256 of the body = digest docker manifest push printed" "$pushed" "$(sha256_of "$dir/list.json")"
    expect_eq "platforms" "linux/amd64 linux/arm64" "$(platforms_of <"$dir/list.json")"
}

workflow_docker() {
    section docker
    if ! command -v dockerd >/dev/null || ! command -v "$DOCKER" >/dev/null; then
        skip_workflow "dockerd or the docker CLI is not installed"
        return 0
    fi
    if (($(id -u) != 0)); then
        skip_workflow "a private dockerd needs root"
        return 0
    fi
    echo "docker CLI: $("$DOCKER" --version) ($(command -v "$DOCKER"))"
    echo "dockerd: $(dockerd --version)"
    docker_start_daemon
    need daemon docker_wait_daemon
    if [[ -n ${REGISTRY_USER:-} ]]; then
        need login docker_login
    fi
    need build docker_build_push_image
    need push docker_push
    if [[ -n ${REGISTRY_USER:-} ]]; then
        kai_only step push-denied docker_push_denied
    fi
    need rmi-pull docker_rmi_pull
    step pulled-content docker_pulled_content
    step manifest-inspect-single docker_manifest_inspect_single
    step pull-platform-arm64 docker_pull_arm64
    step manifest-inspect-multi docker_manifest_inspect_multi
    step manifest-create-push docker_manifest_list
    stop_pid "$dockerd_pid" dockerd
    unset DOCKER_HOST
}
