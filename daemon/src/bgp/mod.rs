//! The BGP-routed mode (`network.overlay = "bgp"`): no VXLAN device; each node announces
//! its leased pod subnet over iBGP with its underlay address as next hop, and the routes it
//! learns from the other nodes become plain kernel routes via their underlay addresses.
//!
//! One task ([`run`]) owns the sessions (a full mesh built from the node records in etcd,
//! the lower underlay address connecting), the routes learned, and the kernel routes. Each
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

pub mod kernel;
pub mod routes;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{EventType, GetOptions, WatchOptions};
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

use crate::{
    bgp::routes::{Learned, MeshPeer},
    config::{BgpConfig, Config},
    overlay::underlay::Underlay,
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
    node: String,
    passive: bool,
    status: watch::Receiver<PeerStatus>,
}

#[derive(Default)]
struct RouteView {
    installed: u32,
    refused: Vec<String>,
    problem: Option<String>,
    /// Mesh peers whose subnet route is in the kernel.
    reached: u32,
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
                    as_number: s.negotiated.as_ref().map_or(self.as_number, |n| n.peer_asn),
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
        BgpStatus {
            as_number: self.as_number,
            router_id: Some(self.router_id),
            announced: *self.local.borrow(),
            peers,
            refused: r.refused.clone(),
            routes: r.installed,
            problem: r.problem.clone(),
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
        let problem = r.problem.iter().cloned().chain(down).collect::<Vec<_>>();
        OverlayStatus {
            peers: r.reached,
            problem: (!problem.is_empty()).then(|| problem.join("; ")),
        }
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
    node: String,
    generation: u64,
    session: Session,
    _forward: Task,
}

type Tagged = (Ipv4Addr, u64, SessionEvent);

/// The task's state.
struct Mesh {
    config: Config,
    speaker: Arc<Speaker>,
    handle: rtnetlink::Handle,
    underlay: Underlay,
    cluster: ClusterCidr,
    listener: Listener,
    sessions: BTreeMap<Ipv4Addr, Peer>,
    learned: Learned,
    records: BTreeMap<String, NodeRecord>,
    records_loaded: bool,
    announced: Option<Ipv4Network>,
    events: mpsc::UnboundedSender<Tagged>,
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
    fn session_config(&self, peer: Ipv4Addr, passive: bool) -> SessionConfig {
        let bgp = &self.config.bgp;
        let mut f = fsm::Config::new(bgp.as_number, self.speaker.router_id, bgp.as_number);
        f.hold_time = bgp.hold_seconds;
        f.keepalive = Some(bgp.keepalive_seconds);
        f.passive = passive;
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
        s.md5_password.clone_from(&bgp.password);
        s
    }

