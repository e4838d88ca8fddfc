//! The state machine, table by table: (state reached by some events, event) -> (state,
//! actions), each action exact and in order.

use std::{net::Ipv4Addr, time::Duration};

use super::*;
use crate::message::{AsSegment, GracefulRestart, Notification, Origin, PathAttributes};

use Conn::{Incoming as In, Outgoing as Out};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Higher than [`LOCAL_ID`]: the peer's connection wins collisions.
const PEER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const LOCAL_AS: u32 = 65001;
const PEER_AS: u32 = 65002;
const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const PEER_NEXT_HOP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 101);

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn ebgp() -> Config {
    let mut c = Config::new(LOCAL_AS, LOCAL_ID, PEER_AS);
    c.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: false,
        forwarding_preserved: true,
        stale_time: Duration::from_secs(360),
    });
    c
}

fn ibgp() -> Config {
    Config {
        peer_asn: LOCAL_AS,
        local_pref: 200,
        ..ebgp()
    }
}

fn passive() -> Config {
    Config {
        passive: true,
        ..ebgp()
    }
}

fn no_gr() -> Config {
    Config {
        graceful_restart: None,
        ..ebgp()
    }
}

fn restarting() -> Config {
    let mut c = ebgp();
    c.graceful_restart.as_mut().unwrap().restarting = true;
    c
}

fn peer_gr(forwarding: Option<bool>) -> GracefulRestart {
    GracefulRestart {
        restarting: false,
        restart_time: 60,
        ipv4_unicast: forwarding,
    }
}

/// The OPEN a BIRD-like peer sends: AS 65002, hold 90, every capability.
fn peer_open() -> Open {
    Open {
        asn: PEER_AS,
        hold_time: 90,
        router_id: PEER_ID,
        capabilities: Capabilities {
            four_octet_as: true,
            ipv4_unicast: true,
            route_refresh: true,
            graceful_restart: Some(peer_gr(Some(true))),
            ignored: vec![],
        },
    }
}

fn open_with(f: impl FnOnce(&mut Open)) -> Open {
    let mut o = peer_open();
    f(&mut o);
    o
}

fn our_open(config: &Config) -> Message {
    Message::Open(Open {
        asn: config.local_asn,
        hold_time: config.hold_time,
        router_id: config.router_id,
        capabilities: Capabilities {
            four_octet_as: true,
            ipv4_unicast: true,
            route_refresh: true,
            graceful_restart: config.graceful_restart.as_ref().map(|gr| GracefulRestart {
                restarting: gr.restarting,
                restart_time: gr.restart_time,
                ipv4_unicast: Some(gr.forwarding_preserved),
            }),
            ignored: vec![],
        },
    })
}

fn negotiated(open: &Open, hold: u16, keepalive: u16) -> Negotiated {
    Negotiated {
        hold_time: hold,
        keepalive,
        asn4: open.capabilities.four_octet_as,
        route_refresh: open.capabilities.route_refresh,
        peer_asn: open.asn,
        peer_router_id: open.router_id,
        peer_graceful_restart: open.capabilities.graceful_restart,
    }
}

fn start(timer: Timer, secs: u64) -> Action {
    Action::StartTimer(timer, Duration::from_secs(secs))
}

fn stop(timer: Timer) -> Action {
    Action::StopTimer(timer)
}

fn send(conn: Conn, m: Message) -> Action {
    Action::Send(conn, m)
}

fn notify(conn: Conn, code: u8, subcode: u8) -> Action {
    send(
        conn,
        Message::Notification(Notification::new(code, subcode, vec![])),
    )
}

fn state(s: State) -> Action {
    Action::StateChanged(s)
}

/// Forgetting a connection: closed, its timers stopped.
fn closed(conn: Conn) -> [Action; 3] {
    [
        Action::Close(conn),
        stop(Timer::Hold(conn)),
        stop(Timer::Keepalive(conn)),
    ]
}

/// Going to Idle after an error.
fn idle_after(error: SessionError) -> [Action; 4] {
    [
        Action::Error(error),
        stop(Timer::ConnectRetry),
        start(Timer::IdleHold, 5),
        state(State::Idle),
    ]
}

fn eor() -> Message {
    Message::Update(Update::end_of_rib())
}

fn peer_update(prefixes: &[&str], as_path: Vec<u32>, local_pref: Option<u32>) -> Update {
    Update {
        attributes: Some(PathAttributes {
            origin: Origin::Igp,
            as_path: vec![AsSegment::Sequence(as_path)],
            next_hop: PEER_NEXT_HOP,
            med: None,
            local_pref,
        }),
        nlri: prefixes.iter().map(|s| p(s)).collect(),
        ..Update::default()
    }
}

fn learned(prefix: &str, as_path: Vec<u32>, local_pref: Option<u32>) -> Action {
    Action::Route(RouteEvent::Learned(Route {
        prefix: p(prefix),
        next_hop: PEER_NEXT_HOP,
        as_path,
        origin: Origin::Igp,
        local_pref,
        med: None,
    }))
}

fn withdrawn(prefix: &str) -> Action {
    Action::Route(RouteEvent::Withdrawn(p(prefix)))
}

fn our_update(config: &Config, prefixes: &[&str]) -> Message {
    let ibgp = config.is_ibgp();
    Message::Update(Update {
        attributes: Some(PathAttributes {
            origin: Origin::Igp,
            as_path: if ibgp {
                vec![]
            } else {
                vec![AsSegment::Sequence(vec![config.local_asn])]
            },
            next_hop: NEXT_HOP,
            med: None,
            local_pref: ibgp.then_some(config.local_pref),
        }),
        nlri: prefixes.iter().map(|s| p(s)).collect(),
        ..Update::default()
    })
}

fn announce(prefixes: &[&str]) -> Event {
    Event::Announce(
        prefixes
            .iter()
            .map(|s| Announcement {
                prefix: p(s),
                next_hop: NEXT_HOP,
            })
            .collect(),
    )
}

