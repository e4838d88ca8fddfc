//! The forwarder against a real upstream: Debian's dnsmasq, serving a test zone
//! authoritatively inside a network namespace the test creates, with the forwarder running
//! in the same namespace.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use twill_dnsd::forward::{ForwardConfig, Forwarder};
use twill_netns::NetNs;

/// dnsmasq's listening address, on a veth inside the test namespace (dnsmasq answers
/// authoritatively, with SOA records, only on a non-loopback address it serves as
/// `--auth-server`).
const DNSMASQ: Ipv4Addr = Ipv4Addr::new(10, 53, 0, 1);
/// A second address in the namespace, for upstreams that never answer and for spoofers.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 53, 0, 2);
const TXT_RECORDS: usize = 40;
const TIMEOUT: Duration = Duration::from_millis(400);

/// A namespace with dnsmasq in it; both removed on drop, even when the test fails.
struct Upstream {
    ns: NetNs,
    name: String,
    dnsmasq: Option<Child>,
    log: PathBuf,
}

impl Upstream {
    /// dnsmasq serving `zone.example` with every TTL (and the SOA's MINIMUM) `ttl` seconds:
    /// `host.zone.example` A 192.0.2.7, `big.zone.example` with 40 TXT records (about 4 KB,
    /// more than fits in 1232 bytes of UDP), every other name NXDOMAIN.
    fn start(ttl: u32) -> Upstream {
        twill_tests::require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dnsfwd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs::create(&name).expect("create the test namespace");
        let log = std::env::temp_dir().join(format!("{name}.dnsmasq.log"));
        let mut upstream = Upstream {
            ns,
            name,
            dnsmasq: None,
            log,
        };
        for args in [
            "link set lo up",
            "link add fwd0 type veth peer name fwd1",
            &format!("addr add {DNSMASQ}/24 dev fwd0"),
            &format!("addr add {OTHER}/24 dev fwd0"),
            "link set fwd0 up",
            "link set fwd1 up",
        ] {
            let status = Command::new("ip")
                .args(["-n", &upstream.name])
                .args(args.split(' '))
                .status()
                .expect("run ip");
            assert!(status.success(), "ip -n {} {args} failed", upstream.name);
        }
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "-k",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--port=53",
            "--log-queries",
        ])
        .arg(format!("--listen-address={DNSMASQ}"))
        .arg(format!("--log-facility={}", upstream.log.display()))
        .arg("--auth-zone=zone.example")
        .arg(format!("--auth-server=ns.zone.example,{DNSMASQ}"))
        .arg(format!("--auth-ttl={ttl}"))
        .arg("--auth-soa=1,hostmaster.zone.example,1200,120,604800")
        .arg("--host-record=host.zone.example,192.0.2.7");
        for i in 0..TXT_RECORDS {
            cmd.arg(format!(
                "--txt-record=big.zone.example,record {i:02} {}",
                "x".repeat(80)
            ));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let child = upstream
            .ns
            .run(move || cmd.spawn())
            .expect("enter the test namespace")
            .expect("start dnsmasq (apt-get install dnsmasq-base)");
        upstream.dnsmasq = Some(child);
        upstream.wait_ready();
        upstream
    }

    /// Waits until dnsmasq answers over UDP.
    fn wait_ready(&self) {
        let ready = self
            .ns
            .run(|| {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("set timeout");
                let probe = query(1, "host.zone.example.", RecordType::A, false)
                    .to_vec()
                    .expect("encodes");
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut buf = [0u8; 4096];
                while Instant::now() < deadline {
                    let _ = socket.send_to(&probe, (DNSMASQ, 53));
                    if socket.recv(&mut buf).is_ok() {
                        return true;
                    }
                }
                false
            })
            .expect("enter the test namespace");
        assert!(ready, "dnsmasq did not answer within 5 s");
    }

    /// Sends dnsmasq `signal`: SIGSTOP makes an upstream that takes queries and never
    /// answers (no ICMP error either), SIGCONT brings it back, answering what it holds.
    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.dnsmasq.as_ref().expect("dnsmasq runs");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signal dnsmasq");
    }

    /// Stops dnsmasq, as an upstream that went away.
    fn stop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `test` with a current-thread tokio runtime on a thread inside the namespace.
    fn run<T: Send>(&self, test: impl AsyncFnOnce() -> T + Send) -> T {
        self.ns
            .run(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a tokio runtime")
                    .block_on(test())
            })
            .expect("run inside the test namespace")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
        let _ = NetNs::delete(&self.name);
        let _ = fs::remove_file(&self.log);
    }
}

/// Collects log output of the forwarder.
struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A query for `name` in the case given (`Name::from_str` would make it lower case).
fn query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("valid name"),
        qtype,
    ));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

