//! The CNI specification as plain data: commands, environment, network configuration,
//! versions, errors and results. No I/O here: every rule is a unit test away.
//!
//! Supports configs declaring 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0, and prints results in
//! the version the config asked for.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use serde_json::{Map, Value, json};
use twill_api::AttachmentKey;

/// Spec versions accepted in a config, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const CURRENT_VERSION: &str = "1.1.0";

/// Error codes from the spec, and twill's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: cannot serve ADD, and existing pods may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// ADD: the interface name is already taken inside the pod's namespace.
    pub const INTERFACE_EXISTS: u32 = 100;
    /// CHECK: what ADD made is missing or changed.
    pub const CHECK_FAILED: u32 = 101;
    /// Wiring the pod failed (a netlink step); everything made was undone.
    pub const WIRING_FAILED: u32 = 102;
}

/// An error as the spec prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON, in `version` (the config's, when it was readable).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// A spec version, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u32, u32, u32);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The oldest config version that has this command.
    fn since(self) -> Option<Version> {
        match self {
            Command::Check => Some(Version::V0_4_0),
            Command::Status | Command::Gc => Some(Version::V1_1_0),
            _ => None,
        }
    }
}

/// What the runtime put in the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub container_id: String,
    /// Empty on DEL when the namespace is already gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE/K8S_POD_NAME` from CNI_ARGS, when both are there.
    pub pod: Option<String>,
}

impl Env {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Reads the command and the variables it needs. Empty counts as unset (runtimes export
/// every variable, empty when it does not apply).
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<(Command, Env), CniError> {
    let var = |name: &str| get(name).filter(|v| !v.is_empty());
    let command_text = var("CNI_COMMAND").ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "missing required environment variable CNI_COMMAND",
        )
    })?;
    let command = Command::parse(&command_text).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_COMMAND {command_text:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
            ),
        )
    })?;
    let required: &[&str] = match command {
        Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        Command::Version | Command::Status | Command::Gc => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|n| var(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "missing required environment variable{} {} for {command_text}",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            ),
        ));
    }
    let mut env = Env {
        container_id: var("CNI_CONTAINERID").unwrap_or_default(),
        netns: var("CNI_NETNS").map(PathBuf::from),
        ifname: var("CNI_IFNAME").unwrap_or_default(),
        pod: None,
    };
    if !required.is_empty() {
        check_container_id(&env.container_id)?;
        check_ifname(&env.ifname)?;
    }
    if let Some(args) = var("CNI_ARGS") {
        let mut namespace = None;
        let mut name = None;
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                )
            })?;
            match k {
                "K8S_POD_NAMESPACE" => namespace = Some(v.to_owned()),
                "K8S_POD_NAME" => name = Some(v.to_owned()),
                _ => {} // IgnoreUnknown, K8S_POD_UID, ...: not ours to judge.
            }
        }
        if let (Some(ns), Some(n)) = (namespace, name) {
            env.pod = Some(format!("{ns}/{n}"));
        }
    }
    Ok((command, env))
}

fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and \
                 hold only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_IFNAME {name:?} is not a valid interface name (1-15 characters, no '/', \
                 ':' or spaces)"
            ),
        ))
    }
}

/// DNS settings handed through to the result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The network configuration twill reads from stdin.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub version: String,
    pub name: String,
    /// twilld's socket.
    pub socket: PathBuf,
    /// twilld's state directory, where DEL queues releases while the daemon is down.
    pub state_dir: PathBuf,
    /// Pod MTU; default: what the daemon says (underlay MTU minus the overlay's overhead).
    pub mtu: Option<u32>,
    pub dns: Option<Dns>,
    /// Where to append log lines; default stderr.
    pub log_file: Option<PathBuf>,
    pub prev_result: Option<Value>,
    /// GC's valid attachments (either spelling of the key); `None` when neither is given.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/twill";

/// Keys twill reads, and keys the spec lets the runtime add.
const KNOWN_KEYS: [&str; 15] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "prevResult",
    "runtimeConfig",
    "args",
    "capabilities",
    "disableCheck",
    "disableGC",
    "socket",
    "stateDir",
    "mtu",
    "dns",
    "logFile",
];

