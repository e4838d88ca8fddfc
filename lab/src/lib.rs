//! A local multi-node twill cluster on one machine, for tests and for `netctl lab`.
//!
//! A lab is an underlay LAN (a bridge inside its own network namespace) with hosts plugged
//! into it: nodes, which will run `twilld` and pods, and external hosts (outside clients,
//! later BGP peers). Each host is a network namespace with an `eth0` on the underlay. The
//! lab runs a real etcd on the underlay, and gives every node its own cgroup v2 directory
//! and bpffs pin directory.
//!
//! Everything a lab makes is named after it (see [`plan`]) and recorded in a manifest under
//! [`STATE_ROOT`] *before* it is made, so teardown, `netctl lab down` and
//! `netctl lab cleanup` can always find it again, also after the process that made it was
//! killed. A [`Lab`] value tears its lab down when dropped (also during a panic's unwind)
//! unless it was made persistent. A namespace's files under [`NETNS_ETC_ROOT`] (what
//! `ip netns exec` mounts over `/etc`, such as a pod's `resolv.conf`) go with it.

pub mod plan;
pub mod process;
pub mod resources;
pub mod workload;

mod etcd;
mod net;

pub use crate::etcd::EtcdTls;

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use twill_netns::{NetNs, NetNsError};

pub use crate::plan::{HostPlan, LabPlan, PlanError, Role};
use crate::{plan::PREFIX, process::ProcessRef};

/// Where lab manifests, etcd data and logs live: one directory per lab.
pub const STATE_ROOT: &str = "/run/twill/labs";
const MANIFEST: &str = "manifest.json";
/// How long processes of a lab get to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Where `ip netns exec NAME` finds files it bind-mounts over `/etc` (`resolv.conf`, say)
/// for the namespace `NAME`. A lab's directories here are named after its namespaces and
/// removed with them.
pub const NETNS_ETC_ROOT: &str = "/etc/netns";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "lab {name} already exists (state in {state_dir}); `netctl lab down {name}` removes it"
    )]
    Exists { name: String, state_dir: PathBuf },
    #[error("no lab named {name} (no manifest in {state_dir})")]
    NotFound { name: String, state_dir: PathBuf },
    #[error("the lab needs root (it creates network namespaces, cgroups and bpffs pins)")]
    NotRoot,
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error("netlink: {0}")]
    Netlink(#[from] twill_netlink::NetlinkError),
    #[error("{action} {path}: {message}")]
    Resource {
        action: String,
        path: PathBuf,
        message: String,
    },
    #[error("etcd: {message}")]
    Etcd { message: String },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("tearing down lab {name} left {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Teardown { name: String, problems: Vec<String> },
}

/// What a lab holds, written down before any of it exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub plan: LabPlan,
    /// The process whose lab this is: when it is gone, the lab is stale and
    /// `netctl lab cleanup` removes it. `None` for a lab meant to outlive its creator
    /// (`netctl lab up`), removed only by `netctl lab down` or `cleanup --all`.
    pub owner: Option<ProcessRef>,
    pub state_dir: PathBuf,
    /// The lab's cgroup v2 directory; each node has a subdirectory.
    pub cgroup_dir: PathBuf,
    /// The lab's bpffs directory; each node has a subdirectory for its pins.
    pub bpffs_dir: PathBuf,
    pub etcd: Option<ProcessRef>,
    /// Set once every part is up.
    pub ready: bool,
    /// Namespaces made after `up` (pods), removed before the hosts'.
    #[serde(default)]
    pub extra_namespaces: Vec<String>,
    /// Client-side TLS material when etcd serves TLS.
    #[serde(default)]
    pub etcd_tls: Option<EtcdTls>,
    /// Pods added to the lab (`netctl lab pod add`), in the order they were added.
    #[serde(default)]
    pub pods: Vec<LabPod>,
}

