//! Manifest content negotiation: what old clients that know only Docker media
//! types, and new ones that know only OCI types, get for a tag, and that a
//! request by digest always gets the stored bytes.

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::common::{
    error_code, header, sha256, TestRegistry, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST,
    DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};

/// What `docker manifest inspect` and `docker pull` of Docker releases before
/// OCI support send: only Docker types, each in its own Accept header.
const OLD_DOCKER_ACCEPT: [&str; 4] = [
    DOCKER_MANIFEST,
    DOCKER_LIST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
];

/// What current Docker, containerd and BuildKit send.
const CURRENT_ACCEPT: [&str; 4] = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX];

/// A client that knows only the OCI types.
const OCI_ONLY_ACCEPT: [&str; 2] = [OCI_MANIFEST, OCI_INDEX];

async fn get_with(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    accept: &[&str],
) -> Response {
    let mut request = registry.request(method, path);
    for media_type in accept {
        request = request.header("accept", *media_type);
    }
    request.send().await.unwrap()
}

/// A GET's content type, digest header and body, after checking that the digest
/// header and the length describe the body.
async fn fetch(registry: &TestRegistry, path: &str, accept: &[&str]) -> (String, String, Vec<u8>) {
    let response = get_with(registry, Method::GET, path, accept).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    let content_type = header(&response, "content-type");
    let digest = header(&response, "docker-content-digest");
    let length = header(&response, "content-length");
    let body = response.bytes().await.unwrap().to_vec();
    assert_eq!(
        digest,
        sha256(&body),
        "Docker-Content-Digest of GET {path} is the digest of its body"
    );
    assert_eq!(length, body.len().to_string());
    (content_type, digest, body)
}

