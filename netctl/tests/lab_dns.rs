//! DNS as a pod of `netctl lab up` sees it: the pod's resolv.conf, glibc's resolver
//! (`getent`, parallel A and AAAA included) and dig through the search path, a name
//! forwarded to the upstream resolver on ext1, and the cache and stale answers once that
//! upstream stops answering.
//!
//! Needs root, `dig`, `getent`, `ip` and `dnsmasq` (scripts/setup installs them), and the
//! workspace's binaries (`cargo build`). One lab for the whole run, about 10 s.

use std::{
    net::SocketAddrV4,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use twill_lab::{Lab, Manifest, plan::random_name};
use twill_tests::{alive, leftovers, prometheus::Prometheus, require_root};

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");
/// The Service the pods look up, and its ClusterIP.
const WEB_IP: &str = "10.96.0.80";
/// ext1's underlay address: what `ext1.lab.example` is at the upstream.
const EXT1_IP: &str = "172.30.0.101";
/// TTL of every record of the upstream's zone (netctl's `LAB_UPSTREAM_TTL`).
const UPSTREAM_TTL: u32 = 3;
/// A lost answer costs glibc's resolver its whole timeout, 5 s by default; anything
/// under this bound lost nothing.
const ONE_SECOND: Duration = Duration::from_secs(1);

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

/// A command run in a pod with `netctl lab exec`, and how long it took.
struct Run {
    out: Output,
    took: Duration,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// The addresses at the start of each line (getent's output).
    fn addresses(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .stdout()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        found.dedup();
        found
    }

    /// TTLs of the answer records dig printed with `+noall +answer`.
    fn ttls(&self) -> Vec<u32> {
        self.stdout()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "took {:?}, {:?}: {}",
            self.took,
            self.out.status,
            text(&self.out)
        )
    }
}

fn in_pod(lab: &str, pod: &str, command: &[&str]) -> Run {
    let started = Instant::now();
    let out = netctl(&[&["lab", "exec", "--lab", lab, pod, "--"], command].concat());
    Run {
        out,
        took: started.elapsed(),
    }
}

