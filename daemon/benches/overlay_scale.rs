//! Overlay scale: 1,000 simulated node leases written to etcd; how long until one node has
//! programmed all 1,000 routes, neighbours and FDB entries, the daemon's memory, and how
//! long until it converges after 100 of them are deleted. The anchor, in the same run, is
//! `ip -batch` writing the same 3,000 entries into a fresh node: the kernel's own floor.
//!
//! Run as root with `scripts/bench` (it builds the release binaries first). NODES=N
//! changes the count (default 1000).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use twill_api::cluster::{self, NodeRecord};
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{
    bench::{env_or, etcd, rss_mib},
    daemon::Twilld,
    require_root,
};

const CONFIG: &str = "[network]\ncluster_cidr = \"10.0.0.0/8\"\nservice_cidr = \"192.168.240.0/20\"\nresync_seconds = 60\n[lease]\nttl_seconds = 30\n";

fn fake(i: u32) -> NodeRecord {
    // Subnets 10.0.1.0/24 upwards (the real node takes 10.0.0.0/24), underlay 100.64/10.
    let n = i + 1;
    NodeRecord {
        name: format!("sim{i:05}"),
        subnet: format!("10.{}.{}.0/24", n >> 8, n & 0xff).parse().unwrap(),
        underlay_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i),
        vtep_mac: Some(format!(
            "02:aa:00:{:02x}:{:02x}:{:02x}",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        )),
    }
}

fn count(node: &Host, args: &[&str]) -> usize {
    let out = node.output(args[0], &args[1..]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn programmed(node: &Host) -> (usize, usize, usize) {
    (
        count(
            node,
            &["ip", "route", "show", "proto", "66", "dev", "twill-vxlan"],
        ),
        count(
            node,
            &[
                "ip",
                "neigh",
                "show",
                "dev",
                "twill-vxlan",
                "nud",
                "permanent",
            ],
        ),
        count(node, &["bridge", "fdb", "show", "dev", "twill-vxlan"]).saturating_sub(0),
    )
}

fn wait_until(node: &Host, want: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (r, n, f) = programmed(node);
        // The FDB also lists the device's own entries; count at least `want`.
        if r == want && n == want && f >= want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "only {r} routes, {n} neighbours, {f} fdb entries after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    require_root();
    let nodes: u32 = env_or("NODES", 1000);
    let twilld = Path::new(env!("CARGO_BIN_EXE_twilld"));
    let lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let daemon = Twilld::start(twilld, &lab, &node, CONFIG, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    let records: Vec<NodeRecord> = (0..nodes).map(fake).collect();

    // twill: write the leases, time until the node has programmed them all.
    let start = Instant::now();
    etcd(&lab, async |mut c| {
        for chunk in records.chunks(100) {
            let ops: Vec<_> = chunk
                .iter()
                .map(|r| {
                    etcd_client::TxnOp::put(
                        cluster::node_key(&r.name),
                        serde_json::to_string(r).unwrap(),
                        None,
                    )
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
        }
    });
    let written = start.elapsed();
    let programmed_after = wait_until(&node, nodes as usize, Duration::from_secs(120));
    let total = start.elapsed();
    let rss = rss_mib(daemon.child.id());

    // 100 leave.
    let start_delete = Instant::now();
    etcd(&lab, async |mut c| {
        for r in records.iter().take(100) {
            c.delete(cluster::node_key(&r.name), None).await.unwrap();
        }
    });
    wait_until(&node, nodes as usize - 100, Duration::from_secs(60));
    let converge_delete = start_delete.elapsed();
    let rss_after = rss_mib(daemon.child.id());

    // Anchor: the same entries through `ip -batch` and `bridge -batch` on node2, which
    // has a device like twill's but no daemon.
    let anchor_node = lab.nodes()[1].clone();
    let underlay_ip = anchor_node.plan.underlay_ip.to_string();
    let out = anchor_node
        .output(
            "ip",
            &[
                "link",
                "add",
                "twill-vxlan",
                "type",
                "vxlan",
                "id",
                "1",
                "dev",
                "eth0",
                "local",
                &underlay_ip,
                "dstport",
                "8472",
                "nolearning",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    anchor_node
        .output("ip", &["link", "set", "twill-vxlan", "up"])
        .unwrap();
    let mut ip_batch = String::new();
    let mut fdb_batch = String::new();
    for r in &records {
        let vtep = Ipv4Addr::from(u32::from(r.subnet.network()) + 1);
        let mac = r.vtep_mac.as_deref().unwrap();
        fdb_batch.push_str(&format!(
            "fdb replace {mac} dev twill-vxlan dst {} self permanent\n",
            r.underlay_ip
        ));
        ip_batch.push_str(&format!(
            "neigh replace {vtep} lladdr {mac} dev twill-vxlan nud permanent\n"
        ));
        ip_batch.push_str(&format!(
            "route replace {} via {vtep} dev twill-vxlan onlink proto 66\n",
            r.subnet
        ));
    }
    let batch = |program: &'static str, input: String| {
        let mut cmd = Command::new(program);
        cmd.args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        anchor_node
            .run(move || {
                let mut child = cmd.spawn().unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait().unwrap()
            })
            .unwrap()
    };
    let start_anchor = Instant::now();
    assert!(batch("bridge", fdb_batch).success());
    assert!(batch("ip", ip_batch).success());
    let anchor = start_anchor.elapsed();
    wait_until(&anchor_node, nodes as usize, Duration::from_secs(5));

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("overlay scale, {nodes} simulated node leases, one lab node");
    println!(
        "  leases written to etcd:            {:>8.0} ms",
        ms(written)
    );
    println!(
        "  all {nodes} routes+neighbours+FDB:    {:>8.0} ms after the first write (target <= 2000)",
        ms(total)
    );
    println!(
        "    (after the last write:           {:>8.0} ms)",
        ms(programmed_after)
    );
    println!(
        "  ip/bridge -batch, same entries:    {:>8.0} ms   ratio twill/anchor {:.1}",
        ms(anchor),
        ms(total) / ms(anchor)
    );
    println!(
        "  converged after 100 deletions:     {:>8.0} ms",
        ms(converge_delete)
    );
    println!(
        "  twilld RSS:                        {rss:>8.1} MiB (target <= 50), {rss_after:.1} MiB after deletions"
    );
    println!(
        "targets: programming {} , RSS {}",
        if total <= Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        },
        if rss <= 50.0 { "met" } else { "MISSED" }
    );
    drop(daemon);
    lab.down().unwrap();
}
