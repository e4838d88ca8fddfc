//! Configured BGP peers (`BGPPeer`, bgp.twill.io/v1alpha1) end to end: real daemons on three
//! nodes in the BGP-routed mode and a real BIRD 2 on the lab's external host ext1
//! (172.30.0.101) on the underlay.
//!
//! - Route reflector: `bgp.mesh = false`, BIRD reflects between its clients; one BGPPeer
//!   applied with `netctl apply` makes every node peer with it; every node routes the
//!   others' pod subnets via their underlay addresses; pods reach each other across nodes;
//!   `birdc show route` lists every node's subnet.
//! - Top-of-rack router: the mesh and an eBGP BGPPeer; BIRD learns every pod subnet with
//!   the node as next hop and AS path 64512; the router's own route is refused and
//!   reported, never in the kernel; deleting the BGPPeer closes the session without a
//!   restart of `twilld`.
//! - Service CIDR announcements (`bgp.announce_service_cidr`): BIRD as a ToR learns the
//!   Service CIDR from every node, the mesh does not; what BIRD sends inside the Service
//!   CIDR is refused; turned off on a node, its announcement leaves BIRD.
//! - A bad BGPPeer is refused by `netctl apply`, naming the field, and nothing is stored.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{bird::Bird, daemon::Twilld, require_root, scripts::ECHO};

mod common;
use common::{Pod, add_pod, sibling, twill_routes, until};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const BIRD_IP: &str = "172.30.0.101";
/// The route BIRD originates as a top-of-rack router: not a node's subnet, and outside the
/// Service CIDR.
const TOR_OWN: &str = "192.0.2.0/24";
/// Hold 3 s so sessions come and go quickly; the cluster's AS is the default 64512.
const CONFIG: &str = "[network]\noverlay = \"bgp\"\nresync_seconds = 1\n\
[bgp]\nhold_seconds = 3\nkeepalive_seconds = 1\nrestart_seconds = 15\n";

/// What these tests ask BIRD (`twill_tests::bird::Bird`, BIRD 2 in a lab host).
trait Ask {
    /// `birdc show route all`.
    fn routes(&self) -> String;
    /// `birdc show protocols all NAME`.
    fn protocol(&self, name: &str) -> String;
}

impl Ask for Bird {
    fn routes(&self) -> String {
        self.birdc(&["show", "route", "all"])
    }

    fn protocol(&self, name: &str) -> String {
        self.birdc(&["show", "protocols", "all", name])
    }
}

/// BIRD as a route reflector for `nodes` (all in AS 64512, `rr client`), passive: the
/// nodes connect. The same text is in docs/bgp.md.
fn route_reflector_config(nodes: &[Ipv4Addr]) -> String {
    let mut config = format!(
        r#"log "LOG" all;
router id {BIRD_IP};
protocol device {{ scan time 10; }}
# eth0's subnet in BIRD's table resolves the nodes' next hops (iBGP: gateway recursive).
protocol direct {{ ipv4; interface "eth0"; }}
template bgp twill_node {{
  local {BIRD_IP} as 64512;
  rr client;
  passive on;
  hold time 9;
  graceful restart on;
  ipv4 {{ import all; export where source = RTS_BGP; }};
}}
"#
    );
    for (i, ip) in nodes.iter().enumerate() {
        config.push_str(&format!(
            "protocol bgp node{} from twill_node {{ neighbor {ip} as 64512; }}\n",
            i + 1
        ));
    }
    config
}

/// BIRD as a top-of-rack router in AS 65001 with an eBGP session to each of `nodes`
/// (connecting; the BGPPeer is passive), originating a route of its own.
fn tor_config(nodes: &[Ipv4Addr]) -> String {
    tor_config_with(nodes, TOR_OWN)
}

/// [`tor_config`] originating `own` instead.
fn tor_config_with(nodes: &[Ipv4Addr], own: &str) -> String {
    let mut config = format!(
        r#"log "LOG" all;
router id {BIRD_IP};
protocol device {{ scan time 10; }}
protocol direct {{ ipv4; interface "eth0"; }}
protocol static own {{ ipv4; route {own} blackhole; }}
template bgp twill_node {{
  local {BIRD_IP} as 65001;
  hold time 9;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 2;
  graceful restart on;
  ipv4 {{ import all; export where source ~ [RTS_STATIC, RTS_BGP]; }};
}}
"#
    );
    for (i, ip) in nodes.iter().enumerate() {
        config.push_str(&format!(
            "protocol bgp node{} from twill_node {{ neighbor {ip} as 64512; }}\n",
            i + 1
        ));
    }
    config
}

