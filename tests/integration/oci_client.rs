//! The `oci-client` crate as a real client, in process, over plain HTTP with
//! anonymous access: a multi-platform image pushed (chunked and monolithic
//! blob uploads, manifests, an image index) and pulled back, tags listed, blobs
//! pulled whole and in part, a blob mounted, and referrers listed.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use oci_client::client::{
    linux_amd64_resolver, BlobResponse, ClientConfig, ClientProtocol, Config, ImageLayer,
};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OciManifest, Platform,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

use crate::common::{header, sha256, TestRegistry};

const NAME: &str = "acme/multi";

fn client(monolithic: bool) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: monolithic,
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        ..ClientConfig::default()
    })
}

fn host(registry: &TestRegistry) -> String {
    registry.base.trim_start_matches("http://").to_owned()
}

fn tagged(registry: &TestRegistry, name: &str, tag: &str) -> Reference {
    Reference::with_tag(host(registry), name.to_owned(), tag.to_owned())
}

fn by_digest(registry: &TestRegistry, name: &str, digest: &str) -> Reference {
    Reference::with_digest(host(registry), name.to_owned(), digest.to_owned())
}

/// Deterministic bytes that stand in for a compressed layer.
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

/// One platform's image as pushed.
struct PushedImage {
    platform: Platform,
    tag: String,
    config: Vec<u8>,
    layer: Vec<u8>,
    digest: String,
    size: usize,
}

fn platform(architecture: &str, variant: Option<&str>) -> Platform {
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        os_version: None,
        os_features: None,
        variant: variant.map(str::to_owned),
        features: None,
    }
}

/// Pushes one platform image with `Client::push` under its own tag and returns
/// what was pushed, with the manifest digest the registry reported.
async fn push_platform_image(
    registry: &TestRegistry,
    client: &Client,
    seed: u64,
    platform: Platform,
    layer_size: usize,
) -> PushedImage {
    let tag = format!(
        "1.0-{}{}",
        platform.architecture,
        platform.variant.as_deref().unwrap_or_default()
    );
    let layer = layer_bytes(seed, layer_size);
    let config = serde_json::to_vec(&json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "variant": platform.variant,
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_bytes(seed + 100, 32))]},
    }))
    .unwrap();
    let reference = tagged(registry, NAME, &tag);
    let response = client
        .push(
            &reference,
            &[ImageLayer::oci_v1_gzip(layer.clone(), None)],
            Config::oci_v1(config.clone(), None),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap_or_else(|error| panic!("push of {tag}: {error}"));
    let digest = response.manifest_url.rsplit('/').next().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{}", response.manifest_url);
    assert!(
        response.config_url.ends_with(&sha256(&config)),
        "{}",
        response.config_url
    );
    let resolved = client
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(
        resolved, digest,
        "{tag} resolves to the manifest just pushed"
    );
    let (manifest, pulled_digest) = client
        .pull_manifest_raw(
            &by_digest(registry, NAME, &digest),
            &RegistryAuth::Anonymous,
            &[OCI_IMAGE_MEDIA_TYPE],
        )
        .await
        .unwrap();
    assert_eq!(pulled_digest, digest);
    assert_eq!(sha256(&manifest), digest);
    PushedImage {
        platform,
        tag,
        config,
        layer,
        digest,
        size: manifest.len(),
    }
}

async fn push_multi_platform_image(registry: &TestRegistry) -> (Vec<PushedImage>, String) {
    // Chunked uploads: the amd64 layer is larger than the client's 4 MiB
    // chunk, so it goes in two PATCHes.
    let chunked = client(false);
    let monolithic = client(true);
    let images = vec![
        push_platform_image(
            registry,
            &chunked,
            1,
            platform("amd64", None),
            5 * 1024 * 1024 + 17,
        )
        .await,
        push_platform_image(registry, &monolithic, 2, platform("arm64", None), 70_000).await,
        push_platform_image(registry, &chunked, 3, platform("arm", Some("v7")), 1).await,
    ];
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: images
            .iter()
            .map(|image| ImageIndexEntry {
                media_type: OCI_IMAGE_MEDIA_TYPE.to_owned(),
                digest: image.digest.clone(),
                size: image.size as i64,
                platform: Some(image.platform.clone()),
                annotations: None,
            })
            .collect(),
        artifact_type: None,
        annotations: Some(BTreeMap::from([(
            "org.opencontainers.image.version".to_owned(),
            "1.0".to_owned(),
        )])),
    };
    let url = chunked
        .push_manifest_list(
            &tagged(registry, NAME, "1.0"),
            &RegistryAuth::Anonymous,
            index,
        )
        .await
        .unwrap();
    let index_digest = url.rsplit('/').next().unwrap().to_owned();
    (images, index_digest)
}