/// The newest DNS query record on `node` for `query` that `pick` accepts, as `netctl
/// monitor -o json --dns` prints it; waits up to 5 s for it (records reach twilld in
/// batches, a few times a second).
fn dns_records(
    lab: &str,
    node: &str,
    query: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = netctl(&[
            "monitor", "--lab", lab, "--node", node, "--dns", query, "-o", "json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
            .filter(|r| pick(r))
            .last();
        if let Some(r) = found {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no DNS record of {query} on {node}:\n{}",
            text(&out)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn require_tools() {
    for (tool, arg) in [
        ("dig", "-v"),
        ("getent", "--version"),
        ("dnsmasq", "--version"),
    ] {
        let found = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: apt-get install bind9-dnsutils dnsmasq-base (scripts/setup)"
        );
    }
}

#[test]
fn pods_resolve_through_resolv_conf_glibc_dig_the_upstream_its_cache_and_stale_answers() {
    require_root();
    require_tools();
    let name = random_name();
    let _down = Down(name.clone());
    let up = netctl(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--externals",
        "1",
    ]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        text(&up).contains(&format!("forwarded to dnsmasq on ext1 ({EXT1_IP}:53")),
        "{}",
        text(&up)
    );
    let add = netctl(&[
        "lab",
        "pod",
        "add",
        "client",
        "--node",
        "node2",
        "--namespace",
        "shop",
        "--lab",
        &name,
    ]);
    assert!(add.status.success(), "{}", text(&add));
    let lab = Lab::attach(&name).expect("attach to the lab");
    twill_tests::netctl(
        NETCTL.as_ref(),
        &lab,
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
             spec: {{clusterIP: {WEB_IP}, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        ),
    );

    // The pod's resolv.conf, as the kubelet writes it, is what the pod's commands read.
    let manifest = Manifest::load(&name).expect("the lab's manifest");
    let client = manifest
        .pods
        .iter()
        .find(|p| p.name == "client")
        .expect("client recorded");
    let netns = client.netns.file_name().unwrap().to_str().unwrap();
    let written = std::fs::read_to_string(format!("/etc/netns/{netns}/resolv.conf"))
        .expect("the pod's resolv.conf under /etc/netns");
    let seen = in_pod(&name, "client", &["cat", "/etc/resolv.conf"]);
    assert_eq!(seen.stdout(), written);
    for line in [
        "nameserver 10.96.0.10",
        "search shop.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ] {
        assert!(written.lines().any(|l| l == line), "{line:?} in {written}");
    }
    // `ip netns exec`, which the pod's commands go through, reads the same file.
    let direct = Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/etc/resolv.conf"])
        .output()
        .expect("run ip netns exec");
    assert_eq!(String::from_utf8_lossy(&direct.stdout), written);

    // A short name through the search path: twill-dnsd has the Service once it has seen
    // it in etcd, moments after the apply.
    let deadline = Instant::now() + Duration::from_secs(10);
    let short = loop {
        let run = in_pod(&name, "client", &["getent", "hosts", "web"]);
        if run.out.status.success() || Instant::now() > deadline {
            break run;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        short.stdout().split_whitespace().collect::<Vec<_>>(),
        [WEB_IP, "web.shop.svc.cluster.local"],
        "{}",
        short.describe()
    );
    let short = in_pod(&name, "client", &["getent", "hosts", "web"]);
    assert!(short.took < ONE_SECOND, "{}", short.describe());
    // `<svc>.<namespace>` from another namespace; the short name is not found there.
    let qualified = in_pod(&name, "demo-node1", &["getent", "hosts", "web.shop"]);
    assert_eq!(qualified.addresses(), [WEB_IP], "{}", qualified.describe());
    assert!(qualified.took < ONE_SECOND, "{}", qualified.describe());
    for (pod, missing) in [("demo-node1", "web"), ("client", "no-such-svc")] {
        let run = in_pod(&name, pod, &["getent", "hosts", missing]);
        // getent's exit status 2: the key could not be found.
        assert_eq!(
            run.out.status.code(),
            Some(2),
            "{missing}: {}",
            run.describe()
        );
        assert!(run.took < ONE_SECOND, "{missing}: {}", run.describe());
    }

    // getaddrinfo sends A and AAAA at once on one socket; both answers must come back.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let run = in_pod(&name, "client", &["getent", "ahosts", "web"]);
        assert_eq!(run.addresses(), [WEB_IP], "{}", run.describe());
        assert!(
            run.stdout().contains("web.shop.svc.cluster.local"),
            "{}",
            run.describe()
        );
        slowest = slowest.max(run.took);
    }
    assert!(slowest < ONE_SECOND, "getent ahosts took {slowest:?}");
    eprintln!("getent ahosts web: slowest of 5 took {slowest:?}");

    // dig as a second client, with the same resolv.conf.
    let dig = in_pod(&name, "client", &["dig", "+search", "+short", "web"]);
    assert_eq!(dig.stdout().trim(), WEB_IP, "{}", dig.describe());

    // A name outside the cluster, forwarded to dnsmasq on ext1 by node1's twill-dnsd.
    let forwarded = in_pod(
        &name,
        "demo-node1",
        &["getent", "ahosts", "ext1.lab.example"],
    );
    let filled = Instant::now();
    assert_eq!(forwarded.addresses(), [EXT1_IP], "{}", forwarded.describe());

    // Every query is a record in `netctl monitor`, with the pod that asked and the answer:
    // twill-dnsd hands them to its node's twilld.
    let upstream = dns_records(&name, "node1", "ext1.lab.example", |r| {
        r["dns"]["qtype"] == "A" && r["dns"]["answered_by"] == "upstream"
    });
    assert_eq!(upstream["kind"], "dns", "{upstream}");
    assert_eq!(upstream["verdict"], "forwarded", "{upstream}");
    assert_eq!(upstream["reason"], "dns-upstream", "{upstream}");
    assert_eq!(upstream["program"], "twill-dnsd", "{upstream}");
    assert_eq!(upstream["direction"], "from-pod", "{upstream}");
    assert_eq!(upstream["source"]["pod"], "demo-node1", "{upstream}");
    assert_eq!(upstream["source"]["node"], "node1", "{upstream}");
    assert_eq!(upstream["dns"]["query"], "ext1.lab.example.", "{upstream}");
    assert_eq!(upstream["dns"]["rcode"], "NOERROR", "{upstream}");
    assert_eq!(
        upstream["dns"]["addresses"],
        serde_json::json!([EXT1_IP]),
        "{upstream}"
    );
    assert_eq!(upstream["dns"]["ttl"], UPSTREAM_TTL, "{upstream}");
    // The cluster zone's answers on node2, found and not found, for the pod there.
    let zone = dns_records(&name, "node2", "web.shop.svc.cluster.local", |r| {
        r["dns"]["qtype"] == "A"
    });
    assert_eq!(zone["reason"], "dns-zone", "{zone}");
    assert_eq!(zone["source"]["pod"], "client", "{zone}");
    assert_eq!(zone["source"]["namespace"], "shop", "{zone}");
    assert_eq!(
        zone["dns"]["addresses"],
        serde_json::json!([WEB_IP]),
        "{zone}"
    );
    let missing = dns_records(&name, "node2", "no-such-svc.shop.svc.cluster.local", |r| {
        r["dns"]["qtype"] == "A"
    });
    assert_eq!(missing["dns"]["rcode"], "NXDOMAIN", "{missing}");
    assert_eq!(
        missing["dns"]["addresses"],
        serde_json::json!([]),
        "{missing}"
    );
    // The human line says the same.
    let human = netctl(&[
        "monitor",
        "--lab",
        &name,
        "--node",
        "node1",
        "--dns",
        "ext1.lab.example",
    ]);
    assert!(
        text(&human)
            .lines()
            .any(|l| l.contains("default/demo-node1(")
                && l.contains("A ext1.lab.example. NOERROR 172.30.0.101")),
        "{}",
        text(&human)
    );
    let txt = in_pod(
        &name,
        "demo-node1",
        &["dig", "+search", "+short", "whoami.lab.example", "TXT"],
    );
    assert_eq!(txt.stdout().trim(), "\"upstream\"", "{}", txt.describe());

    // The upstream freezes (SIGSTOP): queries to it time out. Within the TTL the cache
    // answers, counting the upstream's TTL down.
    let ext1 = manifest.host("ext1").expect("ext1");
    let pid_file = ext1.state_dir.join("dnsmasq").join("dnsmasq.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("dnsmasq's pid file")
        .trim()
        .parse()
        .expect("a pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("stop dnsmasq");
    let dig_a = [
        "dig",
        "+noall",
        "+answer",
        "+tries=1",
        "+time=5",
        "ext1.lab.example.",
    ];
    let cached = in_pod(&name, "demo-node1", &dig_a);
    assert!(
        filled.elapsed() < Duration::from_secs(u64::from(UPSTREAM_TTL)),
        "too slow to see the cache: {:?} after the answer came",
        filled.elapsed()
    );
    assert!(cached.stdout().contains(EXT1_IP), "{}", cached.describe());
    assert!(
        cached.ttls().iter().all(|t| *t <= UPSTREAM_TTL),
        "a cached answer: {}",
        cached.describe()
    );
    assert!(cached.took < ONE_SECOND, "{}", cached.describe());
    let cached_getent = in_pod(
        &name,
        "demo-node1",
        &["getent", "ahosts", "ext1.lab.example"],
    );
    assert_eq!(
        cached_getent.addresses(),
        [EXT1_IP],
        "{}",
        cached_getent.describe()
    );
    assert!(
        cached_getent.took < ONE_SECOND,
        "{}",
        cached_getent.describe()
    );

    // Past the TTL the upstream is asked, does not answer, and the expired answer is served
    // (RFC 8767) with twill-dnsd's stale TTL, longer than any TTL the upstream gives.
    thread::sleep(
        Duration::from_secs(u64::from(UPSTREAM_TTL) + 1).saturating_sub(filled.elapsed()),
    );
    let stale = in_pod(&name, "demo-node1", &dig_a);
    assert!(stale.stdout().contains(EXT1_IP), "{}", stale.describe());
    assert!(
        stale.ttls().iter().all(|t| *t > UPSTREAM_TTL),
        "a stale answer: {}",
        stale.describe()
    );
    // glibc sends A and AAAA again; both are stale (the AAAA one a NODATA with the
    // zone's SOA) and both must come before glibc's 5 s timeout.
    let stale_getent = in_pod(
        &name,
        "demo-node1",
        &["getent", "ahosts", "ext1.lab.example"],
    );
    assert_eq!(
        stale_getent.addresses(),
        [EXT1_IP],
        "{}",
        stale_getent.describe()
    );
    assert!(
        stale_getent.took < Duration::from_millis(4500),
        "{}",
        stale_getent.describe()
    );
    eprintln!(
        "upstream stopped: cached answer in {:?} (dig), {:?} (getent ahosts); \
         stale answer in {:?} (dig), {:?} (getent ahosts)",
        cached.took, cached_getent.took, stale.took, stale_getent.took
    );
    let node1 = manifest.host("node1").expect("node1");
    let log = std::fs::read_to_string(node1.state_dir.join("twill-dnsd").join("dnsd.log"))
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("stale") && l.contains("ext1.lab.example")),
        "twill-dnsd logs the stale answer:\n{log}"
    );

    // The upstream gone (SIGKILL): ext1 refuses port 53, the stale answer comes at once.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill dnsmasq");
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let refused = in_pod(&name, "demo-node1", &dig_a);
    assert!(refused.stdout().contains(EXT1_IP), "{}", refused.describe());
    assert!(
        refused.ttls().iter().all(|t| *t > UPSTREAM_TTL),
        "{}",
        refused.describe()
    );
    assert!(refused.took < ONE_SECOND, "{}", refused.describe());
    eprintln!("upstream killed: stale answer (dig) in {:?}", refused.took);

    // Debian's Prometheus on ext1 scrapes both nodes' twill-dnsd (port 9153): queries,
    // cache hits, upstream latency and the query records, as stored by Prometheus.
    let ext1 = lab.externals()[0].clone();
    let targets: Vec<(String, SocketAddrV4)> = lab
        .nodes()
        .iter()
        .map(|n| {
            (
                n.name().to_owned(),
                SocketAddrV4::new(n.plan.underlay_ip, 9153),
            )
        })
        .collect();
    let prometheus = Prometheus::start_jobs(&ext1, &[("twill-dnsd", targets)]);
    prometheus.wait_for("both servers scraped", "sum(up{job=\"twill-dnsd\"})", |v| {
        v == 2.0
    });
    for (what, query, at_least) in [
        (
            "node2's queries",
            "sum(twill_dns_queries_total{node=\"node2\"})",
            10.0,
        ),
        (
            "node1's cache hits",
            "twill_dns_answers_total{node=\"node1\",source=\"cache\"}",
            1.0,
        ),
        (
            "node1's stale answers",
            "twill_dns_stale_answers_total{node=\"node1\"}",
            1.0,
        ),
        (
            "node1's upstream latency",
            "twill_dns_upstream_query_duration_seconds_count{node=\"node1\"}",
            1.0,
        ),
        (
            "node2's records taken by its twilld",
            "twill_dns_query_records_total{node=\"node2\",outcome=\"sent\"}",
            5.0,
        ),
    ] {
        prometheus.wait_for(what, query, |v| v >= at_least);
    }
    assert_eq!(
        prometheus.value("sum(twill_dns_query_records_total{outcome=\"lost\"})"),
        0.0,
        "no query record lost"
    );
    drop(prometheus);

    let down = netctl(&["lab", "down", &name]);
    assert!(down.status.success(), "{}", text(&down));
    // The pods' /etc/netns directories went with their namespaces.
    assert_eq!(leftovers(&manifest), Vec::<String>::new());
}
