//! The input model: the cluster objects a zone is built from, and the zone's configuration.
//!
//! These types are the crate's own, not twill-k8s's: the DNS server converts Services,
//! EndpointSlices, Pods and Namespaces into them, so this crate stays free of the API types and
//! of any I/O.

use std::net::Ipv4Addr;

/// A Kubernetes Service as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// The Service's ports (`spec.ports`). Only named ports get SRV records.
    pub ports: Vec<ServicePort>,
    /// The Service's endpoints, merged from all its EndpointSlices. Only headless Services use
    /// them (spec 2.4); a ClusterIP Service answers with its ClusterIP whatever its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// What the Service's own name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// `spec.clusterIP` is an address: one A record (spec 2.3).
    ClusterIp(Ipv4Addr),
    /// `spec.clusterIP: None`: one A record per ready endpoint (spec 2.4).
    Headless,
    /// `spec.type: ExternalName`: a CNAME to this name (spec 2.5).
    ExternalName(String),
}

/// A Service port, or an EndpointSlice port (same shape: the name ties the two together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; empty for an unnamed port, which has no SRV record.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A port's transport protocol, the `_<proto>` label of an SRV name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol's SRV label without the underscore, lower case.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub(crate) fn from_label(label: &str) -> Option<Self> {
        match label {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One endpoint address of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The endpoint's `hostname` field (set for StatefulSet pods with a `subdomain`).
    pub hostname: Option<String>,
    /// The spec's _ready_: the endpoint is ready, or the Service publishes not-ready addresses
    /// (`publishNotReadyAddresses`). The converter decides; this crate only reads the flag.
    pub ready: bool,
    /// The EndpointSlice's ports: for a headless Service the SRV port numbers come from here.
    pub ports: Vec<ServicePort>,
}

/// A Pod, for `a-b-c-d.<ns>.pod.<zone>` records in [`PodsMode::Verified`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Everything a [`Zone`](crate::Zone) is built from, at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Names of the cluster's Namespaces. A namespace is also known when a Service or Pod in
    /// the snapshot names it; `<ns>.svc.<zone>` is NXDOMAIN for a namespace not known either way.
    pub namespaces: Vec<String>,
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    /// The SOA serial; the server passes something that grows with every change (e.g. the
    /// store revision), so that secondaries and caches that look at it can tell zones apart.
    pub serial: u32,
}

/// How `a-b-c-d.<ns>.pod.<zone>` names are answered (CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodsMode {
    /// No pod records: every name under `pod.<zone>` is NXDOMAIN.
    #[default]
    Disabled,
    /// Any well-formed `a-b-c-d.<ns>.pod.<zone>` answers `a.b.c.d`, without looking at Pods
    /// (the deprecated record of spec 2.6, as kube-dns did).
    Insecure,
    /// Only when a Pod with that address exists in that namespace.
    Verified,
}

/// The zone's configuration; [`Default`] is CoreDNS's defaults for `cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local` (with or without the final dot).
    pub zone: String,
    /// TTL of every record, and the negative-caching TTL (RFC 2308) through the SOA minimum.
    pub ttl: u32,
    pub pods: PodsMode,
    /// The address of the cluster DNS server: the A record of `ns.dns.<zone>`, the zone's NS.
    /// Without it `ns.dns.<zone>` exists but has no address (NODATA).
    pub nameserver_ip: Option<Ipv4Addr>,
    /// The UDP payload size advertised in the OPT record of responses, and the most the
    /// server sends over UDP whatever a client advertises. 1232 is the DNS Flag Day 2020 value.
    pub edns_udp_payload: u16,
    /// The RA bit of responses: true when the server forwards names that are not its own.
    pub recursion_available: bool,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            zone: "cluster.local".to_string(),
            ttl: 5,
            pods: PodsMode::Disabled,
            nameserver_ip: None,
            edns_udp_payload: 1232,
            recursion_available: true,
        }
    }
}
