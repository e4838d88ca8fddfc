//! The BGP-routed mode (`network.overlay = "bgp"`): each node announces its leased pod
//! subnet over BGP with its underlay address as next hop, and the routes it learns for the
//! other nodes' subnets become plain kernel routes via their underlay addresses. Nodes on
//! another underlay subnet are reached through a VXLAN device instead with
//! `bgp.cross_subnet` ([`cross_subnet`]); without it there is no VXLAN device.
//!
//! One task ([`run`]) owns the sessions (a full iBGP mesh built from the node records in
//! etcd, the lower underlay address connecting, unless `bgp.mesh = false`; and a session
//! with each `BGPPeer` in etcd that selects this node: route reflectors, top-of-rack
//! routers), the routes learned, and the kernel routes. Each
//! pass computes the routes that should be in the kernel ([`routes`], pure) and changes
//! only the difference ([`kernel`]); a periodic pass and netlink notifications repair
//! drift.
//!
//! Restarts: the kernel routes are left in place when `twilld` stops or dies. A run that
//! finds its routes in the kernel at start says so to its peers (graceful restart, R and F
//! bits), and removes nothing until every peer has sent its End-of-RIB, or
//! [`converge_grace`] has passed. A peer whose session drops without a NOTIFICATION keeps
//! its routes (stale) for its restart time; after a NOTIFICATION or a hold timer expiry
//! they go at once.

pub mod cross_subnet;
pub mod kernel;
pub mod routes;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    constants::RTMGRP_IPV4_ROUTE,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{RouteNetlinkMessage, route::RouteAttribute},
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use twill_api::{
    BgpPeerStatus, BgpStatus, OverlayStatus,
    cluster::{self, NodeRecord},
};
use twill_bgp::{
    fsm::{self, GracefulRestartConfig, RouteEvent, State},
    session::{Listener, PeerStatus, Session, SessionConfig, SessionEvent},
};
use twill_ipam::ClusterCidr;
use twill_k8s::{BgpPeer, Object};

use crate::{
    bgp::routes::{ConfiguredPeer, Learned},
    config::{BgpConfig, Config},
    overlay::{peers, underlay::Underlay, vxlan},
};

/// How long a run that started with its routes in the kernel keeps every one of them while
/// its sessions come up: twice the hold time, at least 10 s. A peer that has not sent its
/// End-of-RIB by then counts as gone.
pub fn converge_grace(bgp: &BgpConfig) -> Duration {
    Duration::from_secs(u64::from(bgp.hold_seconds) * 2).max(Duration::from_secs(10))
}

/// Connect retry and the rest after a failed session: nodes share a segment, so short.
const CONNECT_RETRY: Duration = Duration::from_secs(2);
/// How long route events are gathered before one pass installs them.
const SETTLE: Duration = Duration::from_millis(20);
/// How soon a pass that failed is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// How long kernel notifications are gathered before a pass repairs what they reported.
const DRIFT_DEBOUNCE: Duration = Duration::from_millis(100);

/// What the rest of the daemon sees of the speaker: the status, and the node's subnet.
pub struct Speaker {
    as_number: u32,
    router_id: Ipv4Addr,
    local: watch::Sender<Option<Ipv4Network>>,
    peers: Mutex<BTreeMap<Ipv4Addr, PeerView>>,
    routes: Mutex<RouteView>,
}

struct PeerView {
    /// The node (mesh) or `bgppeer/NAME` (configured).
    node: String,
    /// The AS configured for the peer, shown until the session has negotiated.
    as_number: u32,
    passive: bool,
    status: watch::Receiver<PeerStatus>,
}

