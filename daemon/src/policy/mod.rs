//! NetworkPolicy on this node: keeps the policy maps equal to what etcd says.
//!
//! Each pass compiles ([`twill_policy::compile`]) the tables of this node's pods from the
//! NetworkPolicies, Namespaces and Pods in etcd and the pods' addresses (this node's from
//! its own allocations, other nodes' from their records), and writes them:
//!
//! 1. every distinct table not yet in the maps, under a new table id (pods with equal
//!    tables share one);
//! 2. each pod's endpoint entry, pointing at its table: one map update, so a packet sees
//!    the old table or the new one, never a mix;
//! 3. then tables no pod uses any more are removed.
//!
//! A pod's policy is also computed when its programs are attached ([`PolicyState::admit`],
//! from the CNI ADD), before the attach, so a pod is filtered from its first packet; a pod
//! a policy isolates gets its programs attached before ADD returns (see `node`).
//!
//! Fails closed: a table that cannot be written (a full map) leaves its pods pointing at
//! no table, which denies every isolated direction; until the first snapshot of the store,
//! new pods are denied both ways. Either is logged and kept in [`PolicyState::problems`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use tracing::{info, warn};
use twill_abi::{
    lb::wire_ip,
    policy::{MODE_ENFORCE, POLICY_COUNTERS, PolicyEndpoint, RuleSlotKey},
};
use twill_api::cluster::PodRecord;
use twill_bpf::{Datapath, DatapathError};
use twill_k8s::Object;
use twill_policy::{
    ClusterView, Direction, EndpointPolicy, PodView, RuleRef,
    entries::{TableEntries, endpoint_entry, table_entries},
};

use crate::{
    config::Config,
    node::Node,
    watch::{Entry, Pass, parse},
};

/// The store's side of a compile: everything but this node's pod addresses.
#[derive(Default)]
pub struct Inputs {
    namespaces: Vec<twill_k8s::Namespace>,
    policies: Vec<twill_k8s::NetworkPolicy>,
    fqdn_policies: Vec<twill_k8s::FqdnPolicy>,
    /// Pod objects (labels, named ports) by namespace and name.
    objects: BTreeMap<(String, String), twill_k8s::Pod>,
    /// Other nodes' pod records.
    records: Vec<PodRecord>,
}

impl Inputs {
    fn from_store(store: &crate::watch::Store<Entry>, me: &str) -> Inputs {
        let mut inputs = Inputs::default();
        for entry in store.values() {
            match entry {
                Entry::Object(o) => match o.as_ref() {
                    Object::NetworkPolicy(p) => inputs.policies.push(p.clone()),
                    Object::FqdnPolicy(p) => inputs.fqdn_policies.push(p.clone()),
                    Object::Namespace(n) => inputs.namespaces.push(n.clone()),
                    Object::Pod(p) => {
                        inputs
                            .objects
                            .insert((p.namespace.clone(), p.name.clone()), p.clone());
                    }
                    _ => {}
                },
                Entry::Pod(r) if r.node != me => inputs.records.push(r.clone()),
                Entry::Pod(_) => {}
            }
        }
        inputs
    }

    /// The compile's view: other nodes' pods from their records, this node's from `local`.
    fn view(&self, me: &str, local: &[LocalPod]) -> ClusterView {
        let pod = |namespace: &str, name: &str, node: &str, ip: Ipv4Addr| {
            let object = self.objects.get(&(namespace.to_owned(), name.to_owned()));
            PodView {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                node: node.to_owned(),
                ip,
                labels: object.map(|o| o.labels.clone()).unwrap_or_default(),
                named_ports: object.map(|o| o.named_ports.clone()).unwrap_or_default(),
            }
        };
        let mut pods: Vec<PodView> = self
            .records
            .iter()
            .map(|r| pod(&r.namespace, &r.name, &r.node, r.ip))
            .collect();
        pods.extend(local.iter().filter_map(|l| {
            let (ns, name) = l.pod.as_ref()?;
            Some(pod(ns, name, me, l.ip))
        }));
        ClusterView::new(self.namespaces.clone(), pods, self.policies.clone())
            .with_fqdn_policies(self.fqdn_policies.clone())
    }
}

