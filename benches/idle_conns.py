#!/usr/bin/env python3
"""Holds N idle keep-alive connections to a proxy on 127.0.0.1 for benches/load.sh.

    idle_conns.py PORT N PATH

Opens N connections, sends one GET for PATH on each (keep-alive) and reads its answer, then
prints "open N" and waits. Each line on stdin is a command:

    check   print "open K": how many of the N the proxy still holds open
    (EOF)   close them all and exit
"""
import selectors
import socket
import sys


def main():
    port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    socks = []
    pending = {}
    # Connect and ask in batches, so the listen backlog is never the limit.
    for start in range(0, n, 500):
        batch = []
        for _ in range(min(500, n - start)):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            s.setblocking(False)
            batch.append(s)
            pending[s.fileno()] = b""
            sel.register(s, selectors.EVENT_READ)
        socks.extend(batch)
        while pending:
            for key, _ in sel.select(timeout=10):
                s = key.fileobj
                data = s.recv(65536)
                buf = pending[s.fileno()] + data
                if not data:
                    sys.exit(f"connection closed before its answer (port {port})")
                # The answers are empty bodies: the head's end is the answer's end.
                if b"\r\n\r\n" in buf:
                    sel.unregister(s)
                    del pending[s.fileno()]
                else:
                    pending[s.fileno()] = buf
    print(f"open {len(socks)}", flush=True)
    for line in sys.stdin:
        if line.strip() == "check":
            still = 0
            for s in socks:
                try:
                    still += 1 if s.recv(1, socket.MSG_PEEK) else 0
                except BlockingIOError:
                    still += 1
                except OSError:
                    pass
            print(f"open {still}", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
