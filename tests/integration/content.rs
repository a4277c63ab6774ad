//! What real tools push, replayed request by request in the order they send
//! them, then pulled back byte for byte: docker buildx multi-platform images
//! with provenance attestations, BuildKit registry caches, Helm charts, OCI 1.1
//! artifacts with a `subject` and the referrers API, cosign signatures, Docker
//! schema 2 images, cross-repository mounts and deletion.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{
    error_code, header, image_manifest, sha256, TestRegistry, DOCKER_CONFIG, DOCKER_LAYER,
    DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};

const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const COSIGN_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// What containerd (and so BuildKit and buildx) sends as `Accept` when it
/// resolves a tag.
const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// Bytes that stand in for a compressed layer: deterministic, distinct per seed,
/// and not trivially compressible.
fn layer_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Pushes a blob as containerd's pusher does: HEAD to see whether the registry
/// has it, then POST to open a session and PUT the whole body with `?digest=`.
async fn push_blob_like_buildkit(registry: &TestRegistry, name: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let response = registry
        .request(Method::HEAD, &format!("/v2/{name}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    if response.status() == StatusCode::OK {
        assert_eq!(header(&response, "content-length"), bytes.len().to_string());
        assert_eq!(header(&response, "docker-content-digest"), digest);
        return digest;
    }
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "HEAD of a blob not yet pushed"
    );

    let response = registry
        .request(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = header(&response, "location");
    assert!(
        location.starts_with(&format!("/v2/{name}/blobs/uploads/")),
        "{location}"
    );

    let separator = if location.contains('?') { '&' } else { '?' };
    let response = registry
        .request(
            Method::PUT,
            &format!("{location}{separator}digest={digest}"),
        )
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    assert_eq!(header(&response, "docker-content-digest"), digest);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/{name}/blobs/{digest}")
    );
    digest
}

/// Pushes a manifest as containerd does: a HEAD first when it goes by digest,
/// then the PUT. Returns the digest and the response headers' `OCI-Subject`.
async fn push_manifest_like_buildkit(
    registry: &TestRegistry,
    name: &str,
    reference: Option<&str>,
    media_type: &str,
    bytes: &[u8],
) -> (String, String) {
    let digest = sha256(bytes);
    let reference = match reference {
        Some(tag) => tag.to_owned(),
        None => {
            let response = registry
                .request(Method::HEAD, &format!("/v2/{name}/manifests/{digest}"))
                .header("accept", media_type)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::NOT_FOUND,
                "HEAD of a manifest not yet pushed"
            );
            digest.clone()
        }
    };
    let response = registry
        .put_manifest(name, &reference, media_type, bytes)
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    assert_eq!(header(&response, "docker-content-digest"), digest);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/{name}/manifests/{digest}")
    );
    let subject = header(&response, "oci-subject");
    (digest, subject)
}

/// GETs a manifest and asserts it comes back as pushed: the same bytes, media
/// type and digest.
async fn assert_manifest_served(
    registry: &TestRegistry,
    name: &str,
    reference: &str,
    accept: &str,
    media_type: &str,
    bytes: &[u8],
) {
    let response = registry
        .request(Method::GET, &format!("/v2/{name}/manifests/{reference}"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {name}:{reference}");
    assert_eq!(
        header(&response, "content-type"),
        media_type,
        "{name}:{reference}"
    );
    assert_eq!(
        header(&response, "docker-content-digest"),
        sha256(bytes),
        "{name}:{reference}"
    );
    assert_eq!(header(&response, "content-length"), bytes.len().to_string());
    let body = response.bytes().await.unwrap();
    assert_eq!(
        body.as_ref(),
        bytes,
        "{name}:{reference} is served byte for byte"
    );
}

async fn assert_blob_served(registry: &TestRegistry, name: &str, bytes: &[u8]) {
    let digest = sha256(bytes);
    let response = registry.get(&format!("/v2/{name}/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK, "blob {digest} in {name}");
    assert_eq!(header(&response, "docker-content-digest"), digest);
    let body = response.bytes().await.unwrap();
    assert!(
        body.as_ref() == bytes,
        "blob {digest} in {name} is served byte for byte"
    );
}

async fn tags(registry: &TestRegistry, name: &str) -> Vec<String> {
    let response = registry.get(&format!("/v2/{name}/tags/list")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], name);
    body["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|tag| tag.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

/// A platform image as buildx builds it: its config and one layer.
struct PlatformImage {
    platform: Value,
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

fn platform_image(seed: u64, architecture: &str, variant: Option<&str>) -> PlatformImage {
    let layer = layer_bytes(seed, 4096 + seed as usize);
    let mut platform = json!({"architecture": architecture, "os": "linux"});
    let mut config = json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
        "created": "2024-05-01T12:00:00Z",
        "history": [{"created": "2024-05-01T12:00:00Z", "created_by": "COPY . / # buildkit", "comment": "buildkit.dockerfile.v0"}],
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_bytes(seed + 1000, 64))]},
    });
    if let Some(variant) = variant {
        platform["variant"] = json!(variant);
        config["variant"] = json!(variant);
    }
    let config = to_json(&config);
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [descriptor(OCI_LAYER, &layer)],
    }));
    PlatformImage {
        platform,
        config,
        layer,
        manifest,
    }
}