// Event sequences that reach a state.
fn connect() -> Vec<Event> {
    vec![Event::ManualStart]
}
fn active() -> Vec<Event> {
    vec![Event::ManualStart, Event::TcpConnectionFails(Out)]
}
fn open_sent(conn: Conn) -> Vec<Event> {
    match conn {
        Out => vec![Event::ManualStart, Event::TcpCrAcked],
        In => vec![Event::ManualStart, Event::TcpConnectionConfirmed],
    }
}
fn open_confirm(conn: Conn) -> Vec<Event> {
    open_confirm_with(conn, peer_open())
}
fn open_confirm_with(conn: Conn, open: Open) -> Vec<Event> {
    let mut v = open_sent(conn);
    v.push(Event::BgpOpen(conn, open));
    v
}
fn established(conn: Conn) -> Vec<Event> {
    established_with(conn, peer_open())
}
fn established_with(conn: Conn, open: Open) -> Vec<Event> {
    let mut v = open_confirm_with(conn, open);
    v.push(Event::KeepAliveMsg(conn));
    v
}
/// Established with one learned route, 10.99.0.0/24.
fn with_route(mut v: Vec<Event>, conn: Conn) -> Vec<Event> {
    v.push(Event::UpdateMsg(
        conn,
        peer_update(&["10.99.0.0/24"], vec![PEER_AS], None),
    ));
    v
}
/// The peer's session dropped, its route kept stale (restart time 60 s).
fn peer_restarting() -> Vec<Event> {
    let mut v = with_route(established(Out), Out);
    v.push(Event::TcpConnectionFails(Out));
    v
}
/// The restarted peer is back; its stale routes wait for its End-of-RIB.
fn awaiting_eor() -> Vec<Event> {
    let mut v = with_route(established(Out), Out);
    v.push(Event::UpdateMsg(
        Out,
        peer_update(&["10.98.0.0/24"], vec![PEER_AS], None),
    ));
    v.push(Event::TcpConnectionFails(Out));
    v.push(Event::TcpCrAcked);
    v.push(Event::BgpOpen(Out, peer_open()));
    v.push(Event::KeepAliveMsg(Out));
    v
}
fn idle_after_error() -> Vec<Event> {
    let mut v = open_sent(Out);
    v.push(Event::TimerExpired(Timer::Hold(Out)));
    v
}

struct Case {
    name: &'static str,
    config: fn() -> Config,
    before: Vec<Event>,
    event: Event,
    state: State,
    actions: Vec<Action>,
}

fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let mut fsm = Fsm::new((case.config)()).expect("valid test config");
        for e in case.before {
            fsm.handle(e);
        }
        let actions = fsm.handle(case.event);
        if actions != case.actions || fsm.state() != case.state {
            failures.push(format!(
                "{}:\n  state   {:?} (want {:?})\n  actions {:#?}\n  want    {:#?}",
                case.name,
                fsm.state(),
                case.state,
                actions,
                case.actions
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn cat<const N: usize>(parts: Vec<Vec<Action>>, tail: [Action; N]) -> Vec<Action> {
    let mut v: Vec<Action> = parts.into_iter().flatten().collect();
    v.extend(tail);
    v
}

#[test]
fn idle_connect_and_active() {
    check(vec![
        Case {
            name: "Idle + ManualStart: connect, ConnectRetry timer",
            config: ebgp,
            before: vec![],
            event: Event::ManualStart,
            state: State::Connect,
            actions: vec![
                Action::Connect,
                start(Timer::ConnectRetry, 5),
                state(State::Connect),
            ],
        },
        Case {
            name: "Idle + ManualStart, passive: wait in Active",
            config: passive,
            before: vec![],
            event: Event::ManualStart,
            state: State::Active,
            actions: vec![state(State::Active)],
        },
        Case {
            name: "a second ManualStart does nothing",
            config: ebgp,
            before: connect(),
            event: Event::ManualStart,
            state: State::Connect,
            actions: vec![],
        },
        Case {
            name: "Idle refuses the peer's connection",
            config: ebgp,
            before: vec![],
            event: Event::TcpConnectionConfirmed,
            state: State::Idle,
            actions: vec![Action::Refuse],
        },
        Case {
            name: "Connect + TcpCrAcked: OPEN sent, hold timer 240 s",
            config: ebgp,
            before: connect(),
            event: Event::TcpCrAcked,
            state: State::OpenSent,
            actions: vec![
                stop(Timer::ConnectRetry),
                send(Out, our_open(&ebgp())),
                start(Timer::Hold(Out), 240),
                state(State::OpenSent),
            ],
        },
        Case {
            name: "Connect + TcpConnectionFails: Active, ConnectRetry restarted",
            config: ebgp,
            before: connect(),
            event: Event::TcpConnectionFails(Out),
            state: State::Active,
            actions: vec![start(Timer::ConnectRetry, 5), state(State::Active)],
        },
        Case {
            name: "Connect + ConnectRetry expiry: the slow attempt abandoned, a new one",
            config: ebgp,
            before: connect(),
            event: Event::TimerExpired(Timer::ConnectRetry),
            state: State::Connect,
            actions: vec![
                Action::Close(Out),
                Action::Connect,
                start(Timer::ConnectRetry, 5),
            ],
        },
        Case {
            name: "Active + ConnectRetry expiry: connect again",
            config: ebgp,
            before: active(),
            event: Event::TimerExpired(Timer::ConnectRetry),
            state: State::Connect,
            actions: vec![
                Action::Connect,
                start(Timer::ConnectRetry, 5),
                state(State::Connect),
            ],
        },
        Case {
            name: "Connect + TcpConnectionConfirmed: accepted, OPEN sent, own attempt goes on",
            config: ebgp,
            before: connect(),
            event: Event::TcpConnectionConfirmed,
            state: State::OpenSent,
            actions: vec![
                Action::Accept,
                send(In, our_open(&ebgp())),
                start(Timer::Hold(In), 240),
                state(State::OpenSent),
            ],
        },
        Case {
            name: "passive Active + TcpConnectionConfirmed",
            config: passive,
            before: connect(),
            event: Event::TcpConnectionConfirmed,
            state: State::OpenSent,
            actions: vec![
                Action::Accept,
                stop(Timer::ConnectRetry),
                send(In, our_open(&passive())),
                start(Timer::Hold(In), 240),
                state(State::OpenSent),
            ],
        },
        Case {
            name: "TcpCrAcked without an attempt: closed",
            config: passive,
            before: connect(),
            event: Event::TcpCrAcked,
            state: State::Active,
            actions: vec![Action::Close(Out)],
        },
        Case {
            name: "a late failure of an abandoned attempt changes nothing",
            config: ebgp,
            before: open_sent(In),
            event: Event::TimerExpired(Timer::ConnectRetry),
            state: State::OpenSent,
            actions: vec![Action::Close(Out)],
        },
        Case {
            name: "... and its TcpConnectionFails is ignored",
            config: ebgp,
            before: {
                let mut v = open_sent(In);
                v.push(Event::TimerExpired(Timer::ConnectRetry));
                v
            },
            event: Event::TcpConnectionFails(Out),
            state: State::OpenSent,
            actions: vec![],
        },
        Case {
            name: "Idle after an error refuses the peer's connection",
            config: ebgp,
            before: idle_after_error(),
            event: Event::TcpConnectionConfirmed,
            state: State::Idle,
            actions: vec![Action::Refuse],
        },
        Case {
            name: "Idle after an error + IdleHold expiry: start again",
            config: ebgp,
            before: idle_after_error(),
            event: Event::TimerExpired(Timer::IdleHold),
            state: State::Connect,
            actions: vec![
                Action::Connect,
                start(Timer::ConnectRetry, 5),
                state(State::Connect),
            ],
        },
        Case {
            name: "ConnectRetry expiry in Idle after an error is stale",
            config: ebgp,
            before: idle_after_error(),
            event: Event::TimerExpired(Timer::ConnectRetry),
            state: State::Idle,
            actions: vec![],
        },
    ]);
}

#[test]
fn in_open_sent() {
    let n = negotiated(&peer_open(), 9, 3);
    check(vec![
        Case {
            name: "OpenSent + BgpOpen: KEEPALIVE, hold = min(9, 90), keepalive = 9/3",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, peer_open()),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(Out, n.clone()),
                send(Out, Message::Keepalive),
                start(Timer::Hold(Out), 9),
                start(Timer::Keepalive(Out), 3),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "peer proposes 3 s: hold 3, keepalive 1",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, open_with(|o| o.hold_time = 3)),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(Out, negotiated(&open_with(|o| o.hold_time = 3), 3, 1)),
                send(Out, Message::Keepalive),
                start(Timer::Hold(Out), 3),
                start(Timer::Keepalive(Out), 1),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "peer proposes 0: no hold timer, no keepalives",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, open_with(|o| o.hold_time = 0)),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(Out, negotiated(&open_with(|o| o.hold_time = 0), 0, 0)),
                send(Out, Message::Keepalive),
                stop(Timer::Hold(Out)),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "configured keepalive 10 s is capped at a third of the hold time",
            config: || Config {
                keepalive: Some(10),
                ..ebgp()
            },
            before: open_sent(Out),
            event: Event::BgpOpen(Out, peer_open()),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(Out, n.clone()),
                send(Out, Message::Keepalive),
                start(Timer::Hold(Out), 9),
                start(Timer::Keepalive(Out), 3),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "configured keepalive 1 s is kept",
            config: || Config {
                keepalive: Some(1),
                ..ebgp()
            },
            before: open_sent(Out),
            event: Event::BgpOpen(Out, peer_open()),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(Out, negotiated(&peer_open(), 9, 1)),
                send(Out, Message::Keepalive),
                start(Timer::Hold(Out), 9),
                start(Timer::Keepalive(Out), 1),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "unknown capabilities are ignored, not fatal",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(
                Out,
                open_with(|o| {
                    o.capabilities = Capabilities {
                        ignored: vec![73, 80, 239],
                        ..Capabilities::default()
                    };
                    o.asn = PEER_AS;
                }),
            ),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(
                    Out,
                    Negotiated {
                        asn4: false,
                        route_refresh: false,
                        peer_graceful_restart: None,
                        ..n.clone()
                    },
                ),
                send(Out, Message::Keepalive),
                start(Timer::Hold(Out), 9),
                start(Timer::Keepalive(Out), 3),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "bad peer AS: OPEN message error 2/2 with the AS it sent, Idle",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, open_with(|o| o.asn = 65003)),
            state: State::Idle,
            actions: cat(
                vec![
                    vec![send(
                        Out,
                        Message::Notification(Notification::new(2, 2, vec![0xfd, 0xeb])),
                    )],
                    closed(Out).to_vec(),
                ],
                idle_after(SessionError::BadPeerAs {
                    expected: PEER_AS,
                    received: 65003,
                }),
            ),
        },
        Case {
            name: "a four-octet peer AS without the capability arrives as AS_TRANS: bad peer AS",
            config: || Config {
                peer_asn: 4_200_000_000,
                ..ebgp()
            },
            before: open_sent(Out),
            event: Event::BgpOpen(
                Out,
                open_with(|o| {
                    o.asn = 23456;
                    o.capabilities.four_octet_as = false;
                }),
            ),
            state: State::Idle,
            actions: cat(
                vec![
                    vec![send(
                        Out,
                        Message::Notification(Notification::new(2, 2, vec![0x5b, 0xa0])),
                    )],
                    closed(Out).to_vec(),
                ],
                idle_after(SessionError::BadPeerAs {
                    expected: 4_200_000_000,
                    received: 23456,
                }),
            ),
        },
        Case {
            name: "hold time 2: unacceptable hold time 2/6",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, open_with(|o| o.hold_time = 2)),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 2, 6)], closed(Out).to_vec()],
                idle_after(SessionError::UnacceptableHoldTime(2)),
            ),
        },
        Case {
            name: "router id 0.0.0.0: bad BGP identifier 2/3",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, open_with(|o| o.router_id = Ipv4Addr::UNSPECIFIED)),
            state: State::Idle,
            actions: cat(
                vec![
                    vec![send(
                        Out,
                        Message::Notification(Notification::new(2, 3, vec![0, 0, 0, 0])),
                    )],
                    closed(Out).to_vec(),
                ],
                idle_after(SessionError::BadRouterId(Ipv4Addr::UNSPECIFIED)),
            ),
        },
        Case {
            name: "iBGP peer with this speaker's router id: bad BGP identifier",
            config: ibgp,
            before: open_sent(Out),
            event: Event::BgpOpen(
                Out,
                open_with(|o| {
                    o.asn = LOCAL_AS;
                    o.router_id = LOCAL_ID;
                }),
            ),
            state: State::Idle,
            actions: cat(
                vec![
                    vec![send(
                        Out,
                        Message::Notification(Notification::new(2, 3, vec![10, 0, 0, 1])),
                    )],
                    closed(Out).to_vec(),
                ],
                idle_after(SessionError::BadRouterId(LOCAL_ID)),
            ),
        },
        Case {
            name: "eBGP peer with this speaker's router id is allowed (RFC 6286)",
            config: ebgp,
            before: open_sent(Out),
            event: Event::BgpOpen(Out, open_with(|o| o.router_id = LOCAL_ID)),
            state: State::OpenConfirm,
            actions: vec![
                Action::Negotiated(
                    Out,
                    negotiated(&open_with(|o| o.router_id = LOCAL_ID), 9, 3),
                ),
                send(Out, Message::Keepalive),
                start(Timer::Hold(Out), 9),
                start(Timer::Keepalive(Out), 3),
                state(State::OpenConfirm),
            ],
        },
        Case {
            name: "OpenSent + KeepAliveMsg: FSM error 5/1",
            config: ebgp,
            before: open_sent(Out),
            event: Event::KeepAliveMsg(Out),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 5, 1)], closed(Out).to_vec()],
                idle_after(SessionError::UnexpectedMessage {
                    message: "KEEPALIVE",
                    state: State::OpenSent,
                }),
            ),
        },
        Case {
            name: "OpenSent + UpdateMsg: FSM error 5/1",
            config: ebgp,
            before: open_sent(Out),
            event: Event::UpdateMsg(Out, Update::end_of_rib()),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 5, 1)], closed(Out).to_vec()],
                idle_after(SessionError::UnexpectedMessage {
                    message: "UPDATE",
                    state: State::OpenSent,
                }),
            ),
        },
        Case {
            name: "OpenSent + NotifMsg: closed, Idle, the notification reported",
            config: ebgp,
            before: open_sent(Out),
            event: Event::NotifMsg(Out, Notification::cease(cease::CONNECTION_REJECTED)),
            state: State::Idle,
            actions: cat(
                vec![closed(Out).to_vec()],
                idle_after(SessionError::NotificationReceived(Notification::cease(
                    cease::CONNECTION_REJECTED,
                ))),
            ),
        },
        Case {
            name: "OpenSent + TcpConnectionFails: Active, ConnectRetry restarted",
            config: ebgp,
            before: open_sent(Out),
            event: Event::TcpConnectionFails(Out),
            state: State::Active,
            actions: cat(
                vec![closed(Out).to_vec()],
                [start(Timer::ConnectRetry, 5), state(State::Active)],
            ),
        },
        Case {
            name: "OpenSent + TcpConnectionFails, passive: Active without a timer",
            config: passive,
            before: open_sent(In),
            event: Event::TcpConnectionFails(In),
            state: State::Active,
            actions: cat(vec![closed(In).to_vec()], [state(State::Active)]),
        },
        Case {
            name: "OpenSent + hold timer expiry: NOTIFICATION 4/0, Idle",
            config: ebgp,
            before: open_sent(Out),
            event: Event::TimerExpired(Timer::Hold(Out)),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 4, 0)], closed(Out).to_vec()],
                idle_after(SessionError::HoldTimerExpired),
            ),
        },
        Case {
            name: "OpenSent + a message that did not decode: its NOTIFICATION sent",
            config: ebgp,
            before: open_sent(Out),
            event: Event::MessageError(
                Out,
                DecodeError {
                    notification: Notification::new(1, 2, vec![0, 5]),
                    detail: "bad length 5".to_owned(),
                },
            ),
            state: State::Idle,
            actions: cat(
                vec![
                    vec![send(
                        Out,
                        Message::Notification(Notification::new(1, 2, vec![0, 5])),
                    )],
                    closed(Out).to_vec(),
                ],
                idle_after(SessionError::MalformedMessage {
                    notification: Notification::new(1, 2, vec![0, 5]),
                    detail: "bad length 5".to_owned(),
                }),
            ),
        },
        Case {
            name: "messages for a connection that is gone are ignored",
            config: ebgp,
            before: open_sent(Out),
            event: Event::UpdateMsg(In, Update::end_of_rib()),
            state: State::OpenSent,
            actions: vec![],
        },
    ]);
}

