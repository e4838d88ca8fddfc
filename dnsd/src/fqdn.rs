//! FQDNPolicy in the DNS server: which names a selected pod may resolve, and the
//! addresses its answers taught the datapath.
//!
//! A pod that an FQDNPolicy selects (`podSelector` in the policy's namespace) may resolve
//! only names outside the cluster zone that one of those policies' rules names
//! (`matchName`, `matchPattern`); another name gets NXDOMAIN (not REFUSED: musl's resolver
//! stops walking the search path at REFUSED), and is counted. For an allowed name, every
//! IPv4 address of the answer is written to the node's `TWILL_FQDN` map for that pod,
//! before the answer is sent, with the ports of the rules that allow the name and an
//! expiry of the answer's TTL (at least the configured minimum). The datapath lets the pod
//! open flows outside the cluster only to such addresses while they hold (ebpf
//! `policy::fqdn_allows`); a flow opened stays open past the expiry.
//!
//! Fails closed: an allowed answer whose addresses cannot be written (twilld has not pinned
//! the maps yet, a full map) is answered SERVFAIL, so the client retries rather than
//! connect to an address the datapath would drop.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RData,
};
use tokio::sync::watch;
use tracing::{info, warn};
use twill_abi::{
    lb::wire_ip,
    policy::{FqdnAllow, FqdnKey, FqdnPort, MAX_FQDN_PORTS},
};
use twill_bpf::{FqdnMaps, fqdn_name_id, monotonic_ns};
use twill_k8s::{FqdnPolicy, FqdnSelector, Object, Protocol};

use crate::{config::FqdnConfig, source::Store};

/// What the rules say of one pod asking one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No FQDNPolicy selects the pod: answer as usual.
    NotSelected,
    /// Selected, and no rule names the name: NXDOMAIN.
    Denied,
    /// Selected and allowed, to these ports (`any_port`: every port and protocol).
    Allowed {
        any_port: bool,
        ports: Vec<FqdnPort>,
    },
}

/// One rule of one policy, as a selected pod gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    /// `namespace/name` of its policy.
    policy: String,
    selectors: Vec<FqdnSelector>,
    any_port: bool,
    ports: Vec<FqdnPort>,
}

/// The rules of every pod an FQDNPolicy selects, by the pod's address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FqdnRules {
    by_pod: HashMap<Ipv4Addr, Vec<Grant>>,
    /// Read from the store (false for the empty rules before its first snapshot, which
    /// say nothing of who is selected).
    loaded: bool,
}

/// The rules now in force; empty until the first snapshot of the store.
pub type CurrentRules = watch::Receiver<Arc<FqdnRules>>;

