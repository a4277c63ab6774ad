"""Raw HTTP against the registry under test, standing in for clients we cannot run here.

Each subcommand is one check of the client suite: it exits 0 when the check
passes, and otherwise prints the failing request with what was expected and
what came back, then exits 1.

The registry is $REGISTRY_URL (http://127.0.0.1:PORT). When $REGISTRY_USER is
set, requests answer a 401 challenge the way clients do: Basic, or Bearer with
a token fetched from the challenge's realm with those credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures  # noqa: E402
from fixtures import (  # noqa: E402
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Artifact,
    platform_string,
    sha256,
)

ACCEPT_ALL = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
ACCEPT_DOCKER_ONLY = ", ".join([DOCKER_MANIFEST, DOCKER_LIST])

class CheckFailed(Exception):
    pass

class Response:
    def __init__(self, method: str, url: str, status: int, headers, body: bytes):
        self.method = method
        self.url = url
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def describe(self) -> str:
        body = self.body[:400].decode(errors="replace")
        return f"{self.method} {self.url} -> {self.status} {dict(self.headers)} body={body!r}"

def expect(condition: bool, request: Response | str, expected: str, got: str) -> None:
    if not condition:
        where = request.describe() if isinstance(request, Response) else request
        raise CheckFailed(f"request: {where}\n  expected: {expected}\n  got:      {got}")

class Registry:
    def __init__(self, url: str, user: str | None = None, password: str | None = None):
        self.url = url.rstrip("/")
        self.user = user
        self.password = password
        self.authorization: str | None = None
        self.opener = urllib.request.build_opener()

    def request(self, method: str, path_or_url: str, headers=None, body: bytes | None = None) -> Response:
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        headers = dict(headers or {})
        response = self._send(method, url, headers, body)
        if response.status == 401 and self.user is not None:
            self.authorization = self._authorize(response.header("WWW-Authenticate") or "")
            response = self._send(method, url, headers, body)
        return response

    def _send(self, method, url, headers, body) -> Response:
        if self.authorization:
            headers["Authorization"] = self.authorization
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self.opener.open(request, timeout=60) as reply:
                return Response(method, url, reply.status, reply.headers, reply.read())
        except urllib.error.HTTPError as error:
            return Response(method, url, error.code, error.headers, error.read())

    def _authorize(self, challenge: str) -> str:
        basic = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            return f"Basic {basic}"
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        query = {key: fields[key] for key in ("service", "scope") if key in fields}
        token_url = fields["realm"] + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(token_url, headers={"Authorization": f"Basic {basic}"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            token = json.load(reply)
        return "Bearer " + (token.get("token") or token["access_token"])

def registry_from_env() -> Registry:
    return Registry(
        os.environ["REGISTRY_URL"],
        os.environ.get("REGISTRY_USER") or None,
        os.environ.get("REGISTRY_PASSWORD"),
    )

# --- pushing, in the order BuildKit (containerd's pusher) sends requests ---------------------

def push_blob(registry: Registry, repository: str, blob: fixtures.Blob) -> None:
    """HEAD; if absent POST an upload and PUT the whole blob with ?digest= (containerd's way)."""
    head = registry.request("HEAD", f"/v2/{repository}/blobs/{blob.digest}")
    if head.status == 200:
        expect(
            head.header("Content-Length") == str(len(blob.data)),
            head,
            f"Content-Length {len(blob.data)}",
            str(head.header("Content-Length")),
        )
        return
    expect(head.status == 404, head, "404 for a blob not yet pushed", str(head.status))
    start = registry.request("POST", f"/v2/{repository}/blobs/uploads/", {"Content-Length": "0"}, b"")
    expect(start.status == 202, start, "202 Accepted", str(start.status))
    location = start.header("Location")
    expect(bool(location), start, "a Location header", "none")
    location = urllib.parse.urljoin(registry.url + "/", location)
    separator = "&" if "?" in location else "?"
    put_url = f"{location}{separator}digest={urllib.parse.quote(blob.digest)}"
    put = registry.request(
        "PUT",
        put_url,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob.data))},
        blob.data,
    )
    expect(put.status == 201, put, "201 Created", str(put.status))
    expect(
        put.header("Docker-Content-Digest") == blob.digest,
        put,
        f"Docker-Content-Digest {blob.digest}",
        str(put.header("Docker-Content-Digest")),
    )