fn config(upstreams: Vec<SocketAddr>) -> ForwardConfig {
    ForwardConfig {
        timeout: TIMEOUT,
        ..ForwardConfig::new(upstreams)
    }
}

fn dnsmasq() -> SocketAddr {
    SocketAddr::from((DNSMASQ, 53))
}

fn addresses(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn ttls(reply: &Message) -> Vec<u32> {
    reply.answers.iter().map(|r| r.ttl).collect()
}

#[test]
fn answer_carries_the_clients_id_and_case_and_upstream_saw_mixed_case() {
    let upstream = Upstream::start(30);
    upstream.run(async || {
        // Cache off, so every query goes upstream.
        let forwarder = Arc::new(Forwarder::new(ForwardConfig {
            cache_entries: 0,
            ..config(vec![dnsmasq()])
        }));
        for id in [4242, 4243, 4244] {
            let asked = query(id, "HoSt.ZONE.example.", RecordType::A, true);
            let reply = forwarder.resolve(&asked).await;
            assert_eq!(reply.metadata.id, id);
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(reply.metadata.recursion_available);
            assert!(reply.queries[0].name().eq_case(asked.queries[0].name()));
            assert!(reply.answers[0].name.eq_case(asked.queries[0].name()));
            assert_eq!(addresses(&reply), [Ipv4Addr::new(192, 0, 2, 7)]);
            assert!(
                reply.edns.is_some(),
                "an EDNS query gets an OPT record back"
            );
        }
    });
    // What dnsmasq saw: the same name, not always in the case the client used.
    let log = upstream.log();
    let seen: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("auth[A] ").nth(1)?.split(' ').next())
        .filter(|n| n.eq_ignore_ascii_case("host.zone.example"))
        .collect();
    assert!(seen.len() >= 3, "dnsmasq log: {log}");
    assert!(
        seen.iter()
            .any(|n| *n != "HoSt.ZONE.example" && *n != "host.zone.example"),
        "upstream queries are not 0x20-randomised: {seen:?}"
    );
}

#[test]
fn second_query_within_the_ttl_comes_from_the_cache() {
    let mut upstream = Upstream::start(5);
    let forwarder = Arc::new(Forwarder::new(config(vec![dnsmasq()])));
    let first = upstream.run(async || {
        forwarder
            .resolve(&query(1, "host.zone.example.", RecordType::A, false))
            .await
    });
    assert_eq!(ttls(&first), [5]);
    upstream.stop();
    std::thread::sleep(Duration::from_millis(1_100));
    let second = upstream.run(async || {
        forwarder
            .resolve(&query(2, "HOST.zone.example.", RecordType::A, false))
            .await
    });
    assert_eq!(second.metadata.id, 2);
    assert_eq!(second.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&second), [Ipv4Addr::new(192, 0, 2, 7)]);
    assert!(
        second.answers[0]
            .name
            .eq_case(&Name::from_ascii("HOST.zone.example.").unwrap())
    );
    assert_eq!(ttls(&second), [4], "the TTL counts down in the cache");
    assert!(
        second.edns.is_none(),
        "no OPT record for a query without one"
    );
}

#[test]
fn nxdomain_is_cached_negatively() {
    let mut upstream = Upstream::start(5);
    let forwarder = Arc::new(Forwarder::new(config(vec![dnsmasq()])));
    let first = upstream.run(async || {
        forwarder
            .resolve(&query(1, "nope.zone.example.", RecordType::A, true))
            .await
    });
    assert_eq!(first.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        matches!(
            first.authorities.first().map(|r| &r.data),
            Some(RData::SOA(_))
        ),
        "dnsmasq's NXDOMAIN carries the SOA: {first:?}"
    );
    upstream.stop();
    let second = upstream.run(async || {
        forwarder
            .resolve(&query(2, "nope.zone.example.", RecordType::A, true))
            .await
    });
    assert_eq!(second.metadata.id, 2);
    assert_eq!(second.metadata.response_code, ResponseCode::NXDomain);
    assert!(second.authorities[0].ttl <= 5);
    // Another name was never asked, so with dnsmasq gone it fails.
    let other = upstream.run(async || {
        forwarder
            .resolve(&query(3, "other.zone.example.", RecordType::A, true))
            .await
    });
    assert_eq!(other.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn expired_answer_is_served_stale_when_the_upstream_is_gone() {
    let mut upstream = Upstream::start(1);
    let forwarder = Arc::new(Forwarder::new(config(vec![dnsmasq()])));
    let first = upstream.run(async || {
        forwarder
            .resolve(&query(1, "host.zone.example.", RecordType::A, false))
            .await
    });
    assert_eq!(ttls(&first), [1]);
    upstream.stop();
    std::thread::sleep(Duration::from_millis(1_500));
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let stale = upstream.run(async || {
        let sink = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        forwarder
            .resolve(&query(2, "host.zone.example.", RecordType::A, false))
            .await
    });
    let logged = String::from_utf8_lossy(&logged.lock().unwrap()).into_owned();
    assert!(
        logged.contains("WARN") && logged.contains("stale answer"),
        "a warning says a stale answer was served: {logged:?}"
    );
    assert_eq!(stale.metadata.id, 2);
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&stale), [Ipv4Addr::new(192, 0, 2, 7)]);
    assert_eq!(ttls(&stale), [30], "RFC 8767's stale TTL");
}

