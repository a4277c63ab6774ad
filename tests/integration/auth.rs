//! Accounts and access with authorization on, over real HTTP: the Docker token
//! flow and its challenges, namespaces and permissions (users, organisations,
//! teams, robots), throttled logins, upload ownership, the filtered catalog,
//! the REST API and its OpenAPI document, the audit log, the command line (the
//! real binary) and the `oci-client` crate with Basic credentials.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use kai::accounts::{self, Actor};
use kai::config::Config;
use kai_auth::{Claims, Role, TeamRole};
use kai_meta::MetaStore;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

const ALICE: (&str, &str) = ("alice", "alice-password-1");
const BOB: (&str, &str) = ("bob", "bob-password-2");
const ROOT: (&str, &str) = ("root", "root-password-3");

/// A registry with authorization on and three users: `root` (administrator),
/// `alice` and `bob`.
struct Secured {
    registry: TestRegistry,
    meta: MetaStore,
}

async fn secured(change: impl FnOnce(&mut Config)) -> Secured {
    let registry = TestRegistry::start_with(|config| {
        config.auth.enabled = true;
        change(config);
    })
    .await;
    let meta = registry.state().meta.clone();
    let actor = Actor::system();
    accounts::create_user(&meta, &actor, ROOT.0, ROOT.1, true)
        .await
        .unwrap();
    accounts::create_user(&meta, &actor, ALICE.0, ALICE.1, false)
        .await
        .unwrap();
    accounts::create_user(&meta, &actor, BOB.0, BOB.1, false)
        .await
        .unwrap();
    Secured { registry, meta }
}

impl Secured {
    async fn stop(self) {
        self.registry.stop().await;
    }
}

#[derive(Clone, Copy)]
enum As<'a> {
    Anonymous,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

fn with(request: reqwest::RequestBuilder, credentials: As<'_>) -> reqwest::RequestBuilder {
    match credentials {
        As::Anonymous => request,
        As::Basic(user, password) => request.basic_auth(user, Some(password)),
        As::Bearer(token) => request.bearer_auth(token),
    }
}

async fn send(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    credentials: As<'_>,
) -> Response {
    with(registry.request(method, path), credentials)
        .send()
        .await
        .unwrap()
}

/// Pushes a config, a layer and a manifest under `tag`; returns the status of
/// the first request that did not succeed, or of the manifest PUT.
async fn push_as(
    registry: &TestRegistry,
    credentials: As<'_>,
    name: &str,
    tag: &str,
    layer: &[u8],
) -> (StatusCode, String) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    for blob in [&config[..], layer] {
        let response = with(
            registry.request(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/?digest={}", sha256(blob)),
            ),
            credentials,
        )
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
        if response.status() != StatusCode::CREATED {
            let status = response.status();
            return (status, response.text().await.unwrap());
        }
    }
    let manifest = image_manifest(
        (&sha256(config), config.len()),
        &[(&sha256(layer), layer.len())],
    );
    let response = with(
        registry.request(Method::PUT, &format!("/v2/{name}/manifests/{tag}")),
        credentials,
    )
    .header("content-type", OCI_MANIFEST)
    .body(manifest)
    .send()
    .await
    .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

async fn token(
    registry: &TestRegistry,
    credentials: As<'_>,
    scopes: &[&str],
) -> (StatusCode, Value) {
    let mut query: Vec<(&str, &str)> = vec![("service", "kai")];
    query.extend(scopes.iter().map(|scope| ("scope", *scope)));
    let response = with(
        registry.client.get(registry.url("/v2/auth")).query(&query),
        credentials,
    )
    .send()
    .await
    .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The claims of a token, decoded without verifying it.
fn claims(token: &str) -> Claims {
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn challenge_fields(response: &Response) -> std::collections::BTreeMap<String, String> {
    let challenge = header(response, "www-authenticate");
    let (scheme, parameters) = challenge.split_once(' ').unwrap_or((&challenge, ""));
    assert_eq!(scheme, "Bearer", "{challenge}");
    parameters
        .split("\",")
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(key, value)| (key.to_owned(), value.trim_end_matches('"').to_owned()))
        .collect()
}

#[tokio::test]
async fn anonymous_pulls_private_refused_public_allowed() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let alice = As::Basic(ALICE.0, ALICE.1);
    assert_eq!(
        push_as(registry, alice, "alice/private", "v1", b"private layer")
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        push_as(registry, alice, "alice/public", "v1", b"public layer")
            .await
            .0,
        StatusCode::CREATED
    );
    accounts::set_visibility(&secured.meta, &Actor::system(), "alice/public", "public")
        .await
        .unwrap();

    let refused = registry.get("/v2/alice/private/manifests/v1").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let fields = challenge_fields(&refused);
    assert_eq!(fields["realm"], format!("{}/v2/auth", registry.base));
    assert_eq!(fields["service"], "kai");
    assert_eq!(fields["scope"], "repository:alice/private:pull");
    assert_eq!(error_code(refused).await, "UNAUTHORIZED");
    // Blobs too, and an anonymous token grants nothing there.
    let (status, body) = token(registry, As::Anonymous, &["repository:alice/private:pull"]).await;
    assert_eq!(status, StatusCode::OK);
    let anonymous = body["token"].as_str().unwrap();
    assert!(claims(anonymous).access.is_empty());
    let with_token = send(
        registry,
        Method::GET,
        "/v2/alice/private/manifests/v1",
        As::Bearer(anonymous),
    )
    .await;
    assert_eq!(with_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge_fields(&with_token)["error"], "insufficient_scope");

    let allowed = registry.get("/v2/alice/public/manifests/v1").await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let (_, body) = token(
        registry,
        As::Anonymous,
        &["repository:alice/public:pull,push"],
    )
    .await;
    let access = claims(body["token"].as_str().unwrap()).access;
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].actions, ["pull"], "anonymous may pull, not push");
    // Anonymous pushes are challenged, even to a public repository.
    let push = send(
        registry,
        Method::POST,
        "/v2/alice/public/blobs/uploads/",
        As::Anonymous,
    )
    .await;
    assert_eq!(push.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge_fields(&push)["scope"],
        "repository:alice/public:pull,push"
    );
    secured.stop().await;
}

