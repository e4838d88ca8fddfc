//! The node's VXLAN device and the entries twill programs on it, through netlink.
//!
//! Ownership: the device is twill's; on it, twill owns routes with protocol
//! [`RTPROT_TWILL`], permanent IPv4 neighbours inside the cluster CIDR, and permanent FDB
//! entries with a destination. Nothing else is read as ours or removed.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::{
    AddressFamily,
    link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteMessage, RouteProtocol},
};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};
use twill_ipam::ClusterCidr;
use twill_netlink::{StepError, delete_link, link_by_name, link_mac_bytes, link_up};

use crate::{
    config::{Config, OverlayMode},
    overlay::{
        peers::{self, Changes, Mac, Programmed},
        underlay::Underlay,
    },
};

/// The device's name.
pub const DEVICE: &str = "twill-vxlan";
/// Route protocol number marking twill's routes (`ip route ... proto 66`).
pub const RTPROT_TWILL: u8 = 66;

/// The VXLAN device as twill uses it.
#[derive(Clone, Debug)]
pub struct Device {
    pub index: u32,
    pub mac: Mac,
}

/// The settings a device must have; an existing device that differs is rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub vni: u32,
    pub port: u16,
    pub mtu: u32,
}

impl Settings {
    /// The node's VXLAN device, for the overlay or for BGP's cross-subnet fallback: the
    /// configured VNI and port, and the underlay's MTU less the encapsulation.
    pub fn of_node(config: &Config, underlay: &Underlay) -> Settings {
        Settings {
            vni: config.vxlan_vni,
            port: config.vxlan_port,
            mtu: underlay.mtu.saturating_sub(OverlayMode::Vxlan.overhead()),
        }
    }
}

/// `ip link add twill-vxlan type vxlan id VNI dev UNDERLAY local IP dstport PORT nolearning`
/// (kept as is when it already exists with these settings).
pub async fn ensure_device(
    h: &Handle,
    underlay: &Underlay,
    settings: Settings,
) -> Result<Device, StepError> {
    if let Some(link) = link_by_name(h, DEVICE).await? {
        let data: Vec<InfoVxlan> = link
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .filter_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let matches = data.contains(&InfoVxlan::Id(settings.vni))
            && data.contains(&InfoVxlan::Port(settings.port))
            && data.contains(&InfoVxlan::Local(underlay.ip))
            && data.contains(&InfoVxlan::Link(underlay.index))
            && twill_netlink::link_mtu(&link) == Some(settings.mtu);
        if matches {
            link_up(h, link.header.index).await?;
            let mac = mac_of(&link)?;
            return Ok(Device {
                index: link.header.index,
                mac,
            });
        }
        tracing::warn!("{DEVICE} exists with other settings; recreating it");
        delete_link(h, DEVICE).await?;
    }
    let msg = LinkVxlan::new(DEVICE, settings.vni)
        .dev(underlay.index)
        .local(underlay.ip)
        .port(settings.port)
        .learning(false)
        .mtu(settings.mtu)
        .up()
        .build();
    h.link().add(msg).execute().await?;
    let link = link_by_name(h, DEVICE)
        .await?
        .ok_or_else(|| StepError::NoLink(DEVICE.to_owned()))?;
    Ok(Device {
        index: link.header.index,
        mac: mac_of(&link)?,
    })
}

fn mac_of(link: &netlink_packet_route::link::LinkMessage) -> Result<Mac, StepError> {
    link_mac_bytes(link)
        .and_then(|m| <Mac>::try_from(m.as_slice()).ok())
        .ok_or_else(|| StepError::Other(format!("{DEVICE} has no MAC address")))
}

/// Gives the device exactly `ip`/32 (the node's address in its pod subnet).
pub async fn ensure_address(h: &Handle, device: &Device, ip: Ipv4Addr) -> Result<(), StepError> {
    let addrs = twill_netlink::dump(|| {
        h.address()
            .get()
            .set_link_index_filter(device.index)
            .execute()
    })
    .await?;
    let mut present = false;
    for a in addrs {
        let this = a.attributes.iter().find_map(|x| match x {
            netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        match this {
            Some(v) if v == ip && a.header.prefix_len == 32 => present = true,
            Some(_) => h.address().del(a).execute().await?,
            None => {}
        }
    }
    if !present {
        h.address()
            .add(device.index, IpAddr::V4(ip), 32)
            .execute()
            .await?;
    }
    Ok(())
}

/// `ip route replace unreachable SERVICE_CIDR proto 66`: a packet to a ClusterIP that the
/// eBPF programs did not translate (a Service without backends, an unused address) is
/// refused at once with ICMP unreachable instead of wandering off by the default route.
pub async fn ensure_service_route(
    h: &Handle,
    cidr: ipnetwork::Ipv4Network,
) -> Result<(), StepError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.network(), cidr.prefix())
        .kind(netlink_packet_route::route::RouteType::Unreachable)
        .protocol(RouteProtocol::Other(RTPROT_TWILL))
        .build();
    h.route().add(msg).replace().execute().await?;
    Ok(())
}