/// Every node's kernel holds the other nodes' subnets via their underlay addresses, and
/// nothing else of twill's.
fn routed_everywhere(nodes: &[Host], subnets: &[Ipv4Network]) -> bool {
    nodes.iter().enumerate().all(|(i, n)| {
        let want: BTreeMap<String, String> = (0..nodes.len())
            .filter(|j| *j != i)
            .map(|j| {
                (
                    subnets[j].to_string(),
                    format!("via {} dev eth0", nodes[j].plan.underlay_ip),
                )
            })
            .collect();
        twill_routes(n) == want
    })
}

/// The states of the daemon's sessions: peer name -> state.
fn sessions(d: &Twilld) -> BTreeMap<String, String> {
    d.status()
        .bgp
        .map(|b| b.peers.into_iter().map(|p| (p.node, p.state)).collect())
        .unwrap_or_default()
}

fn established(d: &Twilld, peers: &[&str]) -> bool {
    let s = sessions(d);
    s.len() == peers.len()
        && peers
            .iter()
            .all(|p| s.get(*p).is_some_and(|state| state == "Established"))
}

/// `netctl ARGS --lab LAB` with `stdin`: (success, stdout and stderr).
fn netctl_status(lab: &Lab, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(sibling("netctl"))
        .args(args)
        .args(["--lab", lab.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn netctl(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

/// The keys etcd holds under the BGPPeers' prefix.
fn stored_peers(lab: &Lab) -> Vec<String> {
    let prefix = twill_api::cluster::objects_prefix("bgppeers");
    twill_tests::bench::etcd(lab, async move |mut c: etcd_client::Client| {
        let resp = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_owned())
            .collect()
    })
}

const RR_PEER: &str = "apiVersion: bgp.twill.io/v1alpha1
kind: BGPPeer
metadata:
  name: rr
spec:
  peerIP: 172.30.0.101
  asNumber: 64512
";

#[test]
fn nodes_without_a_mesh_route_pods_through_a_bird_route_reflector() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(3, 1)).expect("lab up");
    let nodes = lab.nodes();
    let node_ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.plan.underlay_ip).collect();
    let bird = Bird::start(
        &lab.host("ext1").unwrap(),
        &route_reflector_config(&node_ips),
    );
    let config = format!("{CONFIG}mesh = false\n");
    let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, &config);
    // No mesh: without a BGPPeer the nodes have no session and route nothing.
    thread::sleep(Duration::from_secs(1));
    for (n, d) in nodes.iter().zip(&daemons) {
        assert!(sessions(d).is_empty(), "{}: {:?}", n.name(), sessions(d));
        assert!(twill_routes(n).is_empty(), "{}", n.name());
    }

    let applied_at = Instant::now();
    let out = netctl(&lab, &["apply", "-f", "-"], RR_PEER);
    assert!(out.contains("bgppeer/rr created"), "{out}");
    until(
        "every node's session with the route reflector established",
        Duration::from_secs(15),
        || daemons.iter().all(|d| established(d, &["bgppeer/rr"])),
    );
    let up = applied_at.elapsed();
    let subnets: Vec<Ipv4Network> = daemons
        .iter()
        .map(|d| d.status().subnet.expect("a leased subnet"))
        .collect();
    until(
        "every node routes the other nodes' subnets",
        Duration::from_secs(10),
        || routed_everywhere(&nodes, &subnets),
    );
    let routed = applied_at.elapsed();
    eprintln!(
        "route reflector: `netctl apply` to every session established {up:?}, to every route \
         in every kernel {routed:?}"
    );
    for d in &daemons {
        let bgp = d.status().bgp.unwrap();
        assert!(bgp.refused.is_empty(), "{:?}", bgp.refused);
        assert_eq!(bgp.problem, None);
        let rr = &bgp.peers[0];
        assert_eq!((rr.as_number, rr.prefixes_sent), (64512, 1), "{rr:?}");
        // The other two nodes' subnets, reflected.
        assert_eq!(rr.prefixes_received, 2, "{rr:?}");
    }

    // At BIRD: every node's subnet, with the node as next hop.
    let routes = bird.routes();
    for (subnet, ip) in subnets.iter().zip(&node_ips) {
        let block = route_block(&routes, &subnet.to_string());
        assert!(block.contains(&format!("via {ip} on eth0")), "{routes}");
        assert!(block.contains("BGP.local_pref: 100"), "{block}");
    }
    eprintln!("birdc show route all:\n{routes}");

    // Pods on the three nodes reach each other.
    let a = add_pod(&mut lab, &nodes[0], &daemons[0], "a");
    let b = add_pod(&mut lab, &nodes[1], &daemons[1], "b");
    let c = add_pod(&mut lab, &nodes[2], &daemons[2], "c");
    let mut servers: Vec<Child> = [&a, &b, &c]
        .iter()
        .map(|p| p.spawn(Pod::python(ECHO, &[])))
        .collect();
    thread::sleep(Duration::from_millis(300));
    for (from, to) in [(&a, &b), (&b, &c), (&c, &a), (&a, &c)] {
        assert!(from.reaches(to), "{} does not reach {}", from.ip, to.ip);
    }
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }

    // What netctl shows, and `-o yaml` applies back unchanged.
    let table = netctl(&lab, &["get", "bgppeers"], "");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["rr", "172.30.0.101", "64512", "<all>"]),
        "{table}"
    );
    let yaml = netctl(&lab, &["get", "bgppeer", "rr", "-o", "yaml"], "");
    let again = netctl(&lab, &["apply", "-f", "-"], &yaml);
    assert!(again.contains("bgppeer/rr unchanged"), "{yaml}\n{again}");
    let peers = netctl(&lab, &["bgp", "peers"], "");
    eprintln!("{peers}");
    assert_eq!(
        peers
            .lines()
            .filter(|l| l.contains("bgppeer/rr") && l.contains("Established"))
            .count(),
        3,
        "{peers}"
    );
}