/// A provenance attestation manifest as buildx attaches it to an image.
struct Attestation {
    config: Vec<u8>,
    statement: Vec<u8>,
    manifest: Vec<u8>,
}

fn attestation(image_digest: &str, seed: u64) -> Attestation {
    let statement = to_json(&json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "pkg:docker/acme/app@v1", "digest": {"sha256": image_digest.trim_start_matches("sha256:")}}],
        "predicate": {"builder": {"id": ""}, "buildType": "https://mobyproject.org/buildkit@v1", "seed": seed},
    }));
    let config = to_json(&json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&statement)]},
    }));
    let mut layer = descriptor(IN_TOTO, &statement);
    layer["annotations"] = json!({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"});
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [layer],
    }));
    Attestation {
        config,
        statement,
        manifest,
    }
}

#[tokio::test]
async fn buildx_multi_platform_image_with_provenance_attestations() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let images = [
        platform_image(1, "amd64", None),
        platform_image(2, "arm64", None),
        platform_image(3, "arm", Some("v7")),
    ];
    let attestations: Vec<Attestation> = images
        .iter()
        .enumerate()
        .map(|(index, image)| attestation(&sha256(&image.manifest), index as u64))
        .collect();

    // Blobs first, then each manifest by digest, then the index by tag.
    for image in &images {
        push_blob_like_buildkit(&registry, name, &image.layer).await;
        push_blob_like_buildkit(&registry, name, &image.config).await;
        push_manifest_like_buildkit(&registry, name, None, OCI_MANIFEST, &image.manifest).await;
    }
    for attestation in &attestations {
        push_blob_like_buildkit(&registry, name, &attestation.statement).await;
        push_blob_like_buildkit(&registry, name, &attestation.config).await;
        push_manifest_like_buildkit(&registry, name, None, OCI_MANIFEST, &attestation.manifest)
            .await;
    }
    let mut entries: Vec<Value> = images
        .iter()
        .map(|image| {
            let mut entry = descriptor(OCI_MANIFEST, &image.manifest);
            entry["platform"] = image.platform.clone();
            entry
        })
        .collect();
    for (image, attestation) in images.iter().zip(&attestations) {
        let mut entry = descriptor(OCI_MANIFEST, &attestation.manifest);
        entry["platform"] = json!({"architecture": "unknown", "os": "unknown"});
        entry["annotations"] = json!({
            "vnd.docker.reference.digest": sha256(&image.manifest),
            "vnd.docker.reference.type": "attestation-manifest",
        });
        entries.push(entry);
    }
    let index = to_json(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}));
    push_manifest_like_buildkit(&registry, name, Some("v1"), OCI_INDEX, &index).await;

    // Pulled back as a client resolving the tag and walking the index would.
    assert_manifest_served(&registry, name, "v1", CONTAINERD_ACCEPT, OCI_INDEX, &index).await;
    let index_digest = sha256(&index);
    assert_manifest_served(
        &registry,
        name,
        &index_digest,
        CONTAINERD_ACCEPT,
        OCI_INDEX,
        &index,
    )
    .await;
    for image in &images {
        let digest = sha256(&image.manifest);
        assert_manifest_served(
            &registry,
            name,
            &digest,
            OCI_MANIFEST,
            OCI_MANIFEST,
            &image.manifest,
        )
        .await;
        assert_blob_served(&registry, name, &image.config).await;
        assert_blob_served(&registry, name, &image.layer).await;
    }
    for attestation in &attestations {
        let digest = sha256(&attestation.manifest);
        assert_manifest_served(
            &registry,
            name,
            &digest,
            CONTAINERD_ACCEPT,
            OCI_MANIFEST,
            &attestation.manifest,
        )
        .await;
        assert_blob_served(&registry, name, &attestation.statement).await;
    }
    assert_eq!(tags(&registry, name).await, ["v1"]);

    // Pushing the same build again finds every blob by HEAD and changes nothing.
    let before = registry.stored().await;
    for image in &images {
        push_blob_like_buildkit(&registry, name, &image.layer).await;
        push_blob_like_buildkit(&registry, name, &image.config).await;
    }
    let response = registry.put_manifest(name, "v1", OCI_INDEX, &index).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(registry.stored().await, before);
}