def push_manifest(registry: Registry, repository: str, reference: str, manifest: fixtures.Blob) -> Response:
    head = registry.request("HEAD", f"/v2/{repository}/manifests/{reference}", {"Accept": ACCEPT_ALL})
    expect(head.status in (200, 404), head, "200 or 404", str(head.status))
    put = registry.request(
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        {"Content-Type": manifest.media_type},
        manifest.data,
    )
    expect(put.status == 201, put, f"201 Created for {manifest.media_type}", str(put.status))
    expect(
        put.header("Docker-Content-Digest") == manifest.digest,
        put,
        f"Docker-Content-Digest {manifest.digest}",
        str(put.header("Docker-Content-Digest")),
    )
    return put

def push_artifact(registry: Registry, repository: str, tag: str, artifact: Artifact) -> Response:
    """Blobs, then child manifests by digest, then the root by tag."""
    for blob in artifact.blobs:
        push_blob(registry, repository, blob)
    for child in artifact.children:
        push_manifest(registry, repository, child.digest, child)
    return push_manifest(registry, repository, tag, artifact.root)

def verify_artifact(registry: Registry, repository: str, tag: str, artifact: Artifact) -> None:
    """Pull everything back and compare byte for byte."""
    for reference in (tag, artifact.root.digest):
        get = registry.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": ACCEPT_ALL})
        expect(get.status == 200, get, "200", str(get.status))
        expect(get.body == artifact.root.data, get, "the pushed bytes", f"{len(get.body)} different bytes")
        expect(
            get.header("Content-Type") == artifact.root.media_type,
            get,
            f"Content-Type {artifact.root.media_type}",
            str(get.header("Content-Type")),
        )
        expect(
            get.header("Docker-Content-Digest") == artifact.root.digest,
            get,
            f"Docker-Content-Digest {artifact.root.digest}",
            str(get.header("Docker-Content-Digest")),
        )
    head = registry.request("HEAD", f"/v2/{repository}/manifests/{tag}", {"Accept": ACCEPT_ALL})
    expect(head.status == 200, head, "200", str(head.status))
    expect(
        head.header("Docker-Content-Digest") == artifact.root.digest,
        head,
        f"Docker-Content-Digest {artifact.root.digest}",
        str(head.header("Docker-Content-Digest")),
    )
    expect(
        head.header("Content-Length") == str(len(artifact.root.data)),
        head,
        f"Content-Length {len(artifact.root.data)}",
        str(head.header("Content-Length")),
    )
    for child in artifact.children:
        get = registry.request("GET", f"/v2/{repository}/manifests/{child.digest}", {"Accept": ACCEPT_ALL})
        expect(get.status == 200, get, "200", str(get.status))
        expect(get.body == child.data, get, "the pushed bytes", f"{len(get.body)} different bytes")
        expect(
            get.header("Content-Type") == child.media_type,
            get,
            f"Content-Type {child.media_type}",
            str(get.header("Content-Type")),
        )
    for blob in artifact.blobs:
        get = registry.request("GET", f"/v2/{repository}/blobs/{blob.digest}")
        expect(get.status == 200, get, "200", str(get.status))
        expect(get.body == blob.data, get, f"the {len(blob.data)} pushed bytes", f"{len(get.body)} bytes that differ")

# --- subcommands --------------------------------------------------------------------------------

def cmd_push_shape(shape: str, name: str, repository: str, tag: str) -> None:
    """Push a fixture in BuildKit's order, then pull every piece back and compare."""
    registry = registry_from_env()
    artifact = fixtures.SHAPES[shape](name)
    push_artifact(registry, repository, tag, artifact)
    verify_artifact(registry, repository, tag, artifact)
    print(artifact.root.digest)

def cmd_digest(repository: str, reference: str) -> None:
    """Print the digest the registry serves for a reference, checked against the body."""
    registry = registry_from_env()
    get = registry.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": ACCEPT_ALL})
    expect(get.status == 200, get, "200", str(get.status))
    digest = get.header("Docker-Content-Digest")
    expect(digest == sha256(get.body), get, f"Docker-Content-Digest {sha256(get.body)}", str(digest))
    print(digest)

