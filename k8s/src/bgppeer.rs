//! `BGPPeer` (bgp.twill.io/v1alpha1): a BGP router the nodes peer with besides (or, with
//! `[bgp] mesh = false`, instead of) the node-to-node mesh, such as a route reflector or a
//! top-of-rack router. Cluster-scoped. Parsed from its wire form with every problem named
//! by its field path, and written back by [`crate::manifest`].
//!
//! ```yaml
//! apiVersion: bgp.twill.io/v1alpha1
//! kind: BGPPeer
//! metadata: {name: tor1}
//! spec:
//!   peerIP: 172.30.0.101
//!   asNumber: 65001
//!   nodeSelector: {matchLabels: {kubernetes.io/hostname: node1}}  # absent: every node
//!   passwordFile: /etc/twill/bgp-tor1   # TCP MD5, read on the node
//!   holdSeconds: 9                       # 0 or 3-65535; default: the node's [bgp]
//!   keepaliveSeconds: 3                  # at most a third of the hold time
//!   passive: false                       # only accept the peer's connection
//! ```

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{LabelSelector, Problems, wire};

/// AS_TRANS (RFC 6793): stands in for a four-octet AS in two-octet fields; no AS of its own.
pub const AS_TRANS: u32 = 23456;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The router's address (`spec.peerIP`).
    pub peer_ip: IpAddr,
    /// Its AS (`spec.asNumber`): the cluster's AS makes the session iBGP, any other eBGP.
    pub as_number: u32,
    /// The nodes that peer with it, by their labels; empty selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// The TCP MD5 password's file on the node (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// `None`: the node's `bgp.hold_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<u16>,
    /// `None`: the node's `bgp.keepalive_seconds` (at most a third of the hold time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_seconds: Option<u16>,
    /// The nodes only accept the router's connection and never open one.
    #[serde(default)]
    pub passive: bool,
}

impl BgpPeer {
    /// Whether the node with `labels` peers with this router.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector.matches(labels)
    }
}

/// The wire form of a BGPPeer (kept here, beside its only user).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WireBgpPeer {
    pub api_version: String,
    pub kind: String,
    pub metadata: wire::Metadata,
    #[serde(default)]
    pub spec: WireBgpPeerSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WireBgpPeerSpec {
    /// Required; `None` is reported as missing.
    #[serde(rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// Required; `None` is reported as missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<wire::LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<bool>,
}

pub(crate) fn bgp_peer_obj(p: &mut Problems<'_>, w: WireBgpPeer) -> BgpPeer {
    if w.metadata.namespace.is_some() {
        p.add(
            "metadata.namespace",
            "a BGPPeer is cluster-scoped: it has no namespace",
        );
    }
    let name = crate::meta_name(p, &w.metadata, crate::names::dns1123_subdomain);
    crate::labels(p, "metadata.labels", &w.metadata.labels);
    let s = w.spec;
    let peer_ip = match s.peer_ip.as_deref() {
        None => {
            p.add("spec.peerIP", "missing (the router's IPv4 or IPv6 address)");
            IpAddr::from([0, 0, 0, 0])
        }
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
                p.add("spec.peerIP", format!("{text} is not a router's address"));
                ip
            }
            Ok(IpAddr::V4(v4)) if v4.is_broadcast() => {
                p.add("spec.peerIP", format!("{text} is not a router's address"));
                IpAddr::V4(v4)
            }
            Ok(ip) => ip,
            Err(_) => {
                p.add(
                    "spec.peerIP",
                    format!("{text:?} is not an IPv4 or IPv6 address"),
                );
                IpAddr::from([0, 0, 0, 0])
            }
        },
    };
    let as_number = match s.as_number {
        None => {
            p.add("spec.asNumber", "missing (the router's AS, 1-4294967294)");
            0
        }
        Some(n) if n == i64::from(AS_TRANS) => {
            p.add(
                "spec.asNumber",
                "23456 is AS_TRANS (RFC 6793), which stands in for four-octet AS numbers; \
                 give the router's real AS",
            );
            0
        }
        Some(n) => match u32::try_from(n) {
            Ok(n) if (1..=4_294_967_294).contains(&n) => n,
            _ => {
                p.add(
                    "spec.asNumber",
                    format!("{n} is outside 1-4294967294 (0 and 4294967295 are reserved)"),
                );
                0
            }
        },
    };
    let node_selector = s
        .node_selector
        .as_ref()
        .map(|sel| crate::policy_parse::selector(p, "spec.nodeSelector", sel))
        .unwrap_or_default();
    let password_file = s.password_file.inspect(|path| {
        if !path.starts_with('/') {
            p.add(
                "spec.passwordFile",
                format!("{path:?} is not an absolute path (a file on the node, such as /etc/twill/bgp-password)"),
            );
        } else if path.contains('\0') {
            p.add("spec.passwordFile", "has a NUL character");
        }
    });
    let hold_seconds = s.hold_seconds.and_then(|h| match u16::try_from(h) {
        Ok(h) if h == 0 || h >= 3 => Some(h),
        _ => {
            p.add(
                "spec.holdSeconds",
                format!("{h} is not 0 (no keepalives) or 3-65535 (RFC 4271)"),
            );
            None
        }
    });
    let keepalive_seconds = s.keepalive_seconds.and_then(|k| {
        let field = "spec.keepaliveSeconds";
        let k = match u16::try_from(k) {
            Ok(v) if (1..=u16::MAX / 3).contains(&v) => v,
            _ => {
                p.add(field, format!("{k} is outside 1-21845"));
                return None;
            }
        };
        match hold_seconds {
            Some(0) => {
                p.add(
                    field,
                    "holdSeconds 0 means no keepalives: leave keepaliveSeconds out",
                );
                None
            }
            Some(h) if k > h / 3 => {
                p.add(
                    field,
                    format!(
                        "{k} is more than a third of holdSeconds {h} (at most {})",
                        h / 3
                    ),
                );
                None
            }
            _ => Some(k),
        }
    });
    BgpPeer {
        name,
        labels: w.metadata.labels,
        peer_ip,
        as_number,
        node_selector,
        password_file,
        hold_seconds,
        keepalive_seconds,
        passive: s.passive.unwrap_or(false),
    }
}

/// The wire form of `b`: the inverse of [`bgp_peer_obj`].
pub(crate) fn to_wire(b: &BgpPeer) -> WireBgpPeer {
    WireBgpPeer {
        api_version: "bgp.twill.io/v1alpha1".into(),
        kind: "BGPPeer".into(),
        metadata: wire::Metadata {
            name: Some(b.name.clone()),
            labels: b.labels.clone(),
            ..Default::default()
        },
        spec: WireBgpPeerSpec {
            peer_ip: Some(b.peer_ip.to_string()),
            as_number: Some(i64::from(b.as_number)),
            node_selector: (!b.node_selector.is_empty())
                .then(|| crate::manifest::selector(&b.node_selector)),
            password_file: b.password_file.clone(),
            hold_seconds: b.hold_seconds.map(i64::from),
            keepalive_seconds: b.keepalive_seconds.map(i64::from),
            // Written out, as the API server writes defaults.
            passive: Some(b.passive),
        },
        status: None,
    }
}
