//! Every endpoint's success path: status codes and the headers clients rely on.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let registry = TestRegistry::start().await;
    let response = registry.get("/v2/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let health = registry.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(registry.get("/readyz").await.status(), StatusCode::OK);
    registry.stop().await;
}

#[tokio::test]
async fn monolithic_blob_push_then_head_get_and_ranges() {
    let registry = TestRegistry::start().await;
    let bytes: Vec<u8> = (0..100_000u32).map(|index| (index % 251) as u8).collect();
    let digest = registry.push_blob("team/app", &bytes).await;
    let path = format!("/v2/team/app/blobs/{digest}");

    let head = registry.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());
    assert_eq!(header(&head, "docker-content-digest"), digest);

    let get = registry.get(&path).await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "docker-content-digest"), digest);
    assert_eq!(get.bytes().await.unwrap().as_ref(), bytes.as_slice());

    assert_ranged_get(&registry, &path, &bytes, 10, 19).await;

    let suffix = registry
        .request(Method::GET, &path)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(suffix.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        suffix.bytes().await.unwrap().as_ref(),
        &bytes[bytes.len() - 5..]
    );

    // The blob is visible only in the repository it was pushed to.
    let elsewhere = registry.get(&format!("/v2/other/blobs/{digest}")).await;
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(elsewhere).await, "BLOB_UNKNOWN");
    registry.stop().await;
}

