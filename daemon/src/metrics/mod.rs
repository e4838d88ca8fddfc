//! Prometheus metrics, served at `/metrics` on `metrics.listen` (see `docs/observability.md`
//! for every name and label).
//!
//! Two kinds: what the daemon records as it works ([`Instruments`]: pass durations and
//! errors of the reconcile loops, socket request latency, the Service maps as last
//! written), and what is read when Prometheus scrapes ([`scrape`]: the datapath's
//! counters, policy verdicts, map fill, lease and etcd health). Nothing is read from the
//! kernel between scrapes. BGP session flaps are the exception: counted as they happen
//! ([`bgp`]), since a scrape would miss a session that went down and up between two.
//!
//! Cardinality is bounded by construction: labels take values from fixed lists (loops,
//! requests, directions, reasons, map names), except the per-rule policy counters, which
//! are bounded by the policy counter map, and the BGP ones, bounded by the speaker's peers.
//! No label names a pod.

pub mod bgp;
pub mod scrape;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};
use twill_api::Request;

/// A reconcile loop, as the `loop` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// Node records -> VXLAN routes, neighbours and FDB entries.
    Overlay,
    /// Services and endpoints -> the Service maps.
    Services,
    /// NetworkPolicies, Namespaces and Pods -> the policy maps.
    Policy,
    /// This node's pod addresses -> pod records in etcd.
    PodRecords,
}

impl Loop {
    pub const ALL: [Loop; 4] = [
        Loop::Overlay,
        Loop::Services,
        Loop::Policy,
        Loop::PodRecords,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Loop::Overlay => "overlay",
            Loop::Services => "services",
            Loop::Policy => "policy",
            Loop::PodRecords => "pod-records",
        }
    }
}

/// A socket request the CNI plugin makes, with the CNI command it makes it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniRequest {
    Allocate,
    AttachPod,
    Release,
    Lookup,
    Gc,
    Status,
}

impl CniRequest {
    pub const ALL: [CniRequest; 6] = [
        CniRequest::Allocate,
        CniRequest::AttachPod,
        CniRequest::Release,
        CniRequest::Lookup,
        CniRequest::Gc,
        CniRequest::Status,
    ];

    /// `None` for requests no CNI command makes (`netctl`'s policy report and flow records).
    pub fn of(request: &Request) -> Option<Self> {
        Some(match request {
            Request::Allocate { .. } => CniRequest::Allocate,
            Request::AttachPod { .. } => CniRequest::AttachPod,
            Request::Release { .. } => CniRequest::Release,
            Request::Lookup { .. } => CniRequest::Lookup,
            Request::Gc { .. } => CniRequest::Gc,
            Request::Status => CniRequest::Status,
            Request::Policy | Request::Flows { .. } | Request::DnsQueries { .. } => return None,
        })
    }

    /// The CNI command that makes this request.
    pub const fn command(self) -> &'static str {
        match self {
            CniRequest::Allocate | CniRequest::AttachPod => "ADD",
            CniRequest::Release => "DEL",
            CniRequest::Lookup => "CHECK",
            CniRequest::Gc => "GC",
            CniRequest::Status => "STATUS",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CniRequest::Allocate => "allocate",
            CniRequest::AttachPod => "attach-pod",
            CniRequest::Release => "release",
            CniRequest::Lookup => "lookup",
            CniRequest::Gc => "gc",
            CniRequest::Status => "status",
        }
    }
}

type LoopLabel = [(&'static str, &'static str); 1];
type RequestLabels = [(&'static str, &'static str); 2];
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Upper bounds of the pass duration buckets, in seconds: a pass with nothing to change
/// takes about a millisecond; thousands of policies take seconds.
const PASS_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the socket request buckets, in seconds: an allocation takes a few
/// hundred microseconds (a file write); an attach holds RTNL through grace periods.
const REQUEST_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

