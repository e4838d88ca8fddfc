//! `twilld`'s configuration: one TOML file plus command-line flags that override it.
//!
//! Parsing and validation are pure: [`Config::from_toml`] turns text into a checked
//! configuration or an error that names the key. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use twill_ipam::ClusterCidr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {key}: {message}")]
    Invalid {
        source_name: String,
        key: &'static str,
        message: String,
    },
}

/// The overlay between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayMode {
    Vxlan,
    Bgp,
}

impl OverlayMode {
    /// Bytes the overlay adds to each packet: the pod MTU is the underlay MTU minus this.
    pub fn overhead(self) -> u32 {
        match self {
            // Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
            OverlayMode::Vxlan => 50,
            OverlayMode::Bgp => 0,
        }
    }
}

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    node_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    etcd: twill_store::EtcdSection,
    #[serde(default)]
    network: FileNetwork,
    #[serde(default)]
    lease: FileLease,
    #[serde(default)]
    paths: FilePaths,
    #[serde(default)]
    policy: FilePolicy,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    flows: crate::flows::config::FileFlows,
    #[serde(default)]
    bgp: FileBgp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBgp {
    as_number: Option<u32>,
    router_id: Option<String>,
    hold_seconds: Option<u16>,
    keepalive_seconds: Option<u16>,
    restart_seconds: Option<u16>,
    mesh: Option<bool>,
    listen_port: Option<u16>,
    password_file: Option<PathBuf>,
    announce_service_cidr: Option<bool>,
    cross_subnet: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
    map_walk_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    peer_entries: Option<u32>,
    port_entries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    cluster_cidr: Option<String>,
    node_subnet_prefix: Option<u8>,
    underlay_interface: Option<String>,
    overlay: Option<OverlayMode>,
    mtu: Option<u32>,
    vxlan_vni: Option<u32>,
    vxlan_port: Option<u16>,
    resync_seconds: Option<u64>,
    masquerade: Option<bool>,
    service_cidr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLease {
    ttl_seconds: Option<u64>,
    quarantine_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePaths {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    bpffs_root: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
}

/// Values given on the command line; each one, when set, wins over the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The cluster's pod CIDR.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's pod subnet.
    #[arg(long)]
    pub node_subnet_prefix: Option<u8>,
    /// Underlay interface (default: the one the default route uses).
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// Seconds a node's lease lives without renewal.
    #[arg(long)]
    pub lease_ttl_seconds: Option<u64>,
    /// Seconds an expired node's subnet is kept from other nodes.
    #[arg(long)]
    pub lease_quarantine_seconds: Option<u64>,
    /// Unix socket for the CNI plugin and netctl.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory for the daemon's state (subnet, allocations).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for this node's pinned maps.
    #[arg(long)]
    pub bpffs_root: Option<PathBuf>,
    /// cgroup v2 directory whose processes are this node's host processes: the socket
    /// programs for Services attach here.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
}

pub use twill_store::EtcdTls;

/// A checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    /// Labels of this node besides `kubernetes.io/hostname` (`node_labels`), for
    /// `BGPPeer.spec.nodeSelector`; published in the node record.
    pub node_labels: BTreeMap<String, String>,
    pub etcd_endpoints: Vec<String>,
    pub etcd_tls: Option<EtcdTls>,
    pub etcd_timeout: Duration,
    pub cluster: ClusterCidr,
    /// `None`: the interface of the default route.
    pub underlay_interface: Option<String>,
    pub overlay: OverlayMode,
    /// Pod MTU; `None`: underlay MTU minus the overlay's overhead.
    pub mtu: Option<u32>,
    pub vxlan_vni: u32,
    pub vxlan_port: u16,
    /// How often the overlay is checked against etcd even without changes (drift repair).
    pub resync: Duration,
    /// NAT pod traffic that leaves the cluster CIDR to the node's address.
    pub masquerade: bool,
    /// Where Service ClusterIPs live (as `netctl apply --service-cidr` allocates them).
    pub service_cidr: Ipv4Network,
    pub lease_ttl: Duration,
    pub lease_quarantine: Duration,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs_root: PathBuf,
    pub cgroup_root: PathBuf,
    /// Capacities of the NetworkPolicy tries.
    pub map_sizes: twill_bpf::MapSizes,
    /// Prometheus `/metrics`; `None`: not served.
    pub metrics: Option<MetricsConfig>,
    /// Flow records (`[flows]`); the ring's size is in `map_sizes`.
    pub flows: crate::flows::config::FlowsConfig,
    /// The BGP speaker (`[bgp]`), used when `overlay` is [`OverlayMode::Bgp`].
    pub bgp: BgpConfig,
}

