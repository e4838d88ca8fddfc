//! The lab's netlink work: bridge, veth pairs, addresses and routes inside its namespaces.
//! Each call runs on a thread inside the target namespace (see `twill_netlink::in_netns`).

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd as _};

use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use twill_netlink::{in_netns, link_index, link_up, loopback_up};
use twill_netns::NetNs;

use crate::{
    LabError,
    plan::{
        BRIDGE, GATEWAY, ROUTER_IP, RouterPlan, SECOND_BRIDGE, SECOND_GATEWAY, SECOND_UNDERLAY,
        UNDERLAY,
    },
};

/// In the underlay namespace: loopback up, bridge `br0` up with the gateway address
/// (`ip link add br0 type bridge; ip addr add 172.30.0.1/24 dev br0; ip link set br0 up`).
/// With a second subnet also `br1`, without an address (only the router is on both), and
/// a route to that subnet through the router, for etcd's answers
/// (`ip route add 172.31.0.0/24 via 172.30.0.254`).
pub(crate) fn make_underlay(ns: &NetNs, second_subnet: bool) -> Result<(), LabError> {
    in_netns(ns, "creating the underlay bridge", |handle| async move {
        loopback_up(&handle).await?;
        handle
            .link()
            .add(LinkBridge::new(BRIDGE).build())
            .execute()
            .await?;
        let br = link_index(&handle, BRIDGE).await?;
        handle
            .address()
            .add(br, GATEWAY.into(), UNDERLAY.prefix())
            .execute()
            .await?;
        link_up(&handle, br).await?;
        if second_subnet {
            handle
                .link()
                .add(LinkBridge::new(SECOND_BRIDGE).build())
                .execute()
                .await?;
            let br1 = link_index(&handle, SECOND_BRIDGE).await?;
            link_up(&handle, br1).await?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(SECOND_UNDERLAY.network(), SECOND_UNDERLAY.prefix())
                .gateway(ROUTER_IP)
                .build();
            handle.route().add(route).execute().await?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The router between the subnets: `eth0` on `br0` (172.30.0.254/24), `eth1` on `br1`
/// (172.31.0.1/24), forwarding on (`sysctl net.ipv4.ip_forward=1`).
pub(crate) fn make_router(
    underlay: &NetNs,
    router: &NetNs,
    plan: &RouterPlan,
) -> Result<(), LabError> {
    plug_host(underlay, router, &plan.first_port, BRIDGE, "eth0")?;
    plug_host(underlay, router, &plan.second_port, SECOND_BRIDGE, "eth1")?;
    in_netns(router, "configuring the router", |handle| async move {
        loopback_up(&handle).await?;
        for (ifname, ip, prefix) in [
            ("eth0", ROUTER_IP, UNDERLAY.prefix()),
            ("eth1", SECOND_GATEWAY, SECOND_UNDERLAY.prefix()),
        ] {
            let index = link_index(&handle, ifname).await?;
            handle
                .address()
                .add(index, ip.into(), prefix)
                .execute()
                .await?;
            link_up(&handle, index).await?;
        }
        twill_netlink::write_sysctl("net/ipv4/ip_forward", "1")
    })?;
    Ok(())
}

/// Plugs a host into the underlay: a veth pair whose `ifname` end (`eth0`) is created
/// directly in the host's namespace and whose other end joins `bridge`
/// (`ip link add PORT type veth peer name eth0 netns HOST; ip link set PORT master br0 up`).
pub(crate) fn plug_host(
    underlay: &NetNs,
    host: &NetNs,
    port: &str,
    bridge: &str,
    ifname: &str,
) -> Result<(), LabError> {
    let host_ns = File::open(host.path()).map_err(|e| LabError::Resource {
        action: "opening".to_owned(),
        path: host.path().to_owned(),
        message: e.to_string(),
    })?;
    let fd = host_ns.as_raw_fd();
    in_netns(
        underlay,
        &format!("creating veth {port}"),
        |handle| async move {
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(ifname.to_owned())
                .setns_by_fd(fd)
                .build();
            let veth = LinkVeth::new(port, ifname)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            handle.link().add(veth).execute().await?;
            let br = link_index(&handle, bridge).await?;
            let port_index = link_index(&handle, port).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(port_index)
                        .controller(br)
                        .up()
                        .build(),
                )
                .execute()
                .await?;
            Ok(())
        },
    )?;
    Ok(())
}

/// Inside a host: loopback and `eth0` up, its underlay address, a default route through
/// `gateway` (`ip addr add IP/24 dev eth0; ip link set eth0 up; ip route add default via
/// GW`). Both underlay subnets are /24s.
pub(crate) fn configure_host(
    host: &NetNs,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<(), LabError> {
    in_netns(host, "configuring eth0", |handle| async move {
        loopback_up(&handle).await?;
        let eth0 = link_index(&handle, "eth0").await?;
        handle
            .address()
            .add(eth0, ip.into(), UNDERLAY.prefix())
            .execute()
            .await?;
        link_up(&handle, eth0).await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth0)
            .build();
        handle.route().add(default).execute().await?;
        Ok(())
    })?;
    Ok(())
}
