//! Parsing `/v2/...` paths once into an [`Endpoint`].
//!
//! Repository names contain slashes, so the path is read from its end: the
//! last components say which endpoint it is, and everything before them is the
//! name. A name, reference, digest or upload id is validated here, before any
//! handler can use it in a path or a query.

use kai_oci::{Digest, Reference, ReferenceError, RepositoryName};
use kai_storage::UploadId;

use crate::http::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: RepositoryName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        name: RepositoryName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        name: RepositoryName,
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: RepositoryName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload {
        name: RepositoryName,
        upload: UploadId,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        name: RepositoryName,
        digest: Digest,
    },
}

/// What a request to an endpoint does to a repository, for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

fn name(components: &[&str]) -> Result<RepositoryName, ApiError> {
    components
        .join("/")
        .parse()
        .map_err(|error: kai_oci::NameError| ApiError::NameInvalid {
            reason: error.to_string(),
        })
}

fn digest(text: &str) -> Result<Digest, ApiError> {
    text.parse()
        .map_err(|error: kai_oci::DigestError| ApiError::DigestInvalid {
            reason: error.to_string(),
        })
}

impl Endpoint {
    /// Parses a request path. Unknown paths are [`ApiError::NotFound`].
    pub fn parse(path: &str) -> Result<Endpoint, ApiError> {
        let rest = path.strip_prefix("/v2").ok_or(ApiError::NotFound)?;
        if rest.is_empty() || rest == "/" {
            return Ok(Endpoint::Base);
        }
        let rest = rest.strip_prefix('/').ok_or(ApiError::NotFound)?;
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        let components: Vec<&str> = rest.split('/').collect();
        let count = components.len();
        let at = |from_end: usize| -> &str {
            if from_end <= count {
                components[count - from_end]
            } else {
                ""
            }
        };
        if count >= 3 && at(3) == "blobs" && at(2) == "uploads" {
            let name = name(&components[..count - 3])?;
            if at(1).is_empty() {
                return Ok(Endpoint::UploadStart { name });
            }
            let upload = at(1).parse().map_err(|_| ApiError::BlobUploadUnknown)?;
            return Ok(Endpoint::Upload { name, upload });
        }
        if count >= 3 && at(2) == "blobs" && at(1) == "uploads" {
            return Ok(Endpoint::UploadStart {
                name: name(&components[..count - 2])?,
            });
        }
        if count >= 3 && at(2) == "tags" && at(1) == "list" {
            return Ok(Endpoint::Tags {
                name: name(&components[..count - 2])?,
            });
        }
        if count >= 3 {
            let prefix = &components[..count - 2];
            match at(2) {
                "blobs" => {
                    return Ok(Endpoint::Blob {
                        name: name(prefix)?,
                        digest: digest(at(1))?,
                    })
                }
                "referrers" => {
                    return Ok(Endpoint::Referrers {
                        name: name(prefix)?,
                        digest: digest(at(1))?,
                    })
                }
                "manifests" => {
                    let name = name(prefix)?;
                    let reference = at(1).parse().map_err(|error| match error {
                        ReferenceError::InvalidTag(_) => ApiError::TagInvalid {
                            reason: error.to_string(),
                        },
                        ReferenceError::InvalidDigest(_) => ApiError::DigestInvalid {
                            reason: error.to_string(),
                        },
                    })?;
                    return Ok(Endpoint::Manifest { name, reference });
                }
                _ => {}
            }
        }
        Err(ApiError::NotFound)
    }