#[derive(Default)]
struct RouteView {
    installed: u32,
    refused: Vec<String>,
    problem: Option<String>,
    /// Why BGPPeers that select this node are not peered (see [`routes::configured`]).
    peer_problems: Vec<String>,
    /// Other nodes whose subnet route is in the kernel.
    reached: u32,
    /// Nodes on other subnets that are not routed, and why (see [`cross_subnet::split`]).
    cross_subnet: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Speaker {
    pub fn new(config: &Config, underlay: &Underlay) -> Self {
        Self {
            as_number: config.bgp.as_number,
            router_id: config.bgp.router_id.unwrap_or(underlay.ip),
            local: watch::channel(None).0,
            peers: Mutex::new(BTreeMap::new()),
            routes: Mutex::new(RouteView::default()),
        }
    }

    /// The node's pod subnet: announced while `Some`, withdrawn when the lease is lost.
    pub fn local_subnet(&self, subnet: Option<Ipv4Network>) {
        self.local.send_replace(subnet);
    }

    pub fn status(&self) -> BgpStatus {
        let peers = lock(&self.peers)
            .iter()
            .map(|(address, p)| {
                let s = p.status.borrow();
                BgpPeerStatus {
                    node: p.node.clone(),
                    address: *address,
                    as_number: s.negotiated.as_ref().map_or(p.as_number, |n| n.peer_asn),
                    state: s.state.to_string(),
                    passive: p.passive,
                    uptime_seconds: s.uptime().map(|u| u.as_secs()),
                    prefixes_sent: u32::try_from(s.prefixes_sent).unwrap_or(u32::MAX),
                    prefixes_received: u32::try_from(s.prefixes_received).unwrap_or(u32::MAX),
                    prefixes_stale: u32::try_from(s.prefixes_stale).unwrap_or(u32::MAX),
                    last_error: s.last_error.clone(),
                }
            })
            .collect();
        let r = lock(&self.routes);
        let problems: Vec<String> = r
            .problem
            .iter()
            .chain(&r.peer_problems)
            .chain(&r.cross_subnet)
            .cloned()
            .collect();
        BgpStatus {
            as_number: self.as_number,
            router_id: Some(self.router_id),
            announced: *self.local.borrow(),
            peers,
            refused: r.refused.clone(),
            routes: r.installed,
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }

    /// The overlay's summary in this mode: the nodes whose pod subnet is routed, and what
    /// went wrong (a session not established counts).
    pub fn overlay_status(&self) -> OverlayStatus {
        let down: Vec<String> = lock(&self.peers)
            .iter()
            .filter_map(|(address, p)| {
                let s = p.status.borrow();
                (s.state != State::Established && s.prefixes_stale == 0).then(|| {
                    format!(
                        "BGP session with {} ({address}) is {}{}",
                        p.node,
                        s.state,
                        s.last_error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )
                })
            })
            .collect();
        let r = lock(&self.routes);
        let problem = r
            .problem
            .iter()
            .chain(&r.peer_problems)
            .chain(&r.cross_subnet)
            .cloned()
            .chain(down)
            .collect::<Vec<_>>();
        OverlayStatus {
            peers: r.reached,
            problem: (!problem.is_empty()).then(|| problem.join("; ")),
        }
    }

    /// Each session's status channel, by peer address, with the name `status` shows: for
    /// counting session flaps (`metrics::bgp`), which a status poll would miss.
    pub fn sessions(&self) -> Vec<(Ipv4Addr, String, watch::Receiver<PeerStatus>)> {
        lock(&self.peers)
            .iter()
            .map(|(address, p)| (*address, p.node.clone(), p.status.clone()))
            .collect()
    }
}

/// A task aborted when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Peer {
    wanted: Wanted,
    generation: u64,
    session: Session,
    _forward: Task,
}

/// A session as it should run; a session whose `Wanted` changes is started again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    /// The node (mesh) or `bgppeer/NAME` (configured).
    label: String,
    as_number: u32,
    passive: bool,
    hold_seconds: u16,
    keepalive_seconds: u16,
    password: Option<Vec<u8>>,
}

