//! The zone: cluster objects indexed by the names they answer, and the lookup of one name.
//!
//! Building is one pass over the snapshot, O(S + E + P) hash inserts for S Services, E endpoints
//! and P Pods. A lookup is O(1) expected: a hash probe for the namespace, one for the Service and
//! one for an endpoint hostname (or a reverse address), plus a scan of the Service's own ports
//! for SRV names. Records are made at lookup time from the index, so the zone holds no
//! `hickory_proto` records and building allocates little beyond the strings it keeps.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use hickory_proto::rr::Name;

use crate::model::{ClusterSnapshot, PodsMode, Protocol, ServiceKind, ServicePort, ZoneConfig};

/// The longest a name may be on the wire, final root label included (RFC 1035 3.1).
const MAX_NAME_WIRE_LEN: usize = 255;

/// Why the zone could not be built at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("zone {zone:?}: {reason}")]
    InvalidZone { zone: String, reason: String },
}

/// A cluster object, or part of one, that the zone left out, and why. The rest of the zone is
/// served as usual: one bad object must not take the cluster's DNS down.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Skipped {
    #[error("namespace {namespace:?}: {reason}")]
    Namespace {
        namespace: String,
        reason: &'static str,
    },
    #[error("service {namespace}/{name}: {reason}")]
    Service {
        namespace: String,
        name: String,
        reason: &'static str,
    },
    #[error("service {namespace}/{name}: port {port:?}: {reason}")]
    Port {
        namespace: String,
        name: String,
        port: String,
        reason: &'static str,
    },
    #[error("service {namespace}/{name}: endpoint {ip} hostname {hostname:?}: {reason}")]
    Hostname {
        namespace: String,
        name: String,
        ip: Ipv4Addr,
        hostname: String,
        reason: &'static str,
    },
    #[error("pod {namespace}/{name}: {reason}")]
    Pod {
        namespace: String,
        name: String,
        reason: &'static str,
    },
}

/// The cluster zone, ready to answer queries (see [`Zone::answer`](crate::Zone::answer)).
#[derive(Debug)]
pub struct Zone {
    pub(crate) config: ZoneConfig,
    /// The zone apex, lower case, fully qualified.
    pub(crate) origin: Name,
    origin_labels: Vec<Vec<u8>>,
    origin_wire_len: usize,
    pub(crate) serial: u32,
    namespaces: HashMap<String, NamespaceEntry>,
    pub(crate) services: Vec<ServiceEntry>,
    reverse: HashMap<Ipv4Addr, Vec<PtrTarget>>,
    skipped: Vec<Skipped>,
}

#[derive(Debug, Default)]
struct NamespaceEntry {
    /// Service name -> index into `Zone::services`.
    services: HashMap<String, usize>,
    /// Pod addresses, for `PodsMode::Verified`.
    pods: HashSet<Ipv4Addr>,
}

#[derive(Debug)]
pub(crate) struct ServiceEntry {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) kind: EntryKind,
}

#[derive(Debug)]
pub(crate) enum EntryKind {
    ClusterIp {
        ip: Ipv4Addr,
        /// Named ports whose SRV name fits; unnamed ports have no record (spec 2.3.2).
        ports: Vec<ServicePort>,
    },
    Headless(Headless),
    ExternalName(Name),
}

#[derive(Debug, Default)]
pub(crate) struct Headless {
    /// Ready endpoint addresses, without duplicates, in snapshot order (spec 2.4.1).
    pub(crate) addresses: Vec<Ipv4Addr>,
    /// Endpoint hostname (explicit, or the dashed address) -> its ready addresses.
    pub(crate) hosts: HashMap<String, Vec<Ipv4Addr>>,
    /// One entry per named (protocol, port name) found on ready endpoints (spec 2.4.2).
    pub(crate) ports: Vec<HeadlessPort>,
}

#[derive(Debug)]
pub(crate) struct HeadlessPort {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    /// (endpoint hostname, port number), without duplicates.
    pub(crate) targets: Vec<(String, u16)>,
}