/// A HEAD's content type, digest header and length.
async fn head(registry: &TestRegistry, path: &str, accept: &[&str]) -> (String, String, String) {
    let response = get_with(registry, Method::HEAD, path, accept).await;
    assert_eq!(response.status(), StatusCode::OK, "HEAD {path}");
    let found = (
        header(&response, "content-type"),
        header(&response, "docker-content-digest"),
        header(&response, "content-length"),
    );
    assert!(response.bytes().await.unwrap().is_empty());
    found
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// A platform image: config, one layer, and the OCI manifest naming them.
struct Image {
    platform: Value,
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

async fn push_oci_image(registry: &TestRegistry, name: &str, architecture: &str) -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let layer = format!("layer for {architecture}").into_bytes();
    registry.push_blob(name, &config).await;
    registry.push_blob(name, &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let response = registry
        .put_manifest(name, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    Image {
        platform: json!({"architecture": architecture, "os": "linux"}),
        config,
        layer,
        manifest,
    }
}

/// A buildx provenance attestation for `image`, which has no Docker form.
async fn push_attestation(registry: &TestRegistry, name: &str, image: &Image) -> Vec<u8> {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [{"digest": {"sha256": sha256(&image.manifest).trim_start_matches("sha256:")}}],
    }))
    .unwrap();
    let statement = statement.as_slice();
    let config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    registry.push_blob(name, statement).await;
    registry.push_blob(name, config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": sha256(statement), "size": statement.len(),
            "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    }))
    .unwrap();
    let response = registry
        .put_manifest(name, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    manifest
}

/// Pushes two platform images, an attestation for the first, and an OCI index
/// of the three under `tag`.
async fn push_oci_index(registry: &TestRegistry, name: &str, tag: &str) -> (Vec<Image>, Vec<u8>) {
    let images = vec![
        push_oci_image(registry, name, "amd64").await,
        push_oci_image(registry, name, "arm64").await,
    ];
    let attestation = push_attestation(registry, name, &images[0]).await;
    let mut entries: Vec<Value> = images
        .iter()
        .map(|image| {
            json!({"mediaType": OCI_MANIFEST, "digest": sha256(&image.manifest), "size": image.manifest.len(),
                "platform": image.platform})
        })
        .collect();
    entries.push(json!({
        "mediaType": OCI_MANIFEST, "digest": sha256(&attestation), "size": attestation.len(),
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {"vnd.docker.reference.digest": sha256(&images[0].manifest),
            "vnd.docker.reference.type": "attestation-manifest"},
    }));
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
    )
    .unwrap();
    let response = registry.put_manifest(name, tag, OCI_INDEX, &index).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    (images, index)
}

/// Checks that `docker` is the Docker schema 2 form of the OCI manifest `oci`:
/// the same blobs by digest and size, with Docker media types.
fn assert_docker_form_of(docker: &Value, oci: &Value) {
    assert_eq!(docker["schemaVersion"], 2);
    assert_eq!(docker["mediaType"], DOCKER_MANIFEST);
    assert_eq!(docker["config"]["mediaType"], DOCKER_CONFIG);
    assert_eq!(docker["config"]["digest"], oci["config"]["digest"]);
    assert_eq!(docker["config"]["size"], oci["config"]["size"]);
    let docker_layers = docker["layers"].as_array().unwrap();
    let oci_layers = oci["layers"].as_array().unwrap();
    assert_eq!(docker_layers.len(), oci_layers.len());
    for (docker_layer, oci_layer) in docker_layers.iter().zip(oci_layers) {
        assert_eq!(docker_layer["mediaType"], DOCKER_LAYER);
        assert_eq!(docker_layer["digest"], oci_layer["digest"]);
        assert_eq!(docker_layer["size"], oci_layer["size"]);
    }
}

#[tokio::test]
async fn old_docker_client_gets_a_docker_list_for_an_oci_index() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (images, index) = push_oci_index(&registry, name, "v1").await;
    let path = format!("/v2/{name}/manifests/v1");

    let (content_type, digest, body) = fetch(&registry, &path, &OLD_DOCKER_ACCEPT).await;
    assert_eq!(content_type, DOCKER_LIST);
    let list = parse(&body);
    assert_eq!(list["schemaVersion"], 2);
    assert_eq!(list["mediaType"], DOCKER_LIST);
    let entries = list["manifests"].as_array().unwrap();
    let platforms: Vec<&Value> = entries.iter().map(|entry| &entry["platform"]).collect();
    let expected: Vec<&Value> = images.iter().map(|image| &image.platform).collect();
    assert_eq!(
        platforms, expected,
        "the platform images, in order; the attestation has no Docker form"
    );

    // Every entry leads, by digest, to the Docker form of the same image.
    for (entry, image) in entries.iter().zip(&images) {
        assert_eq!(entry["mediaType"], DOCKER_MANIFEST);
        let child_path = format!("/v2/{name}/manifests/{}", entry["digest"].as_str().unwrap());
        let (child_type, child_digest, child) =
            fetch(&registry, &child_path, &OLD_DOCKER_ACCEPT).await;
        assert_eq!(child_type, DOCKER_MANIFEST);
        assert_eq!(child_digest, entry["digest"].as_str().unwrap());
        assert_eq!(entry["size"], child.len());
        assert_docker_form_of(&parse(&child), &parse(&image.manifest));
    }

    // HEAD agrees with GET, and a second GET gives the very same bytes.
    let (head_type, head_digest, head_length) = head(&registry, &path, &OLD_DOCKER_ACCEPT).await;
    assert_eq!(
        (head_type.as_str(), head_digest.as_str()),
        (DOCKER_LIST, digest.as_str())
    );
    assert_eq!(head_length, body.len().to_string());
    let stored_after_first = registry.stored().await;
    let (_, again_digest, again) = fetch(&registry, &path, &OLD_DOCKER_ACCEPT).await;
    assert_eq!((again_digest, again), (digest, body));
    assert_eq!(
        registry.stored().await,
        stored_after_first,
        "conversions are made once"
    );

    // The stored index is what everyone else gets.
    let by_digest = format!("/v2/{name}/manifests/{}", sha256(&index));
    for accept in [
        &OLD_DOCKER_ACCEPT[..],
        &CURRENT_ACCEPT[..],
        &OCI_ONLY_ACCEPT[..],
        &["*/*"][..],
        &[][..],
    ] {
        let (content_type, _, body) = fetch(&registry, &by_digest, accept).await;
        assert_eq!(
            (content_type.as_str(), &body),
            (OCI_INDEX, &index),
            "by digest with Accept {accept:?}"
        );
    }
    for accept in [
        &CURRENT_ACCEPT[..],
        &OCI_ONLY_ACCEPT[..],
        &["*/*"][..],
        &[][..],
    ] {
        let (content_type, _, body) = fetch(&registry, &path, accept).await;
        assert_eq!(
            (content_type.as_str(), &body),
            (OCI_INDEX, &index),
            "by tag with Accept {accept:?}"
        );
    }
    // The stored children are unchanged by digest.
    for image in &images {
        let child_path = format!("/v2/{name}/manifests/{}", sha256(&image.manifest));
        let (content_type, _, body) = fetch(&registry, &child_path, &OLD_DOCKER_ACCEPT).await;
        assert_eq!(
            (content_type.as_str(), &body),
            (OCI_MANIFEST, &image.manifest)
        );
    }
}