def cmd_manifest(repository: str, reference: str, accept: str = ACCEPT_ALL) -> None:
    """Print a manifest's body as served (for jq in the shell workflows)."""
    registry = registry_from_env()
    get = registry.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": accept})
    expect(get.status == 200, get, "200", str(get.status))
    sys.stdout.write(get.body.decode())

def cmd_fetch(repository: str, reference: str, output: str, accept: str = ACCEPT_ALL) -> None:
    """Write a manifest's body to OUTPUT; print its Content-Type and Docker-Content-Digest headers."""
    registry = registry_from_env()
    get = registry.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": accept})
    expect(get.status == 200, get, "200", str(get.status))
    with open(output, "wb") as file:
        file.write(get.body)
    print(f"Content-Type: {get.header('Content-Type')}")
    print(f"Docker-Content-Digest: {get.header('Docker-Content-Digest')}")


def cmd_absent(repository: str, reference: str) -> None:
    """The manifest must be gone: 404 MANIFEST_UNKNOWN."""
    registry = registry_from_env()
    get = registry.request("GET", f"/v2/{repository}/manifests/{reference}", {"Accept": ACCEPT_ALL})
    expect(get.status == 404, get, "404", str(get.status))

def read_layout(directory: str) -> tuple[dict, dict[str, bytes]]:
    with open(os.path.join(directory, "index.json")) as file:
        index = json.load(file)
    blobs = {}
    blob_dir = os.path.join(directory, "blobs", "sha256")
    for name in os.listdir(blob_dir):
        with open(os.path.join(blob_dir, name), "rb") as file:
            blobs["sha256:" + name] = file.read()
    return index, blobs

def layout_root(index: dict, tag: str) -> dict:
    for descriptor in index["manifests"]:
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return descriptor
    raise CheckFailed(f"no tag {tag!r} in the layout's index.json: {index}")

def reachable(root: str, blobs: dict[str, bytes]) -> set[str]:
    """Every digest reachable from `root` by manifests' config, layers and manifests."""
    seen = set()
    pending = [root]
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        if digest not in blobs:
            continue
        try:
            document = json.loads(blobs[digest])
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(document, dict) or document.get("schemaVersion") != 2:
            continue
        for descriptor in document.get("manifests", []) + document.get("layers", []):
            pending.append(descriptor["digest"])
        if "config" in document:
            pending.append(document["config"]["digest"])
    return seen

def cmd_layout_digest(directory: str, tag: str) -> None:
    index, _ = read_layout(directory)
    print(layout_root(index, tag)["digest"])

def cmd_compare_layouts(source: str, source_tag: str, copy: str, copy_tag: str) -> None:
    """The copy's root has the source's digest, and every reachable blob is byte-identical."""
    source_index, source_blobs = read_layout(source)
    copy_index, copy_blobs = read_layout(copy)
    source_root = layout_root(source_index, source_tag)["digest"]
    copy_root = layout_root(copy_index, copy_tag)["digest"]
    where = f"layouts {source}:{source_tag} and {copy}:{copy_tag}"
    expect(copy_root == source_root, where, f"root {source_root}", copy_root)
    wanted = reachable(source_root, source_blobs)
    for digest in sorted(wanted):
        expect(digest in copy_blobs, where, f"blob {digest} in the copy", "missing")
        expect(copy_blobs[digest] == source_blobs[digest], where, f"blob {digest} identical", "different bytes")
        expect(sha256(copy_blobs[digest]) == digest, where, f"blob {digest} hashes to its name", "it does not")
    print(f"{len(wanted)} blobs identical, root {source_root}")

def platforms_of(index: dict) -> list[str]:
    return sorted(
        platform_string(descriptor["platform"]) for descriptor in index.get("manifests", []) if "platform" in descriptor
    )

