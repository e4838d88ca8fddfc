//! TCP MD5 signatures (RFC 2385) on BGP sockets, and the kernel's counts of the segments it
//! dropped for a missing or wrong signature.
//!
//! Neither libc, nix nor tokio wraps `TCP_MD5SIG`, so [`set_md5`] calls `setsockopt(2)`
//! itself: the one `unsafe` block of this crate.

use std::{
    fs, io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `TCP_MD5SIG_MAXKEYLEN`.
pub const MD5_MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` (linux/tcp.h). Its address is a `sockaddr_storage`; only IPv4 is
/// used, so it is spelled as a `sockaddr_in` followed by the rest of the storage.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_in,
    addr_rest: [u8; 128 - std::mem::size_of::<libc::sockaddr_in>()],
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

const _: () = assert!(std::mem::size_of::<TcpMd5Sig>() == 216);
const _: () = assert!(std::mem::offset_of!(TcpMd5Sig, flags) == 128);
const _: () = assert!(std::mem::offset_of!(TcpMd5Sig, key) == 136);

/// Sets the MD5 key for segments to and from `peer` on a socket (a listener before the
/// peer's SYN arrives, or a socket before `connect`); `None` removes it. Segments from that
/// address without the right signature are then dropped by the kernel, as are signed ones
/// from an address with no key.
pub fn set_md5(socket: BorrowedFd<'_>, peer: Ipv4Addr, key: Option<&[u8]>) -> io::Result<()> {
    let key = key.unwrap_or_default();
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 password of {} bytes: at most {MD5_MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    let mut sig = TcpMd5Sig {
        addr: libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(peer).to_be(),
            },
            sin_zero: [0; 8],
        },
        addr_rest: [0; 128 - std::mem::size_of::<libc::sockaddr_in>()],
        flags: 0,
        prefix_len: 0,
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; MD5_MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a live, fully initialised `struct tcp_md5sig` (layout checked by
    // the assertions above) and the length passed is its size; the kernel only reads it.
    // The descriptor is borrowed, so it stays open for the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setting the TCP MD5 key for {peer}: {e}"),
        ));
    }
    Ok(())
}

/// TCP segments the kernel dropped for their MD5 option, in the network namespace of the
/// calling thread (`/proc/thread-self/net/netstat`, `TcpExt`). Counted per namespace, not
/// per peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Md5Drops {
    /// Expected a signature, got none (`TCPMD5NotFound`).
    pub not_found: u64,
    /// Got a signature from an address with no key (`TCPMD5Unexpected`).
    pub unexpected: u64,
    /// Wrong signature (`TCPMD5Failure`).
    pub failure: u64,
}

impl Md5Drops {
    pub fn read() -> io::Result<Self> {
        let text = fs::read_to_string("/proc/thread-self/net/netstat")?;
        Ok(Self::parse(&text))
    }

    fn parse(netstat: &str) -> Self {
        let mut drops = Self::default();
        let mut lines = netstat.lines();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
                (names.split_once(": "), values.split_once(": "))
            else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                let value = value.parse().unwrap_or(0);
                match name {
                    "TCPMD5NotFound" => drops.not_found = value,
                    "TCPMD5Unexpected" => drops.unexpected = value,
                    "TCPMD5Failure" => drops.failure = value,
                    _ => {}
                }
            }
        }
        drops
    }

    pub fn total(&self) -> u64 {
        self.not_found + self.unexpected + self.failure
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            not_found: self.not_found.saturating_sub(earlier.not_found),
            unexpected: self.unexpected.saturating_sub(earlier.unexpected),
            failure: self.failure.saturating_sub(earlier.failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counters_are_read_by_name() {
        let text = "TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure\n\
                    TcpExt: 0 4 1 7\n\
                    IpExt: InNoRoutes TCPMD5NotFound\n\
                    IpExt: 0 99\n";
        assert_eq!(
            Md5Drops::parse(text),
            Md5Drops {
                not_found: 4,
                unexpected: 1,
                failure: 7
            }
        );
    }

    #[test]
    fn this_kernel_counts_md5_drops() {
        Md5Drops::read().expect("/proc/thread-self/net/netstat is readable");
    }

    #[test]
    fn keys_longer_than_the_kernel_takes_are_refused() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsFd as _;
        let err = set_md5(
            socket.as_fd(),
            Ipv4Addr::LOCALHOST,
            Some(&[b'x'; MD5_MAX_KEY_LEN + 1]),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        set_md5(socket.as_fd(), Ipv4Addr::LOCALHOST, Some(b"secret")).unwrap();
        set_md5(socket.as_fd(), Ipv4Addr::LOCALHOST, None).unwrap();
    }
}
