//! The local API between `twilld` and its clients on the same node: the CNI binary and
//! `netctl`. One request and one response per connection, each a single line of JSON, over
//! a unix socket that only root can open.
//!
//! Every message carries [`API_VERSION`]; a daemon refuses a version it does not speak
//! with an error that names both, so a CNI binary and a daemon of different releases fail
//! loudly instead of misreading each other.
//!
//! Architecture invariant: types and framing only; the client is blocking std I/O so the
//! CNI binary, which runs once per pod, starts without an async runtime.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod flow;
pub mod remote;

use std::{
    io::{self, BufRead as _, BufReader},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
pub use twill_ipam::AttachmentKey;

/// Version of the messages below. Bump on any incompatible change.
pub const API_VERSION: u32 = 1;
/// Where `twilld` listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/twill/twilld.sock";
/// The pod's default gateway: a link-local address the host side answers for, so no
/// per-node bridge or in-subnet gateway is needed.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Host-side interface names start with this.
pub const HOST_IFNAME_PREFIX: &str = "tw";

/// The host-side veth name of an attachment: deterministic, so DEL, CHECK and GC find it
/// again from the container id and interface name alone, and 14 characters (the kernel
/// allows 15).
pub fn host_ifname(key: &AttachmentKey) -> String {
    format!("{HOST_IFNAME_PREFIX}{}", attachment_hex(key))
}

fn attachment_hex(key: &AttachmentKey) -> String {
    let digest = Sha256::new()
        .chain_update(key.container_id.as_bytes())
        .chain_update(b"/")
        .chain_update(key.ifname.as_bytes())
        .finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Names of a deleted pod's pair while `twilld` removes it in the background: host end
/// `tx` + the attachment's 12 hex digits, the former pod interface `ty` + the same.
pub const RETIRED_HOST_PREFIX: &str = "tx";
pub const RETIRED_PEER_PREFIX: &str = "ty";

/// The names an attachment's pair gets when DEL retires it: (host end, former pod end).
pub fn retired_ifnames(key: &AttachmentKey) -> (String, String) {
    let hex = attachment_hex(key);
    (
        format!("{RETIRED_HOST_PREFIX}{hex}"),
        format!("{RETIRED_PEER_PREFIX}{hex}"),
    )
}

/// Whether `name` is one of twill's interface names with `prefix`: the prefix and then
/// exactly 12 hex digits.
pub fn is_twill_ifname(name: &str, prefix: &str) -> bool {
    name.len() == prefix.len() + 12
        && name.starts_with(prefix)
        && name[prefix.len()..].chars().all(|c| c.is_ascii_hexdigit())
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// An address for a pod attachment (the same one again if it already has one).
    Allocate {
        #[serde(flatten)]
        key: AttachmentKey,
        /// `namespace/name` of the pod, from CNI_ARGS, when the runtime gives it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
    },
    /// The attachment's address, if it has one (CHECK).
    Lookup {
        #[serde(flatten)]
        key: AttachmentKey,
    },
    /// Frees the attachment's address. Freeing one that has none succeeds.
    Release {
        #[serde(flatten)]
        key: AttachmentKey,
        /// The caller moved the pod interface out of the pod and renamed the pair to
        /// [`retired_ifnames`]: the daemon removes it in the background.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retired: bool,
    },
    /// Frees every address whose attachment is not in `valid` (CNI GC).
    Gc { valid: Vec<AttachmentKey> },
    /// Whether the node can wire pods now (CNI STATUS).
    Status,
    /// Attach the pod programs (Service translation, counters) to a pod's host-side veth.
    /// Answered once they are on, or at once with `queue` (ADD): the daemon then attaches
    /// them in the background, in order, and a later call without `queue` waits for them.
    /// With `queue`, a pod a NetworkPolicy isolates is still attached before the answer
    /// (`Attached`), so it is filtered from its first packet.
    AttachPod {
        ifname: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        queue: bool,
        /// With `queue`: the caller has not configured the pod yet and asks again (with
        /// `queue`, without `defer`) once it has. A pod no policy isolates is then only
        /// recorded (`Admitted`), so the background attach, which holds RTNL through
        /// kernel grace periods, does not run during the caller's own netlink work.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        defer: bool,
        /// What the node's programs need to know of the pod: recorded at once, even when
        /// the attach is queued.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<PodInfo>,
    },
    /// What the node's NetworkPolicy maps hold and have counted, with names.
    Policy,
    /// The node's flow records numbered above `after`, at most `max` of them (the daemon
    /// caps it at [`MAX_FLOWS`]); when there are none yet, waits up to `wait_ms` (capped at
    /// [`MAX_FLOWS_WAIT_MS`]) for one. An `after` beyond the newest record means the
    /// daemon restarted since: its records are then sent from the oldest.
    Flows { after: u64, max: u32, wait_ms: u32 },
    /// DNS query records from the node's twill-dnsd, to be named and kept with the flow
    /// records (at most [`MAX_DNS_QUERIES`] a request). `lost`: records twill-dnsd could
    /// not hand over since it started.
    DnsQueries {
        queries: Vec<flow::DnsQueryRecord>,
        #[serde(default)]
        lost: u64,
    },
}

/// The most records one [`Request::DnsQueries`] carries.
pub const MAX_DNS_QUERIES: usize = 1000;

/// The most records one [`Request::Flows`] answer carries.
pub const MAX_FLOWS: u32 = 5000;
/// The longest a [`Request::Flows`] waits (well inside the daemon's 10 s per connection).
pub const MAX_FLOWS_WAIT_MS: u32 = 5000;

/// How full one of the node's BPF maps is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

impl MapFill {
    /// Entries as a share of capacity, 0.0..=1.0.
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 / self.capacity as f64
        }
    }
}

