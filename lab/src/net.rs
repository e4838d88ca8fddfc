//! The lab's netlink work: bridge, veth pairs, addresses and routes inside its namespaces.
//! Each call runs on a thread inside the target namespace with its own netlink socket.

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd as _};

use futures::TryStreamExt as _;
use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use twill_netns::NetNs;

use crate::{LabError, plan::UNDERLAY};

/// Runs `f` with a netlink handle inside `ns`, on a thread of its own.
pub(crate) fn with_netlink<T, F, Fut>(ns: &NetNs, what: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, StepError>>,
    T: Send,
{
    let ns_path = ns.path().display().to_string();
    ns.run(|| -> Result<T, LabError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::Netlink {
                what: what.to_owned(),
                netns: ns_path.clone(),
                message: format!("starting a runtime: {e}"),
            })?;
        runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|e| LabError::Netlink {
                    what: what.to_owned(),
                    netns: ns_path.clone(),
                    message: format!("opening a netlink socket: {e}"),
                })?;
            tokio::spawn(connection);
            f(handle).await.map_err(|e| LabError::Netlink {
                what: what.to_owned(),
                netns: ns_path.clone(),
                message: e.to_string(),
            })
        })
    })?
}

/// A failed netlink step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Netlink(#[from] rtnetlink::Error),
    #[error("no interface named {0}")]
    NoLink(String),
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, StepError> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await?;
    link.map(|l| l.header.index)
        .ok_or_else(|| StepError::NoLink(name.to_owned()))
}

async fn loopback_up(handle: &Handle) -> Result<(), StepError> {
    let lo = link_index(handle, "lo").await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await?;
    Ok(())
}

/// In the underlay namespace: loopback up, bridge `br0` up with the gateway address
/// (`ip link add br0 type bridge; ip addr add 172.30.0.1/24 dev br0; ip link set br0 up`).
pub(crate) fn make_underlay(ns: &NetNs) -> Result<(), LabError> {
    with_netlink(ns, "creating the underlay bridge", |handle| async move {
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
        handle
            .link()
            .set(LinkUnspec::new_with_index(br).up().build())
            .execute()
            .await?;
        Ok(())
    })
}

/// Plugs a host into the underlay: a veth pair whose `eth0` end is created directly in the
/// host's namespace and whose other end joins `br0`
/// (`ip link add PORT type veth peer name eth0 netns HOST; ip link set PORT master br0 up`).
pub(crate) fn plug_host(underlay: &NetNs, host: &NetNs, port: &str) -> Result<(), LabError> {
    let host_ns = File::open(host.path()).map_err(|e| LabError::Netlink {
        what: format!("opening {}", host.path().display()),
        netns: underlay.path().display().to_string(),
        message: e.to_string(),
    })?;
    let fd = host_ns.as_raw_fd();
    with_netlink(
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
    )
}

/// Inside a host: loopback and `eth0` up, its underlay address, a default route through the
/// gateway (`ip addr add IP/24 dev eth0; ip link set eth0 up; ip route add default via GW`).
pub(crate) fn configure_host(host: &NetNs, ip: Ipv4Addr) -> Result<(), LabError> {
    with_netlink(host, "configuring eth0", |handle| async move {
        loopback_up(&handle).await?;
        let eth0 = link_index(&handle, "eth0").await?;
        handle
            .address()
            .add(eth0, ip.into(), UNDERLAY.prefix())
            .execute()
            .await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(crate::plan::GATEWAY)
            .output_interface(eth0)
            .build();
        handle.route().add(default).execute().await?;
        Ok(())
    })
}
