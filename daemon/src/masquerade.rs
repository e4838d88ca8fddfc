//! Outbound NAT: traffic from pods to addresses outside the cluster CIDR leaves with the
//! node's address; traffic between pods never does.
//!
//! The rules live in twill's own `nat` chain, `TWILL-POSTROUTING`, jumped to from
//! `POSTROUTING`. The chain is rewritten whole with `iptables-restore --noflush`, which
//! replaces it atomically and touches no other chain.

use std::{io::Write as _, process::Command};

use ipnetwork::Ipv4Network;

pub const CHAIN: &str = "TWILL-POSTROUTING";
const COMMENT: &str = "twill: masquerade pod traffic leaving the cluster";

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

/// Makes the chain hold exactly [`rules`] and `POSTROUTING` jump to it once.
pub fn ensure(cluster: Ipv4Network) -> Result<(), MasqueradeError> {
    let restore = ["--noflush", "-w"];
    let (ok, stderr) = run("iptables-restore", &restore, Some(&rules(cluster)))?;
    if !ok {
        return Err(MasqueradeError {
            command: format!("iptables-restore {}", restore.join(" ")),
            message: stderr,
        });
    }
    let jump = [
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        CHAIN,
    ];
    let with = |op: &'static str| -> Vec<&str> {
        ["-w", "-t", "nat", op].into_iter().chain(jump).collect()
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
}
