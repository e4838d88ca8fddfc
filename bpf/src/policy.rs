//! The NetworkPolicy maps from userspace: endpoint entries, the peer and port tries, the
//! bit-to-counter slots, the per-rule counters and the policy conntrack.

use std::path::Path;

use aya::maps::{
    Array, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use twill_abi::{
    maps,
    policy::{PeerPrefix, PolicyEndpoint, PolicyFlow, PolicyFlowKey, PortPrefix, RuleSlotKey},
};

use crate::{Datapath, DatapathError, Result, read_pinned};

/// A trie key as (prefix length, data).
pub type TrieKey<K> = (u32, K);

impl Datapath {
    fn map_error(&self, name: &'static str) -> impl Fn(MapError) -> DatapathError + '_ {
        move |source| {
            // A full hash map answers E2BIG (7), a full trie ENOSPC (28).
            let full = matches!(&source, MapError::SyscallError(e)
                if matches!(e.io_error.raw_os_error(), Some(7 | 28)));
            if full {
                return DatapathError::MapFull {
                    name,
                    capacity: self.capacity(name),
                };
            }
            DatapathError::Map {
                name,
                path: self.pin_dir.join(name),
                source: Box::new(source),
            }
        }
    }

    /// The capacity of a loaded map (0 when it is not known).
    pub fn capacity(&self, name: &str) -> u32 {
        self.ebpf
            .map(name)
            .and_then(|m| match m {
                Map::LpmTrie(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuArray(d)
                | Map::Array(d) => d.info().ok().map(|i| i.max_entries()),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Every policy conntrack entry's count (a walk of the LRU map: for reports, not for
    /// every pass).
    pub fn policy_flow_count(&mut self) -> Result<u64> {
        let map = self.hash_map::<PolicyFlowKey, PolicyFlow>(maps::POLICY_FLOWS);
        Ok(map?.keys().filter(|k| k.is_ok()).count() as u64)
    }

    /// The policy counters, summed over CPUs, indexed by slot.
    pub fn policy_counters(&mut self) -> Result<Vec<u64>> {
        let counters = self.typed_map::<PerCpuArray<&mut MapData, u64>>(maps::POLICY_COUNTERS)?;
        Ok(counters
            .iter()
            .map(|v| v.map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0))
            .collect())
    }

    /// The policy counters of `slots` only, summed over CPUs, in that order: one lookup
    /// each, where [`Self::policy_counters`] reads all of them.
    pub fn policy_counters_of(&mut self, slots: &[u32]) -> Result<Vec<u64>> {
        let counters = self.typed_map::<PerCpuArray<&mut MapData, u64>>(maps::POLICY_COUNTERS)?;
        Ok(slots
            .iter()
            .map(|slot| {
                counters
                    .get(slot, 0)
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .unwrap_or(0)
            })
            .collect())
    }

    /// A loaded map by name, as the map type `M` (an LPM trie, an array, ...).
    fn typed_map<'a, M>(&'a mut self, name: &'static str) -> Result<M>
    where
        M: TryFrom<&'a mut Map, Error = MapError>,
    {
        let path = self.pin_dir.join(name);
        let map = self.ebpf.map_mut(name).ok_or_else(|| DatapathError::Map {
            name,
            path: path.clone(),
            source: Box::new(MapError::InvalidName {
                name: name.to_owned(),
            }),
        })?;
        M::try_from(map).map_err(|source| DatapathError::Map {
            name,
            path,
            source: Box::new(source),
        })
    }

    fn trie<K: aya::Pod>(&mut self, name: &'static str) -> Result<LpmTrie<&mut MapData, K, u64>> {
        self.typed_map(name)
    }

    /// Every local pod's policy entry: address (wire order) -> entry.
    pub fn policy_endpoints(&mut self) -> Result<Vec<(u32, PolicyEndpoint)>> {
        let map = self.hash_map::<u32, PolicyEndpoint>(maps::POLICY_ENDPOINTS)?;
        Ok(map.iter().filter_map(|e| e.ok()).collect())
    }

    /// Points a pod (address in wire order) at its table. Fails when the map is full: the
    /// pod's packets are then dropped (no entry), never passed unfiltered.
    pub fn set_policy_endpoint(&mut self, ip: u32, entry: PolicyEndpoint) -> Result<()> {
        let result = self
            .hash_map::<u32, PolicyEndpoint>(maps::POLICY_ENDPOINTS)?
            .insert(ip, entry, 0);
        result.map_err(self.map_error(maps::POLICY_ENDPOINTS))
    }

    pub fn remove_policy_endpoint(&mut self, ip: u32) -> Result<()> {
        let mut map = self.hash_map::<u32, PolicyEndpoint>(maps::POLICY_ENDPOINTS)?;
        match map.remove(&ip) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(self.map_error(maps::POLICY_ENDPOINTS)(e)),
        }
    }

    /// Writes a table's trie entries and its bits' counter slots.
    pub fn insert_policy_table(
        &mut self,
        peers: &[(TrieKey<PeerPrefix>, u64)],
        ports: &[(TrieKey<PortPrefix>, u64)],
        slots: &[(RuleSlotKey, u32)],
    ) -> Result<()> {
        let mut trie = self.trie::<PeerPrefix>(maps::POLICY_PEERS)?;
        let mut failed = None;
        for ((len, data), bits) in peers {
            if let Err(e) = trie.insert(&Key::new(*len, *data), bits, 0) {
                failed = Some((maps::POLICY_PEERS, e));
                break;
            }
        }
        if failed.is_none() {
            let mut trie = self.trie::<PortPrefix>(maps::POLICY_PORTS)?;
            for ((len, data), bits) in ports {
                if let Err(e) = trie.insert(&Key::new(*len, *data), bits, 0) {
                    failed = Some((maps::POLICY_PORTS, e));
                    break;
                }
            }
        }
        if failed.is_none() {
            let mut map = self.hash_map::<RuleSlotKey, u32>(maps::POLICY_RULES)?;
            for (key, slot) in slots {
                if let Err(e) = map.insert(key, slot, 0) {
                    failed = Some((maps::POLICY_RULES, e));
                    break;
                }
            }
        }
        match failed {
            None => Ok(()),
            Some((name, e)) => Err(self.map_error(name)(e)),
        }
    }

    /// Removes trie entries and counter slots (missing ones are fine).
    pub fn remove_policy_entries(
        &mut self,
        peers: &[TrieKey<PeerPrefix>],
        ports: &[TrieKey<PortPrefix>],
        slots: &[RuleSlotKey],
    ) -> Result<()> {
        let mut trie = self.trie::<PeerPrefix>(maps::POLICY_PEERS)?;
        for (len, data) in peers {
            let _ = trie.remove(&Key::new(*len, *data));
        }
        let mut trie = self.trie::<PortPrefix>(maps::POLICY_PORTS)?;
        for (len, data) in ports {
            let _ = trie.remove(&Key::new(*len, *data));
        }
        let mut map = self.hash_map::<RuleSlotKey, u32>(maps::POLICY_RULES)?;
        for key in slots {
            let _ = map.remove(key);
        }
        Ok(())
    }

    /// Every key of both tries and of the slot map: what a starting daemon prunes.
    #[allow(clippy::type_complexity)]
    pub fn policy_keys(
        &mut self,
    ) -> Result<(
        Vec<TrieKey<PeerPrefix>>,
        Vec<TrieKey<PortPrefix>>,
        Vec<RuleSlotKey>,
    )> {
        let peers = self
            .trie::<PeerPrefix>(maps::POLICY_PEERS)?
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let ports = self
            .trie::<PortPrefix>(maps::POLICY_PORTS)?
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let slots = self
            .hash_map::<RuleSlotKey, u32>(maps::POLICY_RULES)?
            .keys()
            .filter_map(|k| k.ok())
            .collect();
        Ok((peers, ports, slots))
    }

    /// Sets a counter slot to zero on every CPU (before it is given to a new rule).
    pub fn reset_policy_counter(&mut self, slot: u32) -> Result<()> {
        let zeros = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .and_then(|cpus| PerCpuValues::try_from(vec![0u64; cpus]))
            .map_err(|source| DatapathError::Cpus { source })?;
        let result = self
            .typed_map::<PerCpuArray<&mut MapData, u64>>(maps::POLICY_COUNTERS)?
            .set(slot, zeros, 0);
        result.map_err(self.map_error(maps::POLICY_COUNTERS))
    }

    fn state_array(&mut self) -> Result<Array<&mut MapData, u32>> {
        self.typed_map(maps::POLICY_STATE)
    }

    /// The next table id this node hands out (kept in a pinned map, so ids are never
    /// reused across daemon restarts while conntrack entries may still name them).
    pub fn policy_next_table(&mut self) -> Result<u32> {
        let result = self.state_array()?.get(&0, 0);
        result
            .map(|next| next.max(1))
            .map_err(self.map_error(maps::POLICY_STATE))
    }

    pub fn set_policy_next_table(&mut self, next: u32) -> Result<()> {
        let result = self.state_array()?.set(0, next, 0);
        result.map_err(self.map_error(maps::POLICY_STATE))
    }
}

/// A node's pinned policy maps, read for the CLI (`netctl why`, `netctl bpf policy`).
#[derive(Clone, Debug, Default)]
pub struct PolicyMaps {
    pub endpoints: Vec<(u32, PolicyEndpoint)>,
    pub peers: Vec<(TrieKey<PeerPrefix>, u64)>,
    pub ports: Vec<(TrieKey<PortPrefix>, u64)>,
    pub slots: Vec<(RuleSlotKey, u32)>,
    /// Counter values (summed over CPUs), indexed by slot.
    pub counters: Vec<u64>,
}

fn pinned_map(pin_dir: &Path, name: &'static str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).map_err(|source| DatapathError::Map {
        name,
        path,
        source: Box::new(source),
    })
}

fn read_trie<K: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<Vec<(TrieKey<K>, u64)>> {
    let path = pin_dir.join(name);
    let err = |source| DatapathError::Map {
        name,
        path: path.clone(),
        source: Box::new(source),
    };
    let trie: LpmTrie<MapData, K, u64> =
        LpmTrie::try_from(Map::LpmTrie(pinned_map(pin_dir, name)?)).map_err(err)?;
    Ok(trie
        .iter()
        .filter_map(|e| e.ok())
        .map(|(k, v)| ((k.prefix_len(), k.data()), v))
        .collect())
}

/// Reads a node's pinned policy maps.
pub fn read_policy(pin_dir: &Path) -> Result<PolicyMaps> {
    let name = maps::POLICY_COUNTERS;
    let path = pin_dir.join(name);
    let err = |source| DatapathError::Map {
        name,
        path: path.clone(),
        source: Box::new(source),
    };
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(pinned_map(pin_dir, name)?)).map_err(err)?;
    let counters = counters
        .iter()
        .map(|v| v.map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0))
        .collect();
    Ok(PolicyMaps {
        endpoints: read_pinned(pin_dir, maps::POLICY_ENDPOINTS)?,
        peers: read_trie(pin_dir, maps::POLICY_PEERS)?,
        ports: read_trie(pin_dir, maps::POLICY_PORTS)?,
        slots: read_pinned(pin_dir, maps::POLICY_RULES)?,
        counters,
    })
}

/// Reads a node's pinned policy conntrack: flows as seen from local pods.
pub fn read_policy_flows(pin_dir: &Path) -> Result<Vec<(PolicyFlowKey, PolicyFlow)>> {
    read_pinned(pin_dir, maps::POLICY_FLOWS)
}
