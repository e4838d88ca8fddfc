//! A BGP session over TCP: drives one [`Fsm`] with tokio sockets and timers.
//!
//! [`Session::start`] spawns one task per peer that owns the state machine, the
//! connections (an outgoing one, and an incoming one handed over by a [`Listener`]) and the
//! timers. The caller announces and withdraws prefixes through the [`Session`] handle,
//! receives [`SessionEvent`]s (route changes, state changes) on a channel, and reads a
//! [`PeerStatus`] from a `watch` channel.
//!
//! Sockets are opened by the tasks: they live in the network namespace of the thread that
//! runs them (a `current_thread` runtime on a thread that entered the namespace, or a
//! process that runs in it).

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsFd as _,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant as StdInstant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpSocket, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};

use crate::{
    codec::{self, DecodeError, HEADER_LEN},
    fsm::{
        self, Action, Announcement, ConfigError, Conn, Event, Fsm, Negotiated, RouteEvent, State,
        Timer,
    },
    message::{BGP_PORT, Message, Prefix},
    socket::{Md5Drops, set_md5},
};

/// How long one write may take before the connection counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown waits for its NOTIFICATIONs to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One peer.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub fsm: fsm::Config,
    pub peer_address: Ipv4Addr,
    /// The peer's BGP port (179).
    pub peer_port: u16,
    /// Source address of outgoing connections; `None`: the kernel picks one.
    pub local_address: Option<Ipv4Addr>,
    /// TCP MD5 password (RFC 2385), at most 80 bytes.
    pub md5_password: Option<Vec<u8>>,
}

impl SessionConfig {
    pub fn new(fsm: fsm::Config, peer_address: Ipv4Addr) -> Self {
        Self {
            fsm,
            peer_address,
            peer_port: BGP_PORT,
            local_address: None,
            md5_password: None,
        }
    }
}

/// What an operator wants to know about a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub peer: Ipv4Addr,
    pub state: State,
    /// When the session last became established; `None` while it is not.
    pub established_at: Option<StdInstant>,
    pub prefixes_sent: usize,
    pub prefixes_received: usize,
    /// Of the received ones, those kept stale while the peer restarts.
    pub prefixes_stale: usize,
    /// The last thing that went wrong, e.g. "hold timer expired", "bad peer AS: ...",
    /// "MD5 mismatch: ...", "connect to 172.30.0.101:179: Connection refused".
    pub last_error: Option<String>,
    pub negotiated: Option<Negotiated>,
}

impl PeerStatus {
    /// How long the session has been established.
    pub fn uptime(&self) -> Option<Duration> {
        self.established_at.map(|t| t.elapsed())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    State(State),
    Route(RouteEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("peer {peer}: {source}")]
    Listener {
        peer: Ipv4Addr,
        #[source]
        source: io::Error,
    },
}

enum Command {
    Announce(Vec<Announcement>),
    Withdraw(Vec<Prefix>),
    Stop(oneshot::Sender<()>),
}

/// A task aborted when this handle is dropped.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The handle of a running session. Dropping it (or [`Session::abort`]) ends the session at
/// once without a NOTIFICATION, as a crash would: a peer with graceful restart keeps this
/// speaker's routes. [`Session::shutdown`] ends it with a Cease.
#[derive(Debug)]
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<PeerStatus>,
    task: Option<Task>,
}

impl Session {
    /// Starts the session (ManualStart). With a `listener`, the peer's connections to it
    /// come to this session, with the MD5 key set on the listener for the peer's address.
    /// Must be called inside a tokio runtime.
    pub fn start(
        config: SessionConfig,
        listener: Option<&Listener>,
    ) -> Result<(Session, mpsc::UnboundedReceiver<SessionEvent>), StartError> {
        let fsm = Fsm::new(config.fsm.clone())?;
        let incoming = listener
            .map(|l| l.register(config.peer_address, config.md5_password.as_deref()))
            .transpose()
            .map_err(|source| StartError::Listener {
                peer: config.peer_address,
                source,
            })?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(PeerStatus {
            peer: config.peer_address,
            state: State::Idle,
            established_at: None,
            prefixes_sent: 0,
            prefixes_received: 0,
            prefixes_stale: 0,
            last_error: None,
            negotiated: None,
        });
        let (io_tx, io_rx) = mpsc::unbounded_channel();
        let md5_baseline = Md5Drops::read().ok();
        let driver = Driver {
            fsm,
            config,
            commands: commands_rx,
            incoming,
            events,
            status: status_tx,
            io_tx,
            io_rx,
            conns: [None, None],
            connecting: None,
            pending: None,
            timers: BTreeMap::new(),
            next_gen: 0,
            md5_baseline,
            md5_suspect: None,
            closing: Vec::new(),
        };
        let task = Task(tokio::spawn(driver.run()));
        Ok((
            Session {
                commands,
                status,
                task: Some(task),
            },
            events_rx,
        ))
    }

