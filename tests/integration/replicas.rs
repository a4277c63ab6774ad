//! Two replicas on one PostgreSQL database and one S3 bucket behave as one
//! registry. Needs the scale-out backends (see `common::scale_out_backends`).

use reqwest::{Method, StatusCode};

use crate::common::*;

#[tokio::test]
async fn chunked_upload_alternating_between_replicas() {
    if !scale_out_backends() {
        return;
    }
    let first = TestRegistry::start().await;
    let second = first.start_replica().await;
    let bytes: Vec<u8> = (0..3_000_000u32).map(|index| (index % 253) as u8).collect();
    let digest = sha256(&bytes);

    let start = first
        .request(Method::POST, "/v2/scale/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = header(&start, "location");
    let chunks = [
        &bytes[..1_000_000],
        &bytes[1_000_000..2_000_000],
        &bytes[2_000_000..],
    ];
    let replicas = [&first, &second, &first];
    let mut offset = 0;
    for (chunk, replica) in chunks.iter().zip(replicas) {
        let end = offset + chunk.len() - 1;
        let patch = replica
            .request(Method::PATCH, &location)
            .header("content-range", format!("{offset}-{end}"))
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
        offset = end + 1;
    }
    let status = second.get(&location).await;
    assert_eq!(header(&status, "range"), format!("0-{}", bytes.len() - 1));
    let finish = second
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
    for replica in [&first, &second] {
        let pulled = replica.get(&format!("/v2/scale/app/blobs/{digest}")).await;
        assert_eq!(pulled.status(), StatusCode::OK);
        assert_eq!(sha256(&pulled.bytes().await.unwrap()), digest);
    }
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn push_through_one_pull_through_the_other() {
    if !scale_out_backends() {
        return;
    }
    let first = TestRegistry::start().await;
    let second = first.start_replica().await;
    let (manifest, digest) = first
        .push_image("scale/image", "1.0", b"layer through replica one")
        .await;
    let pulled = second
        .request(Method::GET, "/v2/scale/image/manifests/1.0")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&pulled, "docker-content-digest"), digest);
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), manifest.as_slice());
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layer = parsed["layers"][0]["digest"].as_str().unwrap();
    let blob = second.get(&format!("/v2/scale/image/blobs/{layer}")).await;
    assert_eq!(
        blob.bytes().await.unwrap().as_ref(),
        b"layer through replica one"
    );
    let tags: serde_json::Value = second
        .get("/v2/scale/image/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["1.0"]));
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn concurrent_pushes_of_one_blob_and_one_tag_end_consistent() {
    if !scale_out_backends() {
        return;
    }
    let first = TestRegistry::start().await;
    let second = first.start_replica().await;
    let shared = b"the same blob through both replicas".repeat(1000);
    let (one, two) = tokio::join!(
        first.push_blob("scale/race", &shared),
        second.push_blob("scale/race", &shared)
    );
    assert_eq!(one, two);

    // Each replica pushes its own image under the same tag, many times over.
    let mut last_digests = Vec::new();
    for round in 0..5 {
        let layer_one = format!("one {round}");
        let layer_two = format!("two {round}");
        let ((_, digest_one), (_, digest_two)) = tokio::join!(
            first.push_image("scale/race", "latest", layer_one.as_bytes()),
            second.push_image("scale/race", "latest", layer_two.as_bytes())
        );
        last_digests = vec![digest_one, digest_two];
    }
    // Last writer wins: the tag names one of the two final manifests, and both
    // replicas agree on which.
    let head_one = first
        .request(Method::HEAD, "/v2/scale/race/manifests/latest")
        .send()
        .await
        .unwrap();
    let head_two = second
        .request(Method::HEAD, "/v2/scale/race/manifests/latest")
        .send()
        .await
        .unwrap();
    let tagged = header(&head_one, "docker-content-digest");
    assert_eq!(tagged, header(&head_two, "docker-content-digest"));
    assert!(
        last_digests.contains(&tagged),
        "{tagged} not in {last_digests:?}"
    );
    let stored = first.stored().await;
    assert_eq!(stored.tags, 1);
    assert_eq!(stored.manifests, 10);
    second.stop().await;
    first.stop().await;
}