fn ip_protocol(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

impl FqdnRules {
    /// The rules for the pods in `store`: Pod objects (labels) with a pod record (address).
    pub fn from_store(store: &Store) -> FqdnRules {
        let mut policies: Vec<&FqdnPolicy> = Vec::new();
        let mut pods = HashMap::new();
        let mut records = HashMap::new();
        for entry in store.values() {
            match entry {
                twill_store::Entry::Object(o) => match o.as_ref() {
                    Object::FqdnPolicy(p) => policies.push(p),
                    Object::Pod(p) => {
                        pods.insert((p.namespace.as_str(), p.name.as_str()), p);
                    }
                    _ => {}
                },
                twill_store::Entry::Pod(r) => {
                    records.insert((r.namespace.as_str(), r.name.as_str()), r.ip);
                }
            }
        }
        let mut by_pod: HashMap<Ipv4Addr, Vec<Grant>> = HashMap::new();
        if policies.is_empty() {
            return FqdnRules {
                by_pod,
                loaded: true,
            };
        }
        for (key, pod) in &pods {
            let Some(ip) = records.get(key) else {
                continue;
            };
            for policy in policies
                .iter()
                .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
            {
                let grants = by_pod.entry(*ip).or_default();
                if policy.egress.is_empty() {
                    // It allows nothing; kept so that the pod's policies name it.
                    grants.push(Grant {
                        policy: format!("{}/{}", policy.namespace, policy.name),
                        selectors: Vec::new(),
                        any_port: false,
                        ports: Vec::new(),
                    });
                }
                grants.extend(policy.egress.iter().map(|rule| {
                    Grant {
                        policy: format!("{}/{}", policy.namespace, policy.name),
                        selectors: rule.to_fqdns.clone(),
                        any_port: rule.any_port(),
                        ports: rule
                            .ports
                            .iter()
                            .map(|p| FqdnPort {
                                lo: p.port,
                                hi: p.end_port.max(p.port),
                                protocol: ip_protocol(p.protocol),
                                _pad: [0; 3],
                            })
                            .collect(),
                    }
                }));
            }
        }
        FqdnRules {
            by_pod,
            loaded: true,
        }
    }

    /// Whether some FQDNPolicy selects the pod at `pod`.
    pub fn selects(&self, pod: Ipv4Addr) -> bool {
        self.by_pod.contains_key(&pod)
    }

    /// `namespace/name` of every FQDNPolicy that selects the pod at `pod`, each once.
    pub fn policies(&self, pod: Ipv4Addr) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for g in self.by_pod.get(&pod).into_iter().flatten() {
            if !names.contains(&g.policy) {
                names.push(g.policy.clone());
            }
        }
        names
    }

    /// Whether any pod is selected at all.
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// The verdict for the pod at `pod` asking `name` (a name outside the cluster zone).
    pub fn verdict(&self, pod: Ipv4Addr, name: &str) -> Verdict {
        let Some(grants) = self.by_pod.get(&pod) else {
            return Verdict::NotSelected;
        };
        let mut any_port = false;
        let mut ports: Vec<FqdnPort> = Vec::new();
        let mut allowed = false;
        for g in grants
            .iter()
            .filter(|g| g.selectors.iter().any(|s| s.matches(name)))
        {
            allowed = true;
            any_port |= g.any_port;
            for p in &g.ports {
                if !ports.contains(p) {
                    ports.push(*p);
                }
            }
        }
        if !allowed {
            return Verdict::Denied;
        }
        if any_port {
            ports.clear();
        }
        Verdict::Allowed { any_port, ports }
    }
}

/// The IPv4 addresses of an answer's A records, each with its TTL.
pub fn addresses(answer: &Message) -> Vec<(Ipv4Addr, u32)> {
    if answer.metadata.response_code != ResponseCode::NoError {
        return Vec::new();
    }
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        })
        .collect()
}

/// `new`'s ports added to `old`'s: at most [`MAX_FQDN_PORTS`] ranges (fewer ports allowed
/// when more are named, never more). Returns whether some had to be left out.
fn merge_ports(allow: &mut FqdnAllow, any_port: bool, ports: &[FqdnPort]) -> bool {
    if any_port || allow.any_port != 0 {
        allow.any_port = 1;
        allow.port_count = 0;
        allow.ports = [FqdnPort::default(); MAX_FQDN_PORTS];
        return false;
    }
    let mut left_out = false;
    for p in ports {
        let count = usize::from(allow.port_count);
        if allow.ports[..count].contains(p) {
            continue;
        }
        if count == MAX_FQDN_PORTS {
            left_out = true;
            continue;
        }
        allow.ports[count] = *p;
        allow.port_count += 1;
    }
    left_out
}

/// Writes learned addresses to the node's maps, and counts what it did.
pub struct Learner {
    config: FqdnConfig,
    maps: Mutex<Option<FqdnMaps>>,
    /// Queries answered NXDOMAIN because no rule names the name.
    pub denied: AtomicU64,
    /// Addresses written (new or renewed).
    pub learned: AtomicU64,
    /// Answers that could not be learned (SERVFAIL sent instead).
    pub failed: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

/// The outcome of [`Learner::learn`].
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// Every address is written: send the answer.
    Written(usize),
    /// Something could not be written: send SERVFAIL.
    Failed(String),
}

impl Learner {
    pub fn new(config: FqdnConfig) -> Learner {
        Learner {
            config,
            maps: Mutex::new(None),
            denied: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_report: Mutex::new(None),
        }
    }

