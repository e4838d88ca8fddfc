//! A datapath record with the names it had when it was read ([`Kept`]), and its JSON
//! shape ([`FlowEvent`]). Pure: the reader gathers the names; nothing here does I/O.
//!
//! Names are taken when the record is read, not when it is served: a pod deleted since
//! still shows under the name it had. They are shared (`Arc`), so a record kept in memory
//! costs about 200 bytes whatever its labels.

use std::{net::Ipv4Addr, sync::Arc};

use twill_abi::{
    flow::{
        FlowRecord, KIND_DROP, KIND_NEW, KIND_PACKET, KIND_REFUSED, REPLY_NO, REPLY_YES,
        VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED, VERDICT_EXEMPT, VERDICT_FQDN_DENIED,
        VERDICT_KNOWN, VERDICT_NONE, VERDICT_OPEN,
    },
    metrics::{Direction, Reason},
    programs,
};
use twill_api::flow::{
    DnsQueryRecord, FlowDns, FlowEndpoint, FlowEvent, FlowPolicy, FlowService, PolicySide,
};
use twill_policy::EndpointPolicy;

use super::names::{PodName, ServiceName};

/// What one direction of a compiled table names: its isolating policies and the rule
/// behind each bit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionNames {
    pub isolated_by: Vec<String>,
    /// Bit `i`: the rule's policy (`namespace/name`) and its index.
    pub rules: Vec<(String, u32)>,
}

/// [`DirectionNames`] of a table, ingress then egress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableNames(pub [DirectionNames; 2]);

impl TableNames {
    pub fn of(policy: &EndpointPolicy) -> TableNames {
        TableNames(twill_policy::Direction::BOTH.map(|d| {
            let t = policy.direction(d);
            DirectionNames {
                isolated_by: t.isolated_by.iter().map(ToString::to_string).collect(),
                rules: t
                    .bits
                    .iter()
                    .map(|b| (b.rule.policy.to_string(), b.rule.index as u32))
                    .collect(),
            }
        }))
    }
}

/// Who is at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Pod(Arc<PodName>),
    Node(Arc<str>),
}

/// A record and the names it had when read.
#[derive(Clone, Debug)]
pub struct Kept {
    pub seq: u64,
    /// Wall-clock time of the record, Unix milliseconds.
    pub unix_ms: u64,
    pub record: FlowRecord,
    pub source: Option<Who>,
    pub destination: Option<Who>,
    /// The pod (or node) the translation sent it to.
    pub backend: Option<Who>,
    pub service: Option<Arc<ServiceName>>,
    /// The tables behind the egress and ingress verdicts.
    pub egress: Option<Arc<TableNames>>,
    pub ingress: Option<Arc<TableNames>>,
    pub interface: Arc<str>,
    /// A DNS query record from twill-dnsd (`record` then holds only its addresses, ports
    /// and protocol).
    pub dns: Option<Arc<KeptDns>>,
}

/// What a DNS query record adds to [`Kept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptDns {
    pub dns: FlowDns,
    pub repeats: u32,
    pub fqdn_policies: Vec<String>,
}

/// The program name of DNS query records.
pub const DNSD: &str = "twill-dnsd";

impl Kept {
    /// A DNS query record as twill-dnsd handed it over, its ends named by `who`; `None`
    /// without a client address.
    pub fn of_dns(q: DnsQueryRecord, mut who: impl FnMut(Ipv4Addr) -> Option<Who>) -> Option<Kept> {
        let client = q.client?;
        let wire = |ip: Ipv4Addr| u32::from(ip).to_be();
        let record = FlowRecord {
            src_ip: wire(*client.ip()),
            src_port: client.port().to_be(),
            dst_ip: q.server.map_or(0, |s| wire(*s.ip())),
            dst_port: q.server.map_or(0, |s| s.port().to_be()),
            protocol: if q.transport.eq_ignore_ascii_case("tcp") {
                6
            } else {
                17
            },
            ..FlowRecord::default()
        };
        Some(Kept {
            seq: 0,
            unix_ms: q.unix_ms,
            source: who(*client.ip()),
            destination: q.server.and_then(|s| who(*s.ip())),
            record,
            backend: None,
            service: None,
            egress: None,
            ingress: None,
            interface: Arc::from(""),
            dns: Some(Arc::new(KeptDns {
                dns: q.dns,
                repeats: q.repeats,
                fqdn_policies: q.fqdn_policies,
            })),
        })
    }

