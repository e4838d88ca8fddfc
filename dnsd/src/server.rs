//! The UDP and TCP listeners: bytes in, [`Responder::respond`] for each query, bytes out.
//!
//! Each UDP socket has a thread of its own that takes the queries waiting in batches
//! (`recvmmsg`), answers at once what it can ([`Responder::respond_now`]: the zone's
//! answers and fresh cache entries) and sends those answers with one `sendmmsg`; a query
//! that needs an upstream gets a task of its own on the runtime, so it does not hold up the
//! others. One system call for many datagrams, and no task switch for most queries, keep
//! the cost of a query low.
//!
//! TCP connections carry length-prefixed messages (RFC 1035 4.2.2), several per connection
//! and answered as they are ready, possibly out of order (RFC 7766 6.2.1.1); a connection
//! is closed after an idle spell, and there are at most so many at once. Nothing a client sends makes the server panic: a message `twill-dns` cannot read
//! is answered FORMERR when it has a header, and dropped otherwise.

use std::{
    io::{IoSlice, IoSliceMut},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hickory_proto::op::{Message, MessageType, Metadata, ResponseCode};
use nix::{
    errno::Errno,
    sys::socket::{
        ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, sendto,
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    runtime::Handle,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tracing::{debug, info, warn};
use twill_dns::{Transport, WireOutcome, Zone, encode_within};

use crate::{
    answers::{self, AnswerCache, Kept},
    forward::{Forwarder, error_reply},
    fqdn::{CurrentRules, Learned, Learner, Verdict},
    metrics::{Dropped, Source, Stats},
    records::{self, Answered, Recorder},
    source::CurrentZone,
};

/// Most UDP queries handled at once; more are dropped, and their clients retry. Bounds the
/// memory a flood of queries to slow upstreams can take.
const MAX_UDP_IN_FLIGHT: usize = 4096;
/// Most queries of one TCP connection handled at once; the connection is not read further
/// until one is answered.
const MAX_TCP_PIPELINE: usize = 16;
/// Most datagrams taken by one `recvmmsg`, and answers sent by one `sendmmsg`.
const UDP_BATCH: usize = 64;
/// The receive buffer of one datagram. A query is a question and an OPT record, a few
/// hundred bytes at most; a longer datagram is cut by the kernel, and dropped.
const MAX_UDP_QUERY: usize = 4096;
/// How often a UDP thread with nothing to receive checks whether the server stops.
const UDP_STOP_CHECK: Duration = Duration::from_millis(200);
/// How many times an answer sent from a task is tried while the socket's send buffer is
/// full, a millisecond apart.
const UDP_SEND_TRIES: usize = 20;

/// Who asked a query, where and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    pub client: SocketAddr,
    /// The address the query came to.
    pub server: SocketAddr,
    pub transport: Transport,
}

/// What [`Responder::respond_now`] can do for a query without waiting.
pub enum Now {
    /// Send this answer.
    Send(Vec<u8>),
    /// Send nothing.
    Nothing,
    /// It needs the upstreams: answer it in a task of its own.
    Later,
}

/// Answers one query at a time: from the zone, or through the forwarder.
pub struct Responder {
    zone: CurrentZone,
    forwarder: Arc<Forwarder>,
    /// The zone's encoded answers, by query.
    answers: std::sync::Mutex<AnswerCache>,
    /// FQDNPolicy: the rules in force and where learned addresses go.
    fqdn: Option<(CurrentRules, Arc<Learner>)>,
    /// The forwarder's counters, which count the server's queries too.
    stats: Arc<Stats>,
    /// Where query records go (`[records]`).
    records: Option<Arc<Recorder>>,
}

/// [`Now`], with where the answer came from.
enum Answer {
    Send(Vec<u8>, Source),
    Nothing,
    Later,
}

/// What FQDNPolicy makes of a forwarded query.
enum Gate {
    /// Not selected: answer as usual.
    Open,
    /// Answer this (NXDOMAIN) instead.
    Refuse(Message),
    /// Allowed: learn the answer's addresses for this pod before sending it.
    Learn {
        pod: Ipv4Addr,
        name: String,
        any_port: bool,
        ports: Vec<twill_abi::policy::FqdnPort>,
    },
}

/// Most zone answers kept encoded (all go when the zone changes, or when it is full).
const KEPT_ANSWERS: usize = 50_000;

impl Responder {
    pub fn new(zone: CurrentZone, forwarder: Arc<Forwarder>) -> Responder {
        Responder {
            zone,
            stats: Arc::clone(forwarder.stats()),
            forwarder,
            answers: std::sync::Mutex::new(AnswerCache::new(KEPT_ANSWERS)),
            fqdn: None,
            records: None,
        }
    }

    /// Hands a record of every answer to `recorder`.
    pub fn with_records(mut self, recorder: Arc<Recorder>) -> Responder {
        self.records = Some(recorder);
        self
    }

    /// A record of `answer` for the recorder, if there is one.
    fn record(&self, asked: Asked, source: Source, answer: &[u8], started: Instant) {
        let Some(recorder) = &self.records else {
            return;
        };
        recorder.record(|| Answered {
            unix_ms: records::unix_ms_now(),
            client: asked.client,
            server: asked.server,
            transport: asked.transport,
            source,
            answer: answer.to_vec(),
            latency: started.elapsed(),
            fqdn_policies: match (source, &self.fqdn, asked.client.ip()) {
                (Source::FqdnDenied, Some((rules, _)), IpAddr::V4(pod)) => {
                    rules.borrow().policies(pod)
                }
                _ => Vec::new(),
            },
        });
    }

    /// Enforces FQDNPolicy on forwarded queries: `rules` from the store, addresses written
    /// through `learner`.
    pub fn with_fqdn(mut self, rules: CurrentRules, learner: Arc<Learner>) -> Responder {
        self.fqdn = Some((rules, learner));
        self
    }

    /// What FQDNPolicy says of `query` (a name outside the zone) from `client`.
    fn gate(&self, query: &Message, client: IpAddr) -> Gate {
        let (Some((rules, learner)), IpAddr::V4(pod)) = (&self.fqdn, client) else {
            return Gate::Open;
        };
        let rules = rules.borrow();
        if !rules.selects(pod) {
            return Gate::Open;
        }
        let Some(q) = query.queries.first() else {
            return Gate::Open;
        };
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match rules.verdict(pod, &name) {
            Verdict::NotSelected => Gate::Open,
            Verdict::Denied => {
                learner.denied(pod, &name);
                Gate::Refuse(error_reply(query, ResponseCode::NXDomain))
            }
            Verdict::Allowed { any_port, ports } => Gate::Learn {
                pod,
                name,
                any_port,
                ports,
            },
        }
    }

    /// `reply` to `query` once its addresses are learned (SERVFAIL when they cannot be).
    fn learned(&self, gate: &Gate, query: &Message, reply: Message) -> Message {
        let (
            Gate::Learn {
                pod,
                name,
                any_port,
                ports,
            },
            Some((_, learner)),
        ) = (gate, &self.fqdn)
        else {
            return reply;
        };
        match learner.learn(*pod, name, &reply, *any_port, ports) {
            Learned::Written(_) => reply,
            Learned::Failed(_) => servfail(query),
        }
    }

    /// Whether an FQDNPolicy selects `client` ([`Self::gate`] says [`Gate::Open`] for
    /// every name otherwise).
    fn selected(&self, client: IpAddr) -> bool {
        match (&self.fqdn, client) {
            (Some((rules, _)), IpAddr::V4(pod)) => rules.borrow().selects(pod),
            _ => false,
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, AnswerCache> {
        // The cache holds only copies of answers: a poisoned lock is taken over.
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What can be answered at once, without waiting: from the zone, or a fresh cache
    /// entry. [`Now::Later`] when the query must go upstream ([`Self::respond`]).
    pub fn respond_now(&self, query: &[u8], asked: Asked) -> Now {
        let started = Instant::now();
        match self.answer_now(query, asked.transport, asked.client.ip()) {
            Answer::Send(answer, source) => {
                self.stats.answered(source, &answer);
                self.record(asked, source, &answer, started);
                Now::Send(answer)
            }
            Answer::Nothing => {
                self.stats.dropped(Dropped::Unreadable);
                Now::Nothing
            }
            Answer::Later => Now::Later,
        }
    }

    fn answer_now(&self, query: &[u8], transport: Transport, client: IpAddr) -> Answer {
        let zone = self.zone.borrow().clone();
        let Some(zone) = zone else {
            return Answer::Later;
        };
        let zone_id = Arc::as_ptr(&zone) as usize;
        let key = answers::key(query, u8::from(transport == Transport::Tcp));
        let known = key
            .as_ref()
            .and_then(|key| self.answers().get(zone_id, key, query));
        match known {
            Some(Kept::Answer(answer)) => return Answer::Send(answer, Source::Zone),
            Some(Kept::Forward) => {
                // The fastest way, bytes copied and patched, only for clients no FQDNPolicy
                // selects: for the others the answer's addresses must be learned first.
                if let Some(key) = &key
                    && !self.selected(client)
                    && let Some(answer) = self.forwarder.cached_encoded(key, query)
                {
                    return Answer::Send(answer, Source::Cache);
                }
                return self.forwarded_now(&zone, query, key.as_ref(), transport, client);
            }
            None => {}
        }
        match zone.answer_bytes(query, transport) {
            WireOutcome::Reply(bytes) => {
                if let Some(key) = &key {
                    self.answers().put(zone_id, key, &bytes);
                }
                Answer::Send(bytes, Source::Zone)
            }
            WireOutcome::Drop => Answer::Nothing,
            WireOutcome::Forward => {
                if let Some(key) = &key {
                    self.answers().put_forward(zone_id, key);
                }
                self.forwarded_now(&zone, query, key.as_ref(), transport, client)
            }
        }
    }

    /// [`Self::respond_now`] for a query that `zone` forwards: FQDNPolicy's verdict, then a
    /// fresh cache entry if there is one (kept encoded for the next such query when no
    /// FQDNPolicy selects the client).
    fn forwarded_now(
        &self,
        zone: &Zone,
        query: &[u8],
        key: Option<&answers::Key>,
        transport: Transport,
        client: IpAddr,
    ) -> Answer {
        let Ok(message) = Message::from_vec(query) else {
            return Answer::Later;
        };
        let gate = self.gate(&message, client);
        let limit = match transport {
            Transport::Udp => zone.udp_limit(&message),
            Transport::Tcp => usize::from(u16::MAX),
        };
        match (&gate, key) {
            (Gate::Refuse(reply), _) => {
                return reply.to_vec().map_or(Answer::Nothing, |answer| {
                    Answer::Send(answer, Source::FqdnDenied)
                });
            }
            (Gate::Open, Some(key)) => {
                return self
                    .forwarder
                    .cached_wire(&message, query, key, limit)
                    .map_or(Answer::Later, |answer| Answer::Send(answer, Source::Cache));
            }
            (Gate::Open | Gate::Learn { .. }, _) => {}
        }
        let Some(reply) = self.forwarder.cached(&message) else {
            return Answer::Later;
        };
        let mut reply = self.learned(&gate, &message, reply);
        reply.metadata.id = message.metadata.id;
        match encode_within(&reply, limit) {
            Ok(bytes) => Answer::Send(bytes, Source::Cache),
            Err(_) => Answer::Later,
        }
    }

    /// The response to the message `query` that came over `transport`, encoded within that
    /// transport's size limit; `None` when nothing is to be sent. Before the first zone is
    /// in, every query gets SERVFAIL (the client retries, and caches nothing).
    pub async fn respond(&self, query: &[u8], asked: Asked) -> Option<Vec<u8>> {
        let started = Instant::now();
        match self.answer(query, asked.transport, asked.client.ip()).await {
            Some((answer, source)) => {
                self.stats.answered(source, &answer);
                self.record(asked, source, &answer, started);
                Some(answer)
            }
            None => {
                self.stats.dropped(Dropped::Unreadable);
                None
            }
        }
    }

    async fn answer(
        &self,
        query: &[u8],
        transport: Transport,
        client: IpAddr,
    ) -> Option<(Vec<u8>, Source)> {
        let zone = self.zone.borrow().clone();
        let Some(zone) = zone else {
            let message = Message::from_vec(query).ok()?;
            if message.metadata.message_type == MessageType::Response {
                return None;
            }
            return Some((servfail(&message).to_vec().ok()?, Source::NotReady));
        };
        match zone.answer_bytes(query, transport) {
            WireOutcome::Reply(bytes) => Some((bytes, Source::Zone)),
            WireOutcome::Drop => None,
            WireOutcome::Forward => {
                // answer_bytes parsed it already, so this cannot fail.
                let message = Message::from_vec(query).ok()?;
                let gate = self.gate(&message, client);
                if let Gate::Refuse(reply) = &gate {
                    return Some((reply.to_vec().ok()?, Source::FqdnDenied));
                }
                let reply = self.forwarder.resolve(&message).await;
                let mut reply = self.learned(&gate, &message, reply);
                reply.metadata.id = message.metadata.id;
                let limit = match transport {
                    Transport::Udp => zone.udp_limit(&message),
                    Transport::Tcp => usize::from(u16::MAX),
                };
                match encode_within(&reply, limit) {
                    Ok(bytes) => Some((bytes, Source::Upstream)),
                    Err(e) => {
                        debug!("encoding a forwarded answer: {e}");
                        Some((servfail(&message).to_vec().ok()?, Source::Upstream))
                    }
                }
            }
        }
    }
}

/// SERVFAIL for `query`: its id, flags and question.
fn servfail(query: &Message) -> Message {
    let mut response = Message::new(0, MessageType::Response, query.metadata.op_code);
    response.metadata = Metadata::response_from_request(&query.metadata);
    response.metadata.response_code = ResponseCode::ServFail;
    response.queries = query.queries.clone();
    response
}

/// How TCP connections are kept.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// A connection with no new query for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many connections at once, over all listen addresses.
    pub max_connections: usize,
}

/// The sockets of every listen address, bound.
pub struct Listeners {
    /// Blocking: each is read by a thread of its own.
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

/// Tells the UDP threads to stop when [`Listeners::serve`] ends or is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Listeners {
    /// Binds UDP and TCP on each address; fails, naming the address, if any cannot be bound.
    pub async fn bind(listen: &[SocketAddr]) -> anyhow::Result<Listeners> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for addr in listen {
            udp.push(UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?);
            tcp.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding tcp {addr}"))?,
            );
        }
        Ok(Listeners { udp, tcp })
    }

    /// Serves until an accept or a receive fails for good.
    pub async fn serve(self, responder: Arc<Responder>, limits: TcpLimits) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let udp_permits = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
        let tcp_permits = Arc::new(Semaphore::new(limits.max_connections));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_udp = StopOnDrop(Arc::clone(&stop));
        for socket in self.udp {
            let addr = socket.local_addr().context("a udp socket's address")?;
            info!("serving udp on {addr}");
            let udp = UdpServer {
                local: addr,
                socket: Arc::new(socket),
                responder: Arc::clone(&responder),
                permits: Arc::clone(&udp_permits),
                runtime: Handle::current(),
            };
            let stop = Arc::clone(&stop);
            let (done, ended) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("udp {addr}"))
                .spawn(move || {
                    let _ = done.send(udp.serve(&stop));
                })
                .with_context(|| format!("starting the thread of udp {addr}"))?;
            tasks.spawn(async move {
                ended
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread of udp {addr} panicked")))
            });
        }
        for listener in self.tcp {
            let addr = listener.local_addr().context("a tcp listener's address")?;
            info!("serving tcp on {addr}");
            tasks.spawn(serve_tcp(
                listener,
                Arc::clone(&responder),
                Arc::clone(&tcp_permits),
                limits.idle_timeout,
            ));
        }
        match tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(e).context("a listener task"),
            None => Ok(()),
        }
    }
}

