//! numacachectl stays a client: its sources import none of the daemon's layers, and
//! without the default `server` feature the package's dependency graph holds none of the
//! server crates (so `--no-default-features --bin numacachectl` links none of them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each `crate::X`/`numa_cache::X` path in `text` whose X is a server layer.
fn server_paths(text: &str) -> Vec<String> {
    const SERVER: [&str; 4] = ["service", "gateway", "store", "app"];
    let mut found = Vec::new();
    for prefix in ["crate::", "numa_cache::"] {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if SERVER.contains(&module.as_str()) {
                found.push(format!("{prefix}{module}"));
            }
        }
    }
    found
}

#[test]
fn the_cli_sources_import_no_server_layer() {
    let mut files = vec![repo().join("src/bin/numacachectl.rs")];
    rust_files(&repo().join("src/cli"), &mut files);
    let mut offenders = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for p in server_paths(&text) {
            offenders.push(format!("{}: {p}", f.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "numacachectl must use only the client crate, topology, policy and placement:\n{}",
        offenders.join("\n")
    );
    // The check itself sees what it looks for.
    assert_eq!(
        server_paths("use crate::gateway::metrics; numa_cache::store::Cache; crate::topology"),
        ["crate::gateway", "numa_cache::store"]
    );
}

#[test]
fn without_the_server_feature_no_server_crate_is_in_the_graph() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |features: &[&str]| {
        let out = Command::new(&cargo)
            .current_dir(repo())
            .args(["tree", "--offline", "-p", "numa-cache", "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}"])
            .args(features)
            .output()
            .expect("running cargo tree");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let server_crates = [
        "axum",
        "hyper",
        "rusqlite",
        "libsqlite3-sys",
        "zstd",
        "tracing-subscriber",
        "tracing-journald",
        "procfs",
        "quick_cache",
    ];
    let lean = names(&tree(&["--no-default-features"]));
    let full = names(&tree(&[]));
    for c in server_crates {
        assert!(
            !lean.iter().any(|n| n == c),
            "{c} is in numacachectl's dependency graph without the server feature"
        );
    }
    // And the daemon's build does have them, so the list above names real crates.
    for c in ["axum", "rusqlite", "zstd"] {
        assert!(
            full.iter().any(|n| n == c),
            "{c} missing from the server build"
        );
    }
    assert!(lean.iter().any(|n| n == "numa-cache-client"));
}
