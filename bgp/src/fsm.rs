//! The BGP session state machine (RFC 4271 section 8), pure: events in, actions out.
//!
//! Architecture invariant: no I/O and no clock. Timers are started and stopped by
//! [`Action`]s and come back as [`Event::TimerExpired`]; the caller owns the sockets and the
//! time. Everything the session needs to remember (both connections during a collision, the
//! routes it announces and the ones it learned, the peer's graceful restart) lives here, so
//! that all of it is table-tested without a network.
//!
//! One [`Fsm`] is one peer. It can hold two connections at once, the one this speaker opened
//! ([`Conn::Outgoing`]) and the one the peer opened ([`Conn::Incoming`]), until collision
//! detection (RFC 4271 section 6.8) keeps one of them.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, time::Duration};

use crate::{
    codec::{self, DecodeError},
    message::{
        AFI_IPV4, AsSegment, Capabilities, GracefulRestart, Message, Notification, Open, Origin,
        PathAttributes, Prefix, SAFI_UNICAST, Update, cease, error_code, fsm_error, open_error,
    },
};

/// The hold time while waiting for the peer's OPEN (RFC 4271 section 8.2.2 suggests four
/// minutes).
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// How a peer is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub local_asn: u32,
    /// This speaker's BGP Identifier.
    pub router_id: Ipv4Addr,
    pub peer_asn: u32,
    /// Hold time proposed in the OPEN, in seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; `None`: a third of the negotiated hold time. Never more
    /// than that third.
    pub keepalive: Option<u16>,
    /// How long one outgoing connection attempt may take, and the wait before the next.
    pub connect_retry: Duration,
    /// The rest after a session ended in an error, before it starts again.
    pub idle_hold: Duration,
    /// Only accept the peer's connections, never open one.
    pub passive: bool,
    /// LOCAL_PREF sent to iBGP peers (never to eBGP peers).
    pub local_pref: u32,
    /// Graceful restart (RFC 4724); `None`: the capability is not advertised, and a peer's
    /// routes are removed as soon as its session drops.
    pub graceful_restart: Option<GracefulRestartConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Restart Time advertised, in seconds (at most 4095): how long the peer keeps this
    /// speaker's routes after the session drops without a NOTIFICATION.
    pub restart_time: u16,
    /// This speaker has just restarted: the R bit is set in its OPENs until a session is
    /// established.
    pub restarting: bool,
    /// The F bit for IPv4 unicast: the routes this speaker installed survived its restart.
    /// Without it a peer drops the routes it kept for this speaker.
    pub forwarding_preserved: bool,
    /// How long a restarted peer's routes are kept, once its session is back, when no
    /// End-of-RIB arrives.
    pub stale_time: Duration,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        Self {
            restart_time: 120,
            restarting: false,
            forwarding_preserved: false,
            stale_time: Duration::from_secs(360),
        }
    }
}

impl Config {
    /// A peer with twill's defaults: hold time 9 s, keepalive 3 s, connect retry 5 s,
    /// LOCAL_PREF 100, graceful restart advertised with a restart time of 120 s.
    pub fn new(local_asn: u32, router_id: Ipv4Addr, peer_asn: u32) -> Self {
        Self {
            local_asn,
            router_id,
            peer_asn,
            hold_time: 9,
            keepalive: None,
            connect_retry: Duration::from_secs(5),
            idle_hold: Duration::from_secs(5),
            passive: false,
            local_pref: 100,
            graceful_restart: Some(GracefulRestartConfig::default()),
        }
    }

