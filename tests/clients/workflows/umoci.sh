# umoci: make an image in an OCI layout (init, new, insert, config, then
# unpack / edit / repack), push both tags with skopeo, pull them back into a
# fresh layout and `umoci unpack` them to check the files and the config.

umoci_unpack_flags() {
    if (($(id -u) != 0)); then
        echo --rootless
    fi
}

umoci_create() {
    local dir=$WORK/umoci layout=$WORK/umoci/layout
    mkdir -p "$dir/files"
    umoci init --layout "$layout"
    umoci new --image "$layout:v1"
    printf 'written by umoci insert %s\n' "$RUN_ID" >"$dir/files/kai.txt"
    umoci insert --image "$layout:v1" "$dir/files/kai.txt" /etc/kai.txt
    umoci config --image "$layout:v1" --config.cmd /bin/kai --author "kai client suite"
    # v2: unpack v1, change a file and add one, repack.
    # shellcheck disable=SC2046
    umoci unpack $(umoci_unpack_flags) --image "$layout:v1" "$dir/bundle"
    printf 'changed by umoci repack %s\n' "$RUN_ID" >>"$dir/bundle/rootfs/etc/kai.txt"
    printf 'added before repack\n' >"$dir/bundle/rootfs/etc/second.txt"
    umoci repack --image "$layout:v2" "$dir/bundle"
    umoci ls --layout "$layout"
    umoci stat --image "$layout:v2"
}

umoci_push() {
    local layout=$WORK/umoci/layout tag
    for tag in v1 v2; do
        skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false \
            "oci:$layout:$tag" "docker://$REG/clients/umoci:$tag"
        expect_eq "digest the registry serves for $tag = the layout's" \
            "$(http layout-digest "$layout" "$tag")" "$(http digest clients/umoci "$tag")"
    done
}

umoci_pull_unpack() {
    local dir=$WORK/umoci pulled=$WORK/umoci/pulled tag bundle
    for tag in v1 v2; do
        skopeo --insecure-policy copy --preserve-digests --src-tls-verify=false \
            "docker://$REG/clients/umoci:$tag" "oci:$pulled:$tag"
        bundle=$dir/pulled-bundle-$tag
        # shellcheck disable=SC2046
        umoci unpack $(umoci_unpack_flags) --image "$pulled:$tag" "$bundle"
        expect_eq "process.args in $tag's runtime config" '["/bin/kai"]' "$(jq -c .process.args "$bundle/config.json")"
    done
    expect_eq "/etc/kai.txt in v1" "written by umoci insert $RUN_ID" "$(cat "$dir/pulled-bundle-v1/rootfs/etc/kai.txt")"
    expect_eq "/etc/second.txt absent from v1" no "$([[ -e $dir/pulled-bundle-v1/rootfs/etc/second.txt ]] && echo yes || echo no)"
    expect_eq "/etc/kai.txt in v2" "written by umoci insert $RUN_ID
changed by umoci repack $RUN_ID" "$(cat "$dir/pulled-bundle-v2/rootfs/etc/kai.txt")"
    expect_eq "/etc/second.txt in v2" "added before repack" "$(cat "$dir/pulled-bundle-v2/rootfs/etc/second.txt")"
}

workflow_umoci() {
    section umoci
    if ! command -v umoci >/dev/null || ! command -v skopeo >/dev/null; then
        skip_workflow "umoci or skopeo is not installed"
        return 0
    fi
    echo "umoci: $(umoci --version)"
    need create-layout umoci_create
    need push umoci_push
    step pull-unpack umoci_pull_unpack
}
