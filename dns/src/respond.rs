//! Queries in, responses out: message checks, record sets, negative answers, EDNS and
//! truncation.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::zone::{EntryKind, Found, Node, ServiceEntry, SrvTargets, Zone};

/// The schema version served at `dns-version.<zone>` (spec 2.2).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// SOA timers (seconds); they only matter to secondaries, which this zone has none of. The
/// values are CoreDNS's.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// The longest in-zone CNAME chain followed (ExternalName Services pointing at each other).
const MAX_CNAME_HOPS: usize = 8;

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send this response: an answer from the zone, or an error (FORMERR, NOTIMP, REFUSED,
    /// BADVERS) about the query itself.
    Reply(Box<Message>),
    /// The name is not the zone's: the server forwards the query upstream.
    Forward,
    /// Send nothing (the message is itself a response, or has no readable header).
    Drop,
}

/// The same as [`Outcome`], for [`Zone::answer_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireOutcome {
    /// The encoded response, already within the transport's size limit.
    Reply(Vec<u8>),
    Forward,
    Drop,
}

/// How the query arrived; it sets the size limit of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// 512 bytes, or the client's EDNS payload size capped at the zone's (RFC 6891 6.2.5).
    Udp,
    /// 65535 bytes, the most a message can be (RFC 1035 4.2.2).
    Tcp,
}