#[tokio::test]
async fn docker_20_10_gets_a_docker_list_for_an_oci_index() {
    // Docker 20.10 lists the OCI index type but not the OCI manifest type.
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    push_oci_index(&registry, name, "v1").await;
    let accept = [
        DOCKER_MANIFEST,
        DOCKER_LIST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ];
    let (content_type, _, body) =
        fetch(&registry, &format!("/v2/{name}/manifests/v1"), &accept).await;
    assert_eq!(content_type, DOCKER_LIST);
    assert_eq!(parse(&body)["manifests"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn accept_header_forms() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (_, index) = push_oci_index(&registry, name, "v1").await;
    let path = format!("/v2/{name}/manifests/v1");
    let cases: Vec<(String, &str)> = vec![
        // One header listing the types, as containerd sends them.
        (format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"), DOCKER_LIST),
        // An explicit refusal of the stored type.
        (
            format!("{OCI_INDEX};q=0, {DOCKER_MANIFEST}, {DOCKER_LIST}"),
            DOCKER_LIST,
        ),
        // Media types are case-insensitive and may carry parameters.
        (
            "Application/VND.OCI.Image.Index.v1+JSON; charset=utf-8".into(),
            OCI_INDEX,
        ),
        (
            format!("{OCI_MANIFEST};q=0.9, {OCI_INDEX};q=0.8, {DOCKER_LIST};q=0.5"),
            OCI_INDEX,
        ),
        ("application/*".into(), OCI_INDEX),
    ];
    for (accept, expected) in cases {
        let (content_type, _, body) = fetch(&registry, &path, &[accept.as_str()]).await;
        assert_eq!(content_type, expected, "Accept: {accept}");
        if expected == OCI_INDEX {
            assert_eq!(body, index, "Accept: {accept}");
        }
    }
}

#[tokio::test]
async fn old_docker_client_gets_schema2_for_an_oci_image_manifest() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (manifest, stored_digest) = registry.push_image(name, "v1", b"the only layer").await;
    let path = format!("/v2/{name}/manifests/v1");

    let (content_type, digest, body) = fetch(&registry, &path, &OLD_DOCKER_ACCEPT).await;
    assert_eq!(content_type, DOCKER_MANIFEST);
    assert_ne!(digest, stored_digest);
    assert_docker_form_of(&parse(&body), &parse(&manifest));
    let (head_type, head_digest, head_length) = head(&registry, &path, &OLD_DOCKER_ACCEPT).await;
    assert_eq!(
        (head_type.as_str(), head_digest.as_str()),
        (DOCKER_MANIFEST, digest.as_str())
    );
    assert_eq!(head_length, body.len().to_string());

    for accept in [&CURRENT_ACCEPT[..], &OCI_ONLY_ACCEPT[..], &[][..]] {
        let (content_type, _, body) = fetch(&registry, &path, accept).await;
        assert_eq!(
            (content_type.as_str(), &body),
            (OCI_MANIFEST, &manifest),
            "Accept {accept:?}"
        );
    }
    let (content_type, _, body) = fetch(
        &registry,
        &format!("/v2/{name}/manifests/{stored_digest}"),
        &OLD_DOCKER_ACCEPT,
    )
    .await;
    assert_eq!(
        (content_type.as_str(), &body),
        (OCI_MANIFEST, &manifest),
        "by digest: the stored bytes"
    );
}

#[tokio::test]
async fn digest_handed_to_an_old_client_can_be_pulled_by_digest() {
    // `docker pull acme/app:v1` records the digest it was served as the
    // image's RepoDigest; `docker pull acme/app@<that digest>` (or a
    // deployment pinned to it) must find the same manifest.
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    registry.push_image(name, "single", b"the only layer").await;
    push_oci_index(&registry, name, "multi").await;
    let mut unknown = Vec::new();
    for tag in ["single", "multi"] {
        let (content_type, digest, body) = fetch(
            &registry,
            &format!("/v2/{name}/manifests/{tag}"),
            &OLD_DOCKER_ACCEPT,
        )
        .await;
        let response = get_with(
            &registry,
            Method::GET,
            &format!("/v2/{name}/manifests/{digest}"),
            &OLD_DOCKER_ACCEPT,
        )
        .await;
        if response.status() != StatusCode::OK {
            unknown.push(format!(
                "{tag}: the {content_type} served by tag has digest {digest}, but GET by that digest is {}",
                response.status()
            ));
            continue;
        }
        assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[tokio::test]
async fn what_has_no_docker_form_is_served_as_stored() {
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (image, image_digest) = registry.push_image(name, "v1", b"image layer").await;
    let empty = registry.push_blob(name, b"{}").await;
    let payload = registry.push_blob(name, b"sbom").await;
    let artifact_manifest = |with_subject: bool| {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/spdx+json", "digest": payload, "size": 4}],
        });
        if with_subject {
            manifest["subject"] =
                json!({"mediaType": OCI_MANIFEST, "digest": image_digest, "size": image.len()});
        }
        serde_json::to_vec(&manifest).unwrap()
    };
    let cache_config = br#"{"layers":[],"records":[]}"#;
    let cache_config_digest = registry.push_blob(name, cache_config).await;
    let layer_digest = sha256(b"image layer");
    let manifest_with = |config_type: &str, config: (&str, usize), layer_type: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": config.0, "size": config.1},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": 11}],
        }))
        .unwrap()
    };
    let image_config = parse(&image)["config"].clone();
    let image_config = (
        image_config["digest"].as_str().unwrap().to_owned(),
        image_config["size"].as_u64().unwrap() as usize,
    );
    let cases = [
        ("artifact", artifact_manifest(false)),
        ("referrer", artifact_manifest(true)),
        (
            "buildkit-cache",
            manifest_with(
                "application/vnd.buildkit.cacheconfig.v0",
                (&cache_config_digest, cache_config.len()),
                OCI_LAYER,
            ),
        ),
        (
            "zstd",
            manifest_with(
                OCI_CONFIG,
                (&image_config.0, image_config.1),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        ),
    ];
    for (tag, manifest) in &cases {
        let response = registry
            .put_manifest(name, tag, OCI_MANIFEST, manifest)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{tag}: {}",
            response.text().await.unwrap()
        );
    }
    for (tag, manifest) in &cases {
        let (content_type, _, body) = fetch(
            &registry,
            &format!("/v2/{name}/manifests/{tag}"),
            &OLD_DOCKER_ACCEPT,
        )
        .await;
        assert_eq!(
            (content_type.as_str(), &body),
            (OCI_MANIFEST, manifest),
            "{tag}"
        );
    }
    // An index that is an artifact, or lists only what has no Docker form,
    // stays as stored too.
    let artifact_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&cases[0].1), "size": cases[0].1.len()}],
    }))
    .unwrap();
    let cache_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": cache_config_digest,
            "size": cache_config.len()}],
    }))
    .unwrap();
    for (tag, index) in [("bundle", &artifact_index), ("cache", &cache_index)] {
        let response = registry.put_manifest(name, tag, OCI_INDEX, index).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{tag}: {}",
            response.text().await.unwrap()
        );
        let (content_type, _, body) = fetch(
            &registry,
            &format!("/v2/{name}/manifests/{tag}"),
            &OLD_DOCKER_ACCEPT,
        )
        .await;
        assert_eq!((content_type.as_str(), &body), (OCI_INDEX, index), "{tag}");
    }
}

