//! Message-level behaviour: header bits, RCODEs for bad queries, EDNS, truncation and the
//! bytes-level entry point, as a client on the wire sees them.

mod common;

use common::{endpoint, port, query, service, snapshot, zone};
use twill_dns::hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use twill_dns::hickory_proto::rr::{DNSClass, Name, RecordType};
use twill_dns::{
    ClusterSnapshot, Outcome, PodsMode, Protocol, ServiceKind, Transport, WireOutcome, Zone,
    ZoneConfig, encode_within,
};

fn reply(zone: &Zone, query: &Message) -> Message {
    match zone.answer(query) {
        Outcome::Reply(response) => *response,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn wire_reply(zone: &Zone, query: &[u8], transport: Transport) -> Vec<u8> {
    match zone.answer_bytes(query, transport) {
        WireOutcome::Reply(bytes) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn with_edns(mut message: Message, payload: u16, dnssec_ok: bool) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    edns.set_dnssec_ok(dnssec_ok);
    message.set_edns(edns);
    message
}

#[test]
fn rfc1035_4_1_1_header_of_an_answer() {
    let zone = zone(PodsMode::Disabled);
    let mut asked = query("KuBeRnEtEs.default.SVC.cluster.local.", RecordType::A);
    asked.metadata.checking_disabled = true;
    let bytes = wire_reply(&zone, &asked.to_vec().unwrap(), Transport::Udp);
    let response = Message::from_vec(&bytes).unwrap();
    let header = response.metadata;
    assert_eq!(header.id, 0x1234, "ID copied");
    assert_eq!(header.message_type, MessageType::Response, "QR set");
    assert_eq!(header.op_code, OpCode::Query);
    assert!(header.authoritative, "AA set for the zone's names");
    assert!(header.recursion_desired, "RD copied");
    assert!(header.checking_disabled, "CD copied (RFC 6895 2)");
    assert!(
        header.recursion_available,
        "RA: the server forwards other names"
    );
    assert!(!header.truncation);
    assert_eq!(header.response_code, ResponseCode::NoError);
    // 0x20: the question goes back byte for byte as asked.
    assert!(
        bytes
            .windows(b"KuBeRnEtEs".len())
            .any(|w| w == b"KuBeRnEtEs")
    );
    assert_eq!(
        response.queries[0].name().to_ascii(),
        "KuBeRnEtEs.default.SVC.cluster.local."
    );
}

#[test]
fn rfc1035_4_1_4_names_are_compressed() {
    let zone = zone(PodsMode::Disabled);
    let asked = query("db.default.svc.cluster.local.", RecordType::A);
    let bytes = wire_reply(&zone, &asked.to_vec().unwrap(), Transport::Udp);
    // Each of the three A records names its owner by a pointer to the question (offset 12).
    let pointers = bytes.windows(2).filter(|w| *w == [0xc0, 0x0c]).count();
    assert_eq!(pointers, 3);
    // header 12 + question 34 + 3 x (pointer 2 + type/class/ttl/len 10 + address 4)
    assert_eq!(bytes.len(), 12 + 34 + 3 * 16);
}

#[test]
fn rcodes_for_queries_the_zone_will_not_answer() {
    let zone = zone(PodsMode::Disabled);
    let in_zone = || query("kubernetes.default.svc.cluster.local.", RecordType::A);
    let two_questions = {
        let mut message = in_zone();
        message.add_query(Query::query(
            Name::from_ascii("db.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        message
    };
    let no_question = Message::new(7, MessageType::Query, OpCode::Query);
    let with_opcode = |op_code| {
        let mut message = in_zone();
        message.metadata.op_code = op_code;
        message
    };
    let with_class = |name: &str, class| {
        let mut message = query(name, RecordType::A);
        message.queries[0].set_query_class(class);
        message
    };
    let with_version = {
        let mut edns = Edns::new();
        edns.set_version(1);
        let mut message = in_zone();
        message.set_edns(edns);
        message
    };
    let cases: Vec<(&str, Message, Option<ResponseCode>)> = vec![
        (
            "RFC 9619: two questions",
            two_questions,
            Some(ResponseCode::FormErr),
        ),
        (
            "RFC 9619: no question",
            no_question,
            Some(ResponseCode::FormErr),
        ),
        (
            "RFC 1035 4.1.1: STATUS",
            with_opcode(OpCode::Status),
            Some(ResponseCode::NotImp),
        ),
        (
            "RFC 1996: NOTIFY",
            with_opcode(OpCode::Notify),
            Some(ResponseCode::NotImp),
        ),
        (
            "RFC 2136: UPDATE",
            with_opcode(OpCode::Update),
            Some(ResponseCode::NotImp),
        ),
        (
            "RFC 1035 4.1.1: class CH for a zone name",
            with_class("kubernetes.default.svc.cluster.local.", DNSClass::CH),
            Some(ResponseCode::Refused),
        ),
        (
            "class ANY for a zone name",
            with_class("kubernetes.default.svc.cluster.local.", DNSClass::ANY),
            Some(ResponseCode::Refused),
        ),
        (
            "class CH for another name is forwarded",
            with_class("version.bind.", DNSClass::CH),
            None,
        ),
        (
            "RFC 5936 2.2.1: zone transfer refused",
            query("cluster.local.", RecordType::AXFR),
            Some(ResponseCode::Refused),
        ),
        (
            "RFC 1995: incremental transfer refused",
            query("cluster.local.", RecordType::IXFR),
            Some(ResponseCode::Refused),
        ),
        (
            "RFC 6891 6.1.1: OPT is no question type",
            query("cluster.local.", RecordType::OPT),
            Some(ResponseCode::FormErr),
        ),
        (
            "RFC 6891 6.1.3: EDNS version 1",
            with_version,
            Some(ResponseCode::BADVERS),
        ),
    ];
    for (source, asked, want) in cases {
        let outcome = zone.answer(&asked);
        match (outcome, want) {
            (Outcome::Reply(response), Some(code)) => {
                assert_eq!(response.metadata.response_code, code, "{source}");
                assert!(response.answers.is_empty(), "{source}");
                assert!(
                    !response.metadata.authoritative,
                    "{source}: AA is for answers"
                );
                assert_eq!(response.metadata.id, asked.metadata.id, "{source}");
                // Through the wire too: the extended RCODE survives encoding.
                let bytes = wire_reply(&zone, &asked.to_vec().unwrap(), Transport::Udp);
                let decoded = Message::from_vec(&bytes).unwrap();
                // BADVERS shares its value, 16, with BADSIG; compare values.
                assert_eq!(
                    u16::from(decoded.metadata.response_code),
                    u16::from(code),
                    "{source} (wire)"
                );
            }
            (Outcome::Forward, None) => {}
            (other, want) => panic!("{source}: want {want:?}, got {other:?}"),
        }
    }
}

#[test]
fn rfc6891_opt_in_opt_out() {
    let zone = zone(PodsMode::Disabled);
    let plain = query("kubernetes.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        reply(&zone, &plain).edns,
        None,
        "no OPT without one in the query"
    );

    let asked = with_edns(plain.clone(), 4096, true);
    let response = reply(&zone, &asked);
    let edns = response.edns.expect("OPT in the response");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), 1232, "the zone's payload size");
    assert!(edns.flags().dnssec_ok, "RFC 3225 3: DO copied");

    let asked = with_edns(plain.clone(), 1232, false);
    let bytes = wire_reply(&zone, &asked.to_vec().unwrap(), Transport::Udp);
    let decoded = Message::from_vec(&bytes).unwrap();
    assert!(!decoded.edns.expect("OPT on the wire").flags().dnssec_ok);

    // The UDP size limit: 512 without EDNS, else the client's, within [512, ours].
    assert_eq!(zone.udp_limit(&plain), 512);
    assert_eq!(zone.udp_limit(&with_edns(plain.clone(), 4096, false)), 1232);
    assert_eq!(zone.udp_limit(&with_edns(plain.clone(), 1000, false)), 1000);
    assert_eq!(zone.udp_limit(&with_edns(plain, 100, false)), 512);
}

#[test]
fn responses_and_unreadable_messages_get_no_reply() {
    let zone = zone(PodsMode::Disabled);
    let mut response = query("kubernetes.default.svc.cluster.local.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(zone.answer(&response), Outcome::Drop);
    let bytes = response.to_vec().unwrap();
    assert_eq!(zone.answer_bytes(&bytes, Transport::Udp), WireOutcome::Drop);
    // Shorter than a header: nothing to answer to.
    assert_eq!(
        zone.answer_bytes(&[0x12, 0x34, 0x01], Transport::Udp),
        WireOutcome::Drop
    );
    // A malformed response is not answered either.
    let mut broken = bytes.clone();
    broken.truncate(20);
    assert_eq!(
        zone.answer_bytes(&broken, Transport::Udp),
        WireOutcome::Drop
    );
}

#[test]
fn rfc1035_formerr_for_a_query_that_does_not_parse() {
    let zone = zone(PodsMode::Disabled);
    let good = query("kubernetes.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let mut cut = good.clone();
    cut.truncate(good.len() - 3);
    let mut bad_label = good.clone();
    bad_label[12] = 0x7f; // a label length past the end of the message
    let mut bad_pointer = good.clone();
    bad_pointer[12] = 0xc0; // a compression pointer to itself: a loop
    bad_pointer[13] = 0x0c;
    let with_opt = with_edns(
        query("kubernetes.default.svc.cluster.local.", RecordType::A),
        1232,
        false,
    )
    .to_vec()
    .unwrap();
    let mut two_opts = with_opt.clone();
    two_opts[11] = 2; // ARCOUNT
    two_opts.extend_from_slice(&with_opt[with_opt.len() - 11..]);

    for (source, bytes) in [
        ("question cut short", cut),
        ("label past the end", bad_label),
        ("pointer loop", bad_pointer),
        ("RFC 6891 6.1.1: two OPT records", two_opts),
    ] {
        let response = wire_reply(&zone, &bytes, Transport::Udp);
        assert_eq!(response.len(), 12, "{source}: header only");
        assert_eq!(&response[..2], &[0x12, 0x34], "{source}: ID copied");
        assert_eq!(response[2], 0x81, "{source}: QR, opcode QUERY, RD copied");
        assert_eq!(response[3] & 0x0f, 1, "{source}: FORMERR");
    }
}

/// A headless Service with `count` ready endpoints named `host-<n>`, padded to `width`.
fn wide_zone(count: u8, width: usize) -> Zone {
    let mut wide = service("default", "wide", ServiceKind::Headless);
    let http = [port("http", Protocol::Tcp, 8080)];
    wide.endpoints = (0..count)
        .map(|n| {
            let host = format!("host-{n:0>width$}", width = width);
            endpoint([10, 1, 0, n], Some(&host), true, &http)
        })
        .collect();
    let snapshot = ClusterSnapshot {
        namespaces: vec!["default".into()],
        services: vec![wide],
        ..ClusterSnapshot::default()
    };
    Zone::build(&ZoneConfig::default(), &snapshot).unwrap()
}

#[test]
fn truncation_to_the_transport_limit() {
    let zone = wide_zone(200, 1);
    let asked = query("wide.default.svc.cluster.local.", RecordType::A);

    // UDP without EDNS: 512 bytes, TC set, as many whole records as fit.
    let bytes = wire_reply(&zone, &asked.to_vec().unwrap(), Transport::Udp);
    assert!(bytes.len() <= 512, "{} bytes", bytes.len());
    let response = Message::from_vec(&bytes).unwrap();
    assert!(response.metadata.truncation);
    assert_eq!(response.answers.len(), (512 - 12 - 36) / 16);
    assert_eq!(response.queries.len(), 1, "the question stays");

    // UDP with EDNS 4096: capped at the zone's 1232, and the OPT record stays.
    let asked_edns = with_edns(asked.clone(), 4096, false);
    let bytes = wire_reply(&zone, &asked_edns.to_vec().unwrap(), Transport::Udp);
    assert!(bytes.len() <= 1232, "{} bytes", bytes.len());
    let response = Message::from_vec(&bytes).unwrap();
    assert!(response.metadata.truncation);
    assert!(
        response.edns.is_some(),
        "RFC 6891 7: OPT kept when truncating"
    );

    // TCP: everything.
    let bytes = wire_reply(&zone, &asked.to_vec().unwrap(), Transport::Tcp);
    let response = Message::from_vec(&bytes).unwrap();
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 200);
}

#[test]
fn rfc2181_9_dropping_additional_records_does_not_set_tc() {
    // SRV targets are never compressed (RFC 2782), so 16 of them take about 1100 bytes.
    let zone = wide_zone(16, 10);
    let asked = with_edns(
        query(
            "_http._tcp.wide.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        1232,
        false,
    );
    let full = reply(&zone, &asked);
    assert_eq!(full.answers.len(), 16);
    assert_eq!(full.additionals.len(), 16);
    assert!(
        full.to_vec().unwrap().len() > 1232,
        "the fixture must overflow"
    );

    let bytes = encode_within(&full, 1232).unwrap();
    assert!(bytes.len() <= 1232);
    let response = Message::from_vec(&bytes).unwrap();
    assert!(
        !response.metadata.truncation,
        "only additional data was left out"
    );
    assert_eq!(response.answers.len(), 16);
    assert!(response.additionals.is_empty());
    assert!(response.edns.is_some());
}

#[test]
fn negative_answers_carry_the_configured_ttl() {
    let config = ZoneConfig {
        zone: "K8s.Example.".into(),
        ttl: 30,
        ..ZoneConfig::default()
    };
    let zone = Zone::build(&config, &snapshot()).unwrap();
    assert_eq!(zone.origin().to_ascii(), "k8s.example.");
    let response = reply(
        &zone,
        &query("nosuch.default.svc.k8s.example.", RecordType::A),
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        common::lines(&response.authorities),
        [
            "k8s.example. 30 IN SOA ns.dns.k8s.example. hostmaster.k8s.example. 42 7200 1800 86400 30"
        ]
    );
    let response = reply(&zone, &query("db.default.svc.k8s.example.", RecordType::A));
    assert!(response.answers.iter().all(|r| r.ttl == 30));
    // The old zone name is not this zone's any more.
    assert_eq!(
        zone.answer(&query("db.default.svc.cluster.local.", RecordType::A)),
        Outcome::Forward
    );
    // Without a configured server address, ns.dns.<zone> exists but has no A.
    let response = reply(&zone, &query("ns.dns.k8s.example.", RecordType::A));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.answers.is_empty());
    let response = reply(&zone, &query("k8s.example.", RecordType::NS));
    assert!(response.additionals.is_empty());
}
