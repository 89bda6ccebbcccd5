/* connstorm: the connects scenario's client side, in C.
 *
 * Why C: one Python (asyncio) client costs about as much CPU per connect+disconnect as
 * a fast broker does, so a Python generator saturates its core before the broker does
 * and the scenario measures the generator. This one keeps PARALLEL connections in
 * flight on one epoll loop: non-blocking connect, CONNECT (MQTT 3.1.1, clean session),
 * wait for the 4-byte CONNACK, DISCONNECT, close, start the next.
 *
 * usage: connstorm HOST PORT TOTAL PARALLEL DEADLINE_SECONDS
 * prints: OK FAILED WALL_SECONDS CPU_SECONDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum phase { CONNECTING, AWAIT_CONNACK };

struct slot {
    int fd;
    long n; /* this connection's number: its client id is bench-cN */
    enum phase phase;
    int got;
    unsigned char buf[8];
};

static struct sockaddr_in addr;
static int epfd;
static long started, total, ok, failed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int connect_packet(unsigned char *out, long n) {
    char id[32];
    int idlen = snprintf(id, sizeof id, "bench-c%ld", n);
    int rest = 10 + 2 + idlen;
    unsigned char *p = out;
    *p++ = 0x10;
    *p++ = (unsigned char)rest;
    memcpy(p, "\x00\x04MQTT\x04\x02\x02\x58", 10); /* level 4, clean session, keep-alive 600 */
    p += 10;
    *p++ = 0;
    *p++ = (unsigned char)idlen;
    memcpy(p, id, idlen);
    return 2 + rest;
}

static void send_connect(struct slot *s) {
    unsigned char pkt[64];
    /* s->n, not `started`: that has moved on if other connects were started while
     * this one was in progress, and two clients with one id are a takeover. */
    int len = connect_packet(pkt, s->n);
    if (send(s->fd, pkt, len, MSG_NOSIGNAL) != len) {
        failed++;
        close(s->fd);
        s->fd = -1;
        return;
    }
    s->phase = AWAIT_CONNACK;
    s->got = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
}

static void start(struct slot *s) {
    s->fd = -1;
    if (started >= total) return;
    s->n = ++started;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { failed++; return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->fd = fd;
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    s->phase = CONNECTING;
    if (rc == 0) send_connect(s);
    else if (errno != EINPROGRESS) { failed++; close(fd); s->fd = -1; }
}

static void finish(struct slot *s, int success) {
    if (success) {
        send(s->fd, "\xe0\x00", 2, MSG_NOSIGNAL);
        ok++;
    } else {
        failed++;
    }
    close(s->fd);
    start(s);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT TOTAL PARALLEL DEADLINE_SECONDS\n", argv[0]);
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    total = atol(argv[3]);
    int parallel = atoi(argv[4]);
    double deadline = now() + atof(argv[5]);
    struct slot *slots = calloc(parallel, sizeof *slots);
    epfd = epoll_create1(0);
    double t0 = now();
    for (int i = 0; i < parallel; i++) start(&slots[i]);
    struct epoll_event events[256];
    while (ok + failed < total && now() < deadline) {
        int n = epoll_wait(epfd, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = events[i].data.ptr;
            if (s->fd < 0) continue;
            if (s->phase == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) finish(s, 0);
                else send_connect(s);
                continue;
            }
            ssize_t r = recv(s->fd, s->buf + s->got, sizeof s->buf - s->got, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                finish(s, 0);
                continue;
            }
            s->got += (int)r;
            if (s->got >= 4) finish(s, s->buf[0] == 0x20 && s->buf[3] == 0);
        }
    }
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("%ld %ld %.6f %.6f\n", ok, failed, wall, cpu);
    return 0;
}