/// Pushes Docker schema 2 images for two platforms and a Docker manifest list
/// of them under `tag`.
async fn push_docker_list(
    registry: &TestRegistry,
    name: &str,
    tag: &str,
) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for architecture in ["amd64", "arm64"] {
        let config = serde_json::to_vec(&json!({"architecture": architecture, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}}))
        .unwrap();
        let layer = format!("docker layer for {architecture}").into_bytes();
        registry.push_blob(name, &config).await;
        registry.push_blob(name, &layer).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": DOCKER_LAYER, "digest": sha256(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let response = registry
            .put_manifest(name, &sha256(&manifest), DOCKER_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        entries.push(json!({"mediaType": DOCKER_MANIFEST, "digest": sha256(&manifest), "size": manifest.len(),
            "platform": {"architecture": architecture, "os": "linux"}}));
        children.push(manifest);
    }
    let list = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}),
    )
    .unwrap();
    let response = registry.put_manifest(name, tag, DOCKER_LIST, &list).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    (children, list)
}

#[tokio::test]
async fn oci_only_client_gets_an_oci_index_for_a_docker_list() {
    let registry = TestRegistry::start().await;
    let name = "acme/legacy";
    let (children, list) = push_docker_list(&registry, name, "v1").await;
    let path = format!("/v2/{name}/manifests/v1");

    let (content_type, digest, body) = fetch(&registry, &path, &OCI_ONLY_ACCEPT).await;
    assert_eq!(content_type, OCI_INDEX);
    let index = parse(&body);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let stored = parse(&list);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), children.len());
    for (entry, stored_entry) in entries.iter().zip(stored["manifests"].as_array().unwrap()) {
        assert_eq!(entry["digest"], stored_entry["digest"]);
        assert_eq!(entry["size"], stored_entry["size"]);
        assert_eq!(entry["platform"], stored_entry["platform"]);
        // Each entry's media type is what a GET by its digest serves.
        let child_path = format!("/v2/{name}/manifests/{}", entry["digest"].as_str().unwrap());
        let (child_type, _, _) = fetch(&registry, &child_path, &OCI_ONLY_ACCEPT).await;
        assert_eq!(entry["mediaType"], child_type.as_str());
    }
    let (head_type, head_digest, _) = head(&registry, &path, &OCI_ONLY_ACCEPT).await;
    assert_eq!(
        (head_type.as_str(), head_digest.as_str()),
        (OCI_INDEX, digest.as_str())
    );

    // Clients that accept Docker types get the stored list; by digest everyone does.
    for accept in [&CURRENT_ACCEPT[..], &OLD_DOCKER_ACCEPT[..], &[][..]] {
        let (content_type, _, body) = fetch(&registry, &path, accept).await;
        assert_eq!(
            (content_type.as_str(), &body),
            (DOCKER_LIST, &list),
            "Accept {accept:?}"
        );
    }
    let (content_type, _, body) = fetch(
        &registry,
        &format!("/v2/{name}/manifests/{}", sha256(&list)),
        &OCI_ONLY_ACCEPT,
    )
    .await;
    assert_eq!((content_type.as_str(), &body), (DOCKER_LIST, &list));

    // A Docker image manifest by tag becomes an OCI manifest of the same blobs.
    let response = registry
        .put_manifest(name, "single", DOCKER_MANIFEST, &children[0])
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let (content_type, _, body) = fetch(
        &registry,
        &format!("/v2/{name}/manifests/single"),
        &OCI_ONLY_ACCEPT,
    )
    .await;
    assert_eq!(content_type, OCI_MANIFEST);
    let converted = parse(&body);
    let original = parse(&children[0]);
    assert_eq!(converted["mediaType"], OCI_MANIFEST);
    assert_eq!(converted["config"]["mediaType"], OCI_CONFIG);
    assert_eq!(converted["config"]["digest"], original["config"]["digest"]);
    assert_eq!(converted["layers"][0]["mediaType"], OCI_LAYER);
    assert_eq!(
        converted["layers"][0]["digest"],
        original["layers"][0]["digest"]
    );
}

