//! The pod-subnet lease against the lab's real etcd: distinct subnets under concurrency,
//! restarts, exhaustion, quarantine, a taken subnet, and etcd outages.

use std::{collections::BTreeSet, thread, time::Duration};

use twill_api::{AttachmentKey, Request, Response};
use twill_lab::{Lab, LabSpec};
use twill_tests::{daemon::Twilld, require_root};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

fn bin() -> &'static std::path::Path {
    std::path::Path::new(TWILLD)
}

fn key(id: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: id.to_owned(),
        ifname: "eth0".to_owned(),
    }
}

fn allocate(d: &Twilld, id: &str) -> std::net::Ipv4Addr {
    match d.request(&Request::Allocate {
        key: key(id),
        pod: None,
    }) {
        Response::Allocated { address } => address.ip,
        other => panic!("allocate {id}: {other:?}"),
    }
}

#[test]
fn daemons_started_together_hold_distinct_subnets() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(4, 0)).unwrap();
    // Start all four before waiting on any: they race for the lowest free subnet.
    let nodes = lab.nodes();
    let daemons: Vec<Twilld> = thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| s.spawn(|| Twilld::start(bin(), &lab, n, "", &["--lease-ttl-seconds", "5"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let subnets: BTreeSet<_> = daemons
        .iter()
        .map(|d| {
            d.wait_status("holding a subnet", Duration::from_secs(10), |s| {
                s.not_ready.is_none()
            })
            .subnet
            .unwrap()
        })
        .collect();
    assert_eq!(subnets.len(), 4, "subnets: {subnets:?}");
    let cluster: ipnetwork::Ipv4Network = "10.244.0.0/16".parse().unwrap();
    for s in &subnets {
        assert!(cluster.contains(s.network()) && s.prefix() == 24, "{s}");
    }
}

#[test]
fn a_restarted_daemon_keeps_its_subnet_and_its_addresses() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).unwrap();
    let node = &lab.nodes()[0];
    let mut d = Twilld::start(bin(), &lab, node, "", &["--lease-ttl-seconds", "5"]);
    let before = d
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none())
        .subnet;
    let first: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .map(|id| allocate(&d, id))
        .collect();

    d.restart(); // SIGKILL, then start again with the same state directory
    let after = d
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none())
        .subnet;
    assert_eq!(after, before, "the subnet survives a restart");
    match d.request(&Request::Lookup { key: key("c1") }) {
        Response::Found { address: Some(a) } => assert_eq!(a.ip, first[0]),
        other => panic!("c1 after restart: {other:?}"),
    }
    let new = allocate(&d, "c4");
    assert!(!first.contains(&new), "{new} handed out twice");
    assert_eq!(
        allocate(&d, "c2"),
        first[1],
        "an existing attachment keeps its address"
    );
}

#[test]
fn an_exhausted_cluster_is_reported_and_a_dead_nodes_subnet_frees_after_quarantine() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(3, 0)).unwrap();
    let nodes = lab.nodes();
    // Room for two nodes only; short lease and quarantine.
    let config = "[network]\ncluster_cidr = \"10.200.0.0/23\"\n\
                  [lease]\nttl_seconds = 2\nquarantine_seconds = 3\n";
    let mut d1 = Twilld::start(bin(), &lab, &nodes[0], config, &[]);
    let d2 = Twilld::start(bin(), &lab, &nodes[1], config, &[]);
    let s1 = d1
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none())
        .subnet
        .unwrap();
    d2.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());

    let mut d3 = Twilld::start(bin(), &lab, &nodes[2], config, &[]);
    let st = d3.wait_status("reporting exhaustion", Duration::from_secs(10), |s| {
        s.not_ready
            .as_deref()
            .is_some_and(|r| r.contains("exhausted"))
    });
    assert!(
        st.not_ready
            .unwrap()
            .contains("cluster CIDR 10.200.0.0/23 is exhausted"),
        "the reason names the CIDR"
    );
    match d3.request(&Request::Allocate {
        key: key("c1"),
        pod: None,
    }) {
        Response::Error { kind, message } => {
            assert_eq!(kind, twill_api::ErrorKind::NotReady);
            assert!(message.contains("exhausted"), "{message}");
        }
        other => panic!("allocate on a node without subnet: {other:?}"),
    }

    // node1 dies. Its node record goes after the TTL, but its subnet is kept from others
    // for the quarantine as well.
    d1.kill();
    thread::sleep(Duration::from_millis(2500));
    assert!(d3.is_running(), "exhaustion is waited out, not fatal");
    let st = d3.status();
    assert!(
        st.subnet.is_none(),
        "node3 took {:?} during the quarantine",
        st.subnet
    );
    let st = d3.wait_status("holding node1's old subnet", Duration::from_secs(15), |s| {
        s.subnet.is_some()
    });
    assert_eq!(st.subnet, Some(s1));
}