/// The lines of `birdc show route all` output that belong to `prefix`'s entry.
fn route_block(routes: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in routes.lines() {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            inside = line.starts_with(prefix);
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "no route for {prefix} in:\n{routes}");
    out
}

#[test]
fn a_top_of_rack_router_learns_every_pod_subnet_and_its_own_routes_are_refused() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(3, 1)).expect("lab up");
    let nodes = lab.nodes();
    let node_ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.plan.underlay_ip).collect();
    let bird = Bird::start(&lab.host("ext1").unwrap(), &tor_config(&node_ips));
    // node1 is in rack r1, by its configuration.
    let mut daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| {
            let config = if n.name() == "node1" {
                format!("node_labels = {{ rack = \"r1\" }}\n{CONFIG}")
            } else {
                CONFIG.to_owned()
            };
            Twilld::start(Path::new(TWILLD), &lab, n, &config, &[])
        })
        .collect();
    for d in &daemons {
        d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_owned()).collect();
    let mesh_of = |i: usize| -> Vec<&str> {
        names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.as_str())
            .collect()
    };
    until("the mesh is established", Duration::from_secs(10), || {
        daemons
            .iter()
            .enumerate()
            .all(|(i, d)| established(d, &mesh_of(i)))
    });

    // The mesh stays; the ToR comes on top (passive: BIRD connects).
    let tor = "apiVersion: bgp.twill.io/v1alpha1
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 172.30.0.101
  asNumber: 65001
  passive: true
