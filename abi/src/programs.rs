//! Names of the programs in the object file and where each one attaches.

/// tc ingress on the host side of a pod's veth: packets the pod sends.
pub const FROM_POD: &str = "twill_from_pod";
/// tc egress on the host side of a pod's veth: packets on their way into the pod.
pub const TO_POD: &str = "twill_to_pod";

/// Every program in the object, for loaders and for `twilld check`.
pub const ALL: [&str; 2] = [FROM_POD, TO_POD];
