//! The eBPF programs from `ebpf/`, loaded into the kernel: verdicts on crafted packets
//! through `BPF_PROG_TEST_RUN`, and real traffic through a veth in a lab node.

use std::net::Ipv4Addr;

use twill_abi::{
    metrics::{Direction, MetricValue, Reason},
    programs,
    tc::{TC_ACT_OK, TC_ACT_SHOT},
};
use twill_bpf::{Datapath, read_metrics};
use twill_lab::{Lab, LabSpec};
use twill_tests::{packet, require_root};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: i32,
    reason: Reason,
}

/// Frames shorter than an IPv4 header can't go through `BPF_PROG_TEST_RUN` (the kernel
/// refuses them with EINVAL), so those are sent on the wire in
/// [`counters_of_traffic_through_a_veth_are_read_back_from_the_pinned_map`].
fn cases() -> Vec<Case> {
    let syn = packet::tcp_syn(40000, 80);
    let valid = packet::ethernet(0x0800, &packet::ipv4(POD_A, POD_B, 6, &syn));
    let mut bad_version = valid.clone();
    bad_version[14] = 0x65; // IPv6 version nibble inside an IPv4 ethertype
    let mut short_ihl = valid.clone();
    short_ihl[14] = 0x44; // IHL 4: a header can't be 16 bytes
    let mut options_past_end = packet::ethernet(0x0800, &packet::ipv4(POD_A, POD_B, 6, &[]));
    options_past_end[14] = 0x4f; // IHL 15 claims 60 header bytes; the frame has 20
    vec![
        Case {
            name: "valid TCP SYN",
            frame: valid.clone(),
            action: TC_ACT_OK,
            reason: Reason::Forwarded,
        },
        Case {
            name: "ARP request",
            frame: packet::arp_request(POD_A, POD_B),
            action: TC_ACT_OK,
            reason: Reason::NotIpv4,
        },
        Case {
            name: "wrong IP version",
            frame: bad_version,
            action: TC_ACT_SHOT,
            reason: Reason::DropMalformed,
        },
        Case {
            name: "IHL below 5",
            frame: short_ihl,
            action: TC_ACT_SHOT,
            reason: Reason::DropMalformed,
        },
        Case {
            name: "options run past the end",
            frame: options_past_end,
            action: TC_ACT_SHOT,
            reason: Reason::DropMalformed,
        },
    ]
}

#[test]
fn each_crafted_packet_gets_its_verdict_and_is_counted_under_its_reason() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let node = &lab.nodes()[0];
    let mut datapath = Datapath::load(&node.bpffs_dir).expect("programs load and verify");
    twill_tests::open_policy(&mut datapath, [POD_A, POD_B]);

    for program in programs::POD {
        let direction = if program == programs::FROM_POD {
            Direction::FromPod
        } else {
            Direction::ToPod
        };
        for case in cases() {
            let before = datapath.metrics().expect("read metrics");
            let verdict = datapath
                .test_run(program, &case.frame)
                .unwrap_or_else(|e| panic!("{program} on {}: {e:#?}", case.name));
            assert_eq!(
                verdict.action, case.action,
                "{program} on {}: wrong verdict",
                case.name
            );
            if case.action == TC_ACT_OK {
                assert_eq!(
                    verdict.packet, case.frame,
                    "{program} on {}: a passed packet must leave unchanged",
                    case.name
                );
            }
            let after = datapath.metrics().expect("read metrics");
            for reason in Reason::ALL {
                let (b, a) = (before.get(direction, reason), after.get(direction, reason));
                let expected = if reason == case.reason {
                    MetricValue {
                        packets: b.packets + 1,
                        bytes: b.bytes + case.frame.len() as u64,
                    }
                } else {
                    b
                };
                assert_eq!(
                    a, expected,
                    "{program} on {}: counter {reason:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn counters_of_traffic_through_a_veth_are_read_back_from_the_pinned_map() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let (node1, node2) = (&lab.nodes()[0], &lab.nodes()[1]);
    let mut datapath = Datapath::load(&node1.bpffs_dir).expect("programs load");
    // The programs see node2 as the "pod" on eth0's far side.
    twill_tests::open_policy(&mut datapath, [node2.plan.underlay_ip]);
    // Interface names resolve in the calling thread's namespace: attach from node1's.
    node1
        .run(|| datapath.attach_pod("eth0"))
        .expect("enter node1")
        .expect("attach to node1's eth0");

    let pings = 5u64;
    let out = node2
        .output(
            "ping",
            &[
                "-c",
                &pings.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
                &node1.plan.underlay_ip.to_string(),
            ],
        )
        .expect("run ping");
    assert!(
        out.status.success(),
        "node2 must reach node1 through the attached programs: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Read through the pin, as `netctl` will, not through the loader's handle.
    let metrics = read_metrics(&node1.bpffs_dir).expect("pinned metrics map");
    // Ingress on eth0 sees the echo requests, egress the replies; 98 bytes each on the wire.
    for direction in [Direction::FromPod, Direction::ToPod] {
        let forwarded = metrics.get(direction, Reason::Forwarded);
        assert!(
            forwarded.packets >= pings && forwarded.bytes >= pings * 98,
            "{direction:?}: expected at least {pings} ICMP packets counted, got {forwarded:?}"
        );
        assert_eq!(metrics.get(direction, Reason::DropMalformed).packets, 0);
    }
    // ARP resolved node1's address first, counted but not dropped.
    assert!(metrics.get(Direction::FromPod, Reason::NotIpv4).packets >= 1);

    // Truncated IPv4 frames on the wire, written with a raw packet socket straight into
    // node1's veth from its underlay end (the bridge would not forward such runts):
    // dropped on node1's ingress and counted as malformed.
    let truncated = [
        packet::ethernet(0x0800, &[]),
        packet::ethernet(0x0800, &packet::ipv4(POD_A, POD_B, 6, &[])[..10]),
        packet::ethernet(0x0800, &packet::ipv4(POD_A, POD_B, 6, &[])[..19]),
    ];
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
        s.bind((sys.argv[1],0))\n\
        [s.send(bytes.fromhex(f)) for f in sys.argv[2:]]\n";
    let mut args = vec!["-c", script, &node1.plan.bridge_port];
    let hex: Vec<String> = truncated
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f[..6].copy_from_slice(&[0xff; 6]);
            f.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    args.extend(hex.iter().map(String::as_str));
    let sent = lab
        .underlay()
        .expect("underlay namespace")
        .run(|| std::process::Command::new("python3").args(&args).output())
        .expect("enter the underlay")
        .expect("run python3");
    assert!(
        sent.status.success(),
        "sending raw frames: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let dropped = read_metrics(&node1.bpffs_dir)
        .expect("pinned metrics map")
        .get(Direction::FromPod, Reason::DropMalformed);
    assert_eq!(
        dropped,
        MetricValue {
            packets: truncated.len() as u64,
            bytes: truncated.iter().map(|f| f.len() as u64).sum(),
        },
        "each truncated frame dropped once, its length counted"
    );

    drop(datapath);
    lab.down().expect("lab down");
}
