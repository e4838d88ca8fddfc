//! What a scrape reads: a [`Snapshot`] of the node taken through the same code paths as the
//! socket's `Status` and `Policy` answers, then encoded as OpenMetrics or Prometheus text.
//!
//! Costs per scrape: the status answer, the datapath counters (80 per-CPU entries) and the
//! policy counters in use (one lookup each), under the dataplane lock for well under a
//! millisecond at lab sizes. Maps nothing keeps a count of ([`twill_bpf::COUNTED_MAPS`]:
//! conntrack and the like) are walked key by key (about 3 µs an entry here, 0.8 s for a
//! full 262,144-entry `TWILL_CT`), without the lock, on a thread of their own, at most once
//! per `metrics.map_walk_seconds`: a scrape shows the last walk's counts and, when they are
//! older than that, starts the next walk. Only the very first scrape waits for a walk.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    registry::{Registry, Unit},
};
use tracing::warn;
use twill_abi::maps;
use twill_api::{MapFill, NodeStatus, PolicyPodReport, Request, Response, RuleCount};
use twill_metrics_http::{
    Format, Render,
    encode::{counter, counters, gauge, gauges},
};

use crate::node::Node;

/// Answers scrapes for one node.
pub struct Scraper {
    node: Arc<Node>,
    pin_dir: PathBuf,
    map_walk: Duration,
    registry: Registry,
    denied: Mutex<DeniedTotals>,
    walks: Arc<Mutex<Walks>>,
    flaps: Arc<super::bgp::SessionFlaps>,
}

/// The walks of the counted maps.
#[derive(Default)]
struct Walks {
    /// The last walk's counts, and when it ended.
    last: Option<(Instant, Vec<MapFill>)>,
    /// Whether a walk is under way.
    running: bool,
}

impl Scraper {
    /// `pin_dir`: the node's bpffs directory; `map_walk`: the least time between two walks
    /// of the counted maps.
    pub fn new(node: Arc<Node>, pin_dir: PathBuf, map_walk: Duration) -> Self {
        let registry = node.instruments.registry();
        let flaps = super::bgp::SessionFlaps::start(node.clone());
        Self {
            flaps,
            node,
            pin_dir,
            map_walk,
            registry,
            denied: Mutex::default(),
            walks: Arc::default(),
        }
    }

    /// The last walk's counts; starts a walk (on a thread of its own) when they are older
    /// than `metrics.map_walk_seconds`. The first call walks before it returns.
    fn walked(&self) -> Vec<MapFill> {
        let mut walks = self.walks.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((at, counts)) = &walks.last else {
            let counts = walk(&self.pin_dir);
            walks.last = Some((Instant::now(), counts.clone()));
            return counts;
        };
        let counts = counts.clone();
        if at.elapsed() >= self.map_walk && !walks.running {
            walks.running = true;
            let (pin_dir, shared) = (self.pin_dir.clone(), self.walks.clone());
            let spawned = std::thread::Builder::new()
                .name("metrics-walk".into())
                .spawn(move || {
                    let counts = walk(&pin_dir);
                    let mut walks = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    walks.last = Some((Instant::now(), counts));
                    walks.running = false;
                });
            if let Err(e) = spawned {
                warn!("metrics: starting a walk of the maps: {e}");
                walks.running = false;
            }
        }
        counts
    }