    /// The repository this endpoint acts on, if any.
    pub fn repository(&self) -> Option<&RepositoryName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }

    /// The methods this endpoint answers, for the `Allow` header of a 405.
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Endpoint::Base
            | Endpoint::Catalog
            | Endpoint::Tags { .. }
            | Endpoint::Referrers { .. } => "GET, HEAD",
            Endpoint::Blob { .. } => "GET, HEAD, DELETE",
            Endpoint::UploadStart { .. } => "POST",
            Endpoint::Upload { .. } => "GET, PATCH, PUT, DELETE",
            Endpoint::Manifest { .. } => "GET, HEAD, PUT, DELETE",
        }
    }

    /// What the request does to the repository, by method.
    pub fn action(&self, method: &http::Method) -> Action {
        match (self, method.as_str()) {
            (Endpoint::Manifest { .. } | Endpoint::Blob { .. }, "DELETE") => Action::Delete,
            (Endpoint::UploadStart { .. } | Endpoint::Upload { .. }, _) => Action::Push,
            (Endpoint::Manifest { .. }, "PUT") => Action::Push,
            _ => Action::Pull,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> Endpoint {
        Endpoint::parse(path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn paths_parse_from_the_end() {
        assert_eq!(ok("/v2/"), Endpoint::Base);
        assert_eq!(ok("/v2"), Endpoint::Base);
        assert_eq!(ok("/v2/_catalog"), Endpoint::Catalog);
        assert!(
            matches!(ok("/v2/a/b/c/tags/list"), Endpoint::Tags { name } if name.as_str() == "a/b/c")
        );
        assert!(
            matches!(ok("/v2/a/blobs/uploads/"), Endpoint::UploadStart { name } if name.as_str() == "a")
        );
        assert!(matches!(
            ok("/v2/a/blobs/uploads"),
            Endpoint::UploadStart { .. }
        ));
        let upload = format!("/v2/x/blobs/blobs/uploads/{}", UploadId::generate());
        assert!(matches!(ok(&upload), Endpoint::Upload { name, .. } if name.as_str() == "x/blobs"));
        assert!(
            matches!(ok(&format!("/v2/manifests/blobs/{DIGEST}")), Endpoint::Blob { name, .. } if name.as_str() == "manifests")
        );
        assert!(matches!(
            ok("/v2/org/app/manifests/latest"),
            Endpoint::Manifest {
                reference: Reference::Tag(_),
                ..
            }
        ));
        assert!(matches!(
            ok(&format!("/v2/org/app/manifests/{DIGEST}")),
            Endpoint::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            ok(&format!("/v2/org/app/referrers/{DIGEST}")),
            Endpoint::Referrers { .. }
        ));
    }

    #[test]
    fn bad_paths_get_the_right_error() {
        let cases = [
            ("/v2/Upper/manifests/latest", "NAME_INVALID"),
            ("/v2/a/../b/manifests/latest", "NAME_INVALID"),
            ("/v2/a//b/manifests/latest", "NAME_INVALID"),
            ("/v2/a/manifests/.bad", "TAG_INVALID"),
            ("/v2/a/manifests/sha256:123", "DIGEST_INVALID"),
            ("/v2/a/blobs/latest", "DIGEST_INVALID"),
            (
                "/v2/a/blobs/uploads/not-an-upload-id",
                "BLOB_UPLOAD_UNKNOWN",
            ),
            ("/v2/a/blobs/uploads/../../etc", "UNSUPPORTED"),
            ("/v2/a/unknown", "UNSUPPORTED"),
            ("/v3/", "UNSUPPORTED"),
        ];
        for (path, code) in cases {
            let error = Endpoint::parse(path).expect_err(path);
            let rendered = format!("{error:?}");
            let matches = match code {
                "NAME_INVALID" => matches!(error, ApiError::NameInvalid { .. }),
                "TAG_INVALID" => matches!(error, ApiError::TagInvalid { .. }),
                "DIGEST_INVALID" => matches!(error, ApiError::DigestInvalid { .. }),
                "BLOB_UPLOAD_UNKNOWN" => matches!(error, ApiError::BlobUploadUnknown),
                _ => matches!(error, ApiError::NotFound),
            };
            assert!(matches, "{path}: expected {code}, got {rendered}");
        }
        let long = format!("/v2/{}/tags/list", "a".repeat(256));
        assert!(matches!(
            Endpoint::parse(&long),
            Err(ApiError::NameInvalid { .. })
        ));
    }

    #[test]
    fn actions_by_method() {
        let manifest = ok("/v2/a/manifests/latest");
        assert_eq!(manifest.action(&http::Method::GET), Action::Pull);
        assert_eq!(manifest.action(&http::Method::PUT), Action::Push);
        assert_eq!(manifest.action(&http::Method::DELETE), Action::Delete);
        assert_eq!(
            ok("/v2/a/blobs/uploads/").action(&http::Method::POST),
            Action::Push
        );
    }
}
