//! Flow records as `twilld` serves them ([`crate::Request::Flows`]) and writes them to its
//! flow file: the datapath's records (`twill_abi::flow`) with names from the daemon's
//! state. The JSON shape is stable: every field is always present (`null` when not
//! known), fields are only ever added, and `docs/observability.md` documents each one.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use serde::{Deserialize, Serialize};

/// One flow record, named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowEvent {
    /// The record's number on its node: 1 for the first one the daemon read after it
    /// started, one more for each later one.
    pub seq: u64,
    /// When the program wrote it: RFC 3339, UTC, milliseconds (`2026-12-01T10:59:55.123Z`).
    pub time: String,
    /// The node whose program wrote it.
    pub node: String,
    /// `new` (a new connection), `drop`, `refused` (a Service without backends),
    /// `packet` (any other packet; per-packet mode only) or `dns` (a query the node's
    /// twill-dnsd answered; `dns` says what it asked and got).
    pub kind: String,
    /// `forwarded`, `dropped` or `refused` (also a DNS query FQDNPolicy refused the name of).
    pub verdict: String,
    /// What the program did with it: the reason name of `netctl bpf metrics`
    /// (`service-translated`, `drop-policy-denied`, ...); for `dns` records, what answered
    /// (`dns-zone`, `dns-cache`, `dns-upstream`, `dns-fqdn-denied`, `dns-not-ready`).
    pub reason: String,
    /// `from-pod`, `to-pod`, `from-world` or `from-overlay`: which way it travelled;
    /// `from-host` for a DNS query that did not come from a pod.
    pub direction: String,
    /// The program that saw it (`twill_from_pod`, ...; `twill-dnsd` for `dns` records).
    pub program: String,
    /// `TCP`, `UDP`, `ICMP`, or `proto-N`; `null` when the packet could not be read.
    pub protocol: Option<String>,
    /// Its source as it arrived.
    pub source: FlowEndpoint,
    /// Its destination as it arrived: a Service frontend when `service` is set.
    pub destination: FlowEndpoint,
    /// The Service whose frontend `destination` is.
    pub service: Option<FlowService>,
    /// Where the Service translation sent it.
    pub backend: Option<FlowEndpoint>,
    /// Whether the packet answers another: `true`, `false`, or `null` (not known).
    pub reply: Option<bool>,
    /// NetworkPolicy's verdicts on it.
    pub policy: FlowPolicy,
    /// Records of the same flow and reason left out since the last one (drops and
    /// refusals are recorded at most once a second per flow).
    pub repeats: u32,
    /// The packet's length in bytes.
    pub bytes: u32,
    /// The interface the program runs on.
    pub interface: String,
    /// `dns` records: the query and its answer.
    pub dns: Option<FlowDns>,
}

/// A DNS query that the node's twill-dnsd answered, and its answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowDns {
    /// The name asked, lower case, with the final dot (`web.default.svc.cluster.local.`).
    pub query: String,
    /// The type asked (`A`, `AAAA`, `SRV`, `PTR`, ...).
    pub qtype: String,
    /// The answer's response code (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...).
    pub rcode: String,
    /// What answered: `zone` (the cluster zone), `cache`, `upstream` (also a stale answer
    /// or SERVFAIL when every upstream failed), `fqdn-denied` (NXDOMAIN: no FQDNPolicy rule
    /// of the pod names it) or `not-ready` (SERVFAIL: the zone is not read yet).
    pub answered_by: String,
    /// The addresses of the answer's A and AAAA records.
    pub addresses: Vec<String>,
    /// The targets of the answer's CNAME records.
    pub cnames: Vec<String>,
    /// The lowest TTL in the answer section, seconds.
    pub ttl: Option<u32>,
    /// From the query's arrival to its answer, microseconds.
    pub latency_us: u64,
    /// The answer was truncated (TC): the client should ask again over TCP.
    pub truncated: bool,
}

