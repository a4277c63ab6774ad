//! `kai-bench`'s command line, run as a process. Besides checking the
//! arguments, this test makes `cargo test --workspace` build the
//! `kai-bench` binary with the workspace's test features, so that
//! `scripts/test` can run the smoke round without building it again.

use std::process::Command;

fn kai_bench(arguments: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kai-bench"))
        .args(arguments)
        .output()
        .expect("kai-bench runs")
}

#[test]
fn an_unknown_scenario_is_refused_before_anything_starts() {
    let output = kai_bench(&["--only", "push,pul"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("unknown scenario \"pul\"") && error.contains("pull-range"),
        "{error}"
    );
    assert!(!error.contains("starting the servers"), "{error}");
}

#[test]
fn a_listing_of_no_entries_is_refused() {
    let output = kai_bench(&["--entries", "0"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("--entries must be at least 1"), "{error}");
}