/// The config's version, as far as it can be read: errors are printed in it.
pub fn config_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    Some(v.get("cniVersion")?.as_str()?.to_owned())
}

/// Parses and checks the network configuration for `command`.
pub fn parse_config(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("the network configuration is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(conf) = value else {
        return Err(CniError::new(
            code::DECODE_FAILURE,
            "the network configuration must be a JSON object",
        ));
    };
    let version = match conf.get("cniVersion") {
        None => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "cniVersion is missing from the network configuration",
            )
            .with_details(format!("twill supports {}", SUPPORTED_VERSIONS.join(", "))));
        }
        Some(Value::String(v)) => v.clone(),
        Some(other) => {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                format!("cniVersion must be a string, not {other}"),
            ));
        }
    };
    let parsed = Version::parse(&version).ok_or_else(|| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("cniVersion {version:?} is not a version like 1.1.0"),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version: cniVersion {version} is not supported"),
        )
        .with_details(format!("twill supports {}", SUPPORTED_VERSIONS.join(", "))));
    }
    if let Some(since) = command.since()
        && parsed < since
    {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version} does not have the {command:?} command"),
        )
        .with_details(format!(
            "{} needs cniVersion {}.{}.{} or later",
            format!("{command:?}").to_uppercase(),
            since.0,
            since.1,
            since.2
        )));
    }
    for key in conf.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) && !key.starts_with("cni.dev/") {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field {key:?} in the network configuration"),
            )
            .with_details(format!("twill reads {}", KNOWN_KEYS[10..].join(", "))));
        }
    }
    let invalid = |field: &str, why: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {field}: {why}"),
        )
    };
    let name = match conf.get("name") {
        Some(Value::String(n)) if valid_network_name(n) => n.clone(),
        Some(Value::String(n)) => {
            return Err(invalid(
                "name",
                format!(
                    "{n:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
                ),
            ));
        }
        Some(other) => return Err(invalid("name", format!("must be a string, not {other}"))),
        None => return Err(invalid("name", "missing".to_owned())),
    };
    if let Some(t) = conf.get("type")
        && t != "twill"
    {
        return Err(invalid("type", format!("{t} is not \"twill\"")));
    }
    let path = |field: &str, default: Option<&str>| -> Result<Option<PathBuf>, CniError> {
        match conf.get(field) {
            None => Ok(default.map(PathBuf::from)),
            Some(Value::String(p)) if p.starts_with('/') => Ok(Some(PathBuf::from(p))),
            Some(other) => Err(invalid(field, format!("{other} is not an absolute path"))),
        }
    };
    let socket = path("socket", Some(twill_api::DEFAULT_SOCKET))?.expect("has a default");
    let state_dir = path("stateDir", Some(DEFAULT_STATE_DIR))?.expect("has a default");
    let log_file = path("logFile", None)?;
    let mtu = match conf.get("mtu") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(m) if (576..=65535).contains(&m) => Some(m as u32),
            _ => {
                return Err(invalid(
                    "mtu",
                    format!("{v} is not an integer in 576..=65535"),
                ));
            }
        },
    };
    let dns = match conf.get("dns") {
        None => None,
        Some(Value::Object(d)) => Some(parse_dns(d).map_err(|(f, why)| invalid(&f, why))?),
        Some(other) => return Err(invalid("dns", format!("{other} is not an object"))),
    };
    let prev_result = match conf.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => return Err(invalid("prevResult", format!("{other} is not an object"))),
    };
    let mut valid: Option<BTreeSet<AttachmentKey>> = None;
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        match conf.get(key) {
            None => {}
            Some(Value::Null) => {
                valid.get_or_insert_with(BTreeSet::new);
            }
            Some(Value::Array(items)) => {
                let set = valid.get_or_insert_with(BTreeSet::new);
                for (i, item) in items.iter().enumerate() {
                    let field = |f: &str| {
                        item.get(f)
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                invalid(
                                    &format!("{key}[{i}].{f}"),
                                    "missing or not a string".to_owned(),
                                )
                            })
                    };
                    set.insert(AttachmentKey {
                        container_id: field("containerID")?,
                        ifname: field("ifname")?,
                    });
                }
            }
            Some(other) => return Err(invalid(key, format!("{other} is not a list"))),
        }
    }
    Ok(NetConf {
        version,
        name,
        socket,
        state_dir,
        mtu,
        dns,
        log_file,
        prev_result,
        valid_attachments: valid.map(|s| s.into_iter().collect()),
    })
}

fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_dns(d: &Map<String, Value>) -> Result<Dns, (String, String)> {
    let strings = |key: &str| -> Result<Vec<String>, (String, String)> {
        match d.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| (format!("dns.{key}[{i}]"), format!("{v} is not a string")))
                })
                .collect(),
            Some(other) => Err((format!("dns.{key}"), format!("{other} is not a list"))),
        }
    };
    for key in d.keys() {
        if !["nameservers", "domain", "search", "options"].contains(&key.as_str()) {
            return Err((format!("dns.{key}"), "unknown DNS setting".to_owned()));
        }
    }
    let nameservers = strings("nameservers")?;
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err((
                format!("dns.nameservers[{i}]"),
                format!("{ns:?} is not an IP address"),
            ));
        }
    }
    let domain = match d.get("domain") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(("dns.domain".to_owned(), format!("{other} is not a string"))),
    };
    Ok(Dns {
        nameservers,
        domain,
        search: strings("search")?,
        options: strings("options")?,
    })
}

/// One interface of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The pod's namespace path; `None` for the host side.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

/// What ADD made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wiring {
    pub host: Interface,
    /// The host end's interface index, in the node's namespace.
    pub host_index: u32,
    /// The pod namespace's cookie (`SO_NETNS_COOKIE`), when the kernel has one.
    pub netns_cookie: Option<u64>,
    pub pod: Interface,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// The ADD result in the config's version, after `prev` (a chained plugin's result) if
