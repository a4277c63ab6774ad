//! Reading and checking manifests before they are stored.
//!
//! The registry stores a manifest's bytes exactly as received. Parsing here only
//! extracts what the registry must check (descriptors, subject, artifact type)
//! and what it indexes; the parsed form is never serialised back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type::{self, essence};

/// A content descriptor: what a manifest says about a blob or a child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// The platform an index entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

/// Whether a manifest lists blobs (an image manifest) or other manifests (an index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

/// What the registry needs to know about a manifest it is about to store.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// The media type the manifest is stored and served with.
    pub media_type: String,
    pub kind: ManifestKind,
    /// Blobs that must exist in the repository: config and layers of an image
    /// manifest, or index entries that describe blobs (BuildKit's older cache
    /// format lists layers directly in an index).
    pub blobs: Vec<Descriptor>,
    /// Child manifests that must exist in the repository (index entries).
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// The artifact type the referrers API reports: `artifactType`, or else the
    /// config's media type for an image manifest.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("manifest has schemaVersion {0}; only schemaVersion 2 is supported")]
    UnsupportedSchemaVersion(i64),
    #[error(
        "Docker schema 1 manifests are not supported; push with a current client, which sends schema 2 or OCI"
    )]
    SchemaOne,
    #[error("the manifest's mediaType {body:?} does not match the Content-Type header {header:?}")]
    MediaTypeMismatch { body: String, header: String },
    #[error(
        "cannot tell what kind of manifest this is: set Content-Type or the mediaType field to an \
         OCI or Docker manifest type (got {0:?})"
    )]
    UnknownMediaType(String),
    #[error("manifest field {field} is invalid: {reason}")]
    InvalidField { field: String, reason: String },
}

fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The fields of both image manifests and indexes, all optional, so the checks
/// below can give precise messages.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<serde_json::Value>,
    artifact_type: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    manifests: Option<serde_json::Value>,
    subject: Option<serde_json::Value>,
    annotations: Option<serde_json::Value>,
}

fn parse_descriptor(field: &str, value: serde_json::Value) -> Result<Descriptor, ManifestError> {
    let descriptor: Descriptor =
        serde_json::from_value(value).map_err(|error| invalid_field(field, error.to_string()))?;
    if descriptor.size < 0 {
        return Err(invalid_field(field, "size is negative"));
    }
    Ok(descriptor)
}

fn parse_descriptor_list(
    field: &str,
    value: serde_json::Value,
) -> Result<Vec<Descriptor>, ManifestError> {
    let serde_json::Value::Array(items) = value else {
        return Err(invalid_field(field, "must be an array"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| parse_descriptor(&format!("{field}[{index}]"), item))
        .collect()
}

fn optional_string(
    field: &str,
    value: Option<serde_json::Value>,
) -> Result<Option<String>, ManifestError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid_field(field, "must be a string")),
    }
}

