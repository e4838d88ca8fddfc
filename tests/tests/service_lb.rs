//! Service load balancing in the eBPF programs, through `BPF_PROG_TEST_RUN` with crafted
//! packets: a frontend hit is translated to a backend with valid checksums and pinned in
//! conntrack, the reply is translated back, a miss passes untouched, a frontend without
//! backends drops with its reason, and connections spread over the backends; and the
//! overlay program delivering a local pod's packets straight into it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use twill_abi::{
    lb::{
        Backend, FRONTEND_AFFINITY, FlowKey, Frontend, FrontendKey, IPPROTO_TCP, IPPROTO_UDP,
        SCOPE_CLUSTER_IP, pick_slot, wire_ip, wire_port,
    },
    metrics::{Direction, Reason},
    programs,
    tc::{TC_ACT_OK, TC_ACT_REDIRECT},
};
use twill_bpf::Datapath;
use twill_lab::{Lab, LabSpec};
use twill_tests::{open_policy, packet, require_root};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKENDS: [(Ipv4Addr, u16); 3] = [
    (Ipv4Addr::new(10, 244, 1, 5), 8080),
    (Ipv4Addr::new(10, 244, 2, 6), 8080),
    (Ipv4Addr::new(10, 244, 3, 7), 9090),
];

fn frontend(protocol: u8, port: u16) -> FrontendKey {
    FrontendKey {
        ip: wire_ip(VIP.octets()),
        port: wire_port(port),
        protocol,
        scope: SCOPE_CLUSTER_IP,
    }
}

fn backends(list: &[(Ipv4Addr, u16)]) -> Vec<Backend> {
    list.iter()
        .map(|(ip, port)| Backend {
            ip: wire_ip(ip.octets()),
            port: wire_port(*port),
            _pad: 0,
        })
        .collect()
}

fn setup() -> (Lab, Datapath) {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let mut datapath = Datapath::load(&lab.nodes()[0].bpffs_dir).expect("programs load and verify");
    open_policy(&mut datapath, pods());
    (lab, datapath)
}

/// Every pod address these tests send from or to: no policy selects them.
fn pods() -> Vec<Ipv4Addr> {
    let mut ips = vec![
        CLIENT,
        Ipv4Addr::new(10, 244, 0, 7),
        Ipv4Addr::new(10, 244, 0, 8),
        Ipv4Addr::new(10, 244, 1, 9),
        Ipv4Addr::new(192, 0, 2, 10),
    ];
    ips.extend(BACKENDS.iter().map(|(ip, _)| *ip));
    ips.extend((0..=255).map(|h| Ipv4Addr::new(10, 244, 9, h)));
    ips
}

#[test]
fn a_cluster_ip_connection_goes_to_a_backend_and_the_reply_comes_back_from_the_vip() {
    let (_lab, mut dp) = setup();
    dp.set_frontend(
        frontend(IPPROTO_TCP, 80),
        Frontend {
            service_id: 1,
            ..Default::default()
        },
        &backends(&BACKENDS),
    )
    .unwrap();

    let syn = packet::l4_frame(IPPROTO_TCP, (CLIENT, 40000), (VIP, 80), b"", true);
    let out = dp.test_run(programs::FROM_POD, &syn).unwrap();
    assert_eq!(out.action, TC_ACT_OK);
    let ((src, sport), (dst, dport)) = packet::endpoints(&out.packet);
    assert_eq!((src, sport), (CLIENT, 40000), "the source is untouched");
    assert!(
        BACKENDS.contains(&(dst, dport)),
        "translated to {dst}:{dport}"
    );
    assert!(
        packet::checksums_ok(&out.packet),
        "IPv4 and TCP checksums verify after the rewrite"
    );

    // The same flow again: conntrack keeps it on the same backend.
    let again = dp.test_run(programs::FROM_POD, &syn).unwrap();
    assert_eq!(packet::endpoints(&again.packet).1, (dst, dport));
    assert_eq!(dp.conntrack().unwrap().len(), 1);

    // The backend's reply, on its way into the client pod, comes from the VIP.
    let reply = packet::l4_frame(IPPROTO_TCP, (dst, dport), (CLIENT, 40000), b"hello", true);
    let back = dp.test_run(programs::TO_POD, &reply).unwrap();
    assert_eq!(back.action, TC_ACT_OK);
    assert_eq!(
        packet::endpoints(&back.packet),
        ((VIP, 80), (CLIENT, 40000))
    );
    assert!(packet::checksums_ok(&back.packet));
    assert_eq!(
        &back.packet[back.packet.len() - 5..],
        b"hello",
        "the payload is untouched"
    );

    let m = dp.metrics().unwrap();
    assert_eq!(
        m.get(Direction::FromPod, Reason::ServiceTranslated).packets,
        2
    );
    assert_eq!(m.get(Direction::ToPod, Reason::ReplyTranslated).packets, 1);
}

