//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus
//! replay test (`tests/fuzz_corpus.rs`), so CI exercises the same checks on
//! stable Rust. Each takes untrusted bytes and panics only when an invariant
//! is broken (never because the input is bad).

use crate::config::NetworkConfig;
use crate::subnet::env::SubnetEnv;
use crate::subnet::lease::{LeaseAttrs, SubnetKey};

/// Network config JSON: parsing never panics; a valid config's ranges are sane.
pub fn net_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = NetworkConfig::parse(text) {
        for r in [c.ipv4, c.ipv6].into_iter().flatten() {
            assert!(r.subnet_len >= r.network.prefix_len() + 2);
            assert!(r.network.contains(&r.min) && r.network.contains(&r.max));
            assert!(!r.is_empty(), "a valid range holds a subnet");
        }
    }
}

/// Lease values and keys written by other nodes: parse, and a parsed value
/// re-serializes to something that parses back to the same attributes.
pub fn lease_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(attrs) = LeaseAttrs::from_json(text) {
        let again = LeaseAttrs::from_json(&attrs.to_json()).expect("our own output parses");
        assert_eq!(again, attrs);
    }
    if let Ok(key) = SubnetKey::parse(text) {
        assert_eq!(
            SubnetKey::parse(&key.to_string()).expect("our own key parses"),
            key
        );
    }
}

/// subnet.env text: parse, render, parse again gives the same values.
pub fn subnet_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(env) = SubnetEnv::parse(text) {
        let again = SubnetEnv::parse(&env.render()).expect("our own output parses");
        assert_eq!(again, env);
    }
}

/// A packet read from TUN (egress) or received from a peer (ingress), chosen by
/// the first byte: the verdict functions never panic, and whatever they forward,
/// deliver or answer is itself a well-formed IPv4 packet.
pub fn packet(data: &[u8]) {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use crate::datapath::pipeline::{
        egress_verdict, ingress_verdict, IcmpResponder, Verdict, MIN_BUFFER,
    };
    use crate::datapath::route::{Route, RouteTable};
    use crate::datapath::wire::ipv4::Ipv4View;

    let Some((&mode, pkt)) = data.split_first() else {
        return;
    };
    let peer = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8285);
    let table = RouteTable::build(
        "10.5.0.0/16".parse().expect("literal"),
        24,
        [Route {
            subnet: "10.5.2.0/24".parse().expect("literal"),
            peer,
        }],
    );
    let mut buf = pkt.to_vec();
    buf.resize(pkt.len().max(MIN_BUFFER), 0);
    let verdict = if mode & 1 == 0 {
        let mut icmp = IcmpResponder::new(Ipv4Addr::new(10, 5, 0, 0));
        egress_verdict(&mut buf, pkt.len(), &table, &mut icmp)
    } else {
        let from = if mode & 2 == 0 {
            peer
        } else {
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 8285)
        };
        ingress_verdict(&mut buf, pkt.len(), from, &table, mode & 4 == 0)
    };
    match verdict {
        Verdict::Forward { len, .. } | Verdict::Reply { len } | Verdict::Deliver { len } => {
            let out = buf.get(..len).expect("verdict length within the buffer");
            assert!(
                Ipv4View::new_checked(out).is_ok(),
                "emitted a malformed packet: {verdict:?}"
            );
        }
        Verdict::Drop(_) => {}
    }
}

/// The offload paths on untrusted bytes, chosen by the first byte. Even: a TUN read with
/// offloads (virtio-net header, then a packet, maybe a TCP super-packet) readied for the wire:
/// every datagram that comes out is a whole IPv4 packet with a verifying header checksum,
/// within the MTU-sized segment length, and the gathered layout sends the same bytes. Odd: a UDP GRO receive (the second byte picks the
/// segment size) split and written back coalesced: every TUN write is a virtio-net header
/// plus one IPv4 packet exactly as long as its total length says.
pub fn offload(data: &[u8]) {
    use crate::datapath::gro::write_coalesced;
    use crate::datapath::gso::{to_wire, Layout, Wire, GSO_MAX_BYTES};
    use crate::datapath::wire::ipv4::Ipv4View;
    use crate::datapath::wire::vnet::{VnetHdr, VNET_F_NEEDS_CSUM, VNET_HDR_LEN};

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Some(vnet) = VnetHdr::parse(rest) else {
            return;
        };
        let mut pkt = rest[VNET_HDR_LEN..].to_vec();
        let len = pkt.len();
        let mut scratch = vec![0u8; 2 * 65_536];
        match to_wire(&vnet, &mut pkt, len, &mut scratch, Layout::Contiguous) {
            Ok(Wire::Whole { len: n }) => assert_eq!(n, len),
            Ok(Wire::Segmented(s)) => {
                assert!(s.total <= scratch.len() && s.count >= 1);
                for seg in scratch[..s.total].chunks(s.segment_len) {
                    let v = Ipv4View::new_verified(seg).expect("segment has a valid IP header");
                    assert_eq!(v.total_len(), seg.len(), "segment length");
                }
                for r in s.sends(64) {
                    assert!(r.len() <= GSO_MAX_BYTES);
                }
                // Gathering headers and payloads in place sends the very same bytes.
                let mut hdrs = vec![0u8; 2 * 65_536];
                let gathered = to_wire(&vnet, &mut pkt, len, &mut hdrs, Layout::HeadersOnly);
                let Ok(Wire::Segmented(g)) = gathered else {
                    panic!("headers-only cut failed where the contiguous one did not");
                };
                let stream: Vec<u8> = (0..g.count)
                    .flat_map(|k| {
                        let (h, p) = g.gather(k);
                        [&hdrs[h], &pkt[p]].concat()
                    })
                    .collect();
                assert_eq!(stream, scratch[..s.total]);
            }
            Err(_) => {}
        }
    } else {
        let Some((&stride, datagrams)) = rest.split_first() else {
            return;
        };
        let stride = usize::from(stride).max(20);
        let buf = datagrams.to_vec();
        let packets: Vec<(usize, usize)> = (0..buf.len())
            .step_by(stride)
            .map(|off| (off, stride.min(buf.len() - off)))
            // What the ingress verdict delivers: packets that parse.
            .filter(|&(o, l)| Ipv4View::new_checked(&buf[o..o + l]).is_ok())
            .map(|(o, l)| {
                (
                    o,
                    Ipv4View::new_checked(&buf[o..o + l]).map_or(l, |v| v.total_len()),
                )
            })
            .collect();
        let packet = |o: usize, l: usize| buf.get(o..o + l).unwrap_or_default();
        let mut written = 0;
        // UDP merging on for odd strides, so both kinds of device are fuzzed.
        let udp = !stride.is_multiple_of(2);
        write_coalesced(
            &packets,
            packet,
            udp,
            &mut Vec::new(),
            |pieces, count, bytes| {
                let hdr = VnetHdr::parse(&pieces[0]).expect("a virtio-net header first");
                let pkt: Vec<u8> = pieces[1..].iter().flat_map(|p| p.to_vec()).collect();
                assert_eq!(pkt.len(), bytes);
                assert!(count >= 1 && pieces.len() == if count > 1 { count + 2 } else { 2 });
                written += count;
                let v = Ipv4View::new_checked(&pkt).expect("a whole IPv4 packet");
                assert_eq!(v.total_len(), pkt.len());
                assert_eq!(hdr.flags & VNET_F_NEEDS_CSUM != 0, count > 1);
            },
        );
        assert_eq!(
            written,
            packets.len(),
            "every delivered packet is written once"
        );
    }
}
