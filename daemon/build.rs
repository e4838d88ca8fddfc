//! Records the git commit twilld is built from (`TWILL_GIT_COMMIT`), for `twilld --version`
//! and the node record: `unknown` when the source is not a git checkout or git is missing.
use std::{path::Path, process::Command};

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TWILL_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // A new commit moves HEAD or the branch it names; watch only what exists (a missing
    // path would make cargo run this script on every build).
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    let head = git.join("HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed={}", head.display());
        if let Ok(text) = std::fs::read_to_string(&head)
            && let Some(branch) = text.trim().strip_prefix("ref: ")
        {
            for path in [git.join(branch), git.join("packed-refs")] {
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
}
