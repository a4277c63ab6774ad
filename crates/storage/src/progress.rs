//! Hash state of uploads in progress, kept in memory so that the digest need
//! not be computed again from the staged data at commit. It is an optimisation
//! only: a restarted server, or another replica, has none and reads the
//! staged data instead.

use std::collections::HashMap;
use std::sync::Mutex;

use kai_oci::{ContentHasher, DigestAlgorithm};

use crate::{UploadId, Written};

struct Entry {
    size: u64,
    hasher: ContentHasher,
}

#[derive(Default)]
pub(crate) struct HashProgress {
    entries: Mutex<HashMap<UploadId, Entry>>,
}

impl HashProgress {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Removes and returns the hash state of `upload` if it covers exactly
    /// `size` bytes; a state for another size is dropped. For `size` 0 (nothing
    /// stored yet) the state is a fresh SHA-256 hasher, so that the first
    /// write already hashes what it writes.
    pub(crate) fn take(&self, upload: &UploadId, size: u64) -> Option<ContentHasher> {
        match self.entries().remove(upload) {
            Some(entry) if entry.size == size => Some(entry.hasher),
            _ if size == 0 => Some(ContentHasher::new(DigestAlgorithm::Sha256)),
            _ => None,
        }
    }

    /// Keeps the hash state of the first `size` bytes of `upload`.
    pub(crate) fn keep(&self, upload: &UploadId, size: u64, hasher: ContentHasher) {
        self.entries()
            .insert(upload.clone(), Entry { size, hasher });
    }

    /// After a write of `bytes` at `offset`: keeps the hash state that now
    /// covers the upload (if there is one) and reports the write.
    pub(crate) fn wrote(
        &self,
        upload: &UploadId,
        offset: u64,
        bytes: u64,
        hasher: Option<ContentHasher>,
    ) -> Written {
        let size = offset + bytes;
        if let Some(hasher) = hasher {
            self.keep(upload, size, hasher);
        }
        Written { bytes, size }
    }

    pub(crate) fn forget(&self, upload: &UploadId) {
        self.entries().remove(upload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_hashed_from_its_first_byte() {
        let progress = HashProgress::default();
        let upload = UploadId::generate();
        let mut hasher = progress.take(&upload, 0).expect("a fresh hasher at size 0");
        hasher.update(b"hello ");
        progress.wrote(&upload, 0, 6, Some(hasher));
        // A write that does not continue at the kept size gets no state.
        assert!(progress.take(&upload, 3).is_none());
        progress.keep(&upload, 6, {
            let mut hasher = ContentHasher::new(DigestAlgorithm::Sha256);
            hasher.update(b"hello ");
            hasher
        });
        let mut hasher = progress.take(&upload, 6).expect("the state after 6 bytes");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), kai_oci::Digest::sha256_of(b"hello world"));
        // An upload restarted from zero starts a fresh hash.
        progress.keep(&upload, 11, ContentHasher::new(DigestAlgorithm::Sha256));
        let restarted = progress.take(&upload, 0).expect("a fresh hasher at size 0");
        assert_eq!(restarted.finish(), kai_oci::Digest::sha256_of(b""));
    }
}
