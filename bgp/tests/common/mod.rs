//! What the BIRD interop tests share: a lab with one node (twill-bgp's side) and one external
//! host running BIRD 2, BIRD's configuration, `birdc`, and waiting for what a user would
//! check.

#![allow(dead_code)] // each test uses its own part

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};
use twill_bgp::{
    fsm::{self, RouteEvent, State},
    message::Prefix,
    session::{Listener, Session, SessionConfig, SessionEvent},
};
use twill_lab::{Host, Lab, LabSpec};

pub const TWILL_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
pub const BIRD_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 101);
/// The route BIRD originates (a static route it exports).
pub const BIRD_PREFIX: &str = "10.99.0.0/24";
/// The prefix twill announces (a node's pod subnet).
pub const POD_SUBNET: &str = "10.244.1.0/24";

pub fn prefix(s: &str) -> Prefix {
    s.parse().expect("a valid prefix")
}

/// Fails the test, loudly, when not running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces); run it as root, as CI does: sudo scripts/test"
    );
    assert!(
        Command::new("bird").arg("--version").output().is_ok(),
        "bird is missing: apt-get install bird2 (scripts/setup installs it)"
    );
}

/// How BIRD peers with twill.
#[derive(Clone, Debug)]
pub struct BirdPeer {
    pub bird_as: u32,
    pub twill_as: u32,
    pub hold_time: u16,
    pub password: Option<String>,
    pub passive: bool,
    /// Take LOCAL_PREF from an eBGP peer (BIRD's `allow bgp_local_pref`), so that one sent
    /// by twill would show in `birdc show route all`.
    pub allow_local_pref: bool,
}

impl BirdPeer {
    pub fn ebgp() -> Self {
        Self {
            bird_as: 65001,
            twill_as: 65002,
            hold_time: 9,
            password: None,
            passive: false,
            allow_local_pref: false,
        }
    }

    pub fn ibgp() -> Self {
        Self {
            twill_as: 65001,
            ..Self::ebgp()
        }
    }

    /// BIRD's configuration (`LOG` is the log file, filled in by the shared wrapper).
    fn config(&self) -> String {
        let password = self
            .password
            .as_ref()
            .map(|p| format!("  password \"{p}\";\n"))
            .unwrap_or_default();
        let passive = if self.passive { "  passive on;\n" } else { "" };
        let allow_lp = if self.allow_local_pref {
            "  allow bgp_local_pref on;\n"
        } else {
            ""
        };
        format!(
            r#"log "LOG" all;
router id {BIRD_IP};
protocol device {{ scan time 10; }}
# eth0's subnet in BIRD's table resolves iBGP next hops (gateway recursive).
protocol direct {{ ipv4; interface "eth0"; }}
protocol static originated {{
  ipv4;
  route {BIRD_PREFIX} blackhole;
}}
protocol bgp twill {{
  local {BIRD_IP} as {bird_as};
  neighbor {TWILL_IP} as {twill_as};
  hold time {hold};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 2;
  graceful restart on;
{password}{passive}{allow_lp}  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#,
            bird_as = self.bird_as,
            twill_as = self.twill_as,
            hold = self.hold_time,
        )
    }
}

/// BIRD with a [`BirdPeer`]'s configuration; its control commands are async here, so they
/// do not block the runtime twill-bgp's session runs on.
pub struct Bird(twill_tests::bird::Bird);

impl Bird {
    pub fn start(host: &Host, peer: &BirdPeer) -> Bird {
        Bird(twill_tests::bird::Bird::start(host, &peer.config()))
    }

    /// `birdc -s SOCK ARGS...`, without blocking the runtime the session runs on.
    pub async fn birdc(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new("birdc")
            .arg("-s")
            .arg(self.0.socket())
            .args(args)
            .output()
            .await
            .expect("run birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `birdc show route all PREFIX`: empty when BIRD has no route for it.
    pub async fn route(&self, prefix: &str) -> String {
        let out = self.birdc(&["show", "route", "all", prefix]).await;
        if out.contains(prefix) {
            out
        } else {
            String::new()
        }
    }

    /// `birdc show protocols all twill`.
    pub async fn protocol(&self) -> String {
        self.birdc(&["show", "protocols", "all", "twill"]).await
    }

    /// Kills BIRD with SIGKILL, as a crash would.
    pub fn crash(self) {
        self.0.crash();
    }

    pub fn freeze(&self) {
        self.0.freeze();
    }

    pub fn thaw(&self) {
        self.0.thaw();
    }

    pub fn logs(&self) -> String {
        self.0.logs()
    }
}

/// A lab with `node1` (172.30.0.11, twill-bgp) and `ext1` (172.30.0.101, BIRD).
pub struct Peering {
    // Fields drop in order: BIRD stops (and shows its log on failure) before the lab goes.
    pub bird: Bird,
    pub lab: Lab,
}

impl Peering {
    pub fn up(peer: &BirdPeer) -> Peering {
        require_root();
        let lab = Lab::up(&LabSpec::for_test(1, 1)).expect("lab up");
        let ext = lab.host("ext1").expect("ext1");
        let bird = Bird::start(&ext, peer);
        Peering { bird, lab }
    }

    /// Runs `test` inside node1's namespace (see [`in_namespace`]).
    pub fn in_node(&self, test: impl Future<Output = ()> + Send) {
        in_namespace(&self.lab.host("node1").expect("node1"), test);
    }
}

/// Runs `test` on a current-thread runtime on a thread inside `host`'s namespace, where
/// twill-bgp's sockets are opened.
pub fn in_namespace(host: &Host, test: impl Future<Output = ()> + Send) {
    host.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test)
    })
    .expect("entering the host's namespace");
}

/// twill's side of the peering: AS `local_as`, router id 172.30.0.11, BIRD as the peer.
pub fn twill_config(local_as: u32, peer_as: u32) -> SessionConfig {
    let mut fsm = fsm::Config::new(local_as, TWILL_IP, peer_as);
    fsm.connect_retry = Duration::from_secs(2);
    fsm.idle_hold = Duration::from_secs(1);
    let mut config = SessionConfig::new(fsm, BIRD_IP);
    config.local_address = Some(TWILL_IP);
    config
}

/// The listener BIRD connects to.
pub fn listener() -> Listener {
    Listener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 179)).expect("listen on :179")
}

pub type Events = mpsc::UnboundedReceiver<SessionEvent>;

/// Waits for `check` to return `Some`, polling every 100 ms; fails naming `what` and the last
/// observation.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen:\n{last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the session is in `state`.
pub async fn wait_state(session: &Session, state: State, within: Duration) {
    let mut status = session.watch_status();
    let reached = tokio::time::timeout(within, status.wait_for(|s| s.state == state)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "session not {state} within {within:?}: {:?}",
        session.status()
    );
}

/// Collects route events until one matches, failing after `within`.
pub async fn wait_route(
    events: &mut Events,
    within: Duration,
    mut matches: impl FnMut(&RouteEvent) -> bool,
) -> RouteEvent {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(SessionEvent::Route(e))) if matches(&e) => return e,
            Ok(Some(other)) => seen.push(other),
            Ok(None) => panic!("the session ended; events seen: {seen:?}"),
            Err(_) => panic!("no matching route event within {within:?}; events seen: {seen:?}"),
        }
    }
}
