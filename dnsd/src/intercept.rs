//! Interception of pods' queries to the cluster DNS Service: while this server serves, it
//! keeps an entry per protocol in the node's `TWILL_DNS_LOCAL` map, and the eBPF programs
//! send new flows to the Service's port 53 here instead of to the Service's backends.
//!
//! Each entry says until when it holds (`CLOCK_MONOTONIC`): it is renewed every
//! [`RENEW_EVERY`] to [`HOLD_FOR`] ahead, so a server that dies without cleaning up
//! (SIGKILL, a crash, a hung runtime) stops receiving new flows within [`HOLD_FOR`], and
//! they go to the Service's backends again. A server that stops cleanly removes its
//! entries first ([`withdraw`]), so the fallback is immediate.

use std::time::Duration;

use tracing::{debug, info, warn};
use twill_abi::lb::{
    FrontendKey, IPPROTO_TCP, IPPROTO_UDP, LocalBackend, SCOPE_CLUSTER_IP, wire_ip, wire_port,
};

use crate::config::InterceptConfig;

/// How often the entries are renewed.
pub const RENEW_EVERY: Duration = Duration::from_millis(250);
/// How long an entry holds after its last renewal.
pub const HOLD_FOR: Duration = Duration::from_secs(1);

/// The frontends taken over: the Service's port 53 over UDP and TCP.
pub fn frontends(config: &InterceptConfig) -> [FrontendKey; 2] {
    [IPPROTO_UDP, IPPROTO_TCP].map(|protocol| FrontendKey {
        ip: wire_ip(config.service_ip.octets()),
        port: wire_port(53),
        protocol,
        scope: SCOPE_CLUSTER_IP,
    })
}

fn entry(config: &InterceptConfig, alive_until_ns: u64) -> LocalBackend {
    LocalBackend {
        ip: wire_ip(config.backend.ip().octets()),
        port: wire_port(config.backend.port()),
        _pad: 0,
        alive_until_ns,
    }
}

/// Renews the entries until cancelled. Call it once the sockets are bound, and cancel it
/// (then [`withdraw`]) when serving stops. A missing map (twilld has not loaded the
/// programs yet) is retried quietly: said once, and again when it is found.
pub async fn keep_entries(config: InterceptConfig) {
    let pin = twill_bpf::local_backend_pin(&config.pin_dir);
    let mut ticker = tokio::time::interval(RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    let mut intercepting = false;
    loop {
        ticker.tick().await;
        let until = twill_bpf::monotonic_ns() + HOLD_FOR.as_nanos() as u64;
        let value = entry(&config, until);
        let result = frontends(&config)
            .into_iter()
            .try_for_each(|key| twill_bpf::set_local_backend(&config.pin_dir, key, value));
        match result {
            Ok(()) => {
                failing = None;
                if !intercepting {
                    info!(
                        "intercepting queries to {}:53 (udp, tcp) to {}",
                        config.service_ip, config.backend
                    );
                    intercepting = true;
                }
            }
            Err(e) => {
                let message = if pin.exists() {
                    format!("{:#}", anyhow::Error::new(e))
                } else {
                    format!(
                        "{} does not exist (is twilld running?); retrying",
                        pin.display()
                    )
                };
                intercepting = false;
                if failing.as_deref() != Some(message.as_str()) {
                    warn!(
                        "cannot intercept queries to {}: {message}",
                        config.service_ip
                    );
                    failing = Some(message);
                }
            }
        }
    }
}

/// Removes the entries, so new flows go to the Service's backends at once. Errors are
/// logged: the entries expire on their own within [`HOLD_FOR`] anyway.
pub fn withdraw(config: &InterceptConfig) {
    for key in frontends(config) {
        if let Err(e) = twill_bpf::remove_local_backend(&config.pin_dir, &key) {
            debug!(
                "removing an interception entry: {:#}",
                anyhow::Error::new(e)
            );
        }
    }
    info!("stopped intercepting queries to {}:53", config.service_ip);
}