#[tokio::test]
async fn multi_platform_image_pushed_and_pulled_back() {
    let registry = TestRegistry::start().await;
    let (images, index_digest) = push_multi_platform_image(&registry).await;
    let client = client(false);
    let auth = RegistryAuth::Anonymous;
    let index_reference = tagged(&registry, NAME, "1.0");

    // The index, parsed and raw.
    let (manifest, digest) = client.pull_manifest(&index_reference, &auth).await.unwrap();
    assert_eq!(digest, index_digest);
    let OciManifest::ImageIndex(index) = manifest else {
        panic!("1.0 is an image index: {manifest}");
    };
    assert_eq!(
        index.media_type.as_deref(),
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE)
    );
    assert_eq!(index.manifests.len(), images.len());
    for (entry, image) in index.manifests.iter().zip(&images) {
        assert_eq!(entry.digest, image.digest);
        assert_eq!(entry.size, image.size as i64);
        assert_eq!(entry.platform.as_ref(), Some(&image.platform));
    }
    let (raw, _) = client
        .pull_manifest_raw(&index_reference, &auth, &[OCI_IMAGE_INDEX_MEDIA_TYPE])
        .await
        .unwrap();
    assert_eq!(sha256(&raw), index_digest);
    let served = registry
        .get(&format!("/v2/{NAME}/manifests/{index_digest}"))
        .await;
    assert_eq!(header(&served, "content-type"), OCI_IMAGE_INDEX_MEDIA_TYPE);
    assert_eq!(served.bytes().await.unwrap().as_ref(), raw.as_slice());

    // Each platform's image, by digest: manifest, config and layer.
    for image in &images {
        let reference = by_digest(&registry, NAME, &image.digest);
        let pulled = client
            .pull(&reference, &auth, vec![IMAGE_LAYER_GZIP_MEDIA_TYPE])
            .await
            .unwrap_or_else(|error| panic!("pull of {}: {error}", image.tag));
        assert_eq!(pulled.digest.as_deref(), Some(image.digest.as_str()));
        assert_eq!(pulled.config.data, image.config);
        assert_eq!(pulled.layers.len(), 1);
        assert!(pulled.layers[0].data == image.layer, "{} layer", image.tag);
        let manifest = pulled.manifest.unwrap();
        assert_eq!(manifest.layers[0].digest, sha256(&image.layer));
        assert_eq!(manifest.layers[0].size, image.layer.len() as i64);
        assert_eq!(manifest.config.digest, sha256(&image.config));
        // And by its own tag.
        let (_, digest) = client
            .pull_image_manifest(&tagged(&registry, NAME, &image.tag), &auth)
            .await
            .unwrap();
        assert_eq!(digest, image.digest);
    }

    // The platform resolver picks linux/amd64 out of the index.
    let (manifest, digest) = client
        .pull_image_manifest(&index_reference, &auth)
        .await
        .unwrap();
    assert_eq!(digest, images[0].digest);
    assert_eq!(manifest.layers[0].digest, sha256(&images[0].layer));
}

#[tokio::test]
async fn tags_listed_and_blobs_pulled_whole_in_part_and_mounted() {
    let registry = TestRegistry::start().await;
    let (images, _) = push_multi_platform_image(&registry).await;
    let client = client(false);
    let auth = RegistryAuth::Anonymous;
    let reference = tagged(&registry, NAME, "1.0");

    let listed = client
        .list_tags(&reference, &auth, None, None)
        .await
        .unwrap();
    assert_eq!(listed.name, NAME);
    let mut expected: Vec<String> = images.iter().map(|image| image.tag.clone()).collect();
    expected.push("1.0".to_owned());
    expected.sort();
    assert_eq!(listed.tags, expected);
    let first_page = client
        .list_tags(&reference, &auth, Some(2), None)
        .await
        .unwrap();
    assert_eq!(first_page.tags, expected[..2]);
    let next_page = client
        .list_tags(&reference, &auth, Some(2), Some(&expected[1]))
        .await
        .unwrap();
    assert_eq!(next_page.tags, expected[2..]);

    // A whole blob, verified against its digest by the client.
    let layer = &images[0].layer;
    let descriptor = OciDescriptor {
        media_type: IMAGE_LAYER_GZIP_MEDIA_TYPE.to_owned(),
        digest: sha256(layer),
        size: layer.len() as i64,
        urls: None,
        annotations: None,
    };
    let mut pulled = Vec::new();
    client
        .pull_blob(&reference, &descriptor, &mut pulled)
        .await
        .unwrap();
    assert!(pulled == *layer, "the whole layer");
    let stream = client
        .pull_blob_stream(&reference, &descriptor)
        .await
        .unwrap();
    assert_eq!(stream.content_length, Some(layer.len() as u64));
    let streamed: Vec<u8> = stream
        .stream
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .concat();
    assert!(streamed == *layer, "the streamed layer");

    // The rest of a blob after an interrupted download.
    let offset = 4 * 1024 * 1024 + 3;
    match client
        .pull_blob_stream_partial(&reference, &descriptor, offset as u64, None)
        .await
        .unwrap()
    {
        BlobResponse::Partial(stream) => {
            assert_eq!(stream.content_length, Some((layer.len() - offset) as u64));
            let rest: Vec<u8> = stream
                .stream
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .concat();
            assert!(rest == layer[offset..], "the rest of the layer");
        }
        BlobResponse::Full(_) => panic!("a Range request got the whole blob"),
    }
    let BlobResponse::Partial(stream) = client
        .pull_blob_stream_partial(&reference, &descriptor, 10, Some(100))
        .await
        .unwrap()
    else {
        panic!("a Range request got the whole blob");
    };
    let part: Vec<u8> = stream
        .stream
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .concat();
    assert_eq!(part, layer[10..110]);

    // A mount into another repository, then a pull from there.
    let target = tagged(&registry, "acme/copy", "1.0");
    client
        .mount_blob(&target, &reference, &descriptor.digest)
        .await
        .unwrap();
    let mut mounted = Vec::new();
    client
        .pull_blob(&target, &descriptor, &mut mounted)
        .await
        .unwrap();
    assert!(mounted == *layer, "the mounted layer");
}

