//! FQDNPolicy end to end: a one-node lab with two external hosts, an upstream resolver
//! (dnsmasq) on the first, twilld, and twill-dnsd intercepting the cluster DNS Service.
//! A client pod that an FQDNPolicy selects reaches an outside host only after it resolved
//! an allowed name to it, at the rule's ports, until the answer's hold expires (an open
//! connection stays open); a denied name gets NXDOMAIN; a pod the policy does not select
//! is untouched; learned addresses survive twilld and twill-dnsd restarts; `netctl why`
//! names the name.
//!
//! Needs root, `dig`, `dnsmasq` and `python3`, and the workspace's binaries built (see
//! intercept.rs).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_abi::metrics::{Direction, Reason};
use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld, require_root, scripts::ECHO};

mod common;
use common::{Dnsd, Guard, require_tools, sibling, within};

const TWILLD_CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";
const DNS_VIP: &str = "10.96.0.10";
/// How long at least a learned address holds (the upstream's TTL is 1 s).
const MIN_TTL: Duration = Duration::from_secs(4);

fn objects() -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system}}
spec:
  clusterIP: {DNS_VIP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client}}}}
spec: {{containers: [{{name: c}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: default, labels: {{app: other}}}}
spec: {{containers: [{{name: c}}]}}
"#
    ) + POLICY
}

const POLICY: &str = r#"---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: client-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: allowed.example}]
    ports: [{port: 8080, protocol: TCP}]
  - toFQDNs: [{matchPattern: "*.wild.example"}]
"#;

/// A query from inside a pod to the cluster DNS Service: dig's status and its answers.
fn ask(netns: &str, name: &str) -> (String, Vec<String>) {
    let ns = NetNs::from_path(netns).expect("open the pod's namespace");
    let mut cmd = Command::new("dig");
    cmd.args([
        &format!("@{DNS_VIP}"),
        "+time=1",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
        name,
        "A",
    ]);
    let out = ns.run(move || cmd.output()).expect("enter").expect("dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (status, answers)
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Connected and echoed.
    Ok,
    /// Refused at once (a RST: nothing listens, but the packet got there).
    Refused,
    /// No answer within the timeout: dropped on the way.
    Dropped,
}

/// One TCP connection from inside a pod to `to`: connect, send a line, read it back.
fn probe(netns: &str, to: SocketAddr) -> Probe {
    let ns = NetNs::from_path(netns).expect("open the pod's namespace");
    ns.run(
        move || match TcpStream::connect_timeout(&to, Duration::from_millis(800)) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                c.write_all(b"x\n").unwrap();
                let mut buf = [0u8; 2];
                match c.read_exact(&mut buf) {
                    Ok(()) if &buf == b"x\n" => Probe::Ok,
                    _ => Probe::Dropped,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
            Err(_) => Probe::Dropped,
        },
    )
    .expect("enter")
}

/// A connection opened from inside a pod, kept open to echo through later.
fn open_connection(netns: &str, to: SocketAddr) -> TcpStream {
    let ns = NetNs::from_path(netns).expect("open the pod's namespace");
    let c = ns
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)))
        .expect("enter")
        .expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c
}

fn echoes(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 5];
    c.write_all(b"ping\n").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

fn echo_server(host: &Host) -> Guard {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(ECHO)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guard(host.spawn(cmd).expect("start an echo server"))
}

/// `f`'s first `Some`, tried every 100 ms for up to `limit`.
fn within_value<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn fqdn_drops(node: &Host) -> u64 {
    twill_bpf::read_metrics(&node.bpffs_dir)
        .expect("read the node's metrics")
        .get(Direction::FromPod, Reason::DropPolicyFqdn)
        .packets
}

/// `netctl why` from the client pod to `to`.
fn ask_why(netctl: &std::path::Path, lab: &Lab, to: SocketAddr) -> String {
    let why = twill_tests::netctl(
        netctl,
        lab,
        &["why", "--from", "default/client", "--to", &to.to_string()],
        "",
    );
    eprintln!("{why}");
    why
}

