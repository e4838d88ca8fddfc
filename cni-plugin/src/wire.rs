//! Wiring a pod into the node: a veth pair, the pod end renamed to `CNI_IFNAME` inside the
//! pod's namespace, a /32 address, and routes through a link-local gateway that the host
//! end stands for (a permanent neighbour entry in the pod, so no ARP and no bridge).
//!
//! ```text
//! host (node) namespace                     pod namespace
//!   twXXXXXXXXXXXX  <--- veth pair --->       eth0  10.244.1.5/32
//!   route 10.244.1.5/32 dev twXXXX            route 169.254.1.1 dev eth0 scope link
//!                                             route default via 169.254.1.1 dev eth0
//!                                             neigh 169.254.1.1 lladdr <twXXXX's MAC> PERMANENT
//! ```
//!
//! In two steps, with `twilld`'s attach of the pod programs between them: [`create`] makes
//! the pair and the host side but leaves the pod end down and without an address or
//! route; [`configure`] gives the pod end all of that. A pod selected by a NetworkPolicy
//! must be filtered from its first packet, and a process may already run in the pod's
//! namespace (a runtime may start the sandbox first): until [`configure`] it has no
//! interface up and no route, so it cannot send anything past the programs.

use std::{
    collections::BTreeSet,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::Path,
};

use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo},
    neighbour::NeighbourState,
    route::{RouteAttribute, RouteScope},
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use twill_netlink::{
    NetlinkError, StepError, delete_link, in_netns, ipv4_addresses, link_by_name, link_mac,
    link_mac_bytes, link_mtu, link_up,
};
use twill_netns::NetNs;

use crate::spec::{CniError, Interface, Wiring, code};

/// What to wire.
pub struct PodPlan<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

fn host_ns() -> Result<NetNs, CniError> {
    NetNs::from_path("/proc/self/ns/net")
        .map_err(|e| CniError::new(code::WIRING_FAILED, e.to_string()))
}

fn pod_ns(path: &Path) -> Result<NetNs, CniError> {
    if !path.exists() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} does not exist", path.display()),
        ));
    }
    NetNs::from_path(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} cannot be opened: {e}", path.display()),
        )
    })
}

fn failed(e: NetlinkError) -> CniError {
    CniError::new(code::WIRING_FAILED, format!("wiring the pod failed: {e}"))
}

/// Whether `ifname` already exists in the pod's namespace.
pub fn interface_exists(netns: &Path, ifname: &str) -> Result<bool, CniError> {
    let ns = pod_ns(netns)?;
    let name = ifname.to_owned();
    in_netns(&ns, "looking up the pod interface", |h| async move {
        Ok(link_by_name(&h, &name).await?.is_some())
    })
    .map_err(failed)
}

/// What [`create`] made: the pair, the host end up with its route, the pod end inside
/// the pod's namespace but still down and without an address. Enough for `twilld` to
/// attach the pod programs and record the pod before the pod can send anything.
pub struct Created {
    /// The host end's interface index.
    pub host_index: u32,
    host_mac: Vec<u8>,
    pod: NetNs,
    pod_index: u32,
    /// The pod end's MAC, `aa:bb:..`.
    pub pod_mac: String,
    /// The pod namespace's cookie (`SO_NETNS_COOKIE`); `None` on kernels before 5.14.
    pub netns_cookie: Option<u64>,
}

impl Created {
    /// The host end's MAC, `aa:bb:..`.
    pub fn host_mac(&self) -> String {
        mac_string(&self.host_mac)
    }
}

