#!/usr/bin/env python3
"""Waits for one UDP datagram and prints it: `hex:<bytes>` plus the sender.

usage: recv_udp.py BIND_IP PORT TIMEOUT_SECS
Exit status 1 when nothing arrives in time. Prints `listening` once bound.
"""
import socket
import sys

ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, port))
s.settimeout(timeout)
print("listening", flush=True)
try:
    data, addr = s.recvfrom(65535)
except socket.timeout:
    sys.exit(1)
print("from %s:%d hex:%s" % (addr[0], addr[1], data.hex()), flush=True)