#[tokio::test]
async fn deleting_what_was_pushed_frees_its_blobs_after_an_old_client_pulled() {
    // Conversions made for an old client are the registry's own business: once
    // the user deleted every manifest they pushed, the blobs are theirs to
    // delete.
    let registry = TestRegistry::start().await;
    let name = "acme/app";
    let (images, index) = push_oci_index(&registry, name, "v1").await;
    fetch(
        &registry,
        &format!("/v2/{name}/manifests/v1"),
        &OLD_DOCKER_ACCEPT,
    )
    .await;

    let delete = |path: String| {
        let request = registry.request(Method::DELETE, &path);
        async move { request.send().await.unwrap() }
    };
    let response = delete(format!("/v2/{name}/manifests/{}", sha256(&index))).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for image in &images {
        let response = delete(format!("/v2/{name}/manifests/{}", sha256(&image.manifest))).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    for image in &images {
        let response = delete(format!("/v2/{name}/blobs/{}", sha256(&image.layer))).await;
        let status = response.status();
        let code = if status.is_success() {
            String::new()
        } else {
            error_code(response).await
        };
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "layer of a deleted image: {code}"
        );
        let response = delete(format!("/v2/{name}/blobs/{}", sha256(&image.config))).await;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "config of a deleted image"
        );
    }
}