/// The session a configured peer should have: its timers, or the node's; its password
/// file read now. The error names the BGPPeer and the file.
fn configured_session(bgp: &BgpConfig, c: &ConfiguredPeer) -> Result<Wanted, String> {
    let hold_seconds = c.hold_seconds.unwrap_or(bgp.hold_seconds);
    let keepalive_seconds = if hold_seconds == 0 {
        0
    } else {
        c.keepalive_seconds
            .unwrap_or(bgp.keepalive_seconds)
            .clamp(1, hold_seconds / 3)
    };
    let password = match &c.password_file {
        None => None,
        Some(path) => {
            let mut bytes = std::fs::read(path).map_err(|e| {
                format!("BGPPeer {}: spec.passwordFile: reading {path}: {e}", c.name)
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Some(bytes)
        }
    };
    Ok(Wanted {
        label: format!("bgppeer/{}", c.name),
        as_number: c.as_number,
        passive: c.passive,
        hold_seconds,
        keepalive_seconds,
        password,
    })
}

type Tagged = (Ipv4Addr, u64, SessionEvent);

/// The task's state.
struct Mesh {
    config: Config,
    speaker: Arc<Speaker>,
    handle: rtnetlink::Handle,
    underlay: Underlay,
    /// The VXLAN device of the cross-subnet fallback (`bgp.cross_subnet`).
    fallback: Option<vxlan::Device>,
    cluster: ClusterCidr,
    listener: Listener,
    sessions: BTreeMap<Ipv4Addr, Peer>,
    learned: Learned,
    records: BTreeMap<String, NodeRecord>,
    records_loaded: bool,
    /// The BGPPeers in etcd (all of them; [`routes::configured`] picks this node's).
    bgp_peers: Vec<BgpPeer>,
    peers_loaded: bool,
    /// The configured peers this node has sessions with: address -> BGPPeer name.
    configured: BTreeMap<Ipv4Addr, String>,
    announced: Option<Ipv4Network>,
    events: mpsc::UnboundedSender<Tagged>,
    /// A session ended with [`Session::shutdown`] has let go of its peer's address on the
    /// listener: a session for the same address can start now.
    ended: mpsc::UnboundedSender<()>,
    next_generation: u64,
    /// Peers that sent End-of-RIB since their session came up.
    end_of_rib: BTreeSet<Ipv4Addr>,
    /// Kernel routes may be removed: the sessions converged (or there was nothing to keep).
    converged: bool,
    started: Instant,
    /// This run found its routes in the kernel: graceful restart flags go in the OPENs.
    restarting: bool,
}

impl Mesh {
    fn session_config(&self, peer: Ipv4Addr, wanted: &Wanted) -> SessionConfig {
        let bgp = &self.config.bgp;
        // The peer's AS decides: the cluster's is iBGP (LOCAL_PREF sent, AS_PATH empty),
        // any other eBGP (no LOCAL_PREF, AS_PATH starting with ours).
        let mut f = fsm::Config::new(bgp.as_number, self.speaker.router_id, wanted.as_number);
        f.hold_time = wanted.hold_seconds;
        f.keepalive = Some(wanted.keepalive_seconds);
        f.passive = wanted.passive;
        f.connect_retry = CONNECT_RETRY;
        f.idle_hold = CONNECT_RETRY;
        f.graceful_restart = Some(GracefulRestartConfig {
            restart_time: bgp.restart_seconds,
            restarting: self.restarting && !self.converged,
            forwarding_preserved: self.restarting && !self.converged,
            ..GracefulRestartConfig::default()
        });
        let mut s = SessionConfig::new(f, peer);
        s.peer_port = bgp.listen_port;
        s.local_address = Some(self.underlay.ip);
        s.md5_password.clone_from(&wanted.password);
        s
    }

    /// Starts sessions with new peers (mesh and configured), ends those with nodes gone
    /// from etcd or BGPPeers removed, and starts again those whose settings changed. No
    /// session starts before the node holds its subnet: a session that came up first
    /// would send an empty table and End-of-RIB, and a peer keeping this node's routes
    /// through a restart would drop them.
    fn sync_sessions(&mut self) {
        if !self.records_loaded || self.announced.is_none() {
            return;
        }
        let bgp = &self.config.bgp;
        let mesh = if bgp.mesh {
            routes::mesh(
                &self.config.node_name,
                self.underlay.ip,
                &self.cluster,
                self.records.values(),
            )
        } else {
            BTreeMap::new()
        };
        let (configured, mut problems) = routes::configured(
            &self.config.labels(),
            self.underlay.ip,
            &self.bgp_peers,
            &mesh,
        );
        let mut wanted: BTreeMap<Ipv4Addr, Wanted> = mesh
            .into_iter()
            .map(|(address, m)| {
                let w = Wanted {
                    label: m.node,
                    as_number: bgp.as_number,
                    passive: m.passive,
                    hold_seconds: bgp.hold_seconds,
                    keepalive_seconds: bgp.keepalive_seconds,
                    password: bgp.password.clone(),
                };
                (address, w)
            })
            .collect();
        // Configured peers whose session cannot start (their password file): shown as
        // Idle with the reason.
        let mut failed: BTreeMap<Ipv4Addr, PeerView> = BTreeMap::new();
        for (address, c) in &configured {
            match configured_session(bgp, c) {
                Ok(w) => {
                    wanted.insert(*address, w);
                }
                Err(e) => {
                    let status = PeerStatus {
                        peer: *address,
                        state: State::Idle,
                        established_at: None,
                        prefixes_sent: 0,
                        prefixes_received: 0,
                        prefixes_stale: 0,
                        last_error: Some(e.clone()),
                        negotiated: None,
                    };
                    failed.insert(
                        *address,
                        PeerView {
                            node: format!("bgppeer/{}", c.name),
                            as_number: c.as_number,
                            passive: c.passive,
                            status: watch::channel(status).1,
                        },
                    );
                    problems.push(e);
                }
            }
        }
        self.configured = configured.into_iter().map(|(a, c)| (a, c.name)).collect();
        for p in &problems {
            tracing::debug!("BGP: {p}");
        }
        lock(&self.speaker.routes).peer_problems = problems;
        let gone: Vec<Ipv4Addr> = self
            .sessions
            .iter()
            .filter(|(a, p)| wanted.get(a) != Some(&p.wanted))
            .map(|(a, _)| *a)
            .collect();
        for address in gone {
            if let Some(peer) = self.sessions.remove(&address) {
                let why = match wanted.get(&address) {
                    Some(_) => "its settings changed; starting it again",
                    None if peer.wanted.label.starts_with("bgppeer/") => {
                        "the BGPPeer is gone or no longer selects this node; ending its session"
                    }
                    None => "the node left etcd; ending its session",
                };
                info!(peer = %address, node = %peer.wanted.label, "BGP: {why}");
                lock(&self.speaker.peers).remove(&address);
                self.learned.remove(&address);
                self.end_of_rib.remove(&address);
                let ended = self.ended.clone();
                tokio::spawn(async move {
                    peer.session.shutdown().await;
                    let _ = ended.send(());
                });
            }
        }
        {
            let mut views = lock(&self.speaker.peers);
            views.retain(|a, _| wanted.contains_key(a));
            views.extend(failed);
        }
        for (address, w) in wanted {
            if self.sessions.contains_key(&address) {
                continue;
            }
            let config = self.session_config(address, &w);
            // Fails while an ended session for the address still holds it on the listener
            // (it is started again when that one is done), or on a bad setting; the
            // periodic pass tries again.
            let (session, mut rx) = match Session::start(config, Some(&self.listener)) {
                Ok(s) => s,
                Err(e) => {
                    info!(peer = %address, node = %w.label, "BGP: the session cannot start yet: {e}");
                    continue;
                }
            };
            for prefix in self.announcements(address) {
                session.announce(prefix, self.underlay.ip);
            }
            self.next_generation += 1;
            let generation = self.next_generation;
            let events = self.events.clone();
            let forward = Task(tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if events.send((address, generation, e)).is_err() {
                        return;
                    }
                }
            }));
            info!(peer = %address, node = %w.label, as_number = w.as_number, passive = w.passive, "BGP: session started");
            lock(&self.speaker.peers).insert(
                address,
                PeerView {
                    node: w.label.clone(),
                    as_number: w.as_number,
                    passive: w.passive,
                    status: session.watch_status(),
                },
            );
            self.sessions.insert(
                address,
                Peer {
                    wanted: w,
                    generation,
                    session,
                    _forward: forward,
                },
            );
        }
    }

    /// What this node announces to `peer` now (see [`routes::announcements`]).
    fn announcements(&self, peer: Ipv4Addr) -> Vec<Ipv4Network> {
        routes::announcements(
            self.announced,
            self.config
                .bgp
                .announce_service_cidr
                .then_some(self.config.service_cidr),
            self.configured.contains_key(&peer),
        )
    }

    /// The lease changed: announce the new subnet, withdraw the old (and the Service CIDR
    /// with it when the lease is lost).
    fn set_local(&mut self, subnet: Option<Ipv4Network>) {
        if subnet == self.announced {
            return;
        }
        let before: BTreeMap<Ipv4Addr, Vec<Ipv4Network>> = self
            .sessions
            .keys()
            .map(|a| (*a, self.announcements(*a)))
            .collect();
        self.announced = subnet;
        for (address, peer) in &self.sessions {
            let now = self.announcements(*address);
            let old = before.get(address).map_or(&[][..], Vec::as_slice);
            for prefix in old.iter().filter(|p| !now.contains(p)) {
                peer.session.withdraw(*prefix);
            }
            for prefix in now.iter().filter(|p| !old.contains(p)) {
                peer.session.announce(*prefix, self.underlay.ip);
            }
        }
        match subnet {
            Some(s) => info!(subnet = %s, "BGP: announcing the node's pod subnet"),
            None => info!("BGP: the lease is lost; the pod subnet is withdrawn"),
        }
        self.sync_sessions();
    }

    /// A session's event; returns whether the routes changed.
    fn event(&mut self, peer: Ipv4Addr, generation: u64, event: SessionEvent) -> bool {
        if self
            .sessions
            .get(&peer)
            .is_none_or(|p| p.generation != generation)
        {
            return false;
        }
        match event {
            SessionEvent::State(state) => {
                info!(peer = %peer, "BGP: session {state}");
                if state != State::Established {
                    self.end_of_rib.remove(&peer);
                }
                false
            }
            SessionEvent::Route(RouteEvent::Learned(r)) => {
                self.learned
                    .entry(peer)
                    .or_default()
                    .insert(r.prefix, r.next_hop);
                true
            }
            SessionEvent::Route(RouteEvent::Withdrawn(prefix)) => {
                if let Some(routes) = self.learned.get_mut(&peer) {
                    routes.remove(&prefix);
                }
                true
            }
            SessionEvent::Route(RouteEvent::Stale(prefixes)) => {
                info!(peer = %peer, stale = prefixes.len(), "BGP: the peer restarts; its routes stay while it does");
                false
            }
            SessionEvent::Route(RouteEvent::EndOfRib) => {
                self.end_of_rib.insert(peer);
                true
            }
        }
    }

    fn check_converged(&mut self) {
        if self.converged {
            return;
        }
        let all_sent = self.records_loaded
            && self.peers_loaded
            && self.announced.is_some()
            && self.sessions.keys().all(|a| self.end_of_rib.contains(a));
        let grace = converge_grace(&self.config.bgp);
        if all_sent || self.started.elapsed() >= grace {
            self.converged = true;
            if self.restarting {
                info!(
                    waited_ms = self.started.elapsed().as_millis() as u64,
                    every_peer = all_sent,
                    "BGP: sessions converged after the restart; routes no peer announces go now"
                );
            }
        }
    }

    /// One pass: the kernel holds the routes the learned ones should give. Returns whether
    /// everything is in place.
    async fn reconcile(&mut self) -> bool {
        self.check_converged();
        let (desired, refused) = routes::desired(
            &self.learned,
            self.records.values(),
            &self.configured,
            self.underlay.ip,
            self.config.service_cidr,
        );
        let split = cross_subnet::split(
            desired,
            self.underlay.network(),
            self.fallback.is_some(),
            self.records.values(),
        );
        let desired = split.plain;
        let mut refused = refused;
        refused.extend(split.refused);
        for r in &refused {
            tracing::debug!("BGP: refused {r}");
        }
        lock(&self.speaker.routes).cross_subnet = split.problem;
        let current = match kernel::read(&self.handle, &self.underlay, &self.cluster).await {
            Ok(c) => c,
            Err(e) => {
                let problem = format!("reading the kernel's routes: {e}");
                warn!("BGP: {problem}");
                let mut view = lock(&self.speaker.routes);
                view.problem = Some(problem);
                view.refused = refused;
                return false;
            }
        };
        let changes = routes::diff(&desired, &current, self.converged);
        let mut failed = if changes.is_empty() {
            Vec::new()
        } else {
            let failed = kernel::apply(&self.handle, &self.underlay, &changes).await;
            info!(
                routes = desired.len(),
                set = changes.set.len(),
                removed = changes.del.len(),
                failed = failed.len(),
                "BGP: kernel routes reconciled"
            );
            for f in &failed {
                warn!("BGP: {f}");
            }
            failed
        };
        if let Some(device) = &self.fallback {
            failed.extend(self.reconcile_fallback(device, &split.vxlan).await);
        }
        let reached = self
            .records
            .values()
            .filter(|r| {
                r.name != self.config.node_name
                    && (desired.get(&r.subnet) == Some(&r.underlay_ip)
                        || split.vxlan.routes.contains_key(&r.subnet))
            })
            .count();
        let ok = failed.is_empty();
        let installed = desired.len() + split.vxlan.routes.len();
        let mut view = lock(&self.speaker.routes);
        view.installed = u32::try_from(installed.saturating_sub(failed.len())).unwrap_or(u32::MAX);
        view.reached = u32::try_from(reached).unwrap_or(u32::MAX);
        view.refused = refused;
        view.problem = (!ok).then(|| failed.join("; "));
        ok
    }
}