/// A pod of the lab: a namespace wired by the CNI binary on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    pub container_id: String,
    pub ip: std::net::Ipv4Addr,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(MANIFEST)
    }

    fn write(&self) -> Result<(), LabError> {
        let path = Self::path(&self.state_dir);
        let err = |message: String| LabError::Manifest {
            path: path.clone(),
            message,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        // Write then rename, so a reader never sees half a manifest.
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }

    /// The manifest of the lab called `name`.
    pub fn load(name: &str) -> Result<Self, LabError> {
        let state_dir = Path::new(STATE_ROOT).join(name);
        let path = Self::path(&state_dir);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| LabError::Manifest {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LabError::NotFound {
                name: name.to_owned(),
                state_dir,
            }),
            Err(e) => Err(LabError::Manifest {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// Manifests of every lab on this machine, readable or not.
    pub fn list() -> Vec<Result<Self, LabError>> {
        let Ok(entries) = fs::read_dir(STATE_ROOT) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names.iter().map(|n| Self::load(n)).collect()
    }

    /// Every namespace of the lab: extra ones (pods) first, then hosts, then the underlay,
    /// which is the order they are removed in.
    pub fn namespaces(&self) -> Vec<&str> {
        self.extra_namespaces
            .iter()
            .map(String::as_str)
            .chain(self.plan.namespaces())
            .collect()
    }

    /// etcd's client URL (https when it serves TLS), reachable from every host.
    pub fn etcd_endpoint(&self) -> String {
        let url = self.plan.etcd_endpoint();
        if self.etcd_tls.is_some() {
            url.replacen("http://", "https://", 1)
        } else {
            url
        }
    }

    /// Whether the process that owns this lab is gone.
    pub fn is_stale(&self) -> bool {
        self.owner.is_some_and(|o| !o.is_alive())
    }

    /// A node or external host of this lab.
    pub fn host(&self, name: &str) -> Option<Host> {
        let plan = self.plan.hosts.iter().find(|h| h.name == name)?;
        Some(Host {
            cgroup_dir: self.cgroup_dir.join(&plan.name),
            bpffs_dir: self.bpffs_dir.join(&plan.name),
            state_dir: self.state_dir.join("hosts").join(&plan.name),
            plan: plan.clone(),
        })
    }

    pub fn hosts(&self) -> Vec<Host> {
        self.plan
            .hosts
            .iter()
            .filter_map(|h| self.host(&h.name))
            .collect()
    }
}

/// One host of a running lab.
#[derive(Clone, Debug)]
pub struct Host {
    pub plan: HostPlan,
    /// This host's cgroup v2 directory (nodes put `twilld` and their hooks here). Only
    /// nodes have one.
    pub cgroup_dir: PathBuf,
    /// This host's bpffs pin directory.
    pub bpffs_dir: PathBuf,
    /// A directory for this host's files (daemon socket, state, logs), removed with the
    /// lab. Hosts share one filesystem, so each needs its own.
    pub state_dir: PathBuf,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    pub fn netns(&self) -> Result<NetNs, LabError> {
        Ok(NetNs::open(&self.plan.netns)?)
    }

    /// Runs `f` on a thread inside this host's network namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        Ok(self.netns()?.run(f)?)
    }

    /// Starts a process inside this host's network namespace and, on a node, its cgroup:
    /// it joins the cgroup before it runs a single instruction of its own, so its first
    /// `connect` already goes through the node's socket programs.
    pub fn spawn(&self, cmd: Command) -> Result<Child, LabError> {
        self.spawn_in(&self.netns()?, cmd)
    }

    /// Starts a process inside `netns` (a pod's, say) and, on a node, this host's cgroup,
    /// as a real node's pods are: their processes live under the node's cgroup root.
    pub fn spawn_in(&self, netns: &NetNs, mut cmd: Command) -> Result<Child, LabError> {
        if self.plan.role == Role::Node {
            let procs = self.cgroup_dir.join("cgroup.procs");
            let path =
                std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).map_err(|e| {
                    LabError::Resource {
                        action: "naming".to_owned(),
                        path: procs.clone(),
                        message: e.to_string(),
                    }
                })?;
            // SAFETY: the hook runs in the child between fork and exec, where only
            // async-signal-safe calls are allowed: open(2), write(2) and close(2) on a path
            // made before the fork, with no allocation. Writing "0" to cgroup.procs moves the
            // writing process itself.
            unsafe {
                use std::os::unix::process::CommandExt as _;
                cmd.pre_exec(move || {
                    let fd = nix::fcntl::open(
                        path.as_c_str(),
                        nix::fcntl::OFlag::O_WRONLY,
                        nix::sys::stat::Mode::empty(),
                    )?;
                    nix::unistd::write(&fd, b"0")?;
                    Ok(())
                });
            }
        }
        netns
            .run(move || cmd.spawn())?
            .map_err(|e| LabError::Resource {
                action: format!("starting a process on {}", self.plan.name),
                path: self.cgroup_dir.clone(),
                message: e.to_string(),
            })
    }

    /// Runs a command to completion inside this host and returns its output.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<std::process::Output, LabError> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        self.run(move || cmd.output())?
            .map_err(|e| LabError::Resource {
                action: format!("running {program} on {}", self.plan.name),
                path: PathBuf::from(program),
                message: e.to_string(),
            })
    }
}

