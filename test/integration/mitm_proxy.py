#!/usr/bin/env python3
"""A man in the middle on loopback for link_encrypted.sh.

Usage: mitm_proxy.py LISTEN_PORT TARGET_PORT TRIGGER CAPTURE [TRUNCATE STALL]

Accepts TCP connections on 127.0.0.1:LISTEN_PORT and relays each, both ways,
to 127.0.0.1:TARGET_PORT. While the file TRIGGER exists, the next read of at
least 4096 bytes from the client (the connecting side: the importer, whose
big reads are BLK_WRITE data) has one byte flipped in its middle, and
TRIGGER is removed: one flip per trigger. Everything the client sends is
appended to CAPTURE, so the test can check that the wire shows no
plaintext. If the file TRUNCATE exists when a connection is accepted, it is
removed and that connection forwards only the client's first 200 bytes,
then closes; else if STALL exists, it is removed and that connection
forwards nothing from the client (the server's bytes still pass) until the
server closes. Prints one line per event on stdout.
"""
import os
import socket
import sys
import threading

listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
trigger, capture = sys.argv[3], sys.argv[4]
truncate_file = sys.argv[5] if len(sys.argv) > 5 else None
stall_file = sys.argv[6] if len(sys.argv) > 6 else None
lock = threading.Lock()


def say(msg):
    print(msg, flush=True)


def take(path):
    """True once for each time the file `path` is created."""
    if path is None:
        return False
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def pump(src, dst, from_client, conn_id, mode=None):
    sent = 0
    try:
        while True:
            data = src.recv(1 << 18)
            if not data:
                break
            if from_client and mode == "stall":
                continue
            if from_client and mode == "truncate":
                data = data[: max(0, 200 - sent)]
                dst.sendall(data)
                sent += len(data)
                if sent >= 200:
                    say(f"conn {conn_id}: truncated the client's stream after 200 bytes")
                    break
                continue
            if from_client:
                with lock:
                    if len(data) >= 4096 and os.path.exists(trigger):
                        os.unlink(trigger)
                        b = bytearray(data)
                        b[len(b) // 2] ^= 0x01
                        data = bytes(b)
                        say(f"conn {conn_id}: flipped one byte of a {len(data)}-byte read")
                    with open(capture, "ab") as f:
                        f.write(data)
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(client, conn_id):
    mode = "truncate" if take(truncate_file) else "stall" if take(stall_file) else None
    if mode:
        say(f"conn {conn_id}: {mode}")
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError as e:
        say(f"conn {conn_id}: cannot reach the target: {e.strerror}")
        client.close()
        return
    a = threading.Thread(target=pump, args=(client, upstream, True, conn_id, mode), daemon=True)
    b = threading.Thread(target=pump, args=(upstream, client, False, conn_id), daemon=True)
    a.start()
    b.start()
    a.join()
    b.join()
    client.close()
    upstream.close()
    say(f"conn {conn_id}: closed")


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(16)
    say(f"relaying 127.0.0.1:{listen_port} to 127.0.0.1:{target_port}")
    n = 0
    while True:
        client, _ = srv.accept()
        n += 1
        say(f"conn {n}: accepted")
        threading.Thread(target=serve, args=(client, n), daemon=True).start()


main()
