//! Reaching the cluster's etcd: directly (`--etcd-endpoints`, optionally with TLS), or for
//! a lab from inside the lab's underlay namespace, where its etcd listens.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use twill_lab::Manifest;
use twill_netns::NetNs;

use crate::lab::DEFAULT_LAB;

#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// etcd client URLs of a real cluster (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// TLS: CA to verify etcd.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// TLS: client certificate (with --etcd-key).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// The lab whose etcd to use when no endpoints are given.
    #[arg(long, default_value = DEFAULT_LAB)]
    pub lab: String,
}

/// Runs `f` with an etcd client: directly, or from inside the lab's underlay namespace.
pub fn with_etcd<T, F, Fut>(args: &StoreArgs, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Client) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send,
{
    type Tls = (PathBuf, Option<(PathBuf, PathBuf)>);
    let (endpoints, tls, netns): (Vec<String>, Option<Tls>, Option<NetNs>) =
        match &args.etcd_endpoints {
            Some(e) => {
                let tls = match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
                    (None, None, None) => None,
                    (Some(ca), cert, key) => Some((ca.clone(), cert.clone().zip(key.clone()))),
                    _ => bail!("--etcd-cert and --etcd-key need --etcd-ca"),
                };
                (e.clone(), tls, None)
            }
            None => {
                let m = Manifest::load(&args.lab).with_context(|| {
                    format!("no --etcd-endpoints given and no lab {} to use", args.lab)
                })?;
                let tls = m.etcd_tls.as_ref().map(|t| {
                    (
                        t.ca_file.clone(),
                        Some((t.cert_file.clone(), t.key_file.clone())),
                    )
                });
                (
                    vec![m.etcd_endpoint()],
                    tls,
                    Some(NetNs::open(&m.plan.underlay_netns)?),
                )
            }
        };
    let work = move || -> anyhow::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(10));
            if let Some((ca, identity)) = tls {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&ca)?));
                if let Some((cert, key)) = identity {
                    t = t.identity(Identity::from_pem(read(&cert)?, read(&key)?));
                }
                options = options.with_tls(t);
            }
            let client = Client::connect(&endpoints, Some(options))
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            f(client).await
        })
    };
    match netns {
        Some(ns) => ns.run(work)?,
        None => work(),
    }
}
