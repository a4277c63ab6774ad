//! A registry on Azure Blob Storage (`az://`): Azurite, which
//! scripts/backends.sh starts and names in `KAI_TEST_AZURE_CONTAINER` (with
//! the `AZURE_STORAGE_*` variables). Without it these tests say why they
//! skip; under `CI=true` they fail instead.

use reqwest::{Method, StatusCode};

use crate::common::*;

/// The Azurite container to test in, or `None` (after saying why) to skip.
fn azure_container() -> Option<String> {
    let container = std::env::var("KAI_TEST_AZURE_CONTAINER").ok();
    if container.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but KAI_TEST_AZURE_CONTAINER is not set: run the tests through scripts/test"
        );
        eprintln!(
            "skipped: needs Azurite (scripts/test starts it; or source scripts/backends.sh and run backends_start_azurite)"
        );
    }
    container
}

/// A registry storing its blobs under a fresh prefix of the container.
async fn start_on_azure(container: &str, redirect: bool) -> TestRegistry {
    let storage = format!(
        "az://{container}/kai_test_{}",
        uuid::Uuid::new_v4().simple()
    );
    TestRegistry::start_with(move |config| {
        config.storage = storage;
        config.s3.redirect = redirect;
    })
    .await
}

#[tokio::test]
async fn chunked_blob_and_image_round_trip() {
    let Some(container) = azure_container() else {
        return;
    };
    let registry = start_on_azure(&container, false).await;
    assert!(registry.state().config.storage.starts_with("az://"));

    // Three chunks, the middle one larger than a multipart part (8 MiB), so
    // both the upload and the assembly at commit write several blocks.
    let bytes: Vec<u8> = (0..11_000_000u32)
        .map(|index| (index % 251) as u8)
        .collect();
    let digest = sha256(&bytes);
    let start = registry
        .request(Method::POST, "/v2/azure/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = header(&start, "location");
    let mut offset = 0;
    for chunk in [
        &bytes[..1_000_000],
        &bytes[1_000_000..10_000_000],
        &bytes[10_000_000..],
    ] {
        let end = offset + chunk.len() - 1;
        let patch = registry
            .request(Method::PATCH, &location)
            .header("content-range", format!("{offset}-{end}"))
            .header("content-type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            patch.status(),
            StatusCode::ACCEPTED,
            "{}",
            patch.text().await.unwrap()
        );
        assert_eq!(header(&patch, "range"), format!("0-{end}"));
        offset = end + 1;
    }
    let finish = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        finish.status(),
        StatusCode::CREATED,
        "{}",
        finish.text().await.unwrap()
    );
    assert_eq!(registry.staged_uploads().await, 0);

    let path = format!("/v2/azure/app/blobs/{digest}");
    let pulled = registry.get(&path).await;
    assert_eq!(pulled.status(), StatusCode::OK);
    assert_eq!(header(&pulled, "docker-content-digest"), digest);
    assert_eq!(header(&pulled, "content-length"), bytes.len().to_string());
    let pulled = pulled.bytes().await.unwrap();
    assert_eq!(sha256(&pulled), digest);
    assert!(pulled.as_ref() == bytes.as_slice());

    // A range across the boundary between the first and second chunk.
    assert_ranged_get(&registry, &path, &bytes, 999_990, 1_000_009).await;

    // An image: a config and a layer pushed monolithically, then its manifest.
    // A layer over `uploads.inline_max_bytes`, so that it goes to the
    // container; the config is small and kept in the database.
    let layer = b"a layer stored in Azure Blob Storage".repeat(2000);
    let (manifest, manifest_digest) = registry.push_image("azure/app", "1.0", &layer).await;
    let pulled = registry
        .request(Method::GET, "/v2/azure/app/manifests/1.0")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), StatusCode::OK);
    assert_eq!(header(&pulled, "docker-content-digest"), manifest_digest);
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), manifest.as_slice());
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for descriptor in [&parsed["config"], &parsed["layers"][0]] {
        let blob_digest = descriptor["digest"].as_str().unwrap();
        let blob = registry
            .get(&format!("/v2/azure/app/blobs/{blob_digest}"))
            .await;
        assert_eq!(blob.status(), StatusCode::OK);
        let blob = blob.bytes().await.unwrap();
        assert_eq!(sha256(&blob), blob_digest);
        assert_eq!(blob.len() as u64, descriptor["size"].as_u64().unwrap());
    }
    assert_eq!(parsed["layers"][0]["digest"], sha256(&layer).as_str());

    // The two large blobs are in the container, under this registry's
    // prefix, and the config in the database.
    let stored = registry.state().blobs.list_blobs().await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(registry.stored().await.stored_blobs, 3);
    registry.stop().await;
}

#[tokio::test]
async fn blob_get_redirects_to_a_shared_access_signature_when_configured() {
    let Some(container) = azure_container() else {
        return;
    };
    let registry = start_on_azure(&container, true).await;
    blob_get_redirects_to_signed_url(&registry, "azure/redirect", "sig=").await;
    registry.stop().await;
}
