//! `netctl get`: what the cluster's etcd says about nodes and pods.
//!
//! etcd is reached directly (`--etcd-endpoints`) or, for a lab, from inside the lab's
//! underlay namespace, where its etcd listens.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use ipnetwork::Ipv4Network;
use serde::Serialize;
use twill_api::cluster::{self, NodeRecord, PodRecord, SubnetRecord};
use twill_lab::Manifest;
use twill_netns::NetNs;

use crate::lab::DEFAULT_LAB;

#[derive(Subcommand)]
pub enum GetCommand {
    /// Nodes: live ones from their records, dead ones whose subnet is still held.
    Nodes(GetArgs),
    /// Pods with their addresses and nodes.
    Pods {
        #[command(flatten)]
        args: GetArgs,
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Args)]
pub struct GetArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    /// etcd client URLs of a real cluster (comma-separated).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// TLS: CA, client certificate and key for etcd.
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// The lab to ask (when no endpoints are given).
    #[arg(long, default_value = DEFAULT_LAB)]
    lab: String,
}

pub fn run(cmd: GetCommand) -> anyhow::Result<()> {
    match cmd {
        GetCommand::Nodes(args) => {
            let (nodes, subnets) = fetch(&args, |mut c| async move {
                let nodes = c
                    .get(cluster::NODES, Some(GetOptions::new().with_prefix()))
                    .await?;
                let subnets = c
                    .get(cluster::SUBNETS, Some(GetOptions::new().with_prefix()))
                    .await?;
                Ok((pairs(&nodes), pairs(&subnets)))
            })?;
            let rows = node_rows(&nodes, &subnets);
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAME", "STATUS", "UNDERLAY IP", "POD SUBNET"];
                if wide {
                    header.push("VTEP MAC");
                }
                let lines = rows
                    .iter()
                    .map(|r| {
                        let mut l = vec![
                            r.name.clone(),
                            r.status.clone(),
                            r.underlay_ip.clone().unwrap_or_else(|| "-".into()),
                            r.subnet.to_string(),
                        ];
                        if wide {
                            l.push(r.vtep_mac.clone().unwrap_or_else(|| "-".into()));
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
        GetCommand::Pods { args, namespace } => {
            let pods = fetch(&args, |mut c| async move {
                let pods = c
                    .get(cluster::PODS, Some(GetOptions::new().with_prefix()))
                    .await?;
                Ok(pairs(&pods))
            })?;
            let mut rows: Vec<PodRecord> = pods
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .filter(|p: &PodRecord| namespace.as_ref().is_none_or(|n| &p.namespace == n))
                .collect();
            rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            print(args.output, &rows, |wide| {
                let mut header = vec!["NAMESPACE", "NAME", "IP", "NODE"];
                if wide {
                    header.extend(["CONTAINER", "INTERFACE"]);
                }
                let lines = rows
                    .iter()
                    .map(|p| {
                        let mut l = vec![
                            p.namespace.clone(),
                            p.name.clone(),
                            p.ip.to_string(),
                            p.node.clone(),
                        ];
                        if wide {
                            l.extend([p.container_id.clone(), p.ifname.clone()]);
                        }
                        l
                    })
                    .collect();
                (header, lines)
            })
        }
    }
}

#[derive(Debug, Serialize)]
struct NodeRow {
    name: String,
    status: String,
    underlay_ip: Option<String>,
    subnet: Ipv4Network,
    vtep_mac: Option<String>,
}

/// Live nodes from their records; nodes whose record expired but whose subnet is still
/// held (the quarantine) as not ready.
fn node_rows(nodes: &[(String, Vec<u8>)], subnets: &[(String, Vec<u8>)]) -> Vec<NodeRow> {
    let mut rows: BTreeMap<String, NodeRow> = BTreeMap::new();
    for (_, v) in nodes {
        if let Ok(r) = serde_json::from_slice::<NodeRecord>(v) {
            rows.insert(
                r.name.clone(),
                NodeRow {
                    name: r.name,
                    status: "Ready".into(),
                    underlay_ip: Some(r.underlay_ip.to_string()),
                    subnet: r.subnet,
                    vtep_mac: r.vtep_mac,
                },
            );
        }
    }
    for (k, v) in subnets {
        if let (Some(subnet), Ok(r)) = (
            cluster::subnet_from_key(k),
            serde_json::from_slice::<SubnetRecord>(v),
        ) && !rows.contains_key(&r.node)
        {
            rows.insert(
                r.node.clone(),
                NodeRow {
                    name: r.node,
                    status: "NotReady (lease expired; subnet held for its quarantine)".into(),
                    underlay_ip: None,
                    subnet,
                    vtep_mac: None,
                },
            );
        }
    }
    rows.into_values().collect()
}

fn pairs(resp: &etcd_client::GetResponse) -> Vec<(String, Vec<u8>)> {
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

fn print<T: Serialize>(
    format: Format,
    rows: &T,
    table: impl FnOnce(bool) -> (Vec<&'static str>, Vec<Vec<String>>),
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(rows)?),
        Format::Table | Format::Wide => {
            let (header, lines) = table(format == Format::Wide);
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for l in &lines {
                for (w, cell) in widths.iter_mut().zip(l) {
                    *w = (*w).max(cell.len());
                }
            }
            let row = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("   ")
                    .trim_end()
                    .to_owned()
            };
            println!("{}", row(header.iter().map(|h| h.to_string()).collect()));
            for l in lines {
                println!("{}", row(l));
            }
        }
    }
    Ok(())
}

/// Runs `f` against etcd: directly, or from inside the lab's underlay namespace.
fn fetch<T, F, Fut>(args: &GetArgs, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Client) -> Fut + Send,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
    T: Send,
{
    let (endpoints, tls, netns) = match &args.etcd_endpoints {
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
                format!("no --etcd-endpoints given and no lab {} to ask", args.lab)
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
                .with_timeout(Duration::from_secs(5));
            if let Some((ca, identity)) = tls {
                let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(
                    std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?,
                ));
                if let Some((cert, key)) = identity {
                    t = t.identity(Identity::from_pem(
                        std::fs::read(&cert)
                            .with_context(|| format!("reading {}", cert.display()))?,
                        std::fs::read(&key)
                            .with_context(|| format!("reading {}", key.display()))?,
                    ));
                }
                options = options.with_tls(t);
            }
            let client = Client::connect(&endpoints, Some(options))
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            f(client)
                .await
                .with_context(|| format!("reading from etcd at {}", endpoints.join(",")))
        })
    };
    match netns {
        Some(ns) => ns.run(work)?,
        None => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_record_expired_shows_as_not_ready_while_its_subnet_is_held() {
        let nodes = vec![(
            "/twill/v1/nodes/a".to_owned(),
            br#"{"name":"a","subnet":"10.244.0.0/24","underlay_ip":"172.30.0.11"}"#.to_vec(),
        )];
        let subnets = vec![
            (
                "/twill/v1/subnets/10.244.0.0-24".to_owned(),
                br#"{"node":"a"}"#.to_vec(),
            ),
            (
                "/twill/v1/subnets/10.244.1.0-24".to_owned(),
                br#"{"node":"b"}"#.to_vec(),
            ),
        ];
        let rows = node_rows(&nodes, &subnets);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, "Ready");
        assert_eq!(rows[1].name, "b");
        assert!(rows[1].status.starts_with("NotReady"));
        assert_eq!(rows[1].subnet.to_string(), "10.244.1.0/24");
    }
}
