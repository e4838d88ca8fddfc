//! Helpers shared by twill's integration tests: root checks, crafted packets, and checks that a lab left nothing behind.
//!
//! These tests need root and a real kernel. CI runs as root; run without root they fail
//! with a message saying so, never skip.

use std::net::Ipv4Addr;

use twill_lab::{Manifest, process::ProcessRef};
use twill_netns::NetNs;

/// Fails the test, loudly, when not running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, eBPF, cgroups); run it as root, \
         as CI does: sudo scripts/test"
    );
}

/// What a lab would leave behind if teardown failed: every part of it that still exists.
pub fn leftovers(manifest: &Manifest) -> Vec<String> {
    let mut found = Vec::new();
    let namespaces = NetNs::list().expect("listing /run/netns");
    for ns in manifest.plan.namespaces() {
        if namespaces.iter().any(|n| n == ns) {
            found.push(format!("netns {ns}"));
        }
    }
    if let Some(etcd) = manifest.etcd
        && etcd.is_alive()
    {
        found.push(format!("etcd process {}", etcd.pid));
    }
    for dir in [
        &manifest.cgroup_dir,
        &manifest.bpffs_dir,
        &manifest.state_dir,
    ] {
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
    }
    found
}

/// Whether a process still runs (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    ProcessRef::of(pid).is_some()
}

/// Crafted frames for `BPF_PROG_TEST_RUN`.
pub mod packet {
    use super::Ipv4Addr;

    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(14 + payload.len());
        frame.extend_from_slice(&DST_MAC);
        frame.extend_from_slice(&SRC_MAC);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// An IPv4 header (no options) with a correct checksum, followed by `payload`.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0]; // version 4, IHL 5; DSCP/ECN
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
        h.extend_from_slice(&[64, protocol, 0, 0]); // TTL, protocol, checksum (below)
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// A TCP SYN header (checksum left zero: the programs under test do not verify it).
    pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::with_capacity(20);
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq 1, ack 0
        t.extend_from_slice(&[0x50, 0x02, 0xff, 0xff]); // data offset 5, SYN, window
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        t
    }

    /// An ARP request for `target` from `sender`.
    pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1]; // Ethernet, IPv4, lengths, request
        a.extend_from_slice(&SRC_MAC);
        a.extend_from_slice(&sender.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        ethernet(0x0806, &a)
    }

    /// The Internet checksum (RFC 1071).
    pub fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ipv4_header_checksum_verifies_to_zero() {
            let p = ipv4(
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                6,
                &[],
            );
            assert_eq!(checksum(&p[..20]), 0);
            assert_eq!(p.len(), 20);
            assert_eq!(u16::from_be_bytes([p[2], p[3]]), 20);
        }
    }
}