/// `/etc/netns/<name>`: the files `ip netns exec <name>` puts over `/etc`. `None` for a
/// name that is no plain file name (it would point elsewhere).
pub fn netns_etc_dir(name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    plain.then(|| Path::new(NETNS_ETC_ROOT).join(name))
}

/// Removes `/etc/netns/<netns>` and what is in it; one that is not there is no error.
fn remove_netns_etc_dir(netns: &str) -> Result<(), String> {
    let Some(dir) = netns_etc_dir(netns) else {
        return Ok(());
    };
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub name: String,
    pub nodes: u8,
    pub externals: u8,
    /// Outlive this process (`netctl lab up`): no owner, no teardown on drop.
    pub persistent: bool,
    /// Serve etcd over TLS with client-certificate authentication.
    pub etcd_tls: bool,
    /// How many nodes (the last ones) sit on a second underlay subnet, 172.31.0.0/24,
    /// joined to the first by a router (`twl-<lab>-router`); 0: one segment. See
    /// [`LabPlan::with_second_subnet`].
    pub second_subnet: u8,
}

impl LabSpec {
    /// A lab for a test: a fresh random name, owned by this process.
    pub fn for_test(nodes: u8, externals: u8) -> Self {
        Self {
            name: plan::random_name(),
            nodes,
            externals,
            persistent: false,
            etcd_tls: false,
            second_subnet: 0,
        }
    }
}

/// A running lab. A lab built by [`Lab::up`] is torn down when dropped (also during a
/// panic's unwind) until [`Lab::persist`] hands it off; a lab found with [`Lab::attach`]
/// is never torn down by a drop, only by [`Lab::down`].
#[derive(Debug)]
pub struct Lab {
    manifest: Manifest,
    children: Vec<Child>,
    teardown_on_drop: bool,
}

