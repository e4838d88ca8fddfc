//! Per-node kernel resources outside the network namespaces: a cgroup v2 directory and a
//! bpffs pin directory, so programs and maps of simulated nodes never collide.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs},
};

use crate::LabError;

/// Where bpffs is normally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Where the lab mounts cgroup v2 when the machine has no cgroup v2 hierarchy mounted.
const PRIVATE_CGROUP2: &str = "/run/twill/cgroup2";

fn io_err(action: &str, path: &Path, e: impl std::fmt::Display) -> LabError {
    LabError::Resource {
        action: action.to_owned(),
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The cgroup v2 mount point: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified`
/// on a hybrid one, or a private mount made here when there is none.
pub fn cgroup2_root() -> Result<PathBuf, LabError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(mountinfo).map_err(|e| io_err("reading", mountinfo, e))?;
    if let Some(path) = text.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options ... - fstype source opts
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
    }) {
        return Ok(PathBuf::from(path));
    }
    let private = Path::new(PRIVATE_CGROUP2);
    fs::create_dir_all(private).map_err(|e| io_err("creating", private, e))?;
    mount(
        Some("cgroup2"),
        private,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| io_err("mounting cgroup2 on", private, e))?;
    Ok(private.to_owned())
}

/// Makes sure bpffs is mounted at [`BPFFS_ROOT`], as every BPF-based CNI needs.
pub fn ensure_bpffs() -> Result<PathBuf, LabError> {
    let root = Path::new(BPFFS_ROOT);
    let is_bpffs = statfs(root)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false);
    if !is_bpffs {
        fs::create_dir_all(root).map_err(|e| io_err("creating", root, e))?;
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io_err("mounting bpffs on", root, e))?;
    }
    Ok(root.to_owned())
}

/// Whether `path` is on a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

pub fn create_dir(path: &Path) -> Result<(), LabError> {
    fs::create_dir_all(path).map_err(|e| io_err("creating", path, e))
}

/// Processes in a cgroup and all its descendants.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return pids;
    };
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            pids.extend(cgroup_pids(&entry.path()));
        }
    }
    pids
}

/// Removes a cgroup directory tree, deepest first. Cgroup directories cannot be removed
/// recursively like files: each must be empty of processes and removed with rmdir.
pub fn remove_cgroup(dir: &Path) -> Result<(), LabError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", dir, e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup(&entry.path())?;
        }
    }
    // A cgroup whose last process just exited can be briefly busy.
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(io_err(
        "removing cgroup",
        dir,
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

/// Removes a bpffs directory and every pin in it (unpinning drops the kernel object once
/// nothing else holds it).
pub fn remove_pins(dir: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing pins in", dir, e)),
    }
}
