"""Tiny, deterministic OCI content shaped like what real clients produce.

Every function here returns an `Artifact`: the root manifest (or index), the
child manifests it references, and every blob, all as exact bytes. The same
bytes can be written as an OCI image layout (for skopeo and umoci) or pushed
over raw HTTP (registry_http.py). Nothing here does network I/O.

Shapes:
- `multi_arch`: an OCI index of three single-layer images
  (linux/amd64, linux/arm64, linux/arm/v7), as `buildah manifest push` makes.
- `buildx_attested`: the same index plus, for each platform, an attestation
  manifest the way `docker buildx build --attest` / `--provenance` writes it:
  platform unknown/unknown, annotations vnd.docker.reference.type and
  vnd.docker.reference.digest, in-toto layers.
- `buildkit_cache_manifest`: `--cache-to type=registry,image-manifest=true`:
  an OCI image manifest whose config is application/vnd.buildkit.cacheconfig.v0.
- `buildkit_cache_index`: the older `--cache-to type=registry` form: an OCI
  index whose descriptors are layer blobs and the cache config, not manifests.
- `single_image`: one OCI image manifest.
- `artifact_with_subject`: an OCI artifact (SBOM-like) whose `subject` is
  another manifest, for the referrers API.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
BUILDKIT_CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
IN_TOTO = "application/vnd.in-toto+json"

MANIFEST_TYPES = {OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST}

PLATFORMS = [
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux"},
    {"architecture": "arm", "os": "linux", "variant": "v7"},
]


def platform_string(platform: dict) -> str:
    parts = [platform["os"], platform["architecture"]]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(parts)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def to_json(value) -> bytes:
    """Marshal the way Go's json.MarshalIndent(v, "", "  ") does (BuildKit, containers/image)."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra) -> dict:
        descriptor = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        descriptor.update(extra)
        return descriptor


@dataclass
class Artifact:
    """A root manifest and everything it needs, in push order (blobs, children, root)."""

    root: Blob
    children: list[Blob] = field(default_factory=list)
    blobs: list[Blob] = field(default_factory=list)

    def add_blob(self, blob: Blob) -> Blob:
        if all(existing.digest != blob.digest for existing in self.blobs):
            self.blobs.append(blob)
        return blob

    def everything(self) -> dict[str, Blob]:
        content = {blob.digest: blob for blob in self.blobs}
        content.update({child.digest: child for child in self.children})
        content[self.root.digest] = self.root
        return content


def layer_tar_gzip(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar of `files`, byte-identical on every run. Returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


def image(artifact: Artifact, platform: dict, files: dict[str, bytes], media_type=OCI_MANIFEST) -> Blob:
    """An image manifest with one layer, adding its config and layer to `artifact.blobs`."""
    docker = media_type == DOCKER_MANIFEST
    layer_bytes, diff_id = layer_tar_gzip(files)
    layer = artifact.add_blob(Blob(DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, layer_bytes))
    config_value = dict(platform)
    config_value.update(
        {
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "COPY . / # kai client suite"}],
        }
    )
    config = artifact.add_blob(Blob(DOCKER_CONFIG if docker else OCI_CONFIG, to_json(config_value)))
    manifest = {"schemaVersion": 2, "mediaType": media_type}
    manifest["config"] = config.descriptor()
    manifest["layers"] = [layer.descriptor()]
    return Blob(media_type, to_json(manifest))


def platform_files(name: str, platform: dict) -> dict[str, bytes]:
    return {
        "hello.txt": f"hello from {name}\n".encode(),
        "platform.txt": f"{platform_string(platform)}\n".encode(),
    }


def multi_arch(name: str) -> Artifact:
    artifact = Artifact(root=Blob(OCI_INDEX, b""))
    descriptors = []
    for platform in PLATFORMS:
        child = image(artifact, platform, platform_files(name, platform))
        artifact.children.append(child)
        descriptors.append(child.descriptor(platform=platform))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    artifact.root = Blob(OCI_INDEX, to_json(index))
    return artifact


