//! Manifests recently read by tag or by digest, kept in memory so that a pull
//! is answered without a trip to the database's reader threads.
//!
//! Correctness rests on two rules:
//! - Only a process that is the sole writer of the database may cache: the
//!   embedded SQLite database under `kai serve`, which holds the database's
//!   serve lock (see `ServeLock`). PostgreSQL replicas write to one database
//!   from several processes, so they never cache.
//! - Every write that can change what a tag or a digest names (storing a
//!   manifest, deleting a manifest, deleting a tag) calls `invalidate` once
//!   its transaction has ended, whatever its outcome. That empties the cache
//!   and moves its generation on. A read that started before the
//!   invalidation may have seen the old rows, so it stores its result only if
//!   the generation it noted before its query is still current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::StoredManifest;

/// Bytes counted for an entry besides its strings: the map slots and the
/// entry's own fields, roughly.
const ENTRY_OVERHEAD: usize = 128;

pub(crate) struct ManifestCache {
    /// Moved on by every invalidation; a read notes it before its query.
    generation: AtomicU64,
    /// The most bytes the entries may hold together.
    budget: usize,
    entries: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    bytes: usize,
    /// Repository name, then the reference (a tag, or a digest such as
    /// `sha256:...`; a tag never holds a colon, so the two never collide).
    by_repository: HashMap<String, HashMap<String, StoredManifest>>,
}

/// What a read notes before its query, to store the result afterwards.
#[derive(Clone, Copy)]
pub(crate) struct Generation(u64);

impl ManifestCache {
    pub(crate) fn new(budget: usize) -> ManifestCache {
        ManifestCache {
            generation: AtomicU64::new(0),
            budget,
            entries: RwLock::default(),
        }
    }

    pub(crate) fn get(&self, repository: &str, reference: &str) -> Option<StoredManifest> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .by_repository
            .get(repository)?
            .get(reference)
            .cloned()
    }

    /// The generation to pass to `insert` after a query that starts now.
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// Keeps `manifest` under `reference`, unless an invalidation came since
    /// `seen` was noted (the query may have read rows that are gone now) or
    /// the manifest is too large to be worth a place. When the budget is
    /// spent, other entries make room.
    pub(crate) fn insert(
        &self,
        seen: Generation,
        repository: &str,
        reference: &str,
        manifest: &StoredManifest,
    ) {
        let cost = entry_cost(repository, reference, manifest);
        if cost > self.budget / 16 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock that `invalidate` takes to empty the map, so
        // an invalidation is either seen here or empties the map afterwards.
        if self.generation.load(Ordering::Acquire) != seen.0 {
            return;
        }
        while entries.bytes + cost > self.budget {
            if !entries.evict_some() {
                break;
            }
        }
        let by_reference = entries
            .by_repository
            .entry(repository.to_owned())
            .or_default();
        let replaced = by_reference.insert(reference.to_owned(), manifest.clone());
        let freed = replaced.map_or(0, |old| entry_cost(repository, reference, &old));
        entries.bytes = entries.bytes + cost - freed;
    }

    /// Forgets everything: a tag or a manifest may have changed.
    pub(crate) fn invalidate(&self) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        *entries = Entries::default();
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }
}

impl Entries {
    /// Removes one repository's entries (whichever the map yields first), or
    /// returns false when there is nothing left to remove.
    fn evict_some(&mut self) -> bool {
        let Some(repository) = self.by_repository.keys().next().cloned() else {
            return false;
        };
        if let Some(removed) = self.by_repository.remove(&repository) {
            for (reference, manifest) in &removed {
                self.bytes -= entry_cost(&repository, reference, manifest);
            }
        }
        true
    }
}

fn entry_cost(repository: &str, reference: &str, manifest: &StoredManifest) -> usize {
    ENTRY_OVERHEAD
        + repository.len()
        + reference.len()
        + manifest.digest.len()
        + manifest.media_type.len()
        + manifest.content.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(content: &str) -> StoredManifest {
        StoredManifest {
            digest: format!("sha256:{content}"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: bytes::Bytes::copy_from_slice(content.as_bytes()),
        }
    }

    #[test]
    fn a_read_from_before_an_invalidation_is_not_kept() {
        let cache = ManifestCache::new(1 << 20);
        let seen = cache.generation();
        cache.invalidate();
        cache.insert(seen, "library/app", "latest", &manifest("old"));
        assert!(cache.get("library/app", "latest").is_none());

        let seen = cache.generation();
        cache.insert(seen, "library/app", "latest", &manifest("new"));
        let cached = cache.get("library/app", "latest").expect("kept");
        assert_eq!(&cached.content[..], b"new");
        cache.invalidate();
        assert!(cache.get("library/app", "latest").is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn entries_stay_within_the_budget() {
        let content = "x".repeat(500);
        let one = entry_cost("repository-00", "tag-000", &manifest(&content));
        let cache = ManifestCache::new(one * 40);
        for index in 0..200 {
            let seen = cache.generation();
            cache.insert(
                seen,
                &format!("repository-{:02}", index % 20),
                &format!("tag-{index:03}"),
                &manifest(&content),
            );
            assert!(cache.bytes() <= one * 40, "{} bytes", cache.bytes());
        }
        // The last one stored is there; the cache holds several.
        assert!(cache.get("repository-19", "tag-199").is_some());
        assert!(cache.bytes() >= one * 2);
        // A manifest of more than a sixteenth of the budget is not kept.
        let large = "y".repeat(one * 3);
        let seen = cache.generation();
        cache.insert(seen, "repository-00", "large", &manifest(&large));
        assert!(cache.get("repository-00", "large").is_none());
    }

    #[test]
    fn replacing_an_entry_counts_its_bytes_once() {
        let cache = ManifestCache::new(1 << 20);
        for _ in 0..3 {
            let seen = cache.generation();
            cache.insert(seen, "library/app", "latest", &manifest("same"));
        }
        assert_eq!(
            cache.bytes(),
            entry_cost("library/app", "latest", &manifest("same"))
        );
    }
}
