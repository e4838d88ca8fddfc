//! Datapath counters: every packet a program sees is counted once, under the reason for
//! what the program did with it and the direction it was travelling.
//!
//! The map is a per-CPU array (no locking on the fast path); userspace sums the CPUs.
//! Reason codes are stable ABI: never renumber one, only add. Drops carry a reason so
//! `netctl` can say why a packet was dropped, not just that it was.

/// Why a program passed or dropped a packet. Values below [`Reason::FIRST_DROP`] pass.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// An IPv4 packet that no rule applied to, passed on.
    Forwarded = 0,
    /// Not IPv4 (ARP, IPv6, ...): passed untouched.
    NotIpv4 = 1,
    /// Sent to a Service frontend: translated to a backend and passed.
    ServiceTranslated = 2,
    /// A backend's reply: translated back to the frontend and passed.
    ReplyTranslated = 3,
    /// Sent to a Service frontend with no backend: handed to the node's stack untouched,
    /// where the service CIDR's unreachable route refuses it at once (ICMP unreachable).
    NoBackend = 4,
    /// A NodePort request or reply: translated and sent on by the program (redirect).
    NodePortRedirected = 5,
    /// A pod reaching itself through a Service: translated and sent back towards it.
    HairpinRedirected = 6,
    /// From the overlay to a pod on this node: delivered straight into the pod
    /// (`bpf_redirect_peer`), past the node's forwarding and the veth's queue.
    PodRedirected = 7,
    /// Isolated only by audit (dry-run) policies, and no rule allows it: passed, and
    /// counted against the pod as would-be denied.
    PolicyAuditDenied = 8,
    /// The Ethernet or IPv4 header is truncated or invalid: dropped.
    DropMalformed = 16,
    /// Rewriting the packet failed (a helper refused it): dropped.
    DropRewriteFailed = 18,
    /// A translated NodePort packet has no route from this node: dropped.
    DropNoRoute = 19,
    /// No free source port to translate a NodePort flow to: dropped.
    DropNoSnatPort = 20,
    /// NetworkPolicy: the pod is isolated in this direction and no rule allows the
    /// connection (or a change revoked an established one): dropped.
    DropPolicyDenied = 21,
    /// NetworkPolicy: a local pod's packet with no policy entry for the pod (not yet
    /// programmed, a spoofed source, or the endpoint map full): dropped, never let
    /// through unfiltered.
    DropPolicyNoEndpoint = 22,
    /// FQDNPolicy: a pod that one selects opened a flow to an address outside the cluster
    /// that no allowed name resolved to for it (or whose answer expired), or to a port
    /// the allowing rule does not name: dropped.
    DropPolicyFqdn = 23,
}

impl Reason {
    /// Codes at or above this one are drops.
    pub const FIRST_DROP: u32 = 16;
    /// Every reason, in code order.
    pub const ALL: [Reason; 16] = [
        Reason::Forwarded,
        Reason::NotIpv4,
        Reason::ServiceTranslated,
        Reason::ReplyTranslated,
        Reason::NoBackend,
        Reason::NodePortRedirected,
        Reason::HairpinRedirected,
        Reason::PodRedirected,
        Reason::PolicyAuditDenied,
        Reason::DropMalformed,
        Reason::DropRewriteFailed,
        Reason::DropNoRoute,
        Reason::DropNoSnatPort,
        Reason::DropPolicyDenied,
        Reason::DropPolicyNoEndpoint,
        Reason::DropPolicyFqdn,
    ];

    /// The reason for a code read back from the map, if this build knows it.
    pub const fn from_code(code: u32) -> Option<Reason> {
        match code {
            0 => Some(Reason::Forwarded),
            1 => Some(Reason::NotIpv4),
            2 => Some(Reason::ServiceTranslated),
            3 => Some(Reason::ReplyTranslated),
            4 => Some(Reason::NoBackend),
            16 => Some(Reason::DropMalformed),
            5 => Some(Reason::NodePortRedirected),
            6 => Some(Reason::HairpinRedirected),
            7 => Some(Reason::PodRedirected),
            18 => Some(Reason::DropRewriteFailed),
            19 => Some(Reason::DropNoRoute),
            20 => Some(Reason::DropNoSnatPort),
            8 => Some(Reason::PolicyAuditDenied),
            21 => Some(Reason::DropPolicyDenied),
            22 => Some(Reason::DropPolicyNoEndpoint),
            23 => Some(Reason::DropPolicyFqdn),
            _ => None,
        }
    }

