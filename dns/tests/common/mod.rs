//! Shared fixture for the twill-dns tests: a small cluster and helpers to ask it questions.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use twill_dns::hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use twill_dns::hickory_proto::rr::{Name, Record, RecordType};
use twill_dns::{
    ClusterSnapshot, Endpoint, Outcome, Pod, PodsMode, Protocol, Service, ServiceKind, ServicePort,
    Zone, ZoneConfig,
};

/// The SOA every negative answer of the fixture zone carries.
pub const SOA: &str =
    "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5";
/// The SOA of a negative answer for a known reverse name.
pub const REVERSE_SOA: &str =
    "in-addr.arpa. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5";

pub fn port(name: &str, protocol: Protocol, port: u16) -> ServicePort {
    ServicePort {
        name: name.to_string(),
        protocol,
        port,
    }
}

pub fn endpoint(
    ip: [u8; 4],
    hostname: Option<&str>,
    ready: bool,
    ports: &[ServicePort],
) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(ip),
        hostname: hostname.map(str::to_string),
        ready,
        ports: ports.to_vec(),
    }
}

pub fn service(namespace: &str, name: &str, kind: ServiceKind) -> Service {
    Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
        kind,
        ports: Vec::new(),
        endpoints: Vec::new(),
    }
}

fn external(namespace: &str, name: &str, target: &str) -> Service {
    service(
        namespace,
        name,
        ServiceKind::ExternalName(target.to_string()),
    )
}

/// The fixture cluster:
/// - `kubernetes.default`: ClusterIP 10.96.0.1, ports https/TCP/443, an unnamed TCP/80, dns/UDP/53.
/// - `kube-dns.kube-system`: ClusterIP 10.96.0.10, ports dns/UDP/53, dns-tcp/TCP/53.
/// - `db.default`: headless; ready db-0 10.244.1.5, db-1 10.244.2.8, no-hostname 10.244.3.3,
///   not-ready db-3 10.244.4.4; all with postgres/TCP/5432.
/// - `cold.default`: headless, only a not-ready endpoint.
/// - ExternalName `search` -> www.example.com, `alias` -> kubernetes.default (in the zone),
///   `dangling` -> a Service that does not exist, `loop-a` <-> `loop-b`.
/// - namespace `quiet` with no Services; Pod `default/web-0` 10.244.1.9.
pub fn snapshot() -> ClusterSnapshot {
    let postgres = [port("postgres", Protocol::Tcp, 5432)];
    let mut kubernetes = service(
        "default",
        "kubernetes",
        ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 1)),
    );
    kubernetes.ports = vec![
        port("https", Protocol::Tcp, 443),
        port("", Protocol::Tcp, 80),
        port("dns", Protocol::Udp, 53),
    ];
    let mut kube_dns = service(
        "kube-system",
        "kube-dns",
        ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 10)),
    );
    kube_dns.ports = vec![
        port("dns", Protocol::Udp, 53),
        port("dns-tcp", Protocol::Tcp, 53),
    ];
    let mut db = service("default", "db", ServiceKind::Headless);
    db.ports = vec![port("postgres", Protocol::Tcp, 5432)];
    db.endpoints = vec![
        endpoint([10, 244, 1, 5], Some("db-0"), true, &postgres),
        endpoint([10, 244, 2, 8], Some("db-1"), true, &postgres),
        endpoint([10, 244, 3, 3], None, true, &postgres),
        endpoint([10, 244, 4, 4], Some("db-3"), false, &postgres),
    ];
    let mut cold = service("default", "cold", ServiceKind::Headless);
    cold.endpoints = vec![endpoint([10, 244, 5, 5], Some("cold-0"), false, &postgres)];
    ClusterSnapshot {
        namespaces: vec!["default".into(), "kube-system".into(), "quiet".into()],
        services: vec![
            kubernetes,
            kube_dns,
            db,
            cold,
            external("default", "search", "www.example.com"),
            external("default", "alias", "kubernetes.default.svc.cluster.local."),
            external("default", "dangling", "nothere.default.svc.cluster.local"),
            external("default", "loop-a", "loop-b.default.svc.cluster.local"),
            external("default", "loop-b", "loop-a.default.svc.cluster.local"),
        ],
        pods: vec![Pod {
            namespace: "default".into(),
            name: "web-0".into(),
            ip: Ipv4Addr::new(10, 244, 1, 9),
        }],
        serial: 42,
    }
}

pub fn config(pods: PodsMode) -> ZoneConfig {
    ZoneConfig {
        pods,
        nameserver_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
        ..ZoneConfig::default()
    }
}

pub fn zone(pods: PodsMode) -> Zone {
    let zone = Zone::build(&config(pods), &snapshot()).expect("fixture zone builds");
    assert_eq!(zone.skipped(), &[], "the fixture is clean");
    zone
}

pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("test names are valid"),
        qtype,
    ));
    message
}

/// Asks `zone`; `None` if the zone says the name is not its own.
pub fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Option<Message> {
    match zone.answer(&query(name, qtype)) {
        Outcome::Reply(response) => Some(*response),
        Outcome::Forward => None,
        Outcome::Drop => panic!("{name} {qtype}: a query was dropped"),
    }
}

pub fn lines(records: &[Record]) -> Vec<String> {
    records.iter().map(ToString::to_string).collect()
}

/// One row of a record table: a question and the whole expected answer.
pub struct Case {
    /// Where the behaviour comes from: a section of the spec, an RFC, or a twill decision.
    pub source: &'static str,
    pub name: &'static str,
    pub qtype: RecordType,
    /// `None`: the name is not the zone's and the query is forwarded.
    pub rcode: Option<ResponseCode>,
    pub answers: &'static [&'static str],
    pub authority: &'static [&'static str],
    pub additional: &'static [&'static str],
}

pub fn check(zone: &Zone, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let label = format!("[{}] {} {}", case.source, case.name, case.qtype);
        let response = ask(zone, case.name, case.qtype);
        let (Some(response), Some(rcode)) = (&response, case.rcode) else {
            if response.is_some() != case.rcode.is_some() {
                failures.push(format!(
                    "{label}: expected {}, got {}",
                    if case.rcode.is_some() {
                        "an answer"
                    } else {
                        "forward"
                    },
                    if response.is_some() {
                        "an answer"
                    } else {
                        "forward"
                    },
                ));
            }
            continue;
        };
        let got = (
            response.metadata.response_code,
            lines(&response.answers),
            lines(&response.authorities),
            lines(&response.additionals),
        );
        let want = (
            rcode,
            case.answers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            case.authority
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            case.additional
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
        if got != want {
            failures.push(format!("{label}:\n  want {want:?}\n  got  {got:?}"));
        }
        if !response.metadata.authoritative {
            failures.push(format!("{label}: AA not set"));
        }
        if response.queries[0].name().to_string() != case.name {
            failures.push(format!("{label}: question not echoed as asked"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