/// BuildKit's cache layers: each a blob with BuildKit's annotations.
fn cache_layers(media_type: &str) -> Vec<(Vec<u8>, Value)> {
    (0..3)
        .map(|seed| {
            let bytes = layer_bytes(100 + seed, 2000 + seed as usize * 100);
            let mut entry = descriptor(media_type, &bytes);
            entry["annotations"] = json!({
                "buildkit/createdat": "2024-05-01T12:00:00.000000000Z",
                "containerd.io/uncompressed": sha256(&layer_bytes(200 + seed, 10)),
            });
            (bytes, entry)
        })
        .collect()
}

fn cache_config(layers: &[(Vec<u8>, Value)]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .enumerate()
        .map(|(index, (bytes, _))| json!({"blob": sha256(bytes), "parent": index as i64 - 1}))
        .collect();
    to_json(
        &json!({"layers": layers, "records": [{"digest": sha256(b"record"), "results": [{"layer": 0}]}]}),
    )
}

#[tokio::test]
async fn buildkit_registry_cache_as_an_image_manifest() {
    // `--cache-to type=registry,image-manifest=true`: an OCI image manifest
    // whose config is the cache configuration.
    let registry = TestRegistry::start().await;
    let name = "acme/app-cache";
    let layers = cache_layers(OCI_LAYER);
    let config = cache_config(&layers);
    for (bytes, _) in &layers {
        push_blob_like_buildkit(&registry, name, bytes).await;
    }
    push_blob_like_buildkit(&registry, name, &config).await;
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(BUILDKIT_CACHE_CONFIG, &config),
        "layers": layers.iter().map(|(_, entry)| entry.clone()).collect::<Vec<Value>>(),
    }));
    push_manifest_like_buildkit(&registry, name, Some("buildcache"), OCI_MANIFEST, &manifest).await;

    assert_manifest_served(
        &registry,
        name,
        "buildcache",
        CONTAINERD_ACCEPT,
        OCI_MANIFEST,
        &manifest,
    )
    .await;
    assert_blob_served(&registry, name, &config).await;
    for (bytes, _) in &layers {
        assert_blob_served(&registry, name, bytes).await;
    }
    // The next build's export replaces the tag with a new cache manifest.
    let next_layers = cache_layers(OCI_LAYER)[..1].to_vec();
    let next_config = cache_config(&next_layers);
    push_blob_like_buildkit(&registry, name, &next_config).await;
    let next = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(BUILDKIT_CACHE_CONFIG, &next_config),
        "layers": [next_layers[0].1],
    }));
    push_manifest_like_buildkit(&registry, name, Some("buildcache"), OCI_MANIFEST, &next).await;
    assert_manifest_served(
        &registry,
        name,
        "buildcache",
        CONTAINERD_ACCEPT,
        OCI_MANIFEST,
        &next,
    )
    .await;
    assert_manifest_served(
        &registry,
        name,
        &sha256(&manifest),
        OCI_MANIFEST,
        OCI_MANIFEST,
        &manifest,
    )
    .await;
}

