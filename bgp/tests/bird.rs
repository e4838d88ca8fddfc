//! twill-bgp against a real BIRD 2, each test in a lab of its own: twill-bgp on node1
//! (172.30.0.11), BIRD on ext1 (172.30.0.101). What is checked is what an operator would
//! look at: `birdc show route all`, `birdc show protocols all`, and the session's status
//! and route events.

mod common;

use std::time::Duration;

use common::*;
use twill_bgp::{
    fsm::{GracefulRestartConfig, RouteEvent, State},
    session::Session,
};
use twill_lab::{Lab, LabSpec};

const SETTLE: Duration = Duration::from_secs(15);
const SOON: Duration = Duration::from_secs(5);

fn learned(prefix_text: &'static str) -> impl FnMut(&RouteEvent) -> bool {
    move |e| matches!(e, RouteEvent::Learned(r) if r.prefix == prefix(prefix_text))
}

fn withdrawn(prefix_text: &'static str) -> impl FnMut(&RouteEvent) -> bool {
    move |e| matches!(e, RouteEvent::Withdrawn(p) if *p == prefix(prefix_text))
}

/// Waits until BIRD has a route for `prefix` (`present`) or none.
async fn bird_route(bird: &Bird, prefix: &str, present: bool, within: Duration) -> String {
    let what = format!(
        "birdc show route {prefix}: {}",
        if present { "present" } else { "gone" }
    );
    eventually(&what, within, || async {
        let route = bird.route(prefix).await;
        if route.is_empty() != present {
            Ok(route)
        } else {
            Err(format!("{route}\n{}", bird.protocol().await))
        }
    })
    .await
}

/// The number after `Import updates:` (received) in `birdc show protocols all twill`.
async fn import_updates(bird: &Bird) -> u64 {
    let out = bird.protocol().await;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Import updates:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no import counters in:\n{out}"))
}

#[test]
fn ebgp_routes_in_both_directions_and_their_withdrawal() {
    let peering = Peering::up(&BirdPeer {
        allow_local_pref: true,
        ..BirdPeer::ebgp()
    });
    let bird = &peering.bird;
    peering.in_node(async move {
        let listener = listener();
        let mut config = twill_config(65002, 65001);
        config.fsm.local_pref = 200; // would show in BIRD if it were sent over eBGP
        let (session, mut events) = Session::start(config, Some(&listener)).unwrap();
        session.announce(prefix(POD_SUBNET), TWILL_IP);
        wait_state(&session, State::Established, SETTLE).await;

        // twill's prefix at BIRD: next hop the node, AS path twill's AS, no LOCAL_PREF of
        // twill's (100 is BIRD's own default for eBGP routes).
        let route = bird_route(bird, POD_SUBNET, true, SOON).await;
        assert!(route.contains("via 172.30.0.11 on eth0"), "{route}");
        assert!(route.contains("BGP.next_hop: 172.30.0.11"), "{route}");
        assert!(route.contains("BGP.as_path: 65002\n"), "{route}");
        assert!(route.contains("BGP.origin: IGP"), "{route}");
        assert!(route.contains("BGP.local_pref: 100"), "{route}");
        assert!(bird.protocol().await.contains("Established"));

        // BIRD's static route at twill.
        let RouteEvent::Learned(r) = wait_route(&mut events, SOON, learned(BIRD_PREFIX)).await
        else {
            unreachable!()
        };
        assert_eq!(r.next_hop, BIRD_IP);
        assert_eq!(r.as_path, vec![65001]);
        assert_eq!(r.local_pref, None);
        wait_route(&mut events, SOON, |e| *e == RouteEvent::EndOfRib).await;

        let status = session.status();
        assert_eq!((status.prefixes_sent, status.prefixes_received), (1, 1));
        assert!(status.uptime().is_some());
        let negotiated = status.negotiated.expect("negotiated");
        assert_eq!((negotiated.hold_time, negotiated.keepalive), (9, 3));
        assert!(negotiated.asn4);
        assert_eq!(status.last_error, None);

        // Route refresh: BIRD asks (`reload in`), twill sends its table again.
        let before = import_updates(bird).await;
        bird.birdc(&["reload", "in", "twill"]).await;
        eventually("BIRD imports twill's table again", SOON, || async {
            let now = import_updates(bird).await;
            if now > before {
                Ok(())
            } else {
                Err(format!("import updates {now}"))
            }
        })
        .await;

        // Withdrawal, both ways.
        session.withdraw(prefix(POD_SUBNET));
        bird_route(bird, POD_SUBNET, false, SOON).await;
        bird.birdc(&["disable", "originated"]).await;
        wait_route(&mut events, SOON, withdrawn(BIRD_PREFIX)).await;
        assert_eq!(session.status().prefixes_received, 0);
        assert_eq!(session.status().prefixes_sent, 0);
        session.shutdown().await;
        let protocol = bird.protocol().await;
        assert!(
            protocol.contains("Received: Administrative shutdown"),
            "{protocol}"
        );
    });
}

