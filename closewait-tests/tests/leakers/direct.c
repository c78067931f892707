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
 *     direct connect IP PORT [--thread] [--jit]
 *     direct accept  IP PORT [--thread]
 *
 *   connect: open_pool_connection() connects to IP:PORT; the program waits
 *            until the peer closes (read() returns 0) and never closes it.
 *   accept:  listens on IP:PORT (0: the kernel picks), prints
 *            "listening pid=<pid> port=<port>", then handle_client() accepts
 *            one connection, reads until the client closes, never closes.
 *   --thread the leaking function runs in a second thread (pthread), the
 *            main thread waits for it.
 *   --jit    connect() is called from machine code generated at run time
 *            into anonymous executable memory, named in /tmp/perf-PID.map
 *            as `jit_open_pool_connection` the way JIT runtimes (JVM, Node,
 *            Python -X perf) publish theirs; the file is removed at exit.
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
#include <sys/mman.h>
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

/* --jit: `sub $8,%rsp; movabs $connect,%rax; call *%rax; add $8,%rsp;
 * ret`, a function of (fd, addr, len) that calls connect() with no frame of
 * its own, like JIT-compiled code. */
static int (*jit_connect)(int, const struct sockaddr *, socklen_t);
static char perf_map[64];

static void remove_perf_map(void)
{
    unlink(perf_map);
}

static void make_jit(void)
{
    unsigned char code[] = {
        0x48, 0x83, 0xec, 0x08,                         /* sub $8,%rsp */
        0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0,             /* movabs $connect,%rax */
        0xff, 0xd0,                                     /* call *%rax */
        0x48, 0x83, 0xc4, 0x08,                         /* add $8,%rsp */
        0xc3,                                           /* ret */
    };
    void *target = (void *)connect;
    memcpy(code + 6, &target, sizeof(target));
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        die("mmap");
    memcpy(page, code, sizeof(code));
    if (mprotect(page, 4096, PROT_READ | PROT_EXEC) != 0)
        die("mprotect");
    jit_connect = (int (*)(int, const struct sockaddr *, socklen_t))page;
    snprintf(perf_map, sizeof(perf_map), "/tmp/perf-%d.map", getpid());
    FILE *f = fopen(perf_map, "w");
    if (!f)
        die("perf map");
    fprintf(f, "%lx %zx jit_open_pool_connection\n", (unsigned long)page, sizeof(code));
    fclose(f);
    atexit(remove_perf_map);
}

NOINLINE int open_pool_connection_jit(void)
{
    int fd = socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
    if (fd < 0)
        die("socket");
    if (jit_connect(fd, (struct sockaddr *)&addr, addr_len) != 0)
        die("connect");
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
    if (strcmp(mode, "accept") == 0)
        leaked_fd = handle_client();
    else if (jit_connect)
        leaked_fd = open_pool_connection_jit();
    else
        leaked_fd = open_pool_connection();
    wait_for_peer_close(leaked_fd);
    return NULL;
}

int main(int argc, char **argv)
{
    int thread = 0, jit = 0;
    char *pos[3];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--thread") == 0)
            thread = 1;
        else if (strcmp(argv[i], "--jit") == 0)
            jit = 1;
        else if (npos < 3)
            pos[npos++] = argv[i];
    }
    if (npos != 3 || (strcmp(pos[0], "connect") && strcmp(pos[0], "accept"))) {
        fprintf(stderr, "usage: direct connect|accept IP PORT [--thread] [--jit]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    parse(pos[1], pos[2]);
    if (jit)
        make_jit();
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
