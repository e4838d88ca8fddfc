//! The contract between twill's eBPF programs and userspace: map names, key and value
//! layouts, and the stable numeric codes both sides agree on.
//!
//! Architecture invariant: this crate depends on nothing (but `aya` behind the `user`
//! feature, to mark types as plain old data) and does no I/O. Every map's layout is
//! defined here once; the kernel side and userspace import it from here.
#![no_std]

pub mod flow;
pub mod layout;
pub mod lb;
pub mod metrics;
pub mod policy;
pub mod programs;

/// Names of the maps in the object file, as userspace looks them up and pins them.
/// BPF map names are limited to 15 bytes.
pub mod maps {
    /// Per-CPU packet and byte counters indexed by [`crate::metrics::metric_index`].
    pub const METRICS: &str = "TWILL_METRICS";
    /// Service frontends: [`crate::lb::FrontendKey`] -> [`crate::lb::Frontend`].
    pub const SERVICES: &str = "TWILL_SVC";
    /// Backends: [`crate::lb::BackendKey`] -> [`crate::lb::Backend`].
    pub const BACKENDS: &str = "TWILL_BACKENDS";
    /// Conntrack (LRU): client flow [`crate::lb::FlowKey`] -> [`crate::lb::Flow`].
    pub const CONNTRACK: &str = "TWILL_CT";
    /// Reverse NAT (LRU): backend-side flow [`crate::lb::FlowKey`] -> [`crate::lb::RevNat`].
    pub const REVNAT: &str = "TWILL_REVNAT";
    /// Backend membership: [`crate::lb::MemberKey`] -> slot, for session affinity checks.
    pub const MEMBERS: &str = "TWILL_MEMBERS";
    /// Session affinity (LRU): [`crate::lb::AffinityKey`] -> [`crate::lb::Affinity`].
    pub const AFFINITY: &str = "TWILL_AFFINITY";
    /// Host sockets' UDP translations (LRU): [`crate::lb::SockKey`] -> [`crate::lb::RevNat`].
    pub const SOCK_NAT: &str = "TWILL_SOCK_NAT";
    /// Node-local servers (cluster DNS): frontend [`crate::lb::FrontendKey`] ->
    /// [`crate::lb::LocalBackend`], written by the server itself while it serves.
    pub const DNS_LOCAL: &str = "TWILL_DNS_LOCAL";
    /// This node's pods: address (`u32`, wire order) -> [`crate::lb::LocalPod`].
    pub const LOCAL_PODS: &str = "TWILL_LOCAL_PODS";
    /// Pods' network namespaces: netns cookie (`u64`) -> [`crate::lb::PodSocket`].
    pub const POD_NETNS: &str = "TWILL_POD_NETNS";
    /// The node's addresses and cluster CIDR (array of one): [`crate::lb::NodeConfig`].
    pub const NODE: &str = "TWILL_NODE";
    /// Local pods' policy: address (`u32`, wire order) -> [`crate::policy::PolicyEndpoint`].
    pub const POLICY_ENDPOINTS: &str = "TWILL_POL_EP";
    /// Peer trie: [`crate::policy::PeerPrefix`] -> rule bits (`u64`).
    pub const POLICY_PEERS: &str = "TWILL_POL_PEER";
    /// Port trie: [`crate::policy::PortPrefix`] -> rule bits (`u64`).
    pub const POLICY_PORTS: &str = "TWILL_POL_PORT";
    /// A table's bit to its counter: [`crate::policy::RuleSlotKey`] -> slot (`u32`).
    pub const POLICY_RULES: &str = "TWILL_POL_RULE";
    /// Policy conntrack (LRU): [`crate::policy::PolicyFlowKey`] -> [`crate::policy::PolicyFlow`].
    pub const POLICY_FLOWS: &str = "TWILL_POL_CT";
    /// Per-CPU counters (`u64`) indexed by slot: allowed flows per rule, denied packets.
    pub const POLICY_COUNTERS: &str = "TWILL_POL_COUNT";
    /// Policy bookkeeping (array of one `u32`): the next table id to hand out.
    pub const POLICY_STATE: &str = "TWILL_POL_STATE";
    /// Learned FQDN addresses: (pod, address) -> until when and which ports.
    pub const FQDN_ALLOWS: &str = "TWILL_FQDN";
    /// The names behind learned FQDN addresses.
    pub const FQDN_NAMES: &str = "TWILL_FQDN_NAME";
    /// Flow records (ring buffer).
    pub const FLOWS: &str = "TWILL_FLOWS";
    /// The flow record mode (array, one slot).
    pub const FLOWS_CONF: &str = "TWILL_FLOW_CONF";
    /// Flow records the ring had no room for (per-CPU, one slot).
    pub const FLOWS_LOST: &str = "TWILL_FLOW_LOST";
    /// When each flow's last drop or refusal record went out (rate limit).
    pub const FLOWS_SEEN: &str = "TWILL_FLOW_SEEN";
    /// The layout record (userspace only, not in the object): map name
    /// ([`crate::layout::record_key`]) -> the layout version (`u32`) its pin was written
    /// with. See [`crate::layout`].
    pub const LAYOUT: &str = "TWILL_LAYOUT";
}

/// Return codes of tc (`sched_cls`) programs, from `include/uapi/linux/pkt_cls.h`.
pub mod tc {
    /// Let the packet continue.
    pub const TC_ACT_OK: i32 = 0;
    /// Drop the packet.
    pub const TC_ACT_SHOT: i32 = 2;
    /// The program redirected the packet (`bpf_redirect*`).
    pub const TC_ACT_REDIRECT: i32 = 7;
}
