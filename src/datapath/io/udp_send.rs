//! Gathered UDP sends with GSO for the io_uring driver, and the run-time fallback quinn-udp
//! has on its `sendmsg` path: a GSO send that fails with `EIO` or `EINVAL` (a device or kernel
//! that cannot segment it) turns GSO off for this worker's socket for good, is logged once, and
//! its datagrams are sent again one by one. (The mmsg driver sends through quinn-udp, which
//! does the same by itself.)

use std::io::{self, IoSlice};
use std::net::{SocketAddrV4, UdpSocket};

use crate::datapath::counters::WorkerCounters;
use crate::datapath::gso::GSO_MAX_SEGMENTS;
use crate::sys::udp::send_gso;

/// Whether one socket still sends with GSO.
#[derive(Debug)]
pub struct GsoSender {
    enabled: bool,
    /// Test switch: the next GSO send reports `EIO` instead of being made.
    fail_next: bool,
}

impl Default for GsoSender {
    fn default() -> Self {
        GsoSender {
            enabled: true,
            fail_next: false,
        }
    }
}

impl GsoSender {
    /// A sender with GSO on or (`--udp-gso=false`) off from the start.
    pub fn new(enabled: bool) -> Self {
        GsoSender {
            enabled,
            fail_next: false,
        }
    }

    /// Whether sends may still carry several datagrams.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Most datagrams one send may carry: [`GSO_MAX_SEGMENTS`] while GSO is on, else 1.
    pub fn max_segments(&self) -> usize {
        if self.enabled {
            GSO_MAX_SEGMENTS
        } else {
            1
        }
    }

    /// For tests: makes the next GSO send fail with `EIO`, as a device that cannot segment
    /// would (one flag check per GSO send, not per packet).
    pub fn fail_next_gso_send(&mut self) {
        self.fail_next = true;
    }

    /// Sends `iov` to `peer` in one `sendmsg`: `iov` holds datagrams of `per` iovecs each,
    /// cut by the kernel at `segment` bytes when there are several. Counts the outcome in
    /// `stats`; falls back to one send per datagram as the module docs say (also for a
    /// segmented send asked for after GSO was turned off).
    pub fn send(
        &mut self,
        sock: &UdpSocket,
        peer: SocketAddrV4,
        iov: &[IoSlice<'_>],
        (per, segment): (usize, Option<u16>),
        stats: &WorkerCounters,
    ) {
        let per = per.max(1);
        if segment.is_some() && !self.enabled {
            return one_by_one(sock, peer, iov, per, stats);
        }
        let sent = if segment.is_some() && std::mem::take(&mut self.fail_next) {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            send_gso(sock, peer, iov, segment)
        };
        match sent {
            Ok(_) => stats.sent(true, iov.len().div_ceil(per), bytes(iov)),
            Err(e)
                if segment.is_some()
                    && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
            {
                self.enabled = false;
                stats.lose_gso();
                tracing::warn!(
                    error = %e, %peer,
                    "UDP GSO send failed; sending one datagram per send from now on"
                );
                one_by_one(sock, peer, iov, per, stats);
            }
            Err(_) => stats.sent(false, iov.len().div_ceil(per), bytes(iov)),
        }
    }
}

/// Sends each datagram of `iov` (`per` iovecs each) on its own.
fn one_by_one(
    sock: &UdpSocket,
    peer: SocketAddrV4,
    iov: &[IoSlice<'_>],
    per: usize,
    stats: &WorkerCounters,
) {
    for datagram in iov.chunks(per) {
        stats.sent(
            send_gso(sock, peer, datagram, None).is_ok(),
            1,
            bytes(datagram),
        );
    }
}

fn bytes(iov: &[IoSlice<'_>]) -> usize {
    iov.iter().map(|s| s.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A sending socket and a receiving one (2 s timeout) on loopback, and its address.
    fn loopback_pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(peer) = rx.local_addr().unwrap() else {
            panic!("bound to an IPv4 address");
        };
        (UdpSocket::bind("127.0.0.1:0").unwrap(), rx, peer)
    }

    /// `--udp-gso=false`: off from the start, a segmented send leaves datagram by datagram.
    #[test]
    fn a_sender_made_without_gso_sends_one_datagram_per_call() {
        let (tx, rx, peer) = loopback_pair();
        let stats = WorkerCounters::default();
        let datagrams = [[4u8; 60], [5u8; 60]];
        let iov = datagrams.each_ref().map(|d| IoSlice::new(d));
        let mut gso = GsoSender::new(false);
        assert_eq!(gso.max_segments(), 1);
        gso.send(&tx, peer, &iov, (1, Some(60)), &stats);
        let mut buf = [0u8; 512];
        for d in &datagrams {
            assert_eq!(rx.recv(&mut buf).unwrap(), 60);
            assert_eq!(&buf[..60], &d[..]);
        }
        assert_eq!(stats.snapshot().egress_packets, 2);
    }

    #[test]
    fn a_failed_gso_send_turns_gso_off_and_resends_one_by_one() {
        let (tx, rx, peer) = loopback_pair();
        let stats = WorkerCounters::default();
        let datagrams = [[1u8; 100], [2u8; 100], [3u8; 100]];
        let iov = datagrams.each_ref().map(|d| IoSlice::new(d));
        let mut gso = GsoSender::default();
        assert_eq!(gso.max_segments(), GSO_MAX_SEGMENTS);
        gso.fail_next_gso_send();
        gso.send(&tx, peer, &iov, (1, Some(100)), &stats);
        assert!(!gso.enabled(), "EIO turns GSO off");
        assert_eq!(gso.max_segments(), 1);
        let mut buf = [0u8; 512];
        for d in &datagrams {
            assert_eq!(
                rx.recv(&mut buf).unwrap(),
                100,
                "each datagram still arrives"
            );
            assert_eq!(&buf[..100], &d[..]);
        }
        let snap = stats.snapshot();
        assert_eq!((snap.egress_packets, snap.egress_bytes), (3, 300));
        assert_eq!(snap.total_drops(), 0);
        // Afterwards a run of one goes out plainly, and a run asked for as one GSO send
        // goes out datagram by datagram.
        gso.send(&tx, peer, &iov[..1], (1, None), &stats);
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
        gso.send(&tx, peer, &iov[..2], (1, Some(100)), &stats);
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
        assert_eq!(stats.snapshot().egress_packets, 6);
    }

    #[test]
    fn a_gso_send_of_gathered_pieces_arrives_as_datagrams() {
        let (tx, rx, peer) = loopback_pair();
        let stats = WorkerCounters::default();
        let (h, p) = ([9u8; 20], [7u8; 80]);
        let iov = [
            IoSlice::new(&h),
            IoSlice::new(&p),
            IoSlice::new(&h),
            IoSlice::new(&p[..30]),
        ];
        let mut gso = GsoSender::default();
        gso.send(&tx, peer, &iov, (2, Some(100)), &stats);
        assert!(gso.enabled());
        let mut buf = [0u8; 512];
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
        assert_eq!(rx.recv(&mut buf).unwrap(), 50);
        assert_eq!(stats.snapshot().egress_packets, 2);
    }
}