/// One UDP socket, served by a thread of its own ([`UdpServer::serve`]).
struct UdpServer {
    /// The socket's own address.
    local: SocketAddr,
    socket: Arc<UdpSocket>,
    responder: Arc<Responder>,
    /// One per query answered in a task.
    permits: Arc<Semaphore>,
    /// Where queries that need an upstream are answered.
    runtime: Handle,
}

/// A datagram received: which buffer, how long, from where.
type Received = (usize, usize, SockaddrStorage);

impl UdpServer {
    /// Receives, answers and sends in batches until `stop` is set or a receive fails for
    /// good.
    fn serve(&self, stop: &AtomicBool) -> anyhow::Result<()> {
        // The receive waits at most this long, so that `stop` is seen.
        self.socket
            .set_read_timeout(Some(UDP_STOP_CHECK))
            .context("setting the udp receive timeout")?;
        let mut buffers = vec![[0u8; MAX_UDP_QUERY]; UDP_BATCH];
        let mut receiving = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
        let mut sending = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
        let mut received: Vec<Received> = Vec::with_capacity(UDP_BATCH);
        let mut answers: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
        while !stop.load(Ordering::Relaxed) {
            match self.receive(&mut buffers, &mut receiving, &mut received) {
                Ok(()) => {}
                // The receive timeout, or a signal: look at `stop` again.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                // ICMP errors of earlier sends (port unreachable) can surface here; they
                // concern one client, not the socket.
                Err(e) if is_transient(&std::io::Error::from(e)) => {
                    debug!("udp receive: {e}");
                    continue;
                }
                Err(e) => return Err(e).context("receiving udp queries"),
            }
            for &(at, length, from) in &received {
                let Some(peer) = socket_addr(&from) else {
                    continue;
                };
                self.responder.stats.query(Transport::Udp);
                let query = &buffers[at][..length];
                // Zone answers and cache hits are sent from here, without a task; only
                // what goes upstream waits in one.
                let asked = Asked {
                    client: peer,
                    server: self.local,
                    transport: Transport::Udp,
                };
                match self.responder.respond_now(query, asked) {
                    Now::Send(answer) => answers.push((answer, from)),
                    Now::Nothing => {}
                    Now::Later => self.answer_later(query, asked),
                }
            }
            self.send(&mut sending, &mut answers);
        }
        Ok(())
    }