/// any: twill's interfaces and address are appended and indexed after prev's.
pub fn render_result(conf: &NetConf, wiring: &Wiring) -> Value {
    let version = Version::parse(&conf.version).unwrap_or(Version::V1_1_0);
    let mut interfaces: Vec<Value> = Vec::new();
    let mut ips: Vec<Value> = Vec::new();
    let mut routes: Vec<Value> = Vec::new();
    let mut dns = None;
    if let Some(prev) = &conf.prev_result {
        let list = |k: &str| {
            prev.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        interfaces = list("interfaces");
        ips = list("ips");
        routes = list("routes");
        dns = prev
            .get("dns")
            .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
            .cloned();
    }
    let iface = |i: &Interface| {
        let mut v = json!({ "name": i.name, "mac": i.mac });
        if let Some(s) = &i.sandbox {
            v["sandbox"] = json!(s);
        }
        if version >= Version::V1_1_0
            && let Some(m) = i.mtu
        {
            v["mtu"] = json!(m);
        }
        v
    };
    interfaces.push(iface(&wiring.host));
    let pod_index = interfaces.len();
    interfaces.push(iface(&wiring.pod));
    let mut ip = json!({
        "address": format!("{}/32", wiring.ip),
        "gateway": wiring.gateway.to_string(),
        "interface": pod_index,
    });
    if version < Version::V1_0_0 {
        ip["version"] = json!("4");
    }
    ips.push(ip);
    routes.push(json!({ "dst": "0.0.0.0/0", "gw": wiring.gateway.to_string() }));
    let mut result = json!({
        "cniVersion": conf.version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
    });
    if let Some(d) = &conf.dns {
        let mut v = Map::new();
        if !d.nameservers.is_empty() {
            v.insert("nameservers".into(), json!(d.nameservers));
        }
        if let Some(domain) = &d.domain {
            v.insert("domain".into(), json!(domain));
        }
        if !d.search.is_empty() {
            v.insert("search".into(), json!(d.search));
        }
        if !d.options.is_empty() {
            v.insert("options".into(), json!(d.options));
        }
        dns = Some(Value::Object(v));
    }
    if let Some(d) = dns {
        result["dns"] = d;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD_ENV: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_environment_is_read_with_the_pod_from_cni_args() {
        let mut pairs = ADD_ENV.to_vec();
        pairs.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ));
        let (command, env) = parse_env(env_of(&pairs)).unwrap();
        assert_eq!(command, Command::Add);
        assert_eq!(env.container_id, "abc123");
        assert_eq!(env.netns, Some(PathBuf::from("/var/run/netns/pod")));
        assert_eq!(env.pod.as_deref(), Some("default/web-0"));
    }

    #[test]
    fn environment_errors_are_code_4_and_name_the_variables() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "missing required environment variable CNI_COMMAND"),
            (
                vec![("CNI_COMMAND", "FROB")],
                "CNI_COMMAND \"FROB\" is not one of",
            ),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
                "missing required environment variables CNI_CONTAINERID, CNI_NETNS for ADD",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "x"),
                    ("CNI_IFNAME", ""),
                ],
                "missing required environment variable CNI_IFNAME for DEL",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "-bad"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_CONTAINERID \"-bad\" is invalid",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "ok"),
                    ("CNI_IFNAME", "a/b"),
                ],
                "CNI_IFNAME \"a/b\" is not a valid interface name",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "ok"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "novalue"),
                ],
                "CNI_ARGS: \"novalue\" is not KEY=VALUE",
            ),
        ];
        for (pairs, message) in cases {
            let err = parse_env(env_of(&pairs)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{pairs:?}");
            assert!(err.msg.contains(message), "{pairs:?}: {}", err.msg);
        }
    }

    #[test]
    fn del_needs_no_netns_and_gc_status_need_no_container() {
        let (_, env) = parse_env(env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(env.netns, None);
        for cmd in ["GC", "STATUS", "VERSION"] {
            parse_env(env_of(&[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", ""),
                ("CNI_IFNAME", ""),
            ]))
            .unwrap();
        }
    }

    fn conf(text: &str, command: Command) -> Result<NetConf, CniError> {
        parse_config(text.as_bytes(), command)
    }

    #[test]
    fn every_supported_version_parses_with_defaults() {
        for v in SUPPORTED_VERSIONS {
            let c = conf(
                &format!(r#"{{"cniVersion":"{v}","name":"pods","type":"twill"}}"#),
                Command::Add,
            )
            .unwrap();
            assert_eq!(c.version, v);
            assert_eq!(c.socket, PathBuf::from("/run/twill/twilld.sock"));
            assert_eq!(c.state_dir, PathBuf::from("/var/lib/twill"));
            assert_eq!(c.mtu, None);
        }
    }

    #[test]
    fn config_errors_carry_the_spec_codes_and_name_the_field() {
        let cases = [
            ("{", Command::Add, code::DECODE_FAILURE, "not valid JSON"),
            (
                "[1]",
                Command::Add,
                code::DECODE_FAILURE,
                "must be a JSON object",
            ),
            (
                r#"{"name":"n"}"#,
                Command::Add,
                code::INCOMPATIBLE_VERSION,
                "cniVersion is missing",
            ),
            (
                r#"{"cniVersion":1,"name":"n"}"#,
                Command::Add,
                code::DECODE_FAILURE,
                "cniVersion must be a string",
            ),
            (
                r#"{"cniVersion":"one","name":"n"}"#,
                Command::Add,
                code::DECODE_FAILURE,
                "is not a version",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n"}"#,
                Command::Add,
                code::INCOMPATIBLE_VERSION,
                "0.2.0 is not supported",
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"n"}"#,
                Command::Check,
                code::INCOMPATIBLE_VERSION,
                "does not have the Check command",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                Command::Gc,
                code::INCOMPATIBLE_VERSION,
                "does not have the Gc command",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                Command::Status,
                code::INCOMPATIBLE_VERSION,
                "does not have the Status command",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","ipMasq":true}"#,
                Command::Add,
                code::UNSUPPORTED_FIELD,
                "unsupported field \"ipMasq\"",
            ),
            (
                r#"{"cniVersion":"1.1.0"}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "name: missing",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"-x"}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "name: \"-x\"",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"bridge"}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "type: \"bridge\" is not",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","socket":"rel.sock"}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "socket: \"rel.sock\" is not an absolute path",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","mtu":70000}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "mtu: 70000 is not an integer",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","dns":{"nameservers":["ten"]}}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "dns.nameservers[0]: \"ten\" is not an IP",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","dns":{"server":"x"}}"#,
                Command::Add,
                code::INVALID_CONFIG,
                "dns.server: unknown DNS setting",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
                Command::Gc,
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments[0].ifname",
            ),
        ];
        for (text, command, code, message) in cases {
            let err = conf(text, command).unwrap_err();
            assert_eq!(err.code, code, "{text}: {err}");
            assert!(
                err.msg.contains(message),
                "{text}:\n  got {}\n  want {message}",
                err.msg
            );
        }
    }

    #[test]
    fn runtime_keys_are_tolerated() {
        let text = r#"{"cniVersion":"1.1.0","name":"n","type":"twill","args":{"cni":{}},
            "runtimeConfig":{"portMappings":[]},"capabilities":{"portMappings":true},
            "cni.dev/something":1,"disableCheck":false,"cniVersions":["1.0.0","1.1.0"]}"#;
        conf(text, Command::Add).unwrap();
    }

    #[test]
    fn gc_takes_the_union_of_both_spellings_and_none_when_neither_is_given() {
        let text = r#"{"cniVersion":"1.1.0","name":"n",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
            "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]}"#;
        let c = conf(text, Command::Gc).unwrap();
        let ids: Vec<_> = c
            .valid_attachments
            .unwrap()
            .into_iter()
            .map(|k| k.container_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let none = conf(r#"{"cniVersion":"1.1.0","name":"n"}"#, Command::Gc).unwrap();
        assert_eq!(none.valid_attachments, None);
        let empty = conf(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[]}"#,
            Command::Gc,
        )
        .unwrap();
        assert_eq!(empty.valid_attachments, Some(vec![]));
    }

    fn wiring() -> Wiring {
        Wiring {
            host_index: 7,
            netns_cookie: None,
            host: Interface {
                name: "tw0123456789ab".into(),
                mac: "ee:00:00:00:00:01".into(),
                sandbox: None,
                mtu: Some(1450),
            },
            pod: Interface {
                name: "eth0".into(),
                mac: "0a:00:00:00:00:02".into(),
                sandbox: Some("/var/run/netns/pod".into()),
                mtu: Some(1450),
            },
            ip: Ipv4Addr::new(10, 244, 1, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
        }
    }

    #[test]
    fn results_follow_the_configs_version() {
        let c11 = conf(
            r#"{"cniVersion":"1.1.0","name":"n","dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            render_result(&c11, &wiring()),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "tw0123456789ab", "mac": "ee:00:00:00:00:01", "mtu": 1450},
                    {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/var/run/netns/pod", "mtu": 1450}
                ],
                "ips": [{"address": "10.244.1.5/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
            })
        );
        let c10 = conf(r#"{"cniVersion":"1.0.0","name":"n"}"#, Command::Add).unwrap();
        let r = render_result(&c10, &wiring());
        assert_eq!(r["interfaces"][1].get("mtu"), None, "mtu is a 1.1.0 field");
        assert_eq!(r["ips"][0].get("version"), None);
        assert_eq!(r.get("dns"), None);
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let c = conf(
                &format!(r#"{{"cniVersion":"{v}","name":"n"}}"#),
                Command::Add,
            )
            .unwrap();
            let r = render_result(&c, &wiring());
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["ips"][0]["version"], "4", "{v}");
        }
    }

    #[test]
    fn a_previous_result_is_kept_and_twills_entries_are_indexed_after_it() {
        let text = r#"{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"1.0.0",
            "interfaces":[{"name":"dummy0"}],"ips":[{"address":"192.0.2.1/24","interface":0}],
            "dns":{"nameservers":["192.0.2.53"]}}}"#;
        let r = render_result(&conf(text, Command::Add).unwrap(), &wiring());
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][0]["address"], "192.0.2.1/24");
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");
    }

    #[test]
    fn errors_print_as_the_spec_says() {
        let e = CniError::new(code::INVALID_CONFIG, "bad").with_details("why");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 7, "msg": "bad", "details": "why"})
        );
        assert_eq!(
            CniError::new(11, "later").to_json("1.1.0").get("details"),
            None
        );
    }
}