#[test]
fn a_stale_answer_goes_out_when_the_upstream_is_slow_and_its_refresh_fills_the_cache() {
    use nix::sys::signal::Signal;
    let upstream = Upstream::start(1);
    // The default timeouts: 2 s per upstream, the stale answer after 400 ms.
    let forwarder = Arc::new(Forwarder::new(ForwardConfig::new(vec![dnsmasq()])));
    upstream.run(async || {
        let ask = |id| query(id, "host.zone.example.", RecordType::A, false);
        assert_eq!(ttls(&forwarder.resolve(&ask(1)).await), [1]);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        upstream.signal(Signal::SIGSTOP);
        let started = Instant::now();
        let stale = forwarder.resolve(&ask(2)).await;
        let waited = started.elapsed();
        assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&stale), [Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(ttls(&stale), [30], "the stale answer, RFC 8767's TTL");
        assert!(
            waited >= Duration::from_millis(390) && waited < Duration::from_millis(600),
            "the stale answer came after {waited:?}, not after the 400 ms client timer"
        );
        // The upstream query goes on after the stale answer is sent: dnsmasq, back before
        // the 2 s timeout, answers it, and that fills the cache. Then dnsmasq goes away,
        // and the fresh answer (TTL 1, not the stale 30) can only come from the cache.
        upstream.signal(Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(200)).await;
        upstream.signal(Signal::SIGKILL);
        let started = Instant::now();
        let fresh = forwarder.resolve(&ask(3)).await;
        assert_eq!(ttls(&fresh), [1], "refreshed in the background: {fresh:?}");
        assert!(started.elapsed() < Duration::from_millis(50));
    });
}

#[test]
fn after_every_upstream_failed_the_stale_answer_goes_out_at_once_until_the_recheck() {
    use nix::sys::signal::Signal;
    let upstream = Upstream::start(1);
    let forwarder = Arc::new(Forwarder::new(ForwardConfig {
        timeout: Duration::from_millis(600),
        stale_client_timeout: Duration::from_millis(200),
        stale_recheck: Duration::from_secs(3),
        ..ForwardConfig::new(vec![dnsmasq()])
    }));
    upstream.run(async || {
        let ask = |id| query(id, "host.zone.example.", RecordType::A, false);
        let timed = async |id| {
            let started = Instant::now();
            let reply = forwarder.resolve(&ask(id)).await;
            (ttls(&reply), started.elapsed())
        };
        assert_eq!(timed(1).await.0, [1]);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        upstream.signal(Signal::SIGSTOP);
        let (stale, waited) = timed(2).await;
        assert_eq!(stale, [30]);
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_millis(400),
            "{waited:?}"
        );
        // The refresh fails when the upstream's 600 ms are up; from then on the stale
        // answer goes out at once, even once the upstream is back, for the 3 s recheck.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (stale, waited) = timed(3).await;
        assert_eq!(stale, [30]);
        assert!(waited < Duration::from_millis(50), "{waited:?}");
        upstream.signal(Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (stale, waited) = timed(4).await;
        assert_eq!(
            stale,
            [30],
            "the upstream is not asked within the recheck time"
        );
        assert!(waited < Duration::from_millis(50), "{waited:?}");
        // Past the recheck time, the upstream is asked again, and answers.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let (fresh, waited) = timed(5).await;
        assert_eq!(fresh, [1]);
        assert!(waited < Duration::from_millis(200), "{waited:?}");
    });
}

#[test]
fn nothing_cached_and_no_upstream_answering_is_servfail_after_the_timeout() {
    let upstream = Upstream::start(5);
    let (reply, elapsed) = upstream.run(async || {
        // A socket that reads queries and never answers.
        let silent = tokio::net::UdpSocket::bind((OTHER, 5353))
            .await
            .expect("bind the silent upstream");
        let forwarder = Arc::new(Forwarder::new(config(vec![
            silent.local_addr().expect("address"),
        ])));
        let started = Instant::now();
        let reply = forwarder
            .resolve(&query(7, "host.zone.example.", RecordType::A, false))
            .await;
        drop(silent);
        (reply, started.elapsed())
    });
    assert_eq!(reply.metadata.id, 7);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
    assert!(
        elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(500),
        "SERVFAIL after {elapsed:?}, timeout {TIMEOUT:?}"
    );
}