#[tokio::test]
async fn anonymous_pull_can_be_turned_off() {
    let secured = secured(|config| config.auth.anonymous_pull = false).await;
    let registry = &secured.registry;
    push_as(
        registry,
        As::Basic(ALICE.0, ALICE.1),
        "alice/public",
        "v1",
        b"x",
    )
    .await;
    accounts::set_visibility(&secured.meta, &Actor::system(), "alice/public", "public")
        .await
        .unwrap();
    let refused = registry.get("/v2/alice/public/manifests/v1").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // Any account reads a public repository.
    let bob = send(
        registry,
        Method::GET,
        "/v2/alice/public/manifests/v1",
        As::Basic(BOB.0, BOB.1),
    )
    .await;
    assert_eq!(bob.status(), StatusCode::OK);
    secured.stop().await;
}

#[tokio::test]
async fn the_token_flow_end_to_end() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    // 1. The challenge.
    let base = registry.get("/v2/").await;
    assert_eq!(base.status(), StatusCode::UNAUTHORIZED);
    let fields = challenge_fields(&base);
    assert_eq!(fields["realm"], format!("{}/v2/auth", registry.base));
    assert_eq!(fields["service"], "kai");
    // 2. The token, from the realm, for what the client needs.
    let response = registry
        .client
        .get(&fields["realm"])
        .query(&[
            ("service", fields["service"].as_str()),
            ("scope", "repository:alice/app:pull,push"),
        ])
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let issued = claims(&token);
    assert_eq!(issued.sub, "alice");
    assert_eq!(issued.aud, "kai");
    assert_eq!(issued.access[0].name, "alice/app");
    assert_eq!(issued.access[0].actions, ["pull", "push"]);
    // 3. The requests, with the token.
    let bearer = As::Bearer(&token);
    assert_eq!(
        send(registry, Method::GET, "/v2/", bearer).await.status(),
        StatusCode::OK
    );
    let (status, body) = push_as(registry, bearer, "alice/app", "v1", b"layer").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pulled = send(registry, Method::GET, "/v2/alice/app/manifests/v1", bearer).await;
    assert_eq!(pulled.status(), StatusCode::OK);
    // The token covers only what it names.
    let other = send(registry, Method::GET, "/v2/alice/other/tags/list", bearer).await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    let deleted = send(
        registry,
        Method::DELETE,
        "/v2/alice/app/manifests/v1",
        bearer,
    )
    .await;
    assert_eq!(
        deleted.status(),
        StatusCode::UNAUTHORIZED,
        "delete was not asked for"
    );
    assert_eq!(
        challenge_fields(&deleted)["scope"],
        "repository:alice/app:delete"
    );

    // The OAuth2 password grant gives the same.
    let form = registry
        .client
        .post(registry.url("/v2/auth"))
        .form(&[
            ("grant_type", "password"),
            ("username", ALICE.0),
            ("password", ALICE.1),
            ("service", "kai"),
            ("scope", "repository:alice/app:pull"),
            ("client_id", "test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let body: Value = form.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let access = claims(body["access_token"].as_str().unwrap()).access;
    assert_eq!(access[0].actions, ["pull"]);

    // Basic credentials on /v2/ requests work too.
    let basic = send(
        registry,
        Method::GET,
        "/v2/alice/app/manifests/v1",
        As::Basic(ALICE.0, ALICE.1),
    )
    .await;
    assert_eq!(basic.status(), StatusCode::OK);
    secured.stop().await;
}

#[tokio::test]
async fn users_cannot_push_into_other_namespaces() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let bob = As::Basic(BOB.0, BOB.1);
    let (status, body) = push_as(registry, bob, "alice/app", "v1", b"intruder").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("DENIED"), "{body}");
    // Nobody's namespace is nobody's to write.
    let (status, _) = push_as(registry, bob, "nobody/app", "v1", b"x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The token route refuses the same, without granting anything.
    let (_, body) = token(registry, bob, &["repository:alice/app:pull,push"]).await;
    let bob_token = body["token"].as_str().unwrap().to_owned();
    assert!(claims(&bob_token).access.is_empty());
    let (status, _) = push_as(registry, As::Bearer(&bob_token), "alice/app", "v1", b"x").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was stored.
    assert!(!secured
        .meta
        .repository_exists(&"alice/app".parse().unwrap())
        .await
        .unwrap());
    // Administrators may.
    let (status, _) = push_as(registry, As::Basic(ROOT.0, ROOT.1), "alice/app", "v1", b"x").await;
    assert_eq!(status, StatusCode::CREATED);
    secured.stop().await;
}

#[tokio::test]
async fn a_push_creates_a_private_repository_in_your_namespace() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let (status, body) = push_as(
        registry,
        As::Basic(ALICE.0, ALICE.1),
        "alice/team/new",
        "v1",
        b"new",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        secured
            .meta
            .repository_visibility("alice/team/new")
            .await
            .unwrap()
            .as_deref(),
        Some("private")
    );
    assert_eq!(
        registry
            .get("/v2/alice/team/new/manifests/v1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let bob = send(
        registry,
        Method::GET,
        "/v2/alice/team/new/manifests/v1",
        As::Basic(BOB.0, BOB.1),
    )
    .await;
    assert_eq!(bob.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(bob).await, "DENIED");
    secured.stop().await;
}

#[tokio::test]
async fn default_visibility_public_makes_new_repositories_public() {
    let public = secured(|config| config.auth.default_visibility = "public".into()).await;
    let registry = &public.registry;
    push_as(
        registry,
        As::Basic(ALICE.0, ALICE.1),
        "alice/open",
        "v1",
        b"o",
    )
    .await;
    assert_eq!(
        registry.get("/v2/alice/open/manifests/v1").await.status(),
        StatusCode::OK
    );
    public.stop().await;
}

#[tokio::test]
async fn organisations_teams_and_robots() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let meta = &secured.meta;
    let actor = Actor::system();
    accounts::create_organization(meta, &actor, "acme", ALICE.0)
        .await
        .unwrap();
    accounts::create_team(meta, &actor, "acme/readers", TeamRole::Member)
        .await
        .unwrap();
    accounts::add_team_member(meta, &actor, "acme/readers", BOB.0)
        .await
        .unwrap();
    let robot_token =
        accounts::create_robot(meta, &actor, "acme+ci", &[("app".to_owned(), Role::Write)])
            .await
            .unwrap();
    let robot = As::Basic("acme+ci", &robot_token);

    // The owner (team owners, admin) creates; the robot writes its one repository.
    assert_eq!(
        push_as(
            registry,
            As::Basic(ALICE.0, ALICE.1),
            "acme/base",
            "v1",
            b"b"
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (status, body) = push_as(registry, robot, "acme/app", "v1", b"robot").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // ... and nothing else: not another repository of the organisation.
    let (status, body) = push_as(registry, robot, "acme/other", "v1", b"robot").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let pull = send(registry, Method::GET, "/v2/acme/base/manifests/v1", robot).await;
    assert_eq!(pull.status(), StatusCode::FORBIDDEN);
    let (_, body) = token(
        registry,
        robot,
        &[
            "repository:acme/other:pull,push",
            "repository:acme/app:pull,push",
        ],
    )
    .await;
    let access = claims(body["token"].as_str().unwrap()).access;
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].name, "acme/app");
    // A member team reads every repository of the organisation, writes none.
    let bob = As::Basic(BOB.0, BOB.1);
    assert_eq!(
        send(registry, Method::GET, "/v2/acme/base/manifests/v1", bob)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        push_as(registry, bob, "acme/base", "v2", b"bob").await.0,
        StatusCode::FORBIDDEN
    );
    // A grant to the team on one repository lifts it there.
    accounts::grant(meta, &actor, "acme/base", "acme/readers", Role::Write)
        .await
        .unwrap();
    assert_eq!(
        push_as(registry, bob, "acme/base", "v2", b"bob").await.0,
        StatusCode::CREATED
    );
    // A revoked robot token stops working.
    let new_token = accounts::regenerate_robot_token(meta, &actor, "acme+ci")
        .await
        .unwrap();
    assert_eq!(
        send(registry, Method::GET, "/v2/", robot).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            registry,
            Method::GET,
            "/v2/",
            As::Basic("acme+ci", &new_token)
        )
        .await
        .status(),
        StatusCode::OK
    );
    // A robot cannot be granted another namespace's repositories.
    assert!(
        accounts::grant(meta, &actor, "alice/app", "acme+ci", Role::Read)
            .await
            .is_err()
    );
    secured.stop().await;
}