#[test]
fn in_open_confirm() {
    check(vec![
        Case {
            name: "OpenConfirm + KeepAliveMsg: Established, End-of-RIB sent at once",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::KeepAliveMsg(Out),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                send(Out, eor()),
                start(Timer::Keepalive(Out), 3),
                state(State::Established),
            ],
        },
        Case {
            name: "OpenConfirm + KeepAliveMsg: routes announced before are sent, then End-of-RIB",
            config: ebgp,
            before: {
                let mut v = vec![announce(&["10.244.1.0/24", "10.244.2.0/24"])];
                v.extend(open_confirm(Out));
                v
            },
            event: Event::KeepAliveMsg(Out),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                send(
                    Out,
                    our_update(&ebgp(), &["10.244.1.0/24", "10.244.2.0/24"]),
                ),
                start(Timer::Keepalive(Out), 3),
                send(Out, eor()),
                start(Timer::Keepalive(Out), 3),
                state(State::Established),
            ],
        },
        Case {
            name: "OpenConfirm + KeepAliveMsg while the own attempt still runs: abandoned",
            config: ebgp,
            before: open_confirm(In),
            event: Event::KeepAliveMsg(In),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(In), 9),
                Action::Close(Out),
                stop(Timer::ConnectRetry),
                send(In, eor()),
                start(Timer::Keepalive(In), 3),
                state(State::Established),
            ],
        },
        Case {
            name: "OpenConfirm + BgpOpen: FSM error 5/2",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::BgpOpen(Out, peer_open()),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 5, 2)], closed(Out).to_vec()],
                idle_after(SessionError::UnexpectedMessage {
                    message: "OPEN",
                    state: State::OpenConfirm,
                }),
            ),
        },
        Case {
            name: "OpenConfirm + UpdateMsg: FSM error 5/2",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::UpdateMsg(Out, Update::end_of_rib()),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 5, 2)], closed(Out).to_vec()],
                idle_after(SessionError::UnexpectedMessage {
                    message: "UPDATE",
                    state: State::OpenConfirm,
                }),
            ),
        },
        Case {
            name: "OpenConfirm + keepalive timer: KEEPALIVE",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::TimerExpired(Timer::Keepalive(Out)),
            state: State::OpenConfirm,
            actions: vec![
                send(Out, Message::Keepalive),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "OpenConfirm + hold timer expiry",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::TimerExpired(Timer::Hold(Out)),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 4, 0)], closed(Out).to_vec()],
                idle_after(SessionError::HoldTimerExpired),
            ),
        },
        Case {
            name: "OpenConfirm + NotifMsg",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::NotifMsg(Out, Notification::new(2, 2, vec![])),
            state: State::Idle,
            actions: cat(
                vec![closed(Out).to_vec()],
                idle_after(SessionError::NotificationReceived(Notification::new(
                    2,
                    2,
                    vec![],
                ))),
            ),
        },
        Case {
            name: "OpenConfirm + TcpConnectionFails: Active",
            config: ebgp,
            before: open_confirm(Out),
            event: Event::TcpConnectionFails(Out),
            state: State::Active,
            actions: cat(
                vec![closed(Out).to_vec()],
                [start(Timer::ConnectRetry, 5), state(State::Active)],
            ),
        },
    ]);
}

