//! How `kai serve` keeps its resident memory close to what it uses.
//!
//! glibc's allocator gives each busy thread its own arena (up to eight per
//! core) and keeps freed memory for reuse. A server with a runtime, a blocking
//! pool and one thread per SQLite connection then holds on to its peak: after
//! a burst of pushes or a large listing, tens of MiB stay resident though
//! nothing uses them. So the server caps the arenas at two and returns free
//! pages to the system four times a second.
//!
//! glibc also raises its threshold for giving a large allocation its own
//! mapping to the largest block freed so far. After one login (argon2id fills
//! 19 MiB) every later hash came from the heap, and a burst of logins left
//! the heap grown by 19 MiB per login until the next trim: 20 logins at once
//! peaked at over 200 MiB. A fixed threshold keeps blocks of `OWN_MAPPING`
//! and more in mappings of their own, returned the moment they are freed.
//!
//! All of this only moves memory between the allocator and the kernel; it
//! changes no result.
//!
//! Other C libraries (musl, in a static build) manage memory differently, and
//! these calls do not exist there; then this module does nothing.

use std::time::Duration;

/// How often free heap pages are handed back to the system. A large push frees
/// a few MiB of receive buffers when it ends; handed back within a quarter of
/// a second, they are not still resident when the next request starts. A
/// trim of a heap this size takes microseconds.
const TRIM_INTERVAL: Duration = Duration::from_millis(250);
/// How many malloc arenas the threads share.
const ARENAS: i32 = 2;
/// Allocations of this size and more get a mapping of their own, unmapped
/// when freed: password hashes (19 MiB), never the receive and upload
/// buffers (at most a few hundred KiB), which the heap reuses.
const OWN_MAPPING: i32 = 4 << 20;

/// Caps the allocator's arenas, fixes its thresholds and starts a thread that
/// trims the heap once a `TRIM_INTERVAL`. Call once, before the runtime's
/// threads start.
pub fn keep_resident_memory_low() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::keep_resident_memory_low();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    use super::{ARENAS, OWN_MAPPING, TRIM_INTERVAL};

    pub fn keep_resident_memory_low() {
        // SAFETY: mallopt only changes allocator settings. It is called before
        // the runtime starts its threads, as glibc advises for M_ARENA_MAX.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            // Setting either threshold turns off glibc's adjusting of both.
            // Free space at the top of the heap beyond OWN_MAPPING goes back
            // at once; less waits for the next trim.
            libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING);
            libc::mallopt(libc::M_TRIM_THRESHOLD, OWN_MAPPING);
        }
        let spawned = std::thread::Builder::new()
            .name("kai-heap-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_INTERVAL);
                // SAFETY: malloc_trim takes the allocator's own locks and
                // only releases pages no allocation uses.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the heap-trimming thread; memory freed after bursts stays resident");
        }
    }
}
