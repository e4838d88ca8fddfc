//! The CNI binary speaks the spec's VERSION.

use std::process::Command;

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

#[test]
fn cni_version_lists_every_supported_spec_version() {
    let out = Command::new(TWILL)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(out.status.success());
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["cniVersion"], "1.1.0");
    assert_eq!(
        reply["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}
