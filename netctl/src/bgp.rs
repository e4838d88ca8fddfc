//! `netctl bgp peers`: the BGP sessions of the nodes' daemons (BGP-routed mode), from their
//! status: every node of a lab, or the local node.

use std::time::Duration;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use twill_api::{BgpStatus, Request, Response};

use crate::{nodes::Nodes, store::StoreArgs};

#[derive(Subcommand)]
pub enum BgpCommand {
    /// Sessions per node: peer, AS, state, uptime, prefixes sent and received, last error;
    /// then the routes a node refused.
    Peers {
        /// Only this node (default: every node of the lab, or the local node).
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn run(cmd: BgpCommand) -> anyhow::Result<()> {
    let BgpCommand::Peers {
        node,
        output,
        store,
    } = cmd;
    let nodes = Nodes::of(&store);
    let names: Vec<String> = match (&node, &nodes) {
        (Some(n), _) => vec![n.clone()],
        (None, Nodes::Lab(m)) => m.plan.nodes().map(|h| h.name.clone()).collect(),
        (None, Nodes::Local { name }) => vec![name.clone()],
    };
    let mut answers = Vec::new();
    for name in &names {
        answers.push((name.clone(), status(&nodes, name)));
    }
    match output {
        Format::Json => {
            let value: serde_json::Map<String, serde_json::Value> = answers
                .iter()
                .map(|(n, r)| {
                    let v = match r {
                        Ok(Some(s)) => serde_json::to_value(s).unwrap_or_default(),
                        Ok(None) => serde_json::json!({"error": "not in the BGP-routed mode"}),
                        Err(e) => serde_json::json!({ "error": e }),
                    };
                    (n.clone(), v)
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Table => print!("{}", table(&answers)),
    }
    if answers.iter().all(|(_, r)| r.is_err()) {
        bail!("no node answered");
    }
    Ok(())
}

/// The node's BGP status; `None` when it runs the VXLAN mode.
fn status(nodes: &Nodes, node: &str) -> Result<Option<BgpStatus>, String> {
    let access = nodes.access(node)?;
    match twill_api::call(&access.socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { status }) => Ok(status.bgp.map(|b| *b)),
        Ok(Response::Error { message, .. }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(format!(
            "daemon at {} not reachable: {e}",
            access.socket.display()
        )),
    }
}

fn uptime(seconds: Option<u64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m{}s", s / 60, s % 60),
        Some(s) => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

fn table(answers: &[(String, Result<Option<BgpStatus>, String>)]) -> String {
    let mut rows = vec![
        [
            "NODE",
            "PEER",
            "ADDRESS",
            "AS",
            "STATE",
            "UPTIME",
            "SENT",
            "RECEIVED",
            "LAST ERROR",
        ]
        .map(str::to_owned),
    ];
    let mut notes = Vec::new();
    for (node, answer) in answers {
        match answer {
            Err(e) => notes.push(format!("{node}: {e}")),
            Ok(None) => notes.push(format!(
                "{node}: not in the BGP-routed mode (network.overlay)"
            )),
            Ok(Some(s)) => {
                if s.peers.is_empty() {
                    notes.push(format!("{node}: no BGP peers"));
                }
                for p in &s.peers {
                    let received = if p.prefixes_stale > 0 {
                        format!("{} ({} stale)", p.prefixes_received, p.prefixes_stale)
                    } else {
                        p.prefixes_received.to_string()
                    };
                    rows.push([
                        node.clone(),
                        p.node.clone(),
                        p.address.to_string(),
                        p.as_number.to_string(),
                        p.state.clone(),
                        uptime(p.uptime_seconds),
                        p.prefixes_sent.to_string(),
                        received,
                        p.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                    ]);
                }
                for r in &s.refused {
                    notes.push(format!("{node}: refused {r}"));
                }
                if let Some(p) = &s.problem {
                    notes.push(format!("{node}: {p}"));
                }
            }
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_api::BgpPeerStatus;

    #[test]
    fn the_table_has_a_row_per_session_and_notes_refusals() {
        let status = BgpStatus {
            as_number: 64512,
            router_id: Some("172.30.0.11".parse().unwrap()),
            announced: Some("10.244.0.0/24".parse().unwrap()),
            peers: vec![BgpPeerStatus {
                node: "node2".into(),
                address: "172.30.0.12".parse().unwrap(),
                as_number: 64512,
                state: "Established".into(),
                passive: false,
                uptime_seconds: Some(75),
                prefixes_sent: 1,
                prefixes_received: 1,
                prefixes_stale: 0,
                last_error: None,
            }],
            refused: vec!["10.244.9.0/24 from node node2 (172.30.0.12): ...".into()],
            routes: 1,
            problem: None,
        };
        let t = table(&[
            ("node1".into(), Ok(Some(status))),
            ("node3".into(), Ok(None)),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE   PEER   ADDRESS"), "{t}");
        assert!(
            lines[1].starts_with("node1  node2  172.30.0.12  64512  Established  75s"),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "node1: refused 10.244.9.0/24 from node node2 (172.30.0.12): ..."
        );
        assert!(lines[3].contains("node3: not in the BGP-routed mode"));
    }
}
