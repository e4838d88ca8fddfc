//! BGP session flaps: an established session that went down. The sessions' states and
//! prefix counts are read at scrape time from the speaker's status (as `netctl bgp peers`
//! shows them); a flap can come and go between two scrapes, so it is counted as it
//! happens, by a task per session watching the session's status channel.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::watch;
use twill_bgp::{fsm::State, session::PeerStatus};

use crate::node::Node;

/// How often the speaker is asked for sessions not watched yet (the mesh follows the node
/// records, so sessions come and go).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Flaps by session, while the session exists: a session the speaker drops takes its
/// series with it, so the labels stay bounded by the peers.
#[derive(Debug, Default)]
pub struct SessionFlaps {
    by_peer: Mutex<BTreeMap<Ipv4Addr, (String, u64)>>,
}

impl SessionFlaps {
    /// Starts counting the sessions of `node`'s speaker, once it has one (BGP mode only;
    /// in VXLAN mode nothing is ever counted). Needs a tokio runtime; without one, counts
    /// nothing.
    pub fn start(node: Arc<Node>) -> Arc<SessionFlaps> {
        let flaps = Arc::new(SessionFlaps::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(follow(node, flaps.clone()));
        }
        flaps
    }

    /// `(peer, flaps)` of every watched session.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Ipv4Addr, (String, u64)>> {
        self.by_peer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn follow(node: Arc<Node>, flaps: Arc<SessionFlaps>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tick.tick().await;
        let Some(speaker) = node.bgp.get() else {
            continue;
        };
        for (address, name, status) in speaker.sessions() {
            // A view no session sends to (a configured peer whose session could not
            // start) has nothing to count: watching it would end at once, every look.
            if status.has_changed().is_err() {
                continue;
            }
            let mut watched = flaps.lock();
            if watched.contains_key(&address) {
                continue;
            }
            watched.insert(address, (name, 0));
            drop(watched);
            tokio::spawn(watch_session(address, status, flaps.clone()));
        }
    }
}

/// Whether a session is up, and since when.
fn up(status: &PeerStatus) -> (bool, Option<std::time::Instant>) {
    (status.state == State::Established, status.established_at)
}

/// Whether going from `was` to `now` took an established session down: it is no longer
/// established, or established again since another time (down and up between two looks).
fn flapped(
    was: (bool, Option<std::time::Instant>),
    now: (bool, Option<std::time::Instant>),
) -> bool {
    was.0 && (!now.0 || now.1 != was.1)
}

async fn watch_session(
    address: Ipv4Addr,
    mut status: watch::Receiver<PeerStatus>,
    flaps: Arc<SessionFlaps>,
) {
    let mut was = up(&status.borrow_and_update());
    // Ends when the speaker drops the session (the sender goes with it).
    while status.changed().await.is_ok() {
        let now = up(&status.borrow_and_update());
        if flapped(was, now)
            && let Some((_, n)) = flaps.lock().get_mut(&address)
        {
            *n += 1;
        }
        was = now;
    }
    flaps.lock().remove(&address);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_flap_is_an_established_session_going_down_or_coming_back_anew() {
        let t1 = Some(Instant::now());
        let t2 = t1.map(|t| t + Duration::from_secs(1));
        // Coming up is not a flap; going down is.
        assert!(!flapped((false, None), (true, t1)));
        assert!(flapped((true, t1), (false, None)));
        // Down and up again between two looks: established since another time.
        assert!(flapped((true, t1), (true, t2)));
        // Prefix counts changing on an established session: no flap.
        assert!(!flapped((true, t1), (true, t1)));
        assert!(!flapped((false, None), (false, None)));
    }
}