/// BuildKit's older cache format: an index whose entries are the layer blobs
/// and the cache configuration itself, not manifests.
async fn push_and_check_cache_index(index_media_type: &str, layer_media_type: &str) {
    let registry = TestRegistry::start().await;
    let name = "acme/cache";
    let layers = cache_layers(layer_media_type);
    let config = cache_config(&layers);
    for (bytes, _) in &layers {
        push_blob_like_buildkit(&registry, name, bytes).await;
    }
    push_blob_like_buildkit(&registry, name, &config).await;
    let mut entries: Vec<Value> = layers.iter().map(|(_, entry)| entry.clone()).collect();
    entries.push(descriptor(BUILDKIT_CACHE_CONFIG, &config));
    let index =
        to_json(&json!({"schemaVersion": 2, "mediaType": index_media_type, "manifests": entries}));
    push_manifest_like_buildkit(&registry, name, Some("cache"), index_media_type, &index).await;

    assert_manifest_served(
        &registry,
        name,
        "cache",
        CONTAINERD_ACCEPT,
        index_media_type,
        &index,
    )
    .await;
    assert_blob_served(&registry, name, &config).await;
    for (bytes, _) in &layers {
        assert_blob_served(&registry, name, bytes).await;
    }
    // The index holds on to the blobs it lists.
    for bytes in [&layers[0].0, &config] {
        let response = registry
            .request(
                Method::DELETE,
                &format!("/v2/{name}/blobs/{}", sha256(bytes)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(error_code(response).await, "DENIED");
    }
    // An index listing a blob the repository does not have is refused.
    let mut missing = entries.clone();
    missing.push(descriptor(layer_media_type, b"never pushed"));
    let refused =
        to_json(&json!({"schemaVersion": 2, "mediaType": index_media_type, "manifests": missing}));
    let response = registry
        .put_manifest(name, "cache", index_media_type, &refused)
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "MANIFEST_BLOB_UNKNOWN");
    assert_manifest_served(
        &registry,
        name,
        "cache",
        CONTAINERD_ACCEPT,
        index_media_type,
        &index,
    )
    .await;
}

#[tokio::test]
async fn buildkit_registry_cache_as_a_docker_manifest_list_of_blobs() {
    // `--cache-to type=registry` with BuildKit's default Docker media types.
    push_and_check_cache_index(DOCKER_LIST, DOCKER_LAYER).await;
}

#[tokio::test]
async fn buildkit_registry_cache_as_an_oci_index_of_blobs() {
    // `--cache-to type=registry,oci-mediatypes=true`.
    push_and_check_cache_index(OCI_INDEX, OCI_LAYER).await;
}

#[tokio::test]
async fn helm_chart() {
    // `helm push mychart-0.1.0.tgz oci://registry/acme/charts`.
    let registry = TestRegistry::start().await;
    let name = "acme/charts/mychart";
    let config = to_json(&json!({
        "name": "mychart",
        "version": "0.1.0",
        "description": "A Helm chart for Kubernetes",
        "apiVersion": "v2",
        "appVersion": "1.16.0",
        "type": "application",
    }));
    let chart = layer_bytes(7, 3500);
    push_blob_like_buildkit(&registry, name, &config).await;
    push_blob_like_buildkit(&registry, name, &chart).await;
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "config": descriptor(HELM_CONFIG, &config),
        "layers": [descriptor(HELM_CHART, &chart)],
        "annotations": {
            "org.opencontainers.image.created": "2024-05-01T12:00:00Z",
            "org.opencontainers.image.description": "A Helm chart for Kubernetes",
            "org.opencontainers.image.title": "mychart",
            "org.opencontainers.image.version": "0.1.0",
        },
    }));
    push_manifest_like_buildkit(&registry, name, Some("0.1.0"), OCI_MANIFEST, &manifest).await;

    // `helm pull` asks for the OCI manifest, then the chart layer.
    assert_manifest_served(
        &registry,
        name,
        "0.1.0",
        OCI_MANIFEST,
        OCI_MANIFEST,
        &manifest,
    )
    .await;
    assert_blob_served(&registry, name, &config).await;
    assert_blob_served(&registry, name, &chart).await;
    assert_eq!(tags(&registry, name).await, ["0.1.0"]);
}

/// The empty config of OCI 1.1 artifacts: `{}`.
const EMPTY_CONFIG: &[u8] = b"{}";

fn artifact(
    artifact_type: &str,
    subject: (&str, usize),
    payload: &[u8],
    annotations: Value,
) -> Vec<u8> {
    to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": sha256(EMPTY_CONFIG), "size": 2},
        "layers": [descriptor(artifact_type, payload)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
        "annotations": annotations,
    }))
}

