"""patterns.py - the leak patterns behind each diagnosis, for closewait-trace's
kernel tests. Python 3, standard library only; run inside the test's network
namespace. Each mode prints one line per step ("word key=value ..."), flushed,
then sleeps until its stdin reaches end of file.

Usage:
    patterns.py idle-server IP PORT IDLE_MS
        Listens ("listening pid=P port=N"); per connection: reads a request,
        answers it, and closes the connection once it has been idle IDLE_MS.
    patterns.py pool-client IP PORT [--name NAME]
        A pool that never evicts: connects, sends a request, reads the answer
        ("ready pid=P fd=F"), then keeps the connection and never reads again.
    patterns.py eof-holder IP PORT COUNT [--name NAME]
        Listens ("listening ..."); accepts COUNT connections, reads each to
        EOF, and never closes them ("ready pid=P n=COUNT").
    patterns.py unread-holder IP PORT [--name NAME]
        Listens ("listening ..."); accepts one connection and never reads it
        ("ready pid=P fd=F").
    patterns.py no-accept IP PORT [--name NAME]
        Listens with a backlog of 16 and never calls accept()
        ("listening ...").
    patterns.py closing-server IP PORT
        Listens ("listening ..."); accepts and at once closes every connection.
    patterns.py flood IP PORT COUNT [--name NAME]
        Opens COUNT connections to IP:PORT (a closing-server), keeps them all,
        and waits until every one is in CLOSE_WAIT ("ready pid=P n=COUNT").
"""

import argparse
import os
import resource
import socket
import sys
import threading
import time

CLOSE_WAIT = "08"  # TCP_CLOSE_WAIT as /proc/net/tcp writes it


def say(line):
    print(line, flush=True)


def listener(ip, port, backlog=128):
    lst = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((ip, port))
    lst.listen(backlog)
    say(f"listening pid={os.getpid()} port={lst.getsockname()[1]}")
    return lst


def idle_server(args):
    lst = listener(args.ip, args.port)

    def serve(conn):
        conn.recv(4096)
        conn.sendall(b"response\n")
        time.sleep(args.idle_ms / 1000)  # idle: the server's timeout
        conn.close()

    while True:
        conn, _ = lst.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def pool_client(args):
    conn = socket.create_connection((args.ip, args.port))
    conn.sendall(b"request\n")
    conn.recv(4096)
    say(f"ready pid={os.getpid()} fd={conn.fileno()}")
    return [conn]


def eof_holder(args):
    lst = listener(args.ip, args.port)
    held = []
    for _ in range(args.count):
        conn, _ = lst.accept()
        while conn.recv(4096):
            pass  # to EOF, then: no close()
        held.append(conn)
    say(f"ready pid={os.getpid()} n={len(held)}")
    return [lst] + held  # a server keeps listening


def unread_holder(args):
    lst = listener(args.ip, args.port)
    conn, _ = lst.accept()
    say(f"ready pid={os.getpid()} fd={conn.fileno()}")
    return [lst, conn]


def no_accept(args):
    return [listener(args.ip, args.port, backlog=16)]


def closing_server(args):
    lst = listener(args.ip, args.port, backlog=4096)
    while True:
        conn, _ = lst.accept()
        conn.close()


def close_wait_count(port):
    """Sockets of ours to PORT in CLOSE_WAIT (/proc/net/tcp of this netns)."""
    n = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            if fields[3] == CLOSE_WAIT and int(fields[2].split(":")[1], 16) == port:
                n += 1
    return n


def flood(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        # Root may raise the hard limit too (up to fs.nr_open).
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    held = [socket.create_connection((args.ip, args.port)) for _ in range(args.count)]
    deadline = time.monotonic() + 120
    while close_wait_count(args.port) < args.count:
        if time.monotonic() > deadline:
            sys.exit("patterns: not every socket reached CLOSE_WAIT")
        time.sleep(0.05)
    say(f"ready pid={os.getpid()} n={len(held)}")
    return held


def main():
    parser = argparse.ArgumentParser(prog="patterns.py")
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode, extra in [
        ("idle-server", ["idle_ms"]),
        ("pool-client", []),
        ("eof-holder", ["count"]),
        ("unread-holder", []),
        ("no-accept", []),
        ("closing-server", []),
        ("flood", ["count"]),
    ]:
        p = modes.add_parser(mode)
        p.add_argument("ip")
        p.add_argument("port", type=int)
        for name in extra:
            p.add_argument(name, type=int)
        p.add_argument("--name")
    args = parser.parse_args()
    if args.name is not None:
        with open("/proc/self/comm", "w") as comm:
            comm.write(args.name)
    run = {
        "idle-server": idle_server,
        "pool-client": pool_client,
        "eof-holder": eof_holder,
        "unread-holder": unread_holder,
        "no-accept": no_accept,
        "closing-server": closing_server,
        "flood": flood,
    }[args.mode]
    if args.mode in ("idle-server", "closing-server"):
        threading.Thread(target=run, args=(args,), daemon=True).start()
        sys.stdin.read()
        return None
    held = run(args)
    sys.stdin.read()  # until end of file
    return held


if __name__ == "__main__":
    main()
