//! `twill`, the CNI plugin binary the container runtime calls once per pod and command.
//!
//! It is a thin client of the node's `twilld`: the daemon hands out addresses, this binary
//! wires the pod (see [`wire`]) and speaks the CNI spec (see [`spec`]). Results and errors
//! go to stdout as the spec says; logs go to the configured file or stderr, never stdout.
//!
//! ADD: allocate an address, create the veth pair (pod end down, no address), tell twilld
//! the pod and ask it to attach the pod programs, and only when it has answered configure
//! the pod end. twilld attaches before answering when a policy selects the pod, so such a
//! pod is filtered from its first packet; otherwise it queues the attach. Any failure
//! after the allocation deletes the veth and releases the address.
#![forbid(unsafe_code)]

mod spec;
mod wire;

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use twill_api::{ErrorKind, Request, Response, host_ifname, pending_release_path};

use crate::spec::{
    CURRENT_VERSION, CniError, Command, Env, NetConf, SUPPORTED_VERSIONS, code, config_version,
    parse_config, parse_env, render_result,
};

/// How long to wait for twilld on one request.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config_version(&stdin).unwrap_or_else(|| CURRENT_VERSION.to_owned());
    let outcome = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("reading stdin: {e}"),
        )),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(result)) => {
            let _ = writeln!(out, "{result}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let (command, env) = parse_env(|k| std::env::var(k).ok())?;
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": config_version(stdin).filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str())).unwrap_or_else(|| CURRENT_VERSION.to_owned()),
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = parse_config(stdin, command)?;
    let log = Log::new(conf.log_file.clone(), command, &env);
    let result = match command {
        Command::Add => add(&conf, &env, &log),
        Command::Del => del(&conf, &env, &log).map(|()| None),
        Command::Check => check(&conf, &env).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(&conf, &log).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    if let Err(e) = &result {
        log.line(&format!("failed: {e}"));
    }
    result
}

fn ask(conf: &NetConf, request: &Request) -> Result<Response, twill_api::ClientError> {
    twill_api::call(&conf.socket, request, DAEMON_TIMEOUT)
}

fn unreachable_daemon(e: &twill_api::ClientError) -> CniError {
    CniError::new(code::TRY_AGAIN_LATER, format!("try again later: {e}"))
}

fn add(conf: &NetConf, env: &Env, log: &Log) -> Result<Option<Value>, CniError> {
    let netns = env.netns.as_deref().expect("ADD requires CNI_NETNS");
    // Before anything is allocated or created: an existing interface is the runtime's
    // mistake, and nothing of the attachment that owns it may be undone here.
    if wire::interface_exists(netns, &env.ifname)? {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!(
                "interface {} already exists in {}",
                env.ifname,
                netns.display()
            ),
        ));
    }
    let key = env.key();
    let address = match ask(
        conf,
        &Request::Allocate {
            key: key.clone(),
            pod: env.pod.clone(),
        },
    ) {
        Ok(Response::Allocated { address }) => address,
        Ok(Response::Error {
            kind: ErrorKind::NotReady | ErrorKind::Exhausted,
            message,
        }) => {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("try again later: {message}"),
            ));
        }
        Ok(other) => {
            return Err(CniError::new(
                code::WIRING_FAILED,
                format!("twilld refused the address: {other:?}"),
            ));
        }
        Err(e) => return Err(unreachable_daemon(&e)),
    };
    let host_if = host_ifname(&key);
    let plan = wire::PodPlan {
        netns,
        ifname: &env.ifname,
        host_ifname: &host_if,
        ip: address.ip,
        gateway: address.gateway,
        mtu: conf.mtu.unwrap_or(address.mtu),
    };
    // The pod end stays down and without an address until twilld has answered: when a
    // policy selects the pod, twilld attaches its programs before answering, and nothing
    // in the pod can send before they are on.
    let wired = wire::create(&plan).and_then(|created| {
        let pod = twill_api::PodInfo {
            ip: address.ip,
            netns_cookie: created.netns_cookie,
            host_ifindex: created.host_index,
            host_mac: created.host_mac(),
            pod_mac: created.pod_mac.clone(),
        };
        // The pod's policy is written (and, if a policy isolates it, its programs
        // attached) before the pod interface can send anything.
        let admitted = match ask(
            conf,
            &Request::AttachPod {
                ifname: host_if.clone(),
                queue: true,
                defer: true,
                pod: Some(pod),
            },
        ) {
            Ok(Response::Attached { .. }) => false,
            Ok(Response::Admitted { .. }) => true,
            Ok(other) => {
                return Err(CniError::new(
                    code::WIRING_FAILED,
                    format!("attaching the pod programs to {host_if}: {other:?}"),
                ));
            }
            Err(e) => return Err(unreachable_daemon(&e)),
        };
        let wiring = wire::configure(&plan, &created)?;
        if !admitted {
            return Ok((wiring, "programs attached"));
        }
        // Not isolated: the programs go on in the background, now that this ADD's own
        // netlink work is done (the attach holds RTNL through grace periods).
        match ask(
            conf,
            &Request::AttachPod {
                ifname: host_if.clone(),
                queue: true,
                defer: false,
                pod: None,
            },
        ) {
            Ok(Response::AttachQueued { .. } | Response::Attached { .. }) => {
                Ok((wiring, "programs queued"))
            }
            Ok(other) => Err(CniError::new(
                code::WIRING_FAILED,
                format!("queueing the pod programs for {host_if}: {other:?}"),
            )),
            Err(e) => Err(unreachable_daemon(&e)),
        }
    });
    match wired {
        Ok((wiring, programs)) => {
            log.line(&format!(
                "added {}/32 on {} (host {host_if}, {programs})",
                address.ip, env.ifname
            ));
            Ok(Some(render_result(conf, &wiring)))
        }
        Err(e) => {
            // Undo in reverse: the veth (its pod end and the host route go with it), then
            // the address, so a failed ADD leaks nothing.
            if let Err(undo) = wire::remove(&host_if) {
                log.line(&format!("rollback: removing {host_if}: {undo}"));
            }
            release(conf, env, log, false);
            Err(e)
        }
    }
}

