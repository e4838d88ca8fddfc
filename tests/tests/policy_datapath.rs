//! NetworkPolicy in the eBPF programs, through `BPF_PROG_TEST_RUN` with crafted packets:
//! tables compiled by `twill-policy` and written the way `twilld` writes them, then
//! allow, deny, replies of allowed flows, named ports, port ranges, ipBlock with except,
//! SCTP, audit mode, revocation by a table change, a pod without an entry, and malformed
//! packets, each checked by verdict and counter.

use std::{collections::BTreeMap, net::Ipv4Addr};

use twill_abi::{
    lb::wire_ip,
    metrics::{Direction, Reason},
    programs,
    tc::{TC_ACT_OK, TC_ACT_SHOT},
};
use twill_bpf::{Datapath, read_policy};
use twill_k8s::{
    Enforcement, LabelSelector, NamedPort, NetworkPolicy, PolicyPeer, PolicyPort, PolicyPortNumber,
    PolicyRule, Protocol,
};
use twill_lab::{Lab, LabSpec};
use twill_policy::{
    ClusterView, Direction as PolicyDirection, EndpointPolicy, PodView,
    entries::{endpoint_entry, table_entries},
};
use twill_tests::{open_policy, packet, require_root};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn labels(k: &str, v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(k.to_owned(), v.to_owned())])
}

fn pod(name: &str, ip: Ipv4Addr, app: &str, node: &str) -> PodView {
    PodView {
        namespace: "default".into(),
        name: name.into(),
        node: node.into(),
        ip,
        labels: labels("app", app),
        named_ports: vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
    }
}

fn port(protocol: Protocol, port: Option<PolicyPortNumber>, end: Option<u16>) -> PolicyPort {
    PolicyPort {
        protocol,
        port,
        end_port: end,
    }
}

/// The server's ingress: from app=client on `http` (8080) and UDP 5000-5010; from
/// 192.0.2.0/24 but not 192.0.2.128/25, any port; SCTP 80 from anyone.
fn server_policy(enforcement: Enforcement) -> NetworkPolicy {
    NetworkPolicy {
        namespace: "default".into(),
        name: "web".into(),
        labels: BTreeMap::new(),
        pod_selector: LabelSelector {
            match_labels: labels("app", "web"),
            match_expressions: vec![],
        },
        ingress_isolation: true,
        egress_isolation: false,
        ingress: vec![
            PolicyRule {
                peers: vec![PolicyPeer::Pods {
                    namespaces: None,
                    pods: LabelSelector {
                        match_labels: labels("app", "client"),
                        match_expressions: vec![],
                    },
                }],
                ports: vec![
                    port(
                        Protocol::Tcp,
                        Some(PolicyPortNumber::Named("http".into())),
                        None,
                    ),
                    port(
                        Protocol::Udp,
                        Some(PolicyPortNumber::Number(5000)),
                        Some(5010),
                    ),
                ],
            },
            PolicyRule {
                peers: vec![PolicyPeer::IpBlock {
                    cidr: "192.0.2.0/24".parse().unwrap(),
                    except: vec!["192.0.2.128/25".parse().unwrap()],
                }],
                ports: vec![],
            },
            PolicyRule {
                peers: vec![],
                ports: vec![port(
                    Protocol::Sctp,
                    Some(PolicyPortNumber::Number(80)),
                    None,
                )],
            },
        ],
        egress: vec![],
        enforcement,
    }
}

fn compile(policies: Vec<NetworkPolicy>) -> EndpointPolicy {
    let view = ClusterView::new(
        [],
        vec![
            pod("server", SERVER, "web", "node1"),
            pod("client", CLIENT, "client", "node2"),
            pod("other", OTHER, "other", "node2"),
        ],
        policies,
    );
    twill_policy::compile(&view, |p| p.ip == SERVER)
        .endpoints
        .remove(&SERVER)
        .expect("the server's table")
        .policy
}