/// `?artifactType=` with the value percent-encoded as clients do (oras uses
/// Go's `url.Values`): a bare `+` in a query means a space.
fn artifact_type_filter(artifact_type: &str) -> String {
    let encoded = artifact_type
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('+', "%2B");
    format!("?artifactType={encoded}")
}

async fn referrers(
    registry: &TestRegistry,
    name: &str,
    subject: &str,
    query: &str,
) -> (Vec<Value>, String) {
    let response = registry
        .get(&format!("/v2/{name}/referrers/{subject}{query}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), OCI_INDEX);
    let filters = header(&response, "oci-filters-applied");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], OCI_INDEX);
    let manifests = body["manifests"]
        .as_array()
        .expect("`manifests` is a list, even when empty")
        .clone();
    (manifests, filters)
}

#[tokio::test]
async fn oci_artifacts_with_a_subject_and_the_referrers_api() {
    // `oras attach` of an SBOM and a signature to an image.
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (image, image_digest) = registry.push_image(name, "v1", b"the image layer").await;
    let subject = (image_digest.as_str(), image.len());
    push_blob_like_buildkit(&registry, name, EMPTY_CONFIG).await;

    let sbom_type = "application/spdx+json";
    let sbom = br#"{"spdxVersion":"SPDX-2.3","name":"acme/app"}"#;
    let sbom_annotations = json!({"org.opencontainers.image.created": "2024-05-01T12:00:00Z"});
    let sbom_manifest = artifact(sbom_type, subject, sbom, sbom_annotations.clone());
    push_blob_like_buildkit(&registry, name, sbom).await;
    let (sbom_digest, oci_subject) =
        push_manifest_like_buildkit(&registry, name, None, OCI_MANIFEST, &sbom_manifest).await;
    assert_eq!(
        oci_subject, image_digest,
        "the PUT of a manifest with a subject names it in OCI-Subject"
    );

    let signature_type = "application/vnd.cncf.notary.signature";
    let signature = b"a signature envelope";
    let signature_annotations = json!({"io.cncf.notary.x509chain.thumbprint#S256": "[\"abc\"]"});
    let signature_manifest = artifact(
        signature_type,
        subject,
        signature,
        signature_annotations.clone(),
    );
    push_blob_like_buildkit(&registry, name, signature).await;
    let (signature_digest, oci_subject) =
        push_manifest_like_buildkit(&registry, name, None, OCI_MANIFEST, &signature_manifest).await;
    assert_eq!(oci_subject, image_digest);

    // An image manifest without artifactType is listed with its config's type.
    let config_type = "application/vnd.example.attestation.config.v1+json";
    let attestation_config = br#"{"kind":"attestation"}"#;
    let attestation_payload = b"attestation payload";
    push_blob_like_buildkit(&registry, name, attestation_config).await;
    push_blob_like_buildkit(&registry, name, attestation_payload).await;
    let plain = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, attestation_config),
        "layers": [descriptor("application/octet-stream", attestation_payload)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image_digest, "size": image.len()},
    }));
    let (plain_digest, _) =
        push_manifest_like_buildkit(&registry, name, None, OCI_MANIFEST, &plain).await;

    let (listed, filters) = referrers(&registry, name, &image_digest, "").await;
    assert_eq!(filters, "", "no filter was asked for");
    let by_digest: BTreeMap<String, Value> = listed
        .iter()
        .map(|entry| (entry["digest"].as_str().unwrap().to_owned(), entry.clone()))
        .collect();
    assert_eq!(by_digest.len(), 3, "{listed:?}");
    let expected = [
        (
            &sbom_digest,
            &sbom_manifest,
            sbom_type,
            Some(&sbom_annotations),
        ),
        (
            &signature_digest,
            &signature_manifest,
            signature_type,
            Some(&signature_annotations),
        ),
        (&plain_digest, &plain, config_type, None),
    ];
    for (digest, manifest, artifact_type, annotations) in expected {
        let entry = &by_digest[digest.as_str()];
        assert_eq!(entry["mediaType"], OCI_MANIFEST);
        assert_eq!(entry["size"], manifest.len());
        assert_eq!(entry["artifactType"], artifact_type);
        match annotations {
            Some(annotations) => assert_eq!(&entry["annotations"], annotations),
            None => assert!(entry
                .get("annotations")
                .is_none_or(|value| value.as_object().is_some_and(|map| map.is_empty()))),
        }
        assert_manifest_served(
            &registry,
            name,
            digest,
            OCI_MANIFEST,
            OCI_MANIFEST,
            manifest,
        )
        .await;
    }

    let (listed, filters) = referrers(
        &registry,
        name,
        &image_digest,
        &artifact_type_filter(sbom_type),
    )
    .await;
    assert_eq!(filters, "artifactType");
    let digests: Vec<&str> = listed
        .iter()
        .map(|entry| entry["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [sbom_digest.as_str()]);
    let (listed, _) = referrers(
        &registry,
        name,
        &image_digest,
        &artifact_type_filter(config_type),
    )
    .await;
    let digests: Vec<&str> = listed
        .iter()
        .map(|entry| entry["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [plain_digest.as_str()]);
    let (listed, filters) = referrers(
        &registry,
        name,
        &image_digest,
        &artifact_type_filter("application/vnd.unrelated+json"),
    )
    .await;
    assert_eq!(filters, "artifactType");
    assert!(listed.is_empty(), "{listed:?}");

    // Something with no referrers has an empty list, not a 404.
    let (listed, _) = referrers(&registry, name, &sbom_digest, "").await;
    assert!(listed.is_empty());
    // Referrers are per repository.
    registry
        .push_image("acme/other", "v1", b"the image layer")
        .await;
    let (listed, _) = referrers(&registry, "acme/other", &image_digest, "").await;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn referrer_pushed_before_its_subject() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    // The subject's blobs are there, its manifest not yet.
    let layer = b"layer of a manifest pushed later";
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer_digest = push_blob_like_buildkit(&registry, name, layer).await;
    let config_digest = push_blob_like_buildkit(&registry, name, config).await;
    let subject = image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
    );
    let subject_digest = sha256(&subject);

    push_blob_like_buildkit(&registry, name, EMPTY_CONFIG).await;
    let payload = b"signed early";
    push_blob_like_buildkit(&registry, name, payload).await;
    let referrer = artifact(
        "application/vnd.example.signature",
        (&subject_digest, subject.len()),
        payload,
        json!({"a": "b"}),
    );
    let (referrer_digest, oci_subject) =
        push_manifest_like_buildkit(&registry, name, None, OCI_MANIFEST, &referrer).await;
    assert_eq!(oci_subject, subject_digest);

    let (listed, _) = referrers(&registry, name, &subject_digest, "").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], referrer_digest);

    push_manifest_like_buildkit(&registry, name, Some("v1"), OCI_MANIFEST, &subject).await;
    let (listed, _) = referrers(&registry, name, &subject_digest, "").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], referrer_digest);
    assert_eq!(
        listed[0]["artifactType"],
        "application/vnd.example.signature"
    );
    assert_manifest_served(
        &registry,
        name,
        &referrer_digest,
        OCI_MANIFEST,
        OCI_MANIFEST,
        &referrer,
    )
    .await;
    assert_manifest_served(&registry, name, "v1", OCI_MANIFEST, OCI_MANIFEST, &subject).await;
}

