//! The lab's netlink work: bridge, veth pairs, addresses and routes inside its namespaces.
//! Each call runs on a thread inside the target namespace (see `twill_netlink::in_netns`).

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd as _};

use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use twill_netlink::{in_netns, link_index, link_up, loopback_up};
use twill_netns::NetNs;

use crate::{LabError, plan::UNDERLAY};

/// In the underlay namespace: loopback up, bridge `br0` up with the gateway address
/// (`ip link add br0 type bridge; ip addr add 172.30.0.1/24 dev br0; ip link set br0 up`).
pub(crate) fn make_underlay(ns: &NetNs) -> Result<(), LabError> {
    in_netns(ns, "creating the underlay bridge", |handle| async move {
        loopback_up(&handle).await?;
        handle
            .link()
            .add(LinkBridge::new("br0").build())
            .execute()
            .await?;
        let br = link_index(&handle, "br0").await?;
        handle
            .address()
            .add(br, crate::plan::GATEWAY.into(), UNDERLAY.prefix())
            .execute()
            .await?;
        link_up(&handle, br).await
    })?;
    Ok(())
}

/// Plugs a host into the underlay: a veth pair whose `eth0` end is created directly in the
/// host's namespace and whose other end joins `br0`
/// (`ip link add PORT type veth peer name eth0 netns HOST; ip link set PORT master br0 up`).
pub(crate) fn plug_host(underlay: &NetNs, host: &NetNs, port: &str) -> Result<(), LabError> {
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
                .name("eth0".to_owned())
                .setns_by_fd(fd)
                .build();
            let veth = LinkVeth::new(port, "eth0")
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            handle.link().add(veth).execute().await?;
            let br = link_index(&handle, "br0").await?;
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

/// Inside a host: loopback and `eth0` up, its underlay address, a default route through the
/// gateway (`ip addr add IP/24 dev eth0; ip link set eth0 up; ip route add default via GW`).
pub(crate) fn configure_host(host: &NetNs, ip: Ipv4Addr) -> Result<(), LabError> {
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
            .gateway(crate::plan::GATEWAY)
            .output_interface(eth0)
            .build();
        handle.route().add(default).execute().await?;
        Ok(())
    })?;
    Ok(())
}