fn pass_histogram() -> Histogram {
    Histogram::new(PASS_BUCKETS)
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// What the daemon records as it works. Cheap to clone (shared counters); every loop and
/// the socket server hold one.
#[derive(Clone, Debug)]
pub struct Instruments {
    pass_seconds: Histograms<LoopLabel>,
    pass_errors: Family<LoopLabel, Counter>,
    request_seconds: Histograms<RequestLabels>,
    services: Arc<ServiceCounts>,
}

/// The Service maps as the services loop last wrote them.
#[derive(Debug, Default)]
struct ServiceCounts {
    /// Whether a pass has succeeded yet (until then the counts say nothing).
    known: AtomicBool,
    frontends: AtomicU64,
    backends: AtomicU64,
    members: AtomicU64,
}

/// The Service maps' contents, as the services loop last wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceFill {
    /// `TWILL_SVC` entries: ClusterIP and NodePort frontends (address, port, protocol).
    pub frontends: u64,
    /// `TWILL_BACKENDS` entries: backend slots, summed over frontends.
    pub backends: u64,
    /// `TWILL_MEMBERS` entries: distinct backends of each Service.
    pub members: u64,
}

impl Default for Instruments {
    fn default() -> Self {
        let instruments = Self {
            pass_seconds: Family::new_with_constructor(pass_histogram),
            pass_errors: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
            services: Arc::default(),
        };
        // Every series exists from the start, at zero, so a first error or request is an
        // increase Prometheus can see.
        for l in Loop::ALL {
            let label = [("loop", l.name())];
            drop(instruments.pass_seconds.get_or_create(&label));
            drop(instruments.pass_errors.get_or_create(&label));
        }
        for r in CniRequest::ALL {
            drop(
                instruments
                    .request_seconds
                    .get_or_create(&request_labels(r)),
            );
        }
        instruments
    }
}

fn request_labels(r: CniRequest) -> RequestLabels {
    [("command", r.command()), ("request", r.name())]
}

impl Instruments {
    /// A pass of `which` took `took`; `ok`: it did everything it had to.
    pub fn pass(&self, which: Loop, took: Duration, ok: bool) {
        let label = [("loop", which.name())];
        self.pass_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if !ok {
            self.pass_errors.get_or_create(&label).inc();
        }
    }

    /// A socket request was answered in `took` (from the decoded request to the answer).
    pub fn cni_request(&self, request: CniRequest, took: Duration) {
        self.request_seconds
            .get_or_create(&request_labels(request))
            .observe(took.as_secs_f64());
    }

    /// The services loop wrote the maps to hold `fill`.
    pub fn services_programmed(&self, fill: ServiceFill) {
        let s = &self.services;
        s.frontends.store(fill.frontends, Ordering::Relaxed);
        s.backends.store(fill.backends, Ordering::Relaxed);
        s.members.store(fill.members, Ordering::Relaxed);
        s.known.store(true, Ordering::Release);
    }

    /// The Service maps as last written; `None` before the first successful pass.
    pub fn service_fill(&self) -> Option<ServiceFill> {
        let s = &self.services;
        s.known.load(Ordering::Acquire).then(|| ServiceFill {
            frontends: s.frontends.load(Ordering::Relaxed),
            backends: s.backends.load(Ordering::Relaxed),
            members: s.members.load(Ordering::Relaxed),
        })
    }

    /// A registry with these instruments and the build's version.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "twill_build",
            "twilld's version (the value is always 1)",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_with_unit(
            "twill_reconcile_duration",
            "How long a pass of a reconcile loop took, from its inputs to the kernel written",
            Unit::Seconds,
            self.pass_seconds.clone(),
        );
        registry.register(
            "twill_reconcile_errors",
            "Passes of a reconcile loop that left something unwritten (retried)",
            self.pass_errors.clone(),
        );
        registry.register_with_unit(
            "twill_cni_request_duration",
            "How long twilld took to answer a socket request of the CNI plugin, by the CNI \
             command that makes it (STATUS also counts netctl's status requests)",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
        registry
    }
}