/// A pod with an address on this node; `pod` is its namespace and name when it has them.
#[derive(Clone, Debug)]
pub struct LocalPod {
    pub ip: Ipv4Addr,
    pub pod: Option<(String, String)>,
}

/// What a counter slot counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Counted {
    Rule(RuleRef),
    /// Denied (or, audited, would-be denied) packets of a pod in a direction.
    Denied(Ipv4Addr, Direction),
}

/// Counter slots: stable per rule and per pod direction while they exist. Slot 0 is never
/// handed out: bits beyond the map's room count there.
#[derive(Default)]
struct Slots {
    by_what: HashMap<Counted, u32>,
    free: Vec<u32>,
    next: u32,
    /// Whether something had to count in slot 0 for want of a slot.
    overflowed: bool,
}

impl Slots {
    fn slot(&mut self, datapath: &mut Datapath, what: Counted) -> u32 {
        if let Some(s) = self.by_what.get(&what) {
            return *s;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.next + 1 < POLICY_COUNTERS => {
                self.next += 1;
                self.next
            }
            None => {
                self.overflowed = true;
                return 0;
            }
        };
        if let Err(e) = datapath.reset_policy_counter(slot) {
            warn!(
                "resetting policy counter {slot}: {:#}",
                anyhow::Error::new(e)
            );
        }
        self.by_what.insert(what, slot);
        slot
    }

    /// Frees the slots of what is no longer counted.
    fn keep_only(&mut self, live: &BTreeSet<Counted>) {
        let gone: Vec<Counted> = self
            .by_what
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(s) = self.by_what.remove(&k) {
                self.free.push(s);
            }
        }
    }
}

/// A table in the maps.
struct Table {
    id: u32,
    entries: TableEntries,
    slots: Vec<(RuleSlotKey, u32)>,
}

/// The node's policy state, kept with the dataplane (under its lock).
#[derive(Default)]
pub struct PolicyState {
    /// The store's latest contents; `None` until the first snapshot.
    inputs: Option<Arc<Inputs>>,
    /// Tables in the maps, by content.
    tables: HashMap<EndpointPolicy, Table>,
    /// Endpoint entries as written, by pod address (wire order), with their pods' tables.
    endpoints: BTreeMap<u32, (PolicyEndpoint, Option<EndpointPolicy>)>,
    slots: Slots,
    /// Whether the maps of an earlier run have been pruned.
    pruned: bool,
    /// Pods admitted since the last full pass: that pass's list of local pods was taken
    /// before it took the lock and may not have them yet; it must not remove them.
    admitted: BTreeSet<u32>,
    /// What is wrong now, for status and logs.
    pub problems: Vec<String>,
    /// The view of the last full pass: the next one compiles only the pods a change
    /// since can affect.
    last_view: Option<Arc<ClusterView>>,
    /// How many pods the last full pass compiled.
    pub compiled_last: usize,
}

/// An entry that denies every direction: a pod whose policy is not known yet.
const DENY_ALL: PolicyEndpoint = PolicyEndpoint {
    table: 0,
    modes: [MODE_ENFORCE, MODE_ENFORCE],
    // Egress is denied whole already.
    fqdn: 0,
    _pad: 0,
    any_ports: [0; 2],
    deny_counter: [0; 2],
};

impl PolicyState {
    /// Computes and writes the policy of the pod at `ip` before its programs are attached.
    /// Returns whether a policy isolates it in some direction (then the caller attaches
    /// its programs before answering).
    pub fn admit(
        &mut self,
        datapath: &mut Datapath,
        me: &str,
        local: &[LocalPod],
        ip: Ipv4Addr,
    ) -> bool {
        self.admitted.insert(wire_ip(ip.octets()));
        match self.write(datapath, me, local, Some(ip), false) {
            Ok(()) => {}
            Err(e) => {
                let problem = format!("policy of pod {ip}: {:#}", anyhow::Error::new(e));
                warn!("{problem}");
                self.problems.push(problem);
            }
        }
        self.endpoints
            .get(&wire_ip(ip.octets()))
            .is_none_or(|(e, _)| e.modes != [0, 0])
    }

