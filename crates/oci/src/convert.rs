//! Content negotiation for manifests, and faithful conversion between the OCI
//! and Docker schema 2 formats for clients that accept only one of them.
//!
//! A conversion changes media types only: the same blobs and child manifests,
//! by the same digests, in the same order. What has no counterpart in the other
//! format (a `subject`, an `artifactType`, zstd layers) makes a manifest
//! unconvertible, and the stored form is served instead.

use serde_json::{Map, Value};

use crate::media_type::*;

/// What to answer a GET or HEAD of a stored manifest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// Serve the stored bytes.
    Stored,
    /// Serve the stored manifest converted to this media type.
    Convert(&'static str),
}

/// The media types a client listed in its `Accept` headers, without parameters.
/// Types with `q=0` are left out.
pub fn accepted_media_types<'a>(accept_headers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut accepted = Vec::new();
    for header in accept_headers {
        for item in header.split(',') {
            let mut parts = item.split(';');
            let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let refused = parts.any(|parameter| {
                let parameter = parameter.trim().replace(' ', "");
                parameter == "q=0"
                    || parameter == "q=0.0"
                    || parameter == "q=0.00"
                    || parameter == "q=0.000"
            });
            if !media_type.is_empty() && !refused {
                accepted.push(media_type);
            }
        }
    }
    accepted
}

/// Chooses how to serve a manifest stored as `stored_media_type` to a client
/// that accepts `accepted` (see [`accepted_media_types`]).
///
/// The stored form is served when the client accepts it, accepts anything, or
/// named no type; a conversion only when the client lists the counterpart type
/// and not the stored one. Callers must only convert requests by tag: a request
/// by digest always gets the stored bytes.
pub fn negotiate(stored_media_type: &str, accepted: &[String]) -> Negotiated {
    let accepts = |media_type: &str| accepted.iter().any(|item| item == media_type);
    if accepted.is_empty() || accepts("*/*") || accepts("application/*") {
        return Negotiated::Stored;
    }
    // Docker's CLI up to 20.10 lists the OCI index type (its manifest-list
    // package registers it) but cannot read the OCI image manifests an index
    // leads to; it follows a Docker list of converted children instead.
    if stored_media_type == OCI_IMAGE_INDEX
        && accepts(OCI_IMAGE_INDEX)
        && !accepts(OCI_IMAGE_MANIFEST)
        && accepts(DOCKER_MANIFEST_LIST)
        && accepts(DOCKER_MANIFEST)
    {
        return Negotiated::Convert(DOCKER_MANIFEST_LIST);
    }
    if accepts(stored_media_type) {
        return Negotiated::Stored;
    }
    let counterpart = match stored_media_type {
        OCI_IMAGE_INDEX => DOCKER_MANIFEST_LIST,
        OCI_IMAGE_MANIFEST => DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST => OCI_IMAGE_INDEX,
        DOCKER_MANIFEST => OCI_IMAGE_MANIFEST,
        _ => return Negotiated::Stored,
    };
    if accepts(counterpart) {
        Negotiated::Convert(counterpart)
    } else {
        Negotiated::Stored
    }
}

fn layer_to_docker(media_type: &str) -> Option<&'static str> {
    match media_type {
        OCI_LAYER_TAR_GZIP | DOCKER_LAYER_TAR_GZIP => Some(DOCKER_LAYER_TAR_GZIP),
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Some(DOCKER_LAYER_TAR),
        OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP | DOCKER_FOREIGN_LAYER_TAR_GZIP => {
            Some(DOCKER_FOREIGN_LAYER_TAR_GZIP)
        }
        _ => None,
    }
}

fn layer_to_oci(media_type: &str) -> Option<&'static str> {
    match media_type {
        DOCKER_LAYER_TAR_GZIP | OCI_LAYER_TAR_GZIP => Some(OCI_LAYER_TAR_GZIP),
        DOCKER_LAYER_TAR | OCI_LAYER_TAR => Some(OCI_LAYER_TAR),
        DOCKER_FOREIGN_LAYER_TAR_GZIP | OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP => {
            Some(OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP)
        }
        _ => None,
    }
}

/// Sets `mediaType`, keeping it right after `schemaVersion` where a reader expects it.
fn with_media_type(object: Map<String, Value>, media_type: &str) -> Map<String, Value> {
    let mut converted = Map::new();
    for (key, value) in object {
        if key == "mediaType" {
            continue;
        }
        let is_schema_version = key == "schemaVersion";
        converted.insert(key, value);
        if is_schema_version {
            converted.insert("mediaType".into(), Value::String(media_type.into()));
        }
    }
    if !converted.contains_key("mediaType") {
        converted.insert("mediaType".into(), Value::String(media_type.into()));
    }
    converted
}