#[test]
fn in_established() {
    let route = peer_update(&["10.99.0.0/24"], vec![PEER_AS], None);
    check(vec![
        Case {
            name: "KeepAliveMsg restarts the hold timer",
            config: ebgp,
            before: established(Out),
            event: Event::KeepAliveMsg(Out),
            state: State::Established,
            actions: vec![start(Timer::Hold(Out), 9)],
        },
        Case {
            name: "keepalive timer: KEEPALIVE, timer restarted",
            config: ebgp,
            before: established(Out),
            event: Event::TimerExpired(Timer::Keepalive(Out)),
            state: State::Established,
            actions: vec![
                send(Out, Message::Keepalive),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "UpdateMsg: the route is learned",
            config: ebgp,
            before: established(Out),
            event: Event::UpdateMsg(Out, route.clone()),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                learned("10.99.0.0/24", vec![PEER_AS], None),
            ],
        },
        Case {
            name: "the same route again: nothing new",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::UpdateMsg(Out, route.clone()),
            state: State::Established,
            actions: vec![start(Timer::Hold(Out), 9)],
        },
        Case {
            name: "a new path for a learned prefix replaces it",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::UpdateMsg(
                Out,
                peer_update(&["10.99.0.0/24"], vec![PEER_AS, 65010], None),
            ),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                learned("10.99.0.0/24", vec![PEER_AS, 65010], None),
            ],
        },
        Case {
            name: "LOCAL_PREF from an eBGP peer is ignored",
            config: ebgp,
            before: established(Out),
            event: Event::UpdateMsg(
                Out,
                peer_update(&["10.99.0.0/24"], vec![PEER_AS], Some(500)),
            ),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                learned("10.99.0.0/24", vec![PEER_AS], None),
            ],
        },
        Case {
            name: "LOCAL_PREF from an iBGP peer is kept",
            config: ibgp,
            before: established_with(Out, open_with(|o| o.asn = LOCAL_AS)),
            event: Event::UpdateMsg(Out, peer_update(&["10.99.0.0/24"], vec![], Some(500))),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                learned("10.99.0.0/24", vec![], Some(500)),
            ],
        },
        Case {
            name: "a path through this speaker's AS is a loop: not learned",
            config: ebgp,
            before: established(Out),
            event: Event::UpdateMsg(
                Out,
                peer_update(&["10.99.0.0/24"], vec![PEER_AS, LOCAL_AS], None),
            ),
            state: State::Established,
            actions: vec![start(Timer::Hold(Out), 9)],
        },
        Case {
            name: "withdrawal of a learned route",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::UpdateMsg(
                Out,
                Update {
                    withdrawn: vec![p("10.99.0.0/24"), p("10.1.0.0/16")],
                    ..Update::default()
                },
            ),
            state: State::Established,
            actions: vec![start(Timer::Hold(Out), 9), withdrawn("10.99.0.0/24")],
        },
        Case {
            name: "treat-as-withdraw is reported, the session goes on",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::UpdateMsg(
                Out,
                Update {
                    withdrawn: vec![p("10.99.0.0/24")],
                    treat_as_withdraw: Some("UPDATE without NEXT_HOP".to_owned()),
                    ..Update::default()
                },
            ),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                Action::Error(SessionError::TreatAsWithdraw(
                    "UPDATE without NEXT_HOP".to_owned(),
                )),
                withdrawn("10.99.0.0/24"),
            ],
        },
        Case {
            name: "End-of-RIB from the peer",
            config: ebgp,
            before: established(Out),
            event: Event::UpdateMsg(Out, Update::end_of_rib()),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                Action::Route(RouteEvent::EndOfRib),
            ],
        },
        Case {
            name: "hold timer expiry: NOTIFICATION 4/0, learned routes withdrawn, Idle",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::TimerExpired(Timer::Hold(Out)),
            state: State::Idle,
            actions: cat(
                vec![
                    vec![notify(Out, 4, 0)],
                    closed(Out).to_vec(),
                    vec![withdrawn("10.99.0.0/24")],
                ],
                idle_after(SessionError::HoldTimerExpired),
            ),
        },
        Case {
            name: "NotifMsg: routes withdrawn even when the peer restarts gracefully",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::NotifMsg(Out, Notification::cease(cease::ADMINISTRATIVE_SHUTDOWN)),
            state: State::Idle,
            actions: cat(
                vec![closed(Out).to_vec(), vec![withdrawn("10.99.0.0/24")]],
                idle_after(SessionError::NotificationReceived(Notification::cease(
                    cease::ADMINISTRATIVE_SHUTDOWN,
                ))),
            ),
        },
        Case {
            name: "TcpConnectionFails, peer without graceful restart: withdrawn, reconnect",
            config: ebgp,
            before: with_route(
                established_with(Out, open_with(|o| o.capabilities.graceful_restart = None)),
                Out,
            ),
            event: Event::TcpConnectionFails(Out),
            state: State::Connect,
            actions: cat(
                vec![closed(Out).to_vec(), vec![withdrawn("10.99.0.0/24")]],
                [
                    Action::Connect,
                    start(Timer::ConnectRetry, 5),
                    state(State::Connect),
                ],
            ),
        },
        Case {
            name: "TcpConnectionFails, peer capable but without IPv4 unicast in it: withdrawn",
            config: ebgp,
            before: with_route(
                established_with(
                    Out,
                    open_with(|o| o.capabilities.graceful_restart = Some(peer_gr(None))),
                ),
                Out,
            ),
            event: Event::TcpConnectionFails(Out),
            state: State::Connect,
            actions: cat(
                vec![closed(Out).to_vec(), vec![withdrawn("10.99.0.0/24")]],
                [
                    Action::Connect,
                    start(Timer::ConnectRetry, 5),
                    state(State::Connect),
                ],
            ),
        },
        Case {
            name: "TcpConnectionFails, graceful restart off here: withdrawn",
            config: no_gr,
            before: with_route(established(Out), Out),
            event: Event::TcpConnectionFails(Out),
            state: State::Connect,
            actions: cat(
                vec![closed(Out).to_vec(), vec![withdrawn("10.99.0.0/24")]],
                [
                    Action::Connect,
                    start(Timer::ConnectRetry, 5),
                    state(State::Connect),
                ],
            ),
        },
        Case {
            name: "RouteRefreshMsg for IPv4 unicast: the Adj-RIB-Out again",
            config: ebgp,
            before: {
                let mut v = established(Out);
                v.push(announce(&["10.244.1.0/24"]));
                v
            },
            event: Event::RouteRefreshMsg(Out, 1, 1),
            state: State::Established,
            actions: vec![
                send(Out, our_update(&ebgp(), &["10.244.1.0/24"])),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "RouteRefreshMsg for IPv6: ignored",
            config: ebgp,
            before: established(Out),
            event: Event::RouteRefreshMsg(Out, 2, 1),
            state: State::Established,
            actions: vec![],
        },
        Case {
            name: "BgpOpen in Established: FSM error 5/3",
            config: ebgp,
            before: established(Out),
            event: Event::BgpOpen(Out, peer_open()),
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 5, 3)], closed(Out).to_vec()],
                idle_after(SessionError::UnexpectedMessage {
                    message: "OPEN",
                    state: State::Established,
                }),
            ),
        },
        Case {
            name: "ManualStop: Cease 6/2, learned routes withdrawn, Idle",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::ManualStop,
            state: State::Idle,
            actions: cat(
                vec![vec![notify(Out, 6, 2)], closed(Out).to_vec()],
                [
                    stop(Timer::ConnectRetry),
                    withdrawn("10.99.0.0/24"),
                    state(State::Idle),
                ],
            ),
        },
    ]);
}

