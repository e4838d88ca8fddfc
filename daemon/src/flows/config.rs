//! The `[flows]` section of `twilld.toml`: what the datapath records, how big its ring is,
//! how many records the daemon keeps, the optional JSON lines file and the optional TCP
//! listener for other nodes' `netctl monitor`. Pure: checked here, each error naming its
//! key (`flows.ring_bytes: ...`).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;
use twill_abi::flow::{
    DEFAULT_RING_BYTES, FLOW_MODE_CONNECTIONS, FLOW_MODE_OFF, FLOW_MODE_PACKETS,
};

/// Records kept in memory unless `flows.keep` says otherwise.
pub const DEFAULT_KEEP: u32 = 10_000;
/// Bounds of `flows.keep`.
pub const KEEP: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// Bounds of `flows.ring_bytes` (a power of two, at least a page; the kernel's limit on a
/// ring buffer is far above the upper bound).
pub const RING_BYTES: std::ops::RangeInclusive<u32> = 4096..=(1 << 30);
/// The file is rotated (to `<file>.1`) once it would grow past this, unless
/// `flows.file_max_bytes` says otherwise.
pub const DEFAULT_FILE_MAX_BYTES: u64 = 64 << 20;
/// The smallest `flows.file_max_bytes`.
pub const MIN_FILE_MAX_BYTES: u64 = 4096;

/// What the programs record (`twill_abi::flow::FLOW_MODE_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowMode {
    Off,
    /// New connections, drops and refusals.
    #[default]
    Connections,
    /// Every packet (for debugging: it costs a record per packet).
    Packets,
}

impl FlowMode {
    /// The value the programs read from `TWILL_FLOW_CONF`.
    pub fn code(self) -> u32 {
        match self {
            FlowMode::Off => FLOW_MODE_OFF,
            FlowMode::Connections => FLOW_MODE_CONNECTIONS,
            FlowMode::Packets => FLOW_MODE_PACKETS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FlowMode::Off => "off",
            FlowMode::Connections => "connections",
            FlowMode::Packets => "packets",
        }
    }
}

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFlows {
    mode: Option<FlowMode>,
    ring_bytes: Option<u32>,
    keep: Option<u32>,
    file: Option<PathBuf>,
    file_max_bytes: Option<u64>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

/// The checked section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowsConfig {
    pub mode: FlowMode,
    /// `TWILL_FLOWS`'s size in bytes.
    pub ring_bytes: u32,
    /// Records kept in memory for `netctl monitor`.
    pub keep: u32,
    /// JSON lines, one record a line; `None`: no file.
    pub file: Option<PathBuf>,
    pub file_max_bytes: u64,
    /// The TCP listener for the flow API (`flows.listen`) and the file with its token;
    /// `None`: records are served on the unix socket only.
    pub remote: Option<RemoteFlows>,
}

/// The flow API over TCP (`twill_api::remote`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFlows {
    pub listen: SocketAddr,
    /// Read at start: a client must send its first line.
    pub token_file: PathBuf,
}

impl RemoteFlows {
    /// The address other nodes reach the listener at: `listen`, with an unspecified
    /// address (`0.0.0.0`) replaced by the node's underlay address; `None` for a loopback
    /// one (only this node reaches it, e.g. behind a TLS proxy), which is not published.
    pub fn advertised(&self, underlay: std::net::Ipv4Addr) -> Option<SocketAddr> {
        if self.listen.ip().is_loopback() {
            None
        } else if self.listen.ip().is_unspecified() {
            Some(SocketAddr::new(IpAddr::V4(underlay), self.listen.port()))
        } else {
            Some(self.listen)
        }
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            mode: FlowMode::Connections,
            ring_bytes: DEFAULT_RING_BYTES,
            keep: DEFAULT_KEEP,
            file: None,
            file_max_bytes: DEFAULT_FILE_MAX_BYTES,
            remote: None,
        }
    }
}

