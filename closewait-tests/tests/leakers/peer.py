"""peer.py - server-side test programs for closewait-trace's kernel tests that
need a socket held by a process of their own (with its own name) for a set
time, or a socket that entered CLOSE_WAIT before it was accepted.

Python 3, standard library only. Run it inside the test's network namespace
(`ip netns exec NS python3 peer.py ...`).

Usage:
    peer.py close-after MS IP PORT [--count N] [--name NAME]
    peer.py hold-queued IP PORT CLIENT_PORT [--name NAME]

  close-after: listens on IP:PORT (PORT 0: the kernel picks one) and prints
      "listening pid=<pid> port=<port>". Then, N times (default 1): accepts a
      connection ("accepted fd=<fd> rport=<client port>"), reads until the
      client has closed its side (CLOSE_WAIT from then on), holds the socket
      MS milliseconds more, closes it ("closed rport=<client port>").
  hold-queued (IPv4): listens on IP:PORT and connects a client to it from
      IP:CLIENT_PORT, without accepting; prints "connected pid=<pid>". Waits
      for a line "go" on stdin, closes the client, waits until the server side,
      still in the accept queue (no file, no inode yet), is in CLOSE_WAIT, and
      only then accepts it: "ready pid=<pid> fd=<fd>". It never closes it.

  --name NAME  the process name (comm), written to /proc/self/comm before any
               socket exists; the kernel keeps 15 bytes.

Output: one line each on stdout, flushed at once. Afterwards the program sleeps
until its stdin reaches end of file (keep stdin on a pipe the test holds; its
end ends the program), then exits. Errors: a traceback on stderr, exit status 1;
usage errors: exit status 2.
"""

import argparse
import os
import socket
import sys
import time

CLOSE_WAIT = "08"  # TCP_CLOSE_WAIT as /proc/net/tcp writes it


def say(line):
    print(line, flush=True)


def listener(ip, port):
    lst = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((ip, port))
    lst.listen(16)
    return lst


def close_after(args):
    lst = listener(args.ip, args.port)
    say(f"listening pid={os.getpid()} port={lst.getsockname()[1]}")
    for _ in range(args.count):
        conn, peer = lst.accept()
        say(f"accepted fd={conn.fileno()} rport={peer[1]}")
        while conn.recv(4096):
            pass
        time.sleep(args.ms / 1000)
        conn.close()
        say(f"closed rport={peer[1]}")


def in_close_wait(lport, rport):
    """Whether /proc/net/tcp (this network namespace) lists lport<-rport in
    CLOSE_WAIT."""
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (
                state == CLOSE_WAIT
                and int(local.split(":")[1], 16) == lport
                and int(remote.split(":")[1], 16) == rport
            ):
                return True
    return False


def hold_queued(args):
    lst = listener(args.ip, args.port)
    client = socket.socket(socket.AF_INET)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind((args.ip, args.client_port))
    client.connect((args.ip, args.port))
    say(f"connected pid={os.getpid()}")
    if sys.stdin.readline().strip() != "go":
        sys.exit("peer: expected `go` on stdin")
    client.close()
    deadline = time.monotonic() + 5
    while not in_close_wait(args.port, args.client_port):
        if time.monotonic() > deadline:
            sys.exit("peer: the queued socket never reached CLOSE_WAIT")
        time.sleep(0.001)
    conn, _ = lst.accept()
    lst.close()
    say(f"ready pid={os.getpid()} fd={conn.fileno()}")
    return conn  # held until the program ends


def main():
    parser = argparse.ArgumentParser(prog="peer.py")
    modes = parser.add_subparsers(dest="mode", required=True)
    later = modes.add_parser("close-after")
    later.add_argument("ms", type=int)
    later.add_argument("ip")
    later.add_argument("port", type=int)
    later.add_argument("--count", type=int, default=1)
    later.add_argument("--name")
    queued = modes.add_parser("hold-queued")
    queued.add_argument("ip")
    queued.add_argument("port", type=int)
    queued.add_argument("client_port", type=int)
    queued.add_argument("--name")
    args = parser.parse_args()
    if args.name is not None:
        with open("/proc/self/comm", "w") as comm:
            comm.write(args.name)
    # hold_queued's socket stays open as long as `held` lives: to the end.
    held = close_after(args) if args.mode == "close-after" else hold_queued(args)
    sys.stdin.read()  # until end of file
    return held


if __name__ == "__main__":
    main()
