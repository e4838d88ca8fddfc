//! Names of the programs in the object file and where each one attaches.

/// tc ingress on the host side of a pod's veth: packets the pod sends.
pub const FROM_POD: &str = "twill_from_pod";
/// tc egress on the host side of a pod's veth: packets on their way into the pod.
pub const TO_POD: &str = "twill_to_pod";
/// tc ingress on the node's underlay interface: NodePort requests from outside.
pub const FROM_WORLD: &str = "twill_from_world";
/// tc ingress on the node's VXLAN device: replies of NodePort flows whose backend is on
/// another node.
pub const FROM_OVERLAY: &str = "twill_from_overlay";
/// cgroup `connect4` on the node's cgroup: a host process connecting (TCP, connected UDP).
pub const CONNECT4: &str = "twill_connect4";
/// cgroup `sendmsg4` on the node's cgroup: a host process sending unconnected UDP.
pub const SENDMSG4: &str = "twill_sendmsg4";
/// cgroup `recvmsg4` on the node's cgroup: a host process receiving UDP.
pub const RECVMSG4: &str = "twill_recvmsg4";
/// cgroup `getpeername4` on the node's cgroup: a host process asking for a socket's peer.
pub const GETPEERNAME4: &str = "twill_getpeername4";

/// The tc programs attached to each pod's interface.
pub const POD: [&str; 2] = [FROM_POD, TO_POD];
/// Every tc program.
pub const TC: [&str; 4] = [FROM_POD, TO_POD, FROM_WORLD, FROM_OVERLAY];
/// The socket programs, attached once per node to its cgroup.
pub const SOCKET: [&str; 4] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];
/// Every program in the object, for loaders and for `twilld check`.
pub const ALL: [&str; 8] = [
    FROM_POD,
    TO_POD,
    FROM_WORLD,
    FROM_OVERLAY,
    CONNECT4,
    SENDMSG4,
    RECVMSG4,
    GETPEERNAME4,
];
