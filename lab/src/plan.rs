//! The lab's topology as plain data: names and addresses, decided before anything is made.
//!
//! Architecture invariant: no I/O here. Everything the lab creates is named by this plan,
//! so teardown and the cleanup command can find it again from the manifest alone.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Prefix of every network namespace, cgroup and bpffs directory a lab makes.
pub const PREFIX: &str = "twl-";
/// The underlay network every lab uses. Each lab's underlay lives in its own namespaces,
/// so labs running side by side never see each other's addresses.
pub const UNDERLAY: Ipv4Network = match Ipv4Network::new_checked(Ipv4Addr::new(172, 30, 0, 0), 24) {
    Some(n) => n,
    None => panic!("valid network"),
};
/// Address of the underlay bridge, the default gateway of every host and where etcd
/// listens.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// The second underlay subnet of a lab whose last nodes sit behind a router
/// ([`LabPlan::with_second_subnet`]): a second bridge, joined to the first by the router.
pub const SECOND_UNDERLAY: Ipv4Network =
    match Ipv4Network::new_checked(Ipv4Addr::new(172, 31, 0, 0), 24) {
        Some(n) => n,
        None => panic!("valid network"),
    };
/// The router's address on the first subnet: the default gateway of its hosts when the lab
/// has a router.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
/// The router's address on the second subnet: the default gateway of the hosts there.
pub const SECOND_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
/// The underlay namespace's bridges: the first subnet's and the second's.
pub const BRIDGE: &str = "br0";
pub const SECOND_BRIDGE: &str = "br1";
/// etcd's client port on [`GATEWAY`].
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// Node `nodeN` gets `172.30.0.(10+N)`; external host `extN` gets `172.30.0.(100+N)`.
const NODE_BASE: u8 = 10;
const EXTERNAL_BASE: u8 = 100;
/// Most nodes and external hosts a lab may have (address room on the underlay).
pub const MAX_NODES: u8 = 89;
pub const MAX_EXTERNALS: u8 = 99;
/// Longest lab name: namespace names stay readable and under `ip`'s limits.
pub const MAX_NAME_LEN: usize = 16;

/// What a host on the underlay is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs twilld and pods.
    Node,
    /// Another host on the same LAN: an outside client, later a BGP peer.
    External,
}

/// One simulated host on the underlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// `node1`, `node2`, ..., `ext1`, ...
    pub name: String,
    pub role: Role,
    /// Its network namespace.
    pub netns: String,
    /// Address of its `eth0` on the underlay.
    pub underlay_ip: Ipv4Addr,
    /// Name of its veth's peer, inside the underlay namespace.
    pub bridge_port: String,
    /// The bridge that port joins: [`BRIDGE`], or [`SECOND_BRIDGE`] for a host on the
    /// second subnet.
    #[serde(default = "first_bridge")]
    pub bridge: String,
    /// Its default route's gateway.
    #[serde(default = "first_gateway")]
    pub gateway: Ipv4Addr,
}

fn first_bridge() -> String {
    BRIDGE.to_owned()
}

fn first_gateway() -> Ipv4Addr {
    GATEWAY
}

/// The router between the two underlay subnets: a namespace with an `eth0` on the first
/// bridge ([`ROUTER_IP`]) and an `eth1` on the second ([`SECOND_GATEWAY`]), forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPlan {
    pub netns: String,
    /// Its veths' peers in the underlay namespace: on the first bridge, on the second.
    pub first_port: String,
    pub second_port: String,
}

/// Everything a lab will be made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub name: String,
    /// The namespace holding the underlay bridge and etcd.
    pub underlay_netns: String,
    pub hosts: Vec<HostPlan>,
    /// Directory name used under the cgroup v2 root and under bpffs.
    pub resource_dir: String,
    /// The router to the second subnet, when some nodes are there.
    #[serde(default)]
    pub router: Option<RouterPlan>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "lab name {0:?} is invalid: use 1 to {MAX_NAME_LEN} lower-case letters, digits or '-', \
         starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("a lab needs between 1 and {MAX_NODES} nodes, not {0}")]
    NodeCount(u8),
    #[error("a lab can have at most {MAX_EXTERNALS} external hosts, not {0}")]
    ExternalCount(u8),
    #[error("{0} nodes on the second subnet, but the lab has only {1} nodes")]
    SecondSubnet(u8, u8),
}