#[test]
fn ibgp_sends_local_pref_and_an_empty_as_path() {
    let peering = Peering::up(&BirdPeer::ibgp());
    let bird = &peering.bird;
    peering.in_node(async move {
        let listener = listener();
        let mut config = twill_config(65001, 65001);
        config.fsm.local_pref = 200;
        config.fsm.passive = true; // BIRD connects: the listener's path
        let (session, mut events) = Session::start(config, Some(&listener)).unwrap();
        session.announce(prefix(POD_SUBNET), TWILL_IP);
        wait_state(&session, State::Established, SETTLE).await;

        let route = bird_route(bird, POD_SUBNET, true, SOON).await;
        assert!(route.contains("via 172.30.0.11 on eth0"), "{route}");
        assert!(route.contains("BGP.local_pref: 200"), "{route}");
        assert!(route.contains("BGP.as_path: \n"), "{route}");
        assert!(
            route.contains("[i]"),
            "internal, no AS in the path: {route}"
        );
        let protocol = bird.protocol().await;
        assert!(
            protocol.contains("Session:          internal"),
            "{protocol}"
        );

        let RouteEvent::Learned(r) = wait_route(&mut events, SOON, learned(BIRD_PREFIX)).await
        else {
            unreachable!()
        };
        assert_eq!(r.as_path, Vec::<u32>::new());
        assert_eq!(
            r.local_pref,
            Some(100),
            "BIRD's LOCAL_PREF is kept over iBGP"
        );
        assert_eq!(r.next_hop, BIRD_IP);
        session.shutdown().await;
    });
}

#[test]
fn md5_password_match_establishes() {
    let peering = Peering::up(&BirdPeer {
        password: Some("twill-secret".to_owned()),
        ..BirdPeer::ebgp()
    });
    let bird = &peering.bird;
    peering.in_node(async move {
        let listener = listener();
        let mut config = twill_config(65002, 65001);
        config.md5_password = Some(b"twill-secret".to_vec());
        let (session, _events) = Session::start(config, Some(&listener)).unwrap();
        wait_state(&session, State::Established, SETTLE).await;
        bird_route(bird, POD_SUBNET, false, SOON).await;
        session.announce(prefix(POD_SUBNET), TWILL_IP);
        bird_route(bird, POD_SUBNET, true, SOON).await;
        assert_eq!(session.status().last_error, None);
    });
}