/// Parses and checks a manifest body.
///
/// `content_type` is the request's Content-Type header, if any. When both it and
/// the body's `mediaType` name a manifest type they must agree. The result's
/// media type is the body's `mediaType` when present, else the header's, else
/// what the structure shows (`manifests` means an OCI index, `config` an OCI
/// image manifest).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(body)
        .map_err(|error| ManifestError::InvalidJson(error.to_string()))?;
    let header = content_type.map(essence).filter(|value| !value.is_empty());
    let body_media_type = optional_string("mediaType", raw.media_type)?;

    for schema1 in [
        media_type::DOCKER_SCHEMA1_MANIFEST,
        media_type::DOCKER_SCHEMA1_SIGNED_MANIFEST,
    ] {
        if header.as_deref() == Some(schema1) {
            return Err(ManifestError::SchemaOne);
        }
    }
    match raw.schema_version {
        Some(serde_json::Value::Number(number)) if number.as_i64() == Some(2) => {}
        Some(serde_json::Value::Number(number)) => {
            let version = number.as_i64().unwrap_or(-1);
            return Err(if version == 1 {
                ManifestError::SchemaOne
            } else {
                ManifestError::UnsupportedSchemaVersion(version)
            });
        }
        Some(_) => return Err(invalid_field("schemaVersion", "must be the number 2")),
        None => return Err(invalid_field("schemaVersion", "is missing; it must be 2")),
    }

    let header_is_manifest = header.as_deref().is_some_and(media_type::is_manifest);
    if let (Some(body_type), Some(header_type)) = (&body_media_type, &header) {
        if header_is_manifest && body_type != header_type {
            return Err(ManifestError::MediaTypeMismatch {
                body: body_type.clone(),
                header: header_type.clone(),
            });
        }
    }
    let media_type = match (&body_media_type, &header) {
        (Some(body_type), _) => body_type.clone(),
        (None, Some(header_type)) if header_is_manifest => header_type.clone(),
        (None, _) if raw.manifests.is_some() => media_type::OCI_IMAGE_INDEX.to_owned(),
        (None, _) if raw.config.is_some() => media_type::OCI_IMAGE_MANIFEST.to_owned(),
        (None, header_type) => {
            return Err(ManifestError::UnknownMediaType(
                header_type.clone().unwrap_or_default(),
            ))
        }
    };
    if !media_type::is_manifest(&media_type) {
        return Err(ManifestError::UnknownMediaType(media_type));
    }
    let kind = if media_type::is_index(&media_type) {
        ManifestKind::Index
    } else {
        ManifestKind::Image
    };

    let subject = raw
        .subject
        .filter(|value| !value.is_null())
        .map(|value| parse_descriptor("subject", value))
        .transpose()?;
    let declared_artifact_type = optional_string("artifactType", raw.artifact_type)?;
    let annotations = match raw.annotations {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(
            serde_json::from_value::<BTreeMap<String, String>>(value)
                .map_err(|_| invalid_field("annotations", "must map strings to strings"))?,
        ),
    };

    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let artifact_type;
    match kind {
        ManifestKind::Image => {
            if raw.manifests.is_some() {
                return Err(invalid_field(
                    "manifests",
                    format!("is not allowed in an image manifest ({media_type})"),
                ));
            }
            let config = parse_descriptor(
                "config",
                raw.config
                    .ok_or_else(|| invalid_field("config", "is missing"))?,
            )?;
            if config.media_type.is_empty() {
                return Err(invalid_field("config.mediaType", "is missing"));
            }
            let layers = match raw.layers {
                Some(value) => parse_descriptor_list("layers", value)?,
                None => return Err(invalid_field("layers", "is missing")),
            };
            if media_type == media_type::DOCKER_MANIFEST && declared_artifact_type.is_some() {
                return Err(invalid_field(
                    "artifactType",
                    "is only allowed in OCI manifests",
                ));
            }
            for (index, layer) in layers.iter().enumerate() {
                if layer.media_type.is_empty() {
                    return Err(invalid_field(
                        format!("layers[{index}].mediaType"),
                        "is missing",
                    ));
                }
            }
            artifact_type = declared_artifact_type.or_else(|| Some(config.media_type.clone()));
            blobs.push(config);
            // Foreign layers (Windows base layers) live elsewhere, named by their
            // urls; the registry does not hold them.
            blobs.extend(layers.into_iter().filter(|layer| {
                !(layer.urls.as_ref().is_some_and(|urls| !urls.is_empty())
                    && (layer.media_type == media_type::DOCKER_FOREIGN_LAYER_TAR_GZIP
                        || layer.media_type.contains("nondistributable")))
            }));
        }
        ManifestKind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid_field(
                    "config",
                    format!("config and layers are not allowed in an index ({media_type})"),
                ));
            }
            let entries = match raw.manifests {
                Some(value) => parse_descriptor_list("manifests", value)?,
                None => return Err(invalid_field("manifests", "is missing")),
            };
            for (index, entry) in entries.into_iter().enumerate() {
                if entry.media_type.is_empty() {
                    return Err(invalid_field(
                        format!("manifests[{index}].mediaType"),
                        "is missing",
                    ));
                }
                // An entry without a manifest media type refers to a blob: BuildKit's
                // older registry cache lists its layers and cache config this way.
                if media_type::is_manifest(&entry.media_type) {
                    manifests.push(entry);
                } else {
                    blobs.push(entry);
                }
            }
            artifact_type = declared_artifact_type;
        }
    }

    Ok(ParsedManifest {
        media_type,
        kind,
        blobs,
        manifests,
        subject,
        artifact_type,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_type::*;

    fn digest(byte: char) -> String {
        format!("sha256:{}", byte.to_string().repeat(64))
    }

    fn image_manifest(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_IMAGE_MANIFEST}",
            "config":{{"mediaType":"{OCI_IMAGE_CONFIG}","digest":"{}","size":2}},
            "layers":[{{"mediaType":"{OCI_LAYER_TAR_GZIP}","digest":"{}","size":3}}]{extra}}}"#,
            digest('a'),
            digest('b')
        )
    }

    #[test]
    fn image_manifest_lists_config_and_layers_as_blobs() {
        let parsed = parse(Some(OCI_IMAGE_MANIFEST), image_manifest("").as_bytes()).unwrap();
        assert_eq!(parsed.kind, ManifestKind::Image);
        assert_eq!(parsed.blobs.len(), 2);
        assert!(parsed.manifests.is_empty());
        assert_eq!(parsed.artifact_type.as_deref(), Some(OCI_IMAGE_CONFIG));
    }

    #[test]
    fn artifact_with_subject() {
        let body = image_manifest(&format!(
            r#","artifactType":"application/vnd.example.sbom","subject":{{"mediaType":"{OCI_IMAGE_MANIFEST}","digest":"{}","size":7}}"#,
            digest('c')
        ));
        let parsed = parse(None, body.as_bytes()).unwrap();
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(parsed.subject.unwrap().digest.to_string(), digest('c'));
    }

    #[test]
    fn index_entries_split_into_manifests_and_blobs() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_IMAGE_INDEX}","manifests":[
            {{"mediaType":"{OCI_IMAGE_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"{OCI_LAYER_TAR_GZIP}","digest":"{}","size":9}},
            {{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"{}","size":4}}]}}"#,
            digest('a'),
            digest('b'),
            digest('c')
        );
        let parsed = parse(Some(OCI_IMAGE_INDEX), body.as_bytes()).unwrap();
        assert_eq!(parsed.kind, ManifestKind::Index);
        assert_eq!(parsed.manifests.len(), 1);
        assert_eq!(parsed.blobs.len(), 2);
    }

    #[test]
    fn rejects_what_must_not_be_stored() {
        let cases: Vec<(Option<&str>, String)> = vec![
            (Some(OCI_IMAGE_MANIFEST), "{not json".into()),
            (Some(OCI_IMAGE_MANIFEST), r#"{"schemaVersion":1}"#.into()),
            (Some(OCI_IMAGE_INDEX), image_manifest("")),
            (Some("application/json"), r#"{"schemaVersion":2}"#.into()),
            (
                Some(OCI_IMAGE_MANIFEST),
                image_manifest("").replace(r#""size":3"#, r#""size":-3"#),
            ),
            (
                Some(OCI_IMAGE_MANIFEST),
                image_manifest("").replace(&digest('b'), "sha256:nothex"),
            ),
            (Some(DOCKER_SCHEMA1_SIGNED_MANIFEST), image_manifest("")),
        ];
        for (content_type, body) in cases {
            assert!(
                parse(content_type, body.as_bytes()).is_err(),
                "{content_type:?} {body} should be rejected"
            );
        }
    }
}