#[tokio::test]
async fn personal_access_tokens_log_in_and_can_be_revoked() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let (id, pat) = accounts::create_access_token(&secured.meta, &Actor::system(), ALICE.0, "ci")
        .await
        .unwrap();
    assert!(pat.starts_with("kai_pat_"));
    let (status, body) = token(
        registry,
        As::Basic(ALICE.0, &pat),
        &["repository:alice/app:push"],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims(body["token"].as_str().unwrap()).sub, "alice");
    // Bob cannot use Alice's token.
    assert_eq!(
        token(registry, As::Basic(BOB.0, &pat), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    accounts::delete_access_token(&secured.meta, &Actor::system(), ALICE.0, &id)
        .await
        .unwrap();
    assert_eq!(
        token(registry, As::Basic(ALICE.0, &pat), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    secured.stop().await;
}

#[tokio::test]
async fn expired_forged_and_other_service_tokens_are_refused() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    // A token for the service works; one is asked for another service is refused.
    let (status, body) = token(
        registry,
        As::Basic(ALICE.0, ALICE.1),
        &["repository:alice/app:pull"],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let good = body["token"].as_str().unwrap().to_owned();
    let wrong_service = registry
        .client
        .get(registry.url("/v2/auth?service=elsewhere"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_service.status(), StatusCode::BAD_REQUEST);

    // Tokens signed with the registry's own key but expired, or for another
    // audience, are refused; so is one signed by another key.
    let stored = secured.meta.signing_keys().await.unwrap();
    let current = stored.iter().find(|key| key.retired_at.is_none()).unwrap();
    let key = kai_auth::SigningKey::from_seed(current.id.clone(), &current.private_key).unwrap();
    let now = kai_meta::unix_now();
    let mut template = claims(&good);
    template.access[0].actions = vec!["pull".into()];
    let expired = key.sign(&Claims {
        exp: now - 1,
        ..template.clone()
    });
    let other_audience = key.sign(&Claims {
        aud: "elsewhere".into(),
        ..template.clone()
    });
    let forged = kai_auth::SigningKey::from_seed(current.id.clone(), &[9; 32])
        .unwrap()
        .sign(&template);
    for (what, token) in [
        ("expired", expired.as_str()),
        ("other audience", other_audience.as_str()),
        ("forged", forged.as_str()),
        ("garbage", "not.a.token"),
    ] {
        let response = send(registry, Method::GET, "/v2/", As::Bearer(token)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            challenge_fields(&response)["error"],
            "invalid_token",
            "{what}"
        );
    }
    assert_eq!(
        send(registry, Method::GET, "/v2/", As::Bearer(&good))
            .await
            .status(),
        StatusCode::OK
    );

    // After a key rotation, the old token still verifies and new ones use the new key.
    let new_key = accounts::rotate_signing_key(&secured.meta, &Actor::system(), 300)
        .await
        .unwrap();
    assert_eq!(
        send(registry, Method::GET, "/v2/", As::Bearer(&good))
            .await
            .status(),
        StatusCode::OK
    );
    let (_, body) = token(registry, As::Basic(ALICE.0, ALICE.1), &[]).await;
    let fresh = body["token"].as_str().unwrap().to_owned();
    assert_eq!(kai_auth::jwt::key_id(&fresh).unwrap(), new_key);
    assert_eq!(
        send(registry, Method::GET, "/v2/", As::Bearer(&fresh))
            .await
            .status(),
        StatusCode::OK
    );
    secured.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_refused_then_throttled() {
    let secured = secured(|config| config.auth.max_failed_logins = 3).await;
    let registry = &secured.registry;
    for attempt in 1..=3 {
        let (status, body) = token(registry, As::Basic(ALICE.0, "wrong"), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }
    // Now even the right password waits.
    let response = registry
        .client
        .get(registry.url("/v2/auth?service=kai"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(response).await, "TOOMANYREQUESTS");
    // So do Basic logins on /v2/; other accounts do not.
    assert_eq!(
        send(registry, Method::GET, "/v2/", As::Basic(ALICE.0, ALICE.1))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(registry, Method::GET, "/v2/", As::Basic(BOB.0, BOB.1))
            .await
            .status(),
        StatusCode::OK
    );
    // An unknown account is refused like a wrong password.
    assert_eq!(
        token(registry, As::Basic("nobody", "x"), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    secured.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let secured = secured(|config| config.auth.max_failed_logins_per_address = 2).await;
    let registry = &secured.registry;
    for name in ["nobody1", "nobody2"] {
        assert_eq!(
            token(registry, As::Basic(name, "x"), &[]).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        token(registry, As::Basic(BOB.0, BOB.1), &[]).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    secured.stop().await;
}

#[tokio::test]
async fn another_accounts_upload_session_is_unknown() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let meta = &secured.meta;
    let actor = Actor::system();
    accounts::create_organization(meta, &actor, "acme", ALICE.0)
        .await
        .unwrap();
    accounts::create_team(meta, &actor, "acme/devs", TeamRole::Creator)
        .await
        .unwrap();
    accounts::add_team_member(meta, &actor, "acme/devs", BOB.0)
        .await
        .unwrap();
    let alice = As::Basic(ALICE.0, ALICE.1);
    let bob = As::Basic(BOB.0, BOB.1);
    let started = send(registry, Method::POST, "/v2/acme/app/blobs/uploads/", alice).await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = header(&started, "location");
    let bytes = b"alice's bytes".to_vec();
    let digest = sha256(&bytes);

    // Bob may push to acme/app, but not into Alice's session.
    let status = send(registry, Method::GET, &location, bob).await;
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(status).await, "BLOB_UPLOAD_UNKNOWN");
    let patch = with(registry.request(Method::PATCH, &location), bob)
        .body(b"bob's bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(patch).await, "BLOB_UPLOAD_UNKNOWN");
    let put = with(
        registry.request(Method::PUT, &format!("{location}?digest={digest}")),
        bob,
    )
    .body(bytes.clone())
    .send()
    .await
    .unwrap();
    assert_eq!(error_code(put).await, "BLOB_UPLOAD_UNKNOWN");
    let cancel = send(registry, Method::DELETE, &location, bob).await;
    assert_eq!(error_code(cancel).await, "BLOB_UPLOAD_UNKNOWN");
    // Bob's token is the same account either way.
    let (_, body) = token(registry, bob, &["repository:acme/app:pull,push"]).await;
    let bob_token = body["token"].as_str().unwrap().to_owned();
    let status = send(registry, Method::GET, &location, As::Bearer(&bob_token)).await;
    assert_eq!(error_code(status).await, "BLOB_UPLOAD_UNKNOWN");

    // Alice's session is untouched: she finishes it, by Basic or by token.
    let (_, body) = token(registry, alice, &["repository:acme/app:pull,push"]).await;
    let alice_token = body["token"].as_str().unwrap().to_owned();
    let status = send(registry, Method::GET, &location, As::Bearer(&alice_token)).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-0");
    let put = with(
        registry.request(Method::PUT, &format!("{location}?digest={digest}")),
        alice,
    )
    .body(bytes)
    .send()
    .await
    .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    secured.stop().await;
}

#[tokio::test]
async fn mounting_needs_pull_on_the_source() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    push_as(
        registry,
        As::Basic(ALICE.0, ALICE.1),
        "alice/secret",
        "v1",
        b"secret layer",
    )
    .await;
    let digest = sha256(b"secret layer");
    let bob = As::Basic(BOB.0, BOB.1);
    let mount = send(
        registry,
        Method::POST,
        &format!("/v2/bob/copy/blobs/uploads/?mount={digest}&from=alice/secret"),
        bob,
    )
    .await;
    assert_eq!(
        mount.status(),
        StatusCode::ACCEPTED,
        "no mount: an upload session instead"
    );
    assert_eq!(
        send(
            registry,
            Method::HEAD,
            &format!("/v2/bob/copy/blobs/{digest}"),
            bob
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    accounts::set_visibility(&secured.meta, &Actor::system(), "alice/secret", "public")
        .await
        .unwrap();
    let mount = send(
        registry,
        Method::POST,
        &format!("/v2/bob/copy/blobs/uploads/?mount={digest}&from=alice/secret"),
        bob,
    )
    .await;
    assert_eq!(mount.status(), StatusCode::CREATED);
    secured.stop().await;
}

async fn catalog(registry: &TestRegistry, credentials: As<'_>) -> Vec<String> {
    let response = send(registry, Method::GET, "/v2/_catalog", credentials).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_catalog_lists_only_what_the_caller_may_see() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let alice = As::Basic(ALICE.0, ALICE.1);
    let bob = As::Basic(BOB.0, BOB.1);
    push_as(registry, alice, "alice/a", "v1", b"a").await;
    push_as(registry, alice, "alice/pub", "v1", b"p").await;
    push_as(registry, bob, "bob/b", "v1", b"b").await;
    push_as(
        registry,
        As::Basic(ROOT.0, ROOT.1),
        "alice_x/lookalike",
        "v1",
        b"l",
    )
    .await;
    accounts::set_visibility(&secured.meta, &Actor::system(), "alice/pub", "public")
        .await
        .unwrap();
    accounts::grant(
        &secured.meta,
        &Actor::system(),
        "alice/a",
        BOB.0,
        Role::Read,
    )
    .await
    .unwrap();

    assert_eq!(catalog(registry, alice).await, ["alice/a", "alice/pub"]);
    assert_eq!(
        catalog(registry, bob).await,
        ["alice/a", "alice/pub", "bob/b"]
    );
    assert_eq!(
        catalog(registry, As::Basic(ROOT.0, ROOT.1)).await,
        ["alice/a", "alice/pub", "alice_x/lookalike", "bob/b"]
    );
    // Anonymous clients follow the challenge to an anonymous token.
    let refused = registry.get("/v2/_catalog").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge_fields(&refused)["scope"], "registry:catalog:*");
    let (_, body) = token(registry, As::Anonymous, &["registry:catalog:*"]).await;
    let anonymous = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        catalog(registry, As::Bearer(&anonymous)).await,
        ["alice/pub"]
    );
    // Pagination still works on the filtered list.
    let page = send(registry, Method::GET, "/v2/_catalog?n=1", bob).await;
    assert!(header(&page, "link").contains("last=alice%2Fa"));
    secured.stop().await;
}

#[tokio::test]
async fn the_audit_log_records_pushes_tag_moves_and_failed_logins() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let alice = As::Basic(ALICE.0, ALICE.1);
    push_as(registry, alice, "alice/app", "v1", b"one").await;
    push_as(registry, alice, "alice/app", "v1", b"two").await;
    token(registry, As::Basic(BOB.0, "not bob's password"), &[]).await;
    let deleted = send(
        registry,
        Method::DELETE,
        "/v2/alice/app/manifests/v1",
        alice,
    )
    .await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);

    let response = send(
        registry,
        Method::GET,
        "/api/v1/audit?limit=50",
        As::Basic(ROOT.0, ROOT.1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let records = body["records"].as_array().unwrap();
    let find = |action: &str, target: &str| {
        records
            .iter()
            .find(|record| record["action"] == action && record["target"] == target)
            .unwrap_or_else(|| panic!("no {action} of {target} in {records:#?}"))
            .clone()
    };
    let push = find("push", "alice/app:v1");
    assert_eq!(push["actor"], "alice");
    assert_eq!(push["address"], "127.0.0.1");
    assert_eq!(push["outcome"], "success");
    assert!(push["at"].as_i64().unwrap() > 0);
    assert!(push["detail"].as_str().unwrap().starts_with("sha256:"));
    let moved = find("tag.move", "alice/app:v1");
    assert!(moved["detail"].as_str().unwrap().contains(" -> "));
    let failed = records
        .iter()
        .find(|record| record["action"] == "login" && record["outcome"] == "failure")
        .expect("the failed login");
    assert_eq!(failed["actor"], "bob");
    assert_eq!(failed["address"], "127.0.0.1");
    find("delete", "alice/app:v1");
    assert!(records
        .iter()
        .any(|record| record["action"] == "login" && record["outcome"] == "success"));
    // Only administrators read it.
    let refused = send(registry, Method::GET, "/api/v1/audit", alice).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    secured.stop().await;
}

#[tokio::test]
async fn the_rest_api_manages_accounts() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let root = As::Basic(ROOT.0, ROOT.1);
    let alice = As::Basic(ALICE.0, ALICE.1);
    let api = |method: Method, path: &str, credentials: As<'_>, body: Option<Value>| {
        let mut request = with(
            registry.request(method, &format!("/api/v1{path}")),
            credentials,
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    // Whoami, with Basic and with a bearer token from /v2/auth.
    let me: Value = api(Method::GET, "/user", alice, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "alice");
    let (_, body) = token(registry, alice, &[]).await;
    let bearer = body["token"].as_str().unwrap().to_owned();
    let me: Value = api(Method::GET, "/user", As::Bearer(&bearer), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "alice");
    assert_eq!(
        api(Method::GET, "/user", As::Anonymous, None)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Users: administrators only.
    let carol = json!({"name": "carol", "password": "carol-password"});
    assert_eq!(
        api(Method::POST, "/users", alice, Some(carol.clone()))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api(Method::POST, "/users", root, Some(carol.clone()))
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        api(Method::POST, "/users", root, Some(carol))
            .await
            .unwrap()
            .status(),
        StatusCode::CONFLICT
    );
    let bad = api(
        Method::POST,
        "/users",
        root,
        Some(json!({"name": "Carol!", "password": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // An organisation, a team, a robot with a grant.
    let org = api(Method::POST, "/orgs", alice, Some(json!({"name": "acme"})))
        .await
        .unwrap();
    assert_eq!(org.status(), StatusCode::CREATED);
    let team = api(
        Method::POST,
        "/orgs/acme/teams",
        alice,
        Some(json!({"name": "devs", "role": "creator"})),
    )
    .await
    .unwrap();
    assert_eq!(team.status(), StatusCode::CREATED);
    assert_eq!(
        api(
            Method::PUT,
            "/orgs/acme/teams/devs/members/carol",
            alice,
            None
        )
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    // Bob is no administrator of acme.
    assert_eq!(
        api(
            Method::PUT,
            "/orgs/acme/teams/devs/members/bob",
            As::Basic(BOB.0, BOB.1),
            None
        )
        .await
        .unwrap()
        .status(),
        StatusCode::FORBIDDEN
    );
    let robot = api(
        Method::POST,
        "/namespaces/acme/robots",
        alice,
        Some(json!({"name": "ci", "grants": [{"repository": "app", "role": "write"}]})),
    )
    .await
    .unwrap();
    assert_eq!(robot.status(), StatusCode::CREATED);
    let robot: Value = robot.json().await.unwrap();
    assert_eq!(robot["name"], "acme+ci");
    assert_eq!(robot["grants"][0]["repository"], "acme/app");
    let robot_token = robot["token"].as_str().unwrap().to_owned();
    let (status, _) = push_as(
        registry,
        As::Basic("acme+ci", &robot_token),
        "acme/app",
        "v1",
        b"r",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Repository visibility and grants, names with %2F.
    let visibility = api(
        Method::PUT,
        "/repositories/acme%2Fapp/visibility",
        alice,
        Some(json!({"visibility": "public"})),
    )
    .await
    .unwrap();
    assert_eq!(visibility.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        registry.get("/v2/acme/app/manifests/v1").await.status(),
        StatusCode::OK
    );
    let grant = api(
        Method::PUT,
        "/repositories/acme%2Fapp/permissions/bob",
        alice,
        Some(json!({"role": "write"})),
    )
    .await
    .unwrap();
    assert_eq!(grant.status(), StatusCode::NO_CONTENT);
    let permissions: Value = api(
        Method::GET,
        "/repositories/acme%2Fapp/permissions",
        alice,
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let grantees: BTreeSet<&str> = permissions["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|grant| grant["grantee"].as_str().unwrap())
        .collect();
    assert_eq!(grantees, BTreeSet::from(["acme+ci", "bob"]));
    let repository: Value = api(
        Method::GET,
        "/repositories/acme%2Fapp",
        As::Basic(BOB.0, BOB.1),
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(repository["role"], "write");
    assert_eq!(repository["visibility"], "public");

    // Tokens: create, use, list, revoke.
    let created: Value = api(
        Method::POST,
        "/users/alice/tokens",
        alice,
        Some(json!({"name": "laptop"})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let pat = created["token"].as_str().unwrap();
    assert_eq!(
        api(Method::GET, "/user", As::Basic(ALICE.0, pat), None)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let listed: Value = api(Method::GET, "/users/alice/tokens", alice, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tokens"][0]["name"], "laptop");
    assert!(
        listed.to_string().find(pat).is_none(),
        "no secret in listings"
    );
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        api(
            Method::DELETE,
            &format!("/users/alice/tokens/{id}"),
            alice,
            None
        )
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    // Passwords: self-service.
    assert_eq!(
        api(
            Method::PUT,
            "/users/alice/password",
            alice,
            Some(json!({"password": "alice-new-password"}))
        )
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api(
            Method::GET,
            "/user",
            As::Basic(ALICE.0, "alice-new-password"),
            None
        )
        .await
        .unwrap()
        .status(),
        StatusCode::OK
    );
    secured.stop().await;
}

/// Fills a route template's parameters with harmless values.
fn concrete(path: &str) -> String {
    path.replace("{name}", "nobody")
        .replace("{id}", "0")
        .replace("{org}", "noorg")
        .replace("{team}", "noteam")
        .replace("{member}", "nobody")
        .replace("{namespace}", "nobody")
        .replace("{robot}", "nobody+robot")
        .replace("{grantee}", "nobody")
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let response = registry.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(document["servers"][0]["url"], "/api/v1");
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            assert!(
                operation["summary"].is_string() && operation["responses"].is_object(),
                "{method} {path} needs a summary and responses"
            );
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = kai::http::api::ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json documents routes that do not exist: {extra:?}"
    );

    // And each documented route is really routed: it answers with its own
    // handler, not the API's 404 for unknown routes, nor 405.
    for (method, path) in &documented {
        let method: Method = method.parse().unwrap();
        let url = format!("/api/v1{}", concrete(path));
        let response = with(
            registry.request(method.clone(), &url),
            As::Basic(ROOT.0, ROOT.1),
        )
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
        assert!(
            !body.contains("API route"),
            "{method} {url} is not routed: {status} {body}"
        );
    }
    let unknown = registry.get("/api/v1/nothing-here").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(unknown.text().await.unwrap().contains("API route"));
    secured.stop().await;
}

#[tokio::test]
async fn oci_client_pushes_and_pulls_with_basic_credentials() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config as ImageConfig, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    let secured = secured(|_| {}).await;
    let registry = &secured.registry;
    let host = registry.base.trim_start_matches("http://").to_owned();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference = oci_client::Reference::with_tag(host.clone(), "alice/oci".into(), "v1".into());
    let alice = RegistryAuth::Basic(ALICE.0.into(), ALICE.1.into());
    let layer = b"a layer pushed by oci-client with basic auth".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    client
        .push(
            &reference,
            &[ImageLayer::oci_v1_gzip(layer.clone(), None)],
            ImageConfig::oci_v1(config, None),
            &alice,
            None,
        )
        .await
        .expect("alice pushes to her namespace");
    let pulled = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
    .pull(
        &reference,
        &alice,
        vec![oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE],
    )
    .await
    .expect("alice pulls it back");
    assert_eq!(pulled.layers[0].data, layer);

    // Bob may not push there, nor pull the private image; anonymous neither.
    let bob = RegistryAuth::Basic(BOB.0.into(), BOB.1.into());
    let fresh = || {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    };
    assert!(fresh()
        .pull(
            &reference,
            &bob,
            vec![oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE]
        )
        .await
        .is_err());
    assert!(fresh()
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec![oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE]
        )
        .await
        .is_err());
    let wrong = RegistryAuth::Basic(ALICE.0.into(), "wrong".into());
    assert!(fresh()
        .pull(
            &reference,
            &wrong,
            vec![oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE]
        )
        .await
        .is_err());
    secured.stop().await;
}

// --- the binary ---------------------------------------------------------------------------------

const KAI: &str = env!("CARGO_BIN_EXE_kai");

/// Runs `kai ARGS --data DATA`, feeding `input`; returns stdout, failing on
/// a non-zero exit.
fn kai_command(data: &std::path::Path, arguments: &[&str], input: Option<&str>) -> String {
    use std::io::Write as _;
    let mut command = std::process::Command::new(KAI);
    for (key, _) in std::env::vars() {
        if key.starts_with("KAI_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(arguments)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kai runs");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "kai {arguments:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

#[tokio::test]
async fn cli_commands_create_what_they_say_and_the_log_keeps_no_secrets() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let admin_password = "first-admin-password-Zq7";

    // `kai serve` on a fresh directory makes `admin` from KAI_ADMIN_PASSWORD.
    let log_path = directory.path().join("kai.log");
    let mut command = tokio::process::Command::new(KAI);
    for (key, _) in std::env::vars() {
        if key.starts_with("KAI_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("KAI_ADMIN_PASSWORD", admin_password)
        .env("KAI_LOG__LEVEL", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line.replace("listening on ", "");
    let client = reqwest::Client::new();

    // The CLI, on the same data while the server runs.
    let alice_password = "alice-cli-password-Xy9";
    let out = kai_command(
        &data,
        &["user", "create", "alice", "--password-stdin"],
        Some(&format!("{alice_password}\n")),
    );
    assert!(out.contains("created user alice"), "{out}");
    let generated = kai_command(&data, &["user", "create", "bob"], None);
    let bob_password = last_line(&generated)
        .strip_prefix("password: ")
        .unwrap()
        .to_owned();
    kai_command(&data, &["org", "create", "acme", "--owner", "alice"], None);
    kai_command(
        &data,
        &["team", "create", "acme/devs", "--role", "creator"],
        None,
    );
    kai_command(&data, &["team", "add", "acme/devs", "bob"], None);
    let robot = kai_command(
        &data,
        &["robot", "create", "acme+ci", "--grant", "acme/app=write"],
        None,
    );
    let robot_token = last_line(&robot);
    assert!(robot_token.starts_with("kai_robot_"), "{robot}");
    kai_command(&data, &["repo", "grant", "acme/app", "bob", "admin"], None);
    kai_command(&data, &["repo", "visibility", "acme/app", "public"], None);
    let pat_output = kai_command(&data, &["token", "create", "alice", "--name", "ci"], None);
    let pat = last_line(&pat_output);
    assert!(pat.starts_with("kai_pat_"), "{pat_output}");

    let url = format!("sqlite://{}", data.join("kai.db").display());
    let meta = MetaStore::open(&url).await.unwrap();
    assert!(meta.account("admin").await.unwrap().unwrap().admin);
    assert!(!meta.account("alice").await.unwrap().unwrap().admin);
    let teams = meta.teams("acme").await.unwrap();
    let devs = teams.iter().find(|team| team.name == "devs").unwrap();
    assert_eq!(devs.role, TeamRole::Creator);
    assert_eq!(devs.members, ["bob"]);
    let grants = meta.grants("acme/app").await.unwrap();
    assert_eq!(grants.len(), 2);
    assert!(grants
        .iter()
        .any(|grant| grant.grantee == "acme+ci" && grant.role == Role::Write));
    assert!(grants
        .iter()
        .any(|grant| grant.grantee == "bob" && grant.role == Role::Admin));
    assert_eq!(
        meta.repository_visibility("acme/app")
            .await
            .unwrap()
            .as_deref(),
        Some("public")
    );
    assert_eq!(meta.access_tokens("alice").await.unwrap()[0].name, "ci");

    // Every credential works against the running server.
    for (user, secret) in [
        ("admin", admin_password),
        ("alice", alice_password),
        ("bob", bob_password.as_str()),
        ("acme+ci", robot_token.as_str()),
        ("alice", pat.as_str()),
    ] {
        let response = client
            .get(format!(
                "{base}/v2/auth?service=kai&scope=repository:acme/app:pull"
            ))
            .basic_auth(user, Some(secret))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{user}");
    }
    // A push by the robot, a failed login, a token: things worth logging.
    let response = client
        .post(format!(
            "{base}/v2/acme/app/blobs/uploads/?digest={}",
            sha256(b"x")
        ))
        .basic_auth("acme+ci", Some(&robot_token))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let wrong_password = "wrong-password-Qw3";
    let refused = client
        .get(format!("{base}/v2/auth?service=kai"))
        .basic_auth("alice", Some(wrong_password))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body = refused.text().await.unwrap();
    assert!(!body.contains(wrong_password));
    let token: Value = client
        .get(format!(
            "{base}/v2/auth?service=kai&scope=repository:acme/app:pull"
        ))
        .basic_auth("alice", Some(alice_password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["token"].as_str().unwrap().to_owned();
    assert_eq!(
        client
            .get(format!("{base}/v2/acme/app/tags/list"))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "the token authorizes the pull"
    );

    // The audit log, from the command line.
    let audit = kai_command(&data, &["audit", "--limit", "100"], None);
    assert!(audit.contains("robot.create"), "{audit}");
    assert!(audit.contains("repo.grant"), "{audit}");
    assert!(audit.contains("repo.visibility"), "{audit}");
    assert!(audit.contains("login  alice  failure"), "{audit}");
    assert!(audit.contains("token.create"), "{audit}");

    // Key rotation from the command line while the server runs.
    let rotated = kai_command(&data, &["auth", "rotate-key"], None);
    assert!(rotated.contains("new token signing key"), "{rotated}");
    assert_eq!(
        client
            .get(format!("{base}/v2/"))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "tokens signed with the old key stay valid"
    );

    let mut hashes: Vec<String> = Vec::new();
    for name in ["admin", "alice", "bob"] {
        let secrets = meta.account_secrets(name).await.unwrap().unwrap();
        hashes.push(secrets.password_hash.unwrap());
    }
    meta.close().await;
    child.kill().await.unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("request"), "the log has request lines: {log}");
    for secret in [
        admin_password,
        alice_password,
        bob_password.as_str(),
        robot_token.as_str(),
        pat.as_str(),
        wrong_password,
        jwt.as_str(),
    ]
    .into_iter()
    .chain(hashes.iter().map(String::as_str))
    {
        assert!(
            !log.contains(secret),
            "a secret is in the server log:\n{log}"
        );
    }
    // Even a fragment of a token's signature would be too much.
    assert!(!log.contains(jwt.rsplit('.').next().unwrap()));
}