def attestation_manifest(artifact: Artifact, subject: Blob, platform: dict) -> Blob:
    """What BuildKit writes for `--provenance=mode=min --sbom=true` for one platform."""
    statements = [
        (
            "https://slsa.dev/provenance/v0.2",
            {"builder": {"id": ""}, "buildType": "https://mobyproject.org/buildkit@v1"},
        ),
        ("https://spdx.dev/Document", {"spdxVersion": "SPDX-2.3", "name": "sbom"}),
    ]
    layers = []
    diff_ids = []
    for predicate_type, predicate in statements:
        statement = {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": predicate_type,
            "subject": [
                {
                    "name": f"pkg:docker/kai/clients@v1?platform={platform_string(platform)}",
                    "digest": {"sha256": subject.digest.removeprefix("sha256:")},
                }
            ],
            "predicate": predicate,
        }
        blob = artifact.add_blob(Blob(IN_TOTO, to_json(statement)))
        layers.append(blob.descriptor(annotations={"in-toto.io/predicate-type": predicate_type}))
        diff_ids.append(blob.digest)
    config_value = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config = artifact.add_blob(Blob(OCI_CONFIG, to_json(config_value)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers,
    }
    return Blob(OCI_MANIFEST, to_json(manifest))


def buildx_attested(name: str) -> Artifact:
    artifact = Artifact(root=Blob(OCI_INDEX, b""))
    images = []
    for platform in PLATFORMS:
        child = image(artifact, platform, platform_files(name, platform))
        artifact.children.append(child)
        images.append((child, platform))
    descriptors = [child.descriptor(platform=platform) for child, platform in images]
    for child, platform in images:
        attestation = attestation_manifest(artifact, child, platform)
        artifact.children.append(attestation)
        descriptors.append(
            attestation.descriptor(
                annotations={
                    "vnd.docker.reference.digest": child.digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                platform={"architecture": "unknown", "os": "unknown"},
            )
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    artifact.root = Blob(OCI_INDEX, to_json(index))
    return artifact


def cache_layers(artifact: Artifact, name: str) -> list[Blob]:
    blobs = []
    for number, media_type in enumerate([OCI_LAYER_GZIP, DOCKER_LAYER_GZIP]):
        data, _ = layer_tar_gzip({f"cache/{name}/{number}.txt": f"cached layer {number} of {name}\n".encode()})
        blobs.append(artifact.add_blob(Blob(media_type, data)))
    return blobs


def cache_config(layers: list[Blob]) -> bytes:
    """A BuildKit cache config (solver/remotecache/v1 CacheConfig) chaining the layers."""
    return to_json(
        {
            "layers": [{"blob": layer.digest, "parent": number - 1} for number, layer in enumerate(layers)],
            "records": [
                {"digest": sha256(f"record {number}".encode()), "layers": [{"layer": number}]}
                for number in range(len(layers))
            ],
        }
    )


def buildkit_cache_manifest(name: str) -> Artifact:
    artifact = Artifact(root=Blob(OCI_MANIFEST, b""))
    layers = cache_layers(artifact, name)
    config = artifact.add_blob(Blob(BUILDKIT_CACHE_CONFIG, cache_config(layers)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [
            layer.descriptor(annotations={"buildkit/createdat": "2024-01-01T00:00:00Z"}) for layer in layers
        ],
    }
    artifact.root = Blob(OCI_MANIFEST, to_json(manifest))
    return artifact


def buildkit_cache_index(name: str) -> Artifact:
    """The index's descriptors are blobs: the registry must not require them to be manifests."""
    artifact = Artifact(root=Blob(OCI_INDEX, b""))
    layers = cache_layers(artifact, name)
    config = artifact.add_blob(Blob(BUILDKIT_CACHE_CONFIG, cache_config(layers)))
    descriptors = [
        layer.descriptor(annotations={"buildkit/createdat": "2024-01-01T00:00:00Z"}) for layer in layers
    ]
    descriptors.append(config.descriptor())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    artifact.root = Blob(OCI_INDEX, to_json(index))
    return artifact


def single_image(name: str, platform: dict | None = None, media_type=OCI_MANIFEST) -> Artifact:
    platform = platform or PLATFORMS[0]
    artifact = Artifact(root=Blob(media_type, b""))
    artifact.root = image(artifact, platform, platform_files(name, platform), media_type=media_type)
    return artifact


def artifact_with_subject(subject: Blob, artifact_type: str) -> Artifact:
    artifact = Artifact(root=Blob(OCI_MANIFEST, b""))
    empty = artifact.add_blob(Blob(OCI_EMPTY, b"{}"))
    payload = artifact.add_blob(Blob("application/spdx+json", to_json({"spdxVersion": "SPDX-2.3"})))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [payload.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    artifact.root = Blob(OCI_MANIFEST, to_json(manifest))
    return artifact


SHAPES = {
    "multi-arch": multi_arch,
    "buildx-attested": buildx_attested,
    "buildkit-cache-manifest": buildkit_cache_manifest,
    "buildkit-cache-index": buildkit_cache_index,
    "single-image": single_image,
}


def write_layout(directory: str, tag: str, artifact: Artifact) -> None:
    """Write (or add to) an OCI image layout, with `tag` naming the root."""
    blobs_dir = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs_dir, exist_ok=True)
    with open(os.path.join(directory, "oci-layout"), "w") as file:
        json.dump({"imageLayoutVersion": "1.0.0"}, file)
    for digest, blob in artifact.everything().items():
        with open(os.path.join(blobs_dir, digest.removeprefix("sha256:")), "wb") as file:
            file.write(blob.data)
    index_path = os.path.join(directory, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as file:
            index = json.load(file)
    index["manifests"] = [
        descriptor
        for descriptor in index["manifests"]
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"].append(
        artifact.root.descriptor(annotations={"org.opencontainers.image.ref.name": tag})
    )
    with open(index_path, "w") as file:
        json.dump(index, file, indent=2)


def main(argv: list[str]) -> int:
    """fixtures.py SHAPE NAME LAYOUT_DIR TAG: write a layout, print the root digest."""
    if len(argv) != 4 or argv[0] not in SHAPES:
        print(f"usage: fixtures.py {{{'|'.join(SHAPES)}}} NAME LAYOUT_DIR TAG", file=sys.stderr)
        return 2
    shape, name, directory, tag = argv
    artifact = SHAPES[shape](name)
    write_layout(directory, tag, artifact)
    print(artifact.root.digest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
