#!/usr/bin/env python3
"""Opens a terminal as a dev user through the gateway, as OpenCode's UI does, and checks that a
typed command runs there: POST /pty, then a websocket to /pty/{id}/connect. Standard library
only, because it runs on a bare CI host against the container (container/verify.sh).

usage: terminal_check.py HOST PORT USER COMMAND EXPECTED
Prints the terminal's output; exits 0 once EXPECTED appears, 1 otherwise (30 s at most).
"""
import base64
import http.client
import json
import os
import socket
import struct
import sys
import time

DEV_HEADER = "X-Chamberlain-Dev-User"


def create_pty(host, port, user):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request("POST", "/pty", body=b"{}",
                 headers={DEV_HEADER: user, "content-type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        sys.exit(f"POST /pty: {resp.status} {body[:300]!r}")
    return json.loads(body)["id"]


def connect(host, port, user, path):
    sock = socket.create_connection((host, port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{DEV_HEADER}: {user}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            sys.exit(f"connection closed during the handshake: {head!r}")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        sys.exit(f"websocket refused: {head!r}")
    return sock


def send_text(sock, text):
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the terminal's socket closed")
        data += chunk
    return data


def next_frame(sock):
    first, second = read_exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(sock, 8))[0]
    if second & 0x80:
        read_exact(sock, 4)  # servers do not mask, but do not trust it
    return first & 0x0F, read_exact(sock, length)


def main():
    host, port, user, command, expected = sys.argv[1:6]
    port = int(port)
    pty = create_pty(host, port, user)
    sock = connect(host, port, user, f"/pty/{pty}/connect")
    send_text(sock, command + "\n")
    out = ""
    deadline = time.monotonic() + 30
    while expected not in out:
        if time.monotonic() > deadline:
            print(out)
            sys.exit(f"never saw {expected!r}")
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        opcode, payload = next_frame(sock)
        if opcode in (1, 2):
            out += payload.decode("utf-8", "replace")
        elif opcode == 8:
            print(out)
            sys.exit(f"the terminal closed: {payload!r}")
    print(out)


if __name__ == "__main__":
    main()