    /// The JSON shape of a DNS query record.
    fn dns_event(&self, node: &str, d: &KeptDns) -> FlowEvent {
        let r = &self.record;
        let denied = d.dns.answered_by == "fqdn-denied";
        FlowEvent {
            seq: self.seq,
            time: twill_api::flow::rfc3339_ms(self.unix_ms),
            node: node.to_owned(),
            kind: "dns".to_owned(),
            verdict: if denied { "refused" } else { "forwarded" }.to_owned(),
            reason: format!("dns-{}", d.dns.answered_by),
            direction: match self.source {
                Some(Who::Pod(_)) => "from-pod",
                _ => "from-host",
            }
            .to_owned(),
            program: DNSD.to_owned(),
            protocol: Some(protocol_name(r.protocol)),
            source: endpoint(
                r.src_ip,
                Some(u16::from_be(r.src_port)),
                self.source.as_ref(),
                true,
            ),
            destination: endpoint(
                r.dst_ip,
                (r.dst_ip != 0).then(|| u16::from_be(r.dst_port)),
                self.destination.as_ref(),
                r.dst_ip != 0,
            ),
            service: None,
            backend: None,
            reply: Some(false),
            policy: FlowPolicy {
                egress: denied.then(|| PolicySide {
                    verdict: "fqdn-denied".to_owned(),
                    policy: d.fqdn_policies.first().cloned(),
                    rule: None,
                    isolated_by: d.fqdn_policies.clone(),
                }),
                ingress: None,
            },
            repeats: d.repeats,
            bytes: 0,
            interface: String::new(),
            dns: Some(d.dns.clone()),
        }
    }
}

pub fn ip(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(wire))
}

/// Whether the program could read the packet's addresses (a malformed one has none).
pub fn has_addresses(r: &FlowRecord) -> bool {
    r.src_ip != 0 || r.dst_ip != 0 || r.protocol != 0
}

/// The packet's destination after any translation: where the ingress check looked.
pub fn delivered_to(r: &FlowRecord) -> u32 {
    if r.xlate_ip != 0 {
        r.xlate_ip
    } else {
        r.dst_ip
    }
}

pub fn protocol_name(p: u8) -> String {
    match p {
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        1 => "ICMP".to_owned(),
        132 => "SCTP".to_owned(),
        other => format!("proto-{other}"),
    }
}

fn kind_name(kind: u8) -> String {
    match kind {
        KIND_NEW => "new".to_owned(),
        KIND_DROP => "drop".to_owned(),
        KIND_REFUSED => "refused".to_owned(),
        KIND_PACKET => "packet".to_owned(),
        other => format!("kind-{other}"),
    }
}

fn direction_of(code: u8) -> (String, String) {
    let d = Direction::ALL
        .into_iter()
        .find(|d| *d as u32 == u32::from(code));
    let program = match d {
        Some(Direction::FromPod) => programs::FROM_POD,
        Some(Direction::ToPod) => programs::TO_POD,
        Some(Direction::FromWorld) => programs::FROM_WORLD,
        Some(Direction::FromOverlay) => programs::FROM_OVERLAY,
        Some(Direction::HostSocket) | None => "",
    };
    (
        d.map_or_else(|| format!("direction-{code}"), |d| d.name().to_owned()),
        program.to_owned(),
    )
}