impl Lab {
    /// Builds the lab described by `spec`. On any failure, whatever was made is removed
    /// before the error is returned.
    pub fn up(spec: &LabSpec) -> Result<Self, LabError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let plan = LabPlan::new(&spec.name, spec.nodes, spec.externals)?
            .with_second_subnet(spec.second_subnet)?;
        fs::create_dir_all(STATE_ROOT).map_err(|e| LabError::Resource {
            action: "creating".to_owned(),
            path: STATE_ROOT.into(),
            message: e.to_string(),
        })?;
        let state_dir = Path::new(STATE_ROOT).join(&plan.name);
        match fs::create_dir(&state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(LabError::Exists {
                    name: plan.name,
                    state_dir,
                });
            }
            Err(e) => {
                return Err(LabError::Resource {
                    action: "creating".to_owned(),
                    path: state_dir,
                    message: e.to_string(),
                });
            }
        }
        let made = (|| {
            let cgroup_dir = resources::cgroup2_root()?.join(&plan.resource_dir);
            let bpffs_dir = resources::ensure_bpffs()?.join(&plan.resource_dir);
            Ok::<_, LabError>((cgroup_dir, bpffs_dir))
        })();
        let (cgroup_dir, bpffs_dir) = match made {
            Ok(dirs) => dirs,
            Err(e) => {
                let _ = fs::remove_dir_all(&state_dir);
                return Err(e);
            }
        };
        let wants_tls = spec.etcd_tls;
        let mut lab = Lab {
            manifest: Manifest {
                plan,
                owner: if spec.persistent {
                    None
                } else {
                    ProcessRef::current()
                },
                state_dir,
                cgroup_dir,
                bpffs_dir,
                etcd: None,
                ready: false,
                extra_namespaces: Vec::new(),
                etcd_tls: None,
                pods: Vec::new(),
            },
            children: Vec::new(),
            teardown_on_drop: true,
        };
        if let Err(e) = lab.manifest.write() {
            let _ = fs::remove_dir_all(&lab.manifest.state_dir);
            return Err(e);
        }
        match lab.build(wants_tls) {
            Ok(()) => Ok(lab),
            Err(e) => {
                // The lab's drop would do this too; doing it here keeps the order clear and
                // reports teardown trouble next to the cause.
                if let Err(teardown) = lab.teardown() {
                    eprintln!("{teardown}");
                }
                Err(e)
            }
        }
    }

    fn build(&mut self, tls: bool) -> Result<(), LabError> {
        if tls {
            self.manifest.etcd_tls = Some(etcd::make_certificates(
                &self.manifest.state_dir.join("tls"),
            )?);
            self.manifest.write()?;
        }
        let m = &self.manifest;
        let underlay = NetNs::create(&m.plan.underlay_netns)?;
        net::make_underlay(&underlay, m.plan.router.is_some())?;
        if let Some(router) = &m.plan.router {
            let ns = NetNs::create(&router.netns)?;
            net::make_router(&underlay, &ns, router)?;
        }
        resources::create_dir(&m.cgroup_dir)?;
        resources::create_dir(&m.bpffs_dir)?;
        for host in m.hosts() {
            let ns = NetNs::create(&host.plan.netns)?;
            let plan = &host.plan;
            net::plug_host(&underlay, &ns, &plan.bridge_port, &plan.bridge, "eth0")?;
            net::configure_host(&ns, plan.underlay_ip, plan.gateway)?;
            resources::create_dir(&host.state_dir)?;
            if host.plan.role == Role::Node {
                resources::create_dir(&host.cgroup_dir)?;
                resources::create_dir(&host.bpffs_dir)?;
            }
        }
        let etcd = etcd::start(&underlay, &m.state_dir, m.etcd_tls.as_ref())?;
        self.manifest.etcd = ProcessRef::of(etcd.id());
        self.children.push(etcd);
        self.manifest.ready = true;
        self.manifest.write()
    }

    /// Finds a lab that already runs, to inspect it, change it or take it down. Dropping
    /// the value leaves the lab as it is.
    pub fn attach(name: &str) -> Result<Self, LabError> {
        Ok(Self {
            manifest: Manifest::load(name)?,
            children: Vec::new(),
            teardown_on_drop: false,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.plan.name
    }

    /// etcd's client URL, reachable from every host.
    pub fn etcd_endpoint(&self) -> String {
        self.manifest.etcd_endpoint()
    }

    /// Client certificates for etcd, when it serves TLS.
    pub fn etcd_tls(&self) -> Option<&EtcdTls> {
        self.manifest.etcd_tls.as_ref()
    }

    /// The host called `name` (`node1`, `ext1`, ...).
    pub fn host(&self, name: &str) -> Option<Host> {
        self.manifest.host(name)
    }

    pub fn nodes(&self) -> Vec<Host> {
        self.hosts_with(Role::Node)
    }

    pub fn externals(&self) -> Vec<Host> {
        self.hosts_with(Role::External)
    }

    fn hosts_with(&self, role: Role) -> Vec<Host> {
        self.manifest
            .hosts()
            .into_iter()
            .filter(|h| h.plan.role == role)
            .collect()
    }

    /// The underlay namespace (bridge and etcd).
    pub fn underlay(&self) -> Result<NetNs, LabError> {
        Ok(NetNs::open(&self.manifest.plan.underlay_netns)?)
    }

    /// Creates a namespace that belongs to the lab (a pod's, say), named
    /// `twl-<lab>-<suffix>`, and removed with the lab. It is recorded before it is made.
    pub fn create_netns(&mut self, suffix: &str) -> Result<NetNs, LabError> {
        let name = format!("{}-{suffix}", self.manifest.plan.resource_dir);
        self.manifest.extra_namespaces.push(name.clone());
        self.manifest.write()?;
        Ok(NetNs::create(&name)?)
    }

    /// Writes `/etc/netns/<netns>/<file>`, which `ip netns exec <netns>` mounts over
    /// `/etc/<file>` (a pod's `resolv.conf`, say). `netns` must be one of the lab's
    /// namespaces: teardown and cleanup remove the directory with it.
    pub fn write_netns_etc(&self, netns: &str, file: &str, contents: &str) -> Result<(), LabError> {
        let resource = |action: &str, path: &Path, message: String| LabError::Resource {
            action: action.to_owned(),
            path: path.to_owned(),
            message,
        };
        let dir = netns_etc_dir(netns)
            .filter(|_| self.manifest.namespaces().contains(&netns))
            .ok_or_else(|| {
                resource(
                    "writing into",
                    &Path::new(NETNS_ETC_ROOT).join(netns),
                    format!("{netns} is no namespace of lab {}", self.name()),
                )
            })?;
        fs::create_dir_all(&dir).map_err(|e| resource("creating", &dir, e.to_string()))?;
        let path = dir.join(file);
        fs::write(&path, contents).map_err(|e| resource("writing", &path, e.to_string()))
    }

    /// Records a pod wired into the lab.
    pub fn record_pod(&mut self, pod: LabPod) -> Result<(), LabError> {
        self.manifest
            .pods
            .retain(|p| p.name != pod.name || p.namespace != pod.namespace);
        self.manifest.pods.push(pod);
        self.manifest.write()
    }

    /// Freezes etcd (SIGSTOP): it stops answering, as if unreachable, until
    /// [`Lab::resume_etcd`].
    pub fn pause_etcd(&self) -> Result<(), LabError> {
        self.signal_etcd(nix::sys::signal::Signal::SIGSTOP)
    }

    pub fn resume_etcd(&self) -> Result<(), LabError> {
        self.signal_etcd(nix::sys::signal::Signal::SIGCONT)
    }

    /// Stops etcd, deletes its data directory and starts an empty etcd on the same
    /// address: a lost store, for restore tests. Only for a lab this value brought up.
    pub fn restart_etcd_fresh(&mut self) -> Result<(), LabError> {
        let pid = self.manifest.etcd.as_ref().map(|p| p.pid);
        let at = self
            .children
            .iter()
            .position(|c| Some(c.id()) == pid)
            .ok_or_else(|| LabError::Etcd {
                message: "etcd was not started by this process".to_owned(),
            })?;
        let mut old = self.children.remove(at);
        let _ = old.kill();
        let _ = old.wait();
        let data_dir = self.manifest.state_dir.join("etcd");
        std::fs::remove_dir_all(&data_dir).map_err(|e| LabError::Etcd {
            message: format!("removing {}: {e}", data_dir.display()),
        })?;
        let etcd = etcd::start(
            &self.underlay()?,
            &self.manifest.state_dir,
            self.manifest.etcd_tls.as_ref(),
        )?;
        self.manifest.etcd = ProcessRef::of(etcd.id());
        self.children.push(etcd);
        self.manifest.write()
    }

    fn signal_etcd(&self, signal: nix::sys::signal::Signal) -> Result<(), LabError> {
        let etcd = self
            .manifest
            .etcd
            .filter(|p| p.is_alive())
            .ok_or_else(|| LabError::Etcd {
                message: "etcd is not running".to_owned(),
            })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(etcd.pid as i32), signal).map_err(|e| {
            LabError::Etcd {
                message: format!("sending {signal} to etcd ({}): {e}", etcd.pid),
            }
        })
    }

    /// Keeps the lab after this value is dropped (for `netctl lab up`).
    pub fn persist(mut self) {
        self.teardown_on_drop = false;
    }

    /// Removes everything the lab made. Safe to call on a half-built lab.
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        self.teardown_on_drop = false;
        // The manifest on disk is the record: other processes (`netctl lab pod add`) may
        // have added to the lab since this value read it.
        if let Ok(on_disk) = Manifest::load(&self.manifest.plan.name) {
            self.manifest = on_disk;
        }
        let result = teardown(&self.manifest);
        // Reap our own children so none lingers as a zombie of this process.
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.teardown_on_drop
            && let Err(e) = self.teardown()
        {
            eprintln!("{e}");
        }
    }
}

