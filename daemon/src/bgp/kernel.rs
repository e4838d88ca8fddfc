//! The kernel routes of the BGP-routed mode, through netlink.
//!
//! Ownership: the same protocol number as the VXLAN overlay's routes
//! ([`RTPROT_TWILL`], `proto 66`). Here twill owns the IPv4 routes of the main table with
//! that protocol, a gateway, the underlay interface as output interface, and a destination
//! inside the cluster CIDR: `ip route replace SUBNET via PEER_UNDERLAY_IP dev UNDERLAY proto
//! 66`. Nothing else is read as ours or removed (the Service CIDR's `unreachable` route has
//! protocol 66 too, but no gateway and no interface).

use std::net::Ipv4Addr;

use netlink_packet_route::route::{RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};
use twill_ipam::ClusterCidr;
use twill_netlink::StepError;

pub use crate::overlay::vxlan::RTPROT_TWILL;
use crate::{bgp::routes::Routes, overlay::underlay::Underlay};

/// `ip route show proto 66 dev UNDERLAY`, limited to destinations in the cluster CIDR.
pub async fn read(
    h: &Handle,
    underlay: &Underlay,
    cluster: &ClusterCidr,
) -> Result<Routes, StepError> {
    let mut out = Routes::new();
    for (dst, prefix, via) in
        twill_netlink::ipv4_gateway_routes(h, RTPROT_TWILL, underlay.index).await?
    {
        if let Ok(net) = ipnetwork::Ipv4Network::new(dst, prefix)
            && cluster.network().contains(net.network())
        {
            out.insert(net, via);
        }
    }
    Ok(out)
}

fn route(underlay: &Underlay, subnet: ipnetwork::Ipv4Network, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix())
        .gateway(via)
        .output_interface(underlay.index)
        .protocol(RouteProtocol::Other(RTPROT_TWILL))
        .build()
}

/// Applies `changes`, each on its own; returns the steps that failed.
pub async fn apply(
    h: &Handle,
    underlay: &Underlay,
    changes: &crate::bgp::routes::Changes,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (subnet, via) in &changes.set {
        // ip route replace SUBNET via VIA dev UNDERLAY proto 66
        if let Err(e) = h
            .route()
            .add(route(underlay, *subnet, *via))
            .replace()
            .execute()
            .await
        {
            failed.push(format!("route {subnet} via {via}: {e}"));
        }
    }
    for (subnet, via) in &changes.del {
        // ip route del SUBNET via VIA dev UNDERLAY proto 66
        if let Err(e) = h
            .route()
            .del(route(underlay, *subnet, *via))
            .execute()
            .await
        {
            failed.push(format!("removing route {subnet} via {via}: {e}"));
        }
    }
    failed
}