#[test]
fn announcements() {
    check(vec![
        Case {
            name: "eBGP: ORIGIN IGP, AS_PATH [local AS], NEXT_HOP, no LOCAL_PREF",
            config: ebgp,
            before: established(Out),
            event: announce(&["10.244.1.0/24"]),
            state: State::Established,
            actions: vec![
                send(
                    Out,
                    Message::Update(Update {
                        attributes: Some(PathAttributes {
                            origin: Origin::Igp,
                            as_path: vec![AsSegment::Sequence(vec![LOCAL_AS])],
                            next_hop: NEXT_HOP,
                            med: None,
                            local_pref: None,
                        }),
                        nlri: vec![p("10.244.1.0/24")],
                        ..Update::default()
                    }),
                ),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "iBGP: empty AS_PATH and LOCAL_PREF",
            config: ibgp,
            before: established_with(Out, open_with(|o| o.asn = LOCAL_AS)),
            event: announce(&["10.244.1.0/24"]),
            state: State::Established,
            actions: vec![
                send(
                    Out,
                    Message::Update(Update {
                        attributes: Some(PathAttributes {
                            origin: Origin::Igp,
                            as_path: vec![],
                            next_hop: NEXT_HOP,
                            med: None,
                            local_pref: Some(200),
                        }),
                        nlri: vec![p("10.244.1.0/24")],
                        ..Update::default()
                    }),
                ),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "announcing a prefix again with the same next hop sends nothing",
            config: ebgp,
            before: {
                let mut v = established(Out);
                v.push(announce(&["10.244.1.0/24"]));
                v
            },
            event: announce(&["10.244.1.0/24"]),
            state: State::Established,
            actions: vec![],
        },
        Case {
            name: "a new next hop is announced",
            config: ebgp,
            before: {
                let mut v = established(Out);
                v.push(announce(&["10.244.1.0/24"]));
                v
            },
            event: Event::Announce(vec![Announcement {
                prefix: p("10.244.1.0/24"),
                next_hop: PEER_NEXT_HOP,
            }]),
            state: State::Established,
            actions: vec![
                send(
                    Out,
                    Message::Update(Update {
                        attributes: Some(PathAttributes {
                            next_hop: PEER_NEXT_HOP,
                            ..Fsm::new(ebgp()).unwrap().attributes(PEER_NEXT_HOP)
                        }),
                        nlri: vec![p("10.244.1.0/24")],
                        ..Update::default()
                    }),
                ),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "withdraw an announced prefix",
            config: ebgp,
            before: {
                let mut v = established(Out);
                v.push(announce(&["10.244.1.0/24"]));
                v
            },
            event: Event::Withdraw(vec![p("10.244.1.0/24"), p("10.244.9.0/24")]),
            state: State::Established,
            actions: vec![
                send(
                    Out,
                    Message::Update(Update {
                        withdrawn: vec![p("10.244.1.0/24")],
                        ..Update::default()
                    }),
                ),
                start(Timer::Keepalive(Out), 3),
            ],
        },
        Case {
            name: "withdraw of a prefix never announced sends nothing",
            config: ebgp,
            before: established(Out),
            event: Event::Withdraw(vec![p("10.244.9.0/24")]),
            state: State::Established,
            actions: vec![],
        },
        Case {
            name: "announcements before Established are only remembered",
            config: ebgp,
            before: open_confirm(Out),
            event: announce(&["10.244.1.0/24"]),
            state: State::OpenConfirm,
            actions: vec![],
        },
    ]);
}

#[test]
fn connection_collisions() {
    // Both connections in OpenSent: ManualStart, TcpCrAcked, TcpConnectionConfirmed.
    let both_open_sent = || {
        let mut v = open_sent(Out);
        v.push(Event::TcpConnectionConfirmed);
        v
    };
    let lower_peer = || open_with(|o| o.router_id = Ipv4Addr::new(9, 9, 9, 9));
    let n = negotiated(&peer_open(), 9, 3);
    check(vec![
        Case {
            name: "OPEN on ours, peer's id higher: ours closed with Cease 6/7",
            config: ebgp,
            before: both_open_sent(),
            event: Event::BgpOpen(Out, peer_open()),
            state: State::OpenSent,
            actions: cat(vec![vec![notify(Out, 6, 7)]], closed(Out)),
        },
        Case {
            name: "OPEN on the peer's, peer's id higher: ours closed, the peer's goes on",
            config: ebgp,
            before: both_open_sent(),
            event: Event::BgpOpen(In, peer_open()),
            state: State::OpenConfirm,
            actions: cat(
                vec![vec![notify(Out, 6, 7)], closed(Out).to_vec()],
                [
                    Action::Negotiated(In, n.clone()),
                    send(In, Message::Keepalive),
                    start(Timer::Hold(In), 9),
                    start(Timer::Keepalive(In), 3),
                    state(State::OpenConfirm),
                ],
            ),
        },
        Case {
            name: "OPEN on the peer's, our id higher: the peer's closed",
            config: ebgp,
            before: both_open_sent(),
            event: Event::BgpOpen(In, lower_peer()),
            state: State::OpenSent,
            actions: cat(vec![vec![notify(In, 6, 7)]], closed(In)),
        },
        Case {
            name: "OPEN on ours, our id higher: the peer's closed, ours goes on",
            config: ebgp,
            before: both_open_sent(),
            event: Event::BgpOpen(Out, lower_peer()),
            state: State::OpenConfirm,
            actions: cat(
                vec![vec![notify(In, 6, 7)], closed(In).to_vec()],
                [
                    Action::Negotiated(Out, negotiated(&lower_peer(), 9, 3)),
                    send(Out, Message::Keepalive),
                    start(Timer::Hold(Out), 9),
                    start(Timer::Keepalive(Out), 3),
                    state(State::OpenConfirm),
                ],
            ),
        },
        Case {
            name: "ours in OpenConfirm, the peer's OPEN wins: ours closed",
            config: ebgp,
            before: {
                let mut v = open_confirm(Out);
                v.push(Event::TcpConnectionConfirmed);
                v
            },
            event: Event::BgpOpen(In, peer_open()),
            state: State::OpenConfirm,
            actions: cat(
                vec![vec![notify(Out, 6, 7)], closed(Out).to_vec()],
                [
                    Action::Negotiated(In, n.clone()),
                    send(In, Message::Keepalive),
                    start(Timer::Hold(In), 9),
                    start(Timer::Keepalive(In), 3),
                ],
            ),
        },
        Case {
            name: "equal ids (eBGP): the higher AS wins, here the peer's",
            config: ebgp,
            before: both_open_sent(),
            event: Event::BgpOpen(Out, open_with(|o| o.router_id = LOCAL_ID)),
            state: State::OpenSent,
            actions: cat(vec![vec![notify(Out, 6, 7)]], closed(Out)),
        },
        Case {
            name: "a second connection while Established (no graceful restart): closed at its OPEN",
            config: ebgp,
            before: {
                let mut v =
                    established_with(Out, open_with(|o| o.capabilities.graceful_restart = None));
                v.push(Event::TcpConnectionConfirmed);
                v
            },
            event: Event::BgpOpen(In, peer_open()),
            state: State::Established,
            actions: cat(vec![vec![notify(In, 6, 7)]], closed(In)),
        },
        Case {
            name: "... it was accepted and sent an OPEN first",
            config: ebgp,
            before: established_with(Out, open_with(|o| o.capabilities.graceful_restart = None)),
            event: Event::TcpConnectionConfirmed,
            state: State::Established,
            actions: vec![
                Action::Accept,
                stop(Timer::ConnectRetry),
                send(In, our_open(&ebgp())),
                start(Timer::Hold(In), 240),
            ],
        },
        Case {
            name: "a second connection while Established on the peer's: refused",
            config: ebgp,
            before: established_with(In, open_with(|o| o.capabilities.graceful_restart = None)),
            event: Event::TcpConnectionConfirmed,
            state: State::Established,
            actions: vec![Action::Refuse],
        },
        Case {
            name: "the peer's collision Cease on ours: closed quietly, the other goes on",
            config: ebgp,
            before: both_open_sent(),
            event: Event::NotifMsg(Out, Notification::cease(cease::CONNECTION_COLLISION)),
            state: State::OpenSent,
            actions: closed(Out).to_vec(),
        },
        Case {
            name: "the peer opens a new connection while its last is in OpenSent: old one closed",
            config: passive,
            before: open_sent(In),
            event: Event::TcpConnectionConfirmed,
            state: State::OpenSent,
            actions: cat(
                vec![closed(In).to_vec()],
                [
                    Action::Accept,
                    stop(Timer::ConnectRetry),
                    send(In, our_open(&passive())),
                    start(Timer::Hold(In), 240),
                ],
            ),
        },
    ]);
}

#[test]
fn graceful_restart_of_the_peer() {
    let stale = |v: &[&str]| Action::Route(RouteEvent::Stale(v.iter().map(|s| p(s)).collect()));
    check(vec![
        Case {
            name: "the session drops: routes kept stale for the peer's restart time, reconnect",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::TcpConnectionFails(Out),
            state: State::Connect,
            actions: vec![
                Action::Close(Out),
                stale(&["10.99.0.0/24"]),
                start(Timer::PeerRestart, 60),
                stop(Timer::Hold(Out)),
                stop(Timer::Keepalive(Out)),
                Action::Connect,
                start(Timer::ConnectRetry, 5),
                state(State::Connect),
            ],
        },
        Case {
            name: "restart time 0: withdrawn at once",
            config: ebgp,
            before: with_route(
                established_with(
                    Out,
                    open_with(|o| {
                        o.capabilities.graceful_restart = Some(GracefulRestart {
                            restart_time: 0,
                            ..peer_gr(Some(true))
                        })
                    }),
                ),
                Out,
            ),
            event: Event::TcpConnectionFails(Out),
            state: State::Connect,
            actions: vec![
                Action::Close(Out),
                stale(&["10.99.0.0/24"]),
                withdrawn("10.99.0.0/24"),
                stop(Timer::Hold(Out)),
                stop(Timer::Keepalive(Out)),
                Action::Connect,
                start(Timer::ConnectRetry, 5),
                state(State::Connect),
            ],
        },
        Case {
            name: "a new connection from the restarted peer ends the old session the same way",
            config: ebgp,
            before: with_route(established(Out), Out),
            event: Event::TcpConnectionConfirmed,
            state: State::OpenSent,
            actions: vec![
                stale(&["10.99.0.0/24"]),
                start(Timer::PeerRestart, 60),
                Action::Close(Out),
                stop(Timer::Hold(Out)),
                stop(Timer::Keepalive(Out)),
                Action::Accept,
                stop(Timer::ConnectRetry),
                send(In, our_open(&ebgp())),
                start(Timer::Hold(In), 240),
                state(State::OpenSent),
            ],
        },
        Case {
            name: "the restart time runs out: stale routes withdrawn",
            config: ebgp,
            before: peer_restarting(),
            event: Event::TimerExpired(Timer::PeerRestart),
            state: State::Connect,
            actions: vec![withdrawn("10.99.0.0/24")],
        },
        Case {
            name: "back with forwarding preserved: stale routes wait for End-of-RIB",
            config: ebgp,
            before: {
                let mut v = peer_restarting();
                v.extend([Event::TcpCrAcked, Event::BgpOpen(Out, peer_open())]);
                v
            },
            event: Event::KeepAliveMsg(Out),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                stop(Timer::PeerRestart),
                start(Timer::StaleRoutes, 360),
                send(Out, eor()),
                start(Timer::Keepalive(Out), 3),
                state(State::Established),
            ],
        },
        Case {
            name: "back without forwarding preserved: stale routes withdrawn",
            config: ebgp,
            before: {
                let mut v = peer_restarting();
                v.extend([
                    Event::TcpCrAcked,
                    Event::BgpOpen(
                        Out,
                        open_with(|o| o.capabilities.graceful_restart = Some(peer_gr(Some(false)))),
                    ),
                ]);
                v
            },
            event: Event::KeepAliveMsg(Out),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                stop(Timer::PeerRestart),
                withdrawn("10.99.0.0/24"),
                send(Out, eor()),
                start(Timer::Keepalive(Out), 3),
                state(State::Established),
            ],
        },
        Case {
            name: "a stale route sent again is fresh (Learned), even with the same path",
            config: ebgp,
            before: awaiting_eor(),
            event: Event::UpdateMsg(Out, peer_update(&["10.99.0.0/24"], vec![PEER_AS], None)),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                learned("10.99.0.0/24", vec![PEER_AS], None),
            ],
        },
        Case {
            name: "End-of-RIB: the routes not sent again are withdrawn",
            config: ebgp,
            before: {
                let mut v = awaiting_eor();
                v.push(Event::UpdateMsg(
                    Out,
                    peer_update(&["10.99.0.0/24"], vec![PEER_AS], None),
                ));
                v
            },
            event: Event::UpdateMsg(Out, Update::end_of_rib()),
            state: State::Established,
            actions: vec![
                start(Timer::Hold(Out), 9),
                stop(Timer::StaleRoutes),
                withdrawn("10.98.0.0/24"),
                Action::Route(RouteEvent::EndOfRib),
            ],
        },
        Case {
            name: "no End-of-RIB within the stale time: stale routes withdrawn",
            config: ebgp,
            before: awaiting_eor(),
            event: Event::TimerExpired(Timer::StaleRoutes),
            state: State::Established,
            actions: vec![withdrawn("10.98.0.0/24"), withdrawn("10.99.0.0/24")],
        },
        Case {
            name: "the session drops again while waiting for End-of-RIB: stale again",
            config: ebgp,
            before: awaiting_eor(),
            event: Event::TcpConnectionFails(Out),
            state: State::Connect,
            actions: vec![
                Action::Close(Out),
                stale(&["10.98.0.0/24", "10.99.0.0/24"]),
                stop(Timer::StaleRoutes),
                start(Timer::PeerRestart, 60),
                stop(Timer::Hold(Out)),
                stop(Timer::Keepalive(Out)),
                Action::Connect,
                start(Timer::ConnectRetry, 5),
                state(State::Connect),
            ],
        },
        Case {
            name: "ManualStop while the peer restarts: stale routes withdrawn",
            config: ebgp,
            before: peer_restarting(),
            event: Event::ManualStop,
            state: State::Idle,
            actions: vec![
                Action::Close(Out),
                stop(Timer::ConnectRetry),
                stop(Timer::PeerRestart),
                withdrawn("10.99.0.0/24"),
                state(State::Idle),
            ],
        },
    ]);
}