fn verdict_side(
    v: &twill_abi::flow::PolicyVerdict,
    names: Option<&TableNames>,
    d: twill_policy::Direction,
) -> Option<PolicySide> {
    let names = names.map(|t| &t.0[d.index() as usize]);
    let verdict = match v.verdict {
        VERDICT_NONE => return None,
        VERDICT_OPEN => "open",
        VERDICT_ALLOWED => "allowed",
        VERDICT_DENIED => "denied",
        VERDICT_AUDIT => "audit",
        VERDICT_EXEMPT => "exempt",
        VERDICT_KNOWN => "known",
        VERDICT_FQDN_DENIED => "fqdn-denied",
        other => {
            return Some(PolicySide {
                verdict: format!("verdict-{other}"),
                ..PolicySide::default()
            });
        }
    };
    let mut side = PolicySide {
        verdict: verdict.to_owned(),
        ..PolicySide::default()
    };
    match v.verdict {
        VERDICT_ALLOWED => {
            if let Some((policy, index)) = names.and_then(|n| n.rules.get(usize::from(v.bit))) {
                side.policy = Some(policy.clone());
                side.rule = Some(*index);
            }
        }
        VERDICT_DENIED | VERDICT_AUDIT => {
            if let Some(n) = names {
                side.isolated_by = n.isolated_by.clone();
                side.policy = n.isolated_by.first().cloned();
            }
        }
        _ => {}
    }
    Some(side)
}

fn endpoint(ip_wire: u32, port: Option<u16>, who: Option<&Who>, read: bool) -> FlowEndpoint {
    let mut e = FlowEndpoint {
        ip: read.then(|| ip(ip_wire)),
        port,
        ..FlowEndpoint::default()
    };
    match who {
        Some(Who::Pod(p)) => {
            e.pod = Some(p.name.clone());
            e.namespace = Some(p.namespace.clone());
            e.labels = p.labels.clone();
            e.node = Some(p.node.clone());
        }
        Some(Who::Node(n)) => e.node = Some(n.to_string()),
        None => {}
    }
    e
}