/// `[bgp]`: the speaker of the BGP-routed mode. Its `Debug` (`twilld check-config`) does
/// not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BgpConfig {
    /// The cluster's AS: every node is in it (iBGP).
    pub as_number: u32,
    /// `None`: the node's underlay address.
    pub router_id: Option<std::net::Ipv4Addr>,
    pub hold_seconds: u16,
    pub keepalive_seconds: u16,
    /// Graceful restart: how long peers keep this node's routes after its speaker stopped
    /// without a NOTIFICATION (a crash or a restart).
    pub restart_seconds: u16,
    /// A full iBGP mesh between the nodes of the node records. Either way the BGPPeers in
    /// etcd that select the node are peered too; with `false` they are the only peers.
    pub mesh: bool,
    pub listen_port: u16,
    /// The TCP MD5 password, read from this file (trailing newline removed) at start.
    pub password: Option<Vec<u8>>,
    /// Announce `network.service_cidr` (next hop: this node) to the configured peers
    /// (`BGPPeer`), never to the mesh, so a router can spread Service traffic over the
    /// nodes (Calico's `serviceClusterIPs`).
    pub announce_service_cidr: bool,
    /// Reach nodes whose underlay address is on another subnet (not directly connected)
    /// through a VXLAN device (Calico's CrossSubnet); pods get the VXLAN MTU. Off: such
    /// nodes are not routed and the status says why.
    pub cross_subnet: bool,
}

pub const DEFAULT_BGP_AS: u32 = 64512;

impl std::fmt::Debug for BgpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BgpConfig")
            .field("as_number", &self.as_number)
            .field("router_id", &self.router_id)
            .field("hold_seconds", &self.hold_seconds)
            .field("keepalive_seconds", &self.keepalive_seconds)
            .field("restart_seconds", &self.restart_seconds)
            .field("mesh", &self.mesh)
            .field("listen_port", &self.listen_port)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("announce_service_cidr", &self.announce_service_cidr)
            .field("cross_subnet", &self.cross_subnet)
            .finish()
    }
}

impl Default for BgpConfig {
    fn default() -> Self {
        Self {
            as_number: DEFAULT_BGP_AS,
            router_id: None,
            hold_seconds: 9,
            keepalive_seconds: 3,
            restart_seconds: 120,
            mesh: true,
            listen_port: 179,
            password: None,
            announce_service_cidr: false,
            cross_subnet: false,
        }
    }
}

/// Where `/metrics` is served, and how often maps nothing keeps a count of are walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
    /// At most one walk of the counted maps per this long (see `metrics`).
    pub map_walk: Duration,
}

/// The port `/metrics` is usually served on (Cilium's agent's, too: one CNI agent a node).
pub const DEFAULT_METRICS_PORT: u16 = 9962;
pub const DEFAULT_MAP_WALK_SECONDS: u64 = 60;

/// Bounds of a configurable map's capacity.
pub const MAP_ENTRIES: std::ops::RangeInclusive<u32> = 1024..=16_777_216;

pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_NODE_SUBNET_PREFIX: u8 = 24;
pub const DEFAULT_LEASE_TTL: u64 = 30;
pub const DEFAULT_QUARANTINE: u64 = 300;