/// The node's NetworkPolicy state in short, for STATUS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Whether the daemon has read the store's policies yet (until then new pods are
    /// denied both ways).
    pub synced: bool,
    /// What is wrong now (a table that could not be written, a direction with too many
    /// rules); each such pod is denied in the direction concerned.
    pub problems: Vec<String>,
    /// Fill of the policy maps.
    pub maps: Vec<MapFill>,
}

/// One local pod's policy on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPodReport {
    pub ip: Ipv4Addr,
    /// `namespace/name`, when the node knows it.
    pub pod: Option<String>,
    /// The table its endpoint entry points at (0: none).
    pub table: u32,
    /// `open`, `enforce` or `audit`, ingress then egress.
    pub modes: [String; 2],
    /// The policies isolating it, ingress then egress (`namespace/name`).
    pub isolated_by: [Vec<String>; 2],
    /// Connection attempts denied (in audit mode: that would have been), ingress then
    /// egress, since the counter was given to the pod.
    pub denied: [u64; 2],
}

/// What one rule of one policy has allowed on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCount {
    /// `namespace/name`.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// The rule's index in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// Connections it allowed (audit: would have allowed), as the deciding rule.
    pub allowed: u64,
}

/// A node's NetworkPolicy state and counters, named ([`Request::Policy`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub node: String,
    pub status: PolicyStatus,
    pub pods: Vec<PolicyPodReport>,
    pub rules: Vec<RuleCount>,
}

/// What the node's programs need to know of a pod, told by ADD: which sockets are the
/// pod's (for `ClientIP` affinity at the socket hooks) and how to deliver to it straight
/// from the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub ip: Ipv4Addr,
    /// The cookie of the pod's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// The host end of the pod's veth: index and MAC, in the node's namespace.
    pub host_ifindex: u32,
    pub host_mac: String,
    /// The pod interface's MAC.
    pub pod_mac: String,
}

/// An attachment's address and how to wire it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    /// The node's pod subnet the address comes from.
    pub subnet: Ipv4Network,
    /// The pod's default gateway ([`POD_GATEWAY`]).
    pub gateway: Ipv4Addr,
    /// MTU for the pod's interface: the underlay MTU minus the overlay's overhead.
    pub mtu: u32,
}

/// The node's readiness, as STATUS reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// The node's pod subnet, once leased.
    pub subnet: Option<Ipv4Network>,
    /// Whether the daemon's last contact with etcd succeeded recently.
    pub etcd_reachable: bool,
    /// Addresses still free in the node's subnet.
    pub available_addresses: u32,
    /// Pods with an address on this node.
    #[serde(default)]
    pub pods: u32,
    /// Why the node cannot wire pods, when it cannot.
    pub not_ready: Option<String>,
    /// Trouble an operator must know about even while the node works (for example, the
    /// subnet this node had before is now held by another node).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The overlay as of its last pass: how many remote nodes it reaches, and what failed.
    #[serde(default)]
    pub overlay: OverlayStatus,
    /// Pod work the daemon does in the background, off the CNI calls' path.
    #[serde(default)]
    pub background: PodWorkStatus,
    /// NetworkPolicy: problems and map fill.
    #[serde(default)]
    pub policy: PolicyStatus,
    /// Flow records: kept, lost, problems.
    #[serde(default)]
    pub flows: flow::FlowStatus,
    /// The daemon's version (`twilld --version`).
    #[serde(default)]
    pub version: Option<String>,
    /// Milliseconds since etcd last answered the lease loop; `None` until it has.
    #[serde(default)]
    pub etcd_silent_ms: Option<u64>,
    /// The BGP speaker, in the BGP-routed mode (`network.overlay = "bgp"`); `None` in the
    /// VXLAN mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<Box<BgpStatus>>,
}

