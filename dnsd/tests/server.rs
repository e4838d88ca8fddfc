//! twill-dnsd end to end: a lab's etcd, objects written with netctl, the server running in
//! the node's namespace, and the real `dig` and glibc (`getent`) asking it.
//!
//! Needs root, `dig` (Debian bind9-dnsutils, in scripts/setup), `dnsmasq` and a prior
//! `cargo build` (for target/debug/netctl next to the twill-dnsd binary).

mod common;

use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use twill_lab::{Host, Lab, LabSpec};

const DNSD: &str = env!("CARGO_BIN_EXE_twill-dnsd");

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(DNSD).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build` first",
        path.display()
    );
    path
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

fn require_dig() {
    assert!(
        Command::new("dig").arg("-v").output().is_ok(),
        "dig is missing: apt-get install bind9-dnsutils (scripts/setup installs it)"
    );
}

/// The cluster every test starts with.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod}
spec:
  clusterIP: None
  ports: [{name: postgres, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: prod, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: postgres, port: 5433, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
- addresses: [10.244.2.8]
  conditions: {ready: true}
- addresses: [10.244.3.3]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: sts, namespace: prod}
spec:
  clusterIP: None
  selector: {app: sts}
  ports: [{name: peer, port: 7000, targetPort: peer}]
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: prod}
spec: {type: ExternalName, externalName: www.example.com}
---
apiVersion: v1
kind: Pod
metadata: {name: sts-0, namespace: prod, labels: {app: sts}}
spec: {containers: [{name: c, ports: [{name: peer, containerPort: 7001}]}]}
"#;

/// The pod record (address) the CNI path would write for `prod/sts-0`.
fn pod_record() -> (String, String) {
    record_of("sts-0", "10.244.1.20")
}

/// The pod record (address) the CNI path would write for `prod/<name>`.
fn record_of(name: &str, ip: &str) -> (String, String) {
    let record = twill_api::cluster::PodRecord {
        namespace: "prod".into(),
        name: name.into(),
        node: "node1".into(),
        ip: ip.parse().expect("an address"),
        container_id: format!("c-{name}"),
        ifname: "eth0".into(),
    };
    (
        twill_api::cluster::pod_key("prod", name),
        serde_json::to_string(&record).expect("a pod record as json"),
    )
}

/// `twill-dnsd run` in a node's namespace; killed, and its log shown on failure, when
/// dropped.
struct Dnsd {
    child: Child,
    log: PathBuf,
    ip: Ipv4Addr,
}

impl Dnsd {
    fn start(lab: &Lab, node: &Host) -> Dnsd {
        // The upstream is a closed port of the node itself: forwarding fails at once,
        // and these tests only look at what the zone answers.
        Dnsd::start_forwarding(lab, node, "127.0.0.1:9")
    }

    /// twill-dnsd forwarding what is not the zone's to `upstream`.
    fn start_forwarding(lab: &Lab, node: &Host, upstream: &str) -> Dnsd {
        Dnsd::start_with(lab, node, upstream, "")
    }

    /// [`Self::start_forwarding`] with `more` appended to the configuration.
    fn start_with(lab: &Lab, node: &Host, upstream: &str, more: &str) -> Dnsd {
        let ip = node.plan.underlay_ip;
        let config = node.state_dir.join("dnsd.toml");
        fs::write(
            &config,
            format!(
                "listen = [\"{ip}:53\"]\n\
                 pods = \"verified\"\n\
                 [etcd]\nendpoints = [\"{}\"]\n\
                 [forward]\nupstreams = [\"{upstream}\"]\ntimeout_ms = 200\n{more}",
                lab.etcd_endpoint()
            ),
        )
        .expect("write the dnsd config");
        let log = node.state_dir.join("dnsd.log");
        let out = fs::File::create(&log).expect("create the dnsd log");
        let mut cmd = Command::new(DNSD);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("TWILL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log"))
            .stderr(out);
        let child = node.spawn(cmd).expect("start twill-dnsd");
        let mut dnsd = Dnsd { child, log, ip };
        dnsd.wait_ready(node);
        dnsd
    }

    /// Until the zone is in: before, every query is SERVFAIL.
    fn wait_ready(&mut self, node: &Host) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = dig(node, self.ip, &["dns-version.cluster.local", "TXT"]);
            if answer.status == "NOERROR" {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("twill-dnsd exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "twill-dnsd not ready after 20 s (last: {answer:?}):\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Dnsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("twill-dnsd log:\n{}", self.log_text());
        }
    }
}

/// What dig printed, taken apart.
#[derive(Debug)]
struct Answer {
    status: String,
    flags: Vec<String>,
    /// The question as printed (`name. IN A`), whitespace squeezed.
    question: String,
    /// Answer records, whitespace squeezed, TTL left out: `name. IN A 10.96.0.10`.
    answers: Vec<String>,
    authority: Vec<String>,
    raw: String,
}

impl Answer {
    fn data(&self) -> Vec<String> {
        let mut data: Vec<String> = self
            .answers
            .iter()
            .map(|r| r.splitn(4, ' ').nth(3).unwrap_or_default().to_owned())
            .collect();
        data.sort();
        data
    }
}

/// `dig @server args` from `host`'s namespace, one try of at most 2 s.
fn dig(host: &Host, server: Ipv4Addr, args: &[&str]) -> Answer {
    let at = format!("@{server}");
    let mut all = vec![
        at.as_str(),
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+question",
        "+answer",
        "+authority",
    ];
    all.extend_from_slice(args);
    let out = host.output("dig", &all).expect("run dig");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut answer = Answer {
        status: String::new(),
        flags: Vec::new(),
        question: String::new(),
        answers: Vec::new(),
        authority: Vec::new(),
        raw: raw.clone(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            answer.status = rest.split(',').next().unwrap_or_default().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            answer.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with(";; QUESTION SECTION") {
            section = "question";
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ") || line.trim().is_empty() {
            if line.trim().is_empty() {
                section = "";
            }
        } else if section == "question" {
            let q = line.trim_start_matches(';');
            answer.question = q.split_whitespace().collect::<Vec<_>>().join(" ");
        } else {
            // name TTL class type data...: the TTL is left out.
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 4 {
                continue;
            }
            let mut record = vec![words[0]];
            record.extend_from_slice(&words[2..]);
            let record = record.join(" ");
            match section {
                "answer" => answer.answers.push(record),
                "authority" => answer.authority.push(record),
                _ => {}
            }
        }
    }
    answer
}

fn lab_with_dnsd() -> (Lab, Host, Dnsd) {
    twill_tests::require_root();
    require_dig();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    netctl(&lab, &["apply", "-f", "-"], CLUSTER);
    twill_tests::bench::put_all(&lab, &[pod_record()]);
    let node = lab.nodes().remove(0);
    let dnsd = Dnsd::start(&lab, &node);
    (lab, node, dnsd)
}

#[test]
fn dig_gets_the_cluster_records_over_udp_and_tcp() {
    let (_lab, node, mut dnsd) = lab_with_dnsd();
    let ip = dnsd.ip;
    let ask = |args: &[&str]| dig(&node, ip, args);

    // ClusterIP Service: its address, authoritative.
    let a = ask(&["web.prod.svc.cluster.local", "A"]);
    assert_eq!(a.status, "NOERROR", "{}", a.raw);
    assert_eq!(a.data(), ["10.96.0.10"], "{}", a.raw);
    assert!(a.flags.contains(&"aa".to_owned()), "{}", a.raw);

    // SRV of each named port, under its protocol.
    let srv = ask(&["_http._tcp.web.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        ["0 100 80 web.prod.svc.cluster.local."],
        "{}",
        srv.raw
    );
    let srv = ask(&["_dns._udp.web.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        ["0 100 53 web.prod.svc.cluster.local."],
        "{}",
        srv.raw
    );

    // Headless: the ready endpoints only, each with its dashed name.
    let headless = ask(&["db.prod.svc.cluster.local", "A"]);
    assert_eq!(
        headless.data(),
        ["10.244.1.5", "10.244.2.8"],
        "{}",
        headless.raw
    );
    let one = ask(&["10-244-2-8.db.prod.svc.cluster.local", "A"]);
    assert_eq!(one.data(), ["10.244.2.8"], "{}", one.raw);
    // Headless SRV ports are the endpoints' (5433), not the Service's (5432).
    let srv = ask(&["_postgres._tcp.db.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        [
            "0 50 5433 10-244-1-5.db.prod.svc.cluster.local.",
            "0 50 5433 10-244-2-8.db.prod.svc.cluster.local."
        ],
        "{}",
        srv.raw
    );

    // Headless with a selector: the selected pod that has an address, with the port its
    // named targetPort resolves to.
    let selected = ask(&["sts.prod.svc.cluster.local", "A"]);
    assert_eq!(selected.data(), ["10.244.1.20"], "{}", selected.raw);
    let srv = ask(&["_peer._tcp.sts.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        ["0 100 7001 10-244-1-20.sts.prod.svc.cluster.local."],
        "{}",
        srv.raw
    );

    // Pod records (pods = "verified"): only for a pod that exists in that namespace.
    let pod = ask(&["10-244-1-20.prod.pod.cluster.local", "A"]);
    assert_eq!(pod.data(), ["10.244.1.20"], "{}", pod.raw);
    let not_pod = ask(&["10-244-1-21.prod.pod.cluster.local", "A"]);
    assert_eq!(not_pod.status, "NXDOMAIN", "{}", not_pod.raw);

    // ExternalName: a CNAME to the external name, for any type (not chased outside the zone).
    let alias = ask(&["search.prod.svc.cluster.local", "A"]);
    assert!(
        alias
            .answers
            .iter()
            .any(|r| r.contains(" CNAME ") && r.ends_with("www.example.com.")),
        "{}",
        alias.raw
    );

    // No such name: NXDOMAIN with the SOA. A name with no AAAA: NODATA, never NXDOMAIN.
    let missing = ask(&["nope.prod.svc.cluster.local", "A"]);
    assert_eq!(missing.status, "NXDOMAIN", "{}", missing.raw);
    assert!(
        missing.authority.iter().any(|r| r.contains(" SOA ")),
        "{}",
        missing.raw
    );
    let nodata = ask(&["web.prod.svc.cluster.local", "AAAA"]);
    assert_eq!(nodata.status, "NOERROR", "{}", nodata.raw);
    assert_eq!(nodata.answers, Vec::<String>::new(), "{}", nodata.raw);
    assert!(nodata.authority.iter().any(|r| r.contains(" SOA ")));
    // A namespace that exists (from its Namespace object) is NODATA too.
    let namespace = ask(&["prod.svc.cluster.local", "A"]);
    assert_eq!(
        (namespace.status.as_str(), namespace.answers.len()),
        ("NOERROR", 0),
        "{}",
        namespace.raw
    );

    // PTR of the ClusterIP and of a ready headless endpoint.
    let ptr = ask(&["-x", "10.96.0.10"]);
    assert_eq!(ptr.data(), ["web.prod.svc.cluster.local."], "{}", ptr.raw);
    let ptr = ask(&["-x", "10.244.1.5"]);
    assert_eq!(
        ptr.data(),
        ["10-244-1-5.db.prod.svc.cluster.local."],
        "{}",
        ptr.raw
    );

    // The same over TCP, and a 0x20 mixed-case question keeps its case.
    let tcp = ask(&["+tcp", "WeB.PrOd.svc.cluster.local", "A"]);
    assert_eq!(tcp.data(), ["10.96.0.10"], "{}", tcp.raw);
    assert!(
        tcp.question.starts_with("WeB.PrOd.svc.cluster.local."),
        "{}",
        tcp.raw
    );
    let tcp_srv = ask(&["+tcp", "_postgres._tcp.db.prod.svc.cluster.local", "SRV"]);
    assert_eq!(tcp_srv.answers.len(), 2, "{}", tcp_srv.raw);

    // Outside the zone: forwarded. Whatever the upstream says, the answer is for this
    // query (dig checks the id) and this question.
    for transport in ["+notcp", "+tcp"] {
        let outside = ask(&[transport, "example.com", "A"]);
        assert!(!outside.status.is_empty(), "no answer: {}", outside.raw);
        assert_eq!(outside.question, "example.com. IN A", "{}", outside.raw);
    }

    // Bad input: a header with a broken question gets FORMERR (same id); a runt is
    // dropped; several queries on one TCP connection are all answered. The server lives
    // on.
    let probe = format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fbad", ("{ip}", 53))
r, _ = s.recvfrom(4096)
print("formerr", r[0:2].hex(), r[3] & 15)
s.sendto(b"\x00\x01\x02", ("{ip}", 53))
try:
    s.recvfrom(4096); print("runt answered")
except socket.timeout:
    print("runt dropped")
def q(i, name):
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split("."))
    m = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"
    return struct.pack(">H", len(m)) + m
t = socket.create_connection(("{ip}", 53), timeout=2)
t.sendall(q(1, "web.prod.svc.cluster.local") + q(2, "db.prod.svc.cluster.local") + q(3, "nope.cluster.local"))
ids = []
f = t.makefile("rb")
for _ in range(3):
    n = struct.unpack(">H", f.read(2))[0]
    m = f.read(n); ids.append((struct.unpack(">H", m[:2])[0], m[3] & 15))
print("tcp", sorted(ids))
"#
    );
    let out = node
        .output("python3", &["-c", &probe])
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("formerr 1234 1"), "{text}");
    assert!(text.contains("runt dropped"), "{text}");
    assert!(text.contains("tcp [(1, 0), (2, 0), (3, 3)]"), "{text}");
    assert!(dnsd.is_running(), "twill-dnsd died:\n{}", dnsd.log_text());
}

#[test]
fn a_new_service_is_answered_within_a_second() {
    let (lab, node, dnsd) = lab_with_dnsd();
    let name = "late.prod.svc.cluster.local";
    assert_eq!(dig(&node, dnsd.ip, &[name, "A"]).status, "NXDOMAIN");
    netctl(
        &lab,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: prod}\n\
         spec: {clusterIP: 10.96.0.77, ports: [{port: 80}]}\n",
    );
    // netctl has returned: the Service is in etcd.
    let stored = Instant::now();
    let took = loop {
        let answer = dig(&node, dnsd.ip, &[name, "A"]);
        if answer.data() == ["10.96.0.77"] {
            break stored.elapsed();
        }
        assert!(
            stored.elapsed() < Duration::from_secs(5),
            "still {answer:?} 5 s after the write"
        );
        thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "new Service answered {} ms after the write",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(1),
        "answered only after {took:?}"
    );

    // A deleted Service goes the same way.
    netctl(
        &lab,
        &["delete", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: prod}\n\
         spec: {clusterIP: 10.96.0.77, ports: [{port: 80}]}\n",
    );
    let stored = Instant::now();
    loop {
        if dig(&node, dnsd.ip, &[name, "A"]).status == "NXDOMAIN" {
            break;
        }
        assert!(
            stored.elapsed() < Duration::from_secs(1),
            "still answered after 1 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "deleted Service gone {} ms after the write",
        stored.elapsed().as_millis()
    );
}

/// A StatefulSet's pods as its controller makes them (`spec.hostname` the pod's name,
/// `spec.subdomain` the governing headless Service), one pod whose subdomain is not the
/// Service, and a selector-less Service whose EndpointSlice names its endpoint.
const STATEFULSET: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: prod}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports: [{name: web, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: prod, labels: {app: nginx}}
spec: {hostname: web-0, subdomain: nginx, containers: [{name: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: prod, labels: {app: nginx}}
spec: {hostname: web-1, subdomain: nginx, containers: [{name: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: stray, namespace: prod, labels: {app: nginx}}
spec: {hostname: stray, subdomain: elsewhere, containers: [{name: nginx}]}
---
apiVersion: v1
kind: Service
metadata: {name: cache, namespace: prod}
spec: {clusterIP: None, ports: [{name: memcache, port: 11211}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cache-1, namespace: prod, labels: {kubernetes.io/service-name: cache}}
addressType: IPv4
ports: [{name: memcache, port: 11211, protocol: TCP}]
endpoints:
- {addresses: [192.0.2.40], hostname: cache-0, conditions: {ready: true}}
"#;

#[test]
fn an_endpoint_hostname_names_the_pod_under_its_headless_service() {
    let (lab, node, dnsd) = lab_with_dnsd();
    netctl(&lab, &["apply", "-f", "-"], STATEFULSET);
    twill_tests::bench::put_all(
        &lab,
        &[
            record_of("web-0", "10.244.1.30"),
            record_of("web-1", "10.244.1.31"),
            record_of("stray", "10.244.1.32"),
        ],
    );
    let ask = |args: &[&str]| dig(&node, dnsd.ip, args);
    // The writes are in etcd; the zone follows within a second (tested above).
    let deadline = Instant::now() + Duration::from_secs(5);
    let web_0 = loop {
        let answer = ask(&["web-0.nginx.prod.svc.cluster.local", "A"]);
        if answer.status == "NOERROR" && answer.data().len() == 1 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no answer 5 s after the write: {}",
            answer.raw
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(web_0.data(), ["10.244.1.30"], "{}", web_0.raw);
    assert!(web_0.flags.contains(&"aa".to_owned()), "{}", web_0.raw);
    let web_1 = ask(&["web-1.nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(web_1.data(), ["10.244.1.31"], "{}", web_1.raw);
    // The Service's own name still has every endpoint.
    let all = ask(&["nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(
        all.data(),
        ["10.244.1.30", "10.244.1.31", "10.244.1.32"],
        "{}",
        all.raw
    );

    // SRV targets are the hostnames; the stray pod (subdomain not this Service) keeps
    // its dashed name, and its hostname is no name here.
    let srv = ask(&["_web._tcp.nginx.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        [
            "0 33 8080 10-244-1-32.nginx.prod.svc.cluster.local.",
            "0 33 8080 web-0.nginx.prod.svc.cluster.local.",
            "0 33 8080 web-1.nginx.prod.svc.cluster.local.",
        ],
        "{}",
        srv.raw
    );
    let stray = ask(&["stray.nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(stray.status, "NXDOMAIN", "{}", stray.raw);
    let dashed = ask(&["10-244-1-32.nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(dashed.data(), ["10.244.1.32"], "{}", dashed.raw);
    // With a hostname, the dashed address is no name of the endpoint.
    let not_dashed = ask(&["10-244-1-30.nginx.prod.svc.cluster.local", "A"]);
    assert_eq!(not_dashed.status, "NXDOMAIN", "{}", not_dashed.raw);

    // The reverse record names the pod by its hostname.
    let ptr = ask(&["-x", "10.244.1.30"]);
    assert_eq!(
        ptr.data(),
        ["web-0.nginx.prod.svc.cluster.local."],
        "{}",
        ptr.raw
    );

    // A hostname written in an EndpointSlice, over TCP too.
    for transport in ["+notcp", "+tcp"] {
        let cache = ask(&[transport, "cache-0.cache.prod.svc.cluster.local", "A"]);
        assert_eq!(cache.data(), ["192.0.2.40"], "{}", cache.raw);
    }
    let srv = ask(&["_memcache._tcp.cache.prod.svc.cluster.local", "SRV"]);
    assert_eq!(
        srv.data(),
        ["0 100 11211 cache-0.cache.prod.svc.cluster.local."],
        "{}",
        srv.raw
    );
}

/// Removes `/etc/netns/<name>` (what `ip netns exec` bind-mounts over /etc) when dropped.
struct NetnsEtc(PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn glibc_resolves_a_short_name_through_the_search_path() {
    let (_lab, node, dnsd) = lab_with_dnsd();
    let netns = &node.plan.netns;
    let etc = NetnsEtc(Path::new("/etc/netns").join(netns));
    fs::create_dir_all(&etc.0).expect("create /etc/netns/<name>");
    fs::write(
        etc.0.join("resolv.conf"),
        format!(
            "nameserver {}\nsearch prod.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 timeout:1 attempts:1\n",
            dnsd.ip
        ),
    )
    .expect("write resolv.conf");
    let getent = |name: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "getent", "hosts", name])
            .output()
            .expect("run getent");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = getent("web");
    assert_eq!(code, Some(0), "getent hosts web: {text}");
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["10.96.0.10", "web.prod.svc.cluster.local"]
    );
    // `web.prod` through the second search domain.
    let (code, text) = getent("web.prod");
    assert_eq!(code, Some(0), "getent hosts web.prod: {text}");
    assert!(text.starts_with("10.96.0.10"), "{text}");
    // A name in no search domain is not found (exit 2).
    let (code, text) = getent("nothing-here");
    assert_eq!(code, Some(2), "{text}");
}

/// A query for `name` as written (letter case kept), RD set, with an OPT record when
/// `edns`; encoded.
fn raw_query(id: u16, name: &str, edns: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid name"),
        RecordType::A,
    ));
    if edns {
        let mut opt = hickory_proto::op::Edns::new();
        opt.set_max_payload(1232);
        m.set_edns(opt);
    }
    m.to_vec().expect("encodes")
}

/// `name` with each letter's case drawn at random.
fn random_case(name: &str) -> String {
    name.chars()
        .map(|c| {
            if rand::random::<bool>() {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[test]
fn forwarded_answers_from_the_cache_keep_the_askers_id_case_and_ttl_countdown() {
    twill_tests::require_root();
    common::require_tools(&[("dig", "-v"), ("dnsmasq", "--version")]);
    let lab = Lab::up(&LabSpec::for_test(1, 1)).expect("lab up");
    let node = lab.nodes().remove(0);
    let ext = lab.externals().remove(0);
    let ext_ip = ext.plan.underlay_ip;
    // The upstream: every *.ext.test name is 192.0.2.1, with a TTL of 5 s.
    let dnsmasq = common::dnsmasq(
        &ext.state_dir,
        &[
            "--local-ttl=5".to_owned(),
            format!("--listen-address={ext_ip}"),
            "--address=/ext.test/192.0.2.1".to_owned(),
        ],
    );
    let _dnsmasq = common::Guard(ext.spawn(dnsmasq).expect("start dnsmasq"));
    let dnsd = Dnsd::start_forwarding(&lab, &node, &format!("{ext_ip}:53"));
    let server = (dnsd.ip, 53);

    // Many queries sent at once, to be read in batches: 20 names, each asked 10 times, in
    // random case, with and without EDNS. The first of each is asked upstream; the others
    // are answered from the cache, most of them as kept encoded replies.
    let replies = node
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("set a timeout");
            let ask_all = |round: u16| {
                let mut asked = HashMap::new();
                for n in 0..200u16 {
                    let id = round * 1000 + n;
                    let name = random_case(&format!("host-{}.ext.test.", n % 20));
                    socket
                        .send_to(&raw_query(id, &name, n % 3 == 0), server)
                        .expect("send");
                    asked.insert(id, name);
                }
                let mut replies = Vec::new();
                let mut buf = [0u8; 4096];
                while replies.len() < asked.len() {
                    let Ok(len) = socket.recv(&mut buf) else {
                        break;
                    };
                    let reply = Message::from_vec(&buf[..len]).expect("a reply decodes");
                    let name = asked[&reply.metadata.id].clone();
                    replies.push((name, reply));
                }
                replies
            };
            let first = ask_all(1);
            // Past a second, the TTLs are counted down.
            thread::sleep(Duration::from_millis(1_100));
            (first, ask_all(2))
        })
        .expect("enter the node's namespace");
    let (first, later) = replies;
    assert_eq!(first.len(), 200, "every query answered, lost none");
    assert_eq!(later.len(), 200, "every query answered, lost none");
    for (round, replies) in [(1, &first), (2, &later)] {
        for (name, reply) in replies.iter() {
            let asked = Name::from_ascii(name).unwrap();
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(
                reply.queries[0].name().eq_case(&asked),
                "the question as asked: {name} got {reply:?}"
            );
            let [answer] = reply.answers.as_slice() else {
                panic!("one A record for {name}: {reply:?}");
            };
            assert!(answer.name.eq_case(&asked), "the owner as asked: {reply:?}");
            assert_eq!(answer.data, RData::A(Ipv4Addr::new(192, 0, 2, 1).into()));
            // dnsmasq's 5 s, less the whole seconds spent in the cache.
            match round {
                1 => assert!((4..=5).contains(&answer.ttl), "{reply:?}"),
                _ => assert!((3..=4).contains(&answer.ttl), "counted down: {reply:?}"),
            }
        }
    }
}

/// `GET /metrics` from `node`'s namespace: (status line, body).
fn scrape(node: &Host, at: (Ipv4Addr, u16)) -> (String, String) {
    use std::io::{Read as _, Write as _};
    node.run(move || {
        let mut stream = std::net::TcpStream::connect(at).expect("connect to /metrics");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: dnsd\r\nConnection: close\r\n\r\n")
            .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    })
    .expect("enter the node's namespace")
}

/// The value of the sample `series` (name and labels, exactly as printed) in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

#[test]
fn metrics_count_queries_by_transport_source_and_code_and_pass_promtool() {
    twill_tests::require_root();
    common::require_tools(&[
        ("dig", "-v"),
        ("dnsmasq", "--version"),
        ("promtool", "--version"),
    ]);
    let lab = Lab::up(&LabSpec::for_test(1, 1)).expect("lab up");
    netctl(&lab, &["apply", "-f", "-"], CLUSTER);
    let node = lab.nodes().remove(0);
    let ext = lab.externals().remove(0);
    let ext_ip = ext.plan.underlay_ip;
    let dnsmasq = common::dnsmasq(
        &ext.state_dir,
        &[
            "--local-ttl=60".to_owned(),
            format!("--listen-address={ext_ip}"),
            "--address=/ext.test/192.0.2.1".to_owned(),
        ],
    );
    let _dnsmasq = common::Guard(ext.spawn(dnsmasq).expect("start dnsmasq"));
    let ip = node.plan.underlay_ip;
    let dnsd = Dnsd::start_with(
        &lab,
        &node,
        &format!("{ext_ip}:53"),
        &format!("[metrics]\nlisten = \"{ip}:9153\"\n"),
    );
    let at = (ip, 9153);
    let (status, before) = scrape(&node, at);
    assert!(status.contains(" 200 "), "{status}\n{before}");

    // 3 zone answers over UDP, 1 over TCP, 1 NXDOMAIN in the zone; an external name asked
    // twice: once upstream, once from the cache.
    for _ in 0..3 {
        assert_eq!(
            dig(&node, dnsd.ip, &["web.prod.svc.cluster.local"]).status,
            "NOERROR"
        );
    }
    let tcp = dig(&node, dnsd.ip, &["+tcp", "web.prod.svc.cluster.local"]);
    assert_eq!(tcp.status, "NOERROR");
    let missing = dig(&node, dnsd.ip, &["nothere.prod.svc.cluster.local"]);
    assert_eq!(missing.status, "NXDOMAIN");
    for _ in 0..2 {
        let external = dig(&node, dnsd.ip, &["a.ext.test"]);
        assert_eq!(external.data(), ["192.0.2.1"], "{external:?}");
    }
    let (_, after) = scrape(&node, at);
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(delta("twill_dns_queries_total{transport=\"udp\"}"), 6.0);
    assert_eq!(delta("twill_dns_queries_total{transport=\"tcp\"}"), 1.0);
    assert_eq!(delta("twill_dns_answers_total{source=\"zone\"}"), 5.0);
    assert_eq!(delta("twill_dns_answers_total{source=\"upstream\"}"), 1.0);
    assert_eq!(delta("twill_dns_answers_total{source=\"cache\"}"), 1.0);
    assert_eq!(delta("twill_dns_responses_total{rcode=\"NOERROR\"}"), 6.0);
    assert_eq!(delta("twill_dns_responses_total{rcode=\"NXDOMAIN\"}"), 1.0);
    assert_eq!(
        delta("twill_dns_upstream_queries_total{result=\"answered\"}"),
        1.0
    );
    assert_eq!(
        delta("twill_dns_upstream_query_duration_seconds_count"),
        1.0
    );
    assert_eq!(sample(&after, "twill_dns_zone_loaded"), 1.0);
    assert_eq!(sample(&after, "twill_dns_cache_entries"), 1.0);

    twill_tests::promtool_check(&after);
}
