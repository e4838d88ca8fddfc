//! Prometheus metrics end to end: twilld on two nodes serves `/metrics` on its underlay
//! address, a real Prometheus (Debian's) on the external host scrapes both every second,
//! and what it stores moves with traffic: a connection through a ClusterIP and a
//! connection a NetworkPolicy denies, asked through Prometheus's query API. The text
//! twilld serves passes `promtool check metrics`. In the BGP-routed mode, the sessions'
//! gauges and prefix counts (promtool-checked too), and a flap counted when a peer's
//! daemon is killed.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    cni,
    daemon::Twilld,
    prometheus::{Prometheus, get},
    require_root,
    scripts::{ECHO, PROBE},
};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";
const METRICS_PORT: u16 = 9962;

fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

/// A process in a pod, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

impl Pod {
    fn spawn(&self, script: &str, args: &[&str]) -> Child {
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        NetNs::from_path(&self.netns)
            .unwrap()
            .run(move || cmd.spawn())
            .unwrap()
            .unwrap()
    }

    /// Whether one connection to `to`:8080 gets its line back within 300 ms.
    fn reaches(&self, to: Ipv4Addr) -> bool {
        let out = self
            .spawn(PROBE, &[&to.to_string(), "0.3"])
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).starts_with("ok")
    }
}

fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        thread::sleep(Duration::from_millis(50));
    }
}

