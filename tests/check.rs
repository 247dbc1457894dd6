//! `runnel check` on malformed flows: each file in tests/malformed/ names the
//! diagnostics it must produce in `# expect: LINE:COL: message` comments; the
//! real binary must exit 1 and print each of them, located exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn runnel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    command.env("RUNNEL_LOG", "warn");
    command
}

fn malformed_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_malformed_flow_is_rejected_with_its_exact_location() {
    let files = malformed_files();
    assert!(
        files.len() >= 15,
        "expected at least 15 malformed flows, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expectations: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expectations.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let output = runnel().arg("check").arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, expected 1\n{stderr}",
                file.display(),
                output.status.code()
            ));
            continue;
        }
        for expected in expectations {
            let located = expected.starts_with(|c: char| c.is_ascii_digit());
            let needle = if located {
                format!("{}:{expected}", file.display())
            } else {
                expected.to_string()
            };
            if !stderr.contains(&needle) {
                failures.push(format!(
                    "{}: missing {needle:?} in:\n{stderr}",
                    file.display()
                ));
            }
        }
        assert!(
            !stderr.contains("panicked"),
            "{} made runnel panic",
            file.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn seed_flows_are_valid() {
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let output = runnel().arg("check").arg(&flows).output().unwrap();
    assert!(
        output.status.success(),
        "runnel check flows/ failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn schema_lists_every_node_type() {
    let output = runnel().arg("schema").output().unwrap();
    assert!(output.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let types: Vec<&str> = schema["properties"]["nodes"]["items"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["properties"]["type"]["const"].as_str())
        .collect();
    for expected in [
        "inject", "debug", "change", "base64", "json", "switch", "delay", "catch", "comment",
    ] {
        assert!(
            types.contains(&expected),
            "schema lacks {expected}: {types:?}"
        );
    }
}

#[test]
fn graph_prints_mermaid() {
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/payload-frequency.yaml");
    let output = runnel().arg("graph").arg(&flow).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("flowchart LR"), "{text}");
    assert!(text.contains("device_doc --> extract"), "{text}");
    assert!(text.contains("extract --> location"), "{text}");
}
