//! Interception of pods' DNS queries end to end: a one-node lab with twilld, a fallback
//! DNS pod (dnsmasq) behind the kube-system/kube-dns Service at 10.96.0.10, and twill-dnsd
//! on the node with `[intercept]`. A client pod asks 10.96.0.10 and gets twill-dnsd's
//! answer while it runs, and dnsmasq's as soon as it dies (its sockets are gone) or stops.
//!
//! Needs root, `dig` and `dnsmasq` (scripts/setup installs both) and the workspace's
//! binaries built: `cargo test -p twill-dnsd` alone builds only twill-dnsd, so run
//! `cargo build` first (scripts/test runs `cargo build --all-targets`), or the test fails
//! naming the missing binary.

use std::{
    fs,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld, require_root};

mod common;
use common::{Dnsd, Guard, require_tools, sibling, within};

const TWILLD_CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";
const DNS_VIP: &str = "10.96.0.10";
const WEB_VIP: &str = "10.96.0.80";
const WEB_NAME: &str = "web.default.svc.cluster.local";

fn objects() -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Pod
metadata: {{name: dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec: {{containers: [{{name: dnsmasq}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {DNS_VIP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {WEB_VIP}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

/// `dig +short` from inside a pod's namespace (the per-packet path: not in the node's
/// cgroup), one try of at most 1 s. The trimmed output; empty on no answer or an error.
fn dig_in(netns: &str, args: &[&str]) -> String {
    let ns = NetNs::from_path(netns).expect("open the pod's namespace");
    let mut cmd = Command::new("dig");
    cmd.args([&format!("@{DNS_VIP}"), "+time=1", "+tries=1", "+short"])
        .args(args);
    let out = ns.run(move || cmd.output()).expect("enter").expect("dig");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fallback answer: dnsmasq's record, not an error line from dig.
fn is_fallback(answer: &str) -> bool {
    answer == "\"fallback\""
}

/// `(start, end, answered)` of each whoami.test query a background loop sends.
type Probes = Arc<std::sync::Mutex<Vec<(Instant, Instant, bool)>>>;

/// The longest time the loop saw no answer: from the start of the first failed query of
/// a run to the start of the next answered one (so it includes dig's 1 s timeout of the
/// last failed query).
fn longest_outage(probes: &[(Instant, Instant, bool)]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    for &(start, _, ok) in probes {
        match (ok, failing_since) {
            (false, None) => failing_since = Some(start),
            (true, Some(since)) => {
                longest = longest.max(start - since);
                failing_since = None;
            }
            _ => {}
        }
    }
    if let (Some(since), Some(&(_, end, _))) = (failing_since, probes.last()) {
        longest = longest.max(end - since);
    }
    longest
}

#[test]
fn pods_queries_to_the_dns_service_go_to_twill_dnsd_and_fall_back_when_it_dies() {
    require_root();
    require_tools(&[("dig", "-v"), ("dnsmasq", "--version")]);
    let twilld = sibling("twilld");
    let (twill, netctl) = (sibling("twill"), sibling("netctl"));
    let mut lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let mut daemons = Twilld::start_on_every_node(&twilld, &lab, TWILLD_CONFIG);

    let (dns_netns, dns_ip) = cni::add_pod(
        &twill,
        &mut lab,
        &node,
        &daemons[0],
        "dns",
        "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns",
    );
    let (client_netns, _) = cni::add_pod(
        &twill,
        &mut lab,
        &node,
        &daemons[0],
        "client",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client",
    );
    let mut dnsmasq = common::dnsmasq(
        &node.state_dir,
        &[
            "--txt-record=whoami.test,fallback".to_owned(),
            format!("--listen-address={dns_ip}"),
        ],
    );
    let ns = NetNs::from_path(&dns_netns).expect("the dns pod's namespace");
    let _dnsmasq = Guard(
        ns.run(move || dnsmasq.spawn())
            .unwrap()
            .expect("start dnsmasq"),
    );
    twill_tests::netctl(&netctl, &lab, &["apply", "-f", "-"], &objects());

    // Without twill-dnsd, the Service reaches dnsmasq: the fallback is a plain Service.
    within(
        "the kube-dns Service answers",
        Duration::from_secs(15),
        || is_fallback(&dig_in(&client_netns, &["whoami.test", "TXT"])),
    );
    assert_eq!(
        dig_in(&client_netns, &[WEB_NAME, "A"]),
        "",
        "dnsmasq knows no cluster name"
    );

    let config = node.state_dir.join("dnsd.toml");
    fs::write(
        &config,
        format!(
            "listen = [\"{}:53\"]\n\
             [etcd]\nendpoints = [\"{}\"]\n\
             [forward]\nupstreams = [\"{dns_ip}:53\"]\ntimeout_ms = 500\n\
             [intercept]\nservice_ip = \"{DNS_VIP}\"\npin_dir = \"{}\"\n",
            node.plan.underlay_ip,
            lab.etcd_endpoint(),
            node.bpffs_dir.display()
        ),
    )
    .expect("write the dnsd config");
    let mut dnsd = Dnsd::start(&node, &config);
    dnsd.wait_serving(&node, WEB_NAME, WEB_VIP);

    // 1. Intercepted: a name only twill-dnsd knows, from 10.96.0.10 (dig checks the
    // reply's source), over UDP and TCP.
    let took = within("queries intercepted", Duration::from_secs(1), || {
        dig_in(&client_netns, &[WEB_NAME, "A"]) == WEB_VIP
    });
    eprintln!("intercepting {took:?} after twill-dnsd served");
    assert_eq!(dig_in(&client_netns, &["+tcp", WEB_NAME, "A"]), WEB_VIP);
    assert!(is_fallback(&dig_in(&client_netns, &["whoami.test", "TXT"])));
    // The socket path: a host process in the node's cgroup.
    let mut dig = Command::new("dig");
    dig.args([
        &format!("@{DNS_VIP}"),
        "+time=1",
        "+tries=1",
        "+short",
        WEB_NAME,
    ])
    .stdout(Stdio::piped());
    let out = node.spawn(dig).unwrap().wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        WEB_VIP,
        "socket path"
    );

    // twilld killed and started again: DNS does not notice (twill-dnsd is its own
    // process; the programs and maps are pinned and stay, and the restarted daemon swaps
    // its programs in without a gap). Every query of the loop is intercepted.
    let cluster_names = {
        let netns = client_netns.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let looped = thread::spawn(move || {
            let mut answers = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                answers.push(dig_in(&netns, &[WEB_NAME, "A"]));
                thread::sleep(Duration::from_millis(20));
            }
            answers
        });
        thread::sleep(Duration::from_millis(300));
        daemons[0].kill();
        thread::sleep(Duration::from_millis(700));
        daemons[0].restart();
        thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
        looped.join().expect("the lookup loop")
    };
    let missed = cluster_names
        .iter()
        .filter(|a| a.as_str() != WEB_VIP)
        .count();
    eprintln!(
        "twilld killed and restarted: {} lookups, {missed} not intercepted",
        cluster_names.len()
    );
    assert!(
        cluster_names.len() >= 10 && missed == 0,
        "lookups while twilld was killed and restarted: {cluster_names:?}"
    );

    // Whoami queries all along: answered by twill-dnsd (forwarded) or by dnsmasq.
    let probes: Probes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (probes, stop, netns) = (probes.clone(), stop.clone(), client_netns.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = is_fallback(&dig_in(&netns, &["whoami.test", "TXT"]));
                probes.lock().unwrap().push((start, Instant::now(), ok));
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    thread::sleep(Duration::from_millis(500));

    // 2. SIGKILL: no cleanup, but the process's sockets go with it, and the programs
    // send a new flow to the local server only while a socket takes its address: the
    // next query already reaches dnsmasq, well before the entries expire (1 s). A query
    // goes out every 100 ms, each on its own; the first answered one says when the
    // fallback began.
    dnsd.signal("KILL");
    let killed = Instant::now();
    let queries: Vec<_> = (0..20u32)
        .map(|i| {
            let netns = client_netns.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100) * i);
                let sent = killed.elapsed();
                let fallback = is_fallback(&dig_in(&netns, &["whoami.test", "TXT"]))
                    && dig_in(&netns, &[WEB_NAME, "A"]).is_empty();
                (sent, fallback)
            })
        })
        .collect();
    let results: Vec<(Duration, bool)> = queries
        .into_iter()
        .map(|q| q.join().expect("a query thread"))
        .collect();
    let took = results
        .iter()
        .find(|(_, fallback)| *fallback)
        .map(|(sent, _)| *sent)
        .unwrap_or_else(|| panic!("no fallback after SIGKILL: {results:?}"));
    // One datagram lost on a loaded machine (dig tries once) is not the fallback failing.
    let failed_after = results
        .iter()
        .filter(|(sent, fallback)| !*fallback && *sent > took)
        .count();
    assert!(
        failed_after <= 1,
        "queries failed after the fallback began: {results:?}"
    );
    assert!(
        took <= Duration::from_millis(150),
        "fallback {took:?} after SIGKILL: {results:?}"
    );
    eprintln!("fallback {took:?} after SIGKILL");
    thread::sleep(Duration::from_millis(500));

    // 3. Back: intercepted again as soon as it serves.
    let restarted = Instant::now();
    let mut dnsd = Dnsd::start(&node, &config);
    dnsd.wait_serving(&node, WEB_NAME, WEB_VIP);
    let took = within(
        "intercepted after a restart",
        Duration::from_secs(1),
        || dig_in(&client_netns, &[WEB_NAME, "A"]) == WEB_VIP,
    );
    eprintln!(
        "intercepting again {took:?} after twill-dnsd served ({:?} after it started)",
        restarted.elapsed()
    );
    thread::sleep(Duration::from_millis(500));

    // 4. SIGTERM: the entries are removed before it exits; the next query falls back.
    dnsd.signal("TERM");
    assert!(
        is_fallback(&dig_in(&client_netns, &["whoami.test", "TXT"])),
        "no fallback right after SIGTERM:\n{}",
        dnsd.log_text()
    );
    assert_eq!(dig_in(&client_netns, &[WEB_NAME, "A"]), "");
    let entries = twill_bpf::read_local_backends(&node.bpffs_dir).expect("read the map");
    assert!(
        entries.is_empty(),
        "entries left after SIGTERM: {entries:?}"
    );

    stop.store(true, Ordering::Relaxed);
    prober.join().expect("the probe loop");
    let probes = probes.lock().unwrap();
    let failed = probes.iter().filter(|p| !p.2).count();
    let outage = longest_outage(&probes);
    // Queries that went out into the black hole: from the first unanswered one sent to
    // the last, over each run of them.
    let mut lost_window = Duration::ZERO;
    let mut first_lost: Option<Instant> = None;
    for &(start, _, ok) in probes.iter() {
        match (ok, first_lost) {
            (false, None) => first_lost = Some(start),
            (false, Some(first)) => lost_window = lost_window.max(start - first),
            (true, _) => first_lost = None,
        }
    }
    eprintln!(
        "whoami.test: {} queries, {failed} unanswered, sent unanswered over at most \
         {lost_window:?}, longest outage (with dig's timeout) {outage:?}",
        probes.len()
    );
    assert!(
        lost_window <= Duration::from_millis(150),
        "queries sent over {lost_window:?} went unanswered"
    );
    assert!(
        // At most one lost datagram: dig's 1 s timeout and the spacing.
        outage <= Duration::from_millis(1200),
        "queries went unanswered for {outage:?}"
    );
    drop(daemons);
}