#[tokio::test]
async fn cosign_signature_by_tag() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (_, image_digest) = registry.push_image(name, "v1", b"the signed image").await;
    let signature_tag = format!("{}.sig", image_digest.replace(':', "-"));

    // `cosign sign` looks for an existing signature manifest first.
    let response = registry
        .request(
            Method::HEAD,
            &format!("/v2/{name}/manifests/{signature_tag}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let payload = to_json(&json!({
        "critical": {
            "identity": {"docker-reference": format!("registry.example/{name}")},
            "image": {"docker-manifest-digest": image_digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }));
    let config = to_json(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&payload)]},
        "config": {},
    }));
    push_blob_like_buildkit(&registry, name, &payload).await;
    push_blob_like_buildkit(&registry, name, &config).await;
    let mut layer = descriptor(COSIGN_SIMPLE_SIGNING, &payload);
    layer["annotations"] = json!({"dev.cosignproject.cosign/signature": "MEUCIQDx5jIJrHbcUSRtOzTbZmCMBVsu7Sl3A0UMzYTLnvE1hAIgZ2rWxGCx8w=="});
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [layer],
    }));
    push_manifest_like_buildkit(
        &registry,
        name,
        Some(&signature_tag),
        OCI_MANIFEST,
        &manifest,
    )
    .await;

    // `cosign verify` fetches the signature manifest by tag, then the payload.
    assert_manifest_served(
        &registry,
        name,
        &signature_tag,
        OCI_MANIFEST,
        OCI_MANIFEST,
        &manifest,
    )
    .await;
    assert_blob_served(&registry, name, &payload).await;
    let mut expected = vec![signature_tag.clone(), "v1".to_owned()];
    expected.sort();
    assert_eq!(tags(&registry, name).await, expected);
}