/// What twill owns on the device now.
pub async fn read_programmed(
    h: &Handle,
    device: &Device,
    cluster: &ClusterCidr,
) -> Result<Programmed, StepError> {
    let mut p = Programmed::default();
    for (dst, prefix, via) in
        twill_netlink::ipv4_gateway_routes(h, RTPROT_TWILL, device.index).await?
    {
        if let Ok(net) = ipnetwork::Ipv4Network::new(dst, prefix) {
            p.routes.insert(net, via);
        }
    }
    for (family, fdb) in [(AddressFamily::Inet, false), (AddressFamily::Bridge, true)] {
        let entries: Vec<NeighbourMessage> =
            twill_netlink::dump(|| h.neighbours().get().set_address_family(family).execute())
                .await?;
        for n in entries {
            if n.header.ifindex != device.index || !is_permanent(n.header.state) {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                    // In bridge-family (FDB) messages the address family of NDA_DST is not
                    // in the header, so it decodes as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        ip = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <Mac>::try_from(l.as_slice()).ok();
                    }
                    _ => {}
                }
            }
            let (Some(ip), Some(mac)) = (ip, mac) else {
                continue;
            };
            if fdb {
                if mac != [0; 6] {
                    p.fdb.insert(mac, ip);
                }
            } else if cluster.network().contains(ip) {
                p.neighbours.insert(ip, mac);
            }
        }
    }
    Ok(p)
}

/// Whether the NUD_PERMANENT bit is set (the kernel may report it together with other
/// bits, e.g. NOARP on VXLAN FDB entries, which decodes as `Other`).
fn is_permanent(state: NeighbourState) -> bool {
    const NUD_PERMANENT: u16 = 0x80;
    match state {
        NeighbourState::Permanent => true,
        NeighbourState::Other(bits) => bits & NUD_PERMANENT != 0,
        _ => false,
    }
}

fn route(device: &Device, subnet: ipnetwork::Ipv4Network, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix())
        .gateway(via)
        .output_interface(device.index)
        .onlink()
        .protocol(RouteProtocol::Other(RTPROT_TWILL))
        .build()
}

fn neighbour(
    device: &Device,
    family: AddressFamily,
    ip: Ipv4Addr,
    mac: Option<Mac>,
) -> NeighbourMessage {
    let mut n = NeighbourMessage::default();
    n.header.family = family;
    n.header.ifindex = device.index;
    if family == AddressFamily::Bridge {
        n.header.flags = NeighbourFlags::Own;
    }
    n.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    if let Some(mac) = mac {
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    n
}

/// Applies `changes`, each step on its own; returns the steps that failed. Layer 2 first
/// when adding (FDB, neighbour, then route), routes first when removing.
pub async fn apply(h: &Handle, device: &Device, changes: &Changes) -> Vec<String> {
    let mut failed = Vec::new();
    let mut note = |what: String, r: Result<(), rtnetlink::Error>| {
        if let Err(e) = r {
            failed.push(format!("{what}: {e}"));
        }
    };
    for (mac, dst) in &changes.set_fdb {
        let r = h
            .neighbours()
            .add_bridge(device.index, mac)
            .destination(IpAddr::V4(*dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await;
        note(format!("fdb {} dst {dst}", peers::format_mac(mac)), r);
    }
    for (ip, mac) in &changes.set_neighbours {
        let r = h
            .neighbours()
            .add(device.index, IpAddr::V4(*ip))
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await;
        note(format!("neighbour {ip}"), r);
    }
    for (subnet, via) in &changes.set_routes {
        let r = h
            .route()
            .add(route(device, *subnet, *via))
            .replace()
            .execute()
            .await;
        note(format!("route {subnet} via {via}"), r);
    }
    for (subnet, via) in &changes.del_routes {
        let r = h.route().del(route(device, *subnet, *via)).execute().await;
        note(format!("removing route {subnet}"), r);
    }
    for (ip, _) in &changes.del_neighbours {
        let r = h
            .neighbours()
            .del(neighbour(device, AddressFamily::Inet, *ip, None))
            .execute()
            .await;
        note(format!("removing neighbour {ip}"), r);
    }
    for (mac, dst) in &changes.del_fdb {
        let r = h
            .neighbours()
            .del(neighbour(device, AddressFamily::Bridge, *dst, Some(*mac)))
            .execute()
            .await;
        note(format!("removing fdb {}", peers::format_mac(mac)), r);
    }
    failed
}
