//! What the BGP benchmarks (`bgp_convergence`, `bgp_scale`) share: twill's routes in a
//! node namespace's kernel, read with netlink, and a poller that notes the moment a
//! condition on them first holds.

#![allow(dead_code, reason = "each benchmark uses a part of this")]

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use twill_netns::NetNs;

/// The protocol number of twill's routes (`ip route show proto 66`).
pub const RTPROT_TWILL: u8 = 66;
/// How often a poller dumps the routes.
pub const POLL: Duration = Duration::from_millis(5);

/// Twill's gateway routes: destination -> next hop.
pub type Routes = BTreeMap<Ipv4Network, Ipv4Addr>;

/// `ip -4 route show proto 66`, the routes with a gateway only.
pub async fn read(h: &rtnetlink::Handle) -> Result<Routes, twill_netlink::StepError> {
    let mut out = Routes::new();
    for r in twill_netlink::ipv4_routes(h).await? {
        if r.header.protocol != RouteProtocol::Other(RTPROT_TWILL) {
            continue;
        }
        let (mut dst, mut via) = (None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                _ => {}
            }
        }
        if let (Some(d), Some(g)) = (dst, via)
            && let Ok(net) = Ipv4Network::new(d, r.header.destination_prefix_length)
        {
            out.insert(net, g);
        }
    }
    Ok(out)
}

/// The routes in `ns` now.
pub fn routes(ns: &NetNs) -> Routes {
    twill_netlink::in_netns(ns, "reading routes", |h| async move { read(&h).await })
        .expect("read the routes")
}

/// A thread that dumps the routes of one namespace every [`POLL`] until `done` holds.
pub struct Poller(thread::JoinHandle<Option<Instant>>);

impl Poller {
    /// Starts polling `ns`; gives up after `timeout`.
    pub fn start(
        ns: NetNs,
        timeout: Duration,
        done: impl Fn(&Routes) -> bool + Send + 'static,
    ) -> Self {
        Self(thread::spawn(move || {
            twill_netlink::in_netns(&ns, "polling routes", |h| async move {
                let deadline = Instant::now() + timeout;
                loop {
                    let routes = read(&h).await?;
                    // After the dump: the moment is an upper bound, late by at most one
                    // dump and one poll interval.
                    let now = Instant::now();
                    if done(&routes) {
                        return Ok(Some(now));
                    }
                    if now > deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(POLL).await;
                }
            })
            .expect("poll the routes")
        }))
    }

    /// When `done` first held; `None` if it did not within the timeout.
    pub fn wait(self) -> Option<Instant> {
        self.0.join().expect("the poller ends")
    }
}

/// Milliseconds from `from` to `to` (0 when `to` is earlier).
pub fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// The median and the largest of `v`, in the benchmark's units.
pub fn median_max(v: &[f64]) -> (f64, f64) {
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    (twill_tests::bench::median(v.to_vec()), max)
}
