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
        fqdn: u8::from(policy.fqdn),
        _pad: 0,
        any_ports: [any_ports(&policy.ingress), any_ports(&policy.egress)],
        deny_counter,
    }
}

/// What a node's maps decide for a new connection, read from the entries themselves (the
/// datapath's two longest-prefix lookups, ANDed): the matching bits, 0 when none match.
/// `peers`/`ports` are a node's whole tries; only `table`'s entries in `direction` count.
pub fn live_bits(
    endpoint: &PolicyEndpoint,
    peers: &[((u32, PeerPrefix), u64)],
    ports: &[((u32, PortPrefix), u64)],
    direction: Direction,
    peer: std::net::Ipv4Addr,
    protocol: u8,
    port: u16,
) -> u64 {
    let scope = twill_abi::policy::scope(endpoint.table, direction.index());
    let d = direction.index() as usize;
    let longest = |entries: &mut dyn Iterator<Item = (u32, u64)>| {
        entries
            .max_by_key(|(len, _)| *len)
            .map_or(0, |(_, bits)| bits)
    };
    let peer_value = u32::from(peer);
    let peer_bits = longest(&mut peers.iter().filter_map(|((len, k), bits)| {
        let len = len.checked_sub(32)?;
        (k.scope == scope && prefix_matches(u32::from_be(k.ip), peer_value, len, 32))
            .then_some((len, *bits))
    }));
    let port_bits = if crate::has_ports(protocol) {
        let value = u32::from(protocol) << 16 | u32::from(port);
        longest(&mut ports.iter().filter_map(|((len, k), bits)| {
            let len = len.checked_sub(32)?;
            let [a, b, c, _] = k.proto_port;
            let key = u32::from_be_bytes([0, a, b, c]);
            (k.scope == scope && prefix_matches(key, value, len, crate::PORT_KEY_BITS as u32))
                .then_some((len, *bits))
        }))
    } else {
        0
    };
    peer_bits & (port_bits | endpoint.any_ports[d])
}

fn prefix_matches(prefix: u32, value: u32, len: u32, width: u32) -> bool {
    if len == 0 {
        return true;
    }
    if len > width {
        return false;
    }
    let shift = width - len;
    (prefix >> shift) == (value >> shift)
}

/// How a node's entries for `table` differ from `expected`: missing, extra or different
/// entries, in words (empty when they agree).
pub fn table_differences(
    expected: &TableEntries,
    table: u32,
    peers: &[((u32, PeerPrefix), u64)],
    ports: &[((u32, PortPrefix), u64)],
) -> Vec<String> {
    fn diff<K: Copy + PartialEq + std::fmt::Debug>(
        what: &str,
        want: &[((u32, K), u64)],
        have: Vec<&((u32, K), u64)>,
        out: &mut Vec<String>,
    ) {
        let missing = want.iter().filter(|w| !have.contains(w)).count();
        let extra = have
            .iter()
            .filter(|h| !want.iter().any(|w| w == **h))
            .count();
        if missing > 0 || extra > 0 {
            out.push(format!(
                "{what}: {missing} entries missing or different, {extra} unexpected (holds {}, should hold {})",
                have.len(),
                want.len()
            ));
        }
    }
    let of_table = |scope: u32| u32::from_be(scope) >> 1 == table;
    let mut out = Vec::new();
    diff(
        "peer trie",
        &expected.peers,
        peers
            .iter()
            .filter(|((_, k), _)| of_table(k.scope))
            .collect(),
        &mut out,
    );
    diff(
        "port trie",
        &expected.ports,
        ports
            .iter()
            .filter(|((_, k), _)| of_table(k.scope))
            .collect(),
        &mut out,
    );
    out
}