/// Why a response could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode dns response: {0}")]
pub struct EncodeError(#[from] hickory_proto::ProtoError);

impl Zone {
    /// Answers one query. Errors in the query become error responses, never panics.
    ///
    /// - A response (QR=1) is dropped.
    /// - An opcode other than QUERY: NOTIMP (RFC 1035 4.1.1; RFC 2136 for UPDATE).
    /// - Not exactly one question: FORMERR (RFC 9619).
    /// - EDNS version other than 0: BADVERS (RFC 6891 6.1.3).
    /// - A name that is not the zone's, in any class: [`Outcome::Forward`].
    /// - A class other than IN for one of the zone's names: REFUSED; so are zone transfers.
    pub fn answer(&self, query: &Message) -> Outcome {
        if query.metadata.message_type == MessageType::Response {
            return Outcome::Drop;
        }
        let mut response = Message::new(0, MessageType::Response, query.metadata.op_code);
        response.metadata = Metadata::response_from_request(&query.metadata);
        response.metadata.recursion_available = self.config.recursion_available;
        if let Some(edns) = &query.edns {
            response.set_edns(self.response_edns(edns));
        }
        let reply = |mut response: Message, code| {
            response.metadata.response_code = code;
            Outcome::Reply(Box::new(response))
        };
        if query.metadata.op_code != OpCode::Query {
            response.add_queries(query.queries.iter().cloned());
            return reply(response, ResponseCode::NotImp);
        }
        let [question] = query.queries.as_slice() else {
            return reply(response, ResponseCode::FormErr);
        };
        response.add_query(question.clone());
        if query.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return reply(response, ResponseCode::BADVERS);
        }
        if question.query_type() == RecordType::OPT {
            return reply(response, ResponseCode::FormErr);
        }
        let found = self.find(question.name());
        if let Found::NotOurs = found {
            return Outcome::Forward;
        }
        if question.query_class() != DNSClass::IN
            || matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return reply(response, ResponseCode::Refused);
        }
        response.metadata.authoritative = true;
        match self.resolve(question, found, &mut response) {
            Some(code) => reply(response, code),
            // A name the zone indexes did not fit in a DNS name after all; the build rules
            // this out, so this is a bug, answered the way a resolver copes with best.
            None => {
                response.answers.clear();
                response.authorities.clear();
                response.additionals.clear();
                response.metadata.authoritative = false;
                reply(response, ResponseCode::ServFail)
            }
        }
    }

    /// [`Zone::answer`] on the wire. A query that cannot be parsed but has a readable header
    /// gets FORMERR (RFC 1035 4.1.1); the response is truncated to fit `transport`
    /// ([`encode_within`]).
    pub fn answer_bytes(&self, query: &[u8], transport: Transport) -> WireOutcome {
        let message = match Message::from_vec(query) {
            Ok(message) => message,
            Err(_) => return format_error(query),
        };
        match self.answer(&message) {
            Outcome::Reply(response) => {
                let limit = match transport {
                    Transport::Udp => self.udp_limit(&message),
                    Transport::Tcp => usize::from(u16::MAX),
                };
                match encode_within(&response, limit) {
                    Ok(bytes) => WireOutcome::Reply(bytes),
                    Err(_) => {
                        let mut failure = Message::new(0, MessageType::Response, OpCode::Query);
                        failure.metadata = response.metadata;
                        failure.metadata.authoritative = false;
                        failure.metadata.response_code = ResponseCode::ServFail;
                        failure.queries = response.queries.clone();
                        failure.edns = response.edns.clone();
                        match failure.to_vec() {
                            Ok(bytes) => WireOutcome::Reply(bytes),
                            Err(_) => WireOutcome::Drop,
                        }
                    }
                }
            }
            Outcome::Forward => WireOutcome::Forward,
            Outcome::Drop => WireOutcome::Drop,
        }
    }

    /// The most bytes a UDP response to `query` may have: 512 without EDNS, else the client's
    /// payload size, at least 512 and at most the zone's `edns_udp_payload`.
    pub fn udp_limit(&self, query: &Message) -> usize {
        match &query.edns {
            None => 512,
            Some(edns) => usize::from(
                edns.max_payload()
                    .clamp(512, self.config.edns_udp_payload.max(512)),
            ),
        }
    }

    fn response_edns(&self, query: &Edns) -> Edns {
        let mut edns = Edns::new();
        edns.set_max_payload(self.config.edns_udp_payload.max(512));
        edns.set_version(0);
        // RFC 3225 3: the DO bit of the query is copied into the response.
        edns.set_dnssec_ok(query.flags().dnssec_ok);
        edns
    }

    /// Fills the answer, authority and additional sections, following in-zone CNAMEs, and
    /// returns the RCODE; `None` if a name could not be made.
    fn resolve(
        &self,
        question: &Query,
        found: Found<'_>,
        response: &mut Message,
    ) -> Option<ResponseCode> {
        let qtype = question.query_type();
        let mut owner = question.name().clone();
        let mut found = found;
        let mut visited: Vec<Name> = Vec::new();
        loop {
            let node = match found {
                // After a CNAME out of the zone: the client's resolver follows it.
                Found::NotOurs => return Some(ResponseCode::NoError),
                Found::NxDomain => {
                    response.add_authority(self.soa(false));
                    return Some(ResponseCode::NXDomain);
                }
                Found::Node(node) => node,
            };
            let reverse = matches!(node, Node::Reverse(_));
            let records = self.records(&node, &owner, qtype)?;
            let answered = !records.answers.is_empty();
            response.add_answers(records.answers);
            response.add_additionals(records.additionals);
            match records.alias {
                Some(target) if visited.len() < MAX_CNAME_HOPS && !visited.contains(&target) => {
                    visited.push(owner);
                    found = self.find(&target);
                    owner = target;
                }
                Some(_) => return Some(ResponseCode::NoError),
                None => {
                    if !answered {
                        // NODATA (RFC 2308 2.2): the name exists, no record of that type.
                        response.add_authority(self.soa(reverse));
                    }
                    return Some(ResponseCode::NoError);
                }
            }
        }
    }

    /// The records at `node` that answer `qtype`, owned by `owner` as the client spelled it.
    fn records(&self, node: &Node<'_>, owner: &Name, qtype: RecordType) -> Option<NodeRecords> {
        let ttl = self.config.ttl;
        let wants = |rtype: RecordType| qtype == rtype || qtype == RecordType::ANY;
        let record = |data: RData| Record::from_rdata(owner.clone(), ttl, data);
        let mut out = NodeRecords::default();
        match node {
            Node::Apex => {
                if wants(RecordType::SOA) {
                    let mut soa = self.soa(false);
                    soa.name = owner.clone();
                    out.answers.push(soa);
                }
                if wants(RecordType::NS) {
                    let nameserver = self.name(&["ns", "dns"])?;
                    out.answers.push(record(RData::NS(NS(nameserver.clone()))));
                    if let Some(ip) = self.config.nameserver_ip {
                        out.additionals
                            .push(Record::from_rdata(nameserver, ttl, RData::A(A(ip))));
                    }
                }
            }
            Node::SchemaVersion => {
                if wants(RecordType::TXT) {
                    out.answers.push(record(RData::TXT(TXT::new(vec![
                        SCHEMA_VERSION.to_string(),
                    ]))));
                }
            }
            Node::Nameserver => {
                if let (true, Some(ip)) = (wants(RecordType::A), self.config.nameserver_ip) {
                    out.answers.push(record(RData::A(A(ip))));
                }
            }
            Node::EmptyNonTerminal => {}
            Node::Service(entry) => match &entry.kind {
                EntryKind::ClusterIp { ip, .. } => {
                    if wants(RecordType::A) {
                        out.answers.push(record(RData::A(A(*ip))));
                    }
                }
                EntryKind::Headless(headless) => {
                    if wants(RecordType::A) {
                        out.answers
                            .extend(headless.addresses.iter().map(|ip| record(RData::A(A(*ip)))));
                    }
                }
                EntryKind::ExternalName(target) => {
                    // RFC 1034 3.6.2: the CNAME answers any type; the chain goes on unless the
                    // CNAME itself (or everything) was asked for.
                    out.answers
                        .push(record(RData::CNAME(CNAME(target.clone()))));
                    if !wants(RecordType::CNAME) {
                        out.alias = Some(target.clone());
                    }
                }
            },
            Node::EndpointHost(addresses) => {
                if wants(RecordType::A) {
                    out.answers
                        .extend(addresses.iter().map(|ip| record(RData::A(A(*ip)))));
                }
            }
            Node::Srv(entry, targets) => {
                if wants(RecordType::SRV) {
                    self.srv_records(entry, targets, owner, &mut out)?;
                }
            }
            Node::Pod(ip) => {
                if wants(RecordType::A) {
                    out.answers.push(record(RData::A(A(*ip))));
                }
            }
            Node::Reverse(targets) => {
                if wants(RecordType::PTR) {
                    for target in targets.iter() {
                        let entry = &self.services[target.service];
                        let name = match &target.host {
                            Some(host) => self.host_name(entry, host)?,
                            None => self.service_name(entry)?,
                        };
                        out.answers.push(record(RData::PTR(PTR(name))));
                    }
                }
            }
        }
        Some(out)
    }

    /// SRV records (spec 2.3.2, 2.4.2) and the A records of their targets (additional section).
    /// Priority 0 for all; weights split 100 evenly, as CoreDNS does (the spec leaves both open).
    fn srv_records(
        &self,
        entry: &ServiceEntry,
        targets: &SrvTargets<'_>,
        owner: &Name,
        out: &mut NodeRecords,
    ) -> Option<()> {
        let ttl = self.config.ttl;
        let srv = |weight: u16, port: u16, target: Name| {
            Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(0, weight, port, target)),
            )
        };
        let a = |name: &Name, ip: Ipv4Addr| Record::from_rdata(name.clone(), ttl, RData::A(A(ip)));
        match (targets, &entry.kind) {
            (SrvTargets::Service(ports), EntryKind::ClusterIp { ip, .. }) => {
                let target = self.service_name(entry)?;
                let weight = srv_weight(ports.len());
                for port in ports {
                    out.answers.push(srv(weight, *port, target.clone()));
                }
                out.additionals.push(a(&target, *ip));
            }
            (SrvTargets::Endpoints(port), EntryKind::Headless(headless)) => {
                let weight = srv_weight(port.targets.len());
                let mut glued: Vec<&str> = Vec::new();
                for (host, number) in &port.targets {
                    let target = self.host_name(entry, host)?;
                    out.answers.push(srv(weight, *number, target.clone()));
                    if !glued.contains(&host.as_str()) {
                        glued.push(host);
                        for ip in headless.hosts.get(host).into_iter().flatten() {
                            out.additionals.push(a(&target, *ip));
                        }
                    }
                }
            }
            _ => {}
        }
        Some(())
    }

    /// The SOA of the cluster zone, or for a reverse name, of `in-addr.arpa.` (as CoreDNS
    /// does when it serves reverse names). Its TTL and MINIMUM are the zone TTL, so negative
    /// answers are cached that long (RFC 2308 5).
    fn soa(&self, reverse: bool) -> Record {
        let ttl = self.config.ttl;
        let owner = if reverse {
            Name::from_labels([b"in-addr".as_slice(), b"arpa".as_slice()])
                .expect("in-addr.arpa is a valid name")
        } else {
            self.origin.clone()
        };
        let mname = self
            .name(&["ns", "dns"])
            .unwrap_or_else(|| self.origin.clone());
        let rname = self
            .name(&["hostmaster"])
            .unwrap_or_else(|| self.origin.clone());
        let soa = SOA::new(
            mname,
            rname,
            self.serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            ttl,
        );
        Record::from_rdata(owner, ttl, RData::SOA(soa))
    }
}