/// A session whose passwords differ never gets past Connect/Active: the kernels drop the
/// SYNs silently, so there is no error on any socket. What is observable: twill's connect
/// attempts time out, the namespace's TCPMD5* counters rise, and the status says
/// "MD5 mismatch"; BIRD stays in Connect/Active with a timeout.
fn md5_mismatch(bird_password: Option<&str>, twill_password: Option<&[u8]>) {
    let peering = Peering::up(&BirdPeer {
        password: bird_password.map(str::to_owned),
        ..BirdPeer::ebgp()
    });
    let bird = &peering.bird;
    let twill_password = twill_password.map(<[u8]>::to_vec);
    peering.in_node(async move {
        let listener = listener();
        let mut config = twill_config(65002, 65001);
        config.md5_password = twill_password;
        let (session, mut events) = Session::start(config, Some(&listener)).unwrap();
        let error = eventually("the status names an MD5 mismatch", SETTLE, || async {
            let status = session.status();
            match &status.last_error {
                Some(e) if e.starts_with("MD5 mismatch") => Ok(e.clone()),
                _ => Err(format!("{status:?}")),
            }
        })
        .await;
        eprintln!("twill: {error}");
        // Never established.
        while let Ok(e) = events.try_recv() {
            assert_ne!(
                e,
                twill_bgp::session::SessionEvent::State(State::Established)
            );
        }
        assert!(matches!(
            session.status().state,
            State::Connect | State::Active
        ));
        let protocol = bird.protocol().await;
        eprintln!("bird: {protocol}");
        assert!(!protocol.contains("Established"), "{protocol}");
    });
}

#[test]
fn md5_password_mismatch_never_establishes_and_says_so() {
    md5_mismatch(Some("bird-secret"), Some(b"twill-secret"));
}

#[test]
fn md5_password_on_one_side_only_never_establishes() {
    md5_mismatch(Some("bird-secret"), None);
}

#[test]
fn hold_timer_expires_when_bird_freezes() {
    let peering = Peering::up(&BirdPeer {
        hold_time: 3,
        ..BirdPeer::ebgp()
    });
    let bird = &peering.bird;
    peering.in_node(async move {
        let listener = listener();
        let mut config = twill_config(65002, 65001);
        config.fsm.hold_time = 3;
        let (session, mut events) = Session::start(config, Some(&listener)).unwrap();
        wait_state(&session, State::Established, SETTLE).await;
        wait_route(&mut events, SOON, learned(BIRD_PREFIX)).await;
        assert_eq!(session.status().negotiated.unwrap().keepalive, 1);

        bird.freeze();
        let frozen = tokio::time::Instant::now();
        wait_route(&mut events, SOON, withdrawn(BIRD_PREFIX)).await;
        let after = frozen.elapsed();
        let status = session.status();
        assert_ne!(status.state, State::Established);
        assert_eq!(status.last_error.as_deref(), Some("hold timer expired"));
        assert!(
            after >= Duration::from_secs(2) && after <= Duration::from_millis(4500),
            "withdrawn {after:?} after BIRD froze, hold time 3 s"
        );

        // Back: BIRD reads the NOTIFICATION, and the session comes up again.
        bird.thaw();
        wait_state(&session, State::Established, SETTLE).await;
        wait_route(&mut events, SOON, learned(BIRD_PREFIX)).await;
    });
}

#[test]
fn bad_peer_as_is_refused_and_reported() {
    let peering = Peering::up(&BirdPeer::ebgp());
    let bird = &peering.bird;
    peering.in_node(async move {
        let listener = listener();
        // BIRD is AS 65001.
        let (session, _events) =
            Session::start(twill_config(65002, 65009), Some(&listener)).unwrap();
        let status = eventually("the status names the bad peer AS", SETTLE, || async {
            let status = session.status();
            match &status.last_error {
                Some(e) if e.starts_with("bad peer AS") => Ok(status),
                _ => Err(format!("{status:?}")),
            }
        })
        .await;
        assert_eq!(
            status.last_error.as_deref(),
            Some("bad peer AS: expected 65009, the peer's OPEN says 65001")
        );
        assert_ne!(status.state, State::Established);
        let protocol = eventually("BIRD got the NOTIFICATION", SOON, || async {
            let p = bird.protocol().await;
            if p.contains("Received: Bad peer AS") {
                Ok(p)
            } else {
                Err(p)
            }
        })
        .await;
        assert!(
            !protocol.contains("BGP state:          Established"),
            "{protocol}"
        );
    });
}