def cmd_old_client_index(repository: str, tag: str) -> None:
    """An OCI index fetched by tag by a client that only knows Docker types comes back converted."""
    registry = registry_from_env()
    artifact = fixtures.multi_arch("old-client")
    push_artifact(registry, repository, tag, artifact)
    get = registry.request("GET", f"/v2/{repository}/manifests/{tag}", {"Accept": ACCEPT_DOCKER_ONLY})
    expect(get.status == 200, get, "200 with a Docker manifest list", str(get.status))
    expect(
        get.header("Content-Type") == DOCKER_LIST,
        get,
        f"Content-Type {DOCKER_LIST}",
        str(get.header("Content-Type")),
    )
    expect(
        get.header("Docker-Content-Digest") == sha256(get.body),
        get,
        f"Docker-Content-Digest = sha256(body) = {sha256(get.body)}",
        str(get.header("Docker-Content-Digest")),
    )
    document = json.loads(get.body)
    expect(document.get("mediaType") == DOCKER_LIST, get, f"body mediaType {DOCKER_LIST}", str(document.get("mediaType")))
    original = json.loads(artifact.root.data)
    expect(
        platforms_of(document) == platforms_of(original),
        get,
        f"platforms {platforms_of(original)}",
        str(platforms_of(document)),
    )
    for descriptor in document["manifests"]:
        expect(
            descriptor["mediaType"] in (DOCKER_MANIFEST, DOCKER_LIST),
            get,
            "only Docker media types in the converted list",
            descriptor["mediaType"],
        )
        child = registry.request(
            "GET", f"/v2/{repository}/manifests/{descriptor['digest']}", {"Accept": ACCEPT_DOCKER_ONLY}
        )
        expect(child.status == 200, child, "200: the converted list's children exist", str(child.status))
        expect(
            sha256(child.body) == descriptor["digest"],
            child,
            f"a body hashing to {descriptor['digest']}",
            sha256(child.body),
        )
        expect(
            child.header("Content-Type") == descriptor["mediaType"],
            child,
            f"Content-Type {descriptor['mediaType']} as the list says",
            str(child.header("Content-Type")),
        )
    print(f"{get.header('Docker-Content-Digest')} lists {platforms_of(document)}")

def cmd_old_client_manifest(repository: str, tag: str) -> None:
    """An OCI image manifest fetched by tag with Docker-only Accept comes back as Docker v2."""
    registry = registry_from_env()
    artifact = fixtures.single_image("old-client")
    push_artifact(registry, repository, tag, artifact)
    get = registry.request("GET", f"/v2/{repository}/manifests/{tag}", {"Accept": ACCEPT_DOCKER_ONLY})
    expect(get.status == 200, get, "200 with a Docker v2 manifest", str(get.status))
    expect(
        get.header("Content-Type") == DOCKER_MANIFEST,
        get,
        f"Content-Type {DOCKER_MANIFEST}",
        str(get.header("Content-Type")),
    )
    expect(
        get.header("Docker-Content-Digest") == sha256(get.body),
        get,
        f"Docker-Content-Digest = sha256(body) = {sha256(get.body)}",
        str(get.header("Docker-Content-Digest")),
    )
    document = json.loads(get.body)
    original = json.loads(artifact.root.data)
    expect(document.get("mediaType") == DOCKER_MANIFEST, get, f"body mediaType {DOCKER_MANIFEST}", str(document.get("mediaType")))
    expect(
        document["config"]["digest"] == original["config"]["digest"]
        and document["config"]["mediaType"] == DOCKER_CONFIG,
        get,
        f"config {original['config']['digest']} as {DOCKER_CONFIG}",
        json.dumps(document["config"]),
    )
    expect(
        [layer["digest"] for layer in document["layers"]] == [layer["digest"] for layer in original["layers"]]
        and all(layer["mediaType"] == DOCKER_LAYER_GZIP for layer in document["layers"]),
        get,
        f"the same layers as {DOCKER_LAYER_GZIP}",
        json.dumps(document["layers"]),
    )
    print(f"{get.header('Docker-Content-Digest')} converted from {artifact.root.digest}")

def cmd_old_client_by_digest(repository: str, tag: str) -> None:
    """By digest the stored bytes come back whatever the Accept header says: a digest is a promise."""
    registry = registry_from_env()
    for artifact in (fixtures.multi_arch("old-client-digest"), fixtures.single_image("old-client-digest")):
        push_artifact(registry, repository, tag, artifact)
        get = registry.request(
            "GET", f"/v2/{repository}/manifests/{artifact.root.digest}", {"Accept": ACCEPT_DOCKER_ONLY}
        )
        expect(get.status == 200, get, "200 with the stored bytes", str(get.status))
        expect(get.body == artifact.root.data, get, "the stored bytes, unconverted", f"{len(get.body)} other bytes")
        expect(
            get.header("Docker-Content-Digest") == artifact.root.digest,
            get,
            f"Docker-Content-Digest {artifact.root.digest}",
            str(get.header("Docker-Content-Digest")),
        )
        expect(
            get.header("Content-Type") == artifact.root.media_type,
            get,
            f"Content-Type {artifact.root.media_type}",
            str(get.header("Content-Type")),
        )

