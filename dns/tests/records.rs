//! The records of the cluster zone, one table row per behaviour, each citing where it comes
//! from: "spec x.y" is the Kubernetes DNS-Based Service Discovery specification 1.1.0.

mod common;

use common::{Case, REVERSE_SOA, SOA, check, zone};
use twill_dns::PodsMode;
use twill_dns::hickory_proto::op::ResponseCode;
use twill_dns::hickory_proto::rr::RecordType;

const NOERROR: Option<ResponseCode> = Some(ResponseCode::NoError);
const NXDOMAIN: Option<ResponseCode> = Some(ResponseCode::NXDomain);
const FORWARD: Option<ResponseCode> = None;

#[test]
fn spec_2_2_schema_version() {
    check(
        &zone(PodsMode::Disabled),
        &[
            Case {
                source: "spec 2.2",
                name: "dns-version.cluster.local.",
                qtype: RecordType::TXT,
                rcode: NOERROR,
                answers: &["dns-version.cluster.local. 5 IN TXT 1.1.0"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 2308 2.2: the name exists, no A",
                name: "dns-version.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
        ],
    );
}

#[test]
fn spec_2_3_service_with_cluster_ip() {
    check(
        &zone(PodsMode::Disabled),
        &[
            Case {
                source: "spec 2.3.1",
                name: "kubernetes.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.1: case-insensitive, question echoed as asked (0x20)",
                name: "KuBeRnEtEs.DEFAULT.svc.Cluster.Local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["KuBeRnEtEs.DEFAULT.svc.Cluster.Local. 5 IN A 10.96.0.1"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 2308 2.2: AAAA of an A-only name is NODATA, not NXDOMAIN",
                name: "kubernetes.default.svc.cluster.local.",
                qtype: RecordType::AAAA,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8482: ANY gets what the name has",
                name: "kubernetes.default.svc.cluster.local.",
                qtype: RecordType::ANY,
                rcode: NOERROR,
                answers: &["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.3.2, target's A in additional",
                name: "_https._tcp.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[
                    "_https._tcp.kubernetes.default.svc.cluster.local. 5 IN SRV 0 100 443 kubernetes.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"],
            },
            Case {
                source: "spec 2.3.2, UDP port",
                name: "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[
                    "_dns._udp.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local.",
                ],
                authority: &[],
                additional: &["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"],
            },
            Case {
                source: "spec 2.3.2: the protocol must match the port's",
                name: "_dns._tcp.kube-dns.kube-system.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.3.2: unnamed ports have no SRV",
                name: "_http._tcp.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 2308 2.2: an SRV name asked for A is NODATA",
                name: "_https._tcp.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: _tcp is an empty non-terminal, NODATA",
                name: "_tcp.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: _udp is an empty non-terminal, NODATA",
                name: "_udp.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "no SCTP port, so no _sctp",
                name: "_sctp.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.3: no endpoint names under a ClusterIP Service",
                name: "web-0.kubernetes.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.3.3",
                name: "1.0.96.10.in-addr.arpa.",
                qtype: RecordType::PTR,
                rcode: NOERROR,
                answers: &[
                    "1.0.96.10.in-addr.arpa. 5 IN PTR kubernetes.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.1: reverse names are case-insensitive too",
                name: "10.0.96.10.IN-ADDR.ARPA.",
                qtype: RecordType::PTR,
                rcode: NOERROR,
                answers: &[
                    "10.0.96.10.IN-ADDR.ARPA. 5 IN PTR kube-dns.kube-system.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 2308 2.2: a known reverse name asked for A is NODATA",
                name: "1.0.96.10.in-addr.arpa.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[REVERSE_SOA],
                additional: &[],
            },
        ],
    );
}

#[test]
fn spec_2_4_headless_service() {
    check(
        &zone(PodsMode::Disabled),
        &[
            Case {
                source: "spec 2.4.1: one A per ready endpoint",
                name: "db.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[
                    "db.default.svc.cluster.local. 5 IN A 10.244.1.5",
                    "db.default.svc.cluster.local. 5 IN A 10.244.2.8",
                    "db.default.svc.cluster.local. 5 IN A 10.244.3.3",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.4.1: no ready endpoints is NXDOMAIN",
                name: "cold.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.4.1 + RFC 8020: nothing below a Service without ready endpoints",
                name: "cold-0.cold.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.4.1: hostname A",
                name: "db-0.db.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.5"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.1 hostname: dashed address for an endpoint without one (CoreDNS)",
                name: "10-244-3-3.db.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["10-244-3-3.db.default.svc.cluster.local. 5 IN A 10.244.3.3"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.4.1: not-ready endpoints have no hostname record",
                name: "db-3.db.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 2308 2.2: hostname AAAA is NODATA",
                name: "db-1.db.default.svc.cluster.local.",
                qtype: RecordType::AAAA,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.4.2: one SRV per ready endpoint, targets' A in additional",
                name: "_postgres._tcp.db.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[
                    "_postgres._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 5432 db-0.db.default.svc.cluster.local.",
                    "_postgres._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 5432 db-1.db.default.svc.cluster.local.",
                    "_postgres._tcp.db.default.svc.cluster.local. 5 IN SRV 0 33 5432 10-244-3-3.db.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[
                    "db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.5",
                    "db-1.db.default.svc.cluster.local. 5 IN A 10.244.2.8",
                    "10-244-3-3.db.default.svc.cluster.local. 5 IN A 10.244.3.3",
                ],
            },
            Case {
                source: "RFC 8020: _tcp under a headless Service is an empty non-terminal",
                name: "_tcp.db.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.4.2: no such port",
                name: "_mysql._tcp.db.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "spec 2.4.3",
                name: "5.1.244.10.in-addr.arpa.",
                qtype: RecordType::PTR,
                rcode: NOERROR,
                answers: &["5.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.default.svc.cluster.local."],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.4.3 with the dashed hostname (CoreDNS)",
                name: "3.3.244.10.in-addr.arpa.",
                qtype: RecordType::PTR,
                rcode: NOERROR,
                answers: &[
                    "3.3.244.10.in-addr.arpa. 5 IN PTR 10-244-3-3.db.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.4.3: only ready endpoints; an unknown address is forwarded",
                name: "4.4.244.10.in-addr.arpa.",
                qtype: RecordType::PTR,
                rcode: FORWARD,
                answers: &[],
                authority: &[],
                additional: &[],
            },
        ],
    );
}

#[test]
fn spec_2_5_external_name() {
    check(
        &zone(PodsMode::Disabled),
        &[
            Case {
                source: "spec 2.5: CNAME, not chased out of the zone",
                name: "search.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["search.default.svc.cluster.local. 5 IN CNAME www.example.com."],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.5: the CNAME answers AAAA too",
                name: "search.default.svc.cluster.local.",
                qtype: RecordType::AAAA,
                rcode: NOERROR,
                answers: &["search.default.svc.cluster.local. 5 IN CNAME www.example.com."],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.5: CNAME asked for",
                name: "search.default.svc.cluster.local.",
                qtype: RecordType::CNAME,
                rcode: NOERROR,
                answers: &["search.default.svc.cluster.local. 5 IN CNAME www.example.com."],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 1034 4.3.2: a CNAME into the zone is followed",
                name: "alias.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[
                    "alias.default.svc.cluster.local. 5 IN CNAME kubernetes.default.svc.cluster.local.",
                    "kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 6604: the RCODE is the chain's last name's",
                name: "dangling.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[
                    "dangling.default.svc.cluster.local. 5 IN CNAME nothere.default.svc.cluster.local.",
                ],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 1034 3.6.2: a CNAME loop stops where it repeats",
                name: "loop-a.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[
                    "loop-a.default.svc.cluster.local. 5 IN CNAME loop-b.default.svc.cluster.local.",
                    "loop-b.default.svc.cluster.local. 5 IN CNAME loop-a.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "twill: nothing below an ExternalName Service",
                name: "_https._tcp.search.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
        ],
    );
}

#[test]
fn spec_2_6_pod_records_verified() {
    check(
        &zone(PodsMode::Verified),
        &[
            Case {
                source: "spec 2.6, pods verified: a Pod with that address in that namespace",
                name: "10-244-1-9.default.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["10-244-1-9.default.pod.cluster.local. 5 IN A 10.244.1.9"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "pods verified: no such Pod",
                name: "10-244-1-10.default.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "pods verified: the Pod is in another namespace",
                name: "10-244-1-9.kube-system.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 2308 2.2: pod AAAA is NODATA",
                name: "10-244-1-9.default.pod.cluster.local.",
                qtype: RecordType::AAAA,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: pod.<zone> is an empty non-terminal",
                name: "pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: <ns>.pod.<zone> of a known namespace",
                name: "quiet.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "twill: <ns>.pod.<zone> of an unknown namespace",
                name: "nosuch.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "pod names are canonical dashed IPv4 only",
                name: "010-244-1-9.default.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "twill: pod PTR records are not served (CoreDNS default)",
                name: "9.1.244.10.in-addr.arpa.",
                qtype: RecordType::PTR,
                rcode: FORWARD,
                answers: &[],
                authority: &[],
                additional: &[],
            },
        ],
    );
}

#[test]
fn spec_2_6_pod_records_insecure() {
    check(
        &zone(PodsMode::Insecure),
        &[
            Case {
                source: "spec 2.6, pods insecure: any well-formed name, no Pod needed",
                name: "1-2-3-4.anywhere.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["1-2-3-4.anywhere.pod.cluster.local. 5 IN A 1.2.3.4"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.1: case-insensitive",
                name: "10-244-1-9.DEFAULT.POD.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["10-244-1-9.DEFAULT.POD.cluster.local. 5 IN A 10.244.1.9"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "pods insecure: not an address",
                name: "1-2-3.anywhere.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "pods insecure: octet out of range",
                name: "1-2-3-256.anywhere.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: any <ns>.pod.<zone> has names below it",
                name: "anywhere.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
        ],
    );
}

#[test]
fn spec_2_6_pod_records_disabled() {
    check(
        &zone(PodsMode::Disabled),
        &[
            Case {
                source: "pods disabled (CoreDNS default): NXDOMAIN",
                name: "10-244-1-9.default.pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "pods disabled: nothing under pod.<zone>",
                name: "pod.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
        ],
    );
}

#[test]
fn zone_apex_and_structure() {
    check(
        &zone(PodsMode::Disabled),
        &[
            Case {
                source: "RFC 1035: SOA at the apex, authoritative",
                name: "cluster.local.",
                qtype: RecordType::SOA,
                rcode: NOERROR,
                answers: &[SOA],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 1035: NS at the apex, with the server's address",
                name: "Cluster.Local.",
                qtype: RecordType::NS,
                rcode: NOERROR,
                answers: &["Cluster.Local. 5 IN NS ns.dns.cluster.local."],
                authority: &[],
                additional: &["ns.dns.cluster.local. 5 IN A 10.96.0.10"],
            },
            Case {
                source: "RFC 2308 2.2: apex A is NODATA",
                name: "cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "the NS target's address",
                name: "ns.dns.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &["ns.dns.cluster.local. 5 IN A 10.96.0.10"],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "RFC 8020: dns.<zone> is an empty non-terminal",
                name: "dns.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: svc.<zone> is an empty non-terminal",
                name: "svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 8020: <ns>.svc.<zone> is an empty non-terminal",
                name: "default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "twill: a known namespace without Services is NODATA",
                name: "quiet.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "twill (as CoreDNS): an unknown namespace is NXDOMAIN",
                name: "nosuch.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 2308 3: no such Service, NXDOMAIN with the zone SOA",
                name: "nosuch.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "RFC 2308 3: any other name in the zone",
                name: "www.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "twill: wildcards are not expanded (CoreDNS's * and any are an extension)",
                name: "*.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
            Case {
                source: "too deep under a Service",
                name: "a._postgres._tcp.db.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NXDOMAIN,
                answers: &[],
                authority: &[SOA],
                additional: &[],
            },
        ],
    );
}

#[test]
fn names_that_are_not_ours_are_forwarded() {
    let forward = |name| Case {
        source: "not in the zone, not a known reverse name",
        name,
        qtype: RecordType::A,
        rcode: FORWARD,
        answers: &[],
        authority: &[],
        additional: &[],
    };
    check(
        &zone(PodsMode::Insecure),
        &[
            forward("www.example.com."),
            forward("local."),
            forward("."),
            forward("cluster.local.example.com."),
            forward("xcluster.local."),
            forward("1.1.168.192.in-addr.arpa."),
            forward("96.10.in-addr.arpa."),
            forward("in-addr.arpa."),
            forward("01.0.96.10.in-addr.arpa."),
            forward("1.0.96.10.in-addr.arpa.example."),
            forward(
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            ),
        ],
    );
}

#[test]
fn spec_2_4_endpoints_shared_and_repeated() {
    use common::{endpoint, port, service};
    use twill_dns::{ClusterSnapshot, Protocol, ServiceKind, Zone, ZoneConfig};

    let http = [port("http", Protocol::Tcp, 80)];
    let mut a = service("default", "a", ServiceKind::Headless);
    a.endpoints = vec![
        // Two addresses behind one hostname, and one address listed twice (two slices).
        endpoint([10, 0, 0, 1], Some("shared"), true, &http),
        endpoint([10, 0, 0, 2], Some("shared"), true, &http),
        endpoint([10, 0, 0, 1], Some("shared"), true, &http),
    ];
    let mut b = service("default", "b", ServiceKind::Headless);
    b.endpoints = vec![endpoint([10, 0, 0, 1], None, true, &[])];
    let snapshot = ClusterSnapshot {
        services: vec![a, b],
        serial: 42,
        ..ClusterSnapshot::default()
    };
    let zone = Zone::build(&ZoneConfig::default(), &snapshot).unwrap();
    check(
        &zone,
        &[
            Case {
                source: "spec 2.4.1: an address once, however often listed",
                name: "a.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[
                    "a.default.svc.cluster.local. 5 IN A 10.0.0.1",
                    "a.default.svc.cluster.local. 5 IN A 10.0.0.2",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.4.1: one A per address of a hostname",
                name: "shared.a.default.svc.cluster.local.",
                qtype: RecordType::A,
                rcode: NOERROR,
                answers: &[
                    "shared.a.default.svc.cluster.local. 5 IN A 10.0.0.1",
                    "shared.a.default.svc.cluster.local. 5 IN A 10.0.0.2",
                ],
                authority: &[],
                additional: &[],
            },
            Case {
                source: "spec 2.4.2 + RFC 2181 5: identical SRV records are one; the target's A records once",
                name: "_http._tcp.a.default.svc.cluster.local.",
                qtype: RecordType::SRV,
                rcode: NOERROR,
                answers: &[
                    "_http._tcp.a.default.svc.cluster.local. 5 IN SRV 0 100 80 shared.a.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[
                    "shared.a.default.svc.cluster.local. 5 IN A 10.0.0.1",
                    "shared.a.default.svc.cluster.local. 5 IN A 10.0.0.2",
                ],
            },
            Case {
                source: "spec 2.4.3: an address behind two Services has two PTR records",
                name: "1.0.0.10.in-addr.arpa.",
                qtype: RecordType::PTR,
                rcode: NOERROR,
                answers: &[
                    "1.0.0.10.in-addr.arpa. 5 IN PTR shared.a.default.svc.cluster.local.",
                    "1.0.0.10.in-addr.arpa. 5 IN PTR 10-0-0-1.b.default.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[],
            },
        ],
    );
}
