#!/usr/bin/env python3
"""Sends one UDP datagram. usage: send_udp.py DST PORT PAYLOAD"""
import socket
import sys

socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