SBOM_TYPE = "application/spdx+json"


def push_with_subject(registry: Registry, repository: str) -> tuple[Artifact, Artifact, Response]:
    subject = fixtures.single_image("referrers-subject")
    push_artifact(registry, repository, "subject", subject)
    sbom = fixtures.artifact_with_subject(subject.root, SBOM_TYPE)
    for blob in sbom.blobs:
        push_blob(registry, repository, blob)
    put = push_manifest(registry, repository, sbom.root.digest, sbom.root)
    return subject, sbom, put


def cmd_referrers_push(repository: str) -> None:
    """Pushing a manifest with `subject` is acknowledged with OCI-Subject (distribution-spec 1.1)."""
    registry = registry_from_env()
    subject, _, put = push_with_subject(registry, repository)
    expect(
        put.header("OCI-Subject") == subject.root.digest,
        put,
        f"OCI-Subject {subject.root.digest}",
        str(put.header("OCI-Subject")),
    )


def cmd_referrers_list(repository: str) -> None:
    """An artifact pushed with `subject` is listed by the referrers API, filtered by artifactType."""
    registry = registry_from_env()
    subject, sbom, _ = push_with_subject(registry, repository)
    sbom_type = SBOM_TYPE
    for query, wanted in (("", True), (f"?artifactType={urllib.parse.quote(sbom_type)}", True),
                          ("?artifactType=application%2Fvnd.example.other", False)):
        get = registry.request("GET", f"/v2/{repository}/referrers/{subject.root.digest}{query}")
        expect(get.status == 200, get, "200 with an image index", str(get.status))
        expect(
            (get.header("Content-Type") or "").startswith(OCI_INDEX),
            get,
            f"Content-Type {OCI_INDEX}",
            str(get.header("Content-Type")),
        )
        document = json.loads(get.body)
        listed = {descriptor["digest"]: descriptor for descriptor in document.get("manifests", [])}
        if wanted:
            expect(sbom.root.digest in listed, get, f"{sbom.root.digest} listed", str(list(listed)))
            descriptor = listed[sbom.root.digest]
            expect(
                descriptor.get("artifactType") == sbom_type
                and descriptor.get("size") == len(sbom.root.data)
                and descriptor.get("mediaType") == OCI_MANIFEST,
                get,
                f"descriptor with artifactType {sbom_type}, size {len(sbom.root.data)}, mediaType {OCI_MANIFEST}",
                json.dumps(descriptor),
            )
            expect(
                descriptor.get("annotations", {}).get("org.opencontainers.image.created") == "2024-01-01T00:00:00Z",
                get,
                "the artifact's annotations copied into the descriptor",
                json.dumps(descriptor),
            )
        else:
            expect(not listed, get, "no referrers of another artifactType", str(list(listed)))
    # A digest nobody refers to: an empty index, not 404 (distribution-spec "Listing Referrers").
    unknown = sha256(b"nobody refers to this")
    get = registry.request("GET", f"/v2/{repository}/referrers/{unknown}")
    expect(get.status == 200, get, "200 with an empty index", str(get.status))
    expect(json.loads(get.body).get("manifests") == [], get, "manifests: []", get.body.decode(errors="replace"))

COMMANDS = {
    "push-shape": cmd_push_shape,
    "digest": cmd_digest,
    "manifest": cmd_manifest,
    "fetch": cmd_fetch,
    "absent": cmd_absent,
    "layout-digest": cmd_layout_digest,
    "compare-layouts": cmd_compare_layouts,
    "old-client-index": cmd_old_client_index,
    "old-client-manifest": cmd_old_client_manifest,
    "old-client-by-digest": cmd_old_client_by_digest,
    "referrers-push": cmd_referrers_push,
    "referrers-list": cmd_referrers_list,
}

def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: registry_http.py {{{'|'.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](*argv[1:])
    except CheckFailed as failure:
        print(f"check failed: {failure}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
