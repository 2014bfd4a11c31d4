//! UDP sends and receives at the level of `sendmsg` and its control messages: a gathered send
//! that the kernel may cut into datagrams (UDP GSO, `UDP_SEGMENT`), the `UDP_GRO` segment size
//! of a receive, and `sockaddr_in` conversions. Nothing here knows what the bytes are.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::addr_of_mut;

/// A `UDP_SEGMENT` control message as the kernel wants it (`CMSG_SPACE(sizeof(u16))` bytes).
#[repr(C)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

impl SegmentCmsg {
    /// "Cut this send into datagrams of `size` bytes."
    fn new(size: u16) -> Self {
        // SAFETY: all-zero bytes are a valid `cmsghdr` (a plain C struct; on some libcs it
        // has private padding fields, so it cannot be written as a literal).
        let mut hdr: libc::cmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.cmsg_len = size_of::<libc::cmsghdr>() + size_of::<u16>();
        hdr.cmsg_level = libc::SOL_UDP;
        hdr.cmsg_type = libc::UDP_SEGMENT;
        SegmentCmsg {
            hdr,
            size,
            _pad: [0; 6],
        }
    }
}

/// One `sendmsg` to `peer` of the bytes gathered from `bufs`; with `segment_size`, a UDP GSO
/// send that the kernel cuts into datagrams of that many bytes (the last may be shorter).
/// Returns the bytes sent.
///
/// # Errors
/// The errno of `sendmsg`: `EAGAIN` when the socket buffer is full, `EIO` or `EINVAL` where
/// the device or kernel cannot do GSO (the caller may then send the datagrams one by one).
pub fn send_gso(
    sock: &impl AsFd,
    peer: SocketAddrV4,
    bufs: &[IoSlice<'_>],
    segment_size: Option<u16>,
) -> io::Result<usize> {
    let mut addr = sockaddr(peer);
    let mut cmsg = SegmentCmsg::new(segment_size.unwrap_or(0));
    // SAFETY: all-zero bytes are a valid `msghdr` (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_name = addr_of_mut!(addr).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; the kernel only reads them.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len();
    if segment_size.is_some() {
        msg.msg_control = addr_of_mut!(cmsg).cast();
        msg.msg_controllen = size_of::<SegmentCmsg>();
    }
    // SAFETY: `msg`, `addr` and `cmsg` are live locals for this synchronous call; the iovecs
    // are `bufs`, borrowed (and so valid and unchanging) for the call; the fd is borrowed live.
    let rc = unsafe { libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// The `UDP_GRO` segment size in received control messages `control` (0 if there is none).
/// Parsed from bytes, by the `cmsghdr` layout (length, level, type, data; each message
/// padded to 8 bytes), so nothing here trusts the kernel's lengths further than the buffer.
pub fn gro_segment_size(control: &[u8]) -> usize {
    const HDR: usize = size_of::<libc::cmsghdr>();
    const W: usize = size_of::<usize>();
    let mut off = 0;
    while let Some(hdr) = control.get(off..off + HDR) {
        let int = |at: usize| {
            hdr.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, i32::from_ne_bytes)
        };
        let len = hdr
            .get(..W)
            .and_then(|b| b.try_into().ok())
            .map_or(0, usize::from_ne_bytes);
        let (level, kind) = (int(W), int(W + 4));
        if len < HDR {
            return 0;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            return control
                .get(off + HDR..off + HDR + 4)
                .and_then(|d| d.try_into().ok())
                .map_or(0, |d| i32::from_ne_bytes(d).max(0) as usize);
        }
        off += len.div_ceil(W) * W;
    }
    0
}

/// An IPv4 socket address from raw `sockaddr` bytes (as a multishot receive writes them).
pub fn sockaddr_v4(name: &[u8]) -> Option<SocketAddrV4> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    if family != libc::AF_INET as u16 {
        return None;
    }
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

/// An IPv4 socket address from a `sockaddr_in` the kernel filled in (`namelen` bytes of it).
pub(crate) fn from_sockaddr(addr: &libc::sockaddr_in, namelen: usize) -> Option<SocketAddrV4> {
    (addr.sin_family == libc::AF_INET as libc::sa_family_t
        && namelen >= size_of::<libc::sockaddr_in>())
    .then(|| {
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        SocketAddrV4::new(ip, u16::from_be(addr.sin_port))
    })
}

fn sockaddr(peer: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: peer.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*peer.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let hdr = size_of::<libc::cmsghdr>();
        let mut b = (hdr + data.len()).to_ne_bytes().to_vec();
        b.extend(level.to_ne_bytes());
        b.extend(kind.to_ne_bytes());
        b.extend(data);
        b.resize((hdr + data.len()).div_ceil(8) * 8, 0);
        b
    }

    #[test]
    fn the_gro_segment_size_is_found_among_control_messages() {
        let gro = cmsg(libc::SOL_UDP, libc::UDP_GRO, &1412i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&gro), 1412);
        let mut both = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0x02]);
        both.extend(&gro);
        assert_eq!(gro_segment_size(&both), 1412);
        assert_eq!(gro_segment_size(&[]), 0, "no GRO: one datagram");
        assert_eq!(gro_segment_size(&gro[..19]), 0, "cut short");
        let mut zero_len = gro.clone();
        zero_len[..8].fill(0);
        assert_eq!(gro_segment_size(&zero_len), 0, "a zero length never loops");
        // The UDP_SEGMENT message we send is exactly CMSG_SPACE(sizeof(u16)).
        assert_eq!(size_of::<SegmentCmsg>(), 24);
    }

    #[test]
    fn a_gso_send_arrives_as_separate_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(peer) = rx.local_addr().unwrap() else {
            panic!("bound to an IPv4 address");
        };
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b) = ([1u8; 100], [2u8; 60]);
        let sent = send_gso(&tx, peer, &[IoSlice::new(&a), IoSlice::new(&b)], Some(100)).unwrap();
        assert_eq!(sent, 160);
        let mut buf = [0u8; 256];
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
        assert_eq!(rx.recv(&mut buf).unwrap(), 60);
        assert_eq!(&buf[..60], &b[..]);
        send_gso(&tx, peer, &[IoSlice::new(&a[..7])], None).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 7);
    }
}
