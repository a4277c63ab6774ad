-- The registry's content index. Blob bytes live in the blob store; this
-- database says which repository may see which blob, and holds manifests,
-- tags and upload sessions.

CREATE TABLE repositories (
    name TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- Blobs whose bytes are stored and verified, by digest.
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A blob is visible in a repository only through a row here.
CREATE TABLE repository_blobs (
    repository TEXT NOT NULL REFERENCES repositories (name),
    digest TEXT NOT NULL REFERENCES blobs (digest),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);

-- Manifests, stored byte for byte.
CREATE TABLE manifests (
    repository TEXT NOT NULL REFERENCES repositories (name),
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    size BIGINT NOT NULL,
    content BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository, subject);

-- What each manifest refers to: blobs (config, layers) and child manifests.
CREATE TABLE manifest_references (
    repository TEXT NOT NULL,
    parent TEXT NOT NULL,
    kind TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (repository, parent, kind, child),
    FOREIGN KEY (repository, parent) REFERENCES manifests (repository, digest)
);
CREATE INDEX manifest_references_by_child ON manifest_references (repository, kind, child);

CREATE TABLE tags (
    repository TEXT NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    digest TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (repository, name),
    FOREIGN KEY (repository, digest) REFERENCES manifests (repository, digest)
);
CREATE INDEX tags_by_digest ON tags (repository, digest);

-- Upload sessions. `size` is the number of bytes acknowledged to the client.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX uploads_by_update ON uploads (updated_at);
