//! The node's pod-networking state: its subnet, its pod addresses, and whether it can wire
//! pods now. The socket server asks it; the lease loop tells it what etcd said.

use std::{
    collections::HashMap,
    fs,
    sync::Mutex,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use tracing::{debug, error, info, warn};
use twill_api::{AttachmentKey, ErrorKind, NodeStatus, POD_GATEWAY, PodAddress, Request, Response};
use twill_ipam::{Allocation, Allocations, IpamError, PodSubnet};

use crate::{overlay::peers, state::StateDir};

/// The node's loaded eBPF programs and maps, and which pod interfaces they are on.
pub struct Dataplane {
    pub datapath: twill_bpf::Datapath,
    attached: HashMap<String, twill_bpf::PodAttachment>,
    /// The underlay interface and the VXLAN device (none in the BGP-routed mode).
    node_interfaces: (String, Option<String>),
    /// Whether the NodePort program is on the underlay interface.
    node_programs: bool,
    /// Attaches and deletions no CNI call waits for.
    pub work: crate::pods::podwork::PodWork,
    /// NetworkPolicy tables and endpoint entries as written.
    pub policy: crate::policy::PolicyState,
}

impl Dataplane {
    /// `node_interfaces`: the underlay interface and the VXLAN device, if there is one.
    /// Nothing is attached yet: see [`Self::take_over_node_programs`].
    pub fn new(datapath: twill_bpf::Datapath, node_interfaces: (String, Option<String>)) -> Self {
        let node_programs = datapath.node_programs_pinned();
        Self {
            datapath,
            attached: HashMap::new(),
            node_interfaces,
            node_programs,
            work: crate::pods::podwork::PodWork::default(),
            policy: crate::policy::PolicyState::default(),
        }
    }

    /// The overlay program goes on the VXLAN device for good; a NodePort program an earlier
    /// run left attached is taken over with this run's program.
    pub fn take_over_node_programs(&mut self) -> Result<(), twill_bpf::DatapathError> {
        if let Some(device) = &self.node_interfaces.1 {
            self.datapath.attach_overlay(device)?;
        }
        if self.node_programs {
            self.datapath.attach_node(&self.node_interfaces.0)?;
        }
        Ok(())
    }

    /// A deleted pod's pair, renamed `retired_host` by DEL, goes to the background for
    /// deletion; its pins follow the name. Without pinned links (no tcx) the programs are
    /// released now.
    pub fn retire(&mut self, host_ifname: &str, retired_host: &str) {
        self.work.forget_attach(host_ifname);
        if !twill_bpf::Datapath::pins_pod_links() {
            self.remove_attached(host_ifname);
        } else if let Err(e) = self.rename_attached(host_ifname, retired_host) {
            // Nothing attached yet (the attach was still queued) is the common case.
            debug!(interface = host_ifname, "{e}; releasing its programs now");
            self.remove_attached(host_ifname);
        }
        self.work.retire(retired_host.to_owned());
    }

    fn rename_attached(&mut self, from: &str, to: &str) -> Result<(), String> {
        let Some(mut attachment) = self.attached.remove(from) else {
            return Err(format!("no programs are attached to {from}"));
        };
        let renamed = self.datapath.rename_pod(&mut attachment, to);
        match renamed {
            Ok(()) => {
                self.attached.insert(to.to_owned(), attachment);
                Ok(())
            }
            Err(e) => {
                self.attached.insert(from.to_owned(), attachment);
                Err(format!(
                    "moving the pins of {from} to {to}: {:#}",
                    anyhow::Error::new(e)
                ))
            }
        }
    }

    /// Puts the NodePort program on the underlay interface, or takes it off: it runs for
    /// every packet the node receives, so it is there only while some Service has a
    /// NodePort.
    pub fn node_programs(&mut self, wanted: bool) -> Result<(), twill_bpf::DatapathError> {
        if wanted && !self.node_programs {
            let underlay = &self.node_interfaces.0;
            self.datapath.attach_node(underlay)?;
            info!(underlay = %underlay, "NodePort program attached");
        } else if !wanted && self.node_programs {
            self.datapath.detach_node();
            info!("NodePort program detached: no Service has a NodePort");
        }
        self.node_programs = wanted;
        Ok(())
    }

    /// Tells the programs about a pod (see [`PodInfo`]).
    ///
    /// [`PodInfo`]: twill_api::PodInfo
    pub fn record_pod(&mut self, pod: Option<&twill_api::PodInfo>) {
        let Some(pod) = pod else { return };
        let macs = peers::parse_mac(&pod.pod_mac).zip(peers::parse_mac(&pod.host_mac));
        if let Err(e) = self
            .datapath
            .set_pod(pod.ip, pod.host_ifindex, macs, pod.netns_cookie)
        {
            warn!(ip = %pod.ip, "recording the pod for the programs: {:#}", anyhow::Error::new(e));
        }
    }

    /// Attaches the pod programs to `ifname` once; a second call is a no-op.
    pub fn ensure_attached(&mut self, ifname: &str) -> Result<(), twill_bpf::DatapathError> {
        if !self.attached.contains_key(ifname) {
            let started = Instant::now();
            let attachment = self.datapath.attach_pod(ifname)?;
            self.attached.insert(ifname.to_owned(), attachment);
            info!(interface = ifname, took = ?started.elapsed(), "pod programs attached");
        }
        Ok(())
    }

    pub fn remove_attached(&mut self, ifname: &str) {
        if let Some(a) = self.attached.remove(ifname) {
            let started = Instant::now();
            self.datapath.detach_pod(a);
            tracing::debug!(interface = ifname, took = ?started.elapsed(), "pod programs detached");
        }
    }
}

pub struct Node {
    /// The eBPF dataplane; `None` only in tests of the control plane.
    pub dataplane: Option<Mutex<Dataplane>>,
    name: String,
    /// Signalled whenever the set of pod addresses changes.
    pub changed: tokio::sync::Notify,
    pod_mtu: u32,
    state: StateDir,
    /// How long after the last good answer from etcd it still counts as reachable.
    etcd_grace: Duration,
    inner: Mutex<Inner>,
    /// The overlay, for the status; unset in tests of the control plane.
    pub overlay: std::sync::OnceLock<std::sync::Arc<crate::overlay::Overlay>>,
    /// The BGP speaker, in the BGP-routed mode.
    pub bgp: std::sync::OnceLock<std::sync::Arc<crate::bgp::Speaker>>,
    /// Signalled when background pod work is queued.
    pub work_wake: tokio::sync::Notify,
    /// What the loops and the socket server record for `/metrics`.
    pub instruments: crate::metrics::Instruments,
    /// The flow records read from the datapath; unset in tests of the control plane.
    pub flows: std::sync::OnceLock<std::sync::Arc<crate::flows::FlowLog>>,
}

#[derive(Default)]
struct Inner {
    allocations: Option<Allocations>,
    /// The subnet etcd confirmed this node holds; `None` until then.
    leased: Option<Ipv4Network>,
    last_etcd_ok: Option<Instant>,
    etcd_problem: Option<String>,
    warnings: Vec<String>,
}

impl Node {
    /// The node as its state directory left it. Addresses recorded there stay allocated,
    /// so a restarted daemon never hands one out twice.
    pub fn new(
        name: String,
        pod_mtu: u32,
        state: StateDir,
        etcd_grace: Duration,
        dataplane: Option<Dataplane>,
        instruments: crate::metrics::Instruments,
    ) -> anyhow::Result<Self> {
        let allocations = state.load_allocations()?;
        if let Some(a) = &allocations {
            info!(subnet = %a.subnet.0, pods = a.len(), "restored pod addresses");
        }
        let node = Self {
            dataplane: dataplane.map(Mutex::new),
            changed: tokio::sync::Notify::new(),
            name,
            pod_mtu,
            state,
            etcd_grace,
            inner: Mutex::new(Inner {
                allocations,
                ..Inner::default()
            }),
            overlay: std::sync::OnceLock::new(),
            bgp: std::sync::OnceLock::new(),
            work_wake: tokio::sync::Notify::new(),
            instruments,
            flows: std::sync::OnceLock::new(),
        };
        Ok(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data is still consistent
        // because every change is a single assignment or a saved whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// etcd confirmed `subnet` is this node's. If the node's addresses belong to another
    /// subnet (the old one went to another node), they are set aside, loudly.
    pub fn subnet_leased(&self, subnet: Ipv4Network) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let keep = inner
            .allocations
            .as_ref()
            .is_some_and(|a| a.subnet.0 == subnet);
        if !keep {
            if let Some(old) = inner.allocations.take() {
                let aside = self.state.set_aside_allocations(old.subnet.0)?;
                let message = format!(
                    "pod subnet changed from {} to {subnet}: {} pod address(es) of the old \
                     subnet are no longer valid and those pods must be recreated (their \
                     records are in {})",
                    old.subnet.0,
                    old.len(),
                    aside.display()
                );
                error!("{message}");
                inner.warnings.push(message);
            }
            let fresh = Allocations::new(PodSubnet(subnet));
            self.state.save_allocations(&fresh)?;
            inner.allocations = Some(fresh);
        }
        self.state.save_subnet(subnet)?;
        inner.leased = Some(subnet);
        inner.last_etcd_ok = Some(Instant::now());
        inner.etcd_problem = None;
        Ok(())
    }

    /// The previous subnet, as the state directory remembers it.
    pub fn remembered_subnet(&self) -> Option<Ipv4Network> {
        self.state.load_subnet().ok().flatten()
    }

    pub fn warn(&self, message: String) {
        error!("{message}");
        self.lock().warnings.push(message);
    }

    pub fn etcd_ok(&self) {
        let mut inner = self.lock();
        inner.last_etcd_ok = Some(Instant::now());
        inner.etcd_problem = None;
    }

    /// When etcd last answered the lease loop (or confirmed the subnet).
    pub fn etcd_last_ok(&self) -> Option<Instant> {
        self.lock().last_etcd_ok
    }

    pub fn etcd_failed(&self, problem: String) {
        self.lock().etcd_problem = Some(problem);
    }

    /// The lease is gone; until a new one is held, no new pods.
    pub fn subnet_lost(&self, why: String) {
        let mut inner = self.lock();
        inner.leased = None;
        inner.etcd_problem = Some(why);
    }

    /// Why the node cannot wire a pod now, if it cannot.
    fn not_ready(&self, inner: &Inner) -> Option<String> {
        if inner.leased.is_none() {
            return Some(match &inner.etcd_problem {
                Some(p) => format!("node {} holds no pod subnet yet: {p}", self.name),
                None => format!("node {} holds no pod subnet yet", self.name),
            });
        }
        let fresh = inner
            .last_etcd_ok
            .is_some_and(|t| t.elapsed() <= self.etcd_grace);
        if !fresh {
            return Some(format!(
                "etcd has not answered for more than {:?}: {}",
                self.etcd_grace,
                inner.etcd_problem.as_deref().unwrap_or("no contact")
            ));
        }
        None
    }

    /// Applies releases the CNI binary queued while the daemon was down.
    fn apply_pending_releases(&self, inner: &mut Inner) {
        let pending = self.state.pending_releases();
        if pending.is_empty() {
            return;
        }
        if let Some(a) = inner.allocations.as_mut() {
            for (_, key) in &pending {
                if let Some(freed) = a.release(key) {
                    info!(ip = %freed.ip, container = %key.container_id, "released (queued by DEL)");
                }
            }
            if let Err(e) = self.state.save_allocations(a) {
                warn!("{e}; queued releases will be applied again");
                return;
            }
        }
        for (path, _) in pending {
            let _ = fs::remove_file(path);
        }
    }

    fn address(&self, inner: &Inner, allocation: &Allocation) -> PodAddress {
        PodAddress {
            ip: allocation.ip,
            subnet: inner
                .allocations
                .as_ref()
                .map(|a| a.subnet.0)
                .expect("an allocation implies allocations"),
            gateway: POD_GATEWAY,
            mtu: self.pod_mtu,
        }
    }

    /// Records of this node's pods that have a Kubernetes name, for etcd.
    pub fn pod_records(&self) -> Vec<twill_api::cluster::PodRecord> {
        let inner = self.lock();
        inner
            .allocations
            .iter()
            .flat_map(|a| a.iter())
            .filter_map(|a| {
                let (namespace, name) = a.pod.as_deref()?.split_once('/')?;
                Some(twill_api::cluster::PodRecord {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    node: self.name.clone(),
                    ip: a.ip,
                    container_id: a.key.container_id.clone(),
                    ifname: a.key.ifname.clone(),
                })
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's pods with addresses, with their Kubernetes names when they have them.
    pub fn local_pods(&self) -> Vec<crate::policy::LocalPod> {
        let inner = self.lock();
        inner
            .allocations
            .iter()
            .flat_map(|a| a.iter())
            .map(|a| crate::policy::LocalPod {
                ip: a.ip,
                pod: a
                    .pod
                    .as_deref()
                    .and_then(|p| p.split_once('/'))
                    .map(|(ns, name)| (ns.to_owned(), name.to_owned())),
            })
            .collect()
    }

    /// Writes the policy of a pod about to get its programs (see
    /// [`crate::policy::PolicyState::admit`]); whether a policy isolates it.
    fn admit_pod(
        &self,
        d: &mut Dataplane,
        pod: Option<&twill_api::PodInfo>,
        local: &[crate::policy::LocalPod],
    ) -> bool {
        match pod {
            Some(p) => d.policy.admit(&mut d.datapath, &self.name, local, p.ip),
            None => false,
        }
    }

    /// The programs forget pods that no longer have an address.
    pub fn forget_deleted_pods(&self) {
        let ips: Vec<std::net::Ipv4Addr> = {
            let inner = self.lock();
            inner
                .allocations
                .iter()
                .flat_map(|a| a.iter())
                .map(|a| a.ip)
                .collect()
        };
        if let Some(Err(e)) = self.with_dataplane(|d| d.datapath.forget_pods_not_in(&ips)) {
            warn!(
                "forgetting deleted pods in the maps: {:#}",
                anyhow::Error::new(e)
            );
        }
    }

    /// Runs `f` on the dataplane, if there is one.
    pub fn with_dataplane<T>(&self, f: impl FnOnce(&mut Dataplane) -> T) -> Option<T> {
        let dp = self.dataplane.as_ref()?;
        let mut guard = dp.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut guard))
    }

    pub fn handle(&self, request: Request) -> Response {
        // Releases detach the pod programs from the attachment's interface.
        match &request {
            Request::Release { key, retired } => {
                let ifname = twill_api::host_ifname(key);
                if *retired {
                    let (retired_host, _) = twill_api::retired_ifnames(key);
                    self.with_dataplane(|d| d.retire(&ifname, &retired_host));
                    self.work_wake.notify_one();
                } else {
                    self.with_dataplane(|d| {
                        d.work.forget_attach(&ifname);
                        d.remove_attached(&ifname);
                    });
                }
            }
            Request::AttachPod {
                ifname,
                queue: true,
                defer,
                pod,
            } => {
                let defer = *defer;
                let ifname = ifname.clone();
                let local = self.local_pods();
                // A pod a policy isolates gets its programs now, before ADD returns and
                // its interface is configured: it is filtered from its first packet.
                let queued = self.with_dataplane(|d| {
                    let isolated = self.admit_pod(d, pod.as_ref(), &local);
                    d.record_pod(pod.as_ref());
                    if isolated {
                        d.work.forget_attach(&ifname);
                        d.ensure_attached(&ifname).map(|()| Response::Attached {
                            ifname: ifname.clone(),
                        })
                    } else if defer {
                        Ok(Response::Admitted {
                            ifname: ifname.clone(),
                        })
                    } else {
                        d.work.queue_attach(&ifname);
                        Ok(Response::AttachQueued {
                            ifname: ifname.clone(),
                        })
                    }
                });
                return match queued {
                    Some(Ok(response)) => {
                        if matches!(response, Response::AttachQueued { .. }) {
                            self.work_wake.notify_one();
                        }
                        response
                    }
                    Some(Err(e)) => {
                        error(ErrorKind::Internal, format!("{:#}", anyhow::Error::new(e)))
                    }
                    None => error(
                        ErrorKind::Internal,
                        "this node has no eBPF dataplane".to_owned(),
                    ),
                };
            }
            Request::AttachPod { ifname, pod, .. } => {
                let ifname = ifname.clone();
                let local = self.local_pods();
                let attached = self.with_dataplane(|d| {
                    self.admit_pod(d, pod.as_ref(), &local);
                    d.record_pod(pod.as_ref());
                    d.work.forget_attach(&ifname);
                    d.ensure_attached(&ifname)
                });
                return match attached {
                    Some(Ok(())) => Response::Attached { ifname },
                    Some(Err(e)) => {
                        error(ErrorKind::Internal, format!("{:#}", anyhow::Error::new(e)))
                    }
                    None => error(
                        ErrorKind::Internal,
                        "this node has no eBPF dataplane".to_owned(),
                    ),
                };
            }
            Request::Policy => {
                let local = self.local_pods();
                let report =
                    self.with_dataplane(|d| d.policy.report(&mut d.datapath, &self.name, &local));
                return match report {
                    Some(Ok(report)) => Response::Policy { report },
                    Some(Err(e)) => {
                        error(ErrorKind::Internal, format!("{:#}", anyhow::Error::new(e)))
                    }
                    None => error(
                        ErrorKind::Internal,
                        "this node has no eBPF dataplane".to_owned(),
                    ),
                };
            }
            _ => {}
        }
        let work = matches!(request, Request::Status)
            .then(|| self.with_dataplane(|d| (d.work.status(), d.policy.status(&d.datapath))))
            .flatten();
        let releases = matches!(request, Request::Release { .. } | Request::Gc { .. });
        let mut response = self.answer(request);
        if let (Some((work, policy)), Response::Status { status }) = (work, &mut response) {
            status.background = work;
            status.policy = policy;
        }
        if releases {
            self.forget_deleted_pods();
        }
        if matches!(
            response,
            Response::Allocated { .. }
                | Response::Released { released: true }
                | Response::Collected { .. }
        ) {
            self.changed.notify_one();
        }
        response
    }

    fn answer(&self, request: Request) -> Response {
        let mut inner = self.lock();
        self.apply_pending_releases(&mut inner);
        match request {
            Request::Allocate { key, pod } => {
                if let Some(reason) = self.not_ready(&inner) {
                    return error(ErrorKind::NotReady, reason);
                }
                let Some(allocations) = inner.allocations.as_mut() else {
                    return error(ErrorKind::NotReady, "no pod subnet".to_owned());
                };
                let before = allocations.clone();
                match allocations.allocate(key.clone(), pod) {
                    Ok(allocation) => {
                        if let Err(e) = self.state.save_allocations(allocations) {
                            // Not recorded means not handed out.
                            *allocations = before;
                            return error(ErrorKind::Internal, e.to_string());
                        }
                        info!(ip = %allocation.ip, container = %key.container_id, ifname = %key.ifname, "allocated");
                        Response::Allocated {
                            address: self.address(&inner, &allocation),
                        }
                    }
                    Err(e @ IpamError::Exhausted { .. }) => {
                        error(ErrorKind::Exhausted, e.to_string())
                    }
                    Err(e) => error(ErrorKind::Internal, e.to_string()),
                }
            }
            Request::Lookup { key } => {
                let found = inner
                    .allocations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned();
                Response::Found {
                    address: found.map(|a| self.address(&inner, &a)),
                }
            }
            Request::Release { key, .. } => {
                let Some(allocations) = inner.allocations.as_mut() else {
                    return Response::Released { released: false };
                };
                let before = allocations.clone();
                let freed = allocations.release(&key);
                if freed.is_some() {
                    if let Err(e) = self.state.save_allocations(allocations) {
                        *allocations = before;
                        return error(ErrorKind::Internal, e.to_string());
                    }
                    info!(container = %key.container_id, ifname = %key.ifname, "released");
                }
                Response::Released {
                    released: freed.is_some(),
                }
            }
            Request::Gc { valid } => {
                let Some(allocations) = inner.allocations.as_mut() else {
                    return Response::Collected {
                        released: Vec::new(),
                    };
                };
                let before = allocations.clone();
                let valid: std::collections::BTreeSet<AttachmentKey> = valid.into_iter().collect();
                let freed = allocations.retain(|k| valid.contains(k));
                if !freed.is_empty() {
                    if let Err(e) = self.state.save_allocations(allocations) {
                        *allocations = before;
                        return error(ErrorKind::Internal, e.to_string());
                    }
                    for a in &freed {
                        info!(ip = %a.ip, container = %a.key.container_id, "released by GC");
                    }
                }
                Response::Collected {
                    released: freed.into_iter().map(|a| a.key).collect(),
                }
            }
            Request::AttachPod { .. } | Request::Policy => unreachable!("answered in handle"),
            // Long polls: the socket server answers them without a blocking thread.
            Request::Flows { .. } | Request::DnsQueries { .. } => error(
                ErrorKind::BadRequest,
                "flow records are answered by the socket server".to_owned(),
            ),
            Request::Status => Response::Status {
                status: NodeStatus {
                    node: self.name.clone(),
                    subnet: inner.leased,
                    etcd_reachable: inner
                        .last_etcd_ok
                        .is_some_and(|t| t.elapsed() <= self.etcd_grace),
                    available_addresses: inner.allocations.as_ref().map_or(0, |a| a.available()),
                    pods: inner.allocations.as_ref().map_or(0, |a| a.len() as u32),
                    not_ready: self.not_ready(&inner),
                    warnings: inner.warnings.clone(),
                    overlay: self
                        .overlay
                        .get()
                        .map(|o| o.status())
                        .or_else(|| self.bgp.get().map(|b| b.overlay_status()))
                        .unwrap_or_default(),
                    // Filled in by `handle`, outside this lock.
                    background: twill_api::PodWorkStatus::default(),
                    policy: twill_api::PolicyStatus::default(),
                    flows: self.flows.get().map(|f| f.status()).unwrap_or_default(),
                    version: Some(crate::VERSION.to_owned()),
                    etcd_silent_ms: inner.last_etcd_ok.map(|t| t.elapsed().as_millis() as u64),
                    bgp: self.bgp.get().map(|b| Box::new(b.status())),
                },
            },
        }
    }
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}
