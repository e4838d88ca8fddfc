//! A compiled table as the BPF maps hold it: the tries' keys and values for a table id,
//! and the endpoint entry of a pod. `twilld` writes these; `netctl why` compares them
//! with what a node's maps hold.

use twill_abi::policy::{
    MODE_AUDIT, MODE_ENFORCE, MODE_OPEN, PeerPrefix, PolicyEndpoint, PortPrefix, peer_key, port_key,
};

use crate::{Direction, DirectionTable, EndpointPolicy, Mode};

/// The map entries of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableEntries {
    /// (prefix length, key data) -> rule bits, for `TWILL_POL_PEER`.
    pub peers: Vec<((u32, PeerPrefix), u64)>,
    /// (prefix length, key data) -> rule bits, for `TWILL_POL_PORT`.
    pub ports: Vec<((u32, PortPrefix), u64)>,
}

pub fn mode_code(mode: Mode) -> u8 {
    match mode {
        Mode::Open => MODE_OPEN,
        Mode::Enforce => MODE_ENFORCE,
        Mode::Audit => MODE_AUDIT,
    }
}

/// The tries' entries for `policy` under table id `table`. A direction whose table could
/// not be compiled gets none (in enforce mode that denies everything).
pub fn table_entries(table: u32, policy: &EndpointPolicy) -> TableEntries {
    let mut out = TableEntries::default();
    for d in Direction::BOTH {
        let t = policy.direction(d);
        if t.mode == Mode::Open || t.error.is_some() {
            continue;
        }
        for (p, bits) in &t.peers {
            out.peers
                .push((peer_key(table, d.index(), p.value, p.len), *bits));
        }
        for (p, bits) in &t.ports {
            out.ports
                .push((port_key(table, d.index(), p.value, p.len), *bits));
        }
    }
    out
}

fn any_ports(t: &DirectionTable) -> u64 {
    if t.error.is_some() { 0 } else { t.any_ports }
}

/// A pod's endpoint entry pointing at `table`, with its denial counter slots.
pub fn endpoint_entry(
    table: u32,
    policy: &EndpointPolicy,
    deny_counter: [u32; 2],
) -> PolicyEndpoint {
    PolicyEndpoint {
        table,
        modes: [
            mode_code(policy.ingress.mode),
            mode_code(policy.egress.mode),
        ],
        _pad: [0; 2],
        any_ports: [any_ports(&policy.ingress), any_ports(&policy.egress)],
        deny_counter,
    }
}
