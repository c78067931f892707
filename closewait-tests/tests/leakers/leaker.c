/*
 * leaker.c - a test program that leaks one TCP socket in CLOSE_WAIT from a
 * function with a known name, for closewait-trace's kernel tests.
 *
 * Build (see build.md):
 *     cc -O0 -g -fno-omit-frame-pointer -o leaker leaker.c
 *
 * Usage:
 *     leaker connect IP PORT [--fork] [--name NAME]
 *     leaker accept  IP PORT [--fork] [--name NAME]
 *
 *   IP is an IPv4 or IPv6 literal (no brackets, no scope id).
 *   Flags may come before, between or after the positional arguments.
 *
 *   connect: leak_outgoing_connection() creates a socket and connect()s it to
 *            IP:PORT. The program then reads from it until the peer has
 *            closed its side (read() returns 0): the socket is now in
 *            CLOSE_WAIT, and it is never closed.
 *   accept:  listens on IP:PORT (PORT may be 0: the kernel picks one) and
 *            prints "listening pid=<pid> port=<port>" once it accepts
 *            connections. leak_accepted_connection() then accept()s one
 *            connection; the listening socket is closed right after that.
 *            The program reads until the client has closed its side
 *            (read() returns 0): CLOSE_WAIT, never closed.
 *
 *   --name NAME  set the process name (comm, what `ps -o comm` and
 *                /proc/PID/comm show) with prctl(PR_SET_NAME) before any
 *                socket is created. NAME is used byte for byte and may hold
 *                control characters (e.g. "evil\x1b[31mred"); the kernel
 *                keeps its first 15 bytes.
 *   --fork       once the socket is in CLOSE_WAIT, fork(): parent and child
 *                both keep the descriptor (same fd number) open and both keep
 *                running. The child dies with the parent (PR_SET_PDEATHSIG).
 *
 * Output on stdout, one line each, flushed at once:
 *     listening pid=<pid> port=<port>     accept mode only, before accept()
 *     child pid=<child pid> fd=<fd>       --fork only, written by the child
 *     ready pid=<pid> fd=<fd>             the socket is in CLOSE_WAIT (and,
 *                                         with --fork, the child line has
 *                                         already been written)
 * "ready" is always the last line. Errors go to stderr, with exit status 1
 * (2 for a usage error).
 *
 * After "ready" the program (and its child) sleeps until it is killed
 * (SIGTERM) or its standard input reaches end of file: run it with stdin on a
 * pipe that the test holds open (an stdin of /dev/null ends it at once), so
 * that dropping the pipe also cleans up.
 *
 * Stacks. The intended call chains are
 *     main -> leak_outgoing_connection -> call_connect -> connect (libc)
 *     main -> leak_accepted_connection -> call_accept  -> accept  (libc)
 * all functions here being noinline and built with frame pointers. The
 * one-line helpers call_connect/call_accept are there on purpose: glibc's
 * connect()/accept() wrappers (Debian's glibc has no frame pointers) execute
 * `syscall` without setting up a frame, so a frame-pointer walk from the
 * syscall (bpf_get_stackid with BPF_F_USER_STACK, perf) cannot see the
 * return address into their direct caller and skips that caller. Observed
 * (bpftrace ustack, Debian 12, kernel 6.18):
 *     connect, leak_outgoing_connection, main, __libc_start_call_main
 *     accept, leak_accepted_connection, main, __libc_start_call_main
 * call_connect/call_accept are missing from such a walk. closewait-trace
 * puts the skipped caller back (it finds the return address among the words
 * at the user stack pointer: closewait-user/src/enrich/caller.rs), so its
 * stacks have them; direct.c is the case without a helper, where the
 * skipped caller is the leaking function itself. Tests here look for
 * leak_outgoing_connection / leak_accepted_connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static NOINLINE void die(const char *what)
{
    fprintf(stderr, "leaker: %s: %s\n", what, strerror(errno));
    exit(1);
}

static NOINLINE void usage(void)
{
    fprintf(stderr,
            "usage: leaker connect|accept IP PORT [--fork] [--name NAME]\n");
    exit(2);
}

/* Parse an IPv4 or IPv6 literal and a port into `ss`; returns its length. */
static NOINLINE socklen_t parse_addr(const char *ip, const char *port_str,
                                     struct sockaddr_storage *ss)
{
    char *end = NULL;
    unsigned long port;

    errno = 0;
    port = strtoul(port_str, &end, 10);
    if (errno != 0 || end == port_str || *end != '\0' || port > 65535) {
        fprintf(stderr, "leaker: bad port: %s\n", port_str);
        exit(2);
    }
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)port);
        return sizeof(*sin);
    }
    if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)port);
        return sizeof(*sin6);
    }
    fprintf(stderr, "leaker: bad IP address: %s\n", ip);
    exit(2);
}