/// The name a reverse address points to: a Service, or one endpoint hostname under it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PtrTarget {
    pub(crate) service: usize,
    pub(crate) host: Option<String>,
}

/// Where a query name falls.
#[derive(Debug)]
pub(crate) enum Found<'z> {
    /// Neither in the cluster zone nor a reverse name of a known address: the server forwards.
    NotOurs,
    /// In the cluster zone, and no such name (nor any name below it) exists.
    NxDomain,
    Node(Node<'z>),
}

/// A name that exists, and what is there.
#[derive(Debug)]
pub(crate) enum Node<'z> {
    /// `<zone>`: SOA and NS.
    Apex,
    /// `dns-version.<zone>`: TXT (spec 2.2).
    SchemaVersion,
    /// `ns.dns.<zone>`: the NS target, A when the server's address is configured.
    Nameserver,
    /// A name with names below it and no records of its own: `svc.<zone>`, `<ns>.svc.<zone>`,
    /// `_tcp.<svc>.<ns>.svc.<zone>`, ...
    EmptyNonTerminal,
    /// `<svc>.<ns>.svc.<zone>`.
    Service(&'z ServiceEntry),
    /// `<hostname>.<svc>.<ns>.svc.<zone>` of a headless Service.
    EndpointHost(&'z [Ipv4Addr]),
    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>`.
    Srv(&'z ServiceEntry, SrvTargets<'z>),
    /// `a-b-c-d.<ns>.pod.<zone>`.
    Pod(Ipv4Addr),
    /// `d.c.b.a.in-addr.arpa.` of a known address.
    Reverse(&'z [PtrTarget]),
}

#[derive(Debug)]
pub(crate) enum SrvTargets<'z> {
    /// ClusterIP Service: port numbers, each with the Service name as target.
    Service(Vec<u16>),
    /// Headless Service: one target per ready endpoint with that port.
    Endpoints(&'z HeadlessPort),
}

impl Zone {
    /// Builds the zone from a snapshot. Objects with names DNS cannot carry are left out and
    /// listed in [`Zone::skipped`]; only a bad zone name fails the build.
    pub fn build(config: &ZoneConfig, snapshot: &ClusterSnapshot) -> Result<Zone, ConfigError> {
        let origin = parse_origin(&config.zone)?;
        let origin_labels: Vec<Vec<u8>> = origin.iter().map(<[u8]>::to_vec).collect();
        let origin_wire_len = origin_labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
        let mut zone = Zone {
            config: config.clone(),
            origin,
            origin_labels,
            origin_wire_len,
            serial: snapshot.serial,
            namespaces: HashMap::new(),
            services: Vec::with_capacity(snapshot.services.len()),
            reverse: HashMap::new(),
            skipped: Vec::new(),
        };
        for namespace in &snapshot.namespaces {
            match dns_label(namespace, 63) {
                Ok(ns) => {
                    zone.namespaces.entry(ns).or_default();
                }
                Err(reason) => zone.skipped.push(Skipped::Namespace {
                    namespace: namespace.clone(),
                    reason,
                }),
            }
        }
        for service in &snapshot.services {
            zone.add_service(service);
        }
        for pod in &snapshot.pods {
            match dns_label(&pod.namespace, 63) {
                Ok(ns) => {
                    zone.namespaces.entry(ns).or_default().pods.insert(pod.ip);
                }
                Err(reason) => zone.skipped.push(Skipped::Pod {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    reason,
                }),
            }
        }
        Ok(zone)
    }

    /// What the build left out, with the reason; empty for a clean snapshot.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The zone apex, lower case.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    fn add_service(&mut self, service: &crate::model::Service) {
        let skip = |reason| Skipped::Service {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            reason,
        };
        let (namespace, name) = match (
            dns_label(&service.namespace, 63),
            dns_label(&service.name, 63),
        ) {
            (Ok(ns), Ok(name)) => (ns, name),
            (Err(reason), _) | (_, Err(reason)) => {
                self.skipped.push(skip(reason));
                return;
            }
        };
        // `<svc>.<ns>.svc.<zone>`
        let service_wire_len = name.len() + 1 + namespace.len() + 1 + 4 + self.origin_wire_len;
        if service_wire_len > MAX_NAME_WIRE_LEN {
            self.skipped.push(skip("name is longer than 255 bytes"));
            return;
        }
        let external_name = match &service.kind {
            ServiceKind::ExternalName(target) => match parse_external_name(target) {
                Some(target) => Some(target),
                None => {
                    // Left out rather than a CNAME to something that is not a domain name.
                    self.skipped
                        .push(skip("external name is not a valid domain name"));
                    return;
                }
            },
            _ => None,
        };
        let index = self.services.len();
        let entry = self.namespaces.entry(namespace.clone()).or_default();
        match entry.services.entry(name.clone()) {
            Entry::Occupied(_) => {
                self.skipped.push(skip("duplicate service"));
                return;
            }
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
        let mut skipped = Vec::new();
        let port_fits = |port: &ServicePort, skipped: &mut Vec<Skipped>| -> Option<String> {
            if port.name.is_empty() {
                return None;
            }
            let fail = |reason| Skipped::Port {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                port: port.name.clone(),
                reason,
            };
            // The `_` prefix takes one byte of the label's 63.
            let label = match dns_label(&port.name, 62) {
                Ok(label) => label,
                Err(reason) => {
                    if !skipped.contains(&fail(reason)) {
                        skipped.push(fail(reason));
                    }
                    return None;
                }
            };
            let wire = label.len() + 2 + port.protocol.label().len() + 2 + service_wire_len;
            if wire > MAX_NAME_WIRE_LEN {
                let failure = fail("SRV name is longer than 255 bytes");
                if !skipped.contains(&failure) {
                    skipped.push(failure);
                }
                return None;
            }
            Some(label)
        };
        let kind = match &service.kind {
            ServiceKind::ClusterIp(ip) => {
                let ports = service
                    .ports
                    .iter()
                    .filter_map(|port| {
                        port_fits(port, &mut skipped).map(|name| ServicePort {
                            name,
                            protocol: port.protocol,
                            port: port.port,
                        })
                    })
                    .collect();
                self.reverse.entry(*ip).or_default().push(PtrTarget {
                    service: index,
                    host: None,
                });
                EntryKind::ClusterIp { ip: *ip, ports }
            }
            ServiceKind::ExternalName(_) => {
                EntryKind::ExternalName(external_name.expect("parsed above"))
            }
            ServiceKind::Headless => {
                let mut headless = Headless::default();
                let mut seen_addresses = HashSet::new();
                // (port slot, hostname, port number): the SRV records made so far.
                let mut seen_targets: HashSet<(usize, String, u16)> = HashSet::new();
                for endpoint in service.endpoints.iter().filter(|e| e.ready) {
                    if seen_addresses.insert(endpoint.ip) {
                        headless.addresses.push(endpoint.ip);
                    }
                    let host = match endpoint.hostname.as_deref().map(|h| dns_label(h, 63)) {
                        Some(Ok(host))
                            if host.len() + 1 + service_wire_len <= MAX_NAME_WIRE_LEN =>
                        {
                            Some(host)
                        }
                        Some(result) => {
                            skipped.push(Skipped::Hostname {
                                namespace: service.namespace.clone(),
                                name: service.name.clone(),
                                ip: endpoint.ip,
                                hostname: endpoint.hostname.clone().unwrap_or_default(),
                                reason: result.err().unwrap_or("name is longer than 255 bytes"),
                            });
                            None
                        }
                        None => None,
                    };
                    // The spec's system-assigned identifier for an endpoint without a
                    // hostname: the dashed address, as CoreDNS does.
                    let host = host.or_else(|| {
                        let dashed = dashed(endpoint.ip);
                        (dashed.len() + 1 + service_wire_len <= MAX_NAME_WIRE_LEN).then_some(dashed)
                    });
                    let Some(host) = host else { continue };
                    let addresses = headless.hosts.entry(host.clone()).or_default();
                    if !addresses.contains(&endpoint.ip) {
                        addresses.push(endpoint.ip);
                    }
                    let targets = self.reverse.entry(endpoint.ip).or_default();
                    let target = PtrTarget {
                        service: index,
                        host: Some(host.clone()),
                    };
                    if !targets.contains(&target) {
                        targets.push(target);
                    }
                    for port in &endpoint.ports {
                        let Some(port_name) = port_fits(port, &mut skipped) else {
                            continue;
                        };
                        let slot = match headless
                            .ports
                            .iter()
                            .position(|p| p.protocol == port.protocol && p.name == port_name)
                        {
                            Some(slot) => slot,
                            None => {
                                headless.ports.push(HeadlessPort {
                                    name: port_name,
                                    protocol: port.protocol,
                                    targets: Vec::new(),
                                });
                                headless.ports.len() - 1
                            }
                        };
                        if seen_targets.insert((slot, host.clone(), port.port)) {
                            headless.ports[slot].targets.push((host.clone(), port.port));
                        }
                    }
                }
                EntryKind::Headless(headless)
            }
        };
        self.skipped.extend(skipped);
        self.services.push(ServiceEntry {
            namespace,
            name,
            kind,
        });
    }

    /// Finds the node a query name falls on. Comparison is case-insensitive (spec 2.1).
    pub(crate) fn find(&self, qname: &Name) -> Found<'_> {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let zone_len = self.origin_labels.len();
        let in_zone = labels.len() >= zone_len
            && labels[labels.len() - zone_len..]
                .iter()
                .zip(&self.origin_labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if !in_zone {
            return self.find_reverse(&labels);
        }
        // Relative labels, lower case, from the apex down.
        let mut relative = Vec::with_capacity(labels.len() - zone_len);
        for label in labels[..labels.len() - zone_len].iter().rev() {
            match std::str::from_utf8(label) {
                Ok(label) => relative.push(label.to_ascii_lowercase()),
                // Every name in the zone is ASCII.
                Err(_) => return Found::NxDomain,
            }
        }
        let relative: Vec<&str> = relative.iter().map(String::as_str).collect();
        match relative.as_slice() {
            [] => Found::Node(Node::Apex),
            ["dns-version"] => Found::Node(Node::SchemaVersion),
            ["dns"] => Found::Node(Node::EmptyNonTerminal),
            ["dns", "ns"] => Found::Node(Node::Nameserver),
            ["svc"] => Found::Node(Node::EmptyNonTerminal),
            ["svc", namespace] => match self.namespaces.get(*namespace) {
                Some(_) => Found::Node(Node::EmptyNonTerminal),
                None => Found::NxDomain,
            },
            ["svc", namespace, service, below @ ..] => match self.service(namespace, service) {
                Some(entry) => find_below_service(entry, below),
                None => Found::NxDomain,
            },
            ["pod", below @ ..] => self.find_pod(below),
            _ => Found::NxDomain,
        }
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        let index = *self.namespaces.get(namespace)?.services.get(name)?;
        Some(&self.services[index])
    }

    fn find_pod(&self, below: &[&str]) -> Found<'_> {
        let mode = self.config.pods;
        if mode == PodsMode::Disabled {
            return Found::NxDomain;
        }
        let known = |namespace: &str| match mode {
            PodsMode::Insecure => dns_label(namespace, 63).is_ok(),
            _ => self.namespaces.contains_key(namespace),
        };
        match below {
            [] => Found::Node(Node::EmptyNonTerminal),
            [namespace] if known(namespace) => Found::Node(Node::EmptyNonTerminal),
            [namespace, host] if known(namespace) => {
                let Some(ip) = parse_dashed(host) else {
                    return Found::NxDomain;
                };
                let exists = mode == PodsMode::Insecure
                    || self
                        .namespaces
                        .get(*namespace)
                        .is_some_and(|ns| ns.pods.contains(&ip));
                if exists {
                    Found::Node(Node::Pod(ip))
                } else {
                    Found::NxDomain
                }
            }
            _ => Found::NxDomain,
        }
    }

    /// `d.c.b.a.in-addr.arpa.` for an address the zone knows; anything else is not ours.
    fn find_reverse(&self, labels: &[&[u8]]) -> Found<'_> {
        let [d, c, b, a, in_addr, arpa] = labels else {
            return Found::NotOurs;
        };
        if !in_addr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
            return Found::NotOurs;
        }
        let octets = [a, b, c, d].map(|label| parse_octet(label));
        let [Some(a), Some(b), Some(c), Some(d)] = octets else {
            return Found::NotOurs;
        };
        match self.reverse.get(&Ipv4Addr::new(a, b, c, d)) {
            Some(targets) => Found::Node(Node::Reverse(targets)),
            None => Found::NotOurs,
        }
    }

    /// `<svc>.<ns>.svc.<zone>` as a name.
    pub(crate) fn service_name(&self, entry: &ServiceEntry) -> Option<Name> {
        self.name(&[&entry.name, &entry.namespace, "svc"])
    }

    /// `<host>.<svc>.<ns>.svc.<zone>` as a name.
    pub(crate) fn host_name(&self, entry: &ServiceEntry, host: &str) -> Option<Name> {
        self.name(&[host, &entry.name, &entry.namespace, "svc"])
    }

    /// A name in the zone from its labels below the apex. `None` only if the name does not fit,
    /// which the build rules out for every name it indexes.
    pub(crate) fn name(&self, labels: &[&str]) -> Option<Name> {
        Name::from_labels(
            labels
                .iter()
                .map(|label| label.as_bytes())
                .chain(self.origin_labels.iter().map(Vec::as_slice)),
        )
        .ok()
    }
}

/// Below `<svc>.<ns>.svc.<zone>`: the Service itself, endpoint hostnames, SRV names.
fn find_below_service<'z>(entry: &'z ServiceEntry, below: &[&str]) -> Found<'z> {
    match &entry.kind {
        EntryKind::ClusterIp { ports, .. } => match below {
            [] => Found::Node(Node::Service(entry)),
            [proto] => match srv_protocol(proto) {
                Some(protocol) if ports.iter().any(|p| p.protocol == protocol) => {
                    Found::Node(Node::EmptyNonTerminal)
                }
                _ => Found::NxDomain,
            },
            [proto, port] => {
                let (Some(protocol), Some(port)) = (srv_protocol(proto), port.strip_prefix('_'))
                else {
                    return Found::NxDomain;
                };
                let numbers: Vec<u16> = ports
                    .iter()
                    .filter(|p| p.protocol == protocol && p.name == port)
                    .map(|p| p.port)
                    .collect();
                if numbers.is_empty() {
                    Found::NxDomain
                } else {
                    Found::Node(Node::Srv(entry, SrvTargets::Service(numbers)))
                }
            }
            _ => Found::NxDomain,
        },
        // Spec 2.4.1: no ready endpoints, NXDOMAIN; and then nothing exists below either.
        EntryKind::Headless(headless) if headless.addresses.is_empty() => Found::NxDomain,
        EntryKind::Headless(headless) => match below {
            [] => Found::Node(Node::Service(entry)),
            [label] => match label.strip_prefix('_') {
                Some(_) => match srv_protocol(label) {
                    Some(protocol) if headless.ports.iter().any(|p| p.protocol == protocol) => {
                        Found::Node(Node::EmptyNonTerminal)
                    }
                    _ => Found::NxDomain,
                },
                None => match headless.hosts.get(*label) {
                    Some(addresses) => Found::Node(Node::EndpointHost(addresses)),
                    None => Found::NxDomain,
                },
            },
            [proto, port] => {
                let (Some(protocol), Some(port)) = (srv_protocol(proto), port.strip_prefix('_'))
                else {
                    return Found::NxDomain;
                };
                match headless
                    .ports
                    .iter()
                    .find(|p| p.protocol == protocol && p.name == port)
                {
                    Some(port) => Found::Node(Node::Srv(entry, SrvTargets::Endpoints(port))),
                    None => Found::NxDomain,
                }
            }
            _ => Found::NxDomain,
        },
        // A CNAME owner has no other data and, here, nothing below it.
        EntryKind::ExternalName(_) => match below {
            [] => Found::Node(Node::Service(entry)),
            _ => Found::NxDomain,
        },
    }
}

fn srv_protocol(label: &str) -> Option<Protocol> {
    Protocol::from_label(label.strip_prefix('_')?)
}

fn parse_origin(zone: &str) -> Result<Name, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidZone {
        zone: zone.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = zone.strip_suffix('.').unwrap_or(zone);
    if trimmed.is_empty() {
        return Err(invalid("the root cannot be the cluster zone"));
    }
    for label in trimmed.split('.') {
        dns_label(label, 63).map_err(invalid)?;
    }
    let mut name =
        Name::from_ascii(trimmed.to_ascii_lowercase()).map_err(|e| invalid(&e.to_string()))?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_external_name(target: &str) -> Option<Name> {
    let trimmed = target.strip_suffix('.').unwrap_or(target);
    if trimmed.is_empty() || trimmed.split('.').any(|l| dns_label(l, 63).is_err()) {
        return None;
    }
    let mut name = Name::from_ascii(trimmed.to_ascii_lowercase()).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// A DNS-1123 label, lower case: 1 to `max` of `[a-z0-9-]`, no `-` at either end. Kubernetes
/// names are already of this form; the check keeps a bad object from making a bad name.
pub(crate) fn dns_label(label: &str, max: usize) -> Result<String, &'static str> {
    if label.is_empty() {
        return Err("empty name");
    }
    if label.len() > max {
        return Err("name is too long for a DNS label");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("name has characters other than letters, digits and '-'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("name starts or ends with '-'");
    }
    Ok(label.to_ascii_lowercase())
}

/// `10.3.0.7` -> `10-3-0-7`.
pub(crate) fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

/// `10-3-0-7` -> `10.3.0.7`, in canonical decimal only (no leading zeros or signs).
fn parse_dashed(label: &str) -> Option<Ipv4Addr> {
    let mut parts = label.split('-');
    let mut octets = [0u8; 4];
    for octet in &mut octets {
        *octet = parse_octet(parts.next()?.as_bytes())?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(Ipv4Addr::from(octets)),
    }
}

fn parse_octet(label: &[u8]) -> Option<u8> {
    let canonical = !label.is_empty()
        && label.len() <= 3
        && label.iter().all(u8::is_ascii_digit)
        && (label.len() == 1 || label[0] != b'0');
    if !canonical {
        return None;
    }
    std::str::from_utf8(label).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns_1123() {
        for (label, expected) in [
            ("web", Ok("web")),
            ("Web-1", Ok("web-1")),
            ("0abc", Ok("0abc")),
            ("", Err("empty name")),
            ("-web", Err("name starts or ends with '-'")),
            ("web-", Err("name starts or ends with '-'")),
            (
                "web_1",
                Err("name has characters other than letters, digits and '-'"),
            ),
            (
                "web.1",
                Err("name has characters other than letters, digits and '-'"),
            ),
        ] {
            assert_eq!(
                dns_label(label, 63),
                expected.map(str::to_string),
                "{label:?}"
            );
        }
        assert!(dns_label(&"a".repeat(63), 63).is_ok());
        assert!(dns_label(&"a".repeat(64), 63).is_err());
    }

    #[test]
    fn dashed_addresses_are_canonical_decimal() {
        for (label, expected) in [
            ("10-3-0-7", Some(Ipv4Addr::new(10, 3, 0, 7))),
            ("0-0-0-0", Some(Ipv4Addr::UNSPECIFIED)),
            ("255-255-255-255", Some(Ipv4Addr::BROADCAST)),
            ("256-0-0-1", None),
            ("10-3-0", None),
            ("10-3-0-7-1", None),
            ("010-3-0-7", None),
            ("+1-3-0-7", None),
            ("a-b-c-d", None),
            ("10--0-7", None),
        ] {
            assert_eq!(parse_dashed(label), expected, "{label:?}");
        }
        assert_eq!(dashed(Ipv4Addr::new(10, 3, 0, 7)), "10-3-0-7");
    }
}