    /// Every metric, now. Blocks on the dataplane lock and on map reads: call it off the
    /// async runtime's threads.
    pub fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut now = Registry::default();
        now.register_collector(Box::new(self.snapshot()));
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                text::encode_registry(&mut out, &self.registry)?;
                text::encode_registry(&mut out, &now)?;
                text::encode_eof(&mut out)?;
            }
            Format::Prometheus => {
                prometheus_text::encode(&mut out, &self.registry)?;
                prometheus_text::encode(&mut out, &now)?;
            }
        }
        Ok(out)
    }

    fn snapshot(&self) -> Snapshot {
        let status = match self.node.handle(Request::Status) {
            Response::Status { status } => Some(status),
            other => {
                warn!("metrics: the status request answered {other:?}");
                None
            }
        };
        // The code path of the socket's `Policy` answer, without its conntrack walk.
        let local = self.node.local_pods();
        let me = self.node.name().to_owned();
        let dataplane = self.node.with_dataplane(|d| {
            let policy = d
                .policy
                .counters(&mut d.datapath, &me, &local)
                .map_err(|e| warn!("metrics: policy counters: {:#}", anyhow::Error::new(e)))
                .ok();
            let capacity = [maps::SERVICES, maps::BACKENDS, maps::MEMBERS]
                .map(|m| u64::from(d.datapath.capacity(m)));
            (policy, capacity)
        });
        let (policy, service_capacity) = dataplane.unwrap_or_default();
        let datapath = twill_bpf::read_metrics(&self.pin_dir)
            .map_err(|e| warn!("metrics: datapath counters: {:#}", anyhow::Error::new(e)))
            .ok();

        let mut maps: Vec<MapFill> = status
            .as_ref()
            .map(|s| s.policy.maps.clone())
            .unwrap_or_default();
        let services = self.node.instruments.service_fill();
        if let (Some(s), [svc, backends, members]) = (services, service_capacity) {
            for (name, entries, capacity) in [
                (maps::SERVICES, s.frontends, svc),
                (maps::BACKENDS, s.backends, backends),
                (maps::MEMBERS, s.members, members),
            ] {
                maps.push(MapFill {
                    name: name.to_owned(),
                    entries,
                    capacity,
                });
            }
        }

        maps.extend(self.walked());
        let mut totals = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        let rules = match &policy {
            Some(report) => {
                totals.update(&report.pods);
                report.rules.clone()
            }
            None => Vec::new(),
        };
        let denied = totals.totals();
        drop(totals);

        let etcd_last_ok = self
            .node
            .etcd_last_ok()
            .and_then(|t| SystemTime::now().checked_sub(t.elapsed()));
        Snapshot {
            status,
            etcd_last_ok,
            datapath,
            rules,
            denied,
            maps,
            services,
            flaps: self.flaps.counts(),
        }
    }
}

/// Counts the entries of every map of [`twill_bpf::COUNTED_MAPS`].
fn walk(pin_dir: &std::path::Path) -> Vec<MapFill> {
    let started = Instant::now();
    let fill: Vec<MapFill> = twill_bpf::COUNTED_MAPS
        .iter()
        .filter_map(|name| match twill_bpf::count_pinned(pin_dir, name) {
            Ok((entries, capacity)) => Some(MapFill {
                name: (*name).to_owned(),
                entries,
                capacity: u64::from(capacity),
            }),
            Err(e) => {
                warn!("metrics: counting {name}: {:#}", anyhow::Error::new(e));
                None
            }
        })
        .collect();
    tracing::debug!(took = ?started.elapsed(), "metrics: counted the maps' entries");
    fill
}

/// Denied connection attempts summed over the node's pods, kept monotonic: each pod's
/// counter is read at every scrape and only its increase is added, so a deleted pod
/// takes nothing away from the sum (it only loses what it counted since the last scrape).
#[derive(Debug)]
struct DeniedTotals {
    /// Each pod direction's counter at the last scrape.
    last: HashMap<(Ipv4Addr, usize), u64>,
    /// By direction (0 ingress, 1 egress) and mode.
    totals: BTreeMap<(usize, &'static str), u64>,
}

const DIRECTIONS: [&str; 2] = ["ingress", "egress"];
const MODES: [&str; 2] = ["enforce", "audit"];

impl Default for DeniedTotals {
    fn default() -> Self {
        let mut totals = BTreeMap::new();
        for d in 0..DIRECTIONS.len() {
            for m in MODES {
                totals.insert((d, m), 0);
            }
        }
        Self {
            last: HashMap::new(),
            totals,
        }
    }
}

impl DeniedTotals {
    fn update(&mut self, pods: &[PolicyPodReport]) {
        let mut seen = HashMap::new();
        for pod in pods {
            for (d, mode) in pod.modes.iter().enumerate() {
                // An open direction has no counter of its own (it points at the shared
                // overflow slot): nothing is denied there.
                let Some(mode) = MODES.into_iter().find(|m| m == mode) else {
                    continue;
                };
                let now = pod.denied[d];
                let before = self.last.get(&(pod.ip, d)).copied().unwrap_or(0);
                // Lower than before: the counter was handed out afresh (another pod at
                // the address, or the policy changed); all of it is new.
                let increase = if now >= before { now - before } else { now };
                *self.totals.entry((d, mode)).or_default() += increase;
                seen.insert((pod.ip, d), now);
            }
        }
        self.last = seen;
    }

