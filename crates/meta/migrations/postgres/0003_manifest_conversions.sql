-- Manifests converted for clients that do not accept the stored type (an OCI
-- index served to Docker 20.10 as a Docker manifest list, and its children).
-- A conversion is stored so that the digest a client was given can be pulled
-- by digest. It holds no references: it never keeps a blob or a manifest from
-- being deleted, and it goes when its source manifest goes.
CREATE TABLE manifest_conversions (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    source_digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    content BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX manifest_conversions_by_source ON manifest_conversions (repository, source_digest);
