//! The workers' UDP sockets.
//!
//! Every worker binds its own socket to `<iface address>:<Port>` in one `SO_REUSEPORT` group,
//! so the kernel spreads inbound datagrams over workers by 4-tuple hash and no two workers
//! share a socket. Buffers are enlarged (with `SO_RCVBUFFORCE` where we may) because a
//! userspace datapath drains its socket in bursts.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Socket buffer size asked for (the kernel doubles it for bookkeeping).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Opens a blocking, close-on-exec UDP socket bound to `addr`; with `reuse_port`, joins the
/// `SO_REUSEPORT` group on that address.
pub fn bind_udp(addr: SocketAddrV4, reuse_port: bool) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&SockAddr::from(addr))?;
    enlarge_buffers(&sock, SOCKET_BUFFER);
    Ok(sock.into())
}

/// Best effort: the forced sizes need `CAP_NET_ADMIN`, the plain ones are capped by
/// `net.core.{r,w}mem_max`. A small buffer costs throughput, not correctness.
fn enlarge_buffers(sock: &Socket, bytes: usize) {
    let forced = set_int(
        sock,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        bytes as libc::c_int,
    )
    .and_then(|()| {
        set_int(
            sock,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            bytes as libc::c_int,
        )
    });
    if forced.is_err() {
        let _ = sock.set_recv_buffer_size(bytes);
        let _ = sock.set_send_buffer_size(bytes);
    }
}

/// Grows the receive buffer to `bytes` (forced past `net.core.rmem_max` where we may): the
/// datagrams that arrive while no worker reads (a hand-over) wait there.
pub fn grow_recv_buffer(sock: &UdpSocket, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value)
        .or_else(|_| socket2::SockRef::from(sock).set_recv_buffer_size(bytes))
}

/// Takes an inherited fd as a UDP socket, checking that it is one: an IPv4 datagram socket,
/// bound; returns it with its local address.
///
/// # Errors
/// The fd is no socket, not UDP over IPv4, or not bound.
pub fn take_inherited_udp(fd: std::os::fd::OwnedFd) -> io::Result<(UdpSocket, SocketAddrV4)> {
    let raw = fd.as_raw_fd();
    let sock = Socket::from(fd);
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {raw}: {why}"));
    let ty = sock
        .r#type()
        .map_err(|e| bad(format!("not a socket: {e}")))?;
    if ty != Type::DGRAM {
        return Err(bad(format!("not a datagram socket ({ty:?})")));
    }
    let local = sock
        .local_addr()
        .map_err(|e| bad(format!("no local address: {e}")))?;
    match local.as_socket() {
        Some(std::net::SocketAddr::V4(a)) if a.port() != 0 => Ok((sock.into(), a)),
        other => Err(bad(format!("not a bound IPv4 socket ({other:?})"))),
    }
}

/// Turns UDP generic receive offload on or off. quinn-udp switches it on opportunistically; the
/// drivers want it exactly when the TUN has offloads (they then split each coalesced receive
/// by its `UDP_GRO` segment size, see `sys::udp::gro_segment_size`).
pub fn set_udp_gro(sock: &impl AsFd, on: bool) -> io::Result<()> {
    set_int(sock, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on))
}

/// Enables `IP_RECVERR`, so ICMP errors about our datagrams are reported on the socket
/// (used by tests to see ICMP unreachable on a plain UDP socket).
pub fn set_recv_err(sock: &impl AsFd, on: bool) -> io::Result<()> {
    set_int(
        sock,
        libc::IPPROTO_IP,
        libc::IP_RECVERR,
        libc::c_int::from(on),
    )
}

fn set_int(
    sock: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let fd = sock.as_fd();
    // SAFETY: `fd` is a live socket borrowed for the call; the option value is a c_int that
    // outlives the call, and its exact size is passed as `optlen`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reuseport_group_shares_one_port() {
        let first = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), true).unwrap();
        let port = first.local_addr().unwrap().port();
        let second = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), true).unwrap();
        assert_eq!(second.local_addr().unwrap().port(), port);
        assert!(bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), false).is_err());
        set_udp_gro(&first, false).unwrap();
        set_recv_err(&first, true).unwrap();
    }
}