impl Config {
    /// This node's labels: `kubernetes.io/hostname` (its name) and `node_labels`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        twill_api::cluster::node_labels(&self.node_name, &self.node_labels)
    }

    /// Bytes the routing between nodes may add to a pod's packet: the default pod MTU is
    /// the underlay MTU minus this. VXLAN's in the VXLAN mode, and in the BGP-routed mode
    /// with `bgp.cross_subnet` (any peer may be reached through VXLAN); none otherwise.
    pub fn encapsulation_overhead(&self) -> u32 {
        match self.overlay {
            OverlayMode::Bgp if self.bgp.cross_subnet => OverlayMode::Vxlan.overhead(),
            mode => mode.overhead(),
        }
    }

    /// How to reach etcd.
    pub fn etcd(&self) -> twill_store::Etcd {
        twill_store::Etcd {
            endpoints: self.etcd_endpoints.clone(),
            tls: self.etcd_tls.clone(),
            timeout: self.etcd_timeout,
        }
    }

    /// Parses `text` (named `source_name` in errors), applies `overrides`, and checks every
    /// value. `hostname` is the default node name.
    pub fn from_toml(
        source_name: &str,
        text: &str,
        overrides: &Overrides,
        hostname: &str,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key,
            message,
        };

        let node_name = overrides
            .node_name
            .clone()
            .or(file.node_name)
            .unwrap_or_else(|| hostname.to_owned());
        check_node_name(&node_name).map_err(|m| invalid("node_name", m))?;
        let node_labels = file.node_labels.unwrap_or_default();
        check_node_labels(&node_labels).map_err(|m| invalid("node_labels", m))?;

        let etcd = file
            .etcd
            .check(overrides.etcd_endpoints.clone())
            .map_err(|(key, message)| invalid(key, message))?;
        let (etcd_endpoints, etcd_tls, etcd_timeout) = (etcd.endpoints, etcd.tls, etcd.timeout);

        let cidr_text = overrides
            .cluster_cidr
            .clone()
            .or(file.network.cluster_cidr)
            .unwrap_or_else(|| DEFAULT_CLUSTER_CIDR.to_owned());
        let cidr: Ipv4Network = cidr_text.parse().map_err(|e| {
            invalid(
                "network.cluster_cidr",
                format!("{cidr_text:?} is not an IPv4 CIDR: {e}"),
            )
        })?;
        let prefix = overrides
            .node_subnet_prefix
            .or(file.network.node_subnet_prefix)
            .unwrap_or(DEFAULT_NODE_SUBNET_PREFIX);
        let cluster = ClusterCidr::new(cidr, prefix).map_err(|e| {
            let key = if matches!(e, twill_ipam::IpamError::NotNetwork(..)) {
                "network.cluster_cidr"
            } else {
                "network.node_subnet_prefix"
            };
            invalid(key, e.to_string())
        })?;

        let underlay_interface = overrides
            .underlay_interface
            .clone()
            .or(file.network.underlay_interface);
        if let Some(name) = &underlay_interface
            && (name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(' '))
        {
            return Err(invalid(
                "network.underlay_interface",
                format!("{name:?} is not a valid interface name"),
            ));
        }
        let overlay = file.network.overlay.unwrap_or(OverlayMode::Vxlan);
        let bgp = check_bgp(file.bgp).map_err(|(key, m)| invalid(key, m))?;
        let mtu = file.network.mtu;
        if let Some(m) = mtu
            && !(576..=65535).contains(&m)
        {
            return Err(invalid(
                "network.mtu",
                format!("{m} is outside 576..=65535"),
            ));
        }

        let vxlan_vni = file.network.vxlan_vni.unwrap_or(1);
        if !(1..=0xff_ffff).contains(&vxlan_vni) {
            return Err(invalid(
                "network.vxlan_vni",
                format!("{vxlan_vni} is outside 1..=16777215"),
            ));
        }
        let vxlan_port = file.network.vxlan_port.unwrap_or(8472);
        if vxlan_port == 0 {
            return Err(invalid("network.vxlan_port", "must not be 0".into()));
        }
        let resync = file.network.resync_seconds.unwrap_or(10);
        if !(1..=3600).contains(&resync) {
            return Err(invalid(
                "network.resync_seconds",
                format!("{resync} is outside 1..=3600"),
            ));
        }

        let defaults = twill_bpf::MapSizes::default();
        let mut map_sizes = defaults;
        for (key, value, slot) in [
            (
                "policy.peer_entries",
                file.policy.peer_entries,
                &mut map_sizes.policy_peers,
            ),
            (
                "policy.port_entries",
                file.policy.port_entries,
                &mut map_sizes.policy_ports,
            ),
        ] {
            if let Some(v) = value {
                if !MAP_ENTRIES.contains(&v) {
                    return Err(invalid(
                        key,
                        format!(
                            "{v} is outside {}..={}",
                            MAP_ENTRIES.start(),
                            MAP_ENTRIES.end()
                        ),
                    ));
                }
                *slot = v;
            }
        }

        let flows = file.flows.check().map_err(|(key, m)| invalid(key, m))?;
        map_sizes.flow_ring_bytes = flows.ring_bytes;

        let service_text = file
            .network
            .service_cidr
            .clone()
            .unwrap_or_else(|| "10.96.0.0/12".to_owned());
        let service_cidr: Ipv4Network = service_text.parse().map_err(|e| {
            invalid(
                "network.service_cidr",
                format!("{service_text:?} is not an IPv4 CIDR: {e}"),
            )
        })?;
        if service_cidr.network() != service_cidr.ip() {
            return Err(invalid(
                "network.service_cidr",
                format!("{service_cidr} has host bits set"),
            ));
        }
        if service_cidr.overlaps(cluster.network()) {
            return Err(invalid(
                "network.service_cidr",
                format!(
                    "{service_cidr} overlaps the cluster CIDR {}",
                    cluster.network()
                ),
            ));
        }

        let ttl = overrides
            .lease_ttl_seconds
            .or(file.lease.ttl_seconds)
            .unwrap_or(DEFAULT_LEASE_TTL);
        if !(2..=3600).contains(&ttl) {
            return Err(invalid(
                "lease.ttl_seconds",
                format!("{ttl} is outside 2..=3600 (etcd's lease granularity is about a second)"),
            ));
        }
        let quarantine = overrides
            .lease_quarantine_seconds
            .or(file.lease.quarantine_seconds)
            .unwrap_or(DEFAULT_QUARANTINE);
        if quarantine > 7 * 24 * 3600 {
            return Err(invalid(
                "lease.quarantine_seconds",
                format!("{quarantine} is more than a week"),
            ));
        }

        let map_walk = file
            .metrics
            .map_walk_seconds
            .unwrap_or(DEFAULT_MAP_WALK_SECONDS);
        if !(1..=3600).contains(&map_walk) {
            return Err(invalid(
                "metrics.map_walk_seconds",
                format!("{map_walk} is outside 1..=3600"),
            ));
        }
        let metrics = match file.metrics.listen.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let listen: std::net::SocketAddr = text.parse().map_err(|_| {
                    invalid(
                        "metrics.listen",
                        format!(
                            "{text:?} is not an address and port (\"IP:PORT\", e.g. \"0.0.0.0:{DEFAULT_METRICS_PORT}\")"
                        ),
                    )
                })?;
                if listen.port() == 0 {
                    return Err(invalid(
                        "metrics.listen",
                        format!("{text:?}: the port must not be 0"),
                    ));
                }
                Some(MetricsConfig {
                    listen,
                    map_walk: Duration::from_secs(map_walk),
                })
            }
        };

        let absolute = |key: &'static str, path: PathBuf| {
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(invalid(
                    key,
                    format!("{} is not an absolute path", path.display()),
                ))
            }
        };
        let socket = absolute(
            "paths.socket",
            overrides
                .socket
                .clone()
                .or(file.paths.socket)
                .unwrap_or_else(|| twill_api::DEFAULT_SOCKET.into()),
        )?;
        let state_dir = absolute(
            "paths.state_dir",
            overrides
                .state_dir
                .clone()
                .or(file.paths.state_dir)
                .unwrap_or_else(|| "/var/lib/twill".into()),
        )?;
        let bpffs_root = absolute(
            "paths.bpffs_root",
            overrides
                .bpffs_root
                .clone()
                .or(file.paths.bpffs_root)
                .unwrap_or_else(|| "/sys/fs/bpf/twill".into()),
        )?;
        let cgroup_root = absolute(
            "paths.cgroup_root",
            overrides
                .cgroup_root
                .clone()
                .or(file.paths.cgroup_root)
                .unwrap_or_else(|| "/sys/fs/cgroup".into()),
        )?;

        Ok(Self {
            node_name,
            node_labels,
            etcd_endpoints,
            etcd_tls,
            etcd_timeout,
            cluster,
            underlay_interface,
            overlay,
            mtu,
            vxlan_vni,
            vxlan_port,
            resync: Duration::from_secs(resync),
            masquerade: file.network.masquerade.unwrap_or(true),
            service_cidr,
            lease_ttl: Duration::from_secs(ttl),
            lease_quarantine: Duration::from_secs(quarantine),
            socket,
            state_dir,
            bpffs_root,
            cgroup_root,
            map_sizes,
            metrics,
            flows,
            bgp,
        })
    }
}

