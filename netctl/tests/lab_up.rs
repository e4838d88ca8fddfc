//! The main job as a user runs it: `netctl lab up`, a pod added, a command in a pod,
//! `netctl lab down`, and nothing left.
//!
//! Alone in its own test binary: it makes this process a child subreaper to reap the
//! daemons netctl leaves running (and later stops), which must not race other tests.

use std::{
    fs,
    process::{Command, Output},
};

use nix::{
    sys::{
        prctl,
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};
use twill_lab::{Manifest, plan::random_name};
use twill_tests::{leftovers, require_root};

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

fn netctl(args: &[&str]) -> Output {
    Command::new(NETCTL)
        .args(args)
        .output()
        .expect("run netctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Takes the lab down even when an assertion fails half-way.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = netctl(&["lab", "down", &self.0]);
    }
}

/// Processes (not zombies) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && twill_tests::alive(pid) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

#[test]
fn lab_up_runs_daemons_and_pods_that_reach_each_other_and_down_removes_it_all() {
    require_root();
    prctl::set_child_subreaper(true).expect("become a child subreaper");
    let name = random_name();
    let _down = Down(name.clone());

    let up = netctl(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "3",
        "--externals",
        "1",
    ]);
    let said = text(&up);
    assert!(up.status.success(), "{said}");
    assert_eq!(
        said.matches(" ready").count(),
        3,
        "three ready nodes:\n{said}"
    );
    for pod in ["demo-node1", "demo-node2", "demo-node3"] {
        assert!(said.contains(pod), "{said}");
    }
    assert!(said.contains("all 6 pod pairs reach each other"), "{said}");

    let add = netctl(&[
        "lab", "pod", "add", "web", "--node", "node2", "--labels", "app=web", "--lab", &name,
    ]);
    assert!(add.status.success(), "{}", text(&add));
    let manifest = Manifest::load(&name).unwrap();
    let web = manifest
        .pods
        .iter()
        .find(|p| p.name == "web")
        .expect("web recorded");
    assert_eq!(web.node, "node2");
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));

    // A command inside a pod reaches the new pod across nodes.
    let ping = netctl(&[
        "lab",
        "exec",
        "--lab",
        &name,
        "demo-node1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &web.ip.to_string(),
    ]);
    assert!(ping.status.success(), "{}", text(&ping));

    // Cluster DNS through the Service IP, answered by the node's twill-dnsd (intercepted):
    // the new pod's Service-less name is not there, the DNS Service's own name is.
    let dig = netctl(&[
        "lab",
        "exec",
        "--lab",
        &name,
        "demo-node3",
        "--",
        "dig",
        "+time=2",
        "+tries=1",
        "+short",
        "@10.96.0.10",
        "kube-dns.kube-system.svc.cluster.local",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        "10.96.0.10",
        "{}",
        text(&dig)
    );

    // Mistakes are named.
    let dup = netctl(&[
        "lab", "pod", "add", "web", "--node", "node1", "--lab", &name,
    ]);
    assert!(!dup.status.success());
    assert!(
        text(&dup).contains("pod default/web already exists"),
        "{}",
        text(&dup)
    );
    let nowhere = netctl(&["lab", "pod", "add", "x", "--node", "node9", "--lab", &name]);
    assert!(
        text(&nowhere).contains("has no node node9; its nodes are node1, node2, node3"),
        "{}",
        text(&nowhere)
    );
    let who = netctl(&["lab", "exec", "--lab", &name, "nobody", "--", "true"]);
    assert!(!who.status.success());
    assert!(
        text(&who).contains("has no host or pod nobody"),
        "{}",
        text(&who)
    );

    // The cluster's store, as netctl shows it.
    let nodes = netctl(&["get", "nodes", "--lab", &name]);
    let table = text(&nodes);
    assert!(nodes.status.success(), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" Ready ")).count(),
        3,
        "{table}"
    );
    // -o wide: each node's flow API, as its record publishes it (the lab serves it on the
    // node's underlay address, port 9963).
    let wide = netctl(&["get", "nodes", "--lab", &name, "-o", "wide"]);
    let wide = text(&wide);
    assert!(
        wide.lines().next().unwrap_or("").ends_with("FLOWS"),
        "{wide}"
    );
    assert_eq!(
        wide.lines()
            .filter(|l| l.trim_end().ends_with(":9963"))
            .count(),
        3,
        "{wide}"
    );
    // Pod records reach etcd asynchronously, within moments of the ADD.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (pods, web_record) = loop {
        let out = netctl(&["get", "pods", "-A", "--lab", &name, "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pods = list["items"].clone();
        if let Some(web) = pods
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["name"] == "web" && p["status"]["podIP"].is_string())
            .cloned()
        {
            break (pods, web);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web never reached etcd: {pods}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(web_record["status"]["podIP"], web.ip.to_string());
    assert_eq!(web_record["spec"]["nodeName"], "node2");
    assert_eq!(pods.as_array().unwrap().len(), 4);

    let status = netctl(&["lab", "status", &name]);
    assert!(text(&status).contains("web"), "{}", text(&status));

    let down = netctl(&["lab", "down", &name]);
    assert!(down.status.success(), "{}", text(&down));
    // Reap the daemons netctl left to us, now stopped.
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
    let manifest_path_part = format!("/run/twill/labs/{name}/");
    assert_eq!(
        processes_mentioning(&manifest_path_part),
        Vec::<String>::new()
    );
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}
