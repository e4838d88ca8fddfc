//! `netctl status` on a 3-node lab with real daemons: a healthy cluster says so (every
//! node ready, its lease, peers, version and programs, the object counts from etcd);
//! node1 records every packet into a one-page ring, and a UDP flood between two of its
//! pods makes it lose records, which status says in words; a malformed packet shows up
//! among the drop reasons; node3's daemon killed, status names it.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use twill_lab::{Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld, require_root};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";

fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

/// `netctl status` with `args`: its text (stdout and stderr).
fn status(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    twill_tests::netctl(&sibling("netctl"), lab, &all, "")
}

fn status_json(lab: &Lab) -> Value {
    let text = status(lab, &["-o", "json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Polls `netctl status -o json` until `check` holds; panics with the last report.
fn until(lab: &Lab, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let report = status_json(lab);
        if check(&report) {
            return report;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s:\n{report:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One IPv4 packet to `argv[1]` that says TCP and carries 2 bytes of it: the pod program
/// drops it as malformed.
const MALFORMED: &str = "import socket,sys\n\
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
dst = socket.inet_aton(sys.argv[1])\n\
header = bytes([0x45, 0, 0, 22, 0, 1, 0, 0, 64, 6, 0, 0, 0, 0, 0, 0]) + dst\n\
s.sendto(header + b'\\x9c\\x40', (sys.argv[1], 0))\n";

const OBJECTS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: websvc}\n\
spec: {clusterIP: 10.96.0.80, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n";

#[test]
fn status_says_healthy_then_names_lost_records_a_drop_and_a_dead_daemon() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
    let nodes = lab.nodes();
    let tiny = format!("{CONFIG}[flows]\nmode = \"packets\"\nring_bytes = 4096\nkeep = 1000\n");
    let mut daemons: Vec<Twilld> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let config = if i == 0 { tiny.as_str() } else { CONFIG };
            Twilld::start(Path::new(TWILLD), &lab, n, config, &[])
        })
        .collect();
    for d in &daemons {
        d.wait_status("ready with both peers", Duration::from_secs(20), |s| {
            s.not_ready.is_none() && s.overlay.peers == 2
        });
    }
    twill_tests::netctl(&sibling("netctl"), &lab, &["apply", "-f", "-"], OBJECTS);

    // Healthy: said so, every node with its lease, peers, version and programs.
    let report = until(&lab, "healthy", |r| r["healthy"] == true);
    let listed: Vec<&str> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["node1", "node2", "node3"], "{report:#}");
    for n in report["nodes"].as_array().unwrap() {
        let s = &n["status"];
        assert_eq!(
            (n["answered"].as_bool(), n["in_etcd"].as_bool()),
            (Some(true), Some(true)),
            "{n:#}"
        );
        assert!(
            s["subnet"].is_string() && s["etcd_reachable"] == true,
            "{n:#}"
        );
        assert_eq!(
            (s["overlay"]["peers"].as_u64(), n["peers_expected"].as_u64()),
            (Some(2), Some(2))
        );
        // `twilld --version`: the crate version, then the commit.
        let version = s["version"].as_str().unwrap_or_default();
        assert!(
            version.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (")),
            "{n:#}"
        );
        assert_eq!(n["programs"]["overlay"], 1, "{n:#}");
        assert!(
            n["maps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "TWILL_CT"),
            "{n:#}"
        );
    }
    assert_eq!(report["objects"]["services"], 1, "{report:#}");
    assert_eq!(report["objects"]["network_policies"], 1, "{report:#}");
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let text = status(&lab, &[]);
    eprintln!("{text}");
    assert!(text.starts_with("cluster: healthy"), "{text}");
    for want in [
        "node1",
        "node2",
        "node3",
        "1 service(s)",
        "1 network polic(ies)",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }

    // node1 loses records: a flood between two of its pods, each packet a record, far
    // more than one page holds. Then a malformed packet, dropped and recorded.
    let mut pods = Vec::new();
    for name in ["a", "b"] {
        let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        pods.push(cni::add_pod(
            &sibling("twill"),
            &mut lab,
            &nodes[0],
            &daemons[0],
            name,
            &args,
        ));
    }
    let to = (pods[1].1, 9);
    NetNs::from_path(&pods[0].0)
        .unwrap()
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..100_000 {
                let _ = socket.send_to(b"flood", to);
            }
        })
        .unwrap();
    daemons[0].wait_status("lost counted", Duration::from_secs(5), |s| s.flows.lost > 0);
    let dst = pods[1].1.to_string();
    let out = NetNs::from_path(&pods[0].0)
        .unwrap()
        .run(move || {
            Command::new("python3")
                .args(["-c", MALFORMED, &dst])
                .output()
        })
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = until(&lab, "loss and the drop said", |r| {
        r["drops"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["reason"] == "drop-malformed" && d["nodes"]["node1"].as_u64() >= Some(1))
    });
    assert_eq!(report["healthy"], false, "{report:#}");
    assert_eq!(
        report["drops"]["sources"]["node1"], "flow-records",
        "{report:#}"
    );
    let text = status(&lab, &[]);
    eprintln!("{text}");
    assert!(text.contains("node1: flow records lost: "), "{text}");
    assert!(text.contains("drop-malformed"), "{text}");
    assert!(
        !text.contains("node2:") && !text.contains("node3:"),
        "{text}"
    );

    // node3's daemon killed: status names it, and the others stay as they were.
    daemons[2].kill();
    let text = status(&lab, &[]);
    eprintln!("{text}");
    assert!(text.contains("node3: daemon not answering"), "{text}");
    assert!(!text.contains("node2:"), "{text}");
    let report = status_json(&lab);
    let node3 = &report["nodes"][2];
    assert_eq!(
        (node3["name"].as_str(), node3["answered"].as_bool()),
        (Some("node3"), Some(false))
    );

    drop(daemons);
    lab.down().unwrap();
}