    /// Announces `prefix` with `next_hop` (or changes its next hop).
    pub fn announce(&self, prefix: Prefix, next_hop: Ipv4Addr) {
        self.announce_all(vec![Announcement { prefix, next_hop }]);
    }

    pub fn announce_all(&self, routes: Vec<Announcement>) {
        let _ = self.commands.send(Command::Announce(routes));
    }

    pub fn withdraw(&self, prefix: Prefix) {
        self.withdraw_all(vec![prefix]);
    }

    pub fn withdraw_all(&self, prefixes: Vec<Prefix>) {
        let _ = self.commands.send(Command::Withdraw(prefixes));
    }

    pub fn status(&self) -> PeerStatus {
        self.status.borrow().clone()
    }

    /// The status as it changes.
    pub fn watch_status(&self) -> watch::Receiver<PeerStatus> {
        self.status.clone()
    }

    /// Ends the session with a Cease (administrative shutdown) on its connections, and
    /// returns once they are closed.
    pub async fn shutdown(mut self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Stop(done)).is_ok() {
            let _ = wait.await;
        }
        if let Some(Task(handle)) = self.task.as_mut() {
            let _ = handle.await;
        }
    }

    /// Ends the session at once, without a NOTIFICATION (see [`Session`]).
    pub fn abort(self) {}
}

/// A listening socket shared by the sessions of several peers. A connection from an
/// address with no session is held for [`UNREGISTERED_GRACE`] in case one registers (a
/// node that has just joined is connected to before its own speaker has started its
/// sessions; closing the connection would cost the connecting peer its idle hold time);
/// then it is closed.
#[derive(Debug)]
pub struct Listener {
    shared: Arc<ListenerShared>,
    _accept: Task,
}

/// The sessions by peer address, and whether each has an MD5 password.
type Registrations = Mutex<HashMap<Ipv4Addr, (mpsc::UnboundedSender<TcpStream>, bool)>>;

/// How long a connection from an address no session has registered is held for one.
pub const UNREGISTERED_GRACE: Duration = Duration::from_secs(2);
/// How often a held connection looks for its session.
const UNREGISTERED_POLL: Duration = Duration::from_millis(10);
/// Connections from unregistered addresses held at once, at most; more are closed at once
/// (so whoever reaches the port cannot use up the daemon's descriptors).
const MAX_UNREGISTERED: usize = 32;

#[derive(Debug)]
struct ListenerShared {
    socket: TcpListener,
    peers: Registrations,
    /// Connections [`hold_unregistered`] holds now.
    held: std::sync::atomic::AtomicUsize,
}

impl Listener {
    /// Listens on `address` (port 179 for peers that connect to the standard port). Must be
    /// called inside a tokio runtime.
    pub fn bind(address: SocketAddrV4) -> io::Result<Listener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::V4(address))
            .map_err(|e| io::Error::new(e.kind(), format!("binding {address}: {e}")))?;
        let shared = Arc::new(ListenerShared {
            socket: socket.listen(64)?,
            peers: Mutex::new(HashMap::new()),
            held: std::sync::atomic::AtomicUsize::new(0),
        });
        let accept = Task(tokio::spawn(accept_loop(shared.clone())));
        Ok(Listener {
            shared,
            _accept: accept,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    fn register(&self, peer: Ipv4Addr, md5: Option<&[u8]>) -> io::Result<Incoming> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut peers = self.shared.peers.lock().expect("registrations lock");
            if peers.contains_key(&peer) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a session for this peer already uses the listener",
                ));
            }
            peers.insert(peer, (tx, md5.is_some()));
        }
        let incoming = Incoming {
            rx,
            peer,
            md5: md5.is_some(),
            shared: self.shared.clone(),
        };
        if md5.is_some() {
            set_md5(self.shared.socket.as_fd(), peer, md5)?;
        }
        Ok(incoming)
    }
}

