//! Build script of the `kai` binary: places the code a running registry
//! executes together, so that the server keeps fewer pages of its own code in
//! memory.
//!
//! The kernel maps a program's code in blocks around each page it runs (64 KiB
//! or a whole cached folio at a time). With the linker's default order, the
//! 2.5 MB a registry runs is spread over the 11 MB of code, among error paths,
//! the PostgreSQL and S3 clients and the command-line parser, and most of
//! the binary ends up resident. `layout/hot-functions.txt` names the functions
//! the benchmark's smoke round executes, then those `kai doctor` adds over
//! HTTPS with a login (`scripts/code-layout` writes it); the linker puts them
//! first, in that order. Nothing else changes: a function missing from the
//! list, or listed but gone, keeps its default place.
//!
//! The list is only given to a linker known to read it: a release build for
//! x86_64 Linux (glibc) with Rust 1.90 or later, which links with the LLD that
//! ships with Rust. Set `KAI_CODE_LAYOUT=off` to link in the default order.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const HOT_FUNCTIONS: &str = "layout/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed={HOT_FUNCTIONS}");
    println!("cargo:rerun-if-env-changed=KAI_CODE_LAYOUT");
    if !layout_applies() {
        return;
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let list = manifest_dir.join(HOT_FUNCTIONS);
    if !list.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=kai=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // Functions the list names but this build does not have (another compiler
    // version, changed dependencies) are skipped without a warning each.
    println!("cargo:rustc-link-arg-bin=kai=-Wl,--no-warn-symbol-ordering");
}

/// Whether this build links with Rust's LLD, which reads a symbol ordering
/// file; the system's default linker (GNU ld) would refuse the option.
fn layout_applies() -> bool {
    let variable = |name: &str| env::var(name).unwrap_or_default();
    if variable("KAI_CODE_LAYOUT") == "off" || variable("PROFILE") != "release" {
        return false;
    }
    if variable("TARGET") != "x86_64-unknown-linux-gnu" {
        return false;
    }
    // Flags that choose another linker or turn Rust's LLD off.
    let flags = variable("CARGO_ENCODED_RUSTFLAGS");
    if ["linker", "link-self-contained", "fuse-ld"]
        .iter()
        .any(|flag| flags.contains(flag))
    {
        return false;
    }
    // Rust links x86_64 Linux programs with its own LLD since 1.90.
    rustc_minor_version().is_some_and(|minor| minor >= 90)
}

/// The minor version of the compiler cargo builds with: 95 for `rustc 1.95.0`.
fn rustc_minor_version() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let output = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    if parts.next()? != "1" {
        return None;
    }
    parts.next()?.parse().ok()
}