impl Mesh {
    /// The fallback's pass: the VXLAN device holds the entries for the nodes on other
    /// subnets, as the VXLAN mode's pass does for every node. Like the plain routes, nothing
    /// is removed before the sessions have converged after a restart. Returns the steps
    /// that failed.
    async fn reconcile_fallback(
        &self,
        device: &vxlan::Device,
        desired: &peers::Programmed,
    ) -> Vec<String> {
        let current = match vxlan::read_programmed(&self.handle, device, &self.cluster).await {
            Ok(c) => c,
            Err(e) => return vec![format!("reading {}'s entries: {e}", vxlan::DEVICE)],
        };
        let mut changes = peers::diff(desired, &current);
        if !self.converged {
            changes.del_routes.clear();
            changes.del_neighbours.clear();
            changes.del_fdb.clear();
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let failed = vxlan::apply(&self.handle, device, &changes).await;
        info!(
            peers = desired.routes.len(),
            changed = changes.count(),
            failed = failed.len(),
            "BGP: cross-subnet VXLAN entries reconciled"
        );
        for f in &failed {
            warn!("BGP: {f}");
        }
        failed
    }
}

type Notifications =
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Route notifications, so a route deleted by hand is put back at once.
fn subscribe() -> Option<Notifications> {
    let (mut connection, _handle, messages) = rtnetlink::new_connection()
        .map_err(|e| warn!("BGP: no netlink notifications ({e}); relying on the periodic pass"))
        .ok()?;
    let groups = SocketAddr::new(0, RTMGRP_IPV4_ROUTE);
    if let Err(e) = connection.socket_mut().socket_mut().bind(&groups) {
        warn!("BGP: no netlink notifications ({e}); relying on the periodic pass");
        return None;
    }
    tokio::spawn(connection);
    Some(messages)
}

fn removed_from(message: &NetlinkMessage<RouteNetlinkMessage>, device: u32) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == device)),
        _ => false,
    }
}