/// The node's BGP speaker: its sessions and the routes it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatus {
    pub as_number: u32,
    pub router_id: Option<Ipv4Addr>,
    /// The pod subnet this node announces, while it holds a lease.
    pub announced: Option<Ipv4Network>,
    pub peers: Vec<BgpPeerStatus>,
    /// Routes learned but not installed, with the reason (e.g. a subnet etcd does not
    /// assign to the announcing node).
    #[serde(default)]
    pub refused: Vec<String>,
    /// Kernel routes the speaker installed (protocol twill, via the underlay).
    #[serde(default)]
    pub routes: u32,
    /// Why the last route pass did not finish, when it did not (it is retried).
    #[serde(default)]
    pub problem: Option<String>,
}

/// One BGP session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeerStatus {
    /// Who is at the other end: a node (its name, from its node record) or a configured
    /// peer (`bgppeer/<name>`, the BGPPeer object).
    pub node: String,
    pub address: Ipv4Addr,
    pub as_number: u32,
    /// RFC 4271's state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// This side waits for the peer to connect (the node with the lower underlay address
    /// opens the connection).
    pub passive: bool,
    /// Seconds since the session became established; `None` while it is not.
    pub uptime_seconds: Option<u64>,
    pub prefixes_sent: u32,
    pub prefixes_received: u32,
    /// Of the received ones, those kept while the peer restarts (graceful restart).
    #[serde(default)]
    pub prefixes_stale: u32,
    pub last_error: Option<String>,
}

/// The node's background pod work: attaches queued by ADD, pairs queued by DEL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodWorkStatus {
    /// Pod interfaces whose programs are still being attached.
    pub attaching: u32,
    /// Deleted pods' veth pairs still to be removed.
    pub retiring: u32,
}

/// What the node's overlay holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    /// Remote nodes whose routes, neighbours and FDB entries are all in place.
    pub peers: u32,
    /// Why the last pass did not finish, when it did not (it is retried).
    pub problem: Option<String>,
}

/// Why a request failed, in terms a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The node has no subnet yet, or etcd is unreachable: retry later.
    NotReady,
    /// The node's pod subnet has no free address.
    Exhausted,
    /// The request was malformed or of another API version.
    BadRequest,
    /// Something failed inside the daemon (a disk write, say).
    Internal,
    /// The flow API over TCP was given a wrong token ([`remote`]).
    Unauthorized,
}

// `Status` is by far the largest variant; a response is made once per request and sent at
// once, so boxing it would only add an allocation and churn at every use.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Allocated {
        address: PodAddress,
    },
    Found {
        address: Option<PodAddress>,
    },
    Released {
        released: bool,
    },
    Collected {
        released: Vec<AttachmentKey>,
    },
    Status {
        status: NodeStatus,
    },
    Attached {
        ifname: String,
    },
    /// The attach is queued (`AttachPod` with `queue`).
    AttachQueued {
        ifname: String,
    },
    /// The pod is recorded and no policy isolates it; nothing is attached or queued yet
    /// (`AttachPod` with `queue` and `defer`).
    Admitted {
        ifname: String,
    },
    Policy {
        report: PolicyReport,
    },
    /// [`Request::Flows`]: records in `seq` order.
    Flows {
        records: Vec<flow::FlowEvent>,
        /// Pass this as `after` to go on.
        next: u64,
        /// The oldest record kept (0: none): those between `after` and it were dropped
        /// from memory before this reader asked (it was too slow for `flows.keep`).
        oldest: u64,
        /// The newest record (0: none).
        newest: u64,
        /// Records between `after` and `oldest` that this reader missed.
        missed: u64,
        /// Records the datapath's ring had no room for, since the ring was created.
        lost: u64,
    },
    /// [`Request::DnsQueries`]: how many records were taken (the others did not fit in
    /// the daemon's queue).
    Taken {
        taken: u32,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// A message on the wire: the version and the body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub api: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach twilld at {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to twilld at {socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("twilld at {socket} answered something unreadable: {message}")]
    Protocol { socket: PathBuf, message: String },
}