#[test]
fn graceful_restart_bird_keeps_twills_routes_stale_until_end_of_rib() {
    const KEPT: &str = "10.244.1.0/24";
    const DROPPED: &str = "10.244.2.0/24";
    let peering = Peering::up(&BirdPeer::ebgp());
    let bird = &peering.bird;
    peering.in_node(async move {
        let listener = listener();
        let (first, _events) = Session::start(twill_config(65002, 65001), Some(&listener)).unwrap();
        first.announce(prefix(KEPT), TWILL_IP);
        first.announce(prefix(DROPPED), TWILL_IP);
        wait_state(&first, State::Established, SETTLE).await;
        bird_route(bird, KEPT, true, SOON).await;
        bird_route(bird, DROPPED, true, SOON).await;

        // twilld dies: the connection closes without a NOTIFICATION.
        first.abort();
        let protocol = eventually("BIRD sees twill restart", SOON, || async {
            let p = bird.protocol().await;
            if p.contains("Neighbor graceful restart active") {
                Ok(p)
            } else {
                Err(p)
            }
        })
        .await;
        assert!(
            !protocol.contains("BGP state:          Established"),
            "{protocol}"
        );
        assert!(protocol.contains("Restart timer:"), "{protocol}");
        // Both routes stay while twill is away.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !bird.route(KEPT).await.is_empty(),
            "{}",
            bird.protocol().await
        );
        assert!(
            !bird.route(DROPPED).await.is_empty(),
            "{}",
            bird.protocol().await
        );

        // twilld is back, forwarding state kept, and announces one of the two again.
        drop(listener);
        tokio::time::sleep(Duration::from_millis(100)).await; // the old socket closes
        let listener = common::listener();
        let mut config = twill_config(65002, 65001);
        config.fsm.graceful_restart = Some(GracefulRestartConfig {
            restarting: true,
            forwarding_preserved: true,
            ..GracefulRestartConfig::default()
        });
        let (second, _events) = Session::start(config, Some(&listener)).unwrap();
        second.announce(prefix(KEPT), TWILL_IP);
        // KEPT never leaves BIRD's table, DROPPED goes once the End-of-RIB is in.
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            assert!(
                !bird.route(KEPT).await.is_empty(),
                "{KEPT} left BIRD's table during the restart:\n{}",
                bird.protocol().await
            );
            if bird.route(DROPPED).await.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{DROPPED} still at BIRD:\n{}",
                bird.protocol().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(second.status().state, State::Established);
        let protocol = bird.protocol().await;
        assert!(
            !protocol.contains("Neighbor graceful restart active"),
            "{protocol}"
        );
        let route = bird.route(KEPT).await;
        assert!(route.contains("via 172.30.0.11 on eth0"), "{route}");
        second.shutdown().await;
    });
}

#[test]
fn graceful_restart_twill_keeps_birds_routes_stale_while_it_restarts() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 1)).expect("lab up");
    let ext = lab.host("ext1").expect("ext1");
    let peer = BirdPeer::ebgp();
    let mut bird = Some(Bird::start(&ext, &peer));
    let bird = &mut bird;
    let ext = &ext;
    in_namespace(&lab.host("node1").expect("node1"), async move {
        let listener = listener();
        let (session, mut events) =
            Session::start(twill_config(65002, 65001), Some(&listener)).unwrap();
        wait_state(&session, State::Established, SETTLE).await;
        wait_route(&mut events, SOON, learned(BIRD_PREFIX)).await;

        // BIRD crashes: its route is kept, stale, for its restart time.
        bird.take().expect("bird").crash();
        let stale = wait_route(&mut events, SOON, |e| matches!(e, RouteEvent::Stale(_))).await;
        assert_eq!(stale, RouteEvent::Stale(vec![prefix(BIRD_PREFIX)]));
        let status = session.status();
        assert_eq!((status.prefixes_received, status.prefixes_stale), (1, 1));

        // BIRD is back. It did not keep its forwarding state (no F bit), so the stale route
        // goes at once and comes back fresh from the new session.
        *bird = Some(Bird::start(ext, &peer));
        wait_route(&mut events, SETTLE, withdrawn(BIRD_PREFIX)).await;
        wait_route(&mut events, SOON, learned(BIRD_PREFIX)).await;
        let status = session.status();
        assert_eq!(status.state, State::Established);
        assert_eq!((status.prefixes_received, status.prefixes_stale), (1, 0));
    });
}