impl Kept {
    /// The record's JSON shape, as written by the node `node`.
    pub fn event(&self, node: &str) -> FlowEvent {
        if let Some(d) = &self.dns {
            return self.dns_event(node, d);
        }
        let r = &self.record;
        let read = has_addresses(r);
        let ports = read && matches!(r.protocol, 6 | 17 | 132);
        let port = |p: u16| ports.then(|| u16::from_be(p));
        let (direction, program) = direction_of(r.direction);
        let reason = Reason::from_code(u32::from(r.reason))
            .map_or_else(|| format!("reason-{}", r.reason), |x| x.name().to_owned());
        let verdict = match r.kind {
            KIND_DROP => "dropped",
            KIND_REFUSED => "refused",
            _ => "forwarded",
        };
        let translated = r.xlate_ip != 0;
        FlowEvent {
            seq: self.seq,
            time: twill_api::flow::rfc3339_ms(self.unix_ms),
            node: node.to_owned(),
            kind: kind_name(r.kind),
            verdict: verdict.to_owned(),
            reason,
            direction,
            program,
            protocol: read.then(|| protocol_name(r.protocol)),
            source: endpoint(r.src_ip, port(r.src_port), self.source.as_ref(), read),
            destination: endpoint(r.dst_ip, port(r.dst_port), self.destination.as_ref(), read),
            service: self.service.as_ref().map(|s| FlowService {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                ip: Some(ip(r.dst_ip)),
                port: u16::from_be(r.dst_port),
            }),
            backend: translated
                .then(|| endpoint(r.xlate_ip, port(r.xlate_port), self.backend.as_ref(), true)),
            reply: match r.reply {
                REPLY_NO => Some(false),
                REPLY_YES => Some(true),
                _ => None,
            },
            policy: FlowPolicy {
                egress: verdict_side(
                    &r.egress,
                    self.egress.as_deref(),
                    twill_policy::Direction::Egress,
                ),
                ingress: verdict_side(
                    &r.ingress,
                    self.ingress.as_deref(),
                    twill_policy::Direction::Ingress,
                ),
            },
            repeats: u32::from(r.repeats),
            bytes: r.len,
            interface: self.interface.to_string(),
            dns: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use twill_abi::{flow::PolicyVerdict, lb::wire_ip};

    use super::*;

    fn wire(ip: &str) -> u32 {
        wire_ip(ip.parse::<Ipv4Addr>().unwrap().octets())
    }

    fn pod(ns: &str, name: &str, node: &str) -> Who {
        Who::Pod(Arc::new(PodName {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
        }))
    }

    fn kept(record: FlowRecord) -> Kept {
        Kept {
            seq: 7,
            unix_ms: 1_796_122_795_123,
            record,
            source: None,
            destination: None,
            backend: None,
            service: None,
            egress: None,
            ingress: None,
            interface: Arc::from("tw0123456789ab"),
            dns: None,
        }
    }

    #[test]
    fn a_translated_connection_names_the_service_and_its_backend() {
        let mut k = kept(FlowRecord {
            time_ns: 1,
            src_ip: wire("10.244.1.3"),
            dst_ip: wire("10.96.0.80"),
            xlate_ip: wire("10.244.2.5"),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            xlate_port: 8080u16.to_be(),
            protocol: 6,
            direction: Direction::FromPod as u8,
            reason: Reason::ServiceTranslated as u8,
            kind: KIND_NEW,
            reply: REPLY_NO,
            len: 60,
            egress: PolicyVerdict {
                verdict: VERDICT_OPEN,
                ..PolicyVerdict::default()
            },
            ..FlowRecord::default()
        });
        k.source = Some(pod("default", "client", "node1"));
        k.backend = Some(pod("default", "web", "node2"));
        k.service = Some(Arc::new(ServiceName {
            namespace: "default".into(),
            name: "websvc".into(),
        }));
        let e = k.event("node1");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 7,
                "time": "2026-12-01T10:59:55.123Z",
                "node": "node1",
                "kind": "new",
                "verdict": "forwarded",
                "reason": "service-translated",
                "direction": "from-pod",
                "program": "twill_from_pod",
                "protocol": "TCP",
                "source": {"ip": "10.244.1.3", "port": 40000, "pod": "client",
                    "namespace": "default", "labels": {"app": "client"}, "node": "node1"},
                "destination": {"ip": "10.96.0.80", "port": 80, "pod": null,
                    "namespace": null, "labels": {}, "node": null},
                "service": {"namespace": "default", "name": "websvc", "ip": "10.96.0.80",
                    "port": 80},
                "backend": {"ip": "10.244.2.5", "port": 8080, "pod": "web",
                    "namespace": "default", "labels": {"app": "web"}, "node": "node2"},
                "reply": false,
                "policy": {"egress": {"verdict": "open", "policy": null, "rule": null,
                    "isolated_by": []}, "ingress": null},
                "repeats": 0,
                "bytes": 60,
                "interface": "tw0123456789ab",
                "dns": null
            })
        );
    }

    #[test]
    fn policy_verdicts_name_the_rule_or_the_isolating_policies() {
        let names = Arc::new(TableNames([
            DirectionNames {
                isolated_by: vec!["default/a".into(), "default/b".into()],
                rules: vec![("default/b".into(), 0), ("default/a".into(), 2)],
            },
            DirectionNames::default(),
        ]));
        let mut k = kept(FlowRecord {
            src_ip: wire("10.244.1.3"),
            dst_ip: wire("10.244.2.5"),
            protocol: 6,
            kind: KIND_DROP,
            reason: Reason::DropPolicyDenied as u8,
            direction: Direction::FromOverlay as u8,
            ingress: PolicyVerdict {
                table: 4,
                verdict: VERDICT_DENIED,
                ..PolicyVerdict::default()
            },
            repeats: 3,
            ..FlowRecord::default()
        });
        k.ingress = Some(names.clone());
        let e = k.event("node2");
        assert_eq!((e.verdict.as_str(), e.kind.as_str()), ("dropped", "drop"));
        assert_eq!(e.program, "twill_from_overlay");
        assert_eq!(e.repeats, 3);
        let ingress = e.policy.ingress.unwrap();
        assert_eq!(ingress.verdict, "denied");
        assert_eq!(ingress.policy.as_deref(), Some("default/a"));
        assert_eq!(ingress.isolated_by, ["default/a", "default/b"]);
        assert!(e.policy.egress.is_none(), "egress was not checked");

        k.record.kind = KIND_NEW;
        k.record.reason = Reason::PodRedirected as u8;
        k.record.ingress = PolicyVerdict {
            table: 4,
            verdict: VERDICT_ALLOWED,
            bit: 1,
            _pad: [0; 2],
        };
        let allowed = k.event("node2").policy.ingress.unwrap();
        assert_eq!(
            (allowed.policy.as_deref(), allowed.rule),
            (Some("default/a"), Some(2))
        );
        assert!(allowed.isolated_by.is_empty());
        // The table is gone by the time the record is read: the verdict without names.
        k.ingress = None;
        let unnamed = k.event("node2").policy.ingress.unwrap();
        assert_eq!(
            (unnamed.verdict.as_str(), unnamed.policy),
            ("allowed", None)
        );
    }

    #[test]
    fn an_unreadable_packet_has_no_addresses_but_its_interface_names_the_pod() {
        let mut k = kept(FlowRecord {
            kind: KIND_DROP,
            reason: Reason::DropMalformed as u8,
            direction: Direction::FromPod as u8,
            len: 36,
            ..FlowRecord::default()
        });
        k.source = Some(pod("default", "client", "node1"));
        let e = k.event("node1");
        assert_eq!(e.reason, "drop-malformed");
        assert_eq!((e.source.ip, e.source.port, e.protocol), (None, None, None));
        assert_eq!(e.source.pod.as_deref(), Some("client"));
        assert_eq!(e.destination.ip, None);
        assert_eq!(e.reply, None);
        assert!(e.backend.is_none() && e.service.is_none());
    }

    #[test]
    fn a_dns_query_names_its_pod_and_says_what_it_asked_and_got() {
        let q = DnsQueryRecord {
            unix_ms: 1_796_122_795_123,
            client: Some("10.244.1.5:41000".parse().unwrap()),
            server: Some("172.30.0.2:53".parse().unwrap()),
            transport: "UDP".into(),
            repeats: 2,
            fqdn_policies: vec!["default/egress-dns".into()],
            dns: FlowDns {
                query: "x.example.".into(),
                qtype: "A".into(),
                rcode: "NXDOMAIN".into(),
                answered_by: "fqdn-denied".into(),
                ..FlowDns::default()
            },
        };
        let k = Kept::of_dns(q, |ip| match ip.to_string().as_str() {
            "10.244.1.5" => Some(pod("default", "client", "node1")),
            "172.30.0.2" => Some(Who::Node(Arc::from("node1"))),
            _ => None,
        })
        .unwrap();
        let e = k.event("node1");
        assert_eq!(
            (e.kind.as_str(), e.verdict.as_str(), e.reason.as_str()),
            ("dns", "refused", "dns-fqdn-denied")
        );
        assert_eq!(
            (e.direction.as_str(), e.program.as_str()),
            ("from-pod", "twill-dnsd")
        );
        assert_eq!(e.protocol.as_deref(), Some("UDP"));
        assert_eq!(e.source.pod.as_deref(), Some("client"));
        assert_eq!(e.source.port, Some(41000));
        assert_eq!(e.destination.node.as_deref(), Some("node1"));
        assert_eq!(e.destination.port, Some(53));
        assert_eq!(e.repeats, 2);
        let side = e.policy.egress.unwrap();
        assert_eq!(side.verdict, "fqdn-denied");
        assert_eq!(side.isolated_by, ["default/egress-dns"]);
        assert_eq!(e.dns.unwrap().query, "x.example.");
        // An answered query is forwarded, and says nothing of policy.
        let q = DnsQueryRecord {
            client: Some("172.30.0.9:5000".parse().unwrap()),
            transport: "TCP".into(),
            dns: FlowDns {
                answered_by: "zone".into(),
                ..FlowDns::default()
            },
            ..DnsQueryRecord::default()
        };
        let e = Kept::of_dns(q, |_| None).unwrap().event("node1");
        assert_eq!(
            (e.verdict.as_str(), e.reason.as_str(), e.direction.as_str()),
            ("forwarded", "dns-zone", "from-host")
        );
        assert_eq!(e.protocol.as_deref(), Some("TCP"));
        assert!(e.destination.ip.is_none() && e.policy.egress.is_none());
        assert!(Kept::of_dns(DnsQueryRecord::default(), |_| None).is_none());
    }
}