    /// Waits for datagrams and takes those that are there, one per buffer, into
    /// `received`; a datagram too long for its buffer is dropped.
    fn receive(
        &self,
        buffers: &mut [[u8; MAX_UDP_QUERY]],
        headers: &mut MultiHeaders<SockaddrStorage>,
        received: &mut Vec<Received>,
    ) -> Result<(), Errno> {
        received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
            .iter_mut()
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let messages = recvmmsg(
            self.socket.as_raw_fd(),
            headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        for (at, message) in messages.enumerate() {
            match message.address {
                _ if message.flags.contains(MsgFlags::MSG_TRUNC) => {
                    self.responder.stats.query(Transport::Udp);
                    self.responder.stats.dropped(Dropped::TooLong);
                    debug!("udp query of more than {MAX_UDP_QUERY} bytes dropped");
                }
                Some(from) => received.push((at, message.bytes, from)),
                None => {}
            }
        }
        Ok(())
    }

    /// Sends `answers` (taking them out), as many per system call as it takes.
    fn send(
        &self,
        headers: &mut MultiHeaders<SockaddrStorage>,
        answers: &mut Vec<(Vec<u8>, SockaddrStorage)>,
    ) {
        let no_control: [ControlMessage<'_>; 0] = [];
        let mut from = 0;
        while from < answers.len() {
            let left = &answers[from..];
            let slices: Vec<[IoSlice<'_>; 1]> = left
                .iter()
                .map(|(answer, _)| [IoSlice::new(answer)])
                .collect();
            let peers: Vec<Option<SockaddrStorage>> =
                left.iter().map(|(_, to)| Some(*to)).collect();
            match sendmmsg(
                self.socket.as_raw_fd(),
                headers,
                &slices,
                &peers,
                no_control,
                MsgFlags::empty(),
            ) {
                // At least one was sent, or the call failed (its error is for the first).
                Ok(sent) => from += sent.count().max(1),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    debug!("udp answer to {}: {e}", left[0].1);
                    from += 1;
                }
            }
        }
        answers.clear();
    }

    /// Answers `query` from `peer` in a task on the runtime, if fewer than
    /// [`MAX_UDP_IN_FLIGHT`] are; drops it otherwise.
    fn answer_later(&self, query: &[u8], asked: Asked) {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.responder.stats.dropped(Dropped::Overload);
            debug!(
                "udp query from {} dropped: {MAX_UDP_IN_FLIGHT} queries in flight",
                asked.client
            );
            return;
        };
        self.runtime.spawn(answer_in_task(
            Arc::clone(&self.socket),
            Arc::clone(&self.responder),
            query.to_vec(),
            asked,
            permit,
        ));
    }
}

/// [`Responder::respond`] to `query` from `peer`, sent without blocking the runtime's
/// thread: the socket is a blocking one, so each try says not to wait.
async fn answer_in_task(
    socket: Arc<UdpSocket>,
    responder: Arc<Responder>,
    query: Vec<u8>,
    asked: Asked,
    _permit: OwnedSemaphorePermit,
) {
    let Some(answer) = responder.respond(&query, asked).await else {
        return;
    };
    let peer = asked.client;
    let to = SockaddrStorage::from(peer);
    for _ in 0..UDP_SEND_TRIES {
        match sendto(socket.as_raw_fd(), &answer, &to, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => return,
            Err(Errno::EAGAIN | Errno::EINTR) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => {
                debug!("udp answer to {peer}: {e}");
                return;
            }
        }
    }
    debug!("udp answer to {peer} dropped: the socket's send buffer stayed full");
}

/// `address` as a standard socket address, if it is an IP one.
fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable | Interrupted
    )
}