/// A DNS query record as twill-dnsd hands it to its node's twilld
/// ([`crate::Request::DnsQueries`]), which names its client and keeps it with the flow
/// records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsQueryRecord {
    /// When the answer was sent, Unix milliseconds.
    pub unix_ms: u64,
    pub client: Option<SocketAddrV4>,
    /// The address the server received it on.
    pub server: Option<SocketAddrV4>,
    /// `UDP` or `TCP`.
    pub transport: String,
    /// The same query from the same client with the same answer, folded into this record
    /// (at most one record a second for each).
    pub repeats: u32,
    /// `fqdn-denied`: every FQDNPolicy that selects the client.
    pub fqdn_policies: Vec<String>,
    pub dns: FlowDns,
}

/// One end of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowEndpoint {
    /// `null` when the packet's headers could not be read (a malformed packet).
    pub ip: Option<Ipv4Addr>,
    /// TCP and UDP only.
    pub port: Option<u16>,
    /// The pod's name, when the address (or, for an unreadable packet, the pod interface)
    /// is a pod's.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The pod's labels (empty when not a pod, or its Pod object is not in the store).
    pub labels: BTreeMap<String, String>,
    /// The pod's node, or the node whose address this is.
    pub node: Option<String>,
}

/// A Service frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowService {
    pub namespace: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
}

/// NetworkPolicy's verdicts: the source pod's egress, the destination pod's ingress;
/// `null` for a direction the program did not check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowPolicy {
    pub egress: Option<PolicySide>,
    pub ingress: Option<PolicySide>,
}

/// One direction's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicySide {
    /// `open` (no policy isolates the pod), `allowed` (a rule allowed it), `denied`,
    /// `audit` (only audit policies isolate it and no rule allows it: passed, would be
    /// denied), `exempt` (to or from its own node, or itself), `known` (a flow allowed
    /// before, under the pod's current policies) or `fqdn-denied` (FQDNPolicy).
    pub verdict: String,
    /// `allowed`: the policy of the rule that allowed it; `denied` and `audit`: the first
    /// of `isolated_by`.
    pub policy: Option<String>,
    /// `allowed`: the rule's index in the policy's `ingress` or `egress` list.
    pub rule: Option<u32>,
    /// `denied` and `audit`: every policy isolating the pod in this direction.
    pub isolated_by: Vec<String>,
}

/// The node's flow records in short, for STATUS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowStatus {
    /// `connections`, `packets` or `off`.
    pub mode: String,
    /// Records kept in memory now, and at most.
    pub kept: u64,
    pub keep: u64,
    /// The newest record's `seq` (0: none yet).
    pub newest: u64,
    /// Records read from the datapath since the daemon started.
    pub read: u64,
    /// Records the datapath's ring had no room for, since the ring was created (it is
    /// pinned, so this survives daemon restarts).
    pub lost: u64,
    /// DNS query records taken from twill-dnsd since the daemon started.
    pub dns_taken: u64,
    /// DNS query records twill-dnsd could not hand over, as it last said (since it
    /// started).
    pub dns_lost: u64,
    /// The JSON lines file, when one is written.
    pub file: Option<String>,
    /// What is wrong (the ring could not be read, the file not written).
    pub problems: Vec<String>,
}

/// A Unix time in milliseconds as RFC 3339 UTC with milliseconds: fixed width, so such
/// strings sort as the times do.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// The date `days` after 1970-01-01 (proleptic Gregorian), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1796122795 +%FT%T`: 2026-12-01T10:59:55.
        assert_eq!(rfc3339_ms(1_796_122_795_123), "2026-12-01T10:59:55.123Z");
        // A leap day, and the last millisecond of a year.
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_704_067_199_999), "2023-12-31T23:59:59.999Z");
    }

    #[test]
    fn every_field_is_in_the_json_even_when_unknown() {
        let json = serde_json::to_value(FlowEvent::default()).unwrap();
        for field in [
            "seq",
            "time",
            "node",
            "kind",
            "verdict",
            "reason",
            "direction",
            "program",
            "protocol",
            "source",
            "destination",
            "service",
            "backend",
            "reply",
            "policy",
            "repeats",
            "bytes",
            "interface",
            "dns",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert!(json["reply"].is_null() && json["service"].is_null());
        assert_eq!(json["source"]["labels"], serde_json::json!({}));
        assert!(json["policy"]["egress"].is_null());
        // Older or newer shapes read back: missing fields take defaults.
        let back: FlowEvent = serde_json::from_str(r#"{"seq":3,"later":1}"#).unwrap();
        assert_eq!(back.seq, 3);
    }
}