impl LabPlan {
    pub fn new(name: &str, nodes: u8, externals: u8) -> Result<Self, PlanError> {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err(PlanError::InvalidName(name.to_owned()));
        }
        if nodes == 0 || nodes > MAX_NODES {
            return Err(PlanError::NodeCount(nodes));
        }
        if externals > MAX_EXTERNALS {
            return Err(PlanError::ExternalCount(externals));
        }
        let base = format!("{PREFIX}{name}");
        let host = |role: Role, prefix: &str, i: u8, first: u8| {
            let host_name = format!("{prefix}{i}");
            HostPlan {
                netns: format!("{base}-{host_name}"),
                underlay_ip: Ipv4Addr::new(172, 30, 0, first + i),
                bridge_port: format!("p-{host_name}"),
                bridge: first_bridge(),
                gateway: GATEWAY,
                name: host_name,
                role,
            }
        };
        let hosts = (1..=nodes)
            .map(|i| host(Role::Node, "node", i, NODE_BASE))
            .chain((1..=externals).map(|i| host(Role::External, "ext", i, EXTERNAL_BASE)))
            .collect();
        Ok(Self {
            name: name.to_owned(),
            underlay_netns: format!("{base}-underlay"),
            hosts,
            resource_dir: base,
            router: None,
        })
    }

    /// Puts the last `count` nodes on the second subnet ([`SECOND_UNDERLAY`], `nodeN` at
    /// `172.31.0.(10+N)`, on [`SECOND_BRIDGE`]) behind a router (`twl-<lab>-router`); every
    /// host's default route goes through the router. `count` 0 leaves the plan as it is.
    pub fn with_second_subnet(mut self, count: u8) -> Result<Self, PlanError> {
        let nodes = u8::try_from(self.nodes().count()).unwrap_or(u8::MAX);
        if count > nodes {
            return Err(PlanError::SecondSubnet(count, nodes));
        }
        if count == 0 {
            return Ok(self);
        }
        let far: Vec<String> = self
            .nodes()
            .skip(usize::from(nodes - count))
            .map(|h| h.name.clone())
            .collect();
        for h in &mut self.hosts {
            if far.contains(&h.name) {
                let [_, _, _, last] = h.underlay_ip.octets();
                let [a, b, c, _] = SECOND_UNDERLAY.network().octets();
                h.underlay_ip = Ipv4Addr::new(a, b, c, last);
                h.bridge = SECOND_BRIDGE.to_owned();
                h.gateway = SECOND_GATEWAY;
            } else {
                h.gateway = ROUTER_IP;
            }
        }
        self.router = Some(RouterPlan {
            netns: format!("{PREFIX}{}-router", self.name),
            first_port: "p-router0".to_owned(),
            second_port: "p-router1".to_owned(),
        });
        Ok(self)
    }

    /// Every namespace of the lab, hosts first, then the router, and the underlay last
    /// (teardown order).
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .map(|h| h.netns.as_str())
            .chain(self.router.iter().map(|r| r.netns.as_str()))
            .chain(std::iter::once(self.underlay_netns.as_str()))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &HostPlan> {
        self.hosts.iter().filter(|h| h.role == Role::Node)
    }

    /// etcd's client URL, reachable from every host of the lab.
    pub fn etcd_endpoint(&self) -> String {
        format!("http://{GATEWAY}:{ETCD_CLIENT_PORT}")
    }
}

