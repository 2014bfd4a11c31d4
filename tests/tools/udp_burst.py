#!/usr/bin/env python3
"""Numbered UDP datagrams, sent in bursts and checked on arrival.

usage: udp_burst.py recv BIND_IP PORT COUNT TIMEOUT_SECS
       udp_burst.py send DST_IP PORT COUNT SIZE PER_SEND

Datagram k is SIZE bytes: k as 4 big-endian bytes, then bytes (k + i) % 251. `send` hands
PER_SEND datagrams to the kernel at once: one `sendto` of their concatenation with
UDP_SEGMENT = SIZE (the kernel's UDP GSO) when PER_SEND > 1, pausing between bursts so that
no queue overflows. `recv` prints `listening` once bound, then, when COUNT datagrams arrived
or TIMEOUT_SECS passed without one, `received N intact M in_order B`.
"""
import socket
import sys
import time

UDP_SEGMENT = 103  # <linux/udp.h>


def datagram(k, size):
    body = bytes((k + i) % 251 for i in range(size - 4))
    return k.to_bytes(4, "big") + body


def recv(ip, port, count, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ip, port))
    s.settimeout(timeout)
    print("listening", flush=True)
    got, intact, in_order, last = 0, 0, True, -1
    while got < count:
        try:
            data = s.recv(65535)
        except socket.timeout:
            break
        got += 1
        k = int.from_bytes(data[:4], "big")
        intact += data == datagram(k, len(data))
        in_order = in_order and k > last
        last = k
    print("received %d intact %d in_order %s" % (got, intact, in_order), flush=True)


def send(ip, port, count, size, per_send):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if per_send > 1:
        s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, size)
    for first in range(0, count, per_send):
        burst = b"".join(datagram(k, size) for k in range(first, min(first + per_send, count)))
        s.sendto(burst, (ip, port))
        time.sleep(0.002)


if __name__ == "__main__":
    mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "recv":
        recv(ip, port, int(sys.argv[4]), float(sys.argv[5]))
    else:
        send(ip, port, int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
