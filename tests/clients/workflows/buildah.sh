# buildah: a three-platform FROM scratch build into a manifest list, pushed
# with `manifest push --all`, then read back by skopeo, the docker CLI and
# buildah itself. Storage is vfs under $WORK, isolated from the system's.
# Cross-platform FROM scratch needs no emulation: there is no RUN step.

BUILDAH_PLATFORMS="linux/amd64 linux/arm/v7 linux/arm64"

buildah_() {
    buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/run" --storage-driver vfs "$@"
}

buildah_build() {
    local context=$WORK/buildah/context
    mkdir -p "$context"
    printf 'hello from buildah %s\n' "$RUN_ID" >"$context/hello.txt"
    printf 'FROM scratch\nCOPY hello.txt /hello.txt\n' >"$context/Containerfile"
    buildah_ build --platform linux/amd64,linux/arm64,linux/arm/v7 --manifest clients-buildah \
        -f "$context/Containerfile" "$context"
    expect_eq "platforms of the local manifest list" "$BUILDAH_PLATFORMS" \
        "$(buildah_ manifest inspect clients-buildah | platforms_of)"
}

buildah_push() {
    local digest_file=$WORK/buildah/pushed-digest
    buildah_ manifest push --all --tls-verify=false --digestfile "$digest_file" \
        clients-buildah "docker://$REG/clients/buildah:v1"
    expect_eq "digest buildah wrote = digest the registry serves for the tag" \
        "$(cat "$digest_file")" "$(http digest clients/buildah v1)"
}

buildah_skopeo_inspect_raw() {
    local raw=$WORK/buildah/raw.json
    skopeo inspect --raw --tls-verify=false "docker://$REG/clients/buildah:v1" >"$raw"
    cat "$raw"
    expect_eq "platforms" "$BUILDAH_PLATFORMS" "$(platforms_of <"$raw")"
    expect_eq "sha256 of the raw manifest = pushed digest" "$(cat "$WORK/buildah/pushed-digest")" "$(sha256_of "$raw")"
}

buildah_docker_manifest_inspect() {
    local list
    list=$("$DOCKER" manifest inspect --insecure "$REG/clients/buildah:v1")
    echo "$list"
    expect_eq "platforms" "$BUILDAH_PLATFORMS" "$(platforms_of <<<"$list")"
}

buildah_pull_arm64() {
    local image container mount
    buildah_ rmi --all --force >/dev/null 2>&1 || true
    image=$(buildah_ pull --quiet --tls-verify=false --platform linux/arm64 "docker://$REG/clients/buildah:v1")
    expect_eq "architecture of the pulled image" arm64 \
        "$(buildah_ inspect --type image --format '{{.OCIv1.Architecture}}' "$image")"
    container=$(buildah_ from "$image")
    mount=$(buildah_ mount "$container")
    expect_eq "/hello.txt in the pulled image" "hello from buildah $RUN_ID" "$(cat "$mount/hello.txt")"
    buildah_ umount "$container" >/dev/null
    buildah_ rm "$container" >/dev/null
}

workflow_buildah() {
    section buildah
    if ! command -v buildah >/dev/null; then
        skip_workflow "buildah is not installed"
        return 0
    fi
    echo "buildah: $(buildah --version)"
    need build buildah_build
    need manifest-push-all buildah_push
    if command -v skopeo >/dev/null; then
        step skopeo-inspect-raw buildah_skopeo_inspect_raw
    fi
    if command -v "$DOCKER" >/dev/null; then
        step docker-manifest-inspect buildah_docker_manifest_inspect
    fi
    step pull-platform-arm64 buildah_pull_arm64
}