async fn accept_loop(shared: Arc<ListenerShared>) {
    loop {
        match shared.socket.accept().await {
            Ok((stream, SocketAddr::V4(from))) => {
                let session = shared
                    .peers
                    .lock()
                    .expect("registrations lock")
                    .get(from.ip())
                    .map(|(tx, _)| tx.clone());
                match session {
                    Some(session) => {
                        let _ = session.send(stream);
                    }
                    None => {
                        use std::sync::atomic::Ordering::Relaxed;
                        // Over the cap the connection is closed, as before the grace.
                        if shared.held.fetch_add(1, Relaxed) < MAX_UNREGISTERED {
                            tokio::spawn(hold_unregistered(
                                Arc::downgrade(&shared),
                                *from.ip(),
                                stream,
                            ));
                        } else {
                            shared.held.fetch_sub(1, Relaxed);
                        }
                    }
                }
            }
            Ok(_) => {}
            // Out of descriptors and the like: try again shortly rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Holds a connection from `peer`, which no session has registered, until one does (it
/// gets the connection) or [`UNREGISTERED_GRACE`] has passed or the listener is gone (the
/// connection is closed). A session with an MD5 password never gets it: the connection was
/// accepted without the key.
async fn hold_unregistered(shared: Weak<ListenerShared>, peer: Ipv4Addr, stream: TcpStream) {
    /// Gives the slot back however the hold ends.
    struct Slot(Weak<ListenerShared>);
    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some(shared) = self.0.upgrade() {
                shared
                    .held
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let _slot = Slot(shared.clone());
    let deadline = Instant::now() + UNREGISTERED_GRACE;
    while Instant::now() < deadline {
        tokio::time::sleep(UNREGISTERED_POLL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let session = shared
            .peers
            .lock()
            .expect("registrations lock")
            .get(&peer)
            .cloned();
        match session {
            Some((tx, false)) => {
                let _ = tx.send(stream);
                return;
            }
            Some((_, true)) => return,
            None => {}
        }
    }
}

/// A session's share of a [`Listener`]; unregistered (and its MD5 key removed) on drop.
#[derive(Debug)]
struct Incoming {
    rx: mpsc::UnboundedReceiver<TcpStream>,
    peer: Ipv4Addr,
    md5: bool,
    shared: Arc<ListenerShared>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.shared
            .peers
            .lock()
            .expect("registrations lock")
            .remove(&self.peer);
        if self.md5 {
            let _ = set_md5(self.shared.socket.as_fd(), self.peer, None);
        }
    }
}

/// What the connection tasks report to the session's task. `generation` tells a
/// connection's reports from those of one closed before.
enum Io {
    Connected {
        generation: u64,
        result: io::Result<TcpStream>,
    },
    Message {
        generation: u64,
        message: Message,
    },
    Malformed {
        generation: u64,
        error: DecodeError,
    },
    Closed {
        generation: u64,
        error: String,
    },
}

struct ConnIo {
    generation: u64,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    writer_task: Option<Task>,
    _reader: Task,
    asn4: bool,
}

struct Driver {
    fsm: Fsm,
    config: SessionConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    incoming: Option<Incoming>,
    events: mpsc::UnboundedSender<SessionEvent>,
    status: watch::Sender<PeerStatus>,
    io_tx: mpsc::UnboundedSender<Io>,
    io_rx: mpsc::UnboundedReceiver<Io>,
    conns: [Option<ConnIo>; 2],
    /// The outgoing attempt in progress.
    connecting: Option<(u64, Task)>,
    /// A connection the peer opened, until the state machine accepts or refuses it.
    pending: Option<TcpStream>,
    timers: BTreeMap<Timer, Instant>,
    next_gen: u64,
    /// The namespace's MD5 drop counters when the session last was (or started) fine.
    md5_baseline: Option<Md5Drops>,
    /// Drops counted since then, while no session establishes.
    md5_suspect: Option<Md5Drops>,
    /// Writers of closed connections sending their last messages.
    closing: Vec<Task>,
}

fn index(conn: Conn) -> usize {
    match conn {
        Conn::Outgoing => 0,
        Conn::Incoming => 1,
    }
}

async fn next_incoming(incoming: &mut Option<Incoming>) -> Option<TcpStream> {
    match incoming {
        Some(i) => i.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self) {
        self.handle(Event::ManualStart);
        let mut md5_check = tokio::time::interval(self.config.fsm.connect_retry);
        loop {
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Announce(routes)) => self.handle(Event::Announce(routes)),
                    Some(Command::Withdraw(prefixes)) => self.handle(Event::Withdraw(prefixes)),
                    Some(Command::Stop(done)) => {
                        self.handle(Event::ManualStop);
                        self.flush().await;
                        let _ = done.send(());
                        return;
                    }
                    // The handle is gone (and this task is being aborted).
                    None => return,
                },
                Some(stream) = next_incoming(&mut self.incoming) => {
                    self.pending = Some(stream);
                    self.handle(Event::TcpConnectionConfirmed);
                    self.pending = None;
                }
                Some(io) = self.io_rx.recv() => self.on_io(io),
                () = sleep_until_opt(deadline) => self.fire_timers(),
                _ = md5_check.tick() => self.check_md5(),
            }
            self.closing.retain(|t| !t.0.is_finished());
        }
    }

    fn handle(&mut self, event: Event) {
        for action in self.fsm.handle(event) {
            self.execute(action);
        }
        let fsm = &self.fsm;
        self.status.send_modify(|s| {
            s.state = fsm.state();
            s.prefixes_sent = fsm.prefixes_sent();
            s.prefixes_received = fsm.prefixes_received();
            s.prefixes_stale = fsm.prefixes_stale();
            s.negotiated = fsm.negotiated().cloned();
        });
    }

    fn set_error(&self, error: String) {
        self.status.send_modify(|s| s.last_error = Some(error));
    }

    fn peer(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.config.peer_address, self.config.peer_port)
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Connect => self.connect(),
            Action::Accept => {
                if let Some(stream) = self.pending.take() {
                    self.install(Conn::Incoming, stream);
                }
            }
            Action::Refuse => self.pending = None,
            Action::Send(conn, message) => {
                let Some(c) = &self.conns[index(conn)] else {
                    return;
                };
                match codec::encode(&message, c.asn4) {
                    Ok(bytes) => {
                        let _ = c.writer.send(bytes);
                    }
                    Err(e) => self.set_error(e.to_string()),
                }
            }
            Action::Close(conn) => {
                if let Some(mut c) = self.conns[index(conn)].take() {
                    // The writer sends what is queued (a NOTIFICATION), then closes.
                    if let Some(writer) = c.writer_task.take() {
                        self.closing.push(writer);
                    }
                } else if conn == Conn::Outgoing {
                    self.connecting = None;
                }
            }
            Action::StartTimer(timer, after) => {
                self.timers.insert(timer, Instant::now() + after);
            }
            Action::StopTimer(timer) => {
                self.timers.remove(&timer);
            }
            Action::Negotiated(conn, n) => {
                if let Some(c) = self.conns[index(conn)].as_mut() {
                    c.asn4 = n.asn4;
                }
            }
            Action::Route(event) => {
                let _ = self.events.send(SessionEvent::Route(event));
            }
            Action::StateChanged(state) => {
                if state == State::Established {
                    self.md5_baseline = Md5Drops::read().ok();
                    self.md5_suspect = None;
                }
                self.status.send_modify(|s| {
                    s.established_at = (state == State::Established).then(StdInstant::now);
                });
                let _ = self.events.send(SessionEvent::State(state));
            }
            Action::Error(e) => self.set_error(e.to_string()),
        }
    }

    fn connect(&mut self) {
        let generation = self.next_gen;
        self.next_gen += 1;
        let peer = self.peer();
        let local = self.config.local_address;
        let md5 = self.config.md5_password.clone();
        let tx = self.io_tx.clone();
        let task = tokio::spawn(async move {
            let result = connect(peer, local, md5.as_deref()).await;
            let _ = tx.send(Io::Connected { generation, result });
        });
        self.connecting = Some((generation, Task(task)));
    }

    fn install(&mut self, conn: Conn, stream: TcpStream) {
        let generation = self.next_gen;
        self.next_gen += 1;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (writer, writes) = mpsc::unbounded_channel();
        let reader = Task(tokio::spawn(read_loop(
            generation,
            read,
            self.io_tx.clone(),
        )));
        let writer_task = Task(tokio::spawn(write_loop(
            generation,
            write,
            writes,
            self.io_tx.clone(),
        )));
        self.conns[index(conn)] = Some(ConnIo {
            generation,
            writer,
            writer_task: Some(writer_task),
            _reader: reader,
            asn4: false,
        });
    }

    fn conn_of(&self, generation: u64) -> Option<Conn> {
        [Conn::Outgoing, Conn::Incoming].into_iter().find(|&c| {
            self.conns[index(c)]
                .as_ref()
                .is_some_and(|io| io.generation == generation)
        })
    }

    fn on_io(&mut self, io: Io) {
        match io {
            Io::Connected { generation, result } => {
                if self.connecting.as_ref().map(|(g, _)| *g) != Some(generation) {
                    return; // abandoned
                }
                self.connecting = None;
                match result {
                    Ok(stream) => {
                        self.install(Conn::Outgoing, stream);
                        self.handle(Event::TcpCrAcked);
                    }
                    Err(e) => {
                        self.set_error(format!("connect to {}: {e}", self.peer()));
                        self.handle(Event::TcpConnectionFails(Conn::Outgoing));
                    }
                }
            }
            Io::Message {
                generation,
                message,
            } => {
                let Some(conn) = self.conn_of(generation) else {
                    return;
                };
                self.handle(match message {
                    Message::Open(open) => Event::BgpOpen(conn, open),
                    Message::Update(update) => Event::UpdateMsg(conn, update),
                    Message::Notification(n) => Event::NotifMsg(conn, n),
                    Message::Keepalive => Event::KeepAliveMsg(conn),
                    Message::RouteRefresh { afi, safi } => Event::RouteRefreshMsg(conn, afi, safi),
                });
            }
            Io::Malformed { generation, error } => {
                if let Some(conn) = self.conn_of(generation) {
                    self.handle(Event::MessageError(conn, error));
                }
            }
            Io::Closed { generation, error } => {
                let Some(conn) = self.conn_of(generation) else {
                    return;
                };
                // A collision's loser closing says nothing about the session.
                if self.conns[index(conn.other())].is_none() {
                    self.set_error(error);
                }
                self.handle(Event::TcpConnectionFails(conn));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for timer in due {
            // Each timer fires once; an action may have stopped or restarted it meanwhile.
            if self.timers.get(&timer).is_none_or(|at| *at > now) {
                continue;
            }
            self.timers.remove(&timer);
            if timer == Timer::ConnectRetry
                && self.connecting.is_some()
                && self.conns.iter().all(Option::is_none)
            {
                self.check_md5();
                let error = match self.md5_suspect {
                    Some(drops) => md5_error(&drops),
                    None => format!(
                        "connect to {}: no answer within {} s",
                        self.peer(),
                        self.config.fsm.connect_retry.as_secs_f32()
                    ),
                };
                self.set_error(error);
            }
            self.handle(Event::TimerExpired(timer));
        }
    }

    /// A connection that never establishes because of TCP MD5 leaves no error on the
    /// socket: the kernel drops the peer's segments (or the peer's kernel drops ours) and
    /// counts them. While no session is established, a rise of those counters is taken as
    /// an MD5 mismatch with this peer.
    fn check_md5(&mut self) {
        if self.fsm.state() == State::Established {
            return;
        }
        let (Some(base), Ok(now)) = (self.md5_baseline, Md5Drops::read()) else {
            return;
        };
        let drops = now.since(&base);
        if drops.total() > 0 {
            self.md5_suspect = Some(drops);
            self.set_error(md5_error(&drops));
        }
    }

    /// Waits (briefly) for the closed connections' last messages to leave.
    async fn flush(&mut self) {
        for mut task in std::mem::take(&mut self.closing) {
            let _ = timeout(FLUSH_TIMEOUT, &mut task.0).await;
        }
    }
}

fn md5_error(drops: &Md5Drops) -> String {
    format!(
        "MD5 mismatch: the kernel dropped {} TCP segments with a missing or wrong MD5 \
         signature (TCPMD5NotFound +{}, TCPMD5Unexpected +{}, TCPMD5Failure +{}); \
         the connection never establishes",
        drops.total(),
        drops.not_found,
        drops.unexpected,
        drops.failure
    )
}

async fn connect(
    peer: SocketAddrV4,
    local: Option<Ipv4Addr>,
    md5: Option<&[u8]>,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if md5.is_some() {
        set_md5(socket.as_fd(), *peer.ip(), md5)?;
    }
    if let Some(local) = local {
        socket.bind(SocketAddr::V4(SocketAddrV4::new(local, 0)))?;
    }
    socket.connect(SocketAddr::V4(peer)).await
}

fn closed_error(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "connection closed by the peer".to_owned()
    } else {
        format!("connection lost: {e}")
    }
}