/// Frees the attachment's address, or queues the release for the daemon when it is down.
/// `retired`: the pair was renamed by [`wire::retire`] for the daemon to delete.
fn release(conf: &NetConf, env: &Env, log: &Log, retired: bool) -> Option<CniError> {
    let key = env.key();
    match ask(
        conf,
        &Request::Release {
            key: key.clone(),
            retired,
        },
    ) {
        Ok(Response::Released { .. }) => None,
        answer => {
            let why = match answer {
                Err(e) => e.to_string(),
                Ok(other) => format!("{other:?}"),
            };
            let path = pending_release_path(&conf.state_dir, &key);
            match queue_release(&path, &key) {
                Ok(()) => {
                    log.line(&format!(
                        "twilld did not take the release ({why}); queued in {}",
                        path.display()
                    ));
                    None
                }
                Err(e) => Some(CniError::new(
                    code::IO_FAILURE,
                    format!(
                        "cannot release the address: twilld: {why}; queueing in {}: {e}",
                        path.display()
                    ),
                )),
            }
        }
    }
}

fn queue_release(path: &Path, key: &twill_api::AttachmentKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(key).expect("plain data"))?;
    fs::rename(&tmp, path)
}

fn del(conf: &NetConf, env: &Env, log: &Log) -> Result<(), CniError> {
    let key = env.key();
    let host_if = host_ifname(&key);
    let retired = twill_api::retired_ifnames(&key);
    // Gone already (a repeated DEL, a namespace that died with its pod) is success.
    let outcome = wire::retire(env.netns.as_deref(), &env.ifname, &host_if, &retired)?;
    match outcome {
        wire::Retired::Renamed => log.line(&format!(
            "moved {} out of the pod; {host_if} is now {} for twilld to delete",
            env.ifname, retired.0
        )),
        wire::Retired::Deleted => log.line(&format!("removed {host_if}")),
        wire::Retired::Gone => {}
    }
    match release(conf, env, log, outcome == wire::Retired::Renamed) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

fn check(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let key = env.key();
    let address = match ask(conf, &Request::Lookup { key: key.clone() }) {
        Ok(Response::Found { address: Some(a) }) => a,
        Ok(Response::Found { address: None }) => {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "no address is allocated for container {} interface {}",
                    env.container_id, env.ifname
                ),
            ));
        }
        Ok(other) => {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!("twilld answered {other:?}"),
            ));
        }
        Err(e) => return Err(unreachable_daemon(&e)),
    };
    if let Some(prev) = &conf.prev_result {
        let want = format!("{}/32", address.ip);
        let listed = prev
            .get("ips")
            .and_then(Value::as_array)
            .is_some_and(|ips| {
                ips.iter()
                    .any(|ip| ip.get("address").and_then(Value::as_str) == Some(&want))
            });
        if !listed {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!("prevResult does not list the pod's address {want}"),
            ));
        }
    }
    let host_if = host_ifname(&key);
    let netns = env.netns.as_deref().expect("CHECK requires CNI_NETNS");
    let problems = wire::check(&wire::PodPlan {
        netns,
        ifname: &env.ifname,
        host_ifname: &host_if,
        ip: address.ip,
        gateway: address.gateway,
        mtu: conf.mtu.unwrap_or(address.mtu),
    })?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::CHECK_FAILED, problems.join("; ")))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    match ask(conf, &Request::Status) {
        Ok(Response::Status { status }) => match status.not_ready {
            None => Ok(()),
            Some(reason) => {
                // Without a confirmed lease, other nodes drop their routes to this node's
                // pods once its record expires: existing pods lose connectivity too.
                if status.pods > 0 {
                    Err(CniError::new(
                        code::LIMITED_CONNECTIVITY,
                        format!(
                            "twill is not ready and the node's {} pod(s) may have limited \
                             connectivity: {reason}",
                            status.pods
                        ),
                    ))
                } else {
                    Err(CniError::new(
                        code::NOT_AVAILABLE,
                        format!("twill is not ready: {reason}"),
                    ))
                }
            }
        },
        Ok(other) => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("twilld answered {other:?}"),
        )),
        Err(e) => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("twill is not ready: {e}"),
        )),
    }
}