#[test]
fn graceful_restart_of_this_speaker() {
    let config = restarting();
    let mut fsm = Fsm::new(config.clone()).unwrap();
    let actions = run(&mut fsm, open_sent(Out));
    assert!(
        actions.contains(&send(Out, our_open(&config))),
        "the first OPEN after a restart has the R bit: {actions:#?}"
    );
    run(
        &mut fsm,
        vec![Event::BgpOpen(Out, peer_open()), Event::KeepAliveMsg(Out)],
    );
    assert_eq!(fsm.state(), State::Established);
    let actions = run(
        &mut fsm,
        vec![Event::TcpConnectionFails(Out), Event::TcpCrAcked],
    );
    let mut after = config.clone();
    after.graceful_restart.as_mut().unwrap().restarting = false;
    assert!(
        actions.contains(&send(Out, our_open(&after))),
        "once established, later OPENs clear it: {actions:#?}"
    );
}

fn run(fsm: &mut Fsm, events: Vec<Event>) -> Vec<Action> {
    events.into_iter().flat_map(|e| fsm.handle(e)).collect()
}

#[test]
fn large_tables_are_split_into_messages_that_fit() {
    let mut fsm = Fsm::new(ebgp()).unwrap();
    let routes: Vec<Announcement> = (0..3000u32)
        .map(|i| Announcement {
            prefix: Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap(),
            next_hop: NEXT_HOP,
        })
        .collect();
    fsm.handle(Event::Announce(routes));
    let actions = run(&mut fsm, established(Out));
    let updates: Vec<&Update> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(_, Message::Update(u)) if !u.is_end_of_rib() => Some(u),
            _ => None,
        })
        .collect();
    assert!(updates.len() > 2, "{} updates", updates.len());
    assert_eq!(updates.iter().map(|u| u.nlri.len()).sum::<usize>(), 3000);
    for u in &updates {
        let bytes = codec::encode(&Message::Update((*u).clone()), true).unwrap();
        assert!(
            bytes.len() <= codec::MAX_MESSAGE_LEN,
            "{} bytes",
            bytes.len()
        );
    }
    assert_eq!(fsm.prefixes_sent(), 3000);
    let withdrawals = fsm.handle(Event::Withdraw(
        updates.iter().flat_map(|u| u.nlri.clone()).collect(),
    ));
    for a in &withdrawals {
        if let Action::Send(_, m) = a {
            assert!(codec::encode(m, true).unwrap().len() <= codec::MAX_MESSAGE_LEN);
        }
    }
    assert_eq!(fsm.prefixes_sent(), 0);
}