    fn with_maps<T>(&self, f: impl FnOnce(&mut FqdnMaps) -> T) -> Result<T, String> {
        let mut guard = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(FqdnMaps::open(&self.config.pin_dir).map_err(|e| {
                format!(
                    "{:#} (is twilld running with its pins in {}?)",
                    anyhow::Error::new(e),
                    self.config.pin_dir.display()
                )
            })?);
        }
        let maps = guard.as_mut().expect("opened above");
        Ok(f(maps))
    }

    /// Counts a denied query, and says so at most once a second.
    pub fn denied(&self, pod: Ipv4Addr, name: &str) {
        let total = self.denied.fetch_add(1, Ordering::Relaxed) + 1;
        if self.due() {
            info!(
                "FQDNPolicy: pod {pod} asked {name:?}, which no rule allows: NXDOMAIN \
                 ({total} such queries so far)"
            );
        }
    }

    fn due(&self) -> bool {
        let mut last = self.last_report.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Writes the answer's addresses for the pod at `pod`, allowed to `ports`.
    pub fn learn(
        &self,
        pod: Ipv4Addr,
        name: &str,
        answer: &Message,
        any_port: bool,
        ports: &[FqdnPort],
    ) -> Learned {
        let addresses = addresses(answer);
        if addresses.is_empty() {
            return Learned::Written(0);
        }
        let now = monotonic_ns();
        let min_ttl = self.config.min_ttl.as_secs();
        let name_id = fqdn_name_id(name);
        let pin_dir = self.config.pin_dir.clone();
        let result = self.with_maps(|maps| -> Result<(usize, bool), String> {
            let mut left_out = false;
            for (ip, ttl) in &addresses {
                let key = FqdnKey {
                    pod_ip: wire_ip(pod.octets()),
                    peer_ip: wire_ip(ip.octets()),
                };
                let hold = u64::from(*ttl).max(min_ttl) * 1_000_000_000;
                let mut allow = match maps.get(&key) {
                    Some(old) if old.expires_ns > now => old,
                    _ => FqdnAllow::default(),
                };
                allow.expires_ns = allow.expires_ns.max(now + hold);
                allow.learned_ns = now;
                allow.name = name_id;
                allow.ttl = *ttl;
                left_out |= merge_ports(&mut allow, any_port, ports);
                maps.learn(&pin_dir, key, allow, name)
                    .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
            }
            Ok((addresses.len(), left_out))
        });
        match result.and_then(|r| r) {
            Ok((n, left_out)) => {
                self.learned.fetch_add(n as u64, Ordering::Relaxed);
                if left_out {
                    warn!(
                        "FQDNPolicy: {name:?} for pod {pod}: its rules name more than \
                         {MAX_FQDN_PORTS} port ranges; only the first {MAX_FQDN_PORTS} are allowed"
                    );
                }
                Learned::Written(n)
            }
            Err(e) => {
                // The maps may have been replaced (twilld restarted over new pins): open
                // them again next time.
                *self.maps.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let total = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(
                    "FQDNPolicy: cannot write the addresses of {name:?} for pod {pod}, \
                     answering SERVFAIL ({total} so far): {e}"
                );
                Learned::Failed(e)
            }
        }
    }

    /// Removes entries that expired, and entries of pods no FQDNPolicy selects any more
    /// (their addresses may go to another pod). Returns how many went. Does nothing until
    /// the rules are loaded: the entries of a restarted server's pods stay.
    pub fn sweep(&self, rules: &FqdnRules) -> usize {
        if !rules.loaded {
            return 0;
        }
        let now = monotonic_ns();
        self.with_maps(|maps| {
            let unselected: BTreeSet<FqdnKey> = maps
                .entries()
                .into_iter()
                .filter(|(k, _)| !rules.selects(Ipv4Addr::from(u32::from_be(k.pod_ip))))
                .map(|(k, _)| k)
                .collect();
            let mut removed = 0;
            for key in &unselected {
                if maps.remove(key) {
                    removed += 1;
                }
            }
            removed + maps.sweep(now)
        })
        .unwrap_or(0)
    }
}