async fn read_loop(generation: u64, mut read: OwnedReadHalf, tx: mpsc::UnboundedSender<Io>) {
    // Four-octet AS numbers hold once both OPENs have the capability; this speaker's always
    // has it, so the peer's OPEN decides.
    let mut asn4 = false;
    loop {
        let mut header = [0u8; HEADER_LEN];
        if let Err(e) = read.read_exact(&mut header).await {
            let _ = tx.send(Io::Closed {
                generation,
                error: closed_error(&e),
            });
            return;
        }
        let len = match codec::frame_header(&header) {
            Ok((len, _)) => len,
            Err(error) => {
                let _ = tx.send(Io::Malformed { generation, error });
                return;
            }
        };
        let mut frame = header.to_vec();
        frame.resize(len, 0);
        if let Err(e) = read.read_exact(&mut frame[HEADER_LEN..]).await {
            let _ = tx.send(Io::Closed {
                generation,
                error: closed_error(&e),
            });
            return;
        }
        match codec::decode(&frame, asn4) {
            Ok(message) => {
                if let Message::Open(open) = &message {
                    asn4 = open.capabilities.four_octet_as;
                }
                if tx
                    .send(Io::Message {
                        generation,
                        message,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send(Io::Malformed { generation, error });
                return;
            }
        }
    }
}

async fn write_loop(
    generation: u64,
    mut write: OwnedWriteHalf,
    mut messages: mpsc::UnboundedReceiver<Vec<u8>>,
    tx: mpsc::UnboundedSender<Io>,
) {
    while let Some(bytes) = messages.recv().await {
        let error = match timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => closed_error(&e),
            Err(_) => format!(
                "connection lost: a write took over {} s",
                WRITE_TIMEOUT.as_secs()
            ),
        };
        let _ = tx.send(Io::Closed { generation, error });
        return;
    }
    let _ = timeout(FLUSH_TIMEOUT, write.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(router_id: Ipv4Addr, passive: bool) -> fsm::Config {
        let mut f = fsm::Config::new(64512, router_id, 64512);
        f.passive = passive;
        f.connect_retry = Duration::from_secs(5);
        f.idle_hold = Duration::from_secs(5);
        f
    }

    /// A peer that connects before this side's session exists (a node that has just
    /// joined) is established as soon as the session registers, not after its idle hold
    /// time (5 s here) and a second attempt.
    #[test]
    fn a_connection_that_comes_before_its_session_is_handed_to_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (joiner, member) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
            let listener = Listener::bind(SocketAddrV4::new(joiner, 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut c = SessionConfig::new(config(member, false), joiner);
            c.peer_port = port;
            c.local_address = Some(member);
            let (active, _events) = Session::start(c, None).unwrap();
            // The connection arrives and waits for a session.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = StdInstant::now();
            let (passive, _events) = Session::start(
                SessionConfig::new(config(joiner, true), member),
                Some(&listener),
            )
            .unwrap();
            let mut status = passive.watch_status();
            timeout(
                Duration::from_secs(2),
                status.wait_for(|s| s.state == State::Established),
            )
            .await
            .expect("established within 2 s of the session's start")
            .unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(active.status().state, State::Established);
        });
    }

    /// A connection from an address no session ever registers is closed once the grace
    /// has passed.
    #[test]
    fn a_connection_from_no_peer_is_closed_after_the_grace() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = Listener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
            let address = listener.local_addr().unwrap();
            let mut stream = TcpStream::connect(address).await.unwrap();
            let started = StdInstant::now();
            let mut byte = [0u8; 1];
            let read = timeout(UNREGISTERED_GRACE * 2, stream.read(&mut byte))
                .await
                .expect("closed within twice the grace");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            assert!(started.elapsed() >= UNREGISTERED_GRACE - Duration::from_millis(100));
        });
    }
}