#[derive(Default)]
struct NodeRecords {
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// Set when the answer is a CNAME to follow.
    alias: Option<Name>,
}

/// Weights that add up to about 100 over `count` records: floor(100 / count).
fn srv_weight(count: usize) -> u16 {
    u16::try_from(100 / count.max(1)).unwrap_or(0)
}

/// FORMERR for a query that does not parse, when its 12-byte header can be read: same ID and
/// opcode, RD copied, QR set, no sections. Anything shorter, or a response, gets nothing.
fn format_error(query: &[u8]) -> WireOutcome {
    let Some(header) = query.get(..12) else {
        return WireOutcome::Drop;
    };
    if header[2] & 0x80 != 0 {
        return WireOutcome::Drop;
    }
    let opcode_and_rd = header[2] & 0x79;
    let response = vec![
        header[0],
        header[1],
        0x80 | opcode_and_rd,
        ResponseCode::FormErr.low(),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    WireOutcome::Reply(response)
}

/// Encodes `response` in at most `max_size` bytes (512 at least is assumed).
///
/// Following RFC 2181 9, the additional section goes first and does not set TC: it only helps.
/// If the answer still does not fit, TC is set, the authority section is dropped and the answer
/// keeps as many records as fit (the client retries over TCP). The question and the OPT record
/// are always kept.
pub fn encode_within(response: &Message, max_size: usize) -> Result<Vec<u8>, EncodeError> {
    let full = response.to_vec()?;
    if full.len() <= max_size {
        return Ok(full);
    }
    let mut message = response.clone();
    message.additionals.clear();
    let bytes = message.to_vec()?;
    if bytes.len() <= max_size {
        return Ok(bytes);
    }
    message.metadata.truncation = true;
    message.authorities.clear();
    let bytes = message.to_vec()?;
    if bytes.len() <= max_size {
        return Ok(bytes);
    }
    let answers = std::mem::take(&mut message.answers);
    let encode_with = |message: &mut Message, count: usize| -> Result<Vec<u8>, EncodeError> {
        message.answers = answers[..count].to_vec();
        Ok(message.to_vec()?)
    };
    // The size grows with the number of answers kept: binary search the largest that fits.
    let (mut fits, mut too_many) = (0, answers.len());
    let mut best = encode_with(&mut message, 0)?;
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        let bytes = encode_with(&mut message, middle)?;
        if bytes.len() <= max_size {
            fits = middle;
            best = bytes;
        } else {
            too_many = middle;
        }
    }
    Ok(best)
}
