//! Running twill on a lab: a `twilld` per node and pods wired through the CNI binary,
//! laid out the same way for the tests and for `netctl lab`.

use std::{
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
};

use serde_json::{Value, json};

use crate::{Host, LabError};

/// Where a node's daemon keeps its configuration, socket, state and log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl DaemonPaths {
    pub fn of(host: &Host) -> Self {
        let dir = host.state_dir.join("twilld");
        Self {
            config: dir.join("twilld.toml"),
            socket: dir.join("twilld.sock"),
            state_dir: dir.join("state"),
            log: dir.join("twilld.log"),
            dir,
        }
    }
}

fn io(action: &str, path: &Path, e: std::io::Error) -> LabError {
    LabError::Resource {
        action: action.to_owned(),
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The `twilld run` arguments for `host`: the lab's etcd, the host's paths and pins.
pub fn daemon_args(
    etcd_endpoint: &str,
    host: &Host,
    paths: &DaemonPaths,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--config".into(),
        paths.config.display().to_string(),
        "--node-name".into(),
        host.name().to_owned(),
        "--etcd-endpoints".into(),
        etcd_endpoint.to_owned(),
        "--socket".into(),
        paths.socket.display().to_string(),
        "--state-dir".into(),
        paths.state_dir.display().to_string(),
        "--bpffs-root".into(),
        host.bpffs_dir.display().to_string(),
        "--cgroup-root".into(),
        host.cgroup_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes `config` and starts `bin` with `args` on `host` (its namespace and cgroup),
/// logging to the daemon's log file. The daemon gets its own process group, so a Ctrl-C
/// meant for the caller does not reach it.
pub fn spawn_daemon(
    bin: &Path,
    host: &Host,
    paths: &DaemonPaths,
    config: &str,
    args: &[String],
) -> Result<Child, LabError> {
    fs::create_dir_all(&paths.dir).map_err(|e| io("creating", &paths.dir, e))?;
    fs::write(&paths.config, config).map_err(|e| io("writing", &paths.config, e))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|e| io("opening", &paths.log, e))?;
    let log_err = log.try_clone().map_err(|e| io("opening", &paths.log, e))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    host.spawn(cmd)
}

/// What a CNI call printed and how it ended.
#[derive(Debug)]
pub struct CniOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The environment of one CNI call.
pub fn cni_vars<'a>(
    command: &'a str,
    container: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

/// twill's network configuration for a node's daemon, in `version`.
pub fn cni_config(version: &str, paths: &DaemonPaths) -> Value {
    json!({
        "cniVersion": version,
        "name": "pods",
        "type": "twill",
        "socket": paths.socket,
        "stateDir": paths.state_dir,
    })
}

/// Runs a CNI plugin exactly as a runtime does: `vars` as its whole CNI environment, the
/// configuration on stdin, from inside `host`'s network namespace.
pub fn invoke_cni(
    bin: &Path,
    host: &Host,
    vars: &[(&str, &str)],
    stdin: &str,
) -> Result<CniOutput, LabError> {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = stdin.to_owned();
    let output = host
        .run(move || {
            let mut child = cmd.spawn()?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
            child.wait_with_output()
        })?
        .map_err(|e| io("running", bin, e))?;
    Ok(CniOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