impl FileFlows {
    /// The checked section, or the key that is wrong and why.
    pub fn check(self) -> Result<FlowsConfig, (&'static str, String)> {
        let defaults = FlowsConfig::default();
        let ring_bytes = self.ring_bytes.unwrap_or(defaults.ring_bytes);
        if !RING_BYTES.contains(&ring_bytes) || !ring_bytes.is_power_of_two() {
            return Err((
                "flows.ring_bytes",
                format!(
                    "{ring_bytes} is not a power of two in {}..={}",
                    RING_BYTES.start(),
                    RING_BYTES.end()
                ),
            ));
        }
        let keep = self.keep.unwrap_or(defaults.keep);
        if !KEEP.contains(&keep) {
            return Err((
                "flows.keep",
                format!("{keep} is outside {}..={}", KEEP.start(), KEEP.end()),
            ));
        }
        let file = match self.file {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) if !path.is_absolute() => {
                return Err((
                    "flows.file",
                    format!("{} is not an absolute path", path.display()),
                ));
            }
            other => other,
        };
        let file_max_bytes = self.file_max_bytes.unwrap_or(defaults.file_max_bytes);
        if file_max_bytes < MIN_FILE_MAX_BYTES {
            return Err((
                "flows.file_max_bytes",
                format!("{file_max_bytes} is less than {MIN_FILE_MAX_BYTES}"),
            ));
        }
        let remote = match (self.listen.as_deref(), self.token_file) {
            (None | Some(""), None) => None,
            (None | Some(""), Some(_)) => {
                return Err((
                    "flows.token_file",
                    "is set without flows.listen (the token is only for the TCP listener)"
                        .to_owned(),
                ));
            }
            (Some(text), token_file) => {
                let listen: SocketAddr = text.parse().map_err(|_| {
                    (
                        "flows.listen",
                        format!(
                            "{text:?} is not an address and port (\"IP:PORT\", e.g. \"0.0.0.0:{}\")",
                            twill_api::remote::DEFAULT_FLOWS_PORT
                        ),
                    )
                })?;
                if listen.port() == 0 {
                    return Err(("flows.listen", format!("{text:?}: the port must not be 0")));
                }
                let Some(token_file) = token_file else {
                    return Err((
                        "flows.token_file",
                        "is needed with flows.listen: the listener serves only clients that \
                         send this token"
                            .to_owned(),
                    ));
                };
                if !token_file.is_absolute() {
                    return Err((
                        "flows.token_file",
                        format!("{} is not an absolute path", token_file.display()),
                    ));
                }
                Some(RemoteFlows { listen, token_file })
            }
        };
        Ok(FlowsConfig {
            mode: self.mode.unwrap_or(defaults.mode),
            ring_bytes,
            keep,
            file,
            file_max_bytes,
            remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml("twilld.toml", text, &Overrides::default(), "host-a")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_record_connections_in_a_4_mib_ring() {
        let c = parse("").unwrap();
        assert_eq!(c.flows, FlowsConfig::default());
        assert_eq!(c.flows.mode.code(), FLOW_MODE_CONNECTIONS);
        assert_eq!(c.map_sizes.flow_ring_bytes, 4 << 20);
        assert_eq!(c.flows.keep, 10_000);
        assert_eq!(c.flows.file, None);
    }

    #[test]
    fn the_section_reaches_the_ring_size_and_the_file() {
        let c = parse(
            "[flows]\nmode = \"packets\"\nring_bytes = 4096\nkeep = 5\n\
             file = \"/var/log/twill/flows.jsonl\"\nfile_max_bytes = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.flows.mode, FlowMode::Packets);
        assert_eq!(c.map_sizes.flow_ring_bytes, 4096);
        assert_eq!(c.flows.keep, 5);
        assert_eq!(
            c.flows.file.as_deref(),
            Some(std::path::Path::new("/var/log/twill/flows.jsonl"))
        );
        assert_eq!(c.flows.file_max_bytes, 1 << 20);
        assert_eq!(c.flows.remote, None);
        let remote =
            parse("[flows]\nlisten = \"0.0.0.0:9963\"\ntoken_file = \"/etc/twill/flows.token\"\n")
                .unwrap()
                .flows
                .remote
                .unwrap();
        assert_eq!(remote.listen, "0.0.0.0:9963".parse().unwrap());
        assert_eq!(
            remote.advertised("172.30.0.12".parse().unwrap()),
            Some("172.30.0.12:9963".parse().unwrap())
        );
        let own: RemoteFlows = RemoteFlows {
            listen: "10.0.0.5:9963".parse().unwrap(),
            ..remote
        };
        assert_eq!(
            own.advertised("172.30.0.12".parse().unwrap()),
            Some(own.listen)
        );
        let local = RemoteFlows {
            listen: "127.0.0.1:9963".parse().unwrap(),
            ..own
        };
        assert_eq!(local.advertised("172.30.0.12".parse().unwrap()), None);
        let off = parse("[flows]\nmode = \"off\"\nfile = \"\"\n").unwrap();
        assert_eq!(
            (off.flows.mode.code(), off.flows.file),
            (FLOW_MODE_OFF, None)
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[flows]\nring_bytes = 5000",
                "flows.ring_bytes: 5000 is not a power of two in 4096..=1073741824",
            ),
            (
                "[flows]\nring_bytes = 2048",
                "flows.ring_bytes: 2048 is not a power of two",
            ),
            ("[flows]\nkeep = 0", "flows.keep: 0 is outside 1..=1000000"),
            (
                "[flows]\nfile = \"flows.jsonl\"",
                "flows.file: flows.jsonl is not an absolute path",
            ),
            (
                "[flows]\nfile_max_bytes = 10",
                "flows.file_max_bytes: 10 is less than 4096",
            ),
            (
                "[flows]\nlisten = \"0.0.0.0:9963\"",
                "flows.token_file: is needed with flows.listen",
            ),
            (
                "[flows]\ntoken_file = \"/etc/twill/flows.token\"",
                "flows.token_file: is set without flows.listen",
            ),
            (
                "[flows]\nlisten = \"9963\"\ntoken_file = \"/t\"",
                "flows.listen: \"9963\" is not an address and port",
            ),
            (
                "[flows]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"/t\"",
                "flows.listen: \"0.0.0.0:0\": the port must not be 0",
            ),
            (
                "[flows]\nlisten = \"0.0.0.0:9963\"\ntoken_file = \"token\"",
                "flows.token_file: token is not an absolute path",
            ),
            ("[flows]\nmode = \"all\"", "unknown variant `all`"),
            ("[flows]\nsize = 1", "unknown field `size`"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("twilld.toml: "), "{text}: {err}");
            assert!(
                err.contains(expected),
                "{text}:\n  got {err}\n  want {expected}"
            );
        }
    }
}
