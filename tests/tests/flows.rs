//! Flow records from the real programs (BPF_PROG_TEST_RUN on `twill_from_pod` and
//! `twill_to_pod`): a new connection gets one record with its verdicts, a drop gets one
//! with its reason, repeated drops of a flow are folded into the next record's count,
//! nothing is written with records off, and a full ring is counted, not silent.

use std::net::Ipv4Addr;

use twill_abi::{
    flow::{
        FLOW_MODE_CONNECTIONS, FLOW_MODE_OFF, FLOW_MODE_PACKETS, FlowRecord, KIND_DROP, KIND_NEW,
        KIND_PACKET, REPLY_NO, REPLY_YES, VERDICT_DENIED, VERDICT_OPEN,
    },
    lb::wire_ip,
    metrics::Reason,
    programs,
    tc::{TC_ACT_OK, TC_ACT_SHOT},
};
use twill_bpf::{Datapath, FlowRing, MapSizes, open_flow_ring, read_flows_lost};
use twill_lab::{Lab, LabSpec};
use twill_tests::{open_policy, packet, require_root};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn setup(sizes: MapSizes) -> (Lab, Datapath, FlowRing) {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    let pins = lab.nodes()[0].bpffs_dir.clone();
    let (mut dp, _) = Datapath::load_sized(&pins, None, sizes).expect("programs load and verify");
    open_policy(&mut dp, [CLIENT, SERVER]);
    let ring = open_flow_ring(&pins).expect("the flow ring is pinned");
    (lab, dp, ring)
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let mut frame = packet::l4_frame(6, src, dst, &[], true);
    frame[14 + 20 + 13] = flags;
    frame
}

fn drain(ring: &mut FlowRing) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    while let Some(r) = ring.next() {
        out.push(r.expect("a record of this build's size"));
    }
    out
}

fn run(dp: &mut Datapath, program: &'static str, frame: &[u8]) -> i32 {
    dp.test_run(program, frame).expect("test run").action
}

#[test]
fn connections_and_drops_are_recorded_once_with_their_verdicts() {
    let (_lab, mut dp, mut ring) = setup(MapSizes::default());

    // Off: nothing, whatever happens.
    dp.set_flow_mode(FLOW_MODE_OFF).unwrap();
    run(
        &mut dp,
        programs::FROM_POD,
        &tcp((CLIENT, 40000), (SERVER, 80), SYN),
    );
    assert!(drain(&mut ring).is_empty(), "records off");

    dp.set_flow_mode(FLOW_MODE_CONNECTIONS).unwrap();
    // A new connection: one record, with the egress verdict, not a reply.
    let syn = tcp((CLIENT, 40001), (SERVER, 80), SYN);
    assert_eq!(run(&mut dp, programs::FROM_POD, &syn), TC_ACT_OK);
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = records[0];
    assert_eq!(
        (r.kind, r.reply, r.protocol),
        (KIND_NEW, REPLY_NO, 6),
        "{r:?}"
    );
    assert_eq!(
        (r.src_ip, r.dst_ip),
        (wire_ip(CLIENT.octets()), wire_ip(SERVER.octets()))
    );
    assert_eq!(
        (u16::from_be(r.src_port), u16::from_be(r.dst_port)),
        (40001, 80)
    );
    assert_eq!(r.egress.verdict, VERDICT_OPEN);
    assert_eq!(r.reason, Reason::Forwarded as u8);
    assert!(r.time_ns > 0 && r.len as usize == syn.len());
    // Later packets of the flow: no record.
    run(
        &mut dp,
        programs::FROM_POD,
        &tcp((CLIENT, 40001), (SERVER, 80), ACK),
    );
    run(
        &mut dp,
        programs::TO_POD,
        &tcp((SERVER, 80), (CLIENT, 40001), SYN | ACK),
    );
    assert!(drain(&mut ring).is_empty(), "one record per connection");

    // A drop: a pod's packet from an address with no policy entry.
    let spoofed = tcp((Ipv4Addr::new(10, 244, 1, 99), 1), (SERVER, 80), SYN);
    assert_eq!(run(&mut dp, programs::FROM_POD, &spoofed), TC_ACT_SHOT);
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].kind,
            records[0].reason,
            records[0].egress.verdict
        ),
        (
            KIND_DROP,
            Reason::DropPolicyNoEndpoint as u8,
            VERDICT_DENIED
        )
    );
    // The same drop again within a second: folded into the next record of the flow.
    for _ in 0..5 {
        run(&mut dp, programs::FROM_POD, &spoofed);
    }
    assert!(
        drain(&mut ring).is_empty(),
        "repeats are not recorded one by one"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run(&mut dp, programs::FROM_POD, &spoofed);
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].repeats, 5, "the left-out drops are counted");

    // A malformed packet: a TCP header cut short (its IPv4 header says so).
    let mut truncated = tcp((CLIENT, 40002), (SERVER, 80), SYN);
    truncated.truncate(14 + 20 + 2);
    truncated[16..18].copy_from_slice(&22u16.to_be_bytes());
    assert_eq!(run(&mut dp, programs::FROM_POD, &truncated), TC_ACT_SHOT);
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].kind, records[0].reason),
        (KIND_DROP, Reason::DropMalformed as u8)
    );

    // Per packet: every packet, replies marked as such.
    dp.set_flow_mode(FLOW_MODE_PACKETS).unwrap();
    run(
        &mut dp,
        programs::TO_POD,
        &tcp((SERVER, 80), (CLIENT, 40001), SYN | ACK),
    );
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].kind, records[0].reply),
        (KIND_PACKET, REPLY_YES)
    );
    assert_eq!(read_flows_lost(dp.pin_dir()).unwrap(), 0);
}

#[test]
fn a_full_ring_counts_what_it_loses() {
    // One page: room for 56 records of 64 bytes and their 8-byte headers.
    let sizes = MapSizes {
        flow_ring_bytes: 4096,
        ..MapSizes::default()
    };
    let (_lab, mut dp, mut ring) = setup(sizes);
    dp.set_flow_mode(FLOW_MODE_PACKETS).unwrap();
    let frame = tcp((CLIENT, 40000), (SERVER, 80), ACK);
    for _ in 0..100 {
        run(&mut dp, programs::FROM_POD, &frame);
    }
    let kept = drain(&mut ring).len() as u64;
    let lost = read_flows_lost(dp.pin_dir()).unwrap();
    eprintln!("kept {kept}, lost {lost}");
    assert!(kept > 0 && kept < 100, "kept {kept}");
    assert_eq!(
        kept + lost,
        100,
        "every record is either read or counted as lost"
    );
}