fn rewrite_descriptor_type(
    descriptor: &mut Value,
    map: impl Fn(&str) -> Option<&'static str>,
) -> Option<()> {
    let object = descriptor.as_object_mut()?;
    let current = object.get("mediaType")?.as_str()?;
    let converted = map(current)?;
    object.insert("mediaType".into(), Value::String(converted.into()));
    Some(())
}

/// Converts a stored manifest to `target` (one of the four manifest types).
/// Returns `None` when the conversion would lose information; the caller then
/// serves the stored form.
pub fn convert(stored_media_type: &str, body: &[u8], target: &str) -> Option<Vec<u8>> {
    let Value::Object(mut object) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    if object.contains_key("subject") || object.contains_key("artifactType") {
        return None;
    }
    match (stored_media_type, target) {
        (OCI_IMAGE_INDEX, DOCKER_MANIFEST_LIST) | (DOCKER_MANIFEST_LIST, OCI_IMAGE_INDEX) => {}
        (OCI_IMAGE_MANIFEST, DOCKER_MANIFEST) => {
            let config = object.get_mut("config")?;
            if config.get("mediaType")?.as_str()? != OCI_IMAGE_CONFIG {
                return None;
            }
            rewrite_descriptor_type(config, |_| Some(DOCKER_CONFIG))?;
            for layer in object.get_mut("layers")?.as_array_mut()? {
                rewrite_descriptor_type(layer, layer_to_docker)?;
            }
        }
        (DOCKER_MANIFEST, OCI_IMAGE_MANIFEST) => {
            let config = object.get_mut("config")?;
            if config.get("mediaType")?.as_str()? != DOCKER_CONFIG {
                return None;
            }
            rewrite_descriptor_type(config, |_| Some(OCI_IMAGE_CONFIG))?;
            for layer in object.get_mut("layers")?.as_array_mut()? {
                rewrite_descriptor_type(layer, layer_to_oci)?;
            }
        }
        _ => return None,
    }
    serde_json::to_vec_pretty(&Value::Object(with_media_type(object, target))).ok()
}