#[test]
fn udp_is_translated_with_and_without_a_checksum() {
    let (_lab, mut dp) = setup();
    dp.set_frontend(
        frontend(IPPROTO_UDP, 53),
        Frontend {
            service_id: 2,
            ..Default::default()
        },
        &backends(&BACKENDS[..1]),
    )
    .unwrap();
    for with_checksum in [true, false] {
        let q = packet::l4_frame(
            IPPROTO_UDP,
            (CLIENT, 5353),
            (VIP, 53),
            b"query",
            with_checksum,
        );
        let out = dp.test_run(programs::FROM_POD, &q).unwrap();
        assert_eq!(packet::endpoints(&out.packet).1, BACKENDS[0]);
        assert!(packet::checksums_ok(&out.packet));
        let zero = out.packet[34 + 6..34 + 8] == [0, 0];
        assert_eq!(
            zero, !with_checksum,
            "a zero UDP checksum stays zero, a real one stays real"
        );
    }
}

#[test]
fn packets_to_other_addresses_pass_untouched_and_a_service_without_backends_drops() {
    let (_lab, mut dp) = setup();
    dp.set_frontend(
        frontend(IPPROTO_TCP, 80),
        Frontend {
            service_id: 3,
            ..Default::default()
        },
        &backends(&BACKENDS),
    )
    .unwrap();
    // Another port of the VIP, another address: not a frontend.
    for (dst, port) in [(VIP, 81), (Ipv4Addr::new(10, 244, 1, 5), 80)] {
        let p = packet::l4_frame(IPPROTO_TCP, (CLIENT, 40000), (dst, port), b"", true);
        let out = dp.test_run(programs::FROM_POD, &p).unwrap();
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(out.packet, p, "{dst}:{port} is not a Service");
    }
    // Scaled to zero: handed to the node's stack untouched (its unreachable route over the
    // service CIDR refuses it at once), and counted.
    dp.set_frontend(
        frontend(IPPROTO_TCP, 80),
        Frontend {
            service_id: 3,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    let p = packet::l4_frame(IPPROTO_TCP, (CLIENT, 40001), (VIP, 80), b"", true);
    let out = dp.test_run(programs::FROM_POD, &p).unwrap();
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(out.packet, p);
    assert_eq!(
        dp.metrics()
            .unwrap()
            .get(Direction::FromPod, Reason::NoBackend)
            .packets,
        1
    );
    // A reply that matches no reverse entry passes as it is.
    let stray = packet::l4_frame(IPPROTO_TCP, (BACKENDS[0].0, 8080), (CLIENT, 1), b"", true);
    assert_eq!(dp.test_run(programs::TO_POD, &stray).unwrap().packet, stray);
}

#[test]
fn new_connections_spread_over_every_backend() {
    let (_lab, mut dp) = setup();
    dp.set_frontend(
        frontend(IPPROTO_TCP, 80),
        Frontend {
            service_id: 4,
            ..Default::default()
        },
        &backends(&BACKENDS),
    )
    .unwrap();
    let mut chosen: BTreeMap<(Ipv4Addr, u16), u32> = BTreeMap::new();
    for port in 20000..20300u16 {
        let p = packet::l4_frame(IPPROTO_TCP, (CLIENT, port), (VIP, 80), b"", true);
        let out = dp.test_run(programs::FROM_POD, &p).unwrap();
        *chosen.entry(packet::endpoints(&out.packet).1).or_default() += 1;
    }
    assert_eq!(chosen.len(), 3, "{chosen:?}");
    for (backend, n) in &chosen {
        // 300 connections: each backend between 20% and 47%.
        assert!((60..=141).contains(n), "{backend:?} got {n} of 300");
    }
}

#[test]
fn with_the_service_cidr_known_only_its_destinations_are_looked_up() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let mut dp = Datapath::load_with(&lab.nodes()[0].bpffs_dir, Some(([10, 96, 0, 0], 12)))
        .expect("programs load with the service CIDR");
    open_policy(&mut dp, pods());
    let inside = frontend(IPPROTO_TCP, 80);
    // A frontend outside the CIDR is never consulted: proof that the filter is on.
    let outside = FrontendKey {
        ip: wire_ip([192, 0, 2, 10]),
        ..inside
    };
    for key in [inside, outside] {
        dp.set_frontend(
            key,
            Frontend {
                service_id: 5,
                ..Default::default()
            },
            &backends(&BACKENDS[..1]),
        )
        .unwrap();
    }
    let to_vip = packet::l4_frame(IPPROTO_TCP, (CLIENT, 41000), (VIP, 80), b"", true);
    let out = dp.test_run(programs::FROM_POD, &to_vip).unwrap();
    assert_eq!(packet::endpoints(&out.packet).1, BACKENDS[0]);
    let to_outside = packet::l4_frame(
        IPPROTO_TCP,
        (CLIENT, 41000),
        (Ipv4Addr::new(192, 0, 2, 10), 80),
        b"",
        true,
    );
    let out = dp.test_run(programs::FROM_POD, &to_outside).unwrap();
    assert_eq!(
        out.packet, to_outside,
        "outside the service CIDR: untouched"
    );
}

#[test]
fn session_affinity_keeps_a_client_on_its_backend_until_the_timeout_or_the_backend_goes() {
    let (_lab, mut dp) = setup();
    let key = frontend(IPPROTO_TCP, 80);
    let affine = Frontend {
        service_id: 6,
        flags: FRONTEND_AFFINITY,
        affinity_timeout: 2,
        ..Default::default()
    };
    dp.set_frontend(key, affine, &backends(&BACKENDS)).unwrap();
    let connect = |dp: &mut Datapath, client: Ipv4Addr, port: u16| {
        let syn = packet::l4_frame(IPPROTO_TCP, (client, port), (VIP, 80), b"", true);
        let out = dp.test_run(programs::FROM_POD, &syn).unwrap();
        assert_eq!(out.action, TC_ACT_OK);
        packet::endpoints(&out.packet).1
    };

    // Thirty connections from one client, each from its own port: one backend.
    let first = connect(&mut dp, CLIENT, 21000);
    for port in 21001..21030 {
        assert_eq!(connect(&mut dp, CLIENT, port), first, "port {port}");
    }
    // Other clients are balanced on their own: together they reach every backend.
    let others: std::collections::BTreeSet<_> = (1..=60u8)
        .map(|host| connect(&mut dp, Ipv4Addr::new(10, 244, 9, host), 21000))
        .collect();
    assert_eq!(others.len(), 3, "{others:?}");

    // The remembered backend is removed: the client moves, and sticks to the new one.
    let rest: Vec<(Ipv4Addr, u16)> = BACKENDS.into_iter().filter(|b| *b != first).collect();
    dp.set_frontend(key, affine, &backends(&rest)).unwrap();
    let moved = connect(&mut dp, CLIENT, 22000);
    assert_ne!(moved, first);
    for port in 22001..22010 {
        assert_eq!(connect(&mut dp, CLIENT, port), moved);
    }

    // After the timeout, a new connection is balanced again: one whose hash picks the
    // other backend goes there.
    std::thread::sleep(std::time::Duration::from_millis(2300));
    let other_port = (23000..24000u16)
        .find(|port| {
            let flow = FlowKey {
                src_ip: wire_ip(CLIENT.octets()),
                dst_ip: wire_ip(VIP.octets()),
                src_port: wire_port(*port),
                dst_port: wire_port(80),
                protocol: IPPROTO_TCP,
                _pad: [0; 3],
            };
            let slot = pick_slot(&flow, 2).unwrap() as usize;
            rest[slot] != moved
        })
        .unwrap();
    let after = connect(&mut dp, CLIENT, other_port);
    assert_ne!(after, moved, "affinity expired after its timeout");

    // Without affinity the same client spreads over the backends.
    dp.set_frontend(
        key,
        Frontend {
            flags: 0,
            affinity_timeout: 0,
            ..affine
        },
        &backends(&BACKENDS),
    )
    .unwrap();
    let spread: std::collections::BTreeSet<_> = (25000..25060)
        .map(|p| connect(&mut dp, CLIENT, p))
        .collect();
    assert_eq!(spread.len(), 3, "{spread:?}");
}

#[test]
fn a_direct_connection_reusing_a_service_flows_ports_is_not_translated() {
    let (_lab, mut dp) = setup();
    dp.set_frontend(
        frontend(IPPROTO_TCP, 80),
        Frontend {
            service_id: 7,
            ..Default::default()
        },
        &backends(&BACKENDS),
    )
    .unwrap();
    // A connection through the Service from port 40000, then closed.
    let syn = packet::l4_frame(IPPROTO_TCP, (CLIENT, 40000), (VIP, 80), b"", true);
    let out = dp.test_run(programs::FROM_POD, &syn).unwrap();
    let (_, backend) = packet::endpoints(&out.packet);
    // Later the pod connects to that backend directly, from the same port.
    let direct = packet::l4_frame(IPPROTO_TCP, (CLIENT, 40000), backend, b"", true);
    let out = dp.test_run(programs::FROM_POD, &direct).unwrap();
    assert_eq!(out.packet, direct, "a direct connection passes untouched");
    // Its replies come from the backend, not from the Service.
    let reply = packet::l4_frame(IPPROTO_TCP, backend, (CLIENT, 40000), b"", true);
    let back = dp.test_run(programs::TO_POD, &reply).unwrap();
    assert_eq!(packet::endpoints(&back.packet), (backend, (CLIENT, 40000)));
    // And a new connection through the Service from that port is translated again.
    let again = dp.test_run(programs::FROM_POD, &syn).unwrap();
    assert_eq!(packet::endpoints(&again.packet).1, backend);
    let back = dp.test_run(programs::TO_POD, &reply).unwrap();
    assert_eq!(packet::endpoints(&back.packet).0, (VIP, 80));
}

#[test]
fn a_pod_that_is_its_own_backend_reaches_itself_through_the_service() {
    let (_lab, mut dp) = setup();
    dp.set_frontend(
        frontend(IPPROTO_TCP, 80),
        Frontend {
            service_id: 8,
            ..Default::default()
        },
        &backends(&[(CLIENT, 8080)]),
    )
    .unwrap();
    // The pod's SYN to the Service comes back to it from the Service's address (not its
    // own, which its kernel would drop), sent straight back out of its interface.
    let syn = packet::l4_frame(IPPROTO_TCP, (CLIENT, 40000), (VIP, 80), b"", true);
    let out = dp.test_run(programs::FROM_POD, &syn).unwrap();
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(
        packet::endpoints(&out.packet),
        ((VIP, 40000), (CLIENT, 8080))
    );
    assert_eq!(
        (&out.packet[..6], &out.packet[6..12]),
        (&syn[6..12], &syn[..6]),
        "the frame goes back with its Ethernet addresses swapped"
    );
    assert!(packet::checksums_ok(&out.packet));
    // Its server's reply goes back to its client socket, from the Service.
    let reply = packet::l4_frame(IPPROTO_TCP, (CLIENT, 8080), (VIP, 40000), b"hi", true);
    let back = dp.test_run(programs::FROM_POD, &reply).unwrap();
    assert_eq!(back.action, TC_ACT_REDIRECT);
    assert_eq!(
        packet::endpoints(&back.packet),
        ((VIP, 80), (CLIENT, 40000))
    );
    assert!(packet::checksums_ok(&back.packet));
    let m = dp.metrics().unwrap();
    assert_eq!(
        m.get(Direction::FromPod, Reason::HairpinRedirected).packets,
        2
    );
}

#[test]
fn from_the_overlay_a_local_pod_gets_its_packets_straight_with_one_hop_off_the_ttl() {
    let (_lab, mut dp) = setup();
    let pod = Ipv4Addr::new(10, 244, 0, 7);
    let (pod_mac, host_mac) = ([0x0a, 0, 0, 0, 0, 7], [0x0a, 0, 0, 0, 0, 1]);
    dp.set_pod(pod, 42, Some((pod_mac, host_mac)), None)
        .unwrap();
    let remote = (Ipv4Addr::new(10, 244, 1, 9), 5000);
    let frame = packet::l4_frame(IPPROTO_TCP, remote, (pod, 80), b"data", true);
    const TTL: usize = 14 + 8;

    let out = dp.test_run(programs::FROM_OVERLAY, &frame).unwrap();
    assert_eq!(out.action, TC_ACT_REDIRECT, "straight into the pod");
    assert_eq!(out.packet[TTL], frame[TTL] - 1, "one hop off the TTL");
    assert!(
        packet::checksums_ok(&out.packet),
        "the IPv4 checksum follows the TTL"
    );
    assert_eq!(&out.packet[..6], &pod_mac, "to the pod's MAC");
    assert_eq!(&out.packet[6..12], &host_mac, "from the host end's");
    assert_eq!(packet::endpoints(&out.packet), packet::endpoints(&frame));
    assert_eq!(&out.packet[12..TTL], &frame[12..TTL]);

    // A TTL that runs out here, and a pod this node does not have: the node's stack
    // decides (ICMP time exceeded; its routes), so the packet goes on untouched.
    let mut dying = frame.clone();
    dying[TTL] = 1;
    let stranger = packet::l4_frame(
        IPPROTO_TCP,
        remote,
        (Ipv4Addr::new(10, 244, 0, 8), 80),
        b"",
        true,
    );
    for p in [dying, stranger] {
        let out = dp.test_run(programs::FROM_OVERLAY, &p).unwrap();
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(out.packet, p);
    }
    let m = dp.metrics().unwrap();
    assert_eq!(
        m.get(Direction::FromOverlay, Reason::PodRedirected).packets,
        1
    );

    // A deleted pod is forgotten: its packets go to the node's stack.
    dp.forget_pods_not_in(&[]).unwrap();
    assert_eq!(
        dp.test_run(programs::FROM_OVERLAY, &frame).unwrap().action,
        TC_ACT_OK
    );
}