    /// One full pass: every local pod's table written, pods gone removed, unused tables
    /// and slots released.
    /// `full`: compile every local pod, not only those the changes since the last pass
    /// can affect (the periodic pass does, as a safety net). Returns whether every write
    /// succeeded.
    pub fn reconcile(
        &mut self,
        datapath: &mut Datapath,
        me: &str,
        local: &[LocalPod],
        full: bool,
    ) -> bool {
        self.problems.clear();
        self.slots.overflowed = false;
        self.verify_endpoints(datapath);
        match self.write(datapath, me, local, None, full) {
            Ok(()) => true,
            Err(e) => {
                let problem = format!("programming network policies: {:#}", anyhow::Error::new(e));
                warn!("{problem}");
                self.problems.push(problem);
                false
            }
        }
    }

    /// Drift repair: endpoint entries changed or removed behind this daemon's back (another
    /// writer of the pinned maps) are forgotten, so this pass writes them again. One walk
    /// of the endpoint map, one entry per local pod. (Tables are not walked: they are much
    /// larger; `netctl why` checks them.)
    fn verify_endpoints(&mut self, datapath: &mut Datapath) {
        if !self.pruned {
            return;
        }
        let Ok(live) = datapath.policy_endpoints() else {
            return;
        };
        let live: HashMap<u32, PolicyEndpoint> = live.into_iter().collect();
        let drifted: Vec<u32> = self
            .endpoints
            .iter()
            .filter(|(ip, (e, _))| live.get(ip) != Some(e))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in drifted {
            warn!(
                pod = %Ipv4Addr::from(u32::from_be(ip)),
                "policy entry changed behind twilld's back: rewriting it"
            );
            self.endpoints.remove(&ip);
        }
    }

