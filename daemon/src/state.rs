//! The daemon's state directory: which subnet the node had and which pod addresses are in
//! use, so a restarted daemon keeps both. Writes are atomic (write, fsync, rename).

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;
use serde::{Serialize, de::DeserializeOwned};
use twill_api::{AttachmentKey, PENDING_RELEASES_DIR};
use twill_ipam::Allocations;

const SUBNET_FILE: &str = "subnet.json";
const ALLOCATIONS_FILE: &str = "allocations.json";

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct StateError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, owner-only) the state directory.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        for dir in [root.to_owned(), root.join(PENDING_RELEASES_DIR)] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| StateError {
                    action: "creating",
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn load_subnet(&self) -> Result<Option<Ipv4Network>, StateError> {
        self.load(SUBNET_FILE)
    }

    pub fn save_subnet(&self, subnet: Ipv4Network) -> Result<(), StateError> {
        self.save(SUBNET_FILE, &subnet)
    }

    pub fn load_allocations(&self) -> Result<Option<Allocations>, StateError> {
        self.load(ALLOCATIONS_FILE)
    }

    pub fn save_allocations(&self, allocations: &Allocations) -> Result<(), StateError> {
        self.save(ALLOCATIONS_FILE, allocations)
    }

    /// Keeps the allocations of a subnet the node no longer holds, for the operator.
    pub fn set_aside_allocations(&self, old: Ipv4Network) -> Result<PathBuf, StateError> {
        let from = self.root.join(ALLOCATIONS_FILE);
        let to = self.root.join(format!(
            "allocations.{}-{}.stale.json",
            old.network(),
            old.prefix()
        ));
        fs::rename(&from, &to).map_err(|source| StateError {
            action: "setting aside",
            path: from,
            source,
        })?;
        Ok(to)
    }

    /// Releases the CNI binary queued while the daemon was down.
    pub fn pending_releases(&self) -> Vec<(PathBuf, AttachmentKey)> {
        let dir = self.root.join(PENDING_RELEASES_DIR);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let key = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((e.path(), key))
            })
            .collect()
    }

    fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError {
                    action: "reading",
                    path,
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError {
                action: "reading",
                path,
                source,
            }),
        }
    }

    fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let err = |action, source| StateError {
            action,
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).expect("state is plain data");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("writing", e))?;
        file.write_all(&bytes).map_err(|e| err("writing", e))?;
        file.sync_all().map_err(|e| err("syncing", e))?;
        fs::rename(&tmp, &path).map_err(|e| err("replacing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_ipam::PodSubnet;

    fn tmp() -> PathBuf {
        std::env::temp_dir().join(format!(
            "twilld-state-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ))
    }

    fn rand_suffix() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[test]
    fn subnet_and_allocations_survive_reopening_and_garbage_is_an_error() {
        let root = tmp();
        let state = StateDir::open(&root).unwrap();
        assert_eq!(state.load_subnet().unwrap(), None);
        let subnet: Ipv4Network = "10.244.9.0/24".parse().unwrap();
        state.save_subnet(subnet).unwrap();
        let mut a = Allocations::new(PodSubnet(subnet));
        let key = AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let ip = a.allocate(key.clone(), None).unwrap().ip;
        state.save_allocations(&a).unwrap();

        let again = StateDir::open(&root).unwrap();
        assert_eq!(again.load_subnet().unwrap(), Some(subnet));
        assert_eq!(
            again
                .load_allocations()
                .unwrap()
                .unwrap()
                .get(&key)
                .unwrap()
                .ip,
            ip
        );

        fs::write(root.join(SUBNET_FILE), "not json").unwrap();
        let err = again.load_subnet().unwrap_err().to_string();
        assert!(err.contains("subnet.json"), "{err}");
        fs::remove_dir_all(root).unwrap();
    }
}