#[test]
fn stopped_upstream_and_nothing_cached_is_servfail() {
    let mut upstream = Upstream::start(5);
    upstream.stop();
    let (reply, elapsed) = upstream.run(async || {
        let forwarder = Arc::new(Forwarder::new(config(vec![dnsmasq()])));
        let started = Instant::now();
        let reply = forwarder
            .resolve(&query(8, "host.zone.example.", RecordType::A, false))
            .await;
        (reply, started.elapsed())
    });
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        elapsed <= TIMEOUT + Duration::from_millis(500),
        "took {elapsed:?}"
    );
}

#[test]
fn second_upstream_answers_when_the_first_does_not() {
    let upstream = Upstream::start(5);
    let (reply, elapsed) = upstream.run(async || {
        let silent = tokio::net::UdpSocket::bind((OTHER, 5353))
            .await
            .expect("bind the silent upstream");
        let forwarder = Arc::new(Forwarder::new(config(vec![
            silent.local_addr().expect("address"),
            dnsmasq(),
        ])));
        let started = Instant::now();
        let reply = forwarder
            .resolve(&query(9, "host.zone.example.", RecordType::A, false))
            .await;
        (reply, started.elapsed())
    });
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), [Ipv4Addr::new(192, 0, 2, 7)]);
    assert!(
        elapsed >= TIMEOUT,
        "the first upstream was given its timeout: {elapsed:?}"
    );
}

#[test]
fn big_answer_is_truncated_over_udp_and_fetched_over_tcp() {
    let upstream = Upstream::start(5);
    let reply = upstream.run(async || {
        // The same query straight to dnsmasq over UDP is truncated.
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
            .await
            .expect("bind");
        let direct = query(10, "big.zone.example.", RecordType::TXT, true);
        socket
            .send_to(&direct.to_vec().expect("encodes"), dnsmasq())
            .await
            .expect("send");
        let mut buf = vec![0u8; 65535];
        let len = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .expect("dnsmasq answers")
            .expect("recv");
        let over_udp = Message::from_vec(&buf[..len]).expect("decodes");
        assert!(over_udp.metadata.truncation, "dnsmasq truncates over UDP");
        assert!(over_udp.answers.len() < TXT_RECORDS);

        let forwarder = Arc::new(Forwarder::new(config(vec![dnsmasq()])));
        forwarder
            .resolve(&query(11, "big.zone.example.", RecordType::TXT, true))
            .await
    });
    assert_eq!(reply.metadata.id, 11);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(!reply.metadata.truncation);
    assert_eq!(
        reply.answers.len(),
        TXT_RECORDS,
        "every TXT record, through TCP"
    );
    assert!(reply.to_vec().expect("encodes").len() > 1232);
}

#[test]
fn spoofed_and_mismatched_replies_are_ignored() {
    let upstream = Upstream::start(5);
    let reply = upstream.run(async || {
        // A hand-made upstream that first sends replies that must be ignored: from another
        // address, with another ID, with the question in another case. Then the real one.
        let fake = tokio::net::UdpSocket::bind((DNSMASQ, 5300))
            .await
            .expect("bind the fake upstream");
        let spoofer = tokio::net::UdpSocket::bind((OTHER, 0))
            .await
            .expect("bind the spoofer");
        let fake_addr = fake.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (len, client) = fake.recv_from(&mut buf).await.expect("a query arrives");
            let asked = Message::from_vec(&buf[..len]).expect("the query decodes");
            let answer = |id: u16, name: &Name, last: u8| {
                let mut m = Message::new(id, MessageType::Response, OpCode::Query);
                m.add_query(Query::query(name.clone(), RecordType::A));
                m.add_answer(hickory_proto::rr::Record::from_rdata(
                    name.clone(),
                    60,
                    RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, last))),
                ));
                m.to_vec().expect("encodes")
            };
            let id = asked.metadata.id;
            let name = asked.queries[0].name().clone();
            let flipped = Name::from_ascii(
                name.to_ascii()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_lowercase() {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect::<String>(),
            )
            .expect("valid name");
            spoofer
                .send_to(&answer(id, &name, 66), client)
                .await
                .expect("send");
            fake.send_to(&answer(id.wrapping_add(1), &name, 67), client)
                .await
                .expect("send");
            fake.send_to(&answer(id, &flipped, 68), client)
                .await
                .expect("send");
            fake.send_to(&answer(id, &name, 1), client)
                .await
                .expect("send");
        });
        let forwarder = Arc::new(Forwarder::new(config(vec![fake_addr])));
        let reply = forwarder
            .resolve(&query(12, "www.example.", RecordType::A, false))
            .await;
        server.await.expect("the fake upstream ran");
        reply
    });
    assert_eq!(reply.metadata.id, 12);
    assert_eq!(addresses(&reply), [Ipv4Addr::new(192, 0, 2, 1)]);
}
