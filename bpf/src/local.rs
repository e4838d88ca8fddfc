//! Node-local backends (`TWILL_DNS_LOCAL`) from userspace: a server on the node, such as
//! `twill-dnsd`, takes a frontend's new flows while it keeps its entry fresh.
//!
//! These functions open the map by its pin, so a process other than `twilld` (which
//! creates and pins it when it loads the programs) can write it.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use twill_abi::{
    lb::{FrontendKey, LocalBackend},
    maps,
};

use crate::{DatapathError, Result};

/// Where the node-local backend map is pinned under a node's bpffs directory.
pub fn local_backend_pin(pin_dir: &Path) -> PathBuf {
    pin_dir.join(maps::DNS_LOCAL)
}

fn open(pin_dir: &Path) -> Result<HashMap<MapData, FrontendKey, LocalBackend>> {
    let path = local_backend_pin(pin_dir);
    let map_err = |source| DatapathError::Map {
        name: maps::DNS_LOCAL,
        path: path.clone(),
        source: Box::new(source),
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    HashMap::try_from(Map::HashMap(data)).map_err(map_err)
}

fn map_error(pin_dir: &Path) -> impl Fn(MapError) -> DatapathError {
    let path = local_backend_pin(pin_dir);
    move |source| DatapathError::Map {
        name: maps::DNS_LOCAL,
        path: path.clone(),
        source: Box::new(source),
    }
}

/// Writes (or renews) the node-local backend of frontend `key`.
pub fn set_local_backend(pin_dir: &Path, key: FrontendKey, value: LocalBackend) -> Result<()> {
    let mut map = open(pin_dir)?;
    map.insert(key, value, 0).map_err(map_error(pin_dir))
}

/// Removes the node-local backend of frontend `key`; a missing entry is not an error.
pub fn remove_local_backend(pin_dir: &Path, key: &FrontendKey) -> Result<()> {
    let mut map = open(pin_dir)?;
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_error(pin_dir)(e)),
    }
}

/// Every node-local backend entry, fresh or stale.
pub fn read_local_backends(pin_dir: &Path) -> Result<Vec<(FrontendKey, LocalBackend)>> {
    crate::read_pinned(pin_dir, maps::DNS_LOCAL)
}

/// Now on `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads, which
/// [`LocalBackend::alive_until_ns`] is compared with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration; CLOCK_MONOTONIC
    // always exists on Linux, so the call cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
