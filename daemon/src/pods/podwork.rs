//! Pod work that no CNI call waits for: attaching a new pod's programs, and deleting a
//! deleted pod's veth pair.
//!
//! Both cost the kernel RCU grace periods under RTNL: a tcx attach waits for one per hook
//! (`tcx_entry_sync`), and deleting a device that carries tcx entries waits again as they
//! are taken off. Measured here, the attach alone is about 25 ms, five times the rest of
//! an ADD. So ADD queues the attach (`AttachPod` with `queue`) and returns, and DEL moves
//! the pod's interface out of the pod, renames the pair `tx…`/`ty…` and leaves the
//! deletion here.
//!
//! Until a pod's programs are on, its traffic to a Service address is not translated; it
//! meets the node's unreachable route for the service CIDR (see `vxlan`) and is refused,
//! never sent off the node. Sockets in the node's cgroup (every pod's, on a real node,
//! where `paths.cgroup_root` is the cgroup root) are translated at `connect` and `sendmsg`
//! anyway, from the first call. Attaches run in the order ADDs asked for them, before any
//! deletion.
//!
//! Restart-safe: a starting daemon attaches every pod interface it finds (see `main`), and
//! deletes every `tx`/`ty` pair it finds.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use rtnetlink::Handle;
use tracing::{debug, info, warn};
use twill_api::{PodWorkStatus, RETIRED_HOST_PREFIX, RETIRED_PEER_PREFIX, is_twill_ifname};

use crate::node::Node;

/// How often the namespace is checked for stray retired pairs when nothing happens.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How long deletions wait after the last CNI call: they hold RTNL through grace
/// periods, which would stall the netlink requests of a CNI call in progress (measured:
/// an ADD went from 5 to 45 ms behind background work).
const QUIET: Duration = Duration::from_millis(200);

/// The queues, kept with the dataplane (under its lock).
#[derive(Default)]
pub struct PodWork {
    /// Host-side pod interfaces whose programs are to be attached, in ADD order.
    attaching: VecDeque<String>,
    /// Host ends of deleted pods' pairs, renamed `tx…`, still to delete.
    retiring: VecDeque<String>,
    /// The last CNI request that queued work.
    last_call: Option<Instant>,
}

impl PodWork {
    pub fn status(&self) -> PodWorkStatus {
        PodWorkStatus {
            attaching: self.attaching.len() as u32,
            retiring: self.retiring.len() as u32,
        }
    }

    pub fn queue_attach(&mut self, ifname: &str) {
        self.last_call = Some(Instant::now());
        if !self.attaching.iter().any(|i| i == ifname) {
            self.attaching.push_back(ifname.to_owned());
        }
    }

    /// `ifname` needs no background attach any more: it is attached, or gone.
    pub fn forget_attach(&mut self, ifname: &str) {
        self.attaching.retain(|i| i != ifname);
    }

    pub fn retire(&mut self, host: String) {
        self.last_call = Some(Instant::now());
        if !self.retiring.contains(&host) {
            self.retiring.push_back(host);
        }
    }

    /// How long until deletions may run (see [`QUIET`]).
    fn quiet_in(&self) -> Duration {
        self.last_call
            .map_or(Duration::ZERO, |t| QUIET.saturating_sub(t.elapsed()))
    }
}

/// Works the queues until the daemon stops. `handle` is a netlink handle in the node's
/// namespace.
pub async fn run(node: Arc<Node>, handle: Handle) {
    sweep(&node, &handle).await;
    let mut last_sweep = Instant::now();
    loop {
        // Attaches first, all of them: a pod is waiting for each.
        while let Some(ifname) = next(&node, |w| w.attaching.front().cloned()) {
            attach(&node, &ifname).await;
        }
        let quiet_in = next(&node, |w| Some(w.quiet_in())).unwrap_or_default();
        let retired = next(&node, |w| w.retiring.front().cloned());
        match retired {
            Some(_) if !quiet_in.is_zero() => {
                let _ = tokio::time::timeout(quiet_in, node.work_wake.notified()).await;
            }
            // One deletion at a time, so a queued attach never waits behind many.
            Some(host) => delete(&node, &handle, &host).await,
            None => {
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    sweep(&node, &handle).await;
                    last_sweep = Instant::now();
                }
                let _ = tokio::time::timeout(SWEEP_EVERY, node.work_wake.notified()).await;
            }
        }
    }
}

fn next<T>(node: &Node, f: impl FnOnce(&mut PodWork) -> Option<T>) -> Option<T> {
    node.with_dataplane(|d| f(&mut d.work)).flatten()
}

async fn attach(node: &Arc<Node>, ifname: &str) {
    // The attach waits for the kernel: off the reactor.
    let attached = {
        let node = node.clone();
        let ifname = ifname.to_owned();
        tokio::task::spawn_blocking(move || {
            node.with_dataplane(|d| {
                // Still wanted? A DEL, or an `AttachPod` that waited, may have come first.
                if !d.work.attaching.contains(&ifname) {
                    return Ok(());
                }
                d.work.forget_attach(&ifname);
                d.ensure_attached(&ifname)
            })
        })
        .await
    };
    match attached {
        Ok(Some(Ok(()))) | Ok(None) => {}
        // The pod was deleted before its turn came: nothing to do.
        Ok(Some(Err(e))) if e.is_missing_interface() => {
            debug!(
                interface = ifname,
                "pod interface gone before its programs were attached"
            );
        }
        Ok(Some(Err(e))) => warn!(
            interface = ifname,
            "attaching the pod programs: {:#}",
            anyhow::Error::new(e)
        ),
        Err(e) => warn!(interface = ifname, "attaching the pod programs: {e}"),
    }
}

/// Deletes a retired pair (the peer goes with it) and then releases its pinned links,
/// which by then are already off the device.
async fn delete(node: &Arc<Node>, handle: &Handle, host: &str) {
    let started = Instant::now();
    if let Err(e) = twill_netlink::delete_link(handle, host).await {
        warn!(interface = host, "deleting a deleted pod's veth: {e}");
    }
    node.with_dataplane(|d| {
        d.remove_attached(host);
        d.work.retiring.retain(|h| h != host);
    });
    debug!(interface = host, took = ?started.elapsed(), "retired veth pair deleted");
}

/// Deletes retired pairs nobody accounts for: an earlier run's, or ones whose DEL died
/// before telling the daemon.
async fn sweep(node: &Arc<Node>, handle: &Handle) {
    let links = match twill_netlink::links(handle).await {
        Ok(links) => links,
        Err(e) => {
            warn!("listing interfaces for retired veth pairs: {e}");
            return;
        }
    };
    let mut stray = Vec::new();
    for link in &links {
        let Some(name) = twill_netlink::link_name(link) else {
            continue;
        };
        let retired = [RETIRED_HOST_PREFIX, RETIRED_PEER_PREFIX]
            .iter()
            .any(|prefix| is_twill_ifname(name, prefix));
        let known = next(node, |w| Some(w.retiring.iter().any(|h| h == name)));
        if retired && known != Some(true) {
            stray.push(name.to_owned());
        }
    }
    for name in stray {
        // Its peer may have gone with an earlier deletion in this loop.
        match twill_netlink::delete_link(handle, &name).await {
            Ok(true) => info!(interface = %name, "deleted a stray retired veth pair"),
            Ok(false) => {}
            Err(e) => warn!(interface = %name, "deleting a stray retired veth pair: {e}"),
        }
        node.with_dataplane(|d| d.remove_attached(&name));
    }
}