    /// Short, stable name used by the CLI and in metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::NotIpv4 => "not-ipv4",
            Reason::ServiceTranslated => "service-translated",
            Reason::ReplyTranslated => "reply-translated",
            Reason::NoBackend => "no-backend",
            Reason::DropMalformed => "drop-malformed",
            Reason::DropRewriteFailed => "drop-rewrite-failed",
            Reason::NodePortRedirected => "nodeport-redirected",
            Reason::HairpinRedirected => "hairpin-redirected",
            Reason::PodRedirected => "pod-redirected",
            Reason::DropNoRoute => "drop-no-route",
            Reason::DropNoSnatPort => "drop-no-snat-port",
            Reason::PolicyAuditDenied => "policy-audit-denied",
            Reason::DropPolicyDenied => "drop-policy-denied",
            Reason::DropPolicyNoEndpoint => "drop-policy-no-endpoint",
            Reason::DropPolicyFqdn => "drop-policy-fqdn",
        }
    }

    /// Whether packets counted under this reason were dropped.
    pub const fn is_drop(self) -> bool {
        self as u32 >= Self::FIRST_DROP
    }
}

/// Which way the packet was going, seen from the pod.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the pod (tc ingress on the host-side veth).
    FromPod = 0,
    /// On its way to the pod (tc egress on the host-side veth).
    ToPod = 1,
    /// A host process's socket call (cgroup connect4/sendmsg4/recvmsg4); counted per
    /// call, with no bytes.
    HostSocket = 2,
    /// Arriving on the node's underlay interface (tc ingress): NodePort requests.
    FromWorld = 3,
    /// Arriving on the node's VXLAN device (tc ingress): NodePort replies, and packets
    /// for this node's pods.
    FromOverlay = 4,
}

impl Direction {
    pub const ALL: [Direction; 5] = [
        Direction::FromPod,
        Direction::ToPod,
        Direction::HostSocket,
        Direction::FromWorld,
        Direction::FromOverlay,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::FromPod => "from-pod",
            Direction::ToPod => "to-pod",
            Direction::HostSocket => "host-socket",
            Direction::FromWorld => "from-world",
            Direction::FromOverlay => "from-overlay",
        }
    }
}

/// Room for reason codes 0..64 in each direction.
pub const REASON_SLOTS: u32 = 64;
/// Number of entries in the metrics map.
/// Room for directions to come (NodePort, policy, DNS) without resizing the pinned map.
pub const DIRECTION_SLOTS: u32 = 8;
pub const METRICS_ENTRIES: u32 = REASON_SLOTS * DIRECTION_SLOTS;
const _: () = assert!(Direction::ALL.len() as u32 <= DIRECTION_SLOTS);

/// Index of a (direction, reason) counter in the metrics map.
pub const fn metric_index(direction: Direction, reason: Reason) -> u32 {
    direction as u32 * REASON_SLOTS + reason as u32
}

/// One counter: how many packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricValue {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<MetricValue>() == 16);
const _: () = assert!((Reason::DropPolicyNoEndpoint as u32) < REASON_SLOTS);

#[cfg(feature = "user")]
// SAFETY: `MetricValue` is `repr(C)`, made of two `u64`s, has no padding and every bit
// pattern is a valid value.
unsafe impl aya::Pod for MetricValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_slot_in_each_direction() {
        let mut seen = [false; METRICS_ENTRIES as usize];
        for d in Direction::ALL {
            for r in Reason::ALL {
                let i = metric_index(d, r) as usize;
                assert!(i < seen.len(), "{d:?}/{r:?} out of range");
                assert!(!seen[i], "{d:?}/{r:?} shares slot {i}");
                seen[i] = true;
            }
        }
    }

    #[test]
    fn codes_round_trip_and_drops_are_marked() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r as u32), Some(r));
        }
        assert_eq!(Reason::from_code(63), None);
        assert!(Reason::DropMalformed.is_drop());
        assert!(!Reason::Forwarded.is_drop());
        assert!(!Reason::NotIpv4.is_drop());
    }
}