/// Sends one request and waits for its response, for at most `timeout` in total per step.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let io_err = |source| ClientError::Io {
        socket: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        socket: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    exchange(&stream, socket, request)
}

/// Sends `request` on a connected stream and reads the answer line; `socket` names the
/// other end in errors.
fn exchange<S>(stream: S, socket: &Path, request: &Request) -> Result<Response, ClientError>
where
    S: io::Read + io::Write + Copy,
{
    let io_err = |source| ClientError::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut line = serde_json::to_string(&Envelope {
        api: API_VERSION,
        body: request,
    })
    .map_err(|e| ClientError::Protocol {
        socket: socket.to_owned(),
        message: e.to_string(),
    })?;
    line.push('\n');
    let mut writer = stream;
    writer.write_all(line.as_bytes()).map_err(io_err)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io_err)?;
    decode_response(&reply).map_err(|message| ClientError::Protocol {
        socket: socket.to_owned(),
        message,
    })
}

/// Waits until the pod programs of `key`'s attachment are on. ADD only queues them, as a
/// runtime starts a pod's containers well after ADD returns; callers that send from the
/// pod at once (the lab's `pod add`, tests, benchmarks) call this first.
pub fn wait_attached(socket: &Path, key: &AttachmentKey, timeout: Duration) -> Result<(), String> {
    let ifname = host_ifname(key);
    let request = Request::AttachPod {
        ifname: ifname.clone(),
        queue: false,
        defer: false,
        pod: None,
    };
    match call(socket, &request, timeout) {
        Ok(Response::Attached { .. }) => Ok(()),
        Ok(other) => Err(format!(
            "twilld did not attach the pod programs to {ifname}: {other:?}"
        )),
        Err(e) => Err(format!("attaching the pod programs to {ifname}: {e}")),
    }
}

/// Reads a request line. The error says what was wrong, for the reply.
pub fn decode_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    check_version(&value)?;
    let envelope: Envelope<Request> =
        serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;
    Ok(envelope.body)
}