const OBJECTS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec: {containers: [{name: c}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: client, labels: {app: client}}\nspec: {containers: [{name: c}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: other, labels: {app: other}}\nspec: {containers: [{name: c}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: websvc}\n\
spec: {clusterIP: 10.96.0.80, selector: {app: web}, ports: [{port: 8080, targetPort: 8080}]}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n";

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);

#[test]
fn prometheus_scrapes_every_node_and_its_series_move_with_traffic() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(2, 1)).expect("lab up");
    let nodes = lab.nodes();
    let daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| {
            let config = format!(
                "{CONFIG}[metrics]\nlisten = \"{}:{METRICS_PORT}\"\nmap_walk_seconds = 1\n",
                n.plan.underlay_ip
            );
            Twilld::start(Path::new(TWILLD), &lab, n, &config, &[])
        })
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    let ext = lab.externals()[0].clone();
    let targets: Vec<(String, SocketAddrV4)> = nodes
        .iter()
        .map(|n| {
            (
                n.name().to_owned(),
                SocketAddrV4::new(n.plan.underlay_ip, METRICS_PORT),
            )
        })
        .collect();
    let prometheus = Prometheus::start(&ext, &targets);
    prometheus.wait_for("both daemons scraped", "sum(up{job=\"twilld\"})", |v| {
        v == 2.0
    });
    for (node, _) in &targets {
        let held = prometheus.value(&format!("twill_lease_held{{node=\"{node}\"}}"));
        assert_eq!(held, 1.0, "{node} holds its lease");
        assert_eq!(
            prometheus.value(&format!("twill_etcd_up{{node=\"{node}\"}}")),
            1.0
        );
    }

    // web on node2 behind a ClusterIP, open to client (node1) only.
    netctl(&lab, &["apply", "-f", "-"], OBJECTS);
    let web = add_pod(&mut lab, &nodes[1], &daemons[1], "web");
    let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
    let other = add_pod(&mut lab, &nodes[0], &daemons[0], "other");
    let _server = Running(web.spawn(ECHO, &[]));
    until("client reaches web through the ClusterIP", || {
        client.reaches(CLUSTER_IP)
    });
    until("the policy denies other", || !other.reaches(web.ip));

    let translated =
        "sum(twill_datapath_packets_total{node=\"node1\",reason=\"service-translated\"})";
    let denied =
        "sum(twill_policy_denied_total{node=\"node2\",direction=\"ingress\",mode=\"enforce\"})";
    let dropped = "sum(twill_datapath_packets_total{node=\"node2\",reason=\"drop-policy-denied\"})";
    let allowed = "sum(twill_policy_rule_allowed_total{node=\"node2\",namespace=\"default\",policy=\"web-from-client\",direction=\"ingress\",rule=\"0\"})";
    // What Prometheus holds now, once it has scraped past the probes above.
    thread::sleep(Duration::from_secs(2));
    let before: Vec<f64> = [translated, denied, dropped, allowed]
        .iter()
        .map(|q| prometheus.value(q))
        .collect();
    eprintln!("before: {before:?}");

    for _ in 0..5 {
        assert!(client.reaches(CLUSTER_IP), "client through the ClusterIP");
        assert!(!other.reaches(web.ip), "other is denied");
    }
    for (what, query, was) in [
        ("ClusterIP translations", translated, before[0]),
        ("policy denials", denied, before[1]),
        ("policy drops", dropped, before[2]),
        ("connections the rule allowed", allowed, before[3]),
    ] {
        let now = prometheus.wait_for(what, query, |v| v >= was + 5.0);
        eprintln!("{what}: {was} -> {now}");
    }
    // The gauges: a frontend for the Service, its backend, conntrack entries counted by
    // the map walk, a histogram of ADD requests, passes of every loop.
    for (what, query) in [
        (
            "the Service frontend",
            "twill_service_frontends{node=\"node1\"}",
        ),
        ("its backend", "twill_service_backends{node=\"node1\"}"),
        (
            "conntrack entries",
            "twill_map_entries{node=\"node1\",map=\"TWILL_CT\"}",
        ),
        (
            "policy tables",
            "twill_map_entries{node=\"node2\",map=\"TWILL_POL_PEER\"}",
        ),
        (
            "ADD requests",
            "sum(twill_cni_request_duration_seconds_count{node=\"node1\",command=\"ADD\"})",
        ),
        (
            "policy passes",
            "twill_reconcile_duration_seconds_count{node=\"node2\",loop=\"policy\"}",
        ),
        (
            "overlay passes",
            "twill_reconcile_duration_seconds_count{node=\"node1\",loop=\"overlay\"}",
        ),
    ] {
        prometheus.wait_for(what, query, |v| v >= 1.0);
    }
    assert_eq!(
        prometheus.value("sum(twill_reconcile_errors_total)"),
        0.0,
        "no pass failed"
    );
    assert_eq!(
        prometheus.value("count(twill_build_info{version=\"0.1.0\"})"),
        2.0
    );

    // The text itself: Prometheus's format passes promtool's checks; OpenMetrics is
    // served when asked for; nothing else is served.
    let node1 = targets[0].1;
    let (status, content_type, text) = get(&ext, node1, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    twill_tests::promtool_check(&text);
    let (status, content_type, open) = get(
        &ext,
        node1,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert_eq!(get(&ext, node1, "/", None).0, 404);
    // No label names a pod.
    for pod in ["web", "client", "other"] {
        assert!(
            !text.contains(&format!("\"{pod}\"")),
            "a series is labelled with pod {pod}"
        );
    }
}

/// The value of the series named exactly `series` (with its labels) in `text`, if there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn bgp_sessions_prefixes_and_flaps_are_served() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let config = |n: &Host| {
        format!(
            "[network]\noverlay = \"bgp\"\nresync_seconds = 1\n[lease]\nttl_seconds = 60\n\
             [bgp]\nhold_seconds = 3\nkeepalive_seconds = 1\nrestart_seconds = 15\n\
             [metrics]\nlisten = \"{}:{METRICS_PORT}\"\n",
            n.plan.underlay_ip
        )
    };
    let mut daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| Twilld::start(Path::new(TWILLD), &lab, n, &config(n), &[]))
        .collect();
    let at = SocketAddrV4::new(nodes[0].plan.underlay_ip, METRICS_PORT);
    let scrape = || get(&nodes[0], at, "/metrics", None).2;
    let wait = |what: &str, done: &dyn Fn(&str) -> bool| -> String {
        let start = Instant::now();
        loop {
            let text = scrape();
            if done(&text) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: not within 60 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    };
    let established = r#"twill_bgp_sessions{state="Established"}"#;
    let flaps = r#"twill_bgp_session_flaps_total{peer="node2"}"#;
    // The flap series comes once the watcher has found the session (within a second).
    let text = wait("node1's session with node2 established and watched", &|t| {
        sample(t, established) == Some(1.0)
            && sample(t, r#"twill_bgp_prefixes_received{peer="node2"}"#) == Some(1.0)
            && sample(t, flaps).is_some()
    });
    assert_eq!(
        sample(&text, r#"twill_bgp_prefixes_sent{peer="node2"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"twill_bgp_sessions{state="Idle"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&text, flaps), Some(0.0), "{text}");
    twill_tests::promtool_check(&text);

    // node2's daemon killed: node1's session goes down (a flap) and comes back with the
    // restarted daemon; the flap stays counted.
    daemons[1].kill();
    let text = wait("the session down and its flap counted", &|t| {
        sample(t, established) == Some(0.0) && sample(t, flaps) >= Some(1.0)
    });
    assert_eq!(sample(&text, flaps), Some(1.0), "{text}");
    daemons[1].restart();
    let text = wait("the session back", &|t| sample(t, established) == Some(1.0));
    assert_eq!(sample(&text, flaps), Some(1.0), "{text}");
}