    /// Writes the tables and endpoint entries of the local pods (`only`: of that one).
    fn write(
        &mut self,
        datapath: &mut Datapath,
        me: &str,
        local: &[LocalPod],
        only: Option<Ipv4Addr>,
        full: bool,
    ) -> Result<(), DatapathError> {
        if !self.pruned {
            self.take_over(datapath)?;
        }
        let Some(inputs) = self.inputs.clone() else {
            // No snapshot of the store yet: what policies say is unknown. Deny.
            let mut failed = None;
            for l in local.iter().filter(|l| only.is_none_or(|ip| ip == l.ip)) {
                if let Err(e) = self.set_endpoint(datapath, l.ip, DENY_ALL, None) {
                    failed.get_or_insert(e);
                }
            }
            return failed.map_or(Ok(()), Err);
        };
        let view = Arc::new(inputs.view(me, local));
        // Which pods to compile: one (admission); on a full pass, those a change since the
        // last pass can affect, or all of them (the first pass, or `full`).
        let wanted: Option<BTreeSet<Ipv4Addr>> = match (only, &self.last_view) {
            (Some(ip), _) => Some(BTreeSet::from([ip])),
            (None, Some(old)) if !full => {
                let ips: Vec<Ipv4Addr> = local.iter().map(|l| l.ip).collect();
                let mut wanted = twill_policy::delta::affected(old, &view, &ips);
                // Pods whose compiled table is not known (an earlier run's entry).
                wanted.extend(local.iter().map(|l| l.ip).filter(|ip| {
                    self.endpoints
                        .get(&wire_ip(ip.octets()))
                        .is_none_or(|(_, p)| p.is_none())
                }));
                Some(wanted)
            }
            _ => None,
        };
        let compiled = twill_policy::compile(&view, |p| {
            p.node == me && wanted.as_ref().is_none_or(|w| w.contains(&p.ip))
        });
        if only.is_none() {
            self.compiled_last = compiled.endpoints.len();
            self.last_view = Some(view.clone());
        }
        let mut failed = None;
        for l in local.iter().filter(|l| only.is_none_or(|ip| ip == l.ip)) {
            let policy = if wanted.as_ref().is_none_or(|w| w.contains(&l.ip)) {
                compiled.endpoints.get(&l.ip).map(|c| c.policy.clone())
            } else {
                // Not affected: its table as compiled before.
                self.endpoints
                    .get(&wire_ip(l.ip.octets()))
                    .and_then(|(_, p)| p.clone())
            };
            let entry = match &policy {
                None => PolicyEndpoint::default(),
                Some(p) if p.is_open() => PolicyEndpoint::default(),
                Some(p) => {
                    let deny = [
                        self.slots
                            .slot(datapath, Counted::Denied(l.ip, Direction::Ingress)),
                        self.slots
                            .slot(datapath, Counted::Denied(l.ip, Direction::Egress)),
                    ];
                    match self.ensure_table(datapath, p) {
                        Ok(id) => endpoint_entry(id, p, deny),
                        Err(e) => {
                            // Fail closed: no table, so every isolated direction denies.
                            let name = l
                                .pod
                                .as_ref()
                                .map_or_else(String::new, |(ns, n)| format!(" ({ns}/{n})"));
                            let problem = format!(
                                "pod {}{name} is denied wherever a policy isolates it: its table was not written: {:#}",
                                l.ip,
                                anyhow::Error::new(e)
                            );
                            warn!("{problem}");
                            self.problems.push(problem);
                            endpoint_entry(0, p, deny)
                        }
                    }
                }
            };
            for d in Direction::BOTH {
                if let Some(error) = policy.as_ref().and_then(|p| p.direction(d).error.clone()) {
                    self.problems.push(format!("pod {} {d}: {error}", l.ip));
                }
            }
            // One pod's failure does not leave the others on their old (maybe wider) entries.
            if let Err(e) = self.set_endpoint(datapath, l.ip, entry, policy) {
                failed.get_or_insert(e);
            }
        }
        if only.is_none() {
            let keep: BTreeSet<u32> = local.iter().map(|l| wire_ip(l.ip.octets())).collect();
            let gone: Vec<u32> = self
                .endpoints
                .keys()
                .filter(|k| !keep.contains(k) && !self.admitted.contains(k))
                .copied()
                .collect();
            self.admitted.clear();
            for ip in gone {
                match datapath.remove_policy_endpoint(ip) {
                    Ok(()) => {
                        self.endpoints.remove(&ip);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Err(e) = self.release_unused(datapath) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn set_endpoint(
        &mut self,
        datapath: &mut Datapath,
        ip: Ipv4Addr,
        entry: PolicyEndpoint,
        policy: Option<EndpointPolicy>,
    ) -> Result<(), DatapathError> {
        let key = wire_ip(ip.octets());
        if let Some((e, p)) = self.endpoints.get_mut(&key)
            && *e == entry
        {
            // The same entry; keep the table it stands for (after a restart it was not
            // known).
            *p = policy;
            return Ok(());
        }
        datapath.set_policy_endpoint(key, entry)?;
        self.endpoints.insert(key, (entry, policy));
        Ok(())
    }

    /// The id of `policy`'s table, written first if it is not in the maps yet.
    fn ensure_table(
        &mut self,
        datapath: &mut Datapath,
        policy: &EndpointPolicy,
    ) -> Result<u32, DatapathError> {
        if let Some(t) = self.tables.get(policy) {
            return Ok(t.id);
        }
        let id = datapath.policy_next_table()?;
        datapath
            .set_policy_next_table(id.wrapping_add(1).max(1) & twill_abi::policy::MAX_TABLE_ID)?;
        let entries = table_entries(id, policy);
        let mut slots = Vec::new();
        for d in Direction::BOTH {
            for (bit, b) in policy.direction(d).bits.iter().enumerate() {
                let slot = self.slots.slot(datapath, Counted::Rule(b.rule.clone()));
                slots.push((
                    RuleSlotKey {
                        table: id,
                        direction: d.index(),
                        bit: bit as u32,
                    },
                    slot,
                ));
            }
        }
        if let Err(e) = datapath.insert_policy_table(&entries.peers, &entries.ports, &slots) {
            // Nothing of a table is left half-written.
            let _ = remove_table(datapath, &entries, &slots);
            return Err(e);
        }
        self.tables
            .insert(policy.clone(), Table { id, entries, slots });
        Ok(id)
    }

    /// Removes tables no endpoint points at, and frees counter slots nothing uses.
    fn release_unused(&mut self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        let used: BTreeSet<u32> = self.endpoints.values().map(|(e, _)| e.table).collect();
        let unused: Vec<EndpointPolicy> = self
            .tables
            .iter()
            .filter(|(_, t)| !used.contains(&t.id))
            .map(|(p, _)| p.clone())
            .collect();
        for p in unused {
            if let Some(t) = self.tables.remove(&p) {
                remove_table(datapath, &t.entries, &t.slots)?;
            }
        }
        let mut live = BTreeSet::new();
        for p in self.tables.keys() {
            for d in Direction::BOTH {
                live.extend(
                    p.direction(d)
                        .bits
                        .iter()
                        .map(|b| Counted::Rule(b.rule.clone())),
                );
            }
        }
        for (ip, (e, _)) in &self.endpoints {
            if e.table != 0 || e.modes != [0, 0] {
                let ip = Ipv4Addr::from(u32::from_be(*ip));
                live.insert(Counted::Denied(ip, Direction::Ingress));
                live.insert(Counted::Denied(ip, Direction::Egress));
            }
        }
        self.slots.keep_only(&live);
        Ok(())
    }

    /// At the first pass: what an earlier run left in the maps. Endpoint entries stay (so
    /// pods keep their verdicts until rewritten); tables are rewritten under new ids, and
    /// the old ones go once no entry points at them, at the end of this pass.
    fn take_over(&mut self, datapath: &mut Datapath) -> Result<(), DatapathError> {
        let (peers, ports, slots) = datapath.policy_keys()?;
        let endpoints = datapath.policy_endpoints()?;
        let old_tables: BTreeSet<u32> = endpoints.iter().map(|(_, e)| e.table).collect();
        // New tables get ids above every id still in the maps, even when the counter in
        // TWILL_POL_STATE is behind them (the map was reset or replaced at an upgrade):
        // a reused id would put a new table's entries into a live old table's scope.
        let highest = old_tables
            .iter()
            .copied()
            .chain(peers.iter().map(|(_, k)| table_of(k.scope)))
            .chain(ports.iter().map(|(_, k)| table_of(k.scope)))
            .chain(slots.iter().map(|s| s.table))
            .max()
            .unwrap_or(0);
        if highest != 0 && datapath.policy_next_table()? <= highest {
            datapath.set_policy_next_table(
                highest.wrapping_add(1).max(1) & twill_abi::policy::MAX_TABLE_ID,
            )?;
        }
        for (ip, e) in endpoints {
            self.endpoints.insert(ip, (e, None));
        }
        // Tables of the earlier run: kept as contentless placeholders until unused.
        for id in old_tables.into_iter().filter(|id| *id != 0) {
            let entries = TableEntries {
                peers: peers
                    .iter()
                    .filter(|(_, k)| table_of(k.scope) == id)
                    .map(|k| (*k, 0))
                    .collect(),
                ports: ports
                    .iter()
                    .filter(|(_, k)| table_of(k.scope) == id)
                    .map(|k| (*k, 0))
                    .collect(),
            };
            let table_slots = slots
                .iter()
                .filter(|s| s.table == id)
                .map(|s| (*s, 0))
                .collect();
            self.tables.insert(
                placeholder(id),
                Table {
                    id,
                    entries,
                    slots: table_slots,
                },
            );
        }
        // Entries of tables nothing points at: gone now.
        let live: BTreeSet<u32> = self.tables.values().map(|t| t.id).collect();
        let stale_peers: Vec<_> = peers
            .into_iter()
            .filter(|(_, k)| !live.contains(&table_of(k.scope)))
            .collect();
        let stale_ports: Vec<_> = ports
            .into_iter()
            .filter(|(_, k)| !live.contains(&table_of(k.scope)))
            .collect();
        let stale_slots: Vec<_> = slots
            .into_iter()
            .filter(|s| !live.contains(&s.table))
            .collect();
        datapath.remove_policy_entries(&stale_peers, &stale_ports, &stale_slots)?;
        self.pruned = true;
        Ok(())
    }
}

impl PolicyState {
    /// Whether a full pass over a snapshot of the store has written every local pod's
    /// policy (what makes maps that started empty safe to switch programs to).
    pub fn refilled(&self) -> bool {
        self.last_view.is_some()
    }
}

/// Names for flow records: which compiled table a table id or a pod stands for.
impl PolicyState {
    /// The compiled table written under `id` (bit `i` of a direction is the rule
    /// `direction(d).bits[i].rule`); `None` for 0, for an id no longer in the maps, and
    /// for an earlier run's table (its content is not known).
    pub fn table(&self, id: u32) -> Option<&EndpointPolicy> {
        if id == 0 {
            return None;
        }
        self.tables
            .iter()
            .find(|(p, t)| t.id == id && **p != placeholder(id))
            .map(|(p, _)| p)
    }

    /// The compiled table of the local pod at `ip`, as last written (also for a pod whose
    /// entry points at no table because its table could not be written).
    pub fn pod_table(&self, ip: Ipv4Addr) -> Option<&EndpointPolicy> {
        self.endpoints
            .get(&wire_ip(ip.octets()))
            .and_then(|(_, p)| p.as_ref())
    }
}

impl PolicyState {
    /// Problems and map fill, for STATUS: from what this daemon wrote, no map walk.
    pub fn status(&self, datapath: &Datapath) -> twill_api::PolicyStatus {
        let fill = |name: &str, entries: usize| twill_api::MapFill {
            name: name.to_owned(),
            entries: entries as u64,
            capacity: u64::from(datapath.capacity(name)),
        };
        let maps = vec![
            fill(twill_abi::maps::POLICY_ENDPOINTS, self.endpoints.len()),
            fill(
                twill_abi::maps::POLICY_PEERS,
                self.tables.values().map(|t| t.entries.peers.len()).sum(),
            ),
            fill(
                twill_abi::maps::POLICY_PORTS,
                self.tables.values().map(|t| t.entries.ports.len()).sum(),
            ),
            fill(
                twill_abi::maps::POLICY_RULES,
                self.tables.values().map(|t| t.slots.len()).sum(),
            ),
            fill(twill_abi::maps::POLICY_COUNTERS, self.slots.by_what.len()),
        ];
        let mut problems = self.problems.clone();
        for m in &maps {
            if m.ratio() >= PRESSURE {
                problems.push(format!(
                    "{} is {:.0}% full ({} of {} entries)",
                    m.name,
                    m.ratio() * 100.0,
                    m.entries,
                    m.capacity
                ));
            }
        }
        if self.slots.overflowed {
            problems.push(format!(
                "more rules and pods to count than {} counters: some share the overflow counter 0",
                POLICY_COUNTERS
            ));
        }
        twill_api::PolicyStatus {
            synced: self.inputs.is_some(),
            problems,
            maps,
        }
    }

    /// Every local pod's entry and every rule's counter, named (`netctl`), with the fill
    /// of the policy conntrack (a walk of that LRU map).
    pub fn report(
        &self,
        datapath: &mut Datapath,
        me: &str,
        local: &[LocalPod],
    ) -> Result<twill_api::PolicyReport, DatapathError> {
        let mut report = self.counters(datapath, me, local)?;
        if let Ok(flows) = datapath.policy_flow_count() {
            report.status.maps.push(twill_api::MapFill {
                name: twill_abi::maps::POLICY_FLOWS.to_owned(),
                entries: flows,
                capacity: u64::from(datapath.capacity(twill_abi::maps::POLICY_FLOWS)),
            });
        }
        Ok(report)
    }

    /// [`Self::report`] without the walk of the policy conntrack: what the metrics read at
    /// every scrape.
    pub fn counters(
        &self,
        datapath: &mut Datapath,
        me: &str,
        local: &[LocalPod],
    ) -> Result<twill_api::PolicyReport, DatapathError> {
        // Only the slots in use are read (one lookup each), not the whole counter map.
        let slots: BTreeSet<u32> = self
            .slots
            .by_what
            .values()
            .copied()
            .chain(self.endpoints.values().flat_map(|(e, _)| e.deny_counter))
            .collect();
        let slots: Vec<u32> = slots.into_iter().collect();
        let counters: HashMap<u32, u64> = slots
            .iter()
            .copied()
            .zip(datapath.policy_counters_of(&slots)?)
            .collect();
        let count = |slot: u32| counters.get(&slot).copied().unwrap_or(0);
        let names: HashMap<Ipv4Addr, String> = local
            .iter()
            .filter_map(|l| Some((l.ip, l.pod.as_ref().map(|(ns, n)| format!("{ns}/{n}"))?)))
            .collect();
        let pods = self
            .endpoints
            .iter()
            .map(|(ip, (e, policy))| {
                let ip = Ipv4Addr::from(u32::from_be(*ip));
                let mode = |m: u8| match m {
                    twill_abi::policy::MODE_OPEN => "open",
                    MODE_ENFORCE => "enforce",
                    twill_abi::policy::MODE_AUDIT => "audit",
                    _ => "?",
                };
                let isolated = |d: Direction| {
                    policy.as_ref().map_or_else(Vec::new, |p| {
                        p.direction(d)
                            .isolated_by
                            .iter()
                            .map(ToString::to_string)
                            .collect()
                    })
                };
                twill_api::PolicyPodReport {
                    ip,
                    pod: names.get(&ip).cloned(),
                    table: e.table,
                    modes: [mode(e.modes[0]).to_owned(), mode(e.modes[1]).to_owned()],
                    isolated_by: [isolated(Direction::Ingress), isolated(Direction::Egress)],
                    denied: [count(e.deny_counter[0]), count(e.deny_counter[1])],
                }
            })
            .collect();
        let mut rules: Vec<twill_api::RuleCount> = self
            .slots
            .by_what
            .iter()
            .filter_map(|(what, slot)| match what {
                Counted::Rule(r) => Some(twill_api::RuleCount {
                    policy: r.policy.to_string(),
                    direction: r.direction.to_string(),
                    rule: r.index,
                    allowed: count(*slot),
                }),
                Counted::Denied(..) => None,
            })
            .collect();
        rules.sort_by(|a, b| {
            (&a.policy, &a.direction, a.rule).cmp(&(&b.policy, &b.direction, b.rule))
        });
        Ok(twill_api::PolicyReport {
            node: me.to_owned(),
            status: self.status(datapath),
            pods,
            rules,
        })
    }
}

/// A map this full is reported as a problem.
const PRESSURE: f64 = 0.9;

fn table_of(scope: u32) -> u32 {
    u32::from_be(scope) >> 1
}

/// A content that no compile produces, standing for an earlier run's table `id`: its
/// error names it, so no real table equals it.
fn placeholder(id: u32) -> EndpointPolicy {
    let mut p = EndpointPolicy {
        ingress: open_table(),
        egress: open_table(),
        fqdn: false,
    };
    p.ingress.error = Some(format!("table {id} of an earlier run"));
    p
}

fn open_table() -> twill_policy::DirectionTable {
    twill_policy::DirectionTable::open()
}

fn remove_table(
    datapath: &mut Datapath,
    entries: &TableEntries,
    slots: &[(RuleSlotKey, u32)],
) -> Result<(), DatapathError> {
    let peers: Vec<_> = entries.peers.iter().map(|(k, _)| *k).collect();
    let ports: Vec<_> = entries.ports.iter().map(|(k, _)| *k).collect();
    let slot_keys: Vec<_> = slots.iter().map(|(k, _)| *k).collect();
    datapath.remove_policy_entries(&peers, &ports, &slot_keys)
}

pub async fn run(config: Config, node: Arc<Node>) {
    let me = config.node_name.clone();
    crate::watch::follow(&config, "policy", parse, |store, pass| {
        let inputs = Arc::new(Inputs::from_store(store, &me));
        let local = node.local_pods();
        let started = std::time::Instant::now();
        let summary = node.with_dataplane(|d| {
            d.policy.inputs = Some(inputs.clone());
            let ok = d
                .policy
                .reconcile(&mut d.datapath, &me, &local, pass != Pass::Changed);
            (
                ok,
                d.policy.tables.len(),
                d.policy.problems.clone(),
                d.policy.compiled_last,
            )
        });
        if let Some((ok, ..)) = summary {
            node.instruments
                .pass(crate::metrics::Loop::Policy, started.elapsed(), ok);
        }
        if let Some((_, tables, problems, compiled)) = summary
            && pass != Pass::Resync
        {
            info!(
                policies = inputs.policies.len(),
                pods = local.len(),
                tables,
                compiled,
                problems = problems.len(),
                took = ?started.elapsed(),
                "network policies reconciled"
            );
        }
    })
    .await
}