/// Whether the kernel holds routes of an earlier run (plain, or through the fallback's
/// device): the restart keeps them, and says so.
pub async fn routes_kept(
    handle: &rtnetlink::Handle,
    underlay: &Underlay,
    cluster: &ClusterCidr,
    fallback: Option<&vxlan::Device>,
) -> bool {
    let plain = kernel::read(handle, underlay, cluster)
        .await
        .is_ok_and(|r| !r.is_empty());
    let tunnelled = match fallback {
        Some(device) => vxlan::read_programmed(handle, device, cluster)
            .await
            .is_ok_and(|p| !p.routes.is_empty()),
        None => false,
    };
    plain || tunnelled
}

/// The VXLAN device of the cross-subnet fallback: with `bgp.cross_subnet` created, or kept
/// with its entries when a run of this mode left it (a restart); without it, a device an
/// earlier run left (the VXLAN mode's, or the fallback's) is removed with its entries. A
/// device of the VXLAN mode (it has the node's VTEP address, which this mode gives no
/// node) is made anew.
pub async fn fallback_device(
    handle: &rtnetlink::Handle,
    config: &Config,
    underlay: &Underlay,
) -> anyhow::Result<Option<vxlan::Device>> {
    use anyhow::Context as _;
    let remove = || async {
        let removed = twill_netlink::delete_link(handle, vxlan::DEVICE)
            .await
            .with_context(|| format!("removing the VXLAN device {}", vxlan::DEVICE))?;
        if removed {
            info!(
                device = vxlan::DEVICE,
                "removed the VXLAN device of an earlier run"
            );
        }
        anyhow::Ok(())
    };
    if !config.bgp.cross_subnet {
        remove().await?;
        return Ok(None);
    }
    if let Ok(index) = twill_netlink::link_index(handle, vxlan::DEVICE).await
        && twill_netlink::ipv4_addresses(handle, index)
            .await
            .is_ok_and(|a| !a.is_empty())
    {
        remove().await?;
    }
    let settings = vxlan::Settings::of_node(config, underlay);
    let device = vxlan::ensure_device(handle, underlay, settings)
        .await
        .with_context(|| format!("creating the VXLAN device {}", vxlan::DEVICE))?;
    info!(
        device = vxlan::DEVICE,
        vni = settings.vni,
        port = settings.port,
        mac = %peers::format_mac(&device.mac),
        "cross-subnet fallback: nodes on other subnets are reached through VXLAN"
    );
    Ok(Some(device))
}