/// The first half of wiring a pod (`ip link add HOST_IF type veth peer name IFNAME netns
/// POD`, host end up, `ip route add IP/32 dev HOST_IF`): the pod end is left down and
/// without an address, so nothing in the pod can send until [`configure`]. On error, and
/// on any later error, the caller removes the host end with [`remove`], which takes the
/// pod end and the host route with it.
pub fn create(plan: &PodPlan<'_>) -> Result<Created, CniError> {
    let host = host_ns()?;
    let pod = pod_ns(plan.netns)?;
    let pod_file = File::open(plan.netns).map_err(|e| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} cannot be opened: {e}", plan.netns.display()),
        )
    })?;
    let fd = pod_file.as_raw_fd();
    let (host_if, ip, mtu) = (plan.host_ifname.to_owned(), plan.ip, plan.mtu);
    let ifname = plan.ifname.to_owned();
    let (host_index, host_mac) = in_netns(&host, "creating the veth pair", |h| async move {
        // A host end left by an ADD that was killed half-way: its pod end went with its
        // namespace or is about to be replaced. Either way it is ours and stale.
        delete_link(&h, &host_if).await?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.clone())
            .mtu(mtu)
            .setns_by_fd(fd)
            .build();
        let veth = LinkVeth::new(&host_if, &ifname)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link().add(veth).execute().await?;
        let link = link_by_name(&h, &host_if)
            .await?
            .ok_or_else(|| StepError::NoLink(host_if.clone()))?;
        let index = link.header.index;
        let mac =
            link_mac_bytes(&link).ok_or_else(|| StepError::Other("host veth has no MAC".into()))?;
        link_up(&h, index).await?;
        // ip route add IP/32 dev HOST_IF scope link
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        h.route().add(route).execute().await?;
        Ok((index, mac))
    })
    .map_err(failed)?;
    let ifname = plan.ifname.to_owned();
    let (pod_index, pod_mac, netns_cookie) =
        in_netns(&pod, "reading the pod interface", |h| async move {
            let link = link_by_name(&h, &ifname)
                .await?
                .ok_or_else(|| StepError::NoLink(ifname.clone()))?;
            // What the socket programs know the pod's namespace by (kernels before 5.14
            // have no such cookie: None).
            let cookie = twill_netns::current_cookie().ok();
            Ok((
                link.header.index,
                link_mac(&link).unwrap_or_default(),
                cookie,
            ))
        })
        .map_err(failed)?;
    Ok(Created {
        host_index,
        host_mac,
        pod,
        pod_index,
        pod_mac,
        netns_cookie,
    })
}

/// The second half: the pod end's address, link up, routes through the gateway and the
/// gateway's neighbour entry (the host end's MAC). Called once `twilld` has answered the
/// attach, so a pod whose programs are attached synchronously is filtered from its first
/// packet.
pub fn configure(plan: &PodPlan<'_>, created: &Created) -> Result<Wiring, CniError> {
    let (index, gateway, mac, ip) = (
        created.pod_index,
        plan.gateway,
        created.host_mac.clone(),
        plan.ip,
    );
    in_netns(
        &created.pod,
        "configuring the pod interface",
        |h| async move {
            // ip addr add IP/32 dev IFNAME
            h.address().add(index, IpAddr::V4(ip), 32).execute().await?;
            link_up(&h, index).await?;
            // ip neigh replace 169.254.1.1 lladdr HOST_MAC dev IFNAME nud permanent
            // Before the routes: once they exist, a process already in the pod may send
            // and make the kernel create an incomplete entry for the gateway first.
            h.neighbours()
                .add(index, IpAddr::V4(gateway))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await?;
            // ip route add 169.254.1.1 dev IFNAME scope link
            let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            h.route().add(to_gateway).execute().await?;
            // ip route add default via 169.254.1.1 dev IFNAME
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build();
            h.route().add(default).execute().await?;
            Ok(())
        },
    )
    .map_err(failed)?;
    Ok(wiring(plan, created))
}

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn wiring(plan: &PodPlan<'_>, created: &Created) -> Wiring {
    Wiring {
        host_index: created.host_index,
        netns_cookie: created.netns_cookie,
        host: Interface {
            name: plan.host_ifname.to_owned(),
            mac: created.host_mac(),
            sandbox: None,
            mtu: Some(plan.mtu),
        },
        pod: Interface {
            name: plan.ifname.to_owned(),
            mac: created.pod_mac.clone(),
            sandbox: Some(plan.netns.display().to_string()),
            mtu: Some(plan.mtu),
        },
        ip: plan.ip,
        gateway: plan.gateway,
    }
}

