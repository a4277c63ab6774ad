# Clients we cannot run here, replayed over raw HTTP by registry_http.py:
# - BuildKit pushes (containerd's pusher order: HEAD blob, POST + PUT upload,
#   HEAD + PUT child manifests by digest, PUT the root by tag), each pulled
#   back and compared byte for byte;
# - the referrers API (distribution-spec 1.1);
# - an old client that only Accepts Docker media types, over raw HTTP and, when
#   the machine has one, as a real old docker CLI (Debian 12's 20.10, whose
#   `docker manifest inspect` asks only for Docker types).
# The last two are Kai-only: the reference registry (distribution 2.8) lacks them.

workflow_buildkit() {
    section buildkit
    step cache-image-manifest http push-shape buildkit-cache-manifest cache clients/buildkit-cache manifest
    step cache-legacy-index http push-shape buildkit-cache-index cache clients/buildkit-cache index
    step attestation-index http push-shape buildx-attested buildkit clients/buildkit-app v1
}

workflow_referrers() {
    section referrers
    kai_only step push-with-subject http referrers-push clients/referrers
    kai_only step list-and-filter http referrers-list clients/referrers
}

# An old docker CLI, if there is one besides $DOCKER: $OLD_DOCKER, or Debian's
# /usr/bin/docker when it is a 20.x.
old_docker_cli() {
    local candidate=${OLD_DOCKER:-/usr/bin/docker}
    if [[ -x $candidate && $(realpath "$candidate") != $(realpath "$(command -v "$DOCKER" || echo /nonexistent)") ]] \
        && { [[ -n ${OLD_DOCKER:-} ]] || "$candidate" --version | grep -q 'version 20\.'; }; then
        echo "$candidate"
    fi
}

old_cli_manifest_inspect() {
    local cli=$1 inspected
    "$cli" --version
    http push-shape multi-arch old-cli clients/old-cli index >/dev/null
    http push-shape single-image old-cli clients/old-cli manifest >/dev/null
    inspected=$("$cli" manifest inspect --insecure "$REG/clients/old-cli:index")
    echo "$inspected"
    expect_eq "mediaType" application/vnd.docker.distribution.manifest.list.v2+json "$(jq -r .mediaType <<<"$inspected")"
    expect_eq "platforms" "linux/amd64 linux/arm/v7 linux/arm64" "$(platforms_of <<<"$inspected")"
    inspected=$("$cli" manifest inspect --insecure "$REG/clients/old-cli:manifest")
    echo "$inspected"
    expect_eq "mediaType" application/vnd.docker.distribution.manifest.v2+json "$(jq -r .mediaType <<<"$inspected")"
    expect_eq "layer count" 1 "$(jq '.layers | length' <<<"$inspected")"
}

workflow_old_client() {
    section old-client
    kai_only step index-by-tag-as-docker-list http old-client-index clients/old-client index
    kai_only step manifest-by-tag-as-docker-v2 http old-client-manifest clients/old-client manifest
    kai_only step by-digest-unconverted http old-client-by-digest clients/old-client by-digest
    local cli
    cli=$(old_docker_cli)
    if [[ -n $cli ]]; then
        kai_only step old-docker-cli-manifest-inspect old_cli_manifest_inspect "$cli"
    else
        echo "(no old docker CLI besides $DOCKER: set OLD_DOCKER to run old-docker-cli-manifest-inspect)"
    fi
}
