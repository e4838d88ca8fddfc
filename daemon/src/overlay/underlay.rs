//! The node's underlay interface: named in the config, or the one the default route uses.

use std::net::Ipv4Addr;

use futures::TryStreamExt as _;
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink: {0}")]
    Step(#[from] twill_netlink::StepError),
    #[error(
        "no IPv4 default route to find the underlay interface by; set network.underlay_interface"
    )]
    NoDefaultRoute,
    #[error("underlay interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("reading the addresses of underlay interface {0}: {1}")]
    Addresses(String, String),
    #[error("underlay interface {0} has no IPv4 address")]
    NoAddress(String),
}

/// What twill needs to know about the underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub ip: Ipv4Addr,
    /// The prefix length of `ip` on the interface: its subnet is the directly connected
    /// segment.
    pub prefix: u8,
    pub mtu: u32,
}

impl Underlay {
    /// The directly connected subnet (`ip`/`prefix`).
    pub fn network(&self) -> ipnetwork::Ipv4Network {
        ipnetwork::Ipv4Network::new(self.ip, self.prefix)
            .expect("the kernel reports IPv4 prefix lengths of at most 32")
    }
}

/// Finds the underlay interface (`ip route show default`, then `ip addr show dev X`).
pub async fn detect(handle: &Handle, name: Option<&str>) -> Result<Underlay, UnderlayError> {
    let index = match name {
        Some(name) => twill_netlink::link_index(handle, name)
            .await
            .map_err(|_| UnderlayError::NoSuchInterface(name.to_owned()))?,
        None => {
            let routes: Vec<RouteMessage> = twill_netlink::ipv4_routes(handle).await?;
            routes
                .iter()
                .filter(|r| {
                    r.header.destination_prefix_length == 0
                        && r.header.table == RouteHeader::RT_TABLE_MAIN
                })
                .find_map(|r| {
                    r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    })
                })
                .ok_or(UnderlayError::NoDefaultRoute)?
        }
    };
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await?
        .ok_or_else(|| UnderlayError::NoSuchInterface(format!("#{index}")))?;
    let link_name =
        twill_netlink::link_name(&link).map_or_else(|| format!("#{index}"), str::to_owned);
    let mtu = twill_netlink::link_mtu(&link).unwrap_or(1500);
    let (ip, prefix) = twill_netlink::ipv4_addresses(handle, index)
        .await
        .map_err(|e| UnderlayError::Addresses(link_name.clone(), e.to_string()))?
        .first()
        .copied()
        .ok_or_else(|| UnderlayError::NoAddress(link_name.clone()))?;
    Ok(Underlay {
        name: link_name,
        index,
        ip,
        prefix: prefix.min(32),
        mtu,
    })
}