";
    let applied_at = Instant::now();
    netctl(&lab, &["apply", "-f", "-"], tor);
    until(
        "every node's sessions: the mesh and the ToR",
        Duration::from_secs(15),
        || {
            daemons.iter().enumerate().all(|(i, d)| {
                let mut want = mesh_of(i);
                want.push("bgppeer/tor");
                established(d, &want)
            })
        },
    );
    let up = applied_at.elapsed();
    let subnets: Vec<Ipv4Network> = daemons
        .iter()
        .map(|d| d.status().subnet.expect("a leased subnet"))
        .collect();
    // BIRD learns every pod subnet, next hop the node, AS path the cluster's AS. (LOCAL_PREF
    // 100 is BIRD's own for eBGP routes; that twill sends none over eBGP is checked in
    // bgp/tests/bird.rs, with BIRD accepting one.)
    until("BIRD has every pod subnet", Duration::from_secs(10), || {
        let routes = bird.routes();
        subnets.iter().all(|s| routes.contains(&s.to_string()))
    });
    let learned = applied_at.elapsed();
    let routes = bird.routes();
    eprintln!(
        "ToR: `netctl apply` to every session established {up:?}, to every pod subnet at BIRD \
         {learned:?}\nbirdc show route all:\n{routes}"
    );
    for (subnet, ip) in subnets.iter().zip(&node_ips) {
        let block = route_block(&routes, &subnet.to_string());
        assert!(block.contains(&format!("via {ip} on eth0")), "{block}");
        assert!(block.contains(&format!("BGP.next_hop: {ip}")), "{block}");
        assert!(block.contains("BGP.as_path: 64512\n"), "{block}");
        assert!(block.contains("BGP.local_pref: 100"), "{block}");
    }
    let protocol = bird.protocol("node1");
    assert!(protocol.contains("Neighbor AS:      64512"), "{protocol}");

    // The router's own route: refused, reported, never in a kernel; the mesh's routes as
    // before.
    until(
        "every node reports the ToR's own route refused",
        Duration::from_secs(5),
        || {
            daemons.iter().all(|d| {
                d.status()
                    .bgp
                    .is_some_and(|b| b.refused.iter().any(|r| r.starts_with(TOR_OWN)))
            })
        },
    );
    let bgp = daemons[0].status().bgp.unwrap();
    assert_eq!(
        bgp.refused,
        [format!(
            "{TOR_OWN} from BGPPeer tor ({BIRD_IP}): next hop {BIRD_IP} is no node's underlay \
             address"
        )]
    );
    assert!(routed_everywhere(&nodes, &subnets));
    for n in &nodes {
        let out = Command::new("ip")
            .args(["-n", &n.plan.netns, "route", "show", TOR_OWN])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "{}: {out:?}", n.name());
    }
    let peers = netctl(&lab, &["bgp", "peers"], "");
    eprintln!("{peers}");
    assert!(
        peers.contains(&format!("refused {TOR_OWN} from BGPPeer tor")),
        "{peers}"
    );

    // The BGPPeer changed: another hold time, and rack r1 only, which is node1 by its
    // configured labels (`netctl get nodes` shows them). node1's session starts again with
    // the new hold time; node2's and node3's end.
    let listed: serde_json::Value =
        serde_json::from_str(&netctl(&lab, &["get", "nodes", "-o", "json"], "")).unwrap();
    let racks: Vec<(&str, Option<&str>)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap(),
                n["metadata"]["labels"]["rack"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        racks,
        [("node1", Some("r1")), ("node2", None), ("node3", None)],
        "{listed}"
    );
    let changed = format!("{tor}  holdSeconds: 6\n  nodeSelector: {{matchLabels: {{rack: r1}}}}\n");
    let changed_at = Instant::now();
    let out = netctl(&lab, &["apply", "-f", "-"], &changed);
    assert!(out.contains("bgppeer/tor configured"), "{out}");
    until(
        "node1 peers with the ToR again, at hold time 6 s; node2 and node3 do not",
        Duration::from_secs(15),
        || {
            let mut want = mesh_of(0);
            want.push("bgppeer/tor");
            established(&daemons[0], &want)
                && bird.protocol("node1").contains("/6\n")
                && (1..3).all(|i| established(&daemons[i], &mesh_of(i)))
        },
    );
    eprintln!(
        "`netctl apply` of the changed BGPPeer to node1's new session (hold 6 s) and the \
         others' ended: {:?}\n{}",
        changed_at.elapsed(),
        bird.protocol("node1")
    );
    assert!(!bird.protocol("node2").contains("Established"));

    // Deleting the BGPPeer ends the session (a Cease BIRD sees) without a restart.
    let deleted_at = Instant::now();
    netctl(&lab, &["delete", "-f", "-"], tor);
    until(
        "the ToR sessions and their refusals are gone",
        Duration::from_secs(5),
        || {
            daemons.iter().enumerate().all(|(i, d)| {
                established(d, &mesh_of(i)) && d.status().bgp.is_some_and(|b| b.refused.is_empty())
            })
        },
    );
    eprintln!(
        "`netctl delete` to the ToR session gone: {:?}",
        deleted_at.elapsed()
    );
    let peers = netctl(&lab, &["bgp", "peers"], "");
    assert!(!peers.contains("bgppeer/tor"), "{peers}");
    assert!(!peers.contains("refused"), "{peers}");
    // BIRD saw the Cease; it keeps trying to connect, and the nodes refuse.
    let protocol = bird.protocol("node1");
    assert!(
        protocol.contains("Administrative shutdown") && !protocol.contains("Established"),
        "{protocol}"
    );
    assert!(routed_everywhere(&nodes, &subnets));
    for d in &mut daemons {
        assert!(d.is_running());
        let log = d.log_text();
        assert_eq!(
            log.matches("BGP-routed mode: no encapsulation").count(),
            1,
            "twilld started more than once:\n{log}"
        );
    }
}

