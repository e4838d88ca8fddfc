//! A run killed with SIGKILL leaves its lab behind; `netctl lab cleanup` removes it.
//!
//! Alone in its own test binary: it makes this process a child subreaper and reaps
//! orphans, which must not race with other tests' children.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::{
        prctl,
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};
use twill_lab::{Manifest, plan::random_name};
use twill_tests::{alive, leftovers, require_root};

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

#[test]
fn cleanup_removes_the_lab_of_a_killed_netctl() {
    require_root();
    // Orphans of our children (etcd, once netctl dies) are re-parented to us, so we can
    // reap them and check that no process is left, zombie or not.
    prctl::set_child_subreaper(true).expect("become a child subreaper");
    let netctl = NETCTL;
    let name = random_name();

    let mut holder = Command::new(netctl)
        .args([
            "lab",
            "up",
            "--hold",
            "--nodes",
            "2",
            "--externals",
            "0",
            "--name",
            &name,
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start netctl lab up --hold");
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        if let Ok(m) = Manifest::load(&name)
            && m.ready
        {
            break m;
        }
        assert!(
            holder.try_wait().unwrap().is_none(),
            "netctl lab up exited before the lab was ready"
        );
        assert!(Instant::now() < deadline, "lab {name} not ready in time");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(!manifest.is_stale());

    kill(Pid::from_raw(holder.id() as i32), Signal::SIGKILL).unwrap();
    holder.wait().unwrap();
    // Killed without a chance to clean up: everything is still there, and marked stale.
    assert!(Manifest::load(&name).unwrap().is_stale());
    assert!(!leftovers(&manifest).is_empty());
    let status = Command::new(netctl)
        .args(["lab", "status", &name])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("stale"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    let cleanup = Command::new(netctl)
        .args(["lab", "cleanup"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cleanup.stdout);
    assert!(
        cleanup.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(said.contains(&format!("removed lab {name}")), "{said}");

    let etcd = manifest.etcd.expect("etcd recorded");
    // Reap the orphaned etcd, now dead, so it does not linger as our zombie.
    let _ = waitpid(Pid::from_raw(etcd.pid as i32), Some(WaitPidFlag::WNOHANG));
    assert!(!alive(etcd.pid));
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}
