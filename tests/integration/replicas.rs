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

    let location = first.start_upload("scale/app").await;
    let chunks = [
        &bytes[..1_000_000],
        &bytes[1_000_000..2_000_000],
        &bytes[2_000_000..],
    ];
    let replicas = [&first, &second, &first];
    let mut offset = 0;
    for (chunk, replica) in chunks.iter().zip(replicas) {
        replica.patch_chunk(&location, offset, chunk).await;
        offset += chunk.len();
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

/// A `kai serve` process on the given database and storage.
struct Replica {
    child: std::process::Child,
    base: String,
}

impl Replica {
    fn spawn(config: &kai::config::Config, data: &std::path::Path) -> Replica {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kai"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--database", &config.database, "--storage", &config.storage])
            .env("KAI_AUTH__ENABLED", "false")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kai starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("ready line");
        let address = line
            .trim()
            .strip_prefix("listening on http://")
            .expect("ready line names the address");
        Replica {
            child,
            base: format!("http://{address}"),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_replica_killed_mid_upload_loses_nothing_acknowledged() {
    if !scale_out_backends() {
        return;
    }
    let mut config = kai::config::Config::default();
    use_test_backends(&mut config).await;
    let directory = tempfile::tempdir().unwrap();
    let mut doomed = Replica::spawn(&config, &directory.path().join("a"));
    let survivor = Replica::spawn(&config, &directory.path().join("b"));
    let client = reqwest::Client::new();
    let bytes: Vec<u8> = (0..4_000_000u32).map(|index| (index % 241) as u8).collect();
    let digest = sha256(&bytes);
    let (first_chunk, second_chunk) = bytes.split_at(2_000_000);

    let start = client
        .post(format!("{}/v2/scale/killed/blobs/uploads/", doomed.base))
        .send()
        .await
        .unwrap();
    let location = header(&start, "location");
    let patch = client
        .patch(format!("{}{location}", doomed.base))
        .header("content-range", format!("0-{}", first_chunk.len() - 1))
        .body(first_chunk.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::ACCEPTED);

    // The second chunk is half sent when the replica dies.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(receiver));
    let in_flight = client
        .patch(format!("{}{location}", doomed.base))
        .header(
            "content-range",
            format!("{}-{}", first_chunk.len(), bytes.len() - 1),
        )
        .header("content-length", second_chunk.len().to_string())
        .body(body)
        .send();
    let in_flight = tokio::spawn(in_flight);
    sender
        .send(Ok(second_chunk[..1_000_000].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().unwrap();
    drop(sender);
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed replica cannot have answered"
    );

    // The client retries on the other replica from what was acknowledged.
    let status = client
        .get(format!("{}{location}", survivor.base))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&status, "range"),
        format!("0-{}", first_chunk.len() - 1)
    );
    let retry = client
        .put(format!("{}{location}?digest={digest}", survivor.base))
        .header(
            "content-range",
            format!("{}-{}", first_chunk.len(), bytes.len() - 1),
        )
        .body(second_chunk.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        retry.status(),
        StatusCode::CREATED,
        "{}",
        retry.text().await.unwrap()
    );
    let pulled = client
        .get(format!("{}/v2/scale/killed/blobs/{digest}", survivor.base))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&pulled.bytes().await.unwrap()), digest);
}

fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
}

#[tokio::test]
async fn a_token_from_one_replica_is_accepted_by_the_other() {
    if !scale_out_backends() {
        return;
    }
    let first = TestRegistry::start_with(|config| config.auth.enabled = true).await;
    let second = first.start_replica().await;
    let actor = kai::accounts::Actor::system();
    kai::accounts::create_user(
        &first.state().meta,
        &actor,
        "carol",
        "carol-password-4",
        false,
    )
    .await
    .unwrap();

    let response = first
        .client
        .get(first.url("/v2/auth"))
        .query(&[
            ("service", "kai"),
            ("scope", "repository:carol/app:pull,push"),
        ])
        .basic_auth("carol", Some("carol-password-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();

    // Without the token the second replica challenges; with it, it serves.
    let anonymous = second
        .request(Method::POST, "/v2/carol/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let bytes = b"pushed with a token from the other replica";
    let digest = sha256(bytes);
    let pushed = second
        .request(
            Method::POST,
            &format!("/v2/carol/app/blobs/uploads/?digest={digest}"),
        )
        .bearer_auth(&token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        pushed.status(),
        StatusCode::CREATED,
        "{}",
        pushed.text().await.unwrap()
    );
    let pulled = first
        .request(Method::GET, &format!("/v2/carol/app/blobs/{digest}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), bytes);
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn blob_get_redirects_to_a_presigned_url_when_configured() {
    if !scale_out_backends() {
        return;
    }
    let registry = TestRegistry::start_with(|config| config.s3.redirect = true).await;
    blob_get_redirects_to_signed_url(&registry, "scale/redirect", "X-Amz-Signature").await;
    registry.stop().await;
}