/// Checks `[bgp]`; an error names its key.
fn check_bgp(file: FileBgp) -> Result<BgpConfig, (&'static str, String)> {
    let d = BgpConfig::default();
    let as_number = file.as_number.unwrap_or(d.as_number);
    if as_number == 0 || as_number == u32::from(twill_bgp::message::AS_TRANS) {
        return Err(("bgp.as_number", format!("{as_number} is reserved")));
    }
    let router_id = match file.router_id.as_deref() {
        None | Some("") => None,
        Some(text) => {
            let ip: std::net::Ipv4Addr = text
                .parse()
                .map_err(|_| ("bgp.router_id", format!("{text:?} is not an IPv4 address")))?;
            if ip.is_unspecified() {
                return Err(("bgp.router_id", "0.0.0.0 is not a BGP Identifier".into()));
            }
            Some(ip)
        }
    };
    let hold_seconds = file.hold_seconds.unwrap_or(d.hold_seconds);
    if !(3..=65535).contains(&hold_seconds) {
        return Err((
            "bgp.hold_seconds",
            format!("{hold_seconds} is outside 3..=65535"),
        ));
    }
    let keepalive_seconds = file.keepalive_seconds.unwrap_or(d.keepalive_seconds);
    if keepalive_seconds == 0 || keepalive_seconds > hold_seconds / 3 {
        return Err((
            "bgp.keepalive_seconds",
            format!(
                "{keepalive_seconds} is outside 1..={} (a third of bgp.hold_seconds)",
                hold_seconds / 3
            ),
        ));
    }
    let restart_seconds = file.restart_seconds.unwrap_or(d.restart_seconds);
    if !(1..=4095).contains(&restart_seconds) {
        return Err((
            "bgp.restart_seconds",
            format!("{restart_seconds} is outside 1..=4095"),
        ));
    }
    // false: only the BGPPeers in etcd that select the node are peered.
    let mesh = file.mesh.unwrap_or(d.mesh);
    let listen_port = file.listen_port.unwrap_or(d.listen_port);
    if listen_port == 0 {
        return Err(("bgp.listen_port", "must not be 0".into()));
    }
    let password = match file.password_file {
        None => None,
        Some(path) => {
            if !path.is_absolute() {
                return Err((
                    "bgp.password_file",
                    format!("{} is not an absolute path", path.display()),
                ));
            }
            let mut bytes = std::fs::read(&path).map_err(|e| {
                (
                    "bgp.password_file",
                    format!("reading {}: {e}", path.display()),
                )
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            if bytes.is_empty() || bytes.len() > twill_bgp::socket::MD5_MAX_KEY_LEN {
                return Err((
                    "bgp.password_file",
                    format!(
                        "{}: the password must be 1 to {} bytes, it is {}",
                        path.display(),
                        twill_bgp::socket::MD5_MAX_KEY_LEN,
                        bytes.len()
                    ),
                ));
            }
            Some(bytes)
        }
    };
    Ok(BgpConfig {
        as_number,
        router_id,
        hold_seconds,
        keepalive_seconds,
        restart_seconds,
        mesh,
        listen_port,
        password,
        announce_service_cidr: file
            .announce_service_cidr
            .unwrap_or(d.announce_service_cidr),
        cross_subnet: file.cross_subnet.unwrap_or(d.cross_subnet),
    })
}

/// Label keys and values as Kubernetes takes them; `kubernetes.io/hostname` is the node
/// name, always, and cannot be set.
fn check_node_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in labels {
        if key == twill_api::cluster::HOSTNAME_LABEL {
            return Err(format!("{key} is always the node name and cannot be set"));
        }
        twill_k8s::names::label_key(key).map_err(|m| format!("{key:?}: {m}"))?;
        twill_k8s::names::label_value(value).map_err(|m| format!("{key}: {value:?}: {m}"))?;
    }
    Ok(())
}

/// Node names become etcd keys and log fields: keep them to DNS-label-like characters.
fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid node name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml("twilld.toml", text, &Overrides::default(), "host-a")
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.node_name, "host-a");
        assert_eq!(c.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.cluster.network().to_string(), "10.244.0.0/16");
        assert_eq!(c.cluster.node_prefix(), 24);
        assert_eq!(c.overlay, OverlayMode::Vxlan);
        assert_eq!(c.overlay.overhead(), 50);
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.lease_quarantine, Duration::from_secs(300));
        assert_eq!(c.socket, PathBuf::from("/run/twill/twilld.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/twill"));
        assert_eq!(c.underlay_interface, None);
        assert_eq!(c.mtu, None);
        assert_eq!(c.metrics, None);
        assert_eq!(c.bgp, BgpConfig::default());
    }

    #[test]
    fn bgp_mode_has_no_overhead_and_takes_its_section() {
        let c = parse(
            "[network]\noverlay = \"bgp\"\n[bgp]\nas_number = 65010\nrouter_id = \"10.0.0.1\"\n\
             hold_seconds = 30\nkeepalive_seconds = 10\nrestart_seconds = 60\nlisten_port = 1179\n",
        )
        .unwrap();
        assert_eq!(c.overlay, OverlayMode::Bgp);
        assert_eq!(c.overlay.overhead(), 0);
        assert_eq!(c.bgp.as_number, 65010);
        assert_eq!(c.bgp.router_id, Some("10.0.0.1".parse().unwrap()));
        assert_eq!((c.bgp.hold_seconds, c.bgp.keepalive_seconds), (30, 10));
        assert_eq!((c.bgp.restart_seconds, c.bgp.listen_port), (60, 1179));
        assert!(c.bgp.mesh);
        let no_mesh = parse("[network]\noverlay = \"bgp\"\n[bgp]\nmesh = false\n").unwrap();
        assert!(
            !no_mesh.bgp.mesh,
            "mesh = false: only the BGPPeers are peered"
        );
        assert!(!c.bgp.announce_service_cidr, "off unless asked for");
        let announce = parse("[bgp]\nannounce_service_cidr = true\n").unwrap();
        assert!(announce.bgp.announce_service_cidr);
        // Pods get the underlay MTU, or the VXLAN MTU when some peers may be across a
        // router.
        assert!(!c.bgp.cross_subnet);
        assert_eq!(c.encapsulation_overhead(), 0);
        let cross = parse("[network]\noverlay = \"bgp\"\n[bgp]\ncross_subnet = true\n").unwrap();
        assert!(cross.bgp.cross_subnet);
        assert_eq!(cross.encapsulation_overhead(), 50);
        let vxlan = parse("[bgp]\ncross_subnet = true\n").unwrap();
        assert_eq!(vxlan.encapsulation_overhead(), 50);
    }

    #[test]
    fn metrics_are_served_where_listen_says() {
        let c = parse("[metrics]\nlisten = \"172.30.0.11:9962\"\n").unwrap();
        assert_eq!(
            c.metrics,
            Some(MetricsConfig {
                listen: "172.30.0.11:9962".parse().unwrap(),
                map_walk: Duration::from_secs(60),
            })
        );
        let c = parse("[metrics]\nlisten = \"[::]:9962\"\nmap_walk_seconds = 5\n").unwrap();
        let m = c.metrics.unwrap();
        assert_eq!(m.listen.port(), 9962);
        assert!(m.listen.is_ipv6());
        assert_eq!(m.map_walk, Duration::from_secs(5));
    }

    #[test]
    fn node_labels_add_to_the_hostname_label() {
        let c = parse("node_labels = { rack = \"r1\", \"topology.kubernetes.io/zone\" = \"a\" }\n")
            .unwrap();
        assert_eq!(
            c.labels(),
            BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), c.node_name.clone()),
                ("rack".to_owned(), "r1".to_owned()),
                ("topology.kubernetes.io/zone".to_owned(), "a".to_owned()),
            ])
        );
        assert_eq!(c.node_labels.len(), 2);
        assert_eq!(parse("").unwrap().labels().len(), 1);
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../twilld.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.node_name, "node1");
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
    }

    #[test]
    fn flags_win_over_the_file() {
        let overrides = Overrides {
            node_name: Some("from-flag".into()),
            cluster_cidr: Some("10.50.0.0/16".into()),
            lease_ttl_seconds: Some(5),
            ..Overrides::default()
        };
        let text = "node_name = \"from-file\"\n[lease]\nttl_seconds = 60\n";
        let c = Config::from_toml("f", text, &overrides, "h").unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.cluster.network().to_string(), "10.50.0.0/16");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_name_the_key() {
        let cases = [
            ("nodename = \"x\"", "unknown field `nodename`"),
            (
                "[network]\nclustr_cidr = \"10.0.0.0/8\"",
                "unknown field `clustr_cidr`",
            ),
            (
                "[network]\ncluster_cidr = \"10.244.0.0/33\"",
                "network.cluster_cidr: \"10.244.0.0/33\" is not an IPv4 CIDR",
            ),
            (
                "[network]\ncluster_cidr = \"10.244.1.0/16\"",
                "network.cluster_cidr: cluster CIDR 10.244.1.0/16 is not a network address",
            ),
            (
                "[network]\nnode_subnet_prefix = 8",
                "network.node_subnet_prefix: node subnet size /8",
            ),
            ("[network]\noverlay = \"ipip\"", "unknown variant `ipip`"),
            ("[bgp]\nas_number = 0", "bgp.as_number: 0 is reserved"),
            (
                "[bgp]\nrouter_id = \"1.2.3\"",
                "bgp.router_id: \"1.2.3\" is not an IPv4 address",
            ),
            ("[bgp]\nhold_seconds = 2", "bgp.hold_seconds: 2 is outside"),
            (
                "[bgp]\nkeepalive_seconds = 4",
                "bgp.keepalive_seconds: 4 is outside 1..=3",
            ),
            ("[bgp]\nrestart_seconds = 5000", "bgp.restart_seconds: 5000"),
            ("[bgp]\nlisten_port = 0", "bgp.listen_port: must not be 0"),
            (
                "[bgp]\npassword_file = \"/nonexistent/twill-bgp\"",
                "bgp.password_file: reading /nonexistent/twill-bgp",
            ),
            ("[bgp]\npeers = []", "unknown field `peers`"),
            ("[network]\nmtu = 100", "network.mtu: 100 is outside"),
            (
                "[network]\nvxlan_vni = 16777216",
                "network.vxlan_vni: 16777216 is outside",
            ),
            (
                "[network]\nvxlan_port = 0",
                "network.vxlan_port: must not be 0",
            ),
            (
                "[network]\nresync_seconds = 0",
                "network.resync_seconds: 0 is outside",
            ),
            (
                "[policy]\npeer_entries = 10",
                "policy.peer_entries: 10 is outside 1024..=16777216",
            ),
            ("[policy]\nports = 10", "unknown field `ports`"),
            (
                "[network]\nservice_cidr = \"10.244.128.0/20\"",
                "network.service_cidr: 10.244.128.0/20 overlaps the cluster CIDR",
            ),
            (
                "[network]\nunderlay_interface = \"a-name-that-is-too-long\"",
                "network.underlay_interface",
            ),
            (
                "[lease]\nttl_seconds = 1",
                "lease.ttl_seconds: 1 is outside 2..=3600",
            ),
            (
                "[etcd]\nendpoints = []",
                "etcd.endpoints: at least one endpoint",
            ),
            (
                "[etcd]\nendpoints = [\"127.0.0.1:2379\"]",
                "etcd.endpoints: \"127.0.0.1:2379\" is not an http",
            ),
            (
                "[etcd]\ncert_file = \"/c\"\nkey_file = \"/k\"",
                "etcd.ca_file: a client certificate needs ca_file",
            ),
            (
                "[paths]\nsocket = \"relative.sock\"",
                "paths.socket: relative.sock is not an absolute path",
            ),
            (
                "node_name = \"Node_1\"",
                "node_name: \"Node_1\" is not a valid node name",
            ),
            (
                "node_labels = { \"kubernetes.io/hostname\" = \"x\" }",
                "node_labels: kubernetes.io/hostname is always the node name and cannot be set",
            ),
            (
                "node_labels = { \"bad key\" = \"x\" }",
                "node_labels: \"bad key\": ",
            ),
            (
                "node_labels = { rack = \"-r1\" }",
                "node_labels: rack: \"-r1\": ",
            ),
            ("[lease]\nttl_seconds = \"ten\"", "invalid type"),
            (
                "[metrics]\nlisten = \"9962\"",
                "metrics.listen: \"9962\" is not an address and port",
            ),
            (
                "[metrics]\nlisten = \"localhost:9962\"",
                "metrics.listen: \"localhost:9962\" is not an address and port",
            ),
            (
                "[metrics]\nlisten = \"0.0.0.0:0\"",
                "metrics.listen: \"0.0.0.0:0\": the port must not be 0",
            ),
            (
                "[metrics]\nmap_walk_seconds = 0",
                "metrics.map_walk_seconds: 0 is outside 1..=3600",
            ),
            ("[metrics]\nport = 9962", "unknown field `port`"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("twilld.toml: "), "{text}: {err}");
            assert!(
                err.contains(expected),
                "{text}:\n  got {err}\n  want {expected}"
            );
        }
    }
}