    /// Whether the peer is in this speaker's AS.
    pub fn is_ibgp(&self) -> bool {
        self.local_asn == self.peer_asn
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.local_asn == 0 {
            return Err(ConfigError::new("local_asn", "AS 0 is reserved"));
        }
        if self.peer_asn == 0 {
            return Err(ConfigError::new("peer_asn", "AS 0 is reserved"));
        }
        if self.router_id.is_unspecified() {
            return Err(ConfigError::new(
                "router_id",
                "0.0.0.0 is not a BGP Identifier",
            ));
        }
        if matches!(self.hold_time, 1 | 2) {
            return Err(ConfigError::new(
                "hold_time",
                format!("{} s: must be 0 or at least 3", self.hold_time),
            ));
        }
        if self.keepalive == Some(0) && self.hold_time != 0 {
            return Err(ConfigError::new(
                "keepalive",
                "0 s with a hold time: the peer's hold timer would expire",
            ));
        }
        if self.connect_retry.is_zero() {
            return Err(ConfigError::new("connect_retry", "must be longer than 0 s"));
        }
        if let Some(gr) = &self.graceful_restart
            && gr.restart_time > 4095
        {
            return Err(ConfigError::new(
                "graceful_restart.restart_time",
                format!("{} s: the field has 12 bits, at most 4095", gr.restart_time),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid BGP peer configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// RFC 4271 section 8.2.2's states, of the session as a whole: the most advanced of its
/// connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        })
    }
}

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conn {
    /// This speaker connected to the peer.
    Outgoing,
    /// The peer connected to this speaker.
    Incoming,
}

impl Conn {
    fn index(self) -> usize {
        match self {
            Conn::Outgoing => 0,
            Conn::Incoming => 1,
        }
    }

    pub fn other(self) -> Conn {
        match self {
            Conn::Outgoing => Conn::Incoming,
            Conn::Incoming => Conn::Outgoing,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Bounds one outgoing connection attempt, then spaces the next.
    ConnectRetry,
    /// The rest in Idle after an error.
    IdleHold,
    Hold(Conn),
    Keepalive(Conn),
    /// The peer's Restart Time: how long its routes are kept while it restarts.
    PeerRestart,
    /// How long a restarted peer's stale routes are kept while waiting for its End-of-RIB.
    StaleRoutes,
}

/// A prefix this speaker announces, and the next hop it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub prefix: Prefix,
    pub next_hop: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ManualStart,
    /// Stop: a Cease NOTIFICATION on every connection, routes learned removed.
    ManualStop,
    /// The outgoing connection is up (RFC 4271 event 16, Tcp_CR_Acked).
    TcpCrAcked,
    /// The peer opened a connection to this speaker (event 17); answered by
    /// [`Action::Accept`] or [`Action::Refuse`].
    TcpConnectionConfirmed,
    /// A connection failed or the peer closed it; for [`Conn::Outgoing`] also an attempt
    /// that failed (event 18).
    TcpConnectionFails(Conn),
    BgpOpen(Conn, Open),
    KeepAliveMsg(Conn),
    UpdateMsg(Conn, Update),
    NotifMsg(Conn, Notification),
    RouteRefreshMsg(Conn, u16, u8),
    /// A message that did not decode (events 21, 22 and 28: header, OPEN or UPDATE error).
    MessageError(Conn, DecodeError),
    TimerExpired(Timer),
    /// Announce prefixes (or change their next hop).
    Announce(Vec<Announcement>),
    Withdraw(Vec<Prefix>),
}

/// A route learned from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: Prefix,
    pub next_hop: Ipv4Addr,
    /// The AS path, sets flattened, nearest AS first.
    pub as_path: Vec<u32>,
    pub origin: Origin,
    /// Only from iBGP peers; ignored from eBGP peers (RFC 4271 section 5.1.5).
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// A new route, or a new path for a prefix (a stale one refreshed too).
    Learned(Route),
    Withdrawn(Prefix),
    /// The peer's session dropped and it restarts gracefully: these routes are kept, marked
    /// stale, until it is back and has sent them again, or until its restart time runs out
    /// (then they are withdrawn).
    Stale(Vec<Prefix>),
    /// The peer has sent its whole table.
    EndOfRib,
}

/// What the two OPENs agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub hold_time: u16,
    pub keepalive: u16,
    /// Four-octet AS numbers on both sides: AS_PATH carries four octets.
    pub asn4: bool,
    pub route_refresh: bool,
    pub peer_asn: u32,
    pub peer_router_id: Ipv4Addr,
    pub peer_graceful_restart: Option<GracefulRestart>,
}

/// Why a connection or the session ended, for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("hold timer expired")]
    HoldTimerExpired,
    #[error("bad peer AS: expected {expected}, the peer's OPEN says {received}")]
    BadPeerAs { expected: u32, received: u32 },
    #[error("unacceptable hold time {0} s in the peer's OPEN")]
    UnacceptableHoldTime(u16),
    #[error("bad BGP identifier {0} in the peer's OPEN")]
    BadRouterId(Ipv4Addr),
    #[error("NOTIFICATION received: {0}")]
    NotificationReceived(Notification),
    #[error("NOTIFICATION sent: {notification} ({detail})")]
    MalformedMessage {
        notification: Notification,
        detail: String,
    },
    #[error("unexpected {message} in {state}")]
    UnexpectedMessage { message: &'static str, state: State },
    /// Not fatal: the session goes on.
    #[error("{0}")]
    TreatAsWithdraw(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer ([`Conn::Outgoing`]).
    Connect,
    /// Take the connection the peer just opened as [`Conn::Incoming`].
    Accept,
    /// Close the connection the peer just opened.
    Refuse,
    Send(Conn, Message),
    /// Close the connection after what was sent on it; for [`Conn::Outgoing`] also abandon
    /// an attempt in progress.
    Close(Conn),
    /// Start a timer, or restart it if it runs.
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// The connection's OPENs are exchanged: encode its UPDATEs accordingly.
    Negotiated(Conn, Negotiated),
    Route(RouteEvent),
    StateChanged(State),
    Error(SessionError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    OpenSent,
    OpenConfirm,
    Established,
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::OpenSent => State::OpenSent,
            Phase::OpenConfirm => State::OpenConfirm,
            Phase::Established => State::Established,
        }
    }
}

#[derive(Clone, Debug)]
struct Connection {
    phase: Phase,
    negotiated: Option<Negotiated>,
}

#[derive(Clone, Debug)]
struct Learned {
    route: Route,
    stale: bool,
}

/// Where the peer's graceful restart stands (this speaker as the receiving speaker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerRestart {
    None,
    /// The session dropped; its routes are stale until it is back or the timer runs out.
    Restarting,
    /// The session is back; stale routes go at its End-of-RIB.
    AwaitingEndOfRib,
}

/// How a connection ended.
enum Ending {
    Error(SessionError),
    /// The transport went away (or the peer opened a new connection after a restart).
    Tcp,
    /// Lost a collision, or closed by the peer's collision resolution.
    Collision,
}

/// One peer's session.
#[derive(Debug)]
pub struct Fsm {
    config: Config,
    started: bool,
    /// Resting after an error until [`Timer::IdleHold`].
    idle: bool,
    /// An outgoing connection attempt is in progress.
    connecting: bool,
    conns: [Option<Connection>; 2],
    /// The R bit of this speaker's OPENs.
    restarting: bool,
    /// Adj-RIB-Out: what this speaker announces.
    rib_out: BTreeMap<Prefix, std::net::Ipv4Addr>,
    /// Adj-RIB-In: what the peer announced.
    rib_in: BTreeMap<Prefix, Learned>,
    peer_restart: PeerRestart,
    state: State,
    out: Vec<Action>,
}

impl Fsm {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let restarting = config
            .graceful_restart
            .as_ref()
            .is_some_and(|gr| gr.restarting);
        Ok(Self {
            config,
            started: false,
            idle: false,
            connecting: false,
            conns: [None, None],
            restarting,
            rib_out: BTreeMap::new(),
            rib_in: BTreeMap::new(),
            peer_restart: PeerRestart::None,
            state: State::Idle,
            out: Vec::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Prefixes announced to the peer: the Adj-RIB-Out while the session is established.
    pub fn prefixes_sent(&self) -> usize {
        if self.established().is_some() {
            self.rib_out.len()
        } else {
            0
        }
    }

    /// Prefixes learned from the peer, stale ones included.
    pub fn prefixes_received(&self) -> usize {
        self.rib_in.len()
    }

    /// Learned prefixes kept stale while the peer restarts.
    pub fn prefixes_stale(&self) -> usize {
        self.rib_in.values().filter(|l| l.stale).count()
    }

    /// What the established connection negotiated.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        let conn = self.established()?;
        self.conns[conn.index()].as_ref()?.negotiated.as_ref()
    }

    /// The routes learned from the peer (stale ones included).
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.rib_in.values().map(|l| &l.route)
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::ManualStart => self.manual_start(),
            Event::ManualStop => self.manual_stop(),
            Event::TcpCrAcked => self.tcp_cr_acked(),
            Event::TcpConnectionConfirmed => self.tcp_connection_confirmed(),
            Event::TcpConnectionFails(conn) => self.tcp_connection_fails(conn),
            Event::BgpOpen(conn, open) => self.bgp_open(conn, open),
            Event::KeepAliveMsg(conn) => self.keepalive_msg(conn),
            Event::UpdateMsg(conn, update) => self.update_msg(conn, update),
            Event::NotifMsg(conn, n) => self.notif_msg(conn, n),
            Event::RouteRefreshMsg(conn, afi, safi) => self.route_refresh_msg(conn, afi, safi),
            Event::MessageError(conn, e) => self.message_error(conn, e),
            Event::TimerExpired(timer) => self.timer_expired(timer),
            Event::Announce(routes) => self.announce(routes),
            Event::Withdraw(prefixes) => self.withdraw(prefixes),
        }
        self.finish()
    }

