//! BIRD 2 as a real BGP peer in a lab host's namespace, for the tests of `twill-bgp` and of
//! twilld's BGP mode: started from a configuration text, asked with `birdc`, stopped when
//! dropped (its log printed when the test failed).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use twill_lab::Host;

/// `bird -c CONF -s SOCK -f` on a lab host, stopped (and continued first, if frozen) when
/// dropped.
pub struct Bird {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Bird {
    /// Starts BIRD on `host` with `config`, in which `LOG` stands for the log file's path;
    /// returns once `birdc show status` says it is up.
    pub fn start(host: &Host, config: &str) -> Bird {
        assert!(
            Command::new("bird").arg("--version").output().is_ok(),
            "bird is missing: apt-get install bird2 (scripts/setup installs it)"
        );
        let dir = host.state_dir.clone();
        let conf = dir.join("bird.conf");
        let config = config.replace("LOG", &dir.join("bird.log").display().to_string());
        fs::write(&conf, config).expect("write bird.conf");
        let socket = dir.join("bird.ctl");
        let mut cmd = Command::new("bird");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("bird.stderr")).expect("bird stderr"));
        let child = host.spawn(cmd).expect("start bird");
        let bird = Bird { child, dir, socket };
        let start = Instant::now();
        while !bird.birdc(&["show", "status"]).contains("Daemon is up") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "bird did not come up: {}",
                bird.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bird
    }

    /// BIRD's control socket, for callers that run `birdc` their own way.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `birdc -s SOCK ARGS...`: its output, empty if it could not run.
    pub fn birdc(&self, args: &[&str]) -> String {
        Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Kills BIRD with SIGKILL, as a crash would: its TCP connections close without a
    /// NOTIFICATION.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops BIRD (SIGSTOP): its sessions go silent until [`Self::thaw`].
    pub fn freeze(&self) {
        self.signal(signal::Signal::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(signal::Signal::SIGCONT);
    }

    fn signal(&self, s: signal::Signal) {
        signal::kill(Pid::from_raw(self.child.id() as i32), s).expect("signal bird");
    }

    /// Its log and stderr.
    pub fn logs(&self) -> String {
        let log = fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default();
        let stderr = fs::read_to_string(self.dir.join("bird.stderr")).unwrap_or_default();
        format!("--- bird.log\n{log}--- bird stderr\n{stderr}")
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // Already gone (crashed and reaped): its pid may be another process's by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, signal::Signal::SIGCONT);
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