/// Binds the BGP port before anything else starts, so a taken port stops the start.
pub fn bind(config: &Config) -> anyhow::Result<Listener> {
    let address = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.bgp.listen_port);
    Listener::bind(address).map_err(|e| anyhow::anyhow!("BGP (bgp.listen_port): {e}"))
}

/// Runs forever: node records from etcd, the lease, the sessions' events and the kernel's
/// notifications in; sessions and kernel routes out. `restarting`: the kernel held this
/// node's routes at start.
pub async fn run(
    config: Config,
    speaker: Arc<Speaker>,
    handle: rtnetlink::Handle,
    underlay: Underlay,
    fallback: Option<vxlan::Device>,
    listener: Listener,
    restarting: bool,
) {
    let (records_tx, mut records_rx) = watch::channel(None);
    let (peers_tx, mut peers_rx) = watch::channel(None);
    tokio::spawn(watch_store(config.clone(), records_tx, peers_tx));
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    let mut local = speaker.local.subscribe();
    let mut mesh = Mesh {
        cluster: config.cluster,
        config: config.clone(),
        speaker,
        handle,
        underlay,
        fallback,
        listener,
        sessions: BTreeMap::new(),
        learned: Learned::new(),
        records: BTreeMap::new(),
        records_loaded: false,
        bgp_peers: Vec::new(),
        peers_loaded: false,
        configured: BTreeMap::new(),
        announced: None,
        events,
        ended,
        next_generation: 0,
        end_of_rib: BTreeSet::new(),
        converged: !restarting,
        started: Instant::now(),
        restarting,
    };
    if restarting {
        info!(
            grace_s = converge_grace(&config.bgp).as_secs(),
            "BGP: the kernel kept this node's routes; they stay until the sessions converge"
        );
    }
    let initial = *local.borrow_and_update();
    mesh.set_local(initial);
    let mut notifications = subscribe();
    let mut pending: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let soon = |pending: &mut Option<Pin<Box<tokio::time::Sleep>>>, after: Duration| {
        if pending.is_none() {
            *pending = Some(Box::pin(tokio::time::sleep(after)));
        }
    };
    let mut tick = tokio::time::interval(config.resync);
    // Also ends the wait for convergence on time.
    let grace = tokio::time::sleep(converge_grace(&config.bgp));
    tokio::pin!(grace);
    let mut grace_done = !restarting;
    loop {
        tokio::select! {
            changed = records_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Some(records) = records_rx.borrow_and_update().clone() {
                    mesh.records = records;
                    mesh.records_loaded = true;
                }
                mesh.sync_sessions();
                soon(&mut pending, SETTLE);
            }
            changed = peers_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Some(peers) = peers_rx.borrow_and_update().clone() {
                    mesh.bgp_peers = peers;
                    mesh.peers_loaded = true;
                }
                mesh.sync_sessions();
                soon(&mut pending, SETTLE);
            }
            changed = local.changed() => {
                if changed.is_err() {
                    return;
                }
                let subnet = *local.borrow_and_update();
                mesh.set_local(subnet);
            }
            Some((peer, generation, event)) = events_rx.recv() => {
                if mesh.event(peer, generation, event) {
                    soon(&mut pending, SETTLE);
                }
            }
            Some(()) = ended_rx.recv() => {
                mesh.sync_sessions();
            }
            _ = tick.tick() => {
                mesh.sync_sessions();
                if !mesh.reconcile().await {
                    soon(&mut pending, RETRY);
                }
            }
            () = &mut grace, if !grace_done => {
                grace_done = true;
                soon(&mut pending, Duration::ZERO);
            }
            Some((message, _)) = async {
                match notifications.as_mut() {
                    Some(n) => n.next().await,
                    None => std::future::pending().await,
                }
            } => {
                let device = mesh.fallback.as_ref().map(|d| d.index);
                if removed_from(&message, mesh.underlay.index)
                    || device.is_some_and(|d| removed_from(&message, d))
                {
                    soon(&mut pending, DRIFT_DEBOUNCE);
                }
            }
            () = async {
                match pending.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            } => {
                pending = None;
                if !mesh.reconcile().await {
                    soon(&mut pending, RETRY);
                }
            }
        }
    }
}

