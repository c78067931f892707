/*
 * direct.c - leaks TCP sockets in CLOSE_WAIT from functions that call
 * connect() and accept() directly, with no helper in between, for
 * closewait-trace's stack tests.
 *
 * glibc's syscall wrappers execute `syscall` without setting up a frame, so
 * a frame-pointer walk from the syscall skips their direct caller: exactly
 * the function that leaked. This program is that case, built with frame
 * pointers (-O0 -fno-omit-frame-pointer) and without (-O2
 * -fomit-frame-pointer), debug info kept in both.
 *
 * Usage:
 *     direct connect IP PORT [--thread]
 *     direct accept  IP PORT [--thread]
 *
 *   connect: open_pool_connection() connects to IP:PORT; the program waits
 *            until the peer closes (read() returns 0) and never closes it.
 *   accept:  listens on IP:PORT (0: the kernel picks), prints
 *            "listening pid=<pid> port=<port>", then handle_client() accepts
 *            one connection, reads until the client closes, never closes.
 *   --thread the leaking function runs in a second thread (pthread), the
 *            main thread waits for it.
 *
 * Output: "ready pid=<pid> fd=<fd>" once the socket is in CLOSE_WAIT. The
 * program then sleeps until its standard input reaches end of file.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static struct sockaddr_storage addr;
static socklen_t addr_len;
static int listen_fd = -1;
static int leaked_fd = -1;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void parse(const char *ip, const char *port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&addr;
    memset(&addr, 0, sizeof(addr));
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)atoi(port));
        addr_len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)atoi(port));
        addr_len = sizeof(*sin6);
    } else {
        fprintf(stderr, "direct: bad IP address: %s\n", ip);
        exit(2);
    }
}

/* The leaking functions: connect() and accept() called right here. */
NOINLINE int open_pool_connection(void)
{
    int fd = socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
    if (fd < 0)
        die("socket");
    if (connect(fd, (struct sockaddr *)&addr, addr_len) != 0)
        die("connect");
    return fd;
}

NOINLINE int handle_client(void)
{
    int fd;
    do {
        fd = accept(listen_fd, NULL, NULL);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die("accept");
    return fd;
}

static void wait_for_peer_close(int fd)
{
    char buf[256];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) != 0)
        if (n < 0 && errno != EINTR)
            die("read");
}

static void *leak(void *mode)
{
    leaked_fd = strcmp(mode, "accept") == 0 ? handle_client()
                                            : open_pool_connection();
    wait_for_peer_close(leaked_fd);
    return NULL;
}

int main(int argc, char **argv)
{
    int thread = 0;
    char *pos[3];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--thread") == 0)
            thread = 1;
        else if (npos < 3)
            pos[npos++] = argv[i];
    }
    if (npos != 3 || (strcmp(pos[0], "connect") && strcmp(pos[0], "accept"))) {
        fprintf(stderr, "usage: direct connect|accept IP PORT [--thread]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    parse(pos[1], pos[2]);
    if (strcmp(pos[0], "accept") == 0) {
        int one = 1;
        listen_fd = socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
        if (listen_fd < 0)
            die("socket");
        setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(listen_fd, (struct sockaddr *)&addr, addr_len) != 0 ||
            listen(listen_fd, 16) != 0)
            die("listen");
        struct sockaddr_storage local;
        socklen_t len = sizeof(local);
        getsockname(listen_fd, (struct sockaddr *)&local, &len);
        unsigned short port = ntohs(local.ss_family == AF_INET
                                        ? ((struct sockaddr_in *)&local)->sin_port
                                        : ((struct sockaddr_in6 *)&local)->sin6_port);
        printf("listening pid=%d port=%u\n", getpid(), port);
    }
    if (thread) {
        pthread_t t;
        if (pthread_create(&t, NULL, leak, pos[0]) != 0)
            die("pthread_create");
        pthread_join(t, NULL);
    } else {
        leak(pos[0]);
    }
    printf("ready pid=%d fd=%d\n", getpid(), leaked_fd);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}