/// What [`retire`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Retired {
    /// The pair is out of the pod and renamed for `twilld` to delete in the background.
    Renamed,
    /// The host end was already gone (a repeated DEL, a namespace gone with its pod).
    Gone,
    /// The pod end was not where it should be; the pair was deleted here instead.
    Deleted,
}

/// DEL's fast path: moves the pod's interface out of its namespace (renamed
/// `retired.1`), takes the host end down (its route goes with it) and renames it
/// `retired.0`, for `twilld` to delete when nobody waits. Deleting a device that carries
/// programs waits for the kernel several times over (an RCU grace period per tcx entry
/// and more); moving one waits once.
pub fn retire(
    netns: Option<&Path>,
    ifname: &str,
    host_ifname: &str,
    retired: &(String, String),
) -> Result<Retired, CniError> {
    let host = host_ns()?;
    let name = host_ifname.to_owned();
    let found = in_netns(&host, "looking up the host veth", |h| async move {
        Ok(link_by_name(&h, &name).await?.map(|l| {
            let peer = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(i) => Some(*i),
                _ => None,
            });
            (l.header.index, peer)
        }))
    })
    .map_err(failed)?;
    let Some((host_index, Some(peer_index))) = found else {
        return if found.is_some() {
            remove(host_ifname).map(|_| Retired::Deleted)
        } else {
            Ok(Retired::Gone)
        };
    };
    let moved = match netns.filter(|p| p.exists()) {
        None => false,
        Some(path) => {
            let pod = pod_ns(path)?;
            let host_file = File::open("/proc/self/ns/net")
                .map_err(|e| CniError::new(code::WIRING_FAILED, e.to_string()))?;
            let host_fd = host_file.as_raw_fd();
            let (ifname, new_name) = (ifname.to_owned(), retired.1.clone());
            in_netns(&pod, "moving the pod interface out", |h| async move {
                let Some(link) = link_by_name(&h, &ifname).await? else {
                    return Ok(false);
                };
                let points_back = link
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Link(i) if *i == host_index));
                if link.header.index != peer_index || !points_back {
                    return Ok(false);
                }
                // ip link set IFNAME netns HOST name RETIRED_PEER
                h.link()
                    .set(
                        LinkUnspec::new_with_index(link.header.index)
                            .setns_by_fd(host_fd)
                            .name(new_name)
                            .build(),
                    )
                    .execute()
                    .await?;
                Ok(true)
            })
            .map_err(failed)?
        }
    };
    if !moved {
        return remove(host_ifname).map(|_| Retired::Deleted);
    }
    let new_name = retired.0.clone();
    in_netns(&host, "retiring the host veth", |h| async move {
        // ip link set HOST_IF down; ip link set HOST_IF name RETIRED_HOST
        h.link()
            .set(LinkUnspec::new_with_index(host_index).down().build())
            .execute()
            .await?;
        let rename = || {
            h.link()
                .set(
                    LinkUnspec::new_with_index(host_index)
                        .name(new_name.clone())
                        .build(),
                )
                .execute()
        };
        if let Err(e) = rename().await {
            let e = StepError::from(e);
            if !e.is_exists() {
                return Err(e);
            }
            // An earlier pod of this attachment, not deleted yet.
            delete_link(&h, &new_name).await?;
            rename().await?;
        }
        Ok(())
    })
    .map_err(failed)?;
    Ok(Retired::Renamed)
}