#[tokio::test]
async fn docker_schema2_image_and_manifest_list_keep_their_types() {
    // What `docker push` of a multi-platform image built with the classic
    // builder and `docker manifest push` send.
    let registry = TestRegistry::start().await;
    let name = "library/busybox";
    let mut children = Vec::new();
    for (seed, architecture) in [(11, "amd64"), (12, "arm64")] {
        let layer = layer_bytes(seed, 5000);
        let config = to_json(&json!({
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_bytes(seed + 50, 10))]},
        }));
        push_blob_like_buildkit(&registry, name, &layer).await;
        push_blob_like_buildkit(&registry, name, &config).await;
        let manifest = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(DOCKER_CONFIG, &config),
            "layers": [descriptor(DOCKER_LAYER, &layer)],
        }));
        push_manifest_like_buildkit(&registry, name, None, DOCKER_MANIFEST, &manifest).await;
        children.push((architecture, manifest));
    }
    let entries: Vec<Value> = children
        .iter()
        .map(|(architecture, manifest)| {
            let mut entry = descriptor(DOCKER_MANIFEST, manifest);
            entry["platform"] = json!({"architecture": architecture, "os": "linux"});
            entry
        })
        .collect();
    let list =
        to_json(&json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}));
    push_manifest_like_buildkit(&registry, name, Some("latest"), DOCKER_LIST, &list).await;

    let docker_accept = format!("{DOCKER_MANIFEST}, {DOCKER_LIST}");
    assert_manifest_served(
        &registry,
        name,
        "latest",
        &docker_accept,
        DOCKER_LIST,
        &list,
    )
    .await;
    assert_manifest_served(
        &registry,
        name,
        "latest",
        CONTAINERD_ACCEPT,
        DOCKER_LIST,
        &list,
    )
    .await;
    let response = registry.get(&format!("/v2/{name}/manifests/latest")).await;
    assert_eq!(
        header(&response, "content-type"),
        DOCKER_LIST,
        "no Accept gets the stored type"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), list.as_slice());
    for (_, manifest) in &children {
        assert_manifest_served(
            &registry,
            name,
            &sha256(manifest),
            &docker_accept,
            DOCKER_MANIFEST,
            manifest,
        )
        .await;
    }
    // A Docker image manifest pushed by tag keeps its type too.
    push_manifest_like_buildkit(
        &registry,
        name,
        Some("amd64"),
        DOCKER_MANIFEST,
        &children[0].1,
    )
    .await;
    assert_manifest_served(
        &registry,
        name,
        "amd64",
        &docker_accept,
        DOCKER_MANIFEST,
        &children[0].1,
    )
    .await;
    let response = registry
        .request(Method::HEAD, &format!("/v2/{name}/manifests/amd64"))
        .header("accept", &docker_accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), DOCKER_MANIFEST);
    assert_eq!(
        header(&response, "docker-content-digest"),
        sha256(&children[0].1)
    );
    assert_eq!(
        header(&response, "content-length"),
        children[0].1.len().to_string()
    );
}