async fn serve_tcp(
    listener: TcpListener,
    responder: Arc<Responder>,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait and go on rather than stop
                // serving.
                warn!("tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!("tcp connection from {peer} closed: too many connections");
            drop(stream);
            continue;
        };
        let responder = Arc::clone(&responder);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tcp_connection(stream, peer, responder, idle_timeout).await {
                debug!("tcp connection from {peer}: {e:#}");
            }
        });
    }
}

/// Reads queries until the client closes, sends something unreadable, or is idle for
/// `idle_timeout`; writes each answer when it is ready.
async fn tcp_connection(
    stream: TcpStream,
    client: SocketAddr,
    responder: Arc<Responder>,
    idle_timeout: Duration,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let asked = Asked {
        client,
        server: stream.local_addr().context("a tcp connection's address")?,
        transport: Transport::Tcp,
    };
    let (mut reader, mut writer) = stream.into_split();
    let (answers, mut to_write) = mpsc::channel::<Vec<u8>>(MAX_TCP_PIPELINE);
    let writing = tokio::spawn(async move {
        while let Some(answer) = to_write.recv().await {
            let Ok(length) = u16::try_from(answer.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&length.to_be_bytes());
            framed.extend_from_slice(&answer);
            writer.write_all(&framed).await?;
        }
        writer.shutdown().await
    });
    let pipeline = Arc::new(Semaphore::new(MAX_TCP_PIPELINE));
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(idle_timeout, reader.read_exact(&mut length)).await {
            Err(_idle) => break,
            // The client closed (cleanly between messages or not): nothing more to read.
            Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
        let length = usize::from(u16::from_be_bytes(length));
        if length == 0 {
            break;
        }
        let mut query = vec![0u8; length];
        match tokio::time::timeout(idle_timeout, reader.read_exact(&mut query)).await {
            Err(_) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
        responder.stats.query(Transport::Tcp);
        let permit = Arc::clone(&pipeline)
            .acquire_owned()
            .await
            .expect("the pipeline semaphore is never closed");
        let responder = Arc::clone(&responder);
        let answers = answers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(response) = responder.respond(&query, asked).await {
                // The writer is gone when the connection failed; nothing to do then.
                let _ = answers.send(response).await;
            }
        });
    }
    // The writer ends when every query's task has sent its answer (each holds a sender).
    drop(answers);
    writing
        .await
        .context("the tcp writer task")?
        .context("writing tcp answers")
}
