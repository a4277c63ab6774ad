//! Deterministic blob content that is generated while it streams.
//!
//! A blob of any size is a sequence of 1 MiB blocks, each a different window
//! into one pseudo-random pattern of a little over 1 MiB. Producing a block
//! is a reference-counted slice of the pattern (no copy, no allocation), so
//! the client can push 4 GiB without holding it and can check any received
//! byte range against what it sent. Consecutive blocks start at different
//! offsets of the pattern, so a range served from the wrong offset fails the
//! comparison.

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest as _, Sha256};

const BLOCK: u64 = 1 << 20;
/// Number of distinct block start offsets (a prime, so block `i` and block
/// `i + 1` never share an offset).
const SPAN: u64 = 65_521;

pub struct Content {
    pattern: Bytes,
    seed: u64,
    size: u64,
    digest: String,
}

impl Content {
    /// Builds the content for `seed` and hashes it (about 0.2 s per GiB with
    /// SHA extensions): the digest is what the client declares on push.
    pub fn new(seed: u64, size: u64) -> Content {
        let mut pattern = vec![0u8; (BLOCK + SPAN) as usize];
        fill_random(seed, &mut pattern);
        let mut content = Content {
            pattern: Bytes::from(pattern),
            seed,
            size,
            digest: String::new(),
        };
        let mut hasher = Sha256::new();
        for piece in content.pieces(0, size) {
            hasher.update(&piece);
        }
        content.digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        content
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The bytes of `start..end`, as pieces that never cross a block boundary.
    pub fn pieces(&self, start: u64, end: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
        assert!(
            start <= end && end <= self.size,
            "range {start}..{end} outside a blob of {}",
            self.size
        );
        let pattern = self.pattern.clone();
        let seed = self.seed;
        let mut offset = start;
        std::iter::from_fn(move || {
            if offset >= end {
                return None;
            }
            let block = offset / BLOCK;
            let within = offset % BLOCK;
            let len = (BLOCK - within).min(end - offset);
            let from = (block_start(seed, block) + within) as usize;
            offset += len;
            Some(pattern.slice(from..from + len as usize))
        })
    }

    /// The bytes of `start..end` as a request body stream.
    pub fn stream(
        &self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        // `Iter` is Sync only when the iterator is; collect the (tiny) list of
        // slices first rather than require that of `from_fn`'s closure.
        let pieces: Vec<Bytes> = self.pieces(start, end).collect();
        futures::stream::iter(pieces.into_iter().map(Ok))
    }

    /// Whether `data` equals the content at `offset..offset + data.len()`.
    pub fn matches(&self, offset: u64, data: &[u8]) -> bool {
        let end = offset + data.len() as u64;
        if end > self.size {
            return false;
        }
        let mut at = 0usize;
        for piece in self.pieces(offset, end) {
            if data[at..at + piece.len()] != piece[..] {
                return false;
            }
            at += piece.len();
        }
        true
    }
}

fn block_start(seed: u64, block: u64) -> u64 {
    (block
        .wrapping_mul(40_503)
        .wrapping_add(seed.wrapping_mul(7_919)))
        % SPAN
}

/// Fills `buffer` with splitmix64 output: fast, and the same on every run.
pub fn fill_random(seed: u64, buffer: &mut [u8]) {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in buffer.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_and_digest_matches_a_plain_hash() {
        let content = Content::new(7, 3 * BLOCK + 12_345);
        let all: Vec<u8> = content
            .pieces(0, content.size())
            .flat_map(|piece| piece.to_vec())
            .collect();
        assert_eq!(all.len() as u64, content.size());
        assert_eq!(sha256_digest(&all), content.digest());
        let (start, end) = (BLOCK - 10, 2 * BLOCK + 10);
        assert!(content.matches(start, &all[start as usize..end as usize]));
        assert!(!content.matches(start + 1, &all[start as usize..end as usize]));
        assert!(!content.matches(BLOCK, &all[0..100]), "blocks must differ");
    }
}