#[test]
fn a_node_whose_old_subnet_was_given_away_refuses_it_and_says_so() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 0)).unwrap();
    let nodes = lab.nodes();
    let config = "[lease]\nttl_seconds = 2\nquarantine_seconds = 0\n";
    let mut d1 = Twilld::start(bin(), &lab, &nodes[0], config, &[]);
    let old = d1
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none())
        .subnet
        .unwrap();
    allocate(&d1, "c1");
    d1.kill();
    // With no quarantine the subnet is free once the lease expires; node2 takes the
    // lowest free subnet, which is node1's.
    thread::sleep(Duration::from_secs(3));
    let d2 = Twilld::start(bin(), &lab, &nodes[1], config, &[]);
    let taken = d2
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none())
        .subnet
        .unwrap();
    assert_eq!(taken, old);

    d1.restart();
    let st = d1.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    assert_ne!(
        st.subnet,
        Some(old),
        "node1 must not use a subnet node2 holds"
    );
    let warnings = st.warnings.join("\n");
    assert!(
        warnings.contains(&format!(
            "previous pod subnet {old} is now held by node node2"
        )),
        "{warnings}"
    );
    assert!(warnings.contains("must be recreated"), "{warnings}");
    assert!(d1.log_text().contains("refusing to use it"));
}

#[test]
fn status_follows_etcd_going_away_and_coming_back() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).unwrap();
    let config = "[etcd]\ntimeout_seconds = 1\n[lease]\nttl_seconds = 3\n";
    let d = Twilld::start(bin(), &lab, &lab.nodes()[0], config, &[]);
    d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());

    lab.pause_etcd().unwrap();
    let st = d.wait_status("not ready", Duration::from_secs(15), |s| {
        s.not_ready.is_some()
    });
    assert!(!st.etcd_reachable);
    assert!(
        st.not_ready.unwrap().contains("etcd"),
        "the reason names etcd"
    );
    // Addresses are not handed out while the node cannot vouch for its lease.
    assert!(matches!(
        d.request(&Request::Allocate {
            key: key("c1"),
            pod: None
        }),
        Response::Error {
            kind: twill_api::ErrorKind::NotReady,
            ..
        }
    ));

    lab.resume_etcd().unwrap();
    let st = d.wait_status("ready again", Duration::from_secs(15), |s| {
        s.not_ready.is_none()
    });
    assert!(st.etcd_reachable);
}

#[test]
fn a_daemon_reaches_a_tls_etcd_with_its_client_certificate_and_not_without() {
    require_root();
    let mut spec = LabSpec::for_test(2, 0);
    spec.etcd_tls = true;
    let lab = Lab::up(&spec).unwrap();
    assert!(lab.etcd_endpoint().starts_with("https://"));
    let tls = lab.etcd_tls().unwrap().clone();
    let nodes = lab.nodes();
    let with_cert = format!(
        "[etcd]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\ntimeout_seconds = 2\n",
        tls.ca_file.display(),
        tls.cert_file.display(),
        tls.key_file.display()
    );
    let d1 = Twilld::start(bin(), &lab, &nodes[0], &with_cert, &[]);
    let st = d1.wait_status("ready over TLS", Duration::from_secs(15), |s| {
        s.not_ready.is_none()
    });
    assert!(st.subnet.is_some());

    // Trusting the CA is not enough: etcd demands a client certificate.
    let ca_only = format!(
        "[etcd]\nca_file = \"{}\"\ntimeout_seconds = 2\n",
        tls.ca_file.display()
    );
    let d2 = Twilld::start(bin(), &lab, &nodes[1], &ca_only, &[]);
    thread::sleep(Duration::from_secs(3));
    let st = d2.status();
    assert_eq!(st.subnet, None);
    assert!(
        st.not_ready.unwrap().contains("etcd"),
        "the reason names etcd"
    );
}
