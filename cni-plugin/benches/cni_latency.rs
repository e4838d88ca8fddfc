//! CNI ADD and DEL latency per pod: twill against the reference `bridge` + `host-local`
//! plugins, in one run, on the same lab node, called the same way (environment + stdin,
//! from inside the node's namespace). Prints medians and the ratios.
//!
//! Run as root with `scripts/bench` (it builds the release `twilld` this starts first);
//! PODS=N changes the number of pods (default 100). Not part of `cargo test`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::json;
use twill_lab::{Lab, LabSpec};
use twill_tests::{
    cni::{self, invoke, vars},
    daemon::Twilld,
    require_root,
};

fn main() {
    require_root();
    let pods: usize = std::env::var("PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let twill = Path::new(env!("CARGO_BIN_EXE_twill"));
    let twilld = twill.with_file_name("twilld");
    assert!(
        twilld.exists(),
        "{} missing: run scripts/bench",
        twilld.display()
    );
    let bridge = Path::new("/usr/lib/cni/bridge");
    assert!(
        bridge.exists(),
        "reference plugins missing: scripts/setup installs containernetworking-plugins"
    );

    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    // A /22 so the run has room for 100+ pods at once.
    let daemon = Twilld::start(
        &twilld,
        &lab,
        &node,
        "[network]\nnode_subnet_prefix = 22\n",
        &[],
    );
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    let twill_conf = cni::config("1.0.0", &daemon).to_string();
    let reference_conf = json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "subnet": "10.88.0.0/22",
            "dataDir": node.state_dir.join("host-local"),
        },
    })
    .to_string();

    let namespaces: Vec<(String, String)> = (0..pods)
        .map(|i| {
            let t = lab
                .create_netns(&format!("t{i}"))
                .unwrap()
                .path()
                .display()
                .to_string();
            let r = lab
                .create_netns(&format!("r{i}"))
                .unwrap()
                .path()
                .display()
                .to_string();
            (t, r)
        })
        .collect();

    let time = |bin: &Path, command: &str, id: &str, ns: &str, conf: &str| {
        let start = Instant::now();
        let out = invoke(bin, &node, &vars(command, id, ns, "eth0"), conf);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{} {command} {id}: {out:?}",
            bin.display()
        );
        took
    };
    // Warm up page cache and both code paths once.
    let warm = lab
        .create_netns("warm")
        .unwrap()
        .path()
        .display()
        .to_string();
    time(twill, "ADD", "warm", &warm, &twill_conf);
    time(twill, "DEL", "warm", &warm, &twill_conf);
    time(bridge, "ADD", "warm", &warm, &reference_conf);
    time(bridge, "DEL", "warm", &warm, &reference_conf);

    // twilld's background work (attaching a new pod's programs, deleting a deleted pod's
    // pair) finishes before the next call on either side, so neither side's call meets
    // it: SETTLE=0 skips the wait, and calls then also meet that work (pods arriving
    // faster than it is done).
    let settle = std::env::var("SETTLE").map_or(true, |v| v != "0");
    let settled = || {
        if settle {
            daemon.wait_status("settled", Duration::from_secs(30), |s| {
                s.background.attaching == 0 && s.background.retiring == 0
            });
        }
    };
    settled();
    let (mut t_add, mut r_add, mut t_del, mut r_del) = (vec![], vec![], vec![], vec![]);
    // Interleaved, so drift on a noisy machine hits both sides alike.
    for (i, (tns, rns)) in namespaces.iter().enumerate() {
        let id = format!("pod{i}");
        t_add.push(time(twill, "ADD", &id, tns, &twill_conf));
        settled();
        r_add.push(time(bridge, "ADD", &id, rns, &reference_conf));
    }
    for (i, (tns, rns)) in namespaces.iter().enumerate() {
        let id = format!("pod{i}");
        t_del.push(time(twill, "DEL", &id, tns, &twill_conf));
        settled();
        r_del.push(time(bridge, "DEL", &id, rns, &reference_conf));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (ms(v[v.len() / 2]), ms(v[v.len() * 9 / 10]))
    };
    let (ta, ta90) = stats(&mut t_add);
    let (ra, ra90) = stats(&mut r_add);
    let (td, td90) = stats(&mut t_del);
    let (rd, rd90) = stats(&mut r_del);
    println!(
        "CNI latency, {pods} pods, one lab node (ms; median / p90); twilld's background work {}",
        if settle {
            "done before each next call"
        } else {
            "not waited for (SETTLE=0)"
        }
    );
    println!(
        "{:<8} {:>18} {:>26} {:>8}",
        "", "twill", "bridge+host-local", "ratio"
    );
    println!(
        "{:<8} {:>8.2} / {:>7.2} {:>16.2} / {:>7.2} {:>8.2}",
        "ADD",
        ta,
        ta90,
        ra,
        ra90,
        ta / ra
    );
    println!(
        "{:<8} {:>8.2} / {:>7.2} {:>16.2} / {:>7.2} {:>8.2}",
        "DEL",
        td,
        td90,
        rd,
        rd90,
        td / rd
    );
    println!(
        "targets: ADD ratio <= 0.50 ({}), DEL ratio <= 1.00 ({})",
        if ta / ra <= 0.5 { "met" } else { "MISSED" },
        if td / rd <= 1.0 { "met" } else { "MISSED" }
    );
    drop(daemon);
    lab.down().expect("lab down");
}
