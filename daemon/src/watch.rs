//! Following the cluster's store, as `twill-store` does it, with this daemon's etcd
//! settings and resync interval. Shared by the Service and NetworkPolicy loops, which
//! differ only in what they parse and what a pass does.

pub use twill_store::{Entry, Pass, Store, parse};

use crate::config::Config;

/// Follows the store forever; `pass` runs after the snapshot, after changes, and every
/// `network.resync_seconds`. `what` names the loop in logs.
pub async fn follow<E>(
    config: &Config,
    what: &str,
    parse: fn(&str, &[u8]) -> Option<E>,
    mut pass: impl FnMut(&Store<E>, Pass),
) {
    twill_store::follow(
        &config.etcd(),
        what,
        Some(config.resync),
        parse,
        |store, p, _| pass(store, p),
    )
    .await
}