/// Writes `policy` as table `id` and points the server at it; returns the counter slot of
/// each bit (ingress), as `twilld` would assign them.
fn program(dp: &mut Datapath, id: u32, policy: &EndpointPolicy) -> Vec<u32> {
    let entries = table_entries(id, policy);
    let slots: Vec<(twill_abi::policy::RuleSlotKey, u32)> = policy
        .ingress
        .bits
        .iter()
        .enumerate()
        .map(|(bit, _)| {
            (
                twill_abi::policy::RuleSlotKey {
                    table: id,
                    direction: PolicyDirection::Ingress.index(),
                    bit: bit as u32,
                },
                100 + id * 10 + bit as u32,
            )
        })
        .collect();
    dp.insert_policy_table(&entries.peers, &entries.ports, &slots)
        .expect("write the table");
    dp.set_policy_endpoint(
        wire_ip(SERVER.octets()),
        endpoint_entry(id, policy, [90, 91]),
    )
    .expect("point the server at it");
    slots.into_iter().map(|(_, s)| s).collect()
}

fn setup() -> (Lab, Datapath) {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let mut dp = Datapath::load(&lab.nodes()[0].bpffs_dir).expect("programs load and verify");
    open_policy(&mut dp, [CLIENT, OTHER]);
    (lab, dp)
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut frame = packet::l4_frame(6, src, dst, &[], true);
    frame[14 + 20 + 13] = flags;
    frame
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    packet::l4_frame(17, src, dst, b"x", true)
}

/// An SCTP packet (common header only, checksum not checked by the programs).
fn sctp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&src.1.to_be_bytes());
    h.extend_from_slice(&dst.1.to_be_bytes());
    h.extend_from_slice(&[0; 8]);
    packet::ethernet(0x0800, &packet::ipv4(src.0, dst.0, 132, &h))
}

fn to_server(dp: &mut Datapath, frame: &[u8]) -> i32 {
    dp.test_run(programs::TO_POD, frame)
        .expect("test run")
        .action
}

fn counter(dp: &Datapath, slot: u32) -> u64 {
    read_policy(dp.pin_dir()).expect("policy maps").counters[slot as usize]
}

fn dropped(dp: &Datapath, direction: Direction, reason: Reason) -> u64 {
    dp.metrics()
        .expect("metrics")
        .get(direction, reason)
        .packets
}

