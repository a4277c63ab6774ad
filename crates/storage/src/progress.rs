//! Hash state of uploads in progress, kept in memory so that the digest need
//! not be computed again from the staged data at commit. It is an optimisation
//! only: a restarted server, or another replica, has none and reads the
//! staged data instead.

use std::collections::HashMap;
use std::sync::Mutex;

use kai_oci::ContentHasher;

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
    /// `size` bytes; a state for another size is dropped.
    pub(crate) fn take(&self, upload: &UploadId, size: u64) -> Option<ContentHasher> {
        match self.entries().remove(upload) {
            Some(entry) if entry.size == size => Some(entry.hasher),
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
