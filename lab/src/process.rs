//! Processes the lab starts or finds: identity that survives pid reuse, and stopping them.

use std::{fs, thread, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// A process, named by pid and start time so a recycled pid is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot when the process started.
    pub start_time: u64,
}

impl ProcessRef {
    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// The process with this pid, if it exists and has not exited.
    pub fn of(pid: u32) -> Option<Self> {
        let (state, start_time) = stat(pid)?;
        (state != 'Z' && state != 'X').then_some(Self { pid, start_time })
    }

    /// Whether this very process still runs (a zombie does not count).
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }
}

/// State letter and start time from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); start time is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// Stops processes: SIGTERM, up to `grace` to exit, then SIGKILL. Returns the pids that
/// were still alive after SIGKILL (normally none).
pub fn stop_all(pids: &[u32], grace: Duration) -> Vec<u32> {
    let alive = |pid: &u32| ProcessRef::of(*pid).is_some();
    let targets: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| *p != std::process::id())
        .collect();
    for pid in &targets {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        // A stopped process (a paused etcd, say) acts on SIGTERM only once continued.
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
    }
    let step = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    while waited < grace && targets.iter().any(alive) {
        thread::sleep(step);
        waited += step;
    }
    for pid in targets.iter().filter(|p| alive(p)) {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    let mut waited = Duration::ZERO;
    while waited < Duration::from_secs(2) && targets.iter().any(alive) {
        thread::sleep(step);
        waited += step;
    }
    targets.into_iter().filter(|p| alive(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessRef::current().unwrap();
        assert!(me.is_alive());
        let recycled = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
    }

    #[test]
    fn a_stopped_child_is_gone_and_reported_as_such() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let reaper = thread::spawn(move || child.wait());
        assert!(stop_all(&[pid], Duration::from_secs(2)).is_empty());
        assert!(!reaper.join().unwrap().unwrap().success());
        assert!(ProcessRef::of(pid).is_none());
    }
}
