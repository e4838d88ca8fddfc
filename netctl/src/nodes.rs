//! Reaching a node's daemon and pinned maps from `netctl`: every node of a lab (their
//! sockets and bpffs directories are on this machine), or on a real cluster only the node
//! `netctl` runs on (`/run/twill/twilld.sock`, `/sys/fs/bpf/twill`).

use std::{path::PathBuf, time::Duration};

use twill_api::{PolicyReport, Request, Response};
use twill_lab::{Manifest, workload::DaemonPaths};

use crate::store::StoreArgs;

/// Where a node's daemon socket and maps are, when this machine can reach them.
pub struct NodeAccess {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
}

/// How `netctl` finds nodes: from a lab's manifest, or the local node only.
pub enum Nodes {
    Lab(Box<Manifest>),
    Local { name: String },
}

impl Nodes {
    pub fn of(store: &StoreArgs) -> Nodes {
        if store.etcd_endpoints.is_none()
            && let Ok(m) = Manifest::load(&store.lab)
        {
            return Nodes::Lab(Box::new(m));
        }
        let name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        Nodes::Local { name }
    }

    /// The node's socket and pins, or why they cannot be reached from here.
    pub fn access(&self, node: &str) -> Result<NodeAccess, String> {
        match self {
            Nodes::Lab(m) => {
                let host = m
                    .host(node)
                    .ok_or_else(|| format!("lab {} has no node {node}", m.plan.name))?;
                Ok(NodeAccess {
                    socket: DaemonPaths::of(&host).socket,
                    pin_dir: host.bpffs_dir,
                })
            }
            Nodes::Local { name } if name == node => Ok(NodeAccess {
                socket: twill_api::DEFAULT_SOCKET.into(),
                pin_dir: "/sys/fs/bpf/twill".into(),
            }),
            Nodes::Local { name } => Err(format!(
                "{node}'s maps are not reachable from {name}: run netctl on {node}"
            )),
        }
    }

    /// The node's policy report from its daemon.
    pub fn policy_report(&self, node: &str) -> Result<PolicyReport, String> {
        let access = self.access(node)?;
        match twill_api::call(&access.socket, &Request::Policy, Duration::from_secs(5)) {
            Ok(Response::Policy { report }) => Ok(report),
            Ok(Response::Error { message, .. }) => Err(format!("{node}: {message}")),
            Ok(other) => Err(format!("{node}: unexpected answer {other:?}")),
            Err(e) => Err(format!(
                "{node}: daemon at {} not reachable: {e}",
                access.socket.display()
            )),
        }
    }
}
