//! twill-dnsd's configuration: one TOML file plus command-line flags that override it.
//!
//! Parsing and validation are pure: [`Config::from_toml`] turns text into a checked
//! configuration or an error that names the key. Unknown keys are errors, so a typo never
//! silently falls back to a default. The one file the configuration may depend on, the
//! resolv.conf that gives the default upstreams, is read through a function the caller
//! passes in.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use twill_dns::{PodsMode, ZoneConfig};

use crate::forward::ForwardConfig;

/// Where the default upstreams come from.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

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

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    zone: Option<String>,
    ttl_seconds: Option<u32>,
    pods: Option<FilePods>,
    nameserver_ip: Option<String>,
    edns_udp_payload: Option<u16>,
    tcp_idle_timeout_seconds: Option<u64>,
    tcp_max_connections: Option<usize>,
    #[serde(default)]
    etcd: twill_store::EtcdSection,
    #[serde(default)]
    forward: FileForward,
    intercept: Option<FileIntercept>,
    #[serde(default)]
    fqdn: FileFqdn,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    records: FileRecords,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecords {
    enabled: Option<bool>,
    twilld_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFqdn {
    pin_dir: Option<PathBuf>,
    min_ttl_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIntercept {
    service_ip: Option<String>,
    pin_dir: Option<PathBuf>,
    backend: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FilePods {
    Disabled,
    Insecure,
    Verified,
}

impl From<FilePods> for PodsMode {
    fn from(p: FilePods) -> Self {
        match p {
            FilePods::Disabled => PodsMode::Disabled,
            FilePods::Insecure => PodsMode::Insecure,
            FilePods::Verified => PodsMode::Verified,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForward {
    upstreams: Option<Vec<String>>,
    resolv_conf: Option<PathBuf>,
    timeout_ms: Option<u64>,
    cache_entries: Option<usize>,
    serve_stale_seconds: Option<u64>,
    serve_stale_client_timeout_ms: Option<u64>,
    serve_stale_recheck_seconds: Option<u64>,
}

/// Values given on the command line; each one, when set, wins over the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Addresses to serve on (UDP and TCP on each), comma-separated `ip:port`.
    #[arg(long, value_delimiter = ',')]
    pub listen: Option<Vec<String>>,
    /// The cluster domain.
    #[arg(long)]
    pub zone: Option<String>,
    /// Pod records under `pod.<zone>`.
    #[arg(long, value_enum)]
    pub pods: Option<FilePods>,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Upstream resolvers, comma-separated `ip:port` (default: resolv.conf's nameservers).
    #[arg(long, value_delimiter = ',')]
    pub upstreams: Option<Vec<String>>,
    /// The resolv.conf the default upstreams come from.
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
}

/// Where the node's bpffs maps are pinned by default (twilld's default).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/twill";

/// Interception of pods' queries to the cluster DNS Service (`[intercept]`): while this
/// server serves, the node's eBPF programs send new flows to `service_ip:53` (UDP and TCP)
/// to `backend` instead of the Service's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterceptConfig {
    /// The cluster DNS Service's ClusterIP.
    pub service_ip: Ipv4Addr,
    /// The node's bpffs directory, where twilld pins the maps.
    pub pin_dir: PathBuf,
    /// Where intercepted queries go: one of this server's IPv4 listen addresses.
    pub backend: SocketAddrV4,
}

pub use twill_store::EtcdTls;

/// FQDNPolicy (`[fqdn]`): where the learned addresses go, and how long at least they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnConfig {
    /// The node's bpffs directory (default: `[intercept]`'s, else twilld's default).
    pub pin_dir: PathBuf,
    /// An address learned from an answer holds for the answer's TTL, but at least this.
    pub min_ttl: Duration,
}

/// The default [`FqdnConfig::min_ttl`].
pub const DEFAULT_FQDN_MIN_TTL: Duration = Duration::from_secs(60);

/// A checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP and TCP are served on each.
    pub listen: Vec<SocketAddr>,
    pub zone: ZoneConfig,
    pub etcd_endpoints: Vec<String>,
    pub etcd_tls: Option<EtcdTls>,
    pub etcd_timeout: Duration,
    pub forward: ForwardConfig,
    /// Where the default upstreams were read from; `None` when they were given.
    pub upstreams_from: Option<PathBuf>,
    /// A TCP connection with no new query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// At most this many TCP connections at once, over all listen addresses; more are
    /// closed as soon as they are accepted.
    pub tcp_max_connections: usize,
    /// `None`: no `[intercept]` section, queries reach this server only when sent to it.
    pub intercept: Option<InterceptConfig>,
    pub fqdn: FqdnConfig,
    /// Where `/metrics` is served (`[metrics] listen`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The node's twilld socket, which query records go to (`[records]`); `None`: no
    /// records (`records.enabled = false`).
    pub records: Option<PathBuf>,
}

impl Config {
    /// Parses `text` (named `source_name` in errors), applies `overrides`, and checks every
    /// value. `read_file` reads the resolv.conf when the upstreams are not given.
    pub fn from_toml(
        source_name: &str,
        text: &str,
        overrides: &Overrides,
        read_file: &dyn Fn(&Path) -> Result<String, String>,
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

        let listen_text = overrides.listen.clone().or(file.listen).unwrap_or_default();
        if listen_text.is_empty() {
            return Err(invalid(
                "listen",
                "at least one address is needed, e.g. [\"10.244.1.1:53\"]".into(),
            ));
        }
        let mut listen = Vec::new();
        for text in &listen_text {
            let addr: SocketAddr = text
                .parse()
                .map_err(|_| invalid("listen", format!("{text:?} is not an ip:port address")))?;
            if addr.port() == 0 {
                return Err(invalid("listen", format!("{text:?}: port 0")));
            }
            if listen.contains(&addr) {
                return Err(invalid("listen", format!("{text:?} is given twice")));
            }
            listen.push(addr);
        }

        let mut zone = ZoneConfig::default();
        if let Some(name) = overrides.zone.clone().or(file.zone) {
            zone.zone = name;
        }
        if let Some(ttl) = file.ttl_seconds {
            if !(1..=3600).contains(&ttl) {
                return Err(invalid("ttl_seconds", format!("{ttl} is outside 1..=3600")));
            }
            zone.ttl = ttl;
        }
        if let Some(pods) = overrides.pods.or(file.pods) {
            zone.pods = pods.into();
        }
        zone.nameserver_ip = match file.nameserver_ip {
            Some(text) => Some(text.parse().map_err(|_| {
                invalid("nameserver_ip", format!("{text:?} is not an IPv4 address"))
            })?),
            // The first IPv4 listen address is the server's own address, unless it is the
            // wildcard, which is no address to give out.
            None => listen.iter().find_map(|a| match a.ip() {
                IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
                _ => None,
            }),
        };
        if let Some(payload) = file.edns_udp_payload {
            if !(512..=4096).contains(&payload) {
                return Err(invalid(
                    "edns_udp_payload",
                    format!("{payload} is outside 512..=4096"),
                ));
            }
            zone.edns_udp_payload = payload;
        }
        // The zone name is checked where it is used, by building an empty zone.
        if let Err(e) = twill_dns::Zone::build(&zone, &twill_dns::ClusterSnapshot::default()) {
            return Err(invalid("zone", e.to_string()));
        }

        let tcp_idle = file.tcp_idle_timeout_seconds.unwrap_or(10);
        if !(1..=3600).contains(&tcp_idle) {
            return Err(invalid(
                "tcp_idle_timeout_seconds",
                format!("{tcp_idle} is outside 1..=3600"),
            ));
        }
        let tcp_max_connections = file.tcp_max_connections.unwrap_or(256);
        if !(1..=65_536).contains(&tcp_max_connections) {
            return Err(invalid(
                "tcp_max_connections",
                format!("{tcp_max_connections} is outside 1..=65536"),
            ));
        }

        let etcd = file
            .etcd
            .check(overrides.etcd_endpoints.clone())
            .map_err(|(key, message)| invalid(key, message))?;
        let (etcd_endpoints, etcd_tls, etcd_timeout) = (etcd.endpoints, etcd.tls, etcd.timeout);

        let (upstreams, upstreams_from) =
            match overrides.upstreams.clone().or(file.forward.upstreams) {
                Some(texts) => {
                    let mut upstreams = Vec::new();
                    for text in &texts {
                        let addr = parse_upstream(text).ok_or_else(|| {
                            invalid(
                                "forward.upstreams",
                                format!("{text:?} is not an ip or ip:port address"),
                            )
                        })?;
                        if loops_back(addr, &listen) {
                            return Err(invalid(
                                "forward.upstreams",
                                format!("{addr} is this server's own address"),
                            ));
                        }
                        upstreams.push(addr);
                    }
                    (upstreams, None)
                }
                None => {
                    let path = overrides
                        .resolv_conf
                        .clone()
                        .or(file.forward.resolv_conf)
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_RESOLV_CONF));
                    let text = read_file(&path).map_err(|e| {
                        invalid(
                            "forward.resolv_conf",
                            format!("reading {}: {e}", path.display()),
                        )
                    })?;
                    (upstreams_from_resolv_conf(&text, &listen), Some(path))
                }
            };
        let mut forward = ForwardConfig::new(upstreams);
        if let Some(ms) = file.forward.timeout_ms {
            if !(10..=30_000).contains(&ms) {
                return Err(invalid(
                    "forward.timeout_ms",
                    format!("{ms} is outside 10..=30000"),
                ));
            }
            forward.timeout = Duration::from_millis(ms);
        }
        if let Some(entries) = file.forward.cache_entries {
            if entries > 10_000_000 {
                return Err(invalid(
                    "forward.cache_entries",
                    format!("{entries} is more than 10000000"),
                ));
            }
            forward.cache_entries = entries;
        }
        if let Some(seconds) = file.forward.serve_stale_seconds {
            if seconds > 7 * 24 * 3600 {
                return Err(invalid(
                    "forward.serve_stale_seconds",
                    format!("{seconds} is more than a week"),
                ));
            }
            forward.stale_for = Duration::from_secs(seconds);
        }
        if let Some(ms) = file.forward.serve_stale_client_timeout_ms {
            if ms > 30_000 {
                return Err(invalid(
                    "forward.serve_stale_client_timeout_ms",
                    format!("{ms} is outside 0..=30000"),
                ));
            }
            forward.stale_client_timeout = Duration::from_millis(ms);
        }
        if let Some(seconds) = file.forward.serve_stale_recheck_seconds {
            if seconds > 3600 {
                return Err(invalid(
                    "forward.serve_stale_recheck_seconds",
                    format!("{seconds} is outside 0..=3600"),
                ));
            }
            forward.stale_recheck = Duration::from_secs(seconds);
        }

        let intercept = match file.intercept {
            None => None,
            Some(section) => Some(intercept_config(section, &listen, &invalid)?),
        };

        let min_ttl = match file.fqdn.min_ttl_seconds {
            None => DEFAULT_FQDN_MIN_TTL,
            Some(s) if s <= 24 * 3600 => Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(
                    "fqdn.min_ttl_seconds",
                    format!("{s} is more than a day"),
                ));
            }
        };
        let fqdn = FqdnConfig {
            pin_dir: file
                .fqdn
                .pin_dir
                .or_else(|| intercept.as_ref().map(|i| i.pin_dir.clone()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            min_ttl,
        };

        let metrics_listen = match file.metrics.listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{text:?} is not an address with a port, like \"10.0.0.1:9153\""),
                )
            })?),
        };

        let records = match file.records.enabled {
            Some(false) => None,
            _ => Some(
                file.records
                    .twilld_socket
                    .unwrap_or_else(|| PathBuf::from(twill_api::DEFAULT_SOCKET)),
            ),
        };

        Ok(Config {
            intercept,
            fqdn,
            metrics_listen,
            records,
            listen,
            zone,
            etcd_endpoints,
            etcd_tls,
            etcd_timeout,
            forward,
            upstreams_from,
            tcp_idle_timeout: Duration::from_secs(tcp_idle),
            tcp_max_connections,
        })
    }
}