/// Removes the host end of a pod's veth (`ip link del HOST_IF`), which takes the pod end
/// and the host route with it. `false` if it was already gone.
pub fn remove(host_ifname: &str) -> Result<bool, CniError> {
    let host = host_ns()?;
    let name = host_ifname.to_owned();
    in_netns(&host, "deleting the host veth", |h| async move {
        delete_link(&h, &name).await
    })
    .map_err(failed)
}

/// What CHECK finds wrong with a pod's wiring; empty when all is as ADD left it.
pub fn check(plan: &PodPlan<'_>) -> Result<Vec<String>, CniError> {
    let host = host_ns()?;
    let pod = pod_ns(plan.netns)?;
    let mut problems = Vec::new();
    let (host_if, ip) = (plan.host_ifname.to_owned(), plan.ip);
    let host_problems = in_netns(&host, "checking the host side", |h| async move {
        let mut p = Vec::new();
        let Some(link) = link_by_name(&h, &host_if).await? else {
            p.push(format!("host interface {host_if} is missing"));
            return Ok(p);
        };
        if !link.header.flags.contains(LinkFlags::Up) {
            p.push(format!("host interface {host_if} is down"));
        }
        let routes: Vec<_> = twill_netlink::ipv4_routes(&h).await?;
        let has_route = routes.iter().any(|r| {
            r.header.destination_prefix_length == 32
                && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(d) if *d == netlink_packet_route::route::RouteAddress::Inet(ip)))
                && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == link.header.index))
        });
        if !has_route {
            p.push(format!("host route {ip}/32 dev {host_if} is missing"));
        }
        Ok(p)
    })
    .map_err(failed)?;
    problems.extend(host_problems);

    let (ifname, mtu) = (plan.ifname.to_owned(), plan.mtu);
    let pod_problems = in_netns(&pod, "checking the pod side", |h| async move {
        let mut p = Vec::new();
        let Some(link) = link_by_name(&h, &ifname).await? else {
            p.push(format!("pod interface {ifname} is missing"));
            return Ok(p);
        };
        let is_veth = link.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
        });
        if !is_veth {
            p.push(format!("pod interface {ifname} is not a veth"));
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            p.push(format!("pod interface {ifname} is down"));
        }
        if link_mtu(&link) != Some(mtu) {
            p.push(format!("pod interface {ifname} has MTU {:?}, expected {mtu}", link_mtu(&link)));
        }
        let addrs = ipv4_addresses(&h, link.header.index).await?;
        if !addrs.contains(&(ip, 32)) {
            p.push(format!("pod interface {ifname} lacks {ip}/32 (has {addrs:?})"));
        }
        let routes: Vec<_> = twill_netlink::ipv4_routes(&h).await?;
        let has_default = routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_)))
        });
        if !has_default {
            p.push(format!("pod has no default route via {}", twill_api::POD_GATEWAY));
        }
        Ok(p)
    })
    .map_err(failed)?;
    problems.extend(pod_problems);
    Ok(problems)
}

/// Deletes twill's host-side veths whose names are not in `keep` (GC), returning their
/// names. Only names twill makes (`tw` + 12 hex digits, veth) are touched.
pub fn remove_stale_host_links(keep: &BTreeSet<String>) -> Result<Vec<String>, CniError> {
    let host = host_ns()?;
    let keep = keep.clone();
    in_netns(&host, "collecting stale host veths", |h| async move {
        let links = twill_netlink::dump(|| h.link().get().execute()).await?;
        let mut removed = Vec::new();
        for link in links {
            let Some(name) = twill_netlink::link_name(&link).map(str::to_owned) else {
                continue;
            };
            let ours = twill_api::is_twill_ifname(&name, twill_api::HOST_IFNAME_PREFIX)
                && link.attributes.iter().any(|a| {
                    matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
                });
            if ours && !keep.contains(&name) && delete_link(&h, &name).await? {
                removed.push(name);
            }
        }
        Ok(removed)
    })
    .map_err(failed)
}