    fn finish(&mut self) -> Vec<Action> {
        let state = if !self.started || self.idle {
            State::Idle
        } else if let Some(phase) = self.conns.iter().flatten().map(|c| c.phase).max() {
            phase.state()
        } else if self.connecting {
            State::Connect
        } else {
            State::Active
        };
        if state != self.state {
            self.state = state;
            if state == State::Established {
                self.restarting = false;
            }
            self.out.push(Action::StateChanged(state));
        }
        std::mem::take(&mut self.out)
    }

    fn push(&mut self, action: Action) {
        self.out.push(action);
    }

    fn phase(&self, conn: Conn) -> Option<Phase> {
        self.conns[conn.index()].as_ref().map(|c| c.phase)
    }

    fn established(&self) -> Option<Conn> {
        [Conn::Outgoing, Conn::Incoming]
            .into_iter()
            .find(|&c| self.phase(c) == Some(Phase::Established))
    }

    fn our_open(&self) -> Open {
        Open {
            asn: self.config.local_asn,
            hold_time: self.config.hold_time,
            router_id: self.config.router_id,
            capabilities: Capabilities {
                four_octet_as: true,
                ipv4_unicast: true,
                route_refresh: true,
                graceful_restart: self
                    .config
                    .graceful_restart
                    .as_ref()
                    .map(|gr| GracefulRestart {
                        restarting: self.restarting,
                        restart_time: gr.restart_time,
                        ipv4_unicast: Some(gr.forwarding_preserved),
                    }),
                ignored: Vec::new(),
            },
        }
    }