/// Removes every part of the lab `manifest` describes, continuing past failures, and the
/// manifest itself when all went well.
pub fn teardown(manifest: &Manifest) -> Result<(), LabError> {
    let mut problems = Vec::new();
    // Processes first: the namespaces and cgroups cannot go while something runs in them.
    let mut pids: Vec<u32> = manifest
        .etcd
        .filter(|p| p.is_alive())
        .map(|p| p.pid)
        .into_iter()
        .collect();
    for name in manifest.namespaces() {
        if let Ok(ns) = NetNs::open(name)
            && let Ok(found) = ns.pids()
        {
            pids.extend(found);
        }
    }
    pids.extend(resources::cgroup_pids(&manifest.cgroup_dir));
    pids.sort_unstable();
    pids.dedup();
    let survivors = process::stop_all(&pids, STOP_GRACE);
    if !survivors.is_empty() {
        problems.push(format!("processes did not exit: {survivors:?}"));
    }
    for name in manifest.namespaces() {
        if let Err(e) = NetNs::delete(name) {
            problems.push(e.to_string());
        }
        if let Err(e) = remove_netns_etc_dir(name) {
            problems.push(e);
        }
    }
    if let Err(e) = resources::remove_cgroup(&manifest.cgroup_dir) {
        problems.push(e.to_string());
    }
    if let Err(e) = resources::remove_pins(&manifest.bpffs_dir) {
        problems.push(e.to_string());
    }
    // The manifest goes last, and only when all else is gone, so a failed teardown can be
    // retried by `netctl lab down` or `netctl lab cleanup`.
    if problems.is_empty()
        && let Err(e) = fs::remove_dir_all(&manifest.state_dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        problems.push(format!("removing {}: {e}", manifest.state_dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown {
            name: manifest.plan.name.clone(),
            problems,
        })
    }
}

/// What [`cleanup`] removed.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Labs torn down from their manifests.
    pub labs: Vec<String>,
    /// Namespaces, cgroups and pin directories no manifest claimed.
    pub orphans: Vec<String>,
    pub problems: Vec<String>,
}

