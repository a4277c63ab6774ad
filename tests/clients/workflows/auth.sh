# Accounts and access with real clients (Kai-only; needs REGISTRY_USER, which
# run.sh sets for Kai): the anonymous challenge; `skopeo --creds` and
# `buildah --creds` with an empty auth file, so that only the flag carries the
# credentials; a private repository refused to anonymous clients and to
# another user, then readable anonymously once public; a robot account limited
# to one repository. Accounts are made with the kai CLI on the running
# registry's data. (The docker workflow runs `docker login` and checks that a
# push into another namespace is denied.) Helm is not in Debian 12: not run.

auth_kai() {
    "$KAI_BIN" "$@" --data "$WORK/registry/data"
}

# skopeo and buildah with no stored credentials at all: an empty auth file,
# and no docker config.json (containers/image falls back to it).
auth_no_file() {
    REGISTRY_AUTH_FILE=$WORK/auth/empty.json DOCKER_CONFIG=$WORK/auth/no-docker-config "$@"
}

auth_setup() {
    mkdir -p "$WORK/auth"
    echo '{"auths": {}}' >"$WORK/auth/empty.json"
    mkdir -p "$WORK/auth/no-docker-config"
    python3 "$SUITE_DIR/fixtures.py" single-image auth "$WORK/auth/layout" v1 >"$WORK/auth/digest"
    # A second user, who owns nothing of `clients`.
    printf 'outsider-password-%s\n' "$RUN_ID" | auth_kai user create outsider --password-stdin
}

auth_challenge() {
    local headers
    headers=$(curl -sS -o /dev/null -D - "http://$REG/v2/")
    echo "$headers"
    expect_match "status" '^HTTP/1.1 401' "$headers"
    expect_match "challenge" "[Ww]ww-[Aa]uthenticate: Bearer realm=\"http://$REG/v2/auth\",service=\"kai\"" "$headers"
}

auth_skopeo_creds_copy() {
    auth_no_file skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false \
        --dest-creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
        "oci:$WORK/auth/layout:v1" "docker://$REG/clients/auth-skopeo:v1"
    auth_no_file skopeo --insecure-policy inspect --raw --tls-verify=false \
        --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" "docker://$REG/clients/auth-skopeo:v1" >"$WORK/auth/raw.json"
    expect_eq "digest pushed with --creds = the layout's" "$(cat "$WORK/auth/digest")" "$(sha256_of "$WORK/auth/raw.json")"
}

auth_private_refused() {
    local output
    if output=$(auth_no_file skopeo inspect --raw --tls-verify=false "docker://$REG/clients/auth-skopeo:v1" 2>&1); then
        echo "anonymous inspect of a private repository succeeded: $output"
        return 1
    fi
    echo "anonymous: $output"
    expect_match "anonymous error" 'unauthorized|authentication required|denied' "$output"
    if output=$(auth_no_file skopeo inspect --raw --tls-verify=false \
        --creds "outsider:outsider-password-$RUN_ID" "docker://$REG/clients/auth-skopeo:v1" 2>&1); then
        echo "another user's inspect of a private repository succeeded: $output"
        return 1
    fi
    echo "outsider: $output"
    if output=$(auth_no_file skopeo --insecure-policy copy --dest-tls-verify=false \
        --dest-creds "outsider:outsider-password-$RUN_ID" \
        "oci:$WORK/auth/layout:v1" "docker://$REG/clients/auth-intruder:v1" 2>&1); then
        echo "another user pushed into clients/: $output"
        return 1
    fi
    echo "outsider push: $output"
    http absent clients/auth-intruder v1
}

auth_public_anonymous() {
    auth_kai repo visibility clients/auth-skopeo public
    auth_no_file skopeo inspect --raw --tls-verify=false "docker://$REG/clients/auth-skopeo:v1" >"$WORK/auth/public.json"
    expect_eq "anonymous pull of the public repository" "$(cat "$WORK/auth/digest")" "$(sha256_of "$WORK/auth/public.json")"
}

auth_buildah_creds_push() {
    local container image digest_file=$WORK/auth/buildah-digest
    mkdir -p "$WORK/auth/context"
    printf 'pushed by buildah --creds %s\n' "$RUN_ID" >"$WORK/auth/context/hello.txt"
    container=$(buildah_ from scratch)
    buildah_ copy "$container" "$WORK/auth/context/hello.txt" /hello.txt
    image=$(buildah_ commit "$container" clients-auth-buildah)
    buildah_ rm "$container" >/dev/null
    auth_no_file buildah_ push --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
        --digestfile "$digest_file" "$image" "docker://$REG/clients/auth-buildah:v1"
    expect_eq "digest buildah wrote = digest served" "$(cat "$digest_file")" "$(http digest clients/auth-buildah v1)"
    # Without credentials the same push is refused.
    if auth_no_file buildah_ push --tls-verify=false "$image" "docker://$REG/clients/auth-buildah:v2"; then
        echo "an anonymous buildah push succeeded"
        return 1
    fi
}

auth_robot() {
    local token output
    output=$(auth_kai robot create clients+ci --grant auth-robot=write)
    echo "$output" | head -n -1
    token=$(tail -n 1 <<<"$output")
    auth_no_file skopeo --insecure-policy copy --dest-tls-verify=false --dest-creds "clients+ci:$token" \
        "oci:$WORK/auth/layout:v1" "docker://$REG/clients/auth-robot:v1"
    expect_eq "the robot's push" "$(cat "$WORK/auth/digest")" "$(http digest clients/auth-robot v1)"
    if output=$(auth_no_file skopeo --insecure-policy copy --dest-tls-verify=false --dest-creds "clients+ci:$token" \
        "oci:$WORK/auth/layout:v1" "docker://$REG/clients/auth-robot-elsewhere:v1" 2>&1); then
        echo "the robot pushed outside its one repository: $output"
        return 1
    fi
    echo "elsewhere: $output"
}

auth_audit() {
    local audit
    audit=$(auth_kai audit --limit 1000)
    expect_match "a push in the audit log" "  $REGISTRY_USER  127\\.0\\.0\\.1  push  clients/" "$audit"
    expect_match "a failed login in the audit log" "login  outsider  (success|failure)" "$audit"
    expect_match "the robot in the audit log" "robot\\.create  clients\\+ci" "$audit"
}

workflow_auth() {
    section auth
    if [[ $REGISTRY != kai || -z ${REGISTRY_USER:-} ]]; then
        echo "skip auth: Kai's accounts (needs REGISTRY=kai with authorization on)"
        return 0
    fi
    if ! command -v skopeo >/dev/null; then
        skip_workflow "skopeo is not installed"
        return 0
    fi
    need setup auth_setup
    step challenge auth_challenge
    need skopeo-creds-copy auth_skopeo_creds_copy
    step private-refused auth_private_refused
    step public-anonymous auth_public_anonymous
    if command -v buildah >/dev/null; then
        step buildah-creds-push auth_buildah_creds_push
    fi
    step robot-one-repository auth_robot
    step audit-log auth_audit
}