#[test]
fn counters_follow_the_tables() {
    let mut fsm = Fsm::new(ebgp()).unwrap();
    fsm.handle(announce(&["10.244.1.0/24", "10.244.2.0/24"]));
    assert_eq!(fsm.prefixes_sent(), 0, "nothing is sent before Established");
    run(&mut fsm, with_route(established(Out), Out));
    assert_eq!(
        (
            fsm.prefixes_sent(),
            fsm.prefixes_received(),
            fsm.prefixes_stale()
        ),
        (2, 1, 0)
    );
    assert_eq!(fsm.negotiated().unwrap().hold_time, 9);
    fsm.handle(Event::TcpConnectionFails(Out));
    assert_eq!(
        (
            fsm.prefixes_sent(),
            fsm.prefixes_received(),
            fsm.prefixes_stale()
        ),
        (0, 1, 1)
    );
}

#[test]
fn invalid_configurations_name_the_field() {
    let cases: Vec<(Config, &str)> = vec![
        (
            Config {
                hold_time: 2,
                ..ebgp()
            },
            "hold_time",
        ),
        (
            Config {
                keepalive: Some(0),
                ..ebgp()
            },
            "keepalive",
        ),
        (
            Config {
                local_asn: 0,
                ..ebgp()
            },
            "local_asn",
        ),
        (
            Config {
                router_id: Ipv4Addr::UNSPECIFIED,
                ..ebgp()
            },
            "router_id",
        ),
        (
            Config {
                connect_retry: Duration::ZERO,
                ..ebgp()
            },
            "connect_retry",
        ),
        (
            Config {
                graceful_restart: Some(GracefulRestartConfig {
                    restart_time: 5000,
                    ..GracefulRestartConfig::default()
                }),
                ..ebgp()
            },
            "graceful_restart.restart_time",
        ),
    ];
    for (config, field) in cases {
        let err = Fsm::new(config).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
    assert!(
        Fsm::new(Config {
            hold_time: 0,
            keepalive: Some(0),
            ..ebgp()
        })
        .is_ok()
    );
}

#[test]
fn errors_read_as_an_operator_expects() {
    assert_eq!(
        SessionError::HoldTimerExpired.to_string(),
        "hold timer expired"
    );
    assert_eq!(
        SessionError::BadPeerAs {
            expected: 65002,
            received: 65003
        }
        .to_string(),
        "bad peer AS: expected 65002, the peer's OPEN says 65003"
    );
    assert_eq!(
        SessionError::NotificationReceived(Notification::hold_timer_expired()).to_string(),
        "NOTIFICATION received: hold timer expired"
    );
}