/// Removes what killed runs left behind: labs whose owner process is gone (all labs with
/// `all`), and lab-named namespaces, cgroups and pin directories that no manifest claims.
/// Labs of live test processes and persistent labs (unless `all`) are left alone.
pub fn cleanup(all: bool) -> CleanupReport {
    let mut report = CleanupReport::default();
    // Look at resources before manifests: a lab writes its manifest before it makes
    // anything, so whatever is listed here and claimed by no manifest read afterwards
    // really is orphaned, even while other labs are being built.
    let namespaces: Vec<String> = NetNs::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    let list_dir = |dir: Option<PathBuf>| -> Vec<PathBuf> {
        dir.and_then(|d| fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
            .map(|e| e.path())
            .collect()
    };
    let etc_dirs: Vec<String> = list_dir(Some(PathBuf::from(NETNS_ETC_ROOT)))
        .into_iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    let cgroups = list_dir(resources::cgroup2_root().ok());
    let pin_dirs = list_dir(Some(PathBuf::from(resources::BPFFS_ROOT)));

    let mut kept = Vec::new();
    for manifest in Manifest::list() {
        match manifest {
            Ok(m) if all || m.is_stale() => match teardown(&m) {
                Ok(()) => report.labs.push(m.plan.name.clone()),
                Err(e) => {
                    report.problems.push(e.to_string());
                    kept.push(m);
                }
            },
            Ok(m) => kept.push(m),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    let claimed_ns = |name: &str| kept.iter().any(|m| m.namespaces().contains(&name));
    for name in namespaces.iter().filter(|n| !claimed_ns(n)) {
        if let Ok(ns) = NetNs::open(name) {
            process::stop_all(&ns.pids().unwrap_or_default(), STOP_GRACE);
        }
        match NetNs::delete(name) {
            Ok(()) => report.orphans.push(format!("netns {name}")),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    // Also those whose namespace is gone already (a run killed between the two removals).
    for name in etc_dirs.iter().filter(|n| !claimed_ns(n)) {
        match remove_netns_etc_dir(name) {
            Ok(()) => report.orphans.push(format!("{NETNS_ETC_ROOT}/{name}")),
            Err(e) => report.problems.push(e),
        }
    }
    for dir in cgroups
        .iter()
        .filter(|d| !kept.iter().any(|m| &m.cgroup_dir == *d))
    {
        process::stop_all(&resources::cgroup_pids(dir), STOP_GRACE);
        match resources::remove_cgroup(dir) {
            Ok(()) => report.orphans.push(format!("cgroup {}", dir.display())),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    for dir in pin_dirs
        .iter()
        .filter(|d| !kept.iter().any(|m| &m.bpffs_dir == *d))
    {
        match resources::remove_pins(dir) {
            Ok(()) => report.orphans.push(format!("bpffs {}", dir.display())),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_etc_dirs_stay_directly_under_etc_netns() {
        assert_eq!(
            netns_etc_dir("twl-a-pod-default-web"),
            Some(PathBuf::from("/etc/netns/twl-a-pod-default-web"))
        );
        for bad in ["", ".", "..", "../etc", "a/b", "/"] {
            assert_eq!(netns_etc_dir(bad), None, "{bad:?}");
        }
    }
}
