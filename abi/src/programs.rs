//! Names of the programs in the object file and where each one attaches.

/// tc ingress on the host side of a pod's veth: packets the pod sends.
pub const FROM_POD: &str = "twill_from_pod";
/// tc egress on the host side of a pod's veth: packets on their way into the pod.
pub const TO_POD: &str = "twill_to_pod";
/// cgroup `connect4` on the node's cgroup: a host process connecting (TCP, connected UDP).
pub const CONNECT4: &str = "twill_connect4";
/// cgroup `sendmsg4` on the node's cgroup: a host process sending unconnected UDP.
pub const SENDMSG4: &str = "twill_sendmsg4";
/// cgroup `recvmsg4` on the node's cgroup: a host process receiving UDP.
pub const RECVMSG4: &str = "twill_recvmsg4";

/// The tc programs, attached per pod interface.
pub const TC: [&str; 2] = [FROM_POD, TO_POD];
/// The socket programs, attached once per node to its cgroup.
pub const SOCKET: [&str; 3] = [CONNECT4, SENDMSG4, RECVMSG4];
/// Every program in the object, for loaders and for `twilld check`.
pub const ALL: [&str; 5] = [FROM_POD, TO_POD, CONNECT4, SENDMSG4, RECVMSG4];