/// The lab's Service CIDR (twilld's default `network.service_cidr`).
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// What BIRD originates in the Service CIDR test: a part of the Service CIDR.
const TOR_SERVICE_PART: &str = "10.96.5.0/24";

/// `ip route show PREFIX` (exact match) in the host's namespace.
fn kernel_route(host: &Host, prefix: &str) -> String {
    let out = Command::new("ip")
        .args([
            "-n",
            &host.plan.netns,
            "-4",
            "route",
            "show",
            "exact",
            prefix,
        ])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The next hops BIRD holds for `prefix` (every path, best first), from `birdc show route
/// all`.
fn bird_next_hops(bird: &Bird, prefix: &str) -> Vec<String> {
    let routes = bird.routes();
    let mut out = Vec::new();
    let mut inside = false;
    for line in routes.lines() {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            inside = line.starts_with(&format!("{prefix} "));
        }
        if inside && let Some(hop) = line.trim().strip_prefix("BGP.next_hop: ") {
            out.push(hop.to_owned());
        }
    }
    out
}

#[test]
fn nodes_announce_the_service_cidr_to_a_top_of_rack_router_and_not_to_the_mesh() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(3, 1)).expect("lab up");
    let nodes = lab.nodes();
    let node_ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.plan.underlay_ip).collect();
    let bird = Bird::start(
        &lab.host("ext1").unwrap(),
        &tor_config_with(&node_ips, TOR_SERVICE_PART),
    );
    let config = format!("{CONFIG}announce_service_cidr = true\n");
    let mut daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, &config);
    let tor = "apiVersion: bgp.twill.io/v1alpha1
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 172.30.0.101
  asNumber: 65001
  passive: true