/// The digests of an OCI index's entries that are OCI image manifests: what
/// must be converted, too, before the index can become a Docker manifest list
/// an old client can follow.
pub fn oci_image_children(index: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<Value>(index) else {
        return Vec::new();
    };
    value["manifests"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| entry["mediaType"] == OCI_IMAGE_MANIFEST)
                .filter_map(|entry| entry["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Converts an OCI index to a Docker manifest list whose entries an old client
/// can follow. `children` maps each OCI image manifest entry's digest (see
/// [`oci_image_children`]) to its Docker schema 2 conversion's digest and size,
/// which the caller has stored; an entry mapped to `None`, or missing, has no
/// Docker form (a buildx attestation manifest, say) and is left out, as are
/// nested indexes. Entries that already are Docker manifests stay as they are.
pub fn docker_list_from_index(
    index: &[u8],
    children: &std::collections::HashMap<String, Option<(String, u64)>>,
) -> Option<Vec<u8>> {
    let Value::Object(mut object) = serde_json::from_slice::<Value>(index).ok()? else {
        return None;
    };
    if object
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(OCI_IMAGE_INDEX)
        != OCI_IMAGE_INDEX
        || object.contains_key("subject")
        || object.contains_key("artifactType")
    {
        return None;
    }
    let entries = object.get_mut("manifests")?.as_array_mut()?;
    let had_entries = !entries.is_empty();
    let mut converted = Vec::with_capacity(entries.len());
    for mut entry in entries.drain(..) {
        let media_type = entry
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match media_type {
            DOCKER_MANIFEST => converted.push(entry),
            OCI_IMAGE_MANIFEST => {
                let digest = entry
                    .get("digest")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(Some((new_digest, size))) = children.get(digest) {
                    let descriptor = entry.as_object_mut()?;
                    descriptor.insert("mediaType".into(), Value::String(DOCKER_MANIFEST.into()));
                    descriptor.insert("digest".into(), Value::String(new_digest.clone()));
                    descriptor.insert("size".into(), Value::from(*size));
                    converted.push(entry);
                }
            }
            _ => {}
        }
    }
    if converted.is_empty() && had_entries {
        // Nothing an old client could follow (a BuildKit cache index, say).
        return None;
    }
    *entries = converted;
    serde_json::to_vec_pretty(&Value::Object(with_media_type(
        object,
        DOCKER_MANIFEST_LIST,
    )))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    fn accepted(header: &str) -> Vec<String> {
        accepted_media_types([header])
    }

    #[test]
    fn old_docker_client_gets_a_manifest_list_for_an_oci_index() {
        let old_client = accepted(&format!("{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"));
        assert_eq!(
            negotiate(OCI_IMAGE_INDEX, &old_client),
            Negotiated::Convert(DOCKER_MANIFEST_LIST)
        );
        assert_eq!(
            negotiate(DOCKER_MANIFEST_LIST, &old_client),
            Negotiated::Stored
        );
        let docker_20_10 = accepted(&format!(
            "{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}, {OCI_IMAGE_INDEX}, application/vnd.docker.distribution.manifest.v1+prettyjws"
        ));
        assert_eq!(
            negotiate(OCI_IMAGE_INDEX, &docker_20_10),
            Negotiated::Convert(DOCKER_MANIFEST_LIST)
        );
        let current = accepted(&format!(
            "{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}, {OCI_IMAGE_INDEX}, {OCI_IMAGE_MANIFEST}"
        ));
        assert_eq!(negotiate(OCI_IMAGE_INDEX, &current), Negotiated::Stored);
        assert_eq!(negotiate(OCI_IMAGE_INDEX, &[]), Negotiated::Stored);
        assert_eq!(
            negotiate(OCI_IMAGE_INDEX, &accepted("*/*")),
            Negotiated::Stored
        );
        let refuses_oci = accepted(&format!("{OCI_IMAGE_INDEX};q=0, {DOCKER_MANIFEST_LIST}"));
        assert_eq!(
            negotiate(OCI_IMAGE_INDEX, &refuses_oci),
            Negotiated::Convert(DOCKER_MANIFEST_LIST)
        );
    }

    #[test]
    fn conversion_keeps_digests_and_changes_only_media_types() {
        let digest = |byte: char| format!("sha256:{}", byte.to_string().repeat(64));
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_IMAGE_MANIFEST}",
            "config":{{"mediaType":"{OCI_IMAGE_CONFIG}","digest":"{}","size":2}},
            "layers":[{{"mediaType":"{OCI_LAYER_TAR_GZIP}","digest":"{}","size":3}}]}}"#,
            digest('a'),
            digest('b')
        );
        let converted = convert(OCI_IMAGE_MANIFEST, body.as_bytes(), DOCKER_MANIFEST).unwrap();
        let parsed = manifest::parse(Some(DOCKER_MANIFEST), &converted).unwrap();
        assert_eq!(parsed.media_type, DOCKER_MANIFEST);
        assert_eq!(parsed.blobs[0].media_type, DOCKER_CONFIG);
        assert_eq!(parsed.blobs[1].media_type, DOCKER_LAYER_TAR_GZIP);
        assert_eq!(parsed.blobs[1].digest.to_string(), digest('b'));
        let back = convert(DOCKER_MANIFEST, &converted, OCI_IMAGE_MANIFEST).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_IMAGE_INDEX}","manifests":[
            {{"mediaType":"{OCI_IMAGE_MANIFEST}","digest":"{}","size":9,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{OCI_IMAGE_MANIFEST}","digest":"{}","size":8,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
            digest('c'),
            digest('d')
        );
        assert_eq!(
            oci_image_children(index.as_bytes()),
            [digest('c'), digest('d')]
        );
        let children = std::collections::HashMap::from([
            (digest('c'), Some((digest('e'), 42))),
            (digest('d'), None),
        ]);
        let list = docker_list_from_index(index.as_bytes(), &children).unwrap();
        let parsed_list = manifest::parse(Some(DOCKER_MANIFEST_LIST), &list).unwrap();
        assert_eq!(parsed_list.manifests.len(), 1);
        assert_eq!(parsed_list.manifests[0].digest.to_string(), digest('e'));
        assert_eq!(parsed_list.manifests[0].media_type, DOCKER_MANIFEST);
        assert_eq!(parsed_list.manifests[0].size, 42);
        assert_eq!(
            parsed_list.manifests[0]
                .platform
                .as_ref()
                .unwrap()
                .architecture,
            "arm64"
        );
        let parsed_back = manifest::parse(Some(OCI_IMAGE_MANIFEST), &back).unwrap();
        assert_eq!(parsed_back.blobs[1].media_type, OCI_LAYER_TAR_GZIP);

        let zstd = body.replace(
            OCI_LAYER_TAR_GZIP,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        );
        assert_eq!(
            convert(OCI_IMAGE_MANIFEST, zstd.as_bytes(), DOCKER_MANIFEST),
            None
        );
    }
}
