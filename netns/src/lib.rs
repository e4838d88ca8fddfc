//! Named network namespaces, compatible with `ip netns`, and running code inside one.
//!
//! `setns(2)` changes the namespace of one OS thread only, so code never switches the
//! namespace of a thread it does not own: [`NetNs::run`] starts a fresh thread, moves it
//! into the namespace, runs the closure there and joins it. Sockets keep the namespace they
//! were created in, so a netlink or TCP socket opened inside `run` can be used from any
//! thread afterwards.
// One `unsafe` block: reading `SO_NETNS_COOKIE`, which has no safe wrapper.
#![deny(unsafe_code)]

use std::{
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {name} already exists")]
    Exists { name: String },
    #[error("network namespace {name} does not exist")]
    NotFound { name: String },
    #[error("invalid network namespace name {name:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName { name: String },
    #[error("{action} for network namespace {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread running inside network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

type Result<T, E = NetNsError> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetNsError + 'a {
    move |source| NetNsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn nix_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> NetNsError + 'a {
    move |errno| NetNsError::Io {
        action,
        path: path.to_owned(),
        source: io::Error::from(errno),
    }
}

/// A network namespace reachable through a file (a bind mount under [`NETNS_RUN_DIR`], or
/// any `/proc/PID/ns/net` path, as a CNI runtime passes in `CNI_NETNS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates a named namespace, like `ip netns add NAME`, with its loopback down (as the
    /// kernel makes it).
    pub fn create(name: &str) -> Result<Self> {
        validate_name(name)?;
        let dir = Path::new(NETNS_RUN_DIR);
        fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        make_run_dir_shared(dir)?;
        let path = dir.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(io_err("creating mount point", &path)(e)),
        }
        let target = path.clone();
        let made = thread::spawn(move || -> Result<()> {
            // This thread alone moves to the new namespace, then pins it with a bind mount
            // of its own namespace file, and ends.
            unshare(CloneFlags::CLONE_NEWNET).map_err(nix_err("unshare", &target))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_err("bind-mounting", &target))
        })
        .join()
        .map_err(|_| NetNsError::Panicked { path: path.clone() })?;
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Self { path })
    }

    /// A named namespace that exists, like the `NAME` in `ip netns exec NAME`.
    pub fn open(name: &str) -> Result<Self> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        if !is_namespace(&path) {
            return Err(NetNsError::NotFound {
                name: name.to_owned(),
            });
        }
        Ok(Self { path })
    }

    /// A namespace given by path, such as `/proc/1234/ns/net` or `/var/run/netns/cni-...`.
    pub fn from_path(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        File::open(&path).map_err(io_err("opening", &path))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name under [`NETNS_RUN_DIR`], if it is a named namespace.
    pub fn name(&self) -> Option<&str> {
        (self.path.parent() == Some(Path::new(NETNS_RUN_DIR)))
            .then(|| self.path.file_name().and_then(|n| n.to_str()))
            .flatten()
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. Processes
    /// spawned and sockets opened by `f` belong to this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(&self.path).map_err(io_err("opening", &self.path))?;
        thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(nix_err("setns", &self.path))?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetNsError::Panicked {
                path: self.path.clone(),
            })?
        })
    }

    /// The namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14+): what eBPF's
    /// `bpf_get_netns_cookie` returns for sockets in it. Never reused while the machine
    /// runs, so a stale cookie can never match a new namespace.
    pub fn cookie(&self) -> Result<u64> {
        self.run(current_cookie)?
            .map_err(io_err("reading the cookie of", &self.path))
    }

    /// Identity of the namespace: the (device, inode) pair of its nsfs file.
    pub fn id(&self) -> Result<(u64, u64)> {
        let meta = fs::metadata(&self.path).map_err(io_err("reading", &self.path))?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Process ids of the processes whose network namespace this is, like
    /// `ip netns pids NAME`.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let id = self.id()?;
        let mut pids = Vec::new();
        let proc_dir = Path::new("/proc");
        for entry in fs::read_dir(proc_dir).map_err(io_err("listing", proc_dir))? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes come and go while we look; a vanished one is simply not listed.
            if let Ok(meta) = fs::metadata(entry.path().join("ns/net"))
                && (meta.dev(), meta.ino()) == id
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Removes a named namespace, like `ip netns delete NAME`. The namespace itself goes
    /// away once no process or socket uses it. Removing one that is already gone succeeds.
    pub fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        if !path.exists() {
            return Ok(());
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {} // EINVAL: not mounted.
            Err(e) => return Err(nix_err("unmounting", &path)(e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Names of all named namespaces, like `ip netns list`.
    pub fn list() -> Result<Vec<String>> {
        let dir = Path::new(NETNS_RUN_DIR);
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", dir)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Makes the namespace directory a shared mount point, as `ip netns add` does. Both must
/// agree: if `ip` turns the directory into a mount point after namespaces were mounted on
/// the plain directory, those mounts end up hidden underneath and can no longer be removed
/// by path.
fn make_run_dir_shared(dir: &Path) -> Result<()> {
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then share it.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(nix_err("bind-mounting", dir))?;
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .map_err(nix_err("sharing", dir))
        }
        Err(e) => Err(nix_err("sharing", dir)(e)),
    }
}

/// Whether `path` is a mounted network namespace (not just a leftover empty file).
fn is_namespace(path: &Path) -> bool {
    // nsfs files live on their own pseudo-filesystem; a plain file has the device of /run.
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(file), Some(Ok(dir))) => file.dev() != dir.dev(),
        _ => false,
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetNsError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// The cookie of the calling thread's network namespace (see [`NetNs::cookie`]), for code
/// already running inside one.
pub fn current_cookie() -> io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `cookie`, a live u64 of exactly
    // that size, and the length into `len`; `socket` is open.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_directory_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../x", "with space", &"x".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(NetNsError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        for good in ["twl-abc123-node1", "cni-1234.5_6"] {
            validate_name(good).unwrap();
        }
    }
}
