-- The bytes of small blobs (at most `uploads.inline_max_bytes`), kept beside
-- their record so that the one commit linking a pushed blob also makes its
-- bytes durable. Larger blobs live in the blob store only. A row is added by
-- the commit that links a pushed blob, and never changes.
CREATE TABLE blob_contents (
    digest TEXT PRIMARY KEY REFERENCES blobs (digest),
    content BLOB NOT NULL
);
