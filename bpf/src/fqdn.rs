//! Learned FQDN addresses (`TWILL_FQDN`) and the names behind them (`TWILL_FQDN_NAME`)
//! from userspace. `twill-dnsd` writes them, by their pins, before it sends an answer to
//! a pod that an FQDNPolicy selects; `netctl why` reads them. `twilld` only creates and
//! pins them when it loads the programs, so they outlive both processes.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError};
use twill_abi::{
    maps,
    policy::{FqdnAllow, FqdnKey, FqdnName, MAX_FQDN_NAME},
};

use crate::{DatapathError, Result, read_pinned};

/// The id of a name in `TWILL_FQDN_NAME`: 64-bit FNV-1a of its lower-case bytes, the same
/// in every process and every run.
pub fn fqdn_name_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A name as the names map holds it (cut at [`MAX_FQDN_NAME`] bytes).
pub fn fqdn_name(name: &str) -> FqdnName {
    let mut out = FqdnName::default();
    let bytes = name.as_bytes();
    let len = bytes.len().min(MAX_FQDN_NAME);
    out.bytes[..len].copy_from_slice(&bytes[..len]);
    out.len = len as u16;
    out
}

/// The text of a names map value.
pub fn fqdn_name_text(name: &FqdnName) -> String {
    let len = usize::from(name.len).min(MAX_FQDN_NAME);
    String::from_utf8_lossy(&name.bytes[..len]).into_owned()
}

/// Both FQDN maps of a node, opened by their pins.
pub struct FqdnMaps {
    allows: HashMap<MapData, FqdnKey, FqdnAllow>,
    names: HashMap<MapData, u64, FqdnName>,
}

fn open<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let map_err = |source| DatapathError::Map {
        name,
        path: path.clone(),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    HashMap::try_from(Map::HashMap(data)).map_err(map_err)
}

fn write_error(
    pin_dir: &Path,
    name: &'static str,
    capacity: u32,
    source: MapError,
) -> DatapathError {
    // A full hash map answers E2BIG.
    if matches!(&source, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG))
    {
        return DatapathError::Full { name, capacity };
    }
    DatapathError::Map {
        name,
        path: pin_dir.join(name),
        source: Box::new(source),
    }
}

fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl FqdnMaps {
    /// Opens the maps under a node's bpffs directory; fails while twilld has not pinned
    /// them yet.
    pub fn open(pin_dir: &Path) -> Result<FqdnMaps> {
        Ok(FqdnMaps {
            allows: open(pin_dir, maps::FQDN_ALLOWS)?,
            names: open(pin_dir, maps::FQDN_NAMES)?,
        })
    }

    /// The entry of `key`, if there is one.
    pub fn get(&self, key: &FqdnKey) -> Option<FqdnAllow> {
        self.allows.get(key, 0).ok()
    }

    /// Writes the name first, then the entry: whoever reads an entry finds its name.
    pub fn learn(
        &mut self,
        pin_dir: &Path,
        key: FqdnKey,
        allow: FqdnAllow,
        name: &str,
    ) -> Result<()> {
        let id = allow.name;
        if self.names.get(&id, 0).is_err() {
            self.names.insert(id, fqdn_name(name), 0).map_err(|e| {
                write_error(
                    pin_dir,
                    maps::FQDN_NAMES,
                    twill_abi::policy::MAX_FQDN_NAMES,
                    e,
                )
            })?;
        }
        self.allows.insert(key, allow, 0).map_err(|e| {
            write_error(
                pin_dir,
                maps::FQDN_ALLOWS,
                twill_abi::policy::MAX_FQDN_ALLOWS,
                e,
            )
        })
    }

    /// Removes the entry of `key`; whether there was one.
    pub fn remove(&mut self, key: &FqdnKey) -> bool {
        self.allows.remove(key).is_ok()
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<(FqdnKey, FqdnAllow)> {
        self.allows.iter().filter_map(|e| e.ok()).collect()
    }

    /// Removes the entries that expired before `before_ns`, and the names no entry uses
    /// any more. Returns how many entries went.
    pub fn sweep(&mut self, before_ns: u64) -> usize {
        let entries = self.entries();
        let mut removed = 0;
        let mut used = std::collections::HashSet::new();
        for (key, allow) in entries {
            if allow.expires_ns < before_ns {
                if self.allows.remove(&key).is_ok() {
                    removed += 1;
                }
            } else {
                used.insert(allow.name);
            }
        }
        let names: Vec<u64> = self.names.keys().filter_map(|k| k.ok()).collect();
        for id in names {
            // A name another writer just took into use is written again with its entry.
            if !used.contains(&id) {
                let _ = self
                    .names
                    .remove(&id)
                    .or_else(|e| if is_missing(&e) { Ok(()) } else { Err(e) });
            }
        }
        removed
    }
}

/// A learned address as `netctl` shows it.
#[derive(Clone, Debug)]
pub struct LearnedAddress {
    pub key: FqdnKey,
    pub allow: FqdnAllow,
    /// The name it was learned for; `None` when the names map has no entry for it.
    pub name: Option<String>,
}

/// Every learned address of a node, with its name.
pub fn read_fqdn(pin_dir: &Path) -> Result<Vec<LearnedAddress>> {
    let allows: Vec<(FqdnKey, FqdnAllow)> = read_pinned(pin_dir, maps::FQDN_ALLOWS)?;
    let names: std::collections::HashMap<u64, FqdnName> = read_pinned(pin_dir, maps::FQDN_NAMES)?
        .into_iter()
        .collect();
    Ok(allows
        .into_iter()
        .map(|(key, allow)| LearnedAddress {
            key,
            allow,
            name: names.get(&allow.name).map(fqdn_name_text),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_ids_ignore_case_and_names_round_trip() {
        assert_eq!(
            fqdn_name_id("Allowed.Example"),
            fqdn_name_id("allowed.example")
        );
        assert_ne!(fqdn_name_id("a.example"), fqdn_name_id("b.example"));
        assert_eq!(fqdn_name_text(&fqdn_name("x.example")), "x.example");
        let long = "a".repeat(300);
        assert_eq!(fqdn_name_text(&fqdn_name(&long)).len(), MAX_FQDN_NAME);
    }
}