fn gc(conf: &NetConf, log: &Log) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments.clone() else {
        // No list means no statement about what is valid: removing everything would be
        // the wrong guess.
        log.line("GC without a list of valid attachments: nothing removed");
        return Ok(());
    };
    let keep: BTreeSet<String> = valid.iter().map(host_ifname).collect();
    let removed = wire::remove_stale_host_links(&keep)?;
    for name in &removed {
        log.line(&format!("GC removed stale interface {name}"));
    }
    match ask(conf, &Request::Gc { valid }) {
        Ok(Response::Collected { released }) => {
            for k in released {
                log.line(&format!(
                    "GC released the address of {} {}",
                    k.container_id, k.ifname
                ));
            }
            Ok(())
        }
        Ok(other) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("twilld answered {other:?}"),
        )),
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "try again later: {e} (stale interfaces were removed; addresses are released when GC runs again)"
            ),
        )),
    }
}

/// Log lines for the operator: to `logFile` when configured, else stderr.
struct Log {
    file: Option<PathBuf>,
    prefix: String,
}

impl Log {
    fn new(file: Option<PathBuf>, command: Command, env: &Env) -> Self {
        let prefix = format!(
            "twill[{}] {command:?} {} {}",
            std::process::id(),
            env.container_id,
            env.ifname
        );
        Self { file, prefix }
    }

    fn line(&self, message: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let text = format!("{now:.3} {}: {message}\n", self.prefix);
        match &self.file {
            Some(path) => {
                if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
                    let _ = f.write_all(text.as_bytes());
                }
            }
            None => eprint!("{text}"),
        }
    }
}
