//! Every map the programs share with userspace, the load-time globals, and how map values
//! are read.
//!
//! The maps' names are the ABI (`twill_abi`): `twilld` and `netctl` open the pins by them,
//! so each `#[map(name = ...)]` stays as it is. New maps (policy, DNS) are declared here too.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use twill_abi::{
    flow::{DEFAULT_RING_BYTES, FlowSeen, FlowSeenKey, MAX_FLOW_SEEN},
    lb::{
        Affinity, AffinityKey, Backend, BackendKey, Flow, FlowKey, Frontend, FrontendKey,
        LocalBackend, LocalPod, MAX_BACKENDS, MAX_FLOWS, MAX_FRONTENDS, MAX_LOCAL_BACKENDS,
        MAX_PODS, MemberKey, NodeConfig, PodSocket, RevNat, SockKey,
    },
    metrics::{METRICS_ENTRIES, MetricValue},
    policy::{
        DEFAULT_PEER_ENTRIES, DEFAULT_PORT_ENTRIES, FqdnAllow, FqdnName, MAX_ENDPOINTS,
        MAX_FQDN_ALLOWS, MAX_FQDN_NAMES, MAX_POLICY_FLOWS, MAX_RULE_SLOTS, POLICY_COUNTERS,
        PeerPrefix, PolicyEndpoint, PolicyFlow, PolicyFlowKey, PortPrefix, RuleSlotKey,
    },
};

/// See [`twill_abi::metrics`]. Pinned by name so counters survive a daemon restart.
#[map(name = "TWILL_METRICS")]
pub(crate) static TWILL_METRICS: PerCpuArray<MetricValue> = PerCpuArray::pinned(METRICS_ENTRIES, 0);
#[map(name = "TWILL_SVC")]
pub(crate) static TWILL_SVC: HashMap<FrontendKey, Frontend> = HashMap::pinned(MAX_FRONTENDS, 0);
#[map(name = "TWILL_BACKENDS")]
pub(crate) static TWILL_BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_BACKENDS, 0);
#[map(name = "TWILL_CT")]
pub(crate) static TWILL_CT: LruHashMap<FlowKey, Flow> =
    LruHashMap::pinned(MAX_FLOWS, BPF_F_NO_COMMON_LRU);
#[map(name = "TWILL_REVNAT")]
pub(crate) static TWILL_REVNAT: LruHashMap<FlowKey, RevNat> =
    LruHashMap::pinned(MAX_FLOWS, BPF_F_NO_COMMON_LRU);
#[map(name = "TWILL_MEMBERS")]
pub(crate) static TWILL_MEMBERS: HashMap<MemberKey, u32> = HashMap::pinned(MAX_BACKENDS, 0);
#[map(name = "TWILL_AFFINITY")]
pub(crate) static TWILL_AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::pinned(MAX_FLOWS, 0);
#[map(name = "TWILL_NODE")]
pub(crate) static TWILL_NODE: Array<NodeConfig> = Array::pinned(1, 0);
#[map(name = "TWILL_SOCK_NAT")]
pub(crate) static TWILL_SOCK_NAT: LruHashMap<SockKey, RevNat> = LruHashMap::pinned(MAX_FLOWS, 0);
/// See [`twill_abi::lb::LocalBackend`]. Written by `twill-dnsd`, never by `twilld`.
#[map(name = "TWILL_DNS_LOCAL")]
pub(crate) static TWILL_DNS_LOCAL: HashMap<FrontendKey, LocalBackend> =
    HashMap::pinned(MAX_LOCAL_BACKENDS, 0);
#[map(name = "TWILL_LOCAL_PODS")]
pub(crate) static TWILL_LOCAL_PODS: HashMap<u32, LocalPod> = HashMap::pinned(MAX_PODS, 0);
#[map(name = "TWILL_POD_NETNS")]
pub(crate) static TWILL_POD_NETNS: HashMap<u64, PodSocket> = HashMap::pinned(MAX_PODS, 0);

// NetworkPolicy (see `twill_abi::policy`).
#[map(name = "TWILL_POL_EP")]
pub(crate) static TWILL_POL_EP: HashMap<u32, PolicyEndpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);
#[map(name = "TWILL_POL_PEER")]
pub(crate) static TWILL_POL_PEER: LpmTrie<PeerPrefix, u64> =
    LpmTrie::pinned(DEFAULT_PEER_ENTRIES, 0);
#[map(name = "TWILL_POL_PORT")]
pub(crate) static TWILL_POL_PORT: LpmTrie<PortPrefix, u64> =
    LpmTrie::pinned(DEFAULT_PORT_ENTRIES, 0);