#[test]
fn an_fqdn_policy_opens_only_addresses_its_names_resolved_to() {
    require_root();
    require_tools(&[("dig", "-v"), ("dnsmasq", "--version"), ("python3", "-V")]);
    let twilld = sibling("twilld");
    let (twill, netctl) = (sibling("twill"), sibling("netctl"));
    let mut lab = Lab::up(&LabSpec::for_test(1, 2)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let (ext1, ext2) = (lab.externals()[0].clone(), lab.externals()[1].clone());
    let (ip1, ip2) = (ext1.plan.underlay_ip, ext2.plan.underlay_ip);
    let mut daemons = Twilld::start_on_every_node(&twilld, &lab, TWILLD_CONFIG);
    twill_tests::netctl(&netctl, &lab, &["apply", "-f", "-"], &objects());
    let (client, client_ip) = cni::add_pod(
        &twill,
        &mut lab,
        &node,
        &daemons[0],
        "client",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client",
    );
    let (other, _) = cni::add_pod(
        &twill,
        &mut lab,
        &node,
        &daemons[0],
        "other",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=other",
    );

    // The outside world: an upstream resolver (TTL 1 s) and echo servers on both hosts.
    let dnsmasq = common::dnsmasq(
        &ext1.state_dir,
        &[
            "--local-ttl=1".to_owned(),
            format!("--listen-address={ip1}"),
            format!("--address=/allowed.example/{ip1}"),
            format!("--address=/denied.example/{ip2}"),
            format!("--address=/a.wild.example/{ip2}"),
        ],
    );
    let _dnsmasq = Guard(ext1.spawn(dnsmasq).expect("start dnsmasq"));
    let _echo1 = echo_server(&ext1);
    let _echo2 = echo_server(&ext2);
    let web1: SocketAddr = (ip1, 8080).into();
    let web2: SocketAddr = (ip2, 8080).into();

    let config = node.state_dir.join("dnsd.toml");
    fs::write(
        &config,
        format!(
            "listen = [\"{}:53\"]\n\
             [etcd]\nendpoints = [\"{}\"]\n\
             [forward]\nupstreams = [\"{ip1}:53\"]\ntimeout_ms = 500\n\
             [intercept]\nservice_ip = \"{DNS_VIP}\"\npin_dir = \"{}\"\n\
             [fqdn]\nmin_ttl_seconds = {}\n\
             [records]\ntwilld_socket = \"{}\"\n",
            node.plan.underlay_ip,
            lab.etcd_endpoint(),
            node.bpffs_dir.display(),
            MIN_TTL.as_secs(),
            daemons[0].socket.display()
        ),
    )
    .expect("write the dnsd config");
    let mut dnsd = Dnsd::start(&node, &config);
    dnsd.wait_serving(&node, "allowed.example", &ip1.to_string());

    // The pod the policy does not select reaches both hosts and resolves every name.
    // Both echo servers listen once the unselected pod reaches them.
    within(
        "the unselected pod reaches outside",
        Duration::from_secs(5),
        || probe(&other, web1) == Probe::Ok && probe(&other, web2) == Probe::Ok,
    );
    assert_eq!(
        ask(&other, "denied.example"),
        ("NOERROR".to_owned(), vec![ip2.to_string()])
    );

    // The selected one: nothing outside before it resolved anything.
    within(
        "the client is held to its FQDNPolicy",
        Duration::from_secs(5),
        || probe(&client, web1) == Probe::Dropped,
    );
    let drops = fqdn_drops(&node);
    assert!(drops > 0, "the drops are counted as drop-policy-fqdn");

    // A denied name: NXDOMAIN, and its address stays closed.
    assert_eq!(
        ask(&client, "denied.example"),
        ("NXDOMAIN".to_owned(), vec![])
    );
    assert_eq!(probe(&client, web2), Probe::Dropped);
    assert!(
        dnsd.log_text().contains("which no rule allows"),
        "counted and said"
    );
    // And recorded: `netctl monitor` shows the query refused, and the policy that did it.
    let denied = within_value("the denied query's record", Duration::from_secs(5), || {
        let out = twill_tests::netctl(
            &netctl,
            &lab,
            &[
                "monitor",
                "--dns",
                "denied.example",
                "--pod",
                "default/client",
                "-o",
                "json",
            ],
            "",
        );
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["dns"]["qtype"] == "A")
    });
    assert_eq!(denied["kind"], "dns", "{denied}");
    assert_eq!(denied["verdict"], "refused", "{denied}");
    assert_eq!(denied["reason"], "dns-fqdn-denied", "{denied}");
    assert_eq!(denied["dns"]["rcode"], "NXDOMAIN", "{denied}");
    assert_eq!(
        denied["policy"]["egress"]["verdict"], "fqdn-denied",
        "{denied}"
    );
    assert_eq!(
        denied["policy"]["egress"]["isolated_by"],
        serde_json::json!(["default/client-egress"]),
        "{denied}"
    );

    // An allowed name: its address opens at once, at the rule's port only.
    let (status, answers) = ask(&client, "allowed.example");
    let resolved = Instant::now();
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec![ip1.to_string()])
    );
    assert_eq!(probe(&client, web1), Probe::Ok, "right after the answer");
    assert_eq!(
        probe(&client, (ip1, 9090).into()),
        Probe::Dropped,
        "another port is dropped, not refused by ext1"
    );
    assert_eq!(
        probe(&other, (ip1, 9090).into()),
        Probe::Refused,
        "(ext1 refuses port 9090 to a pod that may reach it)"
    );
    assert_eq!(
        probe(&client, web2),
        Probe::Dropped,
        "other hosts stay closed"
    );

    // `netctl why` names the name, and the closed host.
    let why = ask_why(&netctl, &lab, web1);
    assert!(
        why.contains("ALLOWED") && why.contains(&format!("allowed.example resolved to {ip1}")),
        "{why}"
    );
    let why = ask_why(&netctl, &lab, web2);
    assert!(
        why.contains("DENIED") && why.contains("default/client-egress"),
        "{why}"
    );
    let learned = twill_tests::netctl(&netctl, &lab, &["bpf", "fqdn", "--node", node.name()], "");
    eprintln!("{learned}");
    let row = learned
        .lines()
        .find(|l| l.contains("allowed.example"))
        .unwrap_or_else(|| panic!("no learned row:\n{learned}"));
    assert!(
        row.contains(&client_ip.to_string())
            && row.contains(&ip1.to_string())
            && row.contains("8080/TCP"),
        "{row}"
    );

    // A pattern rule without ports: every port of the resolved address.
    assert_eq!(
        ask(&client, "a.wild.example"),
        ("NOERROR".to_owned(), vec![ip2.to_string()])
    );
    assert_eq!(probe(&client, web2), Probe::Ok);

    // Expiry: a connection opened before stays open; a new one is dropped once the hold
    // (the answer's 1 s TTL raised to the minimum) is over.
    let mut open = open_connection(&client, web1);
    assert!(echoes(&mut open));
    let until = resolved + MIN_TTL + Duration::from_millis(500);
    thread::sleep(until.saturating_duration_since(Instant::now()));
    assert_eq!(
        probe(&client, web1),
        Probe::Dropped,
        "expired for new flows"
    );
    assert!(
        echoes(&mut open),
        "the open connection goes on past the expiry"
    );
    let why = ask_why(&netctl, &lab, web1);
    assert!(why.contains("DENIED") && why.contains("expired"), "{why}");

    // Restarts: the learned addresses are pinned, so neither twilld nor twill-dnsd going
    // away and coming back closes an address that still holds.
    assert_eq!(ask(&client, "allowed.example").0, "NOERROR");
    let resolved = Instant::now();
    daemons[0].kill();
    daemons[0].restart();
    dnsd.signal("KILL");
    let mut dnsd = Dnsd::start(&node, &config);
    dnsd.wait_serving(&node, "allowed.example", &ip1.to_string());
    assert!(
        resolved.elapsed() < MIN_TTL,
        "the restarts took {:?}, longer than the hold; the check below would prove nothing",
        resolved.elapsed()
    );
    assert_eq!(
        probe(&client, web1),
        Probe::Ok,
        "the learned address survived the restarts"
    );
    assert!(echoes(&mut open), "and so did the open connection");
    drop(open);

    // Deleting the policy opens the pod again.
    twill_tests::netctl(&netctl, &lab, &["delete", "-f", "-"], POLICY);
    within("the client is free again", Duration::from_secs(5), || {
        probe(&client, web2) == Probe::Ok
    });
    assert_eq!(
        ask(&client, "denied.example"),
        ("NOERROR".to_owned(), vec![ip2.to_string()])
    );
    drop(dnsd);
    drop(daemons);
}