    fn totals(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.totals
            .iter()
            .map(|((d, mode), n)| (DIRECTIONS[*d], *mode, *n))
            .collect()
    }
}

/// The node at one scrape.
#[derive(Debug)]
struct Snapshot {
    status: Option<NodeStatus>,
    etcd_last_ok: Option<SystemTime>,
    datapath: Option<twill_bpf::Metrics>,
    rules: Vec<RuleCount>,
    /// Denied connection attempts by direction and mode.
    denied: Vec<(&'static str, &'static str, u64)>,
    maps: Vec<MapFill>,
    services: Option<super::ServiceFill>,
    /// BGP session flaps by peer.
    flaps: Vec<(String, u64)>,
}

/// The states a BGP session is counted in, as `netctl bgp peers` names them.
const BGP_STATES: [&str; 6] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
];

type Labels<const N: usize> = [(&'static str, String); N];

impl Render for Scraper {
    fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        Scraper::render(self, format)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if let Some(m) = &self.datapath {
            counters(
                &mut enc,
                "twill_datapath_packets",
                "Packets the eBPF programs handled, by the direction they travelled and what \
                 the program did (reasons drop-* are drops)",
                m.rows.iter().map(|r| {
                    let labels: Labels<2> = [
                        ("direction", r.direction.name().to_owned()),
                        ("reason", r.reason.name().to_owned()),
                    ];
                    (labels, r.packets)
                }),
            )?;
            counters(
                &mut enc,
                "twill_datapath_bytes",
                "Bytes of the packets in twill_datapath_packets (host-socket counts calls, \
                 not bytes, and is left out)",
                m.rows
                    .iter()
                    .filter(|r| r.direction != twill_abi::metrics::Direction::HostSocket)
                    .map(|r| {
                        let labels: Labels<2> = [
                            ("direction", r.direction.name().to_owned()),
                            ("reason", r.reason.name().to_owned()),
                        ];
                        (labels, r.bytes)
                    }),
            )?;
        }
        counters(
            &mut enc,
            "twill_policy_rule_allowed",
            "Connections a NetworkPolicy rule allowed on this node as the deciding rule \
             (audit mode: would have allowed), summed over the node's pods",
            self.rules.iter().map(|r| {
                let (namespace, policy) = r.policy.split_once('/').unwrap_or(("", &r.policy));
                let labels: Labels<4> = [
                    ("namespace", namespace.to_owned()),
                    ("policy", policy.to_owned()),
                    ("direction", r.direction.clone()),
                    ("rule", r.rule.to_string()),
                ];
                (labels, r.allowed)
            }),
        )?;
        counters(
            &mut enc,
            "twill_policy_denied",
            "Connection attempts NetworkPolicy denied on this node (mode audit: would have \
             denied, and let through), summed over the node's pods",
            self.denied.iter().map(|(direction, mode, n)| {
                let labels: Labels<2> = [
                    ("direction", (*direction).to_owned()),
                    ("mode", (*mode).to_owned()),
                ];
                (labels, *n)
            }),
        )?;
        if let Some(s) = &self.services {
            gauge(
                &mut enc,
                "twill_service_frontends",
                "Service frontends (ClusterIP or NodePort, port, protocol) in this node's maps",
                None,
                s.frontends as i64,
            )?;
            gauge(
                &mut enc,
                "twill_service_backends",
                "Backend slots of the Service frontends in this node's maps, summed over \
                 frontends",
                None,
                s.backends as i64,
            )?;
        }
        gauges(
            &mut enc,
            "twill_map_entries",
            "Entries in one of this node's BPF maps (for conntrack-like maps, as of the \
             last walk: at most metrics.map_walk_seconds old)",
            self.maps.iter().map(|m| {
                let labels: Labels<1> = [("map", m.name.clone())];
                (labels, m.entries as i64)
            }),
        )?;
        gauges(
            &mut enc,
            "twill_map_capacity",
            "Capacity (max entries) of one of this node's BPF maps",
            self.maps.iter().map(|m| {
                let labels: Labels<1> = [("map", m.name.clone())];
                (labels, m.capacity as i64)
            }),
        )?;
        if let Some(s) = &self.status {
            gauge(
                &mut enc,
                "twill_lease_held",
                "1 while etcd confirms this node holds its pod subnet",
                None,
                i64::from(s.subnet.is_some()),
            )?;
            gauge(
                &mut enc,
                "twill_etcd_up",
                "1 while etcd answered the lease loop within the lease TTL",
                None,
                i64::from(s.etcd_reachable),
            )?;
            gauge(
                &mut enc,
                "twill_node_ready",
                "1 while the node can wire new pods (a subnet held, etcd reachable)",
                None,
                i64::from(s.not_ready.is_none()),
            )?;
            gauge(
                &mut enc,
                "twill_pods",
                "Pod attachments with an address on this node",
                None,
                i64::from(s.pods),
            )?;
            gauge(
                &mut enc,
                "twill_pod_addresses_available",
                "Addresses of the node's pod subnet still free",
                None,
                i64::from(s.available_addresses),
            )?;
            gauge(
                &mut enc,
                "twill_overlay_peers",
                "Remote nodes whose overlay routes, neighbours and FDB entries are in place",
                None,
                i64::from(s.overlay.peers),
            )?;
            encode_flows(&mut enc, &s.flows)?;
            if let Some(bgp) = &s.bgp {
                encode_bgp(&mut enc, bgp, &self.flaps)?;
            }
            gauges(
                &mut enc,
                "twill_background_work_queued",
                "Pod work no CNI call waits for, still queued: program attaches of new pods, \
                 veth pairs of deleted pods",
                [
                    ([("work", "attach")], i64::from(s.background.attaching)),
                    ([("work", "retire")], i64::from(s.background.retiring)),
                ],
            )?;
        }
        if let Some(at) = self
            .etcd_last_ok
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        {
            gauge(
                &mut enc,
                "twill_etcd_last_success_timestamp",
                "When etcd last answered the lease loop (Unix time)",
                Some(&Unit::Seconds),
                at.as_secs_f64(),
            )?;
        }
        Ok(())
    }
}

/// The flow records' counts, when records are on: read, lost by the datapath's ring,
/// pushed out of the daemon's memory, kept.
fn encode_flows(enc: &mut DescriptorEncoder, f: &twill_api::flow::FlowStatus) -> std::fmt::Result {
    if f.mode == "off" {
        return Ok(());
    }
    counter(
        enc,
        "twill_flow_records_read",
        "Flow records twilld read from the datapath's ring since it started",
        f.read,
    )?;
    counter(
        enc,
        "twill_flow_records_lost",
        "Flow records the datapath's ring had no room for (TWILL_FLOW_LOST), since the \
         ring was created",
        f.lost,
    )?;
    counter(
        enc,
        "twill_flow_records_evicted",
        "Flow records pushed out of twilld's memory (flows.keep) since it started: gone for \
         readers that had not fetched them",
        f.read.saturating_sub(f.kept),
    )?;
    gauge(
        enc,
        "twill_flow_records_kept",
        "Flow records in twilld's memory (at most flows.keep)",
        None,
        f.kept as i64,
    )
}

/// The BGP speaker's sessions: by state, prefixes per peer, flaps per peer.
fn encode_bgp(
    enc: &mut DescriptorEncoder,
    bgp: &twill_api::BgpStatus,
    flaps: &[(String, u64)],
) -> std::fmt::Result {
    gauges(
        enc,
        "twill_bgp_sessions",
        "BGP sessions of this node's speaker, by RFC 4271 state",
        BGP_STATES.map(|state| {
            let n = bgp.peers.iter().filter(|p| p.state == state).count() as i64;
            ([("state", state)], n)
        }),
    )?;
    let peer = |name: &str| -> Labels<1> { [("peer", name.to_owned())] };
    gauges(
        enc,
        "twill_bgp_prefixes_received",
        "Prefixes a BGP peer announced to this node (stale ones of a restarting peer \
         included)",
        bgp.peers
            .iter()
            .map(|p| (peer(&p.node), i64::from(p.prefixes_received))),
    )?;
    gauges(
        enc,
        "twill_bgp_prefixes_sent",
        "Prefixes this node announced to a BGP peer",
        bgp.peers
            .iter()
            .map(|p| (peer(&p.node), i64::from(p.prefixes_sent))),
    )?;
    counters(
        enc,
        "twill_bgp_session_flaps",
        "Times an established BGP session went down, since twilld started",
        flaps.iter().map(|(name, n)| (peer(name), *n)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: [u8; 4], modes: [&str; 2], denied: [u64; 2]) -> PolicyPodReport {
        PolicyPodReport {
            ip: Ipv4Addr::from(ip),
            pod: None,
            table: 1,
            modes: modes.map(str::to_owned),
            isolated_by: [Vec::new(), Vec::new()],
            denied,
        }
    }

    fn total(t: &DeniedTotals, direction: &str, mode: &str) -> u64 {
        t.totals()
            .into_iter()
            .find(|(d, m, _)| *d == direction && *m == mode)
            .map(|(_, _, n)| n)
            .unwrap()
    }

    #[test]
    fn denied_totals_only_grow_when_pods_go_and_counters_restart() {
        let mut t = DeniedTotals::default();
        assert_eq!(
            t.totals().len(),
            4,
            "every direction and mode from the start"
        );
        t.update(&[
            pod([10, 0, 0, 2], ["enforce", "open"], [5, 99]),
            pod([10, 0, 0, 3], ["audit", "enforce"], [2, 1]),
        ]);
        assert_eq!(total(&t, "ingress", "enforce"), 5);
        assert_eq!(total(&t, "ingress", "audit"), 2);
        assert_eq!(total(&t, "egress", "enforce"), 1);
        // An open direction's counter is the shared overflow slot: never counted.
        assert_eq!(total(&t, "egress", "audit"), 0);

        // .3 is deleted; .2 counts 3 more.
        t.update(&[pod([10, 0, 0, 2], ["enforce", "open"], [8, 120])]);
        assert_eq!(total(&t, "ingress", "enforce"), 8);
        assert_eq!(total(&t, "ingress", "audit"), 2);
        assert_eq!(total(&t, "egress", "enforce"), 1);

        // A new pod at .2's address starts a fresh counter at 1.
        t.update(&[pod([10, 0, 0, 2], ["enforce", "open"], [1, 0])]);
        assert_eq!(total(&t, "ingress", "enforce"), 9);
    }

    fn render(snapshot: Snapshot) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn a_snapshot_renders_counters_with_total_and_gauges_as_they_are() {
        let metrics = twill_bpf::Metrics {
            rows: vec![
                twill_bpf::MetricRow {
                    direction: twill_abi::metrics::Direction::FromPod,
                    reason: twill_abi::metrics::Reason::ServiceTranslated,
                    packets: 7,
                    bytes: 700,
                },
                twill_bpf::MetricRow {
                    direction: twill_abi::metrics::Direction::HostSocket,
                    reason: twill_abi::metrics::Reason::ServiceTranslated,
                    packets: 3,
                    bytes: 0,
                },
            ],
        };
        let text = render(Snapshot {
            status: None,
            etcd_last_ok: None,
            datapath: Some(metrics),
            rules: vec![RuleCount {
                policy: "default/web-from-client".into(),
                direction: "ingress".into(),
                rule: 0,
                allowed: 4,
            }],
            denied: vec![("ingress", "enforce", 2)],
            maps: vec![MapFill {
                name: "TWILL_CT".into(),
                entries: 10,
                capacity: 262_144,
            }],
            services: Some(super::super::ServiceFill {
                frontends: 2,
                backends: 5,
                members: 5,
            }),
            flaps: vec![("node2".into(), 3)],
        });
        for want in [
            "# TYPE twill_datapath_packets_total counter",
            "twill_datapath_packets_total{direction=\"from-pod\",reason=\"service-translated\"} 7",
            "twill_datapath_packets_total{direction=\"host-socket\",reason=\"service-translated\"} 3",
            "twill_datapath_bytes_total{direction=\"from-pod\",reason=\"service-translated\"} 700",
            "twill_policy_rule_allowed_total{namespace=\"default\",policy=\"web-from-client\",direction=\"ingress\",rule=\"0\"} 4",
            "twill_policy_denied_total{direction=\"ingress\",mode=\"enforce\"} 2",
            "# TYPE twill_service_frontends gauge",
            "twill_service_frontends 2",
            "twill_service_backends 5",
            "twill_map_entries{map=\"TWILL_CT\"} 10",
            "twill_map_capacity{map=\"TWILL_CT\"} 262144",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
        assert!(!text.contains("twill_datapath_bytes_total{direction=\"host-socket\""));
        // No status: no lease, flow or BGP series (flaps come from the watcher, not it).
        assert!(!text.contains("twill_flow_records"), "{text}");
        assert!(!text.contains("twill_bgp_sessions"), "{text}");
        // No status: no lease or etcd series rather than made-up zeros.
        assert!(!text.contains("twill_lease_held"), "{text}");
    }

    #[test]
    fn flow_record_loss_and_bgp_sessions_come_from_the_status() {
        let status: NodeStatus = serde_json::from_value(serde_json::json!({
            "node": "node1", "subnet": null, "etcd_reachable": true,
            "available_addresses": 250, "not_ready": null,
            "flows": {"mode": "packets", "kept": 100, "keep": 100, "newest": 900,
                      "read": 900, "lost": 1541, "file": null, "problems": []},
            "bgp": {"as_number": 64512, "router_id": null, "announced": null, "peers": [
                {"node": "node2", "address": "172.30.0.12", "as_number": 64512,
                 "state": "Established", "passive": false, "uptime_seconds": 5,
                 "prefixes_sent": 1, "prefixes_received": 2, "last_error": null},
                {"node": "node3", "address": "172.30.0.13", "as_number": 64512,
                 "state": "Active", "passive": true, "uptime_seconds": null,
                 "prefixes_sent": 0, "prefixes_received": 0, "last_error": null}]}
        }))
        .unwrap();
        let text = render(Snapshot {
            status: Some(status),
            etcd_last_ok: None,
            datapath: None,
            rules: Vec::new(),
            denied: Vec::new(),
            maps: Vec::new(),
            services: None,
            flaps: vec![("node2".into(), 1), ("node3".into(), 0)],
        });
        for want in [
            "# TYPE twill_flow_records_lost_total counter",
            "twill_flow_records_lost_total 1541",
            "twill_flow_records_read_total 900",
            "twill_flow_records_evicted_total 800",
            "twill_flow_records_kept 100",
            "twill_bgp_sessions{state=\"Established\"} 1",
            "twill_bgp_sessions{state=\"Active\"} 1",
            "twill_bgp_sessions{state=\"Idle\"} 0",
            "twill_bgp_prefixes_received{peer=\"node2\"} 2",
            "twill_bgp_prefixes_sent{peer=\"node2\"} 1",
            "twill_bgp_prefixes_received{peer=\"node3\"} 0",
            "# TYPE twill_bgp_session_flaps_total counter",
            "twill_bgp_session_flaps_total{peer=\"node2\"} 1",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
    }
}