/// Blobs of at most `uploads.inline_max_bytes` are kept in the database and
/// larger ones in the blob store. Either way a push is answered alike, no
/// staged data is left, and HEAD, GET and ranges serve the same bytes. With
/// the limit at 0, every blob goes to the blob store.
#[tokio::test]
async fn small_blobs_live_in_the_database_and_read_like_any_other() {
    for inline_max_bytes in [65_536, 0] {
        let registry =
            TestRegistry::start_with(|config| config.uploads.inline_max_bytes = inline_max_bytes)
                .await;
        let pattern = |length: u32, modulus: u32| -> Vec<u8> {
            (0..length).map(|index| (index % modulus) as u8).collect()
        };
        let small = pattern(4096, 253);
        let at_the_limit = pattern(65_536, 241);
        let over_the_limit = pattern(65_537, 239);
        registry.push_blob("inline/app", &small).await;
        registry.push_blob("inline/app", &over_the_limit).await;
        // Pushed as docker does: two chunks, then a PUT without a body.
        let location = registry.start_upload("inline/app").await;
        let location = registry
            .patch_chunk(&location, 0, &at_the_limit[..40_000])
            .await;
        let location = registry
            .patch_chunk(&location, 40_000, &at_the_limit[40_000..])
            .await;
        let digest = sha256(&at_the_limit);
        let finish = registry
            .request(Method::PUT, &format!("{location}?digest={digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(finish.status(), StatusCode::CREATED);
        assert_eq!(header(&finish, "docker-content-digest"), digest);

        for bytes in [&small, &at_the_limit, &over_the_limit] {
            let path = format!("/v2/inline/app/blobs/{}", sha256(bytes));
            let head = registry.request(Method::HEAD, &path).send().await.unwrap();
            assert_eq!(head.status(), StatusCode::OK);
            assert_eq!(header(&head, "content-length"), bytes.len().to_string());
            let get = registry.get(&path).await;
            assert_eq!(get.status(), StatusCode::OK);
            assert_eq!(header(&get, "content-length"), bytes.len().to_string());
            assert!(get.bytes().await.unwrap().as_ref() == bytes.as_slice());
            assert_ranged_get(&registry, &path, bytes, 1000, 1999).await;
            assert_ranged_get(&registry, &path, bytes, 0, 0).await;
            assert_ranged_get(&registry, &path, bytes, bytes.len() - 1, bytes.len() - 1).await;
        }

        let stored = registry.stored().await;
        let files = registry.state().blobs.list_blobs().await.unwrap().len() as u64;
        assert_eq!(stored.stored_blobs, 3);
        let expected_files = if inline_max_bytes == 0 { 3 } else { 1 };
        assert_eq!(
            files, expected_files,
            "inline_max_bytes = {inline_max_bytes}"
        );
        assert_eq!(stored.uploads, 0);
        assert_eq!(registry.staged_uploads().await, 0);
        registry.stop().await;
    }
}

/// A PUT whose small body may be the whole blob is answered by one commit
/// that checks the session as it ends it. Whatever the session holds, the
/// answer is the one the session decides: under another repository the
/// upload is unknown and stays usable where it belongs; with bytes staged the
/// body is appended to them; a wrong digest ends the session.
#[tokio::test]
async fn a_small_completing_put_is_checked_against_its_session() {
    let registry = TestRegistry::start().await;
    let bytes = b"a small blob".to_vec();
    let digest = sha256(&bytes);
    let put = |location: String, digest: String, body: Vec<u8>| {
        registry
            .request(Method::PUT, &format!("{location}?digest={digest}"))
            .body(body)
            .send()
    };

    // The session of home/app, completed under other/app.
    let location = registry.start_upload("home/app").await;
    let elsewhere = location.replacen("/v2/home/app/", "/v2/other/app/", 1);
    assert_ne!(elsewhere, location);
    let refused = put(elsewhere, digest.clone(), bytes.clone()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(refused).await, "BLOB_UPLOAD_UNKNOWN");
    let path = |repository: &str| format!("/v2/{repository}/blobs/{digest}");
    let head = registry
        .request(Method::HEAD, &path("other/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    let status = registry.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-0");
    let created = put(location, digest.clone(), bytes.clone()).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        registry.get(&path("home/app")).await.bytes().await.unwrap(),
        bytes
    );

    // Bytes staged by a PATCH come first.
    let whole = b"staged, then the rest".to_vec();
    let location = registry.start_upload("home/app").await;
    let location = registry.patch_chunk(&location, 0, &whole[..8]).await;
    let created = put(location, sha256(&whole), whole[8..].to_vec())
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let stored = registry
        .get(&format!("/v2/home/app/blobs/{}", sha256(&whole)))
        .await;
    assert_eq!(stored.bytes().await.unwrap(), whole);

    // A wrong digest: DIGEST_INVALID, and the session is gone.
    let location = registry.start_upload("home/app").await;
    let wrong = put(location.clone(), sha256(b"other bytes"), bytes.clone())
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(wrong).await, "DIGEST_INVALID");
    let status = registry.get(&location).await;
    assert_eq!(error_code(status).await, "BLOB_UPLOAD_UNKNOWN");

    let stored = registry.stored().await;
    assert_eq!(stored.uploads, 0);
    assert_eq!(stored.stored_blobs, 2);
    registry.stop().await;
}

#[tokio::test]
async fn chunked_upload_with_status_and_final_chunk() {
    let registry = TestRegistry::start().await;
    let bytes: Vec<u8> = (0..30_000u32)
        .map(|index| (index * 7 % 256) as u8)
        .collect();
    let digest = sha256(&bytes);

    let start = registry
        .request(Method::POST, "/v2/chunked/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = header(&start, "location");
    assert!(
        location.starts_with("/v2/chunked/blobs/uploads/"),
        "{location}"
    );
    assert_eq!(header(&start, "range"), "0-0");
    assert!(!header(&start, "docker-upload-uuid").is_empty());

    let mut offset = 0;
    for chunk in [&bytes[..10_000], &bytes[10_000..25_000]] {
        let end = offset + chunk.len() - 1;
        let patch = registry
            .request(Method::PATCH, &location)
            .header("content-range", format!("{offset}-{end}"))
            .header("content-type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(patch.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&patch, "range"), format!("0-{end}"));
        assert_eq!(header(&patch, "location"), location);
        offset = end + 1;
    }

    let status = registry.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-24999");
    assert_eq!(header(&status, "location"), location);

    let finish = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .body(bytes[25_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(finish.status(), StatusCode::CREATED);
    assert_eq!(
        header(&finish, "location"),
        format!("/v2/chunked/blobs/{digest}")
    );
    assert_eq!(header(&finish, "docker-content-digest"), digest);

    let get = registry.get(&format!("/v2/chunked/blobs/{digest}")).await;
    assert_eq!(get.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // The session ended with the upload.
    assert_eq!(
        registry.get(&location).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(registry.stored().await.uploads, 0);
    registry.stop().await;
}

#[tokio::test]
async fn streamed_patch_without_content_range_and_put_without_body() {
    let registry = TestRegistry::start().await;
    let bytes = b"streamed upload body".repeat(1000);
    let digest = sha256(&bytes);
    let start = registry
        .request(Method::POST, "/v2/streamed/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&start, "location");
    let stream = futures::stream::iter(
        bytes
            .chunks(4096)
            .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
            .collect::<Vec<_>>(),
    );
    let patch = registry
        .request(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&patch, "range"), format!("0-{}", bytes.len() - 1));
    let finish = registry
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(finish.status(), StatusCode::CREATED);
    let head = registry
        .request(Method::HEAD, &format!("/v2/streamed/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());
    registry.stop().await;
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let registry = TestRegistry::start().await;
    let start = registry
        .request(Method::POST, "/v2/cancel/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = header(&start, "location");
    registry
        .request(Method::PATCH, &location)
        .body(b"partial".to_vec())
        .send()
        .await
        .unwrap();
    let cancel = registry
        .request(Method::DELETE, &location)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    let status = registry.get(&location).await;
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(status).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(registry.staged_uploads().await, 0);
    registry.stop().await;
}

#[tokio::test]
async fn manifest_put_get_head_by_tag_and_digest() {
    let registry = TestRegistry::start().await;
    let (manifest, digest) = registry
        .push_image("acme/team/app", "1.0", b"layer bytes")
        .await;

    for reference in ["1.0", digest.as_str()] {
        let path = format!("/v2/acme/team/app/manifests/{reference}");
        let get = registry
            .request(Method::GET, &path)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(header(&get, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&get, "docker-content-digest"), digest);
        assert_eq!(get.bytes().await.unwrap().as_ref(), manifest.as_slice());
        let head = registry.request(Method::HEAD, &path).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(header(&head, "content-length"), manifest.len().to_string());
        assert_eq!(header(&head, "docker-content-digest"), digest);
    }

    // PUT by digest answers with the digest and location.
    let again = registry
        .put_manifest("acme/team/app", &digest, OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(header(&again, "docker-content-digest"), digest);
    assert_eq!(
        header(&again, "location"),
        format!("/v2/acme/team/app/manifests/{digest}")
    );
    registry.stop().await;
}

#[tokio::test]
async fn manifest_bytes_are_stored_exactly_as_sent() {
    let registry = TestRegistry::start().await;
    let (_, _) = registry.push_image("exact", "base", b"x").await;
    let stored: Value = serde_json::from_slice(
        &registry
            .get("/v2/exact/manifests/base")
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    // The same content with unusual whitespace and key order keeps its own digest.
    let odd = format!(
        "{{\n  \"layers\" : {},\n\t\"config\":{},  \"mediaType\":\"{OCI_MANIFEST}\", \"schemaVersion\":2 }}\n",
        stored["layers"], stored["config"]
    );
    let response = registry
        .put_manifest("exact", "odd", OCI_MANIFEST, odd.as_bytes())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(&response, "docker-content-digest"),
        sha256(odd.as_bytes())
    );
    let served = registry
        .get("/v2/exact/manifests/odd")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(served.as_ref(), odd.as_bytes());
    registry.stop().await;
}

#[tokio::test]
async fn tag_moves_to_the_last_pushed_manifest() {
    let registry = TestRegistry::start().await;
    let (_, first) = registry.push_image("moving", "latest", b"one").await;
    let (_, second) = registry.push_image("moving", "latest", b"two").await;
    assert_ne!(first, second);
    let head = registry
        .request(Method::HEAD, "/v2/moving/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&head, "docker-content-digest"), second);
    // The first manifest stays reachable by digest.
    let old = registry.get(&format!("/v2/moving/manifests/{first}")).await;
    assert_eq!(old.status(), StatusCode::OK);
    registry.stop().await;
}

/// Pulls are answered from memory once a manifest has been read (see
/// `kai_meta::manifest_cache`); a pull after a tag moves, or after a tag or a
/// manifest is deleted, must see the change.
#[tokio::test]
async fn a_pulled_manifest_is_not_served_after_its_tag_moves_or_it_is_deleted() {
    let registry = TestRegistry::start().await;
    let name = "cached/app";
    let (first, first_digest) = registry.push_image(name, "latest", b"one").await;
    let pull = |reference: String| {
        let registry = &registry;
        async move {
            let response = registry
                .request(Method::GET, &format!("/v2/{name}/manifests/{reference}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let digest = response
                .headers()
                .get("docker-content-digest")
                .map(|value| value.to_str().unwrap().to_owned());
            (status, digest, response.bytes().await.unwrap())
        }
    };
    // Read twice each, by tag and by digest, so the second answer can come
    // from the cache.
    for _ in 0..2 {
        let (status, digest, body) = pull("latest".into()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(digest.as_deref(), Some(first_digest.as_str()));
        assert_eq!(body.as_ref(), first.as_slice());
        let (status, _, body) = pull(first_digest.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_ref(), first.as_slice());
    }

    // The tag moves: GET and HEAD follow it at once.
    let (second, second_digest) = registry.push_image(name, "latest", b"two").await;
    let (status, digest, body) = pull("latest".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(digest.as_deref(), Some(second_digest.as_str()));
    assert_eq!(body.as_ref(), second.as_slice());
    let head = registry
        .request(Method::HEAD, &format!("/v2/{name}/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&head, "docker-content-digest"), second_digest);

    // The tag is deleted: it is unknown, while the manifest stays by digest.
    let deleted = registry
        .request(Method::DELETE, &format!("/v2/{name}/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let (status, _, _) = pull("latest".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = pull(second_digest.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_ref(), second.as_slice());

    // The first manifest, read by digest above, is deleted: it is unknown.
    let deleted = registry
        .request(
            Method::DELETE,
            &format!("/v2/{name}/manifests/{first_digest}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let response = registry
        .get(&format!("/v2/{name}/manifests/{first_digest}"))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
    registry.stop().await;
}

#[tokio::test]
async fn tags_list_is_sorted_and_paginated_with_link() {
    let registry = TestRegistry::start().await;
    let (manifest, _) = registry.push_image("paged", "v0", b"layer").await;
    for tag in ["b", "a", "c", "D", "e_1", "v1.0"] {
        let response = registry
            .put_manifest("paged", tag, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let all: Value = registry
        .get("/v2/paged/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["name"], "paged");
    assert_eq!(
        all["tags"],
        serde_json::json!(["D", "a", "b", "c", "e_1", "v0", "v1.0"])
    );

    let mut collected = Vec::new();
    let mut next = Some("/v2/paged/tags/list?n=3".to_owned());
    while let Some(path) = next.take() {
        let response = registry.get(&path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let link = header(&response, "link");
        let page: Value = response.json().await.unwrap();
        let tags = page["tags"].as_array().unwrap();
        assert!(tags.len() <= 3);
        collected.extend(tags.iter().map(|tag| tag.as_str().unwrap().to_owned()));
        if !link.is_empty() {
            assert!(link.ends_with("rel=\"next\""), "{link}");
            next = Some(link[1..link.find('>').unwrap()].to_owned());
        }
    }
    assert_eq!(collected, ["D", "a", "b", "c", "e_1", "v0", "v1.0"]);

    let after: Value = registry
        .get("/v2/paged/tags/list?n=2&last=c")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["tags"], serde_json::json!(["e_1", "v0"]));
    let none: Value = registry
        .get("/v2/paged/tags/list?n=0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["tags"], serde_json::json!([]));
    registry.stop().await;
}

#[tokio::test]
async fn catalog_lists_repositories_in_order_with_pagination() {
    let registry = TestRegistry::start().await;
    for name in ["zeta", "alpha/one", "alpha/two", "mid/deep/name"] {
        registry.push_blob(name, name.as_bytes()).await;
    }
    let all: Value = registry.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        all["repositories"],
        serde_json::json!(["alpha/one", "alpha/two", "mid/deep/name", "zeta"])
    );
    let first = registry.get("/v2/_catalog?n=2").await;
    let link = header(&first, "link");
    assert_eq!(link, "</v2/_catalog?n=2&last=alpha%2Ftwo>; rel=\"next\"");
    let second: Value = registry
        .get(&link[1..link.find('>').unwrap()])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        second["repositories"],
        serde_json::json!(["mid/deep/name", "zeta"])
    );
    registry.stop().await;
}