/// Sweeps the maps every `every` while the server runs.
pub async fn keep_swept(learner: Arc<Learner>, rules: CurrentRules, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = rules.borrow().clone();
        let learner = Arc::clone(&learner);
        let _ = tokio::task::spawn_blocking(move || learner.sweep(&current)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(protocol: u8, lo: u16, hi: u16) -> FqdnPort {
        FqdnPort {
            lo,
            hi,
            protocol,
            _pad: [0; 3],
        }
    }

    fn store(text: &str, records: &[(&str, &str, &str)]) -> Store {
        let (parsed, errors) = twill_k8s::parse("test", text);
        assert!(errors.is_empty(), "{errors:?}");
        let mut store = Store::new();
        for (i, p) in parsed.into_iter().enumerate() {
            store.insert(
                format!("o{i}"),
                twill_store::Entry::Object(Box::new(p.object)),
            );
        }
        for (i, (ns, name, ip)) in records.iter().enumerate() {
            store.insert(
                format!("r{i}"),
                twill_store::Entry::Pod(twill_api::cluster::PodRecord {
                    namespace: (*ns).to_owned(),
                    name: (*name).to_owned(),
                    node: "n1".to_owned(),
                    ip: ip.parse().unwrap(),
                    container_id: "c".into(),
                    ifname: "eth0".into(),
                }),
            );
        }
        store
    }

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
spec: {containers: [{name: c}]}
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: allowed.example}]
    ports: [{port: 80}, {port: 443, protocol: TCP}]
  - toFQDNs: [{matchPattern: "*.cdn.example"}]
  - toFQDNs: [{matchName: allowed.example}]
    ports: [{port: 53, protocol: SCTP}]
"#;

    #[test]
    fn selected_pods_get_their_rules_and_others_are_untouched() {
        let rules = FqdnRules::from_store(&store(
            OBJECTS,
            &[
                ("default", "client", "10.244.0.2"),
                ("default", "other", "10.244.0.3"),
            ],
        ));
        let client: Ipv4Addr = "10.244.0.2".parse().unwrap();
        assert!(rules.selects(client));
        assert_eq!(
            rules.verdict("10.244.0.3".parse().unwrap(), "x.example"),
            Verdict::NotSelected
        );
        assert_eq!(rules.verdict(client, "other.example"), Verdict::Denied);
        assert_eq!(
            rules.verdict(client, "Allowed.Example."),
            Verdict::Allowed {
                any_port: false,
                ports: vec![port(6, 80, 80), port(6, 443, 443), port(132, 53, 53)],
            },
            "ports of every rule naming it, SCTP kept apart from TCP"
        );
        assert_eq!(
            rules.verdict(client, "a.cdn.example"),
            Verdict::Allowed {
                any_port: true,
                ports: vec![]
            }
        );
        assert_eq!(rules.verdict(client, "a.b.cdn.example"), Verdict::Denied);
    }

    #[test]
    fn sweeping_waits_for_the_rules() {
        // Before the store's first snapshot nothing is known: nothing may be swept (the
        // maps are not even opened).
        let learner = Learner::new(FqdnConfig {
            pin_dir: "/nonexistent".into(),
            min_ttl: Duration::from_secs(1),
        });
        assert_eq!(learner.sweep(&FqdnRules::default()), 0);
        assert!(learner.maps.lock().unwrap().is_none());
        assert!(FqdnRules::from_store(&Store::new()).loaded);
    }

    #[test]
    fn no_policies_select_nobody() {
        let text = OBJECTS.split("---").take(2).collect::<Vec<_>>().join("---");
        let rules = FqdnRules::from_store(&store(&text, &[("default", "client", "10.244.0.2")]));
        assert!(rules.is_empty());
    }

    #[test]
    fn ports_merge_up_to_the_limit_and_any_port_wins() {
        let mut a = FqdnAllow::default();
        let many: Vec<FqdnPort> = (1..=10).map(|p| port(6, p, p)).collect();
        assert!(merge_ports(&mut a, false, &many), "two left out");
        assert_eq!(usize::from(a.port_count), MAX_FQDN_PORTS);
        assert!(a.allows_port(6, 8) && !a.allows_port(6, 9));
        assert!(!merge_ports(&mut a, false, &many[..3]), "already there");
        assert!(!merge_ports(&mut a, true, &[]));
        assert!(a.allows_port(17, 9999));
    }
}
