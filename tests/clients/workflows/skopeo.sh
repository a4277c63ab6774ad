# skopeo: `copy --all` of a buildx-shaped index (three platforms plus their
# attestation manifests) from an OCI layout to the registry and back, then
# inspect, inspect --raw, list-tags, registry-to-registry copy and delete.
# The layout is written by fixtures.py; all content is local, so skopeo runs
# with --insecure-policy instead of depending on /etc/containers/policy.json.

skopeo_() {
    skopeo --insecure-policy "$@"
}

skopeo_fixture() {
    mkdir -p "$WORK/skopeo"
    python3 "$SUITE_DIR/fixtures.py" buildx-attested skopeo "$WORK/skopeo/source" v1 >"$WORK/skopeo/root-digest"
    python3 "$SUITE_DIR/fixtures.py" single-image skopeo-delete "$WORK/skopeo/source" delete-me >/dev/null
    cat "$WORK/skopeo/root-digest"
}

skopeo_copy_to_registry() {
    # --preserve-digests: fail rather than silently rewrite a manifest.
    skopeo_ copy --all --preserve-digests --dest-tls-verify=false \
        "oci:$WORK/skopeo/source:v1" "docker://$REG/clients/skopeo:v1"
    expect_eq "digest the registry serves for the tag = the layout's index digest" \
        "$(cat "$WORK/skopeo/root-digest")" "$(http digest clients/skopeo v1)"
}

skopeo_copy_from_registry() {
    skopeo_ copy --all --preserve-digests --src-tls-verify=false \
        "docker://$REG/clients/skopeo:v1" "oci:$WORK/skopeo/copy:v1"
    http compare-layouts "$WORK/skopeo/source" v1 "$WORK/skopeo/copy" v1
}

skopeo_inspect() {
    local inspected
    inspected=$(skopeo_ inspect --tls-verify=false --override-os linux --override-arch arm64 \
        "docker://$REG/clients/skopeo:v1")
    echo "$inspected"
    expect_eq "Architecture" arm64 "$(jq -r .Architecture <<<"$inspected")"
    expect_eq "Os" linux "$(jq -r .Os <<<"$inspected")"
    expect_eq "Name" "$REG/clients/skopeo" "$(jq -r .Name <<<"$inspected")"
    expect_match "RepoTags" '"v1"' "$(jq -c .RepoTags <<<"$inspected")"
    expect_eq "Layers" 1 "$(jq '.Layers | length' <<<"$inspected")"
}

skopeo_inspect_raw() {
    local raw=$WORK/skopeo/raw.json root
    root=$(cat "$WORK/skopeo/root-digest")
    skopeo_ inspect --raw --tls-verify=false "docker://$REG/clients/skopeo:v1" >"$raw"
    cmp "$raw" "$WORK/skopeo/source/blobs/sha256/${root#sha256:}"
    echo "inspect --raw returned the pushed index byte for byte"
    expect_eq "platforms (attestations are unknown/unknown)" \
        "linux/amd64 linux/arm/v7 linux/arm64 unknown/unknown unknown/unknown unknown/unknown" \
        "$(platforms_of <"$raw")"
}

skopeo_copy_between_repositories() {
    skopeo_ copy --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
        "docker://$REG/clients/skopeo:v1" "docker://$REG/clients/skopeo-copy:v1"
    skopeo_ copy --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
        "docker://$REG/clients/skopeo:v1" "docker://$REG/clients/skopeo:v2"
    expect_eq "digest in the other repository" "$(cat "$WORK/skopeo/root-digest")" \
        "$(http digest clients/skopeo-copy v1)"
    expect_eq "digest under the second tag" "$(cat "$WORK/skopeo/root-digest")" "$(http digest clients/skopeo v2)"
}

skopeo_list_tags() {
    local tags
    tags=$(skopeo_ list-tags --tls-verify=false "docker://$REG/clients/skopeo")
    echo "$tags"
    expect_eq "Repository" "$REG/clients/skopeo" "$(jq -r .Repository <<<"$tags")"
    expect_eq "Tags" '["v1","v2"]' "$(jq -c '.Tags | sort' <<<"$tags")"
}

skopeo_delete() {
    skopeo_ copy --preserve-digests --dest-tls-verify=false \
        "oci:$WORK/skopeo/source:delete-me" "docker://$REG/clients/skopeo:delete-me"
    expect_eq "Tags before delete" '["delete-me","v1","v2"]' \
        "$(skopeo_ list-tags --tls-verify=false "docker://$REG/clients/skopeo" | jq -c '.Tags | sort')"
    skopeo_ delete --tls-verify=false "docker://$REG/clients/skopeo:delete-me"
    http absent clients/skopeo delete-me
    expect_eq "Tags after delete" '["v1","v2"]' \
        "$(skopeo_ list-tags --tls-verify=false "docker://$REG/clients/skopeo" | jq -c '.Tags | sort')"
    expect_eq "the other tags are untouched" "$(cat "$WORK/skopeo/root-digest")" "$(http digest clients/skopeo v1)"
}

workflow_skopeo() {
    section skopeo
    if ! command -v skopeo >/dev/null; then
        skip_workflow "skopeo is not installed"
        return 0
    fi
    echo "skopeo: $(skopeo --version)"
    need fixture skopeo_fixture
    need copy-all-to-registry skopeo_copy_to_registry
    step copy-all-from-registry skopeo_copy_from_registry
    step inspect skopeo_inspect
    step inspect-raw skopeo_inspect_raw
    step copy-between-repositories skopeo_copy_between_repositories
    step list-tags skopeo_list_tags
    step delete skopeo_delete
}