#[test]
fn ingress_rules_allow_what_they_name_and_nothing_else() {
    let (_lab, mut dp) = setup();
    let policy = compile(vec![server_policy(Enforcement::Enforce)]);
    let slots = program(&mut dp, 7, &policy);
    let denied_before = dropped(&dp, Direction::ToPod, Reason::DropPolicyDenied);

    // The named port `http` is 8080 on the server.
    assert_eq!(
        to_server(&mut dp, &tcp((CLIENT, 40000), (SERVER, 8080), SYN)),
        TC_ACT_OK
    );
    assert_eq!(counter(&dp, slots[0]), 1, "the allowing rule's counter");
    assert_eq!(
        to_server(&mut dp, &tcp((CLIENT, 40001), (SERVER, 80), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        to_server(&mut dp, &tcp((OTHER, 40000), (SERVER, 8080), SYN)),
        TC_ACT_SHOT
    );
    // The port range, its ends and one past it.
    assert_eq!(
        to_server(&mut dp, &udp((CLIENT, 999), (SERVER, 5000))),
        TC_ACT_OK
    );
    assert_eq!(
        to_server(&mut dp, &udp((CLIENT, 999), (SERVER, 5010))),
        TC_ACT_OK
    );
    assert_eq!(
        to_server(&mut dp, &udp((CLIENT, 999), (SERVER, 5011))),
        TC_ACT_SHOT
    );
    assert_eq!(
        to_server(&mut dp, &udp((CLIENT, 998), (SERVER, 8080))),
        TC_ACT_SHOT,
        "http is TCP"
    );
    // ipBlock with except, any port.
    let inside = Ipv4Addr::new(192, 0, 2, 10);
    let excepted = Ipv4Addr::new(192, 0, 2, 200);
    assert_eq!(
        to_server(&mut dp, &tcp((inside, 1), (SERVER, 1234), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        to_server(&mut dp, &tcp((excepted, 1), (SERVER, 1234), SYN)),
        TC_ACT_SHOT
    );
    // The node itself is always let in.
    assert_eq!(
        to_server(&mut dp, &tcp((GATEWAY, 1), (SERVER, 9), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        dropped(&dp, Direction::ToPod, Reason::DropPolicyDenied) - denied_before,
        5,
        "each denial counted under its reason"
    );
    assert_eq!(counter(&dp, 90), 5, "and against the pod's ingress");
}

#[test]
fn sctp_in_a_policy_never_opens_tcp_or_udp() {
    let (_lab, mut dp) = setup();
    program(
        &mut dp,
        7,
        &compile(vec![server_policy(Enforcement::Enforce)]),
    );
    assert_eq!(
        to_server(&mut dp, &sctp((OTHER, 5), (SERVER, 80))),
        TC_ACT_OK
    );
    assert_eq!(
        to_server(&mut dp, &tcp((OTHER, 5), (SERVER, 80), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        to_server(&mut dp, &udp((OTHER, 5), (SERVER, 80))),
        TC_ACT_SHOT
    );
    assert_eq!(
        to_server(&mut dp, &sctp((OTHER, 5), (SERVER, 81))),
        TC_ACT_SHOT
    );
}

/// An ICMP echo (type 8 request, 0 reply) with identifier `id`.
fn echo(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, id: u16) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    let sum = packet::checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    packet::ethernet(0x0800, &packet::ipv4(src, dst, 1, &icmp))
}

/// Each ping is a flow of its own: a ping the server sent before it was isolated does
/// not let the client's pings in afterwards, while the replies to the server's own pings
/// still reach it.
#[test]
fn an_earlier_ping_the_other_way_does_not_open_a_pod_to_pings() {
    let (_lab, mut dp) = setup();
    // No policy yet: the server pings the client (its flow is remembered).
    let open = compile(vec![]);
    program(&mut dp, 6, &open);
    let own = dp
        .test_run(programs::FROM_POD, &echo(SERVER, CLIENT, 8, 7))
        .expect("test run");
    assert_eq!(own.action, TC_ACT_OK);
    // Now a policy isolates the server's ingress and allows only TCP 8080 from the client.
    let policy = compile(vec![server_policy(Enforcement::Enforce)]);
    program(&mut dp, 7, &policy);
    assert_eq!(
        to_server(&mut dp, &echo(CLIENT, SERVER, 8, 9)),
        TC_ACT_SHOT,
        "the client's ping is a new flow, decided by the server's ingress"
    );
    assert_eq!(
        to_server(&mut dp, &echo(CLIENT, SERVER, 0, 7)),
        TC_ACT_OK,
        "the reply to the server's own ping (same identifier) still comes in"
    );
    assert_eq!(
        to_server(&mut dp, &echo(CLIENT, SERVER, 0, 11)),
        TC_ACT_SHOT,
        "a reply to no ping of the server's is not let in"
    );
}

#[test]
fn replies_of_allowed_flows_pass_and_a_table_change_revokes_established_ones() {
    let (_lab, mut dp) = setup();
    // The server may also send nothing on its own (egress isolated, no rules).
    let mut p = server_policy(Enforcement::Enforce);
    p.egress_isolation = true;
    let policy = compile(vec![p]);
    program(&mut dp, 7, &policy);
    let (c, s) = ((CLIENT, 40000), (SERVER, 8080));
    assert_eq!(to_server(&mut dp, &tcp(c, s, SYN)), TC_ACT_OK);
    // Its reply leaves the server although its egress allows nothing...
    let reply = dp
        .test_run(programs::FROM_POD, &tcp(s, c, SYN | ACK))
        .expect("test run");
    assert_eq!(reply.action, TC_ACT_OK, "a reply of an allowed flow");
    // ...but a connection of its own does not.
    let own = dp
        .test_run(programs::FROM_POD, &tcp((SERVER, 5555), (CLIENT, 80), SYN))
        .expect("test run");
    assert_eq!(own.action, TC_ACT_SHOT);
    assert_eq!(
        to_server(&mut dp, &tcp(c, s, ACK)),
        TC_ACT_OK,
        "established"
    );

    // The client loses its label: a new table without its rule. The established flow is
    // decided again on its next packet, and dropped.
    let mut none_allowed = server_policy(Enforcement::Enforce);
    none_allowed.ingress.remove(0);
    let narrower = compile(vec![none_allowed]);
    program(&mut dp, 8, &narrower);
    assert_eq!(to_server(&mut dp, &tcp(c, s, ACK)), TC_ACT_SHOT, "revoked");
    // And a change that allows it again lets the next packet through.
    program(&mut dp, 9, &policy);
    assert_eq!(
        to_server(&mut dp, &tcp(c, s, ACK)),
        TC_ACT_OK,
        "allowed again"
    );
}

#[test]
fn an_audit_policy_passes_what_it_would_deny_and_counts_it() {
    let (_lab, mut dp) = setup();
    let policy = compile(vec![server_policy(Enforcement::Audit)]);
    program(&mut dp, 7, &policy);
    let before = dropped(&dp, Direction::ToPod, Reason::PolicyAuditDenied);
    assert_eq!(
        to_server(&mut dp, &tcp((OTHER, 40000), (SERVER, 80), SYN)),
        TC_ACT_OK
    );
    assert_eq!(
        dropped(&dp, Direction::ToPod, Reason::PolicyAuditDenied) - before,
        1,
        "counted as would-be denied"
    );
    assert_eq!(counter(&dp, 90), 1);
    // Later packets of that flow pass without being counted again.
    assert_eq!(
        to_server(&mut dp, &tcp((OTHER, 40000), (SERVER, 80), ACK)),
        TC_ACT_OK
    );
    assert_eq!(counter(&dp, 90), 1);
}

#[test]
fn a_pod_without_a_policy_entry_and_malformed_packets_are_dropped() {
    let (_lab, mut dp) = setup();
    program(
        &mut dp,
        7,
        &compile(vec![server_policy(Enforcement::Enforce)]),
    );
    let unknown = Ipv4Addr::new(10, 244, 0, 99);
    let before = dropped(&dp, Direction::ToPod, Reason::DropPolicyNoEndpoint);
    assert_eq!(
        to_server(&mut dp, &tcp((CLIENT, 1), (unknown, 8080), SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        dp.test_run(programs::FROM_POD, &tcp((unknown, 1), (CLIENT, 80), SYN))
            .expect("test run")
            .action,
        TC_ACT_SHOT,
        "a pod's packet from an address with no entry (a spoofed source)"
    );
    assert_eq!(
        dropped(&dp, Direction::ToPod, Reason::DropPolicyNoEndpoint) - before,
        1
    );
    // ICMP to the server: no rule without ports allows the client.
    let icmp = packet::ethernet(
        0x0800,
        &packet::ipv4(CLIENT, SERVER, 1, &[8, 0, 0, 0, 0, 0, 0, 0]),
    );
    assert_eq!(to_server(&mut dp, &icmp), TC_ACT_SHOT);
    // A TCP header cut short: never passed unchecked.
    let mut truncated = tcp((CLIENT, 40000), (SERVER, 8080), SYN);
    truncated.truncate(14 + 20 + 2);
    truncated[16..18].copy_from_slice(&22u16.to_be_bytes());
    assert_eq!(to_server(&mut dp, &truncated), TC_ACT_SHOT);
    // A later fragment carries no ports: only rules without ports could allow it.
    let mut fragment = tcp((CLIENT, 40000), (SERVER, 8080), ACK);
    fragment[20] = 0x00;
    fragment[21] = 0x10; // fragment offset 16 (x 8 bytes), not the first
    assert_eq!(to_server(&mut dp, &fragment), TC_ACT_SHOT);
}
