# Clients we cannot run here, replayed over raw HTTP by registry_http.py:
# - BuildKit pushes (containerd's pusher order: HEAD blob, POST + PUT upload,
#   HEAD + PUT child manifests by digest, PUT the root by tag), each pulled
#   back and compared byte for byte;
# - the referrers API (distribution-spec 1.1);
# - an old client that only Accepts Docker media types.
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

workflow_old_client() {
    section old-client
    kai_only step index-by-tag-as-docker-list http old-client-index clients/old-client index
    kai_only step manifest-by-tag-as-docker-v2 http old-client-manifest clients/old-client manifest
    kai_only step by-digest-unconverted http old-client-by-digest clients/old-client by-digest
}