fn intercept_config(
    section: FileIntercept,
    listen: &[SocketAddr],
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<InterceptConfig, ConfigError> {
    let text = section.service_ip.ok_or_else(|| {
        invalid(
            "intercept.service_ip",
            "the cluster DNS Service's IP is needed, e.g. \"10.96.0.10\"".into(),
        )
    })?;
    let service_ip: Ipv4Addr = text.parse().map_err(|_| {
        invalid(
            "intercept.service_ip",
            format!("{text:?} is not an IPv4 address"),
        )
    })?;
    let backend = match section.backend {
        Some(text) => text.parse::<SocketAddrV4>().map_err(|_| {
            invalid(
                "intercept.backend",
                format!("{text:?} is not an IPv4 ip:port address"),
            )
        })?,
        None => listen
            .iter()
            .find_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            })
            .ok_or_else(|| {
                invalid(
                    "intercept.backend",
                    "no IPv4 listen address to send queries to; give one".into(),
                )
            })?,
    };
    if backend.ip().is_unspecified() || backend.port() == 0 {
        return Err(invalid(
            "intercept.backend",
            format!("{backend}: a wildcard address or port 0 is no place to send queries"),
        ));
    }
    let served = listen.iter().any(|l| {
        l.port() == backend.port()
            && (l.ip() == IpAddr::V4(*backend.ip()) || l.ip().is_unspecified())
    });
    if !served {
        return Err(invalid(
            "intercept.backend",
            format!("{backend} is not one of the listen addresses"),
        ));
    }
    Ok(InterceptConfig {
        service_ip,
        pin_dir: section
            .pin_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
        backend,
    })
}