    // --- starting and stopping ---

    fn manual_start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.idle = false;
        self.begin();
    }

    /// Connects, or waits for the peer when passive.
    fn begin(&mut self) {
        if !self.config.passive {
            self.connect();
        }
    }

    fn connect(&mut self) {
        self.connecting = true;
        self.push(Action::Connect);
        self.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.config.connect_retry,
        ));
    }

    fn manual_stop(&mut self) {
        for conn in [Conn::Outgoing, Conn::Incoming] {
            if self.conns[conn.index()].is_some() {
                self.close_with(conn, Notification::cease(cease::ADMINISTRATIVE_SHUTDOWN));
            }
        }
        self.abandon_connect();
        self.push(Action::StopTimer(Timer::ConnectRetry));
        if self.idle {
            self.push(Action::StopTimer(Timer::IdleHold));
        }
        self.flush_all();
        self.started = false;
        self.idle = false;
    }

    fn abandon_connect(&mut self) {
        if self.connecting {
            self.connecting = false;
            self.push(Action::Close(Conn::Outgoing));
        }
    }

    fn go_idle(&mut self) {
        self.abandon_connect();
        self.push(Action::StopTimer(Timer::ConnectRetry));
        self.idle = true;
        self.push(Action::StartTimer(Timer::IdleHold, self.config.idle_hold));
    }

    // --- connections ---

    fn tcp_cr_acked(&mut self) {
        if !self.connecting || self.conns[Conn::Outgoing.index()].is_some() {
            self.push(Action::Close(Conn::Outgoing));
            return;
        }
        self.connecting = false;
        self.push(Action::StopTimer(Timer::ConnectRetry));
        if self.established().is_some() {
            self.push(Action::Close(Conn::Outgoing));
            return;
        }
        self.open_connection(Conn::Outgoing);
    }

    fn open_connection(&mut self, conn: Conn) {
        self.conns[conn.index()] = Some(Connection {
            phase: Phase::OpenSent,
            negotiated: None,
        });
        let open = self.our_open();
        self.push(Action::Send(conn, Message::Open(open)));
        self.push(Action::StartTimer(Timer::Hold(conn), OPEN_HOLD_TIME));
    }

    fn tcp_connection_confirmed(&mut self) {
        if !self.started || self.idle {
            self.push(Action::Refuse);
            return;
        }
        if let Some(established) = self.established() {
            if self.peer_can_restart(established) {
                // RFC 4724 section 4.2: a new connection from a peer that restarts
                // gracefully ends the old session as a transport failure would.
                self.keep_routes_stale(established);
                self.close(established);
            } else if established == Conn::Incoming {
                self.push(Action::Refuse);
                return;
            }
            // Else: tracked until its OPEN, then closed by collision detection.
        } else if self.conns[Conn::Incoming.index()].is_some() {
            // The peer opened another connection: the one it had is gone on its side.
            self.close(Conn::Incoming);
        }
        self.push(Action::Accept);
        if !self.connecting {
            self.push(Action::StopTimer(Timer::ConnectRetry));
        }
        self.open_connection(Conn::Incoming);
    }

    fn tcp_connection_fails(&mut self, conn: Conn) {
        if conn == Conn::Outgoing && self.conns[conn.index()].is_none() {
            if !self.connecting {
                return;
            }
            self.connecting = false;
            if self.conns[Conn::Incoming.index()].is_none() && self.started && !self.idle {
                self.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.config.connect_retry,
                ));
            }
            return;
        }
        let Some(phase) = self.phase(conn) else {
            return;
        };
        let graceful = phase == Phase::Established && self.peer_can_restart(conn);
        self.push(Action::Close(conn));
        if graceful {
            self.keep_routes_stale(conn);
        }
        self.drop_conn(conn);
        self.after_loss(phase, Ending::Tcp, graceful);
    }

    /// Forgets a connection and its timers (the caller closed it).
    fn drop_conn(&mut self, conn: Conn) -> Option<Connection> {
        let c = self.conns[conn.index()].take()?;
        self.push(Action::StopTimer(Timer::Hold(conn)));
        self.push(Action::StopTimer(Timer::Keepalive(conn)));
        Some(c)
    }

    fn close(&mut self, conn: Conn) -> Option<Phase> {
        self.push(Action::Close(conn));
        self.drop_conn(conn).map(|c| c.phase)
    }

    fn close_with(&mut self, conn: Conn, notification: Notification) -> Option<Phase> {
        self.push(Action::Send(conn, Message::Notification(notification)));
        self.close(conn)
    }

    /// After a connection ended: its routes, the error, and what the session does next.
    /// `routes_kept`: the peer restarts gracefully and its routes were marked stale.
    fn after_loss(&mut self, phase: Phase, ending: Ending, routes_kept: bool) {
        if phase == Phase::Established && !routes_kept {
            self.flush_all();
        }
        let error = matches!(ending, Ending::Error(_));
        if let Ending::Error(e) = ending {
            self.push(Action::Error(e));
        }
        if self.conns.iter().any(Option::is_some) || self.connecting || !self.started {
            return;
        }
        if error {
            self.go_idle();
        } else if self.config.passive {
            // Active: waiting for the peer.
        } else if phase == Phase::Established {
            self.connect();
        } else {
            self.push(Action::StartTimer(
                Timer::ConnectRetry,
                self.config.connect_retry,
            ));
        }
    }

    // --- messages ---

    fn check_open(&self, open: &Open) -> Result<(), (Notification, SessionError)> {
        if open.asn != self.config.peer_asn {
            return Err((
                Notification::bad_peer_as(open.asn),
                SessionError::BadPeerAs {
                    expected: self.config.peer_asn,
                    received: open.asn,
                },
            ));
        }
        if matches!(open.hold_time, 1 | 2) {
            return Err((
                Notification::new(
                    error_code::OPEN_MESSAGE,
                    open_error::UNACCEPTABLE_HOLD_TIME,
                    Vec::new(),
                ),
                SessionError::UnacceptableHoldTime(open.hold_time),
            ));
        }
        if open.router_id.is_unspecified()
            || (self.config.is_ibgp() && open.router_id == self.config.router_id)
        {
            return Err((
                Notification::new(
                    error_code::OPEN_MESSAGE,
                    open_error::BAD_BGP_IDENTIFIER,
                    open.router_id.octets().to_vec(),
                ),
                SessionError::BadRouterId(open.router_id),
            ));
        }
        Ok(())
    }

    /// RFC 4271 section 6.8: the connection opened by the speaker with the higher BGP
    /// Identifier stays (with equal identifiers, RFC 6286: the higher AS).
    fn collision_winner(&self, peer_id: Ipv4Addr, peer_asn: u32) -> Conn {
        let (ours, theirs) = (u32::from(self.config.router_id), u32::from(peer_id));
        if ours > theirs || (ours == theirs && self.config.local_asn > peer_asn) {
            Conn::Outgoing
        } else {
            Conn::Incoming
        }
    }

    fn negotiate(&self, peer: &Open) -> Negotiated {
        let hold_time = self.config.hold_time.min(peer.hold_time);
        let keepalive = match (hold_time, self.config.keepalive) {
            (0, _) => 0,
            (h, Some(k)) => k.clamp(1, h / 3),
            (h, None) => h / 3,
        };
        Negotiated {
            hold_time,
            keepalive,
            asn4: peer.capabilities.four_octet_as,
            route_refresh: peer.capabilities.route_refresh,
            peer_asn: peer.asn,
            peer_router_id: peer.router_id,
            peer_graceful_restart: peer.capabilities.graceful_restart,
        }
    }

    fn unexpected(&mut self, conn: Conn, message: &'static str) {
        let Some(phase) = self.phase(conn) else {
            return;
        };
        let subcode = match phase {
            Phase::OpenSent => fsm_error::UNEXPECTED_IN_OPEN_SENT,
            Phase::OpenConfirm => fsm_error::UNEXPECTED_IN_OPEN_CONFIRM,
            Phase::Established => fsm_error::UNEXPECTED_IN_ESTABLISHED,
        };
        self.close_with(
            conn,
            Notification::new(error_code::FSM, subcode, Vec::new()),
        );
        self.after_loss(
            phase,
            Ending::Error(SessionError::UnexpectedMessage {
                message,
                state: phase.state(),
            }),
            false,
        );
    }

    fn bgp_open(&mut self, conn: Conn, open: Open) {
        match self.phase(conn) {
            None => return,
            Some(Phase::OpenSent) => {}
            Some(_) => return self.unexpected(conn, "OPEN"),
        }
        if let Err((notification, error)) = self.check_open(&open) {
            self.close_with(conn, notification);
            self.after_loss(Phase::OpenSent, Ending::Error(error), false);
            return;
        }
        let other = conn.other();
        if let Some(other_phase) = self.phase(other) {
            let winner = if other_phase == Phase::Established {
                other
            } else {
                self.collision_winner(open.router_id, open.asn)
            };
            let loser = if winner == conn { other } else { conn };
            self.close_with(loser, Notification::cease(cease::CONNECTION_COLLISION));
            if loser == conn {
                return;
            }
        }
        let negotiated = self.negotiate(&open);
        self.push(Action::Negotiated(conn, negotiated.clone()));
        self.push(Action::Send(conn, Message::Keepalive));
        if negotiated.hold_time > 0 {
            self.push(Action::StartTimer(
                Timer::Hold(conn),
                secs(negotiated.hold_time),
            ));
            self.push(Action::StartTimer(
                Timer::Keepalive(conn),
                secs(negotiated.keepalive),
            ));
        } else {
            self.push(Action::StopTimer(Timer::Hold(conn)));
        }
        self.conns[conn.index()] = Some(Connection {
            phase: Phase::OpenConfirm,
            negotiated: Some(negotiated),
        });
    }

    fn restart_hold(&mut self, conn: Conn) {
        if let Some(n) = self.conns[conn.index()]
            .as_ref()
            .and_then(|c| c.negotiated.as_ref())
            && n.hold_time > 0
        {
            let hold = secs(n.hold_time);
            self.push(Action::StartTimer(Timer::Hold(conn), hold));
        }
    }

    fn restart_keepalive(&mut self, conn: Conn) {
        if let Some(n) = self.conns[conn.index()]
            .as_ref()
            .and_then(|c| c.negotiated.as_ref())
            && n.keepalive > 0
        {
            let keepalive = secs(n.keepalive);
            self.push(Action::StartTimer(Timer::Keepalive(conn), keepalive));
        }
    }

    fn keepalive_msg(&mut self, conn: Conn) {
        match self.phase(conn) {
            None => {}
            Some(Phase::OpenSent) => self.unexpected(conn, "KEEPALIVE"),
            Some(Phase::OpenConfirm) => self.establish(conn),
            Some(Phase::Established) => self.restart_hold(conn),
        }
    }

    fn establish(&mut self, conn: Conn) {
        self.restart_hold(conn);
        let other = conn.other();
        if self.conns[other.index()].is_some() {
            self.close_with(other, Notification::cease(cease::CONNECTION_COLLISION));
        }
        if self.connecting {
            self.abandon_connect();
            self.push(Action::StopTimer(Timer::ConnectRetry));
        }
        if let Some(c) = self.conns[conn.index()].as_mut() {
            c.phase = Phase::Established;
        }
        if self.peer_restart == PeerRestart::Restarting {
            self.push(Action::StopTimer(Timer::PeerRestart));
            let preserved = self
                .negotiated()
                .and_then(|n| n.peer_graceful_restart)
                .and_then(|gr| gr.ipv4_unicast)
                == Some(true);
            if preserved {
                let stale_time = self
                    .config
                    .graceful_restart
                    .as_ref()
                    .map_or(Duration::ZERO, |gr| gr.stale_time);
                self.peer_restart = PeerRestart::AwaitingEndOfRib;
                self.push(Action::StartTimer(Timer::StaleRoutes, stale_time));
            } else {
                self.flush_stale();
            }
        }
        let all: Vec<Announcement> = self
            .rib_out
            .iter()
            .map(|(&prefix, &next_hop)| Announcement { prefix, next_hop })
            .collect();
        self.send_announcements(conn, &all);
        self.send_update(conn, Update::end_of_rib());
    }

    fn send_update(&mut self, conn: Conn, update: Update) {
        self.push(Action::Send(conn, Message::Update(update)));
        self.restart_keepalive(conn);
    }

    fn attributes(&self, next_hop: Ipv4Addr) -> PathAttributes {
        let ibgp = self.config.is_ibgp();
        PathAttributes {
            origin: Origin::Igp,
            as_path: if ibgp {
                Vec::new()
            } else {
                vec![AsSegment::Sequence(vec![self.config.local_asn])]
            },
            next_hop,
            med: None,
            local_pref: ibgp.then_some(self.config.local_pref),
        }
    }

    /// UPDATEs for `routes`, one path per next hop, as many prefixes per message as fit.
    fn send_announcements(&mut self, conn: Conn, routes: &[Announcement]) {
        let mut by_next_hop: BTreeMap<Ipv4Addr, Vec<Prefix>> = BTreeMap::new();
        for r in routes {
            by_next_hop.entry(r.next_hop).or_default().push(r.prefix);
        }
        for (next_hop, prefixes) in by_next_hop {
            for chunk in chunks(&prefixes, codec::update_overhead(1)) {
                self.send_update(
                    conn,
                    Update {
                        attributes: Some(self.attributes(next_hop)),
                        nlri: chunk,
                        ..Update::default()
                    },
                );
            }
        }
    }

    fn send_withdrawals(&mut self, conn: Conn, prefixes: &[Prefix]) {
        for chunk in chunks(prefixes, codec::HEADER_LEN + 4) {
            self.send_update(
                conn,
                Update {
                    withdrawn: chunk,
                    ..Update::default()
                },
            );
        }
    }

    fn update_msg(&mut self, conn: Conn, update: Update) {
        match self.phase(conn) {
            None => return,
            Some(Phase::Established) => {}
            Some(_) => return self.unexpected(conn, "UPDATE"),
        }
        self.restart_hold(conn);
        if update.is_end_of_rib() {
            if self.peer_restart == PeerRestart::AwaitingEndOfRib {
                self.push(Action::StopTimer(Timer::StaleRoutes));
                self.flush_stale();
            }
            self.push(Action::Route(RouteEvent::EndOfRib));
            return;
        }
        if let Some(reason) = update.treat_as_withdraw.clone() {
            self.push(Action::Error(SessionError::TreatAsWithdraw(reason)));
        }
        for prefix in &update.withdrawn {
            if self.rib_in.remove(prefix).is_some() {
                self.push(Action::Route(RouteEvent::Withdrawn(*prefix)));
            }
        }
        let Some(attributes) = &update.attributes else {
            return;
        };
        let ibgp = self.config.is_ibgp();
        let as_path = attributes.as_numbers();
        // A path through this speaker's own AS is a loop (RFC 4271 section 9.1.2).
        let looped = !ibgp && as_path.contains(&self.config.local_asn);
        for prefix in &update.nlri {
            if looped {
                if self.rib_in.remove(prefix).is_some() {
                    self.push(Action::Route(RouteEvent::Withdrawn(*prefix)));
                }
                continue;
            }
            let route = Route {
                prefix: *prefix,
                next_hop: attributes.next_hop,
                as_path: as_path.clone(),
                origin: attributes.origin,
                local_pref: if ibgp { attributes.local_pref } else { None },
                med: attributes.med,
            };
            let unchanged = self
                .rib_in
                .get(prefix)
                .is_some_and(|l| !l.stale && l.route == route);
            if unchanged {
                continue;
            }
            self.rib_in.insert(
                *prefix,
                Learned {
                    route: route.clone(),
                    stale: false,
                },
            );
            self.push(Action::Route(RouteEvent::Learned(route)));
        }
    }

    fn notif_msg(&mut self, conn: Conn, notification: Notification) {
        let Some(phase) = self.phase(conn) else {
            return;
        };
        self.close(conn);
        let ending = if notification.code == error_code::CEASE
            && notification.subcode == cease::CONNECTION_COLLISION
            && self.conns[conn.other().index()].is_some()
        {
            Ending::Collision
        } else {
            Ending::Error(SessionError::NotificationReceived(notification))
        };
        self.after_loss(phase, ending, false);
    }

    fn route_refresh_msg(&mut self, conn: Conn, afi: u16, safi: u8) {
        if self.phase(conn) != Some(Phase::Established) || (afi, safi) != (AFI_IPV4, SAFI_UNICAST) {
            return;
        }
        let all: Vec<Announcement> = self
            .rib_out
            .iter()
            .map(|(&prefix, &next_hop)| Announcement { prefix, next_hop })
            .collect();
        self.send_announcements(conn, &all);
    }

    fn message_error(&mut self, conn: Conn, error: DecodeError) {
        let Some(phase) = self.phase(conn) else {
            return;
        };
        self.close_with(conn, error.notification.clone());
        self.after_loss(
            phase,
            Ending::Error(SessionError::MalformedMessage {
                notification: error.notification,
                detail: error.detail,
            }),
            false,
        );
    }

    // --- timers ---

    fn timer_expired(&mut self, timer: Timer) {
        match timer {
            Timer::ConnectRetry => {
                if !self.started || self.idle {
                    return;
                }
                if self.conns.iter().any(Option::is_some) {
                    // A connection is under way: abandon a slow attempt, do not retry.
                    self.abandon_connect();
                } else {
                    if self.connecting {
                        self.abandon_connect();
                    }
                    if !self.config.passive {
                        self.connect();
                    }
                }
            }
            Timer::IdleHold => {
                if self.started && self.idle {
                    self.idle = false;
                    self.begin();
                }
            }
            Timer::Hold(conn) => {
                if let Some(phase) = self.close_with(conn, Notification::hold_timer_expired()) {
                    self.after_loss(phase, Ending::Error(SessionError::HoldTimerExpired), false);
                }
            }
            Timer::Keepalive(conn) => {
                if self.phase(conn) >= Some(Phase::OpenConfirm) {
                    self.push(Action::Send(conn, Message::Keepalive));
                    self.restart_keepalive(conn);
                }
            }
            Timer::PeerRestart => {
                if self.peer_restart == PeerRestart::Restarting {
                    self.flush_stale();
                }
            }
            Timer::StaleRoutes => {
                if self.peer_restart == PeerRestart::AwaitingEndOfRib {
                    self.flush_stale();
                }
            }
        }
    }

    // --- routes ---

    fn announce(&mut self, routes: Vec<Announcement>) {
        let changed: Vec<Announcement> = routes
            .into_iter()
            .filter(|r| self.rib_out.insert(r.prefix, r.next_hop) != Some(r.next_hop))
            .collect();
        if let Some(conn) = self.established()
            && !changed.is_empty()
        {
            self.send_announcements(conn, &changed);
        }
    }

    fn withdraw(&mut self, prefixes: Vec<Prefix>) {
        let gone: Vec<Prefix> = prefixes
            .into_iter()
            .filter(|p| self.rib_out.remove(p).is_some())
            .collect();
        if let Some(conn) = self.established()
            && !gone.is_empty()
        {
            self.send_withdrawals(conn, &gone);
        }
    }

    /// Whether the peer of this established connection restarts gracefully: both sides
    /// advertised the capability and the peer listed IPv4 unicast in it.
    fn peer_can_restart(&self, conn: Conn) -> bool {
        self.config.graceful_restart.is_some()
            && self.conns[conn.index()]
                .as_ref()
                .and_then(|c| c.negotiated.as_ref())
                .and_then(|n| n.peer_graceful_restart)
                .is_some_and(|gr| gr.ipv4_unicast.is_some())
    }

    /// The session of `conn` dropped and the peer restarts gracefully: its routes stay,
    /// marked stale, for its restart time.
    fn keep_routes_stale(&mut self, conn: Conn) {
        let restart_time = self.conns[conn.index()]
            .as_ref()
            .and_then(|c| c.negotiated.as_ref())
            .and_then(|n| n.peer_graceful_restart)
            .map_or(0, |gr| gr.restart_time);
        let mut stale = Vec::new();
        for (prefix, learned) in &mut self.rib_in {
            learned.stale = true;
            stale.push(*prefix);
        }
        if !stale.is_empty() {
            self.push(Action::Route(RouteEvent::Stale(stale)));
        }
        if self.peer_restart == PeerRestart::AwaitingEndOfRib {
            self.push(Action::StopTimer(Timer::StaleRoutes));
        }
        if restart_time == 0 {
            self.flush_stale();
        } else {
            self.peer_restart = PeerRestart::Restarting;
            self.push(Action::StartTimer(Timer::PeerRestart, secs(restart_time)));
        }
    }

    fn flush_stale(&mut self) {
        self.peer_restart = PeerRestart::None;
        let stale: Vec<Prefix> = self
            .rib_in
            .iter()
            .filter(|(_, l)| l.stale)
            .map(|(p, _)| *p)
            .collect();
        for prefix in stale {
            self.rib_in.remove(&prefix);
            self.push(Action::Route(RouteEvent::Withdrawn(prefix)));
        }
    }

    fn flush_all(&mut self) {
        match self.peer_restart {
            PeerRestart::None => {}
            PeerRestart::Restarting => self.push(Action::StopTimer(Timer::PeerRestart)),
            PeerRestart::AwaitingEndOfRib => self.push(Action::StopTimer(Timer::StaleRoutes)),
        }
        self.peer_restart = PeerRestart::None;
        let all = std::mem::take(&mut self.rib_in);
        for prefix in all.into_keys() {
            self.push(Action::Route(RouteEvent::Withdrawn(prefix)));
        }
    }
}

fn secs(s: u16) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// Splits prefixes into runs that fit in one message next to `overhead` bytes.
fn chunks(prefixes: &[Prefix], overhead: usize) -> Vec<Vec<Prefix>> {
    let room = codec::MAX_MESSAGE_LEN - overhead;
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut used = 0;
    for p in prefixes {
        let len = codec::prefix_wire_len(p);
        if used + len > room {
            out.push(std::mem::take(&mut current));
            used = 0;
        }
        used += len;
        current.push(*p);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests;
