//! Building a zone: bad objects are left out (and listed) without spoiling the rest, a bad
//! zone name fails, and a large cluster builds and answers.

mod common;

use std::net::Ipv4Addr;
use std::time::Instant;

use common::{ask, endpoint, lines, port, service};
use twill_dns::hickory_proto::op::ResponseCode;
use twill_dns::hickory_proto::rr::RecordType;
use twill_dns::{
    ClusterSnapshot, ConfigError, Pod, PodsMode, Protocol, ServiceKind, Skipped, Zone, ZoneConfig,
};

#[test]
fn bad_objects_are_skipped_and_listed() {
    let long = "a".repeat(63);
    let mut cluster_ip = service(
        "default",
        "web",
        ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 5)),
    );
    cluster_ip.ports = vec![
        port("http", Protocol::Tcp, 80),
        port("bad_port", Protocol::Tcp, 81),
    ];
    let duplicate = service(
        "default",
        "web",
        ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 6)),
    );
    let mut headless = service("default", "db", ServiceKind::Headless);
    headless.endpoints = vec![endpoint([10, 244, 0, 7], Some("db_0"), true, &[])];
    let snapshot = ClusterSnapshot {
        namespaces: vec!["default".into(), "Bad.Namespace".into()],
        services: vec![
            cluster_ip,
            duplicate,
            headless,
            service("default", "Bad_Name", ServiceKind::Headless),
            service(
                "default",
                "ext",
                ServiceKind::ExternalName("not a name".into()),
            ),
            service(&long, &long, ServiceKind::Headless),
        ],
        pods: vec![Pod {
            namespace: "-bad".into(),
            name: "p".into(),
            ip: Ipv4Addr::new(10, 244, 0, 8),
        }],
        serial: 1,
    };
    let config = ZoneConfig {
        zone: format!("{long}.{long}.example"),
        ..ZoneConfig::default()
    };
    let zone = Zone::build(&config, &snapshot).unwrap();
    let skipped: Vec<String> = zone.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            r#"namespace "Bad.Namespace": name has characters other than letters, digits and '-'"#,
            r#"service default/web: port "bad_port": name has characters other than letters, digits and '-'"#,
            "service default/web: duplicate service",
            r#"service default/db: endpoint 10.244.0.7 hostname "db_0": name has characters other than letters, digits and '-'"#,
            "service default/Bad_Name: name has characters other than letters, digits and '-'",
            "service default/ext: external name is not a valid domain name",
            &format!("service {long}/{long}: name is longer than 255 bytes"),
            r#"pod -bad/p: name starts or ends with '-'"#,
        ]
    );
    assert!(matches!(zone.skipped()[2], Skipped::Service { .. }));

    let origin = format!("{long}.{long}.example.");
    let name = |relative: &str| format!("{relative}.{origin}");
    // The first `web` wins; its good port still has its SRV record.
    let response = ask(&zone, &name("web.default.svc"), RecordType::A).unwrap();
    assert_eq!(
        lines(&response.answers),
        [format!("{} 5 IN A 10.96.0.5", name("web.default.svc"))]
    );
    let response = ask(&zone, &name("_http._tcp.web.default.svc"), RecordType::SRV).unwrap();
    assert_eq!(response.answers.len(), 1);
    // The endpoint with a bad hostname is still an address of `db`, under its dashed name.
    let response = ask(&zone, &name("10-244-0-7.db.default.svc"), RecordType::A).unwrap();
    assert_eq!(response.answers.len(), 1);
    let response = ask(&zone, &name("ext.default.svc"), RecordType::A).unwrap();
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn bad_zone_names_fail_the_build() {
    for zone in ["", ".", "bad_zone.local", "-a.local", "a..local"] {
        let config = ZoneConfig {
            zone: zone.into(),
            ..ZoneConfig::default()
        };
        let error = Zone::build(&config, &ClusterSnapshot::default()).unwrap_err();
        assert!(
            matches!(&error, ConfigError::InvalidZone { zone: z, .. } if z == zone),
            "{zone:?}: {error}"
        );
    }
}

/// The `n`th address of a /8 block, for unique addresses.
fn address(first: u8, n: u32) -> Ipv4Addr {
    let [_, b, c, d] = n.to_be_bytes();
    Ipv4Addr::new(first, b, c, d)
}

#[test]
fn ten_thousand_services_with_ten_endpoints_each() {
    const SERVICES: u32 = 10_000;
    const ENDPOINTS: u32 = 10;
    let http = [port("http", Protocol::Tcp, 8080)];
    let services = (0..SERVICES)
        .map(|i| {
            // Even: ClusterIP; odd: headless with StatefulSet-style hostnames.
            let kind = if i % 2 == 0 {
                ServiceKind::ClusterIp(address(172, i))
            } else {
                ServiceKind::Headless
            };
            let mut svc = service(&format!("ns-{}", i % 100), &format!("svc-{i}"), kind);
            svc.ports = http.to_vec();
            svc.endpoints = (0..ENDPOINTS)
                .map(|k| {
                    let ip = address(10, i * ENDPOINTS + k).octets();
                    endpoint(ip, Some(&format!("svc-{i}-{k}")), true, &http)
                })
                .collect();
            svc
        })
        .collect();
    let snapshot = ClusterSnapshot {
        services,
        serial: 7,
        ..ClusterSnapshot::default()
    };
    let config = ZoneConfig {
        pods: PodsMode::Verified,
        ..ZoneConfig::default()
    };
    let started = Instant::now();
    let zone = Zone::build(&config, &snapshot).unwrap();
    eprintln!(
        "built a zone of {SERVICES} services x {ENDPOINTS} endpoints in {:?}",
        started.elapsed()
    );
    assert!(zone.skipped().is_empty());

    let response = ask(&zone, "svc-9998.ns-98.svc.cluster.local.", RecordType::A).unwrap();
    assert_eq!(
        lines(&response.answers),
        ["svc-9998.ns-98.svc.cluster.local. 5 IN A 172.0.39.14"]
    );
    let response = ask(&zone, "svc-4321.ns-21.svc.cluster.local.", RecordType::A).unwrap();
    assert_eq!(response.answers.len(), 10);
    let response = ask(
        &zone,
        "svc-4321-9.svc-4321.ns-21.svc.cluster.local.",
        RecordType::A,
    )
    .unwrap();
    assert_eq!(
        lines(&response.answers),
        [format!(
            "svc-4321-9.svc-4321.ns-21.svc.cluster.local. 5 IN A {}",
            address(10, 43219)
        )]
    );
    let response = ask(
        &zone,
        "_http._tcp.svc-4321.ns-21.svc.cluster.local.",
        RecordType::SRV,
    )
    .unwrap();
    assert_eq!(response.answers.len(), 10);
    assert_eq!(response.additionals.len(), 10);
    let [_, b, c, d] = address(10, 43219).octets();
    let response = ask(
        &zone,
        &format!("{d}.{c}.{b}.10.in-addr.arpa."),
        RecordType::PTR,
    )
    .unwrap();
    assert_eq!(response.answers.len(), 1);
    let response = ask(&zone, "svc-4322.ns-21.svc.cluster.local.", RecordType::A).unwrap();
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
}
