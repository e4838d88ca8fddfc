//! Netfilter for pod traffic: outbound NAT, so traffic from pods to addresses outside the
//! cluster CIDR leaves with the node's address (traffic between pods never does), and no
//! connection tracking of traffic between pods that the node forwards.
//!
//! The NAT rules live in twill's own `nat` chain, `TWILL-POSTROUTING`, jumped to from
//! `POSTROUTING`; the untracking rule in its own `raw` chain, `TWILL-PREROUTING`, jumped
//! to from `PREROUTING`. Each chain is rewritten whole with `iptables-restore --noflush`,
//! which replaces it atomically and touches no other chain.
//!
//! Why pod-to-pod traffic is not tracked: the pod programs send it past the node's stack
//! in one direction (`twill_from_pod` redirects it to the device the node routes it
//! through), so a node's conntrack would see each flow one way only (in BGP mode, the
//! direction that comes in from the underlay). The entries it made were wrong (a receiver's
//! node saw the SYN, then data without the SYN-ACK: `SYN_SENT`, and every data packet
//! `INVALID`, which a common `--ctstate INVALID -j DROP` rule would drop) and cost a
//! lookup and a state-machine step per packet. Nothing of twill needs them: NAT never
//! applies between pods, and Services, NetworkPolicy and flow records have their own
//! state in the programs' maps. Traffic to the node's own addresses stays tracked, so a
//! stateful host firewall sees it as before.

use std::{io::Write as _, process::Command};

use ipnetwork::Ipv4Network;

pub const CHAIN: &str = "TWILL-POSTROUTING";
const COMMENT: &str = "twill: masquerade pod traffic leaving the cluster";
/// twill's `raw` chain: pod-to-pod traffic the node forwards is not tracked.
pub const UNTRACKED_CHAIN: &str = "TWILL-PREROUTING";
const UNTRACKED_COMMENT: &str = "twill: no connection tracking between pods";

#[derive(Debug, thiserror::Error)]
#[error("{command}: {message}")]
pub struct MasqueradeError {
    command: String,
    message: String,
}

/// The `iptables-restore` input for the chain (pure, so it can be checked).
pub fn rules(cluster: Ipv4Network) -> String {
    format!(
        "*nat\n\
         :{CHAIN} - [0:0]\n\
         -A {CHAIN} -s {cluster} -d {cluster} -j RETURN\n\
         -A {CHAIN} -s {cluster} -d 224.0.0.0/4 -j RETURN\n\
         -A {CHAIN} -s {cluster} -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// The `iptables-restore` input for the `raw` chain (pure, so it can be checked): traffic
/// from a pod address to a pod address that is not one of the node's own (`addrtype`
/// LOCAL: its VTEP address, say) is not tracked.
pub fn untracked_rules(cluster: Ipv4Network) -> String {
    format!(
        "*raw\n\
         :{UNTRACKED_CHAIN} - [0:0]\n\
         -A {UNTRACKED_CHAIN} -s {cluster} -d {cluster} -m addrtype ! --dst-type LOCAL -j NOTRACK\n\
         COMMIT\n"
    )
}

/// Runs a command; `Ok((succeeded, stderr))` once it ran.
fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(bool, String), MasqueradeError> {
    let err = |message: String| MasqueradeError {
        command: format!("{program} {}", args.join(" ")),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run it (is iptables installed?): {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(text) = input {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// Makes the `nat` chain hold exactly [`rules`] and `POSTROUTING` jump to it once.
pub fn ensure(cluster: Ipv4Network) -> Result<(), MasqueradeError> {
    ensure_chain(&rules(cluster), "nat", "POSTROUTING", COMMENT, CHAIN)
}

/// Makes the `raw` chain hold exactly [`untracked_rules`] and `PREROUTING` jump to it once.
pub fn ensure_untracked(cluster: Ipv4Network) -> Result<(), MasqueradeError> {
    ensure_chain(
        &untracked_rules(cluster),
        "raw",
        "PREROUTING",
        UNTRACKED_COMMENT,
        UNTRACKED_CHAIN,
    )
}

/// Restores `input` (one table, one chain of twill's) and makes `builtin` jump to `chain`
/// once, first.
fn ensure_chain(
    input: &str,
    table: &'static str,
    builtin: &'static str,
    comment: &'static str,
    chain: &'static str,
) -> Result<(), MasqueradeError> {
    let restore = ["--noflush", "-w"];
    let (ok, stderr) = run("iptables-restore", &restore, Some(input))?;
    if !ok {
        return Err(MasqueradeError {
            command: format!("iptables-restore {}", restore.join(" ")),
            message: stderr,
        });
    }
    let jump = [builtin, "-m", "comment", "--comment", comment, "-j", chain];
    let with = |op: &'static str| -> Vec<&str> {
        ["-w", "-t", table, op].into_iter().chain(jump).collect()
    };
    // A failed check means "not there yet".
    if !run("iptables", &with("-C"), None)?.0 {
        let insert = with("-I");
        let (ok, stderr) = run("iptables", &insert, None)?;
        if !ok {
            return Err(MasqueradeError {
                command: format!("iptables {}", insert.join(" ")),
                message: stderr,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_and_multicast_return_before_the_masquerade() {
        let r = rules("10.244.0.0/16".parse().unwrap());
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[1], ":TWILL-POSTROUTING - [0:0]");
        assert!(lines[2].ends_with("-s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN"));
        assert!(lines[4].ends_with("-j MASQUERADE --random-fully"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn only_forwarded_pod_to_pod_traffic_is_untracked() {
        let r = untracked_rules("10.244.0.0/16".parse().unwrap());
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "*raw");
        assert_eq!(lines[1], ":TWILL-PREROUTING - [0:0]");
        assert_eq!(
            lines[2],
            "-A TWILL-PREROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j NOTRACK"
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }
}
