#!/usr/bin/env python3
"""Sends one raw inner IPv4/UDP packet as the payload of a plain UDP datagram,
exactly as flannel's udp backend puts packets on the wire.

usage: send_raw.py OUTER_DST OUTER_PORT INNER_SRC INNER_DST INNER_DPORT PAYLOAD [TTL]
"""
import socket
import struct
import sys


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def main() -> None:
    dst, port, isrc, idst, dport, payload = sys.argv[1:7]
    ttl = int(sys.argv[7]) if len(sys.argv) > 7 else 64
    body = payload.encode()
    udp = struct.pack("!HHHH", 40000, int(dport), 8 + len(body), 0) + body
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, ttl, 17, 0,
                      socket.inet_aton(isrc), socket.inet_aton(idst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(hdr + udp, (dst, int(port)))


main()
