//! The netlink operations twill needs (links, addresses, routes, neighbours), each run
//! inside a chosen network namespace.
//!
//! [`in_netns`] runs an async closure on a thread inside the namespace with its own
//! netlink socket and a current-thread runtime, so callers never switch a shared thread's
//! namespace. The helpers take a [`Handle`] and say which `ip` command each equals.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkMessage},
};
pub use rtnetlink::Handle;
use rtnetlink::LinkUnspec;
use twill_netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{what} in {netns}: {source}")]
    Step {
        what: String,
        netns: String,
        #[source]
        source: StepError,
    },
    #[error(transparent)]
    NetNs(#[from] twill_netns::NetNsError),
}

/// A failed netlink step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Netlink(#[from] rtnetlink::Error),
    #[error("no interface named {0}")]
    NoLink(String),
    #[error("{0}")]
    Other(String),
}

impl StepError {
    /// Whether the kernel answered "no such device/entry" (the thing is already gone).
    pub fn is_not_found(&self) -> bool {
        match self {
            StepError::NoLink(_) => true,
            StepError::Netlink(rtnetlink::Error::NetlinkError(m)) => m
                .code
                .is_some_and(|c| c.get() == -libc_enodev() || c.get() == -libc_enoent()),
            _ => false,
        }
    }

    /// Whether the kernel answered "exists".
    pub fn is_exists(&self) -> bool {
        matches!(self, StepError::Netlink(rtnetlink::Error::NetlinkError(m))
            if m.code.is_some_and(|c| c.get() == -17))
    }
}

const fn libc_enodev() -> i32 {
    19
}

const fn libc_enoent() -> i32 {
    2
}

/// Runs `f` with a netlink handle inside `ns`, on a thread of its own. `what` names the
/// step in errors.
pub fn in_netns<T, F, Fut>(ns: &NetNs, what: &str, f: F) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, StepError>>,
    T: Send,
{
    let netns = ns.path().display().to_string();
    let step = |source| NetlinkError::Step {
        what: what.to_owned(),
        netns: netns.clone(),
        source,
    };
    ns.run(|| -> Result<T, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| step(StepError::Other(format!("starting a runtime: {e}"))))?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()
                .map_err(|e| step(StepError::Other(format!("opening a netlink socket: {e}"))))?;
            tokio::spawn(connection);
            f(handle).await.map_err(step)
        })
    })?
}

/// The link called `name` (`ip link show NAME`), if any.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, StepError> {
    match handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) => {
            let e = StepError::from(e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}

/// The index of the link called `name`.
pub async fn link_index(handle: &Handle, name: &str) -> Result<u32, StepError> {
    link_by_name(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| StepError::NoLink(name.to_owned()))
}

/// `ip link set dev INDEX up`.
pub async fn link_up(handle: &Handle, index: u32) -> Result<(), StepError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    Ok(())
}

/// `ip link set lo up`.
pub async fn loopback_up(handle: &Handle) -> Result<(), StepError> {
    let lo = link_index(handle, "lo").await?;
    link_up(handle, lo).await
}

/// `ip link del NAME`; `false` if there was no such link.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, StepError> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) => {
            let e = StepError::from(e);
            if e.is_not_found() { Ok(false) } else { Err(e) }
        }
    }
}

/// The MAC address of a link, as `aa:bb:cc:dd:ee:ff`.
pub fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) if mac.len() == 6 => Some(
            mac.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        _ => None,
    })
}

/// The raw MAC bytes of a link.
pub fn link_mac_bytes(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) if mac.len() == 6 => Some(mac.clone()),
        _ => None,
    })
}

pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Runs a dump request and collects it, taking it again (up to 10 times) when the kernel
/// refuses it as interrupted by a concurrent change in the namespace (EBUSY), which
/// happens when another task programs routes or neighbours at the same moment.
pub async fn dump<T, S>(mut request: impl FnMut() -> S) -> Result<Vec<T>, rtnetlink::Error>
where
    S: futures::Stream<Item = Result<T, rtnetlink::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match request().try_collect::<Vec<T>>().await {
            Err(rtnetlink::Error::NetlinkError(m))
                if attempt < 10 && m.code.is_some_and(|c| c.get() == -EBUSY) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

const EBUSY: i32 = 16;

/// Every link in the namespace (`ip link show`).
pub async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, StepError> {
    Ok(dump(|| handle.link().get().execute()).await?)
}

/// Every IPv4 route of the main table and others (`ip -4 route show table all`).
pub async fn ipv4_routes(
    handle: &Handle,
) -> Result<Vec<netlink_packet_route::route::RouteMessage>, StepError> {
    Ok(dump(|| {
        handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
    })
    .await?)
}

/// The IPv4 gateway routes that `protocol` installed through link `index`
/// (`ip -4 route show proto PROTOCOL dev INDEX`, those with a `via`): destination,
/// prefix length and gateway.
pub async fn ipv4_gateway_routes(
    handle: &Handle,
    protocol: u8,
    index: u32,
) -> Result<Vec<(Ipv4Addr, u8, Ipv4Addr)>, StepError> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
    let mut out = Vec::new();
    for r in ipv4_routes(handle).await? {
        if r.header.protocol != RouteProtocol::from(protocol) {
            continue;
        }
        let (mut oif, mut dst, mut via) = (None, None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                _ => {}
            }
        }
        if let (Some(i), Some(d), Some(g)) = (oif, dst, via)
            && i == index
        {
            out.push((d, r.header.destination_prefix_length, g));
        }
    }
    Ok(out)
}

/// IPv4 addresses on a link with their prefix lengths (`ip -4 addr show dev INDEX`).
pub async fn ipv4_addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, StepError> {
    let messages: Vec<_> = dump(|| {
        handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
    })
    .await?;
    Ok(messages
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

/// Writes a sysctl under `/proc/sys` in the calling thread's namespace (call it from inside
/// [`in_netns`] or [`NetNs::run`] for a namespace's own `net.*` values).
pub fn write_sysctl(path: &str, value: &str) -> Result<(), StepError> {
    let full = Path::new("/proc/sys").join(path);
    fs::write(&full, value)
        .map_err(|e| StepError::Other(format!("writing {value} to {}: {e}", full.display())))
}