/// Reads a response line.
pub fn decode_response(line: &str) -> Result<Response, String> {
    if line.trim().is_empty() {
        return Err("the connection closed without an answer".to_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    check_version(&value)?;
    let envelope: Envelope<Response> =
        serde_json::from_value(value).map_err(|e| format!("bad response: {e}"))?;
    Ok(envelope.body)
}

/// Writes a response line.
pub fn encode_response(response: &Response) -> String {
    let mut line = serde_json::to_string(&Envelope {
        api: API_VERSION,
        body: response,
    })
    .expect("responses are plain data and always serialize");
    line.push('\n');
    line
}

fn check_version(value: &serde_json::Value) -> Result<(), String> {
    match value.get("api").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(API_VERSION) => Ok(()),
        Some(v) => Err(format!(
            "API version {v} is not spoken here (this side speaks {API_VERSION}); \
             upgrade twilld and the twill CNI binary together"
        )),
        None => Err("the message has no API version".to_owned()),
    }
}

/// Where the CNI binary leaves a release it could not hand to a stopped daemon, inside the
/// daemon's state directory. The daemon honours these when it starts and before every
/// allocation, so DEL always works and an address is never held by a deleted pod.
pub const PENDING_RELEASES_DIR: &str = "pending-releases";

/// The file for one pending release: named after the host interface, which is unique per
/// attachment.
pub fn pending_release_path(state_dir: &Path, key: &AttachmentKey) -> PathBuf {
    state_dir
        .join(PENDING_RELEASES_DIR)
        .join(format!("{}.json", host_ifname(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.to_owned(),
            ifname: ifname.to_owned(),
        }
    }

    #[test]
    fn host_ifnames_are_short_stable_and_distinct() {
        let a = host_ifname(&key("abc123", "eth0"));
        assert_eq!(a, host_ifname(&key("abc123", "eth0")));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("tw"));
        assert_ne!(a, host_ifname(&key("abc123", "eth1")));
        assert_ne!(a, host_ifname(&key("abc124", "eth0")));
        // The separator keeps ("a", "b/c") and ("a/b", "c") apart... as far as a hash can.
        assert_ne!(host_ifname(&key("ab", "c")), host_ifname(&key("a", "bc")));
    }

    #[test]
    fn retired_names_fit_the_kernel_and_are_told_apart() {
        let k = key("abc123", "eth0");
        let host = host_ifname(&k);
        let (rh, rp) = retired_ifnames(&k);
        assert_eq!(rh, format!("tx{}", &host[2..]));
        assert_eq!(rp, format!("ty{}", &host[2..]));
        for name in [&host, &rh, &rp] {
            assert!(name.len() <= 15, "{name}");
        }
        assert!(is_twill_ifname(&host, HOST_IFNAME_PREFIX));
        assert!(!is_twill_ifname(&rh, HOST_IFNAME_PREFIX));
        assert!(is_twill_ifname(&rh, RETIRED_HOST_PREFIX));
        assert!(!is_twill_ifname("tw12", HOST_IFNAME_PREFIX));
        assert!(!is_twill_ifname("twxyzxyzxyzxyz", HOST_IFNAME_PREFIX));
    }

    #[test]
    fn a_request_survives_the_wire_and_names_its_fields_in_json() {
        let req = Request::Allocate {
            key: key("c1", "eth0"),
            pod: Some("default/web".to_owned()),
        };
        let line = serde_json::to_string(&Envelope {
            api: API_VERSION,
            body: &req,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"api":1,"op":"allocate","container_id":"c1","ifname":"eth0","pod":"default/web"}"#
        );
        assert_eq!(decode_request(&line).unwrap(), req);
    }

    #[test]
    fn a_flows_poll_and_its_answer_are_as_documented() {
        let req = Request::Flows {
            after: 7,
            max: 100,
            wait_ms: 1000,
        };
        let line = serde_json::to_string(&Envelope {
            api: API_VERSION,
            body: &req,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"api":1,"op":"flows","after":7,"max":100,"wait_ms":1000}"#
        );
        assert_eq!(decode_request(&line).unwrap(), req);
        let resp = Response::Flows {
            records: vec![flow::FlowEvent::default()],
            next: 8,
            oldest: 1,
            newest: 8,
            missed: 0,
            lost: 3,
        };
        let line = encode_response(&resp);
        assert!(
            line.starts_with(r#"{"api":1,"result":"flows","records":[{"seq":0,"#),
            "{line}"
        );
        assert_eq!(decode_response(&line).unwrap(), resp);
    }

    #[test]
    fn dns_query_records_and_their_answer_are_as_documented() {
        let req = Request::DnsQueries {
            queries: vec![flow::DnsQueryRecord {
                unix_ms: 5,
                client: Some("10.244.1.5:41000".parse().unwrap()),
                transport: "UDP".into(),
                ..Default::default()
            }],
            lost: 2,
        };
        let line = serde_json::to_string(&Envelope {
            api: API_VERSION,
            body: &req,
        })
        .unwrap();
        assert!(
            line.starts_with(
                r#"{"api":1,"op":"dns_queries","queries":[{"unix_ms":5,"client":"10.244.1.5:41000","server":null,"#
            ),
            "{line}"
        );
        assert_eq!(decode_request(&line).unwrap(), req);
        let resp = Response::Taken { taken: 1 };
        let line = encode_response(&resp);
        assert_eq!(line.trim_end(), r#"{"api":1,"result":"taken","taken":1}"#);
        assert_eq!(decode_response(&line).unwrap(), resp);
    }

    #[test]
    fn another_api_version_or_garbage_is_refused_with_the_reason() {
        let err = decode_request(r#"{"api":2,"op":"status"}"#).unwrap_err();
        assert!(err.contains("API version 2"), "{err}");
        let err = decode_request(r#"{"op":"status"}"#).unwrap_err();
        assert!(err.contains("no API version"), "{err}");
        let err = decode_request("hello").unwrap_err();
        assert!(err.starts_with("not JSON"), "{err}");
        let err = decode_request(r#"{"api":1,"op":"format_disk"}"#).unwrap_err();
        assert!(err.contains("format_disk"), "{err}");
        let err = decode_response("").unwrap_err();
        assert!(err.contains("closed"), "{err}");
    }

    #[test]
    fn responses_round_trip() {
        let resp = Response::Error {
            kind: ErrorKind::Exhausted,
            message: "pod subnet 10.244.1.0/24 has no free address".to_owned(),
        };
        assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
    }
}