    /// Starts sessions with new mesh peers and ends those with nodes gone from etcd. No
    /// session starts before the node holds its subnet: a session that came up first
    /// would send an empty table and End-of-RIB, and a peer keeping this node's routes
    /// through a restart would drop them.
    fn sync_sessions(&mut self) {
        if !self.records_loaded || self.announced.is_none() {
            return;
        }
        let mesh: BTreeMap<Ipv4Addr, MeshPeer> = routes::mesh(
            &self.config.node_name,
            self.underlay.ip,
            &self.cluster,
            self.records.values(),
        );
        let gone: Vec<Ipv4Addr> = self
            .sessions
            .iter()
            .filter(|(a, p)| mesh.get(a).is_none_or(|m| m.node != p.node))
            .map(|(a, _)| *a)
            .collect();
        for address in gone {
            if let Some(peer) = self.sessions.remove(&address) {
                info!(peer = %address, node = %peer.node, "BGP: the node left etcd; ending its session");
                lock(&self.speaker.peers).remove(&address);
                self.learned.remove(&address);
                self.end_of_rib.remove(&address);
                tokio::spawn(peer.session.shutdown());
            }
        }
        for (address, m) in mesh {
            if self.sessions.contains_key(&address) {
                continue;
            }
            let config = self.session_config(address, m.passive);
            let (session, mut rx) = match Session::start(config, Some(&self.listener)) {
                Ok(s) => s,
                Err(e) => {
                    warn!(peer = %address, "BGP: starting the session: {e}");
                    continue;
                }
            };
            if let Some(subnet) = self.announced {
                session.announce(subnet, self.underlay.ip);
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
            info!(peer = %address, node = %m.node, passive = m.passive, "BGP: session started");
            lock(&self.speaker.peers).insert(
                address,
                PeerView {
                    node: m.node.clone(),
                    passive: m.passive,
                    status: session.watch_status(),
                },
            );
            self.sessions.insert(
                address,
                Peer {
                    node: m.node,
                    generation,
                    session,
                    _forward: forward,
                },
            );
        }
    }

    /// The lease changed: announce the new subnet, withdraw the old.
    fn set_local(&mut self, subnet: Option<Ipv4Network>) {
        if subnet == self.announced {
            return;
        }
        for peer in self.sessions.values() {
            if let Some(old) = self.announced {
                peer.session.withdraw(old);
            }
            if let Some(new) = subnet {
                peer.session.announce(new, self.underlay.ip);
            }
        }
        match subnet {
            Some(s) => info!(subnet = %s, "BGP: announcing the node's pod subnet"),
            None => info!("BGP: the lease is lost; the pod subnet is withdrawn"),
        }
        self.announced = subnet;
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
        let (desired, refused) = routes::desired(&self.learned, self.records.values());
        for r in &refused {
            tracing::debug!("BGP: refused {r}");
        }
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
        let failed = if changes.is_empty() {
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
        let mesh = routes::mesh(
            &self.config.node_name,
            self.underlay.ip,
            &self.cluster,
            self.records.values(),
        );
        let reached = self
            .records
            .values()
            .filter(|r| {
                mesh.contains_key(&r.underlay_ip) && desired.get(&r.subnet) == Some(&r.underlay_ip)
            })
            .count();
        let ok = failed.is_empty();
        let mut view = lock(&self.speaker.routes);
        view.installed =
            u32::try_from(desired.len().saturating_sub(failed.len())).unwrap_or(u32::MAX);
        view.reached = u32::try_from(reached).unwrap_or(u32::MAX);
        view.refused = refused;
        view.problem = (!ok).then(|| failed.join("; "));
        ok
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

/// Whether the kernel holds routes of an earlier run: the restart keeps them, and says so.
pub async fn routes_kept(
    handle: &rtnetlink::Handle,
    underlay: &Underlay,
    cluster: &ClusterCidr,
) -> bool {
    kernel::read(handle, underlay, cluster)
        .await
        .is_ok_and(|r| !r.is_empty())
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
    listener: Listener,
    restarting: bool,
) {
    let (records_tx, mut records_rx) = watch::channel(None);
    tokio::spawn(watch_records(config.clone(), records_tx));
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let mut local = speaker.local.subscribe();
    let mut mesh = Mesh {
        cluster: config.cluster,
        config: config.clone(),
        speaker,
        handle,
        underlay,
        listener,
        sessions: BTreeMap::new(),
        learned: Learned::new(),
        records: BTreeMap::new(),
        records_loaded: false,
        announced: None,
        events,
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
            _ = tick.tick() => {
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
                if removed_from(&message, mesh.underlay.index) {
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

fn parse(kv: &etcd_client::KeyValue) -> Option<(String, NodeRecord)> {
    let key = kv.key_str().ok()?;
    let name = key.strip_prefix(cluster::NODES)?.to_owned();
    let record: NodeRecord = serde_json::from_slice(kv.value()).ok()?;
    Some((name, record))
}

/// The node records: a snapshot, then a watch; reconnects when etcd goes away. While etcd
/// is unreachable the last records stand, and the routing stays as it is.
async fn watch_records(config: Config, out: watch::Sender<Option<BTreeMap<String, NodeRecord>>>) {
    loop {
        let mut client = match crate::connect(&config).await {
            Ok(c) => c,
            Err(e) => {
                warn!("BGP: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let snapshot = match client
            .get(cluster::NODES, Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!("BGP: reading node records: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let mut records: BTreeMap<String, NodeRecord> =
            snapshot.kvs().iter().filter_map(parse).collect();
        if out.send(Some(records.clone())).is_err() {
            return;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = match client.watch(cluster::NODES, Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                warn!("BGP: watching node records: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(r)) if !r.canceled() => r,
                Ok(_) => {
                    warn!("BGP: the node record watch ended; starting over");
                    break;
                }
                Err(e) => {
                    warn!("BGP: watching node records: {e}; starting over");
                    break;
                }
            };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        if let Some((name, record)) = parse(kv) {
                            records.insert(name, record);
                        }
                    }
                    EventType::Delete => {
                        if let Some(name) = kv
                            .key_str()
                            .ok()
                            .and_then(|k| k.strip_prefix(cluster::NODES))
                        {
                            records.remove(name);
                        }
                    }
                }
            }
            if out.send(Some(records.clone())).is_err() {
                return;
            }
        }
    }
}