/* See "Stacks" above: this frame is invisible to a frame-pointer walk that
 * starts in a frameless libc wrapper; its caller is not. */
static NOINLINE int call_connect(int fd, const struct sockaddr *sa,
                                 socklen_t len)
{
    return connect(fd, sa, len);
}

static NOINLINE int call_accept(int lfd)
{
    return accept(lfd, NULL, NULL);
}

/* The socket this function creates is the one that leaks. */
NOINLINE int leak_outgoing_connection(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM, IPPROTO_TCP);
    if (fd < 0)
        die("socket");
    if (call_connect(fd, sa, len) != 0)
        die("connect");
    return fd;
}

/* The socket this function accepts is the one that leaks. */
NOINLINE int leak_accepted_connection(int lfd)
{
    int fd;
    do {
        fd = call_accept(lfd);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die("accept");
    return fd;
}

static NOINLINE int open_listener(const struct sockaddr *sa, socklen_t len)
{
    int one = 1;
    int lfd = socket(sa->sa_family, SOCK_STREAM, IPPROTO_TCP);
    if (lfd < 0)
        die("socket");
    if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        die("setsockopt(SO_REUSEADDR)");
    if (bind(lfd, sa, len) != 0)
        die("bind");
    if (listen(lfd, 16) != 0)
        die("listen");
    return lfd;
}

static NOINLINE unsigned short local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        die("getsockname");
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Read (and discard) until the peer has closed its side: read() returns 0,
 * the socket is in CLOSE_WAIT. */
static NOINLINE void wait_for_peer_close(int fd)
{
    char buf[4096];
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0)
            return;
        if (n < 0 && errno != EINTR && errno != EAGAIN)
            die("read");
    }
}

/* Sleep until stdin reaches end of file (or fails); signals such as SIGTERM
 * keep their default action and end the process. */
static NOINLINE void sleep_until_stdin_eof(void)
{
    char buf[256];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
        if (n == 0)
            return;
        if (n < 0 && errno != EINTR)
            return;
    }
}

int main(int argc, char **argv)
{
    const char *pos[3];
    int npos = 0;
    int do_fork = 0;
    const char *name = NULL;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--fork") == 0) {
            do_fork = 1;
        } else if (strcmp(argv[i], "--name") == 0) {
            if (i + 1 >= argc)
                usage();
            name = argv[++i];
        } else if (npos < 3) {
            pos[npos++] = argv[i];
        } else {
            usage();
        }
    }
    if (npos != 3)
        usage();
    int accept_mode;
    if (strcmp(pos[0], "connect") == 0)
        accept_mode = 0;
    else if (strcmp(pos[0], "accept") == 0)
        accept_mode = 1;
    else
        usage();

    /* Make sure a dead reader of our stdout does not hang or kill us in an
     * unexpected place; write errors are reported instead. */
    signal(SIGPIPE, SIG_IGN);

    if (name != NULL && prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) != 0)
        die("prctl(PR_SET_NAME)");

    struct sockaddr_storage ss;
    socklen_t len = parse_addr(pos[1], pos[2], &ss);
    int fd;
    if (accept_mode) {
        int lfd = open_listener((struct sockaddr *)&ss, len);
        printf("listening pid=%d port=%u\n", (int)getpid(), local_port(lfd));
        fflush(stdout);
        fd = leak_accepted_connection(lfd);
        close(lfd);
    } else {
        fd = leak_outgoing_connection((struct sockaddr *)&ss, len);
    }

    wait_for_peer_close(fd);

    if (do_fork) {
        int sync[2];
        if (pipe(sync) != 0)
            die("pipe");
        fflush(stdout);
        pid_t parent = getpid();
        pid_t child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            close(sync[0]);
            /* Do not outlive the parent (the test kills the parent). */
            prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
            if (getppid() != parent)
                _exit(0);
            printf("child pid=%d fd=%d\n", (int)getpid(), fd);
            fflush(stdout);
            close(sync[1]); /* tells the parent the line is out */
            sleep_until_stdin_eof();
            _exit(0);
        }
        close(sync[1]);
        char c;
        while (read(sync[0], &c, 1) < 0 && errno == EINTR)
            ;
        close(sync[0]);
    }

    printf("ready pid=%d fd=%d\n", (int)getpid(), fd);
    if (fflush(stdout) != 0)
        die("write stdout");

    sleep_until_stdin_eof();
    /* fd is deliberately never closed; exit() lets the kernel do it. */
    return 0;
}