#[map(name = "TWILL_POL_RULE")]
pub(crate) static TWILL_POL_RULE: HashMap<RuleSlotKey, u32> = HashMap::pinned(MAX_RULE_SLOTS, 0);
#[map(name = "TWILL_POL_CT")]
pub(crate) static TWILL_POL_CT: LruHashMap<PolicyFlowKey, PolicyFlow> =
    LruHashMap::pinned(MAX_POLICY_FLOWS, BPF_F_NO_COMMON_LRU);
#[map(name = "TWILL_POL_COUNT")]
pub(crate) static TWILL_POL_COUNT: PerCpuArray<u64> = PerCpuArray::pinned(POLICY_COUNTERS, 0);
/// Written by `twilld` only (the next table id); declared here so it is pinned with the
/// maps whose table ids it keeps unique.
#[map(name = "TWILL_POL_STATE")]
pub(crate) static TWILL_POL_STATE: Array<u32> = Array::pinned(1, 0);
/// Learned FQDN addresses, keyed by `FqdnKey` (written by `twill-dnsd` only). Not
/// preallocated: a node without FQDNPolicies pays no memory for it.
#[map(name = "TWILL_FQDN")]
pub(crate) static TWILL_FQDN: HashMap<twill_abi::policy::FqdnKey, FqdnAllow> =
    HashMap::pinned(MAX_FQDN_ALLOWS, BPF_F_NO_PREALLOC);
/// The names behind `TWILL_FQDN`'s entries; read by `netctl why` only, declared here so
/// it is pinned with the map it explains.
#[map(name = "TWILL_FQDN_NAME")]
pub(crate) static TWILL_FQDN_NAME: HashMap<u64, FqdnName> =
    HashMap::pinned(MAX_FQDN_NAMES, BPF_F_NO_PREALLOC);

// Flow records (see `twill_abi::flow`). The ring is pinned, so records written while
// twilld restarts wait for the next reader.
#[map(name = "TWILL_FLOWS")]
pub(crate) static TWILL_FLOWS: RingBuf = RingBuf::pinned(DEFAULT_RING_BYTES, 0);
/// Slot 0: the record mode (`FLOW_MODE_*`), written by `twilld`.
#[map(name = "TWILL_FLOW_CONF")]
pub(crate) static TWILL_FLOW_CONF: Array<u32> = Array::pinned(1, 0);
#[map(name = "TWILL_FLOW_LOST")]
pub(crate) static TWILL_FLOW_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);
#[map(name = "TWILL_FLOW_SEEN")]
pub(crate) static TWILL_FLOW_SEEN: LruHashMap<FlowSeenKey, FlowSeen> =
    LruHashMap::pinned(MAX_FLOW_SEEN, 0);

/// The service CIDR, set at load time (wire order): destinations outside it skip the
/// Service lookups, so pod-to-pod traffic pays for none. A mask of 0 means "every
/// destination may be a Service".
#[unsafe(no_mangle)]
static SERVICE_NET: u32 = 0;
#[unsafe(no_mangle)]
static SERVICE_MASK: u32 = 0;

#[inline(always)]
pub(crate) fn maybe_service(dst: u32) -> bool {
    // SAFETY: reads of plain statics that the loader sets before the program runs and
    // that nothing writes afterwards; volatile, so the compiler does not fold the
    // compile-time zero.
    let (net, mask) = unsafe {
        (
            core::ptr::read_volatile(&SERVICE_NET),
            core::ptr::read_volatile(&SERVICE_MASK),
        )
    };
    dst & mask == net
}

/// Whether `dst` is in the service CIDR; false when none was set (unlike
/// [`maybe_service`], which then says every destination may be one).
#[inline(always)]
pub(crate) fn in_service_cidr(dst: u32) -> bool {
    // SAFETY: as in `maybe_service`.
    let (net, mask) = unsafe {
        (
            core::ptr::read_volatile(&SERVICE_NET),
            core::ptr::read_volatile(&SERVICE_MASK),
        )
    };
    mask != 0 && dst & mask == net
}

#[inline(always)]
pub(crate) fn node_config() -> Option<NodeConfig> {
    TWILL_NODE.get(0).copied()
}

/// Reads a map value out. The copy is taken at once; a concurrent update may replace the
/// entry, never free it under us.
macro_rules! lookup {
    ($map:expr, $key:expr) => {
        // SAFETY: the reference from a successful lookup points into the map's value
        // storage, valid for this program run; the value is plain data copied right away.
        unsafe { $map.get($key).copied() }
    };
}
pub(crate) use lookup;