/// A fresh lab name for a test run: unique enough that parallel runs never collide.
pub fn random_name() -> String {
    format!("t{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_and_one_external_get_distinct_names_and_addresses() {
        let plan = LabPlan::new("demo", 3, 1).unwrap();
        let names: Vec<_> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["node1", "node2", "node3", "ext1"]);
        let ips: Vec<_> = plan
            .hosts
            .iter()
            .map(|h| h.underlay_ip.to_string())
            .collect();
        assert_eq!(
            ips,
            ["172.30.0.11", "172.30.0.12", "172.30.0.13", "172.30.0.101"]
        );
        assert_eq!(plan.hosts[0].netns, "twl-demo-node1");
        assert_eq!(plan.underlay_netns, "twl-demo-underlay");
        assert_eq!(plan.namespaces().last(), Some("twl-demo-underlay"));
        assert_eq!(plan.nodes().count(), 3);
        assert_eq!(plan.etcd_endpoint(), "http://172.30.0.1:2379");
        for h in &plan.hosts {
            assert!(UNDERLAY.contains(h.underlay_ip));
            assert_ne!(h.underlay_ip, GATEWAY);
            assert!(
                h.bridge_port.len() <= 15,
                "{} too long for an interface",
                h.bridge_port
            );
        }
    }

    #[test]
    fn the_last_nodes_go_on_the_second_subnet_behind_the_router() {
        let plan = LabPlan::new("demo", 3, 1)
            .unwrap()
            .with_second_subnet(1)
            .unwrap();
        let hosts: Vec<_> = plan
            .hosts
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.underlay_ip.to_string(),
                    h.bridge.as_str(),
                    h.gateway.to_string(),
                )
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("node1", "172.30.0.11".into(), "br0", "172.30.0.254".into()),
                ("node2", "172.30.0.12".into(), "br0", "172.30.0.254".into()),
                ("node3", "172.31.0.13".into(), "br1", "172.31.0.1".into()),
                ("ext1", "172.30.0.101".into(), "br0", "172.30.0.254".into()),
            ]
        );
        let router = plan.router.as_ref().unwrap();
        assert_eq!(router.netns, "twl-demo-router");
        assert_eq!(
            plan.namespaces().collect::<Vec<_>>()[3..],
            ["twl-demo-ext1", "twl-demo-router", "twl-demo-underlay"]
        );
        assert!(UNDERLAY.contains(ROUTER_IP));
        assert!(SECOND_UNDERLAY.contains(SECOND_GATEWAY));

        // Nothing changes with 0; more than there are nodes is refused.
        let plain = LabPlan::new("demo", 3, 1).unwrap();
        assert_eq!(plain.clone().with_second_subnet(0).unwrap(), plain);
        assert_eq!(plain.router, None);
        assert_eq!(
            plain.with_second_subnet(4),
            Err(PlanError::SecondSubnet(4, 3))
        );
    }

    #[test]
    fn a_manifest_of_a_lab_without_a_router_still_loads() {
        let mut json = serde_json::to_value(LabPlan::new("old", 1, 0).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("router");
        let host = &mut json["hosts"][0];
        host.as_object_mut().unwrap().remove("bridge");
        host.as_object_mut().unwrap().remove("gateway");
        let plan: LabPlan = serde_json::from_value(json).unwrap();
        assert_eq!(plan, LabPlan::new("old", 1, 0).unwrap());
    }

    #[test]
    fn the_largest_lab_still_fits_the_underlay() {
        let plan = LabPlan::new("big", MAX_NODES, MAX_EXTERNALS).unwrap();
        let mut ips: Vec<_> = plan.hosts.iter().map(|h| h.underlay_ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), plan.hosts.len());
        assert!(ips.iter().all(|ip| ip.octets()[3] < 255));
    }

    #[test]
    fn bad_names_and_counts_are_refused_with_the_reason() {
        for bad in [
            "",
            "Upper",
            "has space",
            "-lead",
            "a/b",
            "x234567890abcdefg",
        ] {
            assert_eq!(
                LabPlan::new(bad, 1, 0),
                Err(PlanError::InvalidName(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(LabPlan::new("ok", 0, 0), Err(PlanError::NodeCount(0)));
        assert_eq!(LabPlan::new("ok", 90, 0), Err(PlanError::NodeCount(90)));
        assert_eq!(
            LabPlan::new("ok", 1, 100),
            Err(PlanError::ExternalCount(100))
        );
        assert!(
            PlanError::NodeCount(0)
                .to_string()
                .contains("between 1 and 89 nodes")
        );
    }

    #[test]
    fn random_names_are_valid_lab_names() {
        let name = random_name();
        LabPlan::new(&name, 1, 0).unwrap();
    }
}