#[tokio::test]
async fn cross_repository_mount() {
    let registry = TestRegistry::start().await;
    let base_layer = layer_bytes(21, 3000);
    let private_layer = layer_bytes(22, 3000);
    let base_digest = registry.push_blob("acme/base", &base_layer).await;
    let private_digest = registry.push_blob("acme/private", &private_layer).await;
    let before = registry.stored().await;

    // `docker push` of an image built FROM acme/base mounts its layers.
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/acme/derived/blobs/uploads/?mount={base_digest}&from=acme/base"),
        )
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "location"),
        format!("/v2/acme/derived/blobs/{base_digest}")
    );
    assert_eq!(header(&response, "docker-content-digest"), base_digest);
    assert_blob_served(&registry, "acme/derived", &base_layer).await;
    let after = registry.stored().await;
    assert_eq!(after.blob_links, before.blob_links + 1);
    assert_eq!(
        after.stored_blobs, before.stored_blobs,
        "a mount copies no bytes"
    );

    // Naming a repository that lacks the blob gives an upload session instead,
    // even though another repository has it.
    let response = registry
        .request(
            Method::POST,
            &format!("/v2/acme/derived/blobs/uploads/?mount={private_digest}&from=acme/base"),
        )
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = header(&response, "location");
    assert!(
        location.starts_with("/v2/acme/derived/blobs/uploads/"),
        "{location}"
    );
    let response = registry
        .get(&format!("/v2/acme/derived/blobs/{private_digest}"))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a failed mount must not expose the blob"
    );
    assert_eq!(registry.stored().await.uploads, after.uploads + 1);

    // The client then uploads the blob into that session.
    let response = registry
        .request(Method::PUT, &format!("{location}?digest={private_digest}"))
        .body(private_layer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_blob_served(&registry, "acme/derived", &private_layer).await;
    let last = registry.stored().await;
    assert_eq!(last.uploads, after.uploads);
    assert_eq!(
        last.stored_blobs, after.stored_blobs,
        "the blob was already stored once"
    );
}

async fn delete(registry: &TestRegistry, path: &str) -> reqwest::Response {
    registry.request(Method::DELETE, path).send().await.unwrap()
}

#[tokio::test]
async fn deleting_tags_manifests_and_blobs() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let layer = b"layer of the deleted image";
    let (manifest, digest) = registry.push_image(name, "v1", layer).await;
    let response = registry
        .put_manifest(name, "v2", OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // A tag: gone, while the manifest stays reachable by digest.
    let response = delete(&registry, &format!("/v2/{name}/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry.get(&format!("/v2/{name}/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
    assert_eq!(tags(&registry, name).await, ["v2"]);
    assert_manifest_served(
        &registry,
        name,
        &digest,
        OCI_MANIFEST,
        OCI_MANIFEST,
        &manifest,
    )
    .await;

    // A blob the manifest refers to cannot go.
    let layer_digest = sha256(layer);
    let response = delete(&registry, &format!("/v2/{name}/blobs/{layer_digest}")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "DENIED");
    assert_blob_served(&registry, name, layer).await;

    // A manifest listed by an index cannot go; the index can.
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"}}],
    }));
    let response = registry
        .put_manifest(name, "multi", OCI_INDEX, &index)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = delete(&registry, &format!("/v2/{name}/manifests/{digest}")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "DENIED");
    assert_manifest_served(&registry, name, "v2", OCI_MANIFEST, OCI_MANIFEST, &manifest).await;
    let response = delete(
        &registry,
        &format!("/v2/{name}/manifests/{}", sha256(&index)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry.get(&format!("/v2/{name}/manifests/multi")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A manifest by digest: gone, and the tags naming it with it.
    let response = delete(&registry, &format!("/v2/{name}/manifests/{digest}")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for reference in [digest.as_str(), "v2"] {
        let response = registry
            .get(&format!("/v2/{name}/manifests/{reference}"))
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{reference}");
        assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
    }
    assert!(tags(&registry, name).await.is_empty());
    let response = delete(&registry, &format!("/v2/{name}/manifests/{digest}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Now nothing refers to the layer, and it can go.
    let response = delete(&registry, &format!("/v2/{name}/blobs/{layer_digest}")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for method in [Method::GET, Method::HEAD] {
        let response = registry
            .request(method.clone(), &format!("/v2/{name}/blobs/{layer_digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
    }
    let response = delete(&registry, &format!("/v2/{name}/blobs/{layer_digest}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");

    // An unreferenced blob goes at once.
    let loose = registry.push_blob(name, b"a blob no manifest names").await;
    let response = delete(&registry, &format!("/v2/{name}/blobs/{loose}")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry.get(&format!("/v2/{name}/blobs/{loose}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn deleting_a_blob_in_one_repository_leaves_it_in_another() {
    let registry = TestRegistry::start().await;
    let bytes = b"a blob two repositories hold";
    let digest = registry.push_blob("acme/one", bytes).await;
    registry.push_blob("acme/two", bytes).await;
    let response = delete(&registry, &format!("/v2/acme/one/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = registry.get(&format!("/v2/acme/one/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_blob_served(&registry, "acme/two", bytes).await;
}