/// Pushes an artifact whose subject is `subject` and returns its digest.
async fn push_referrer(
    registry: &TestRegistry,
    client: &Client,
    subject: &PushedImage,
    artifact_type: &str,
    payload: &[u8],
) -> String {
    let reference = tagged(registry, NAME, "unused");
    let empty = b"{}";
    client
        .push_blob(&reference, empty, &sha256(empty))
        .await
        .unwrap();
    client
        .push_blob(&reference, payload, &sha256(payload))
        .await
        .unwrap();
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
        config: OciDescriptor {
            media_type: "application/vnd.oci.empty.v1+json".to_owned(),
            digest: sha256(empty),
            size: 2,
            urls: None,
            annotations: None,
        },
        layers: vec![OciDescriptor {
            media_type: artifact_type.to_owned(),
            digest: sha256(payload),
            size: payload.len() as i64,
            urls: None,
            annotations: None,
        }],
        subject: Some(OciDescriptor {
            media_type: OCI_IMAGE_MEDIA_TYPE.to_owned(),
            digest: subject.digest.clone(),
            size: subject.size as i64,
            urls: None,
            annotations: None,
        }),
        artifact_type: Some(artifact_type.to_owned()),
        annotations: Some(BTreeMap::from([(
            "org.opencontainers.image.created".to_owned(),
            "2024-05-01T12:00:00Z".to_owned(),
        )])),
    };
    let url = client
        .push_manifest(
            &tagged(
                registry,
                NAME,
                &format!("ref-{}", sha256(payload)[7..19].to_owned()),
            ),
            &OciManifest::Image(manifest),
        )
        .await
        .unwrap();
    url.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn referrers_listed_and_filtered() {
    let registry = TestRegistry::start().await;
    let (images, _) = push_multi_platform_image(&registry).await;
    let client = client(false);
    let sbom = push_referrer(
        &registry,
        &client,
        &images[0],
        "application/vnd.example.sbom.v1",
        b"sbom",
    )
    .await;
    let signature = push_referrer(
        &registry,
        &client,
        &images[0],
        "application/vnd.example.signature.v1",
        b"sig",
    )
    .await;
    let subject = by_digest(&registry, NAME, &images[0].digest);

    let all = client.pull_referrers(&subject, None).await.unwrap();
    let mut digests: Vec<&str> = all
        .manifests
        .iter()
        .map(|entry| entry.digest.as_str())
        .collect();
    digests.sort();
    let mut expected = vec![sbom.as_str(), signature.as_str()];
    expected.sort();
    assert_eq!(digests, expected);
    for entry in &all.manifests {
        assert_eq!(entry.media_type, OCI_IMAGE_MEDIA_TYPE);
        assert_eq!(
            entry
                .annotations
                .as_ref()
                .and_then(|map| map.get("org.opencontainers.image.created")),
            Some(&"2024-05-01T12:00:00Z".to_owned())
        );
    }
    let filtered = client
        .pull_referrers(&subject, Some("application/vnd.example.sbom.v1"))
        .await
        .unwrap();
    let digests: Vec<&str> = filtered
        .manifests
        .iter()
        .map(|entry| entry.digest.as_str())
        .collect();
    assert_eq!(digests, [sbom.as_str()]);
    let none = client
        .pull_referrers(&by_digest(&registry, NAME, &images[1].digest), None)
        .await
        .unwrap();
    assert!(none.manifests.is_empty());
}

#[tokio::test]
async fn referrers_filter_on_a_type_with_a_plus() {
    // oci-client puts the artifact type into the query as it is, so
    // `application/spdx+json` arrives with a bare `+`. A media type cannot
    // contain a space, so the registry can only read it one way.
    let registry = TestRegistry::start().await;
    let (images, _) = push_multi_platform_image(&registry).await;
    let client = client(false);
    let sbom = push_referrer(
        &registry,
        &client,
        &images[0],
        "application/spdx+json",
        b"spdx",
    )
    .await;
    let subject = by_digest(&registry, NAME, &images[0].digest);
    let filtered = client
        .pull_referrers(&subject, Some("application/spdx+json"))
        .await
        .unwrap();
    let digests: Vec<&str> = filtered
        .manifests
        .iter()
        .map(|entry| entry.digest.as_str())
        .collect();
    assert_eq!(digests, [sbom.as_str()]);
}
