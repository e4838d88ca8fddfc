//! `twilld` carries the eBPF object and loads it on a node.

use std::process::{Command, Stdio};

use twill_lab::{Lab, LabSpec};
use twill_tests::require_root;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

#[test]
fn twilld_loads_its_embedded_programs_on_a_lab_node() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = &lab.nodes()[0];
    let pin_dir = node.bpffs_dir.join("check");
    let mut cmd = Command::new(TWILLD);
    cmd.arg("check")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = node.spawn(cmd).unwrap().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for program in twill_abi::programs::ALL {
        assert!(
            stdout.contains(&format!("loaded and verified: {program}")),
            "{stdout}"
        );
    }
    assert!(!pin_dir.exists(), "the check removes the pins it made");
    lab.down().unwrap();
}

#[test]
fn twilld_check_failure_names_the_pin_directory() {
    require_root();
    // A regular file where the pin directory should be: loading cannot pin there.
    let dir = std::env::temp_dir().join(format!("twill-not-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(TWILLD)
        .arg("check")
        .arg("--pin-dir")
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
}
