//! Media types the registry treats specially. Any other media type is accepted
//! for blobs and artifacts; these decide how a manifest is read.

pub const OCI_IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_FOREIGN_LAYER_TAR_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Docker schema 1 manifests: long deprecated, and refused with a message.
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Whether `media_type` names a manifest (something stored under `/manifests/`)
/// rather than a blob.
pub fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_IMAGE_MANIFEST | OCI_IMAGE_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    )
}

/// Whether `media_type` names an index (a list of manifests).
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_IMAGE_INDEX | DOCKER_MANIFEST_LIST)
}

/// The media type without parameters and surrounding space, lower-cased:
/// `application/JSON; charset=utf-8` becomes `application/json`.
pub fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}