";
    let applied_at = Instant::now();
    netctl(&lab, &["apply", "-f", "-"], tor);
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_owned()).collect();
    let sessions_of = |i: usize| -> Vec<&str> {
        let mut want: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.as_str())
            .collect();
        want.push("bgppeer/tor");
        want
    };
    until(
        "every node's sessions: the mesh and the ToR",
        Duration::from_secs(15),
        || {
            daemons
                .iter()
                .enumerate()
                .all(|(i, d)| established(d, &sessions_of(i)))
        },
    );
    let mut want: Vec<String> = node_ips.iter().map(ToString::to_string).collect();
    want.sort();
    until(
        "BIRD learns the Service CIDR from every node",
        Duration::from_secs(10),
        || {
            let mut hops = bird_next_hops(&bird, SERVICE_CIDR);
            hops.sort();
            hops == want
        },
    );
    let learned = applied_at.elapsed();
    let routes = bird.routes();
    eprintln!(
        "`netctl apply` to the Service CIDR at BIRD from every node: {learned:?}\n\
         birdc show route all:\n{routes}"
    );
    let block = route_block(&routes, SERVICE_CIDR);
    for ip in &node_ips {
        assert!(block.contains(&format!("via {ip} on eth0")), "{block}");
    }
    assert_eq!(block.matches("BGP.as_path: 64512\n").count(), 3, "{block}");

    // Two prefixes to the ToR (the pod subnet and the Service CIDR), one to each mesh peer.
    for d in &daemons {
        let bgp = d.status().bgp.unwrap();
        for p in &bgp.peers {
            let want = if p.node == "bgppeer/tor" { 2 } else { 1 };
            assert_eq!(p.prefixes_sent, want, "{}: {p:?}", d.node);
        }
    }
    // No node routes the Service CIDR anywhere: its own `unreachable` route stands, and
    // what BIRD sends inside it (its own route; the nodes' Service CIDR comes back with
    // AS 64512 in its path, a loop) is refused.
    let refusal = format!(
        "{TOR_SERVICE_PART} from BGPPeer tor ({BIRD_IP}): inside the Service CIDR \
         {SERVICE_CIDR}, which every node answers itself"
    );
    until(
        "every node reports BIRD's route inside the Service CIDR refused",
        Duration::from_secs(5),
        || {
            daemons.iter().all(|d| {
                d.status()
                    .bgp
                    .is_some_and(|b| b.refused == [refusal.clone()])
            })
        },
    );
    for n in &nodes {
        assert_eq!(
            kernel_route(n, SERVICE_CIDR),
            format!("unreachable {SERVICE_CIDR} proto 66"),
            "{}",
            n.name()
        );
        assert_eq!(kernel_route(n, TOR_SERVICE_PART), "", "{}", n.name());
    }
    let peers = netctl(&lab, &["bgp", "peers"], "");
    assert!(
        peers.contains(&format!("refused {TOR_SERVICE_PART}")),
        "{peers}"
    );

    // Turned off on node1 (started again without it): node1's announcement leaves BIRD
    // (at node1's End-of-RIB after the graceful restart), the others' stay.
    daemons[0].kill();
    let restarted_at = Instant::now();
    daemons[0] = Twilld::start(Path::new(TWILLD), &lab, &nodes[0], CONFIG, &[]);
    let mut others: Vec<String> = node_ips[1..].iter().map(ToString::to_string).collect();
    others.sort();
    until(
        "node1's Service CIDR gone from BIRD, the others' there",
        Duration::from_secs(15),
        || {
            let mut hops = bird_next_hops(&bird, SERVICE_CIDR);
            hops.sort();
            hops == others
        },
    );
    eprintln!(
        "node1 started without announce_service_cidr: its Service CIDR left BIRD {:?} later",
        restarted_at.elapsed()
    );
    let node1 = subnet_at_bird(&bird, &daemons[0]);
    assert!(node1, "node1's pod subnet is still at BIRD");
}

/// Whether BIRD holds `daemon`'s pod subnet via the daemon's node.
fn subnet_at_bird(bird: &Bird, daemon: &Twilld) -> bool {
    let subnet = daemon.status().subnet.expect("a leased subnet").to_string();
    !bird_next_hops(bird, &subnet).is_empty()
}

#[test]
fn a_bad_bgp_peer_is_refused_naming_the_field_and_nothing_is_stored() {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(1, 0)).expect("lab up");
    // A good peer and a bad one in one file: all or nothing.
    let text = format!(
        "{RR_PEER}---
apiVersion: bgp.twill.io/v1alpha1
kind: BGPPeer
metadata:
  name: tor
spec:
  peerIP: 172.30.0.102
  asNumber: 23456
  holdSeconds: 2
  routeReflector: true
"
    );
    let (ok, out) = netctl_status(&lab, &["apply", "-f", "-"], &text);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "-: document 2 (BGPPeer tor): spec.routeReflector: unknown field `routeReflector`"
        ),
        "{out}"
    );
    assert!(out.contains("nothing was stored"), "{out}");
    assert_eq!(stored_peers(&lab), Vec::<String>::new());
    // Without the unknown field, the other problems, each by its field.
    let text = text.replace("  routeReflector: true\n", "");
    let (ok, out) = netctl_status(&lab, &["apply", "-f", "-"], &text);
    assert!(!ok, "{out}");
    assert!(
        out.contains("(BGPPeer tor): spec.asNumber: 23456 is AS_TRANS"),
        "{out}"
    );
    assert!(
        out.contains("(BGPPeer tor): spec.holdSeconds: 2 is not 0 (no keepalives) or 3-65535"),
        "{out}"
    );
    assert!(out.contains("nothing was stored (2 problem(s))"), "{out}");
    assert_eq!(stored_peers(&lab), Vec::<String>::new());
    let (_, listed) = netctl_status(&lab, &["get", "bgppeers"], "");
    assert!(listed.contains("No resources found"), "{listed}");
}