/// `ip:port`, `[ipv6]:port`, or a bare address (port 53).
fn parse_upstream(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .ok()
        .or_else(|| Some(SocketAddr::new(text.parse::<IpAddr>().ok()?, 53)))
}

/// Whether a query sent to `upstream` would reach this server itself: `upstream` is one
/// of the listen addresses, or a loopback address on a port the server listens on with a
/// wildcard (`0.0.0.0` or `::`; on Linux `::` takes IPv4 as well, so either covers both
/// families). A wildcard also takes the host's other addresses; those cannot be told from
/// the text alone and are not excluded.
fn loops_back(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        l.port() == upstream.port()
            && (l.ip() == upstream.ip() || (upstream.ip().is_loopback() && l.ip().is_unspecified()))
    })
}

/// The `nameserver` lines of a resolv.conf, as upstreams on port 53, without those that
/// would send queries back to this server ([`loops_back`]: one of its listen addresses, or
/// a loopback address when it listens on port 53 of a wildcard address).
/// Scoped IPv6 addresses (`fe80::1%eth0`) are left out.
pub fn upstreams_from_resolv_conf(text: &str, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if !loops_back(addr, listen) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESOLV: &str = "# generated\nsearch example.org\nnameserver 10.0.0.2\n\
                          nameserver 127.0.0.53\n; comment\nnameserver 10.244.1.1\n\
                          nameserver fe80::1%eth0\nnameserver 2001:db8::1\noptions ndots:2\n";

    fn read(path: &Path) -> Result<String, String> {
        if path == Path::new("/etc/resolv.conf") || path == Path::new("/tmp/r.conf") {
            Ok(RESOLV.to_owned())
        } else {
            Err("No such file or directory (os error 2)".to_owned())
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml("t.toml", text, &Overrides::default(), &read)
    }

    fn key_of(text: &str) -> &'static str {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text:?}: expected an invalid key, got {other:?}"),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_with_only_listen() {
        let c = parse("listen = [\"10.244.1.1:53\"]").unwrap();
        assert_eq!(c.listen, [addr("10.244.1.1:53")]);
        assert_eq!(c.zone.zone, "cluster.local");
        assert_eq!(c.zone.ttl, 5);
        assert_eq!(c.zone.pods, PodsMode::Disabled);
        assert_eq!(c.zone.nameserver_ip, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(c.etcd_endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.etcd_tls, None);
        assert_eq!(c.etcd_timeout, Duration::from_secs(5));
        // 10.244.1.1 is this server; the loopback resolver is another one (the server
        // does not listen on loopback); the scoped address is left out.
        assert_eq!(
            c.forward.upstreams,
            [
                addr("10.0.0.2:53"),
                addr("127.0.0.53:53"),
                addr("[2001:db8::1]:53")
            ]
        );
        assert_eq!(c.upstreams_from, Some(PathBuf::from("/etc/resolv.conf")));
        assert_eq!(c.forward.timeout, Duration::from_secs(2));
        assert_eq!(c.forward.stale_client_timeout, Duration::from_millis(400));
        assert_eq!(c.forward.stale_recheck, Duration::from_secs(30));
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(10));
        assert_eq!(c.tcp_max_connections, 256);
    }

    #[test]
    fn everything_set() {
        let c = parse(
            r#"
listen = ["10.244.1.1:53", "127.0.0.1:5353"]
zone = "example.internal"
ttl_seconds = 30
pods = "verified"
nameserver_ip = "10.96.0.10"
edns_udp_payload = 1400
tcp_idle_timeout_seconds = 3
tcp_max_connections = 8
[etcd]
endpoints = ["https://10.0.0.1:2379"]
ca_file = "/ca.pem"
cert_file = "/c.pem"
key_file = "/k.pem"
timeout_seconds = 2
[forward]
upstreams = ["1.1.1.1", "9.9.9.9:5353", "[2001:db8::53]:53"]
timeout_ms = 500
cache_entries = 100
serve_stale_seconds = 60
serve_stale_client_timeout_ms = 0
serve_stale_recheck_seconds = 5
"#,
        )
        .unwrap();
        assert_eq!(c.zone.zone, "example.internal");
        assert_eq!(c.zone.ttl, 30);
        assert_eq!(c.zone.pods, PodsMode::Verified);
        assert_eq!(c.zone.nameserver_ip, Some("10.96.0.10".parse().unwrap()));
        assert_eq!(c.zone.edns_udp_payload, 1400);
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(3));
        assert_eq!(c.tcp_max_connections, 8);
        assert_eq!(
            c.etcd_tls,
            Some(EtcdTls {
                ca_file: "/ca.pem".into(),
                cert_file: Some("/c.pem".into()),
                key_file: Some("/k.pem".into()),
            })
        );
        assert_eq!(c.etcd_timeout, Duration::from_secs(2));
        assert_eq!(
            c.forward.upstreams,
            [
                addr("1.1.1.1:53"),
                addr("9.9.9.9:5353"),
                addr("[2001:db8::53]:53")
            ]
        );
        assert_eq!(c.upstreams_from, None);
        assert_eq!(c.forward.timeout, Duration::from_millis(500));
        assert_eq!(c.forward.cache_entries, 100);
        assert_eq!(c.forward.stale_for, Duration::from_secs(60));
        assert_eq!(c.forward.stale_client_timeout, Duration::ZERO);
        assert_eq!(c.forward.stale_recheck, Duration::from_secs(5));
    }

    #[test]
    fn intercept_section() {
        let l = "listen = [\"10.0.0.5:53\"]\n";
        assert_eq!(parse(l).unwrap().intercept, None);
        let c = parse(&format!("{l}[intercept]\nservice_ip = \"10.96.0.10\"\n")).unwrap();
        assert_eq!(
            c.intercept,
            Some(InterceptConfig {
                service_ip: "10.96.0.10".parse().unwrap(),
                pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
                backend: "10.0.0.5:53".parse().unwrap(),
            })
        );
        for (section, key) in [
            ("[intercept]\n", "intercept.service_ip"),
            ("[intercept]\nservice_ip = \"x\"\n", "intercept.service_ip"),
            (
                "[intercept]\nservice_ip = \"10.96.0.10\"\nbackend = \"10.0.0.6:53\"\n",
                "intercept.backend",
            ),
        ] {
            assert_eq!(key_of(&format!("{l}{section}")), key, "{section}");
        }
    }

    #[test]
    fn records_go_to_twilld_unless_turned_off() {
        let l = "listen = [\"10.244.1.1:53\"]\n";
        assert_eq!(
            parse(l).unwrap().records,
            Some(PathBuf::from("/run/twill/twilld.sock"))
        );
        let c = parse(&format!("{l}[records]\ntwilld_socket = \"/tmp/t.sock\"\n")).unwrap();
        assert_eq!(c.records, Some(PathBuf::from("/tmp/t.sock")));
        let c = parse(&format!("{l}[records]\nenabled = false\n")).unwrap();
        assert_eq!(c.records, None);
        let err = parse(&format!("{l}[records]\nsocket = \"/x\"\n")).unwrap_err();
        assert!(err.to_string().contains("socket"), "{err}");
    }

    #[test]
    fn metrics_section() {
        let l = "listen = [\"10.244.1.1:53\"]\n";
        assert_eq!(parse(l).unwrap().metrics_listen, None);
        let c = parse(&format!("{l}[metrics]\nlisten = \"127.0.0.1:9153\"\n")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9153".parse().unwrap()));
    }

    #[test]
    fn fqdn_section() {
        let l = "listen = [\"10.0.0.5:53\"]\n";
        let c = parse(l).unwrap();
        assert_eq!(c.fqdn.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(c.fqdn.min_ttl, DEFAULT_FQDN_MIN_TTL);
        let c = parse(&format!(
            "{l}[intercept]\nservice_ip = \"10.96.0.10\"\npin_dir = \"/sys/fs/bpf/x\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.fqdn.pin_dir,
            PathBuf::from("/sys/fs/bpf/x"),
            "intercept's pins"
        );
        let c = parse(&format!(
            "{l}[fqdn]\nmin_ttl_seconds = 2\npin_dir = \"/p\"\n"
        ))
        .unwrap();
        assert_eq!(c.fqdn.min_ttl, Duration::from_secs(2));
        assert_eq!(c.fqdn.pin_dir, PathBuf::from("/p"));
        assert_eq!(
            key_of(&format!("{l}[fqdn]\nmin_ttl_seconds = 100000\n")),
            "fqdn.min_ttl_seconds"
        );
    }

    #[test]
    fn every_error_names_its_key() {
        let l = "listen = [\"10.244.1.1:53\"]\n";
        let cases: &[(&str, &str)] = &[
            ("", "listen"),
            ("listen = []", "listen"),
            ("listen = [\"10.244.1.1\"]", "listen"),
            ("listen = [\"10.244.1.1:0\"]", "listen"),
            ("listen = [\"10.244.1.1:53\", \"10.244.1.1:53\"]", "listen"),
            ("zone = \"bad..name\"", "zone"),
            ("ttl_seconds = 0", "ttl_seconds"),
            ("nameserver_ip = \"::1\"", "nameserver_ip"),
            ("edns_udp_payload = 100", "edns_udp_payload"),
            ("tcp_idle_timeout_seconds = 0", "tcp_idle_timeout_seconds"),
            ("tcp_max_connections = 0", "tcp_max_connections"),
            ("[etcd]\nendpoints = []", "etcd.endpoints"),
            ("[etcd]\nendpoints = [\"10.0.0.1:2379\"]", "etcd.endpoints"),
            (
                "[etcd]\ncert_file = \"/c\"\nkey_file = \"/k\"",
                "etcd.ca_file",
            ),
            (
                "[etcd]\nca_file = \"/a\"\ncert_file = \"/c\"",
                "etcd.cert_file",
            ),
            ("[etcd]\ntimeout_seconds = 0", "etcd.timeout_seconds"),
            (
                "[forward]\nupstreams = [\"dns.google\"]",
                "forward.upstreams",
            ),
            (
                "[forward]\nupstreams = [\"10.244.1.1\"]",
                "forward.upstreams",
            ),
            ("[forward]\nresolv_conf = \"/nope\"", "forward.resolv_conf"),
            ("[forward]\ntimeout_ms = 1", "forward.timeout_ms"),
            (
                "[forward]\ncache_entries = 99999999",
                "forward.cache_entries",
            ),
            (
                "[forward]\nserve_stale_seconds = 99999999",
                "forward.serve_stale_seconds",
            ),
            (
                "[forward]\nserve_stale_client_timeout_ms = 30001",
                "forward.serve_stale_client_timeout_ms",
            ),
            (
                "[forward]\nserve_stale_recheck_seconds = 3601",
                "forward.serve_stale_recheck_seconds",
            ),
            ("[metrics]\nlisten = \"10.0.0.1\"", "metrics.listen"),
        ];
        for (text, key) in cases {
            let text = if *key == "listen" {
                text.to_string()
            } else {
                format!("{l}{text}")
            };
            assert_eq!(key_of(&text), *key, "{text:?}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_named() {
        for (text, word) in [
            ("listen = [\"10.244.1.1:53\"]\nttl = 5", "ttl"),
            (
                "listen = [\"10.244.1.1:53\"]\n[forward]\ncache = 1",
                "cache",
            ),
            ("listen = [\"10.244.1.1:53\"]\npods = \"all\"", "pods"),
            ("listen = \"10.244.1.1:53\"", "listen"),
            (
                "listen = [\"10.244.1.1:53\"]\n[forward]\nserve_stale_client_timeout_ms = -1",
                "serve_stale_client_timeout_ms",
            ),
        ] {
            let Err(ConfigError::Parse { message, .. }) = parse(text) else {
                panic!("{text:?} parsed");
            };
            assert!(message.contains(word), "{text:?}: {message}");
        }
    }

    #[test]
    fn overrides_win() {
        let overrides = Overrides {
            listen: Some(vec!["127.0.0.1:5300".into()]),
            zone: Some("k.test".into()),
            pods: Some(FilePods::Insecure),
            etcd_endpoints: Some(vec!["http://10.0.0.9:2379".into()]),
            upstreams: None,
            resolv_conf: Some("/tmp/r.conf".into()),
        };
        let c = Config::from_toml(
            "t.toml",
            "listen = [\"10.244.1.1:53\"]\nzone = \"cluster.local\"",
            &overrides,
            &read,
        )
        .unwrap();
        assert_eq!(c.listen, [addr("127.0.0.1:5300")]);
        assert_eq!(c.zone.zone, "k.test");
        assert_eq!(c.zone.pods, PodsMode::Insecure);
        assert_eq!(c.etcd_endpoints, ["http://10.0.0.9:2379"]);
        assert_eq!(c.upstreams_from, Some(PathBuf::from("/tmp/r.conf")));
        // Listening on loopback port 5300 does not catch 127.0.0.53:53.
        assert!(c.forward.upstreams.contains(&addr("127.0.0.53:53")));
        assert!(c.forward.upstreams.contains(&addr("10.244.1.1:53")));
    }

    #[test]
    fn resolv_conf_upstreams_never_loop_back() {
        let text = "nameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\n\
                    nameserver 10.0.0.2\nnameserver 10.96.0.10\nnameserver junk\n";
        // A wildcard on port 53 takes every loopback address.
        assert_eq!(
            upstreams_from_resolv_conf(text, &[addr("0.0.0.0:53")]),
            [addr("10.0.0.2:53"), addr("10.96.0.10:53")]
        );
        // A socket bound to 127.0.0.1 gets nothing sent to 127.0.0.53: only the exact
        // listen addresses are taken out.
        assert_eq!(
            upstreams_from_resolv_conf(text, &[addr("127.0.0.1:53"), addr("10.96.0.10:53")]),
            [addr("127.0.0.53:53"), addr("[::1]:53"), addr("10.0.0.2:53")]
        );
        assert_eq!(
            upstreams_from_resolv_conf("nameserver 127.0.0.1\n", &[addr("127.0.0.1:53")]),
            []
        );
        // On another port, nothing in resolv.conf (always port 53) reaches the server.
        assert_eq!(
            upstreams_from_resolv_conf(text, &[addr("0.0.0.0:5353")]),
            [
                addr("127.0.0.53:53"),
                addr("[::1]:53"),
                addr("10.0.0.2:53"),
                addr("10.96.0.10:53")
            ]
        );
    }
}