/// What the BGP loop keeps of the store: BGPPeers and node records.
#[derive(Clone)]
enum Stored {
    Peer(BgpPeer),
    Node(NodeRecord),
}

/// A stored BGPPeer or node record; `None` for every other key.
fn parse_stored(key: &str, value: &[u8]) -> Option<Stored> {
    if key.starts_with(cluster::NODES) {
        return serde_json::from_slice(value).ok().map(Stored::Node);
    }
    key.strip_prefix(cluster::OBJECTS)?
        .starts_with("bgppeers/")
        .then_some(())?;
    match serde_json::from_slice::<Object>(value).ok()? {
        Object::BgpPeer(p) => Some(Stored::Peer(p)),
        _ => None,
    }
}

/// Sends `now` on when it differs from the last value sent.
fn send_changed<T: PartialEq>(out: &watch::Sender<Option<T>>, now: T) {
    out.send_if_modified(|last| {
        if last.as_ref() == Some(&now) {
            false
        } else {
            *last = Some(now);
            true
        }
    });
}

/// The node records (by node name) and the BGPPeers in etcd, followed with one watch as
/// the other loops follow the store: a snapshot, then changes; each sent on when it
/// differs from the last. While etcd is unreachable, or replaced by an empty one, the last
/// ones stand and the routing stays as it is.
async fn watch_store(
    config: Config,
    records: watch::Sender<Option<BTreeMap<String, NodeRecord>>>,
    peers: watch::Sender<Option<Vec<BgpPeer>>>,
) {
    crate::watch::follow(&config, "BGP", parse_stored, |store, _| {
        let mut now_records = BTreeMap::new();
        let mut now_peers = Vec::new();
        for (key, entry) in store {
            match entry {
                Stored::Peer(p) => now_peers.push(p.clone()),
                Stored::Node(r) => {
                    if let Some(name) = key.strip_prefix(cluster::NODES) {
                        now_records.insert(name.to_owned(), r.clone());
                    }
                }
            }
        }
        send_changed(&records, now_records);
        send_changed(&peers, now_peers);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(
        hold: Option<u16>,
        keepalive: Option<u16>,
        password_file: Option<String>,
    ) -> ConfiguredPeer {
        ConfiguredPeer {
            name: "tor".into(),
            as_number: 65001,
            passive: true,
            hold_seconds: hold,
            keepalive_seconds: keepalive,
            password_file,
        }
    }

    #[test]
    fn a_configured_session_takes_its_timers_or_the_nodes_and_reads_its_password() {
        let bgp = BgpConfig::default(); // hold 9, keepalive 3
        let w = configured_session(&bgp, &peer(None, None, None)).unwrap();
        assert_eq!(
            w,
            Wanted {
                label: "bgppeer/tor".into(),
                as_number: 65001,
                passive: true,
                hold_seconds: 9,
                keepalive_seconds: 3,
                password: None,
            }
        );
        // The node's keepalive is kept to a third of the peer's hold time.
        let w = configured_session(&bgp, &peer(Some(6), None, None)).unwrap();
        assert_eq!((w.hold_seconds, w.keepalive_seconds), (6, 2));
        let w = configured_session(&bgp, &peer(Some(30), Some(10), None)).unwrap();
        assert_eq!((w.hold_seconds, w.keepalive_seconds), (30, 10));
        let w = configured_session(&bgp, &peer(Some(0), None, None)).unwrap();
        assert_eq!((w.hold_seconds, w.keepalive_seconds), (0, 0));

        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"s3cret\n").unwrap();
        let path = file.path().display().to_string();
        let w = configured_session(&bgp, &peer(None, None, Some(path))).unwrap();
        assert_eq!(w.password.as_deref(), Some(&b"s3cret"[..]));
        let e = configured_session(&bgp, &peer(None, None, Some("/nonexistent/pw".into())))
            .unwrap_err();
        assert!(
            e.starts_with("BGPPeer tor: spec.passwordFile: reading /nonexistent/pw: "),
            "{e}"
        );
    }
}
