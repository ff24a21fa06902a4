/*
 * sseecho: a trivial pub/sub server that measures the load generator's ceiling.
 *
 * It does the least a server of this contract can do, so that whatever
 * limits a run against it is the client:
 *
 *   GET  /sub/<user>     an SSE stream (": hi" first, like Nchan)
 *   POST /pub/<user>     the body becomes "id: N\ndata: <body>\n\n" on every
 *                        stream of the user; 201 Created
 *   POST /task-updates   a CloudEvent (or a bulk envelope, one frame per entry)
 *                        goes as it is to the streams of its "user_id";
 *                        {"status":"SUCCESS"} (or one status per entry)
 *   GET  /healthz        200
 *
 * No history, no auth, no parsing beyond finding the user.  Frames queued
 * while handling one batch of readiness events go out in one write per stream.
 *
 *   sseecho PORT          (listens on 127.0.0.1 only; stops on SIGTERM)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOTS (1 << 16)
#define MAX_QUEUED (64u << 20)

typedef struct conn conn_t;
typedef struct {
    char *name;
    conn_t *streams;
    long next_id;
} channel_t;

struct conn {
    int fd, stream, dirty, writing;
    char *in, *out;
    size_t in_len, in_cap, out_len, out_off, out_cap;
    channel_t *channel;
    conn_t *next_in_channel, *next_dirty;
};

static channel_t channels[SLOTS];
static conn_t *dirty;
static int ep;
static volatile sig_atomic_t stop;

static void *grow(void *p, size_t size) {
    void *q = realloc(p, size);
    if (!q) {
        perror("sseecho");
        exit(2);
    }
    return q;
}

static channel_t *channel(const char *name, size_t len) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    for (size_t i = h & (SLOTS - 1);; i = (i + 1) & (SLOTS - 1)) {
        channel_t *c = &channels[i];
        if (!c->name) {
            c->name = strndup(name, len);
            return c;
        }
        if (strlen(c->name) == len && memcmp(c->name, name, len) == 0) return c;
    }
}

static void queue(conn_t *c, const char *a, size_t alen, const char *b, size_t blen,
                  const char *z, size_t zlen) {
    size_t need = c->out_len + alen + blen + zlen;
    if (need > c->out_cap) {
        c->out_cap = need * 2 + 4096;
        c->out = grow(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, a, alen);
    memcpy(c->out + c->out_len + alen, b, blen);
    memcpy(c->out + c->out_len + alen + blen, z, zlen);
    c->out_len = need;
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = dirty;
        dirty = c;
    }
}

static void fan_out(channel_t *ch, const char *data, size_t len) {
    char head[48];
    int n = snprintf(head, sizeof head, "id: %ld\ndata: ", ++ch->next_id);
    for (conn_t *s = ch->streams; s; s = s->next_in_channel) queue(s, head, n, data, len, "\n\n", 2);
}

static channel_t *user_of(const char *p, const char *end) {
    const char *q = memmem(p, end - p, "\"user_id\":\"", 11);
    if (!q) return NULL;
    q += 11;
    const char *e = memchr(q, '"', end - q);
    return e ? channel(q, e - q) : NULL;
}

static void task_updates(conn_t *c, const char *b, size_t len) {
    const char *end = b + len;
    if (len < 12 || memcmp(b, "{\"entries\":[", 12) != 0) {
        channel_t *ch = user_of(b, end);
        if (ch) fan_out(ch, b, len);
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 20\r\n\r\n{\"status\":\"SUCCESS\"}";
        queue(c, ok, sizeof ok - 1, "", 0, "", 0);
        return;
    }
    static char reply[1 << 20];
    size_t r = snprintf(reply, sizeof reply, "{\"statuses\":[");
    int index = 0;
    for (const char *e = memmem(b, len, "{\"entryId\":\"", 12); e;) {
        const char *next = memmem(e + 12, end - e - 12, "{\"entryId\":\"", 12);
        const char *stop_at = next ? next - 1 : end;
        channel_t *ch = user_of(e, stop_at);
        if (ch) fan_out(ch, e, stop_at - e);
        if (r + 64 < sizeof reply)
            r += snprintf(reply + r, sizeof reply - r, "%s{\"entryId\":\"%d\",\"status\":\"SUCCESS\"}",
                          index ? "," : "", index);
        index++;
        e = next;
    }
    r += snprintf(reply + r, sizeof reply - r, "]}");
    char head[128];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     r);
    queue(c, head, n, reply, r, "", 0);
}

/* Handle every complete request in the buffer; returns the bytes used. */
static size_t requests(conn_t *c) {
    size_t pos = 0;
    while (!c->stream && pos < c->in_len) {
        char *h = c->in + pos;
        size_t avail = c->in_len - pos;
        char *end = memmem(h, avail, "\r\n\r\n", 4);
        if (!end) break;
        size_t hlen = end + 4 - h, blen = 0;
        char *cl = memmem(h, hlen, "Content-Length: ", 16);
        if (cl) blen = strtoul(cl + 16, NULL, 10);
        if (hlen + blen > avail) break;
        char *b = end + 4;
        if (strncmp(h, "GET /sub/", 9) == 0) {
            char *sp = memchr(h + 9, ' ', hlen - 9);
            channel_t *ch = channel(h + 9, sp ? (size_t)(sp - h - 9) : 0);
            c->stream = 1;
            c->channel = ch;
            c->next_in_channel = ch->streams;
            ch->streams = c;
            static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                       "Cache-Control: no-cache\r\n\r\n: hi\n\n";
            queue(c, head, sizeof head - 1, "", 0, "", 0);
        } else if (strncmp(h, "POST /pub/", 10) == 0) {
            char *sp = memchr(h + 10, ' ', hlen - 10);
            fan_out(channel(h + 10, sp ? (size_t)(sp - h - 10) : 0), b, blen);
            static const char ok[] = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
            queue(c, ok, sizeof ok - 1, "", 0, "", 0);
        } else if (strncmp(h, "POST /task-updates ", 19) == 0) {
            task_updates(c, b, blen);
        } else {
            static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
            queue(c, ok, sizeof ok - 1, "", 0, "", 0);
        }
        pos += hlen + blen;
    }
    return c->stream ? c->in_len : pos;
}

static void drop(conn_t *c) {
    if (c->channel) {
        conn_t **p = &c->channel->streams;
        while (*p && *p != c) p = &(*p)->next_in_channel;
        if (*p) *p = c->next_in_channel;
    }
    close(c->fd);
    c->fd = -1;
    c->channel = NULL;
    c->out_len = c->out_off = 0;
    /* Freed by the flush loop, after this batch of events. */
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = dirty;
        dirty = c;
    }
}

static void flush(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            drop(c);
            return;
        }
        c->out_off += n;
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len > MAX_QUEUED) {
        drop(c);
        return;
    }
    int writing = c->out_len > 0;
    if (writing != c->writing) {
        c->writing = writing;
        struct epoll_event e = {.events = EPOLLIN | (writing ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    }
}

static void on_stop(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: sseecho PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
        perror("sseecho: listen");
        return 2;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
    static char rbuf[256 * 1024];
    struct epoll_event events[1024];
    while (!stop) {
        int n = epoll_wait(ep, events, 1024, 200);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            if (c->fd < 0) continue;
            if (events[i].events & EPOLLOUT) flush(c);
            if (c->fd < 0 || !(events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t got = read(c->fd, rbuf, sizeof rbuf);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                drop(c);
                continue;
            }
            if (c->stream) continue;
            if (c->in_len + got > c->in_cap) {
                c->in_cap = (c->in_len + got) * 2;
                c->in = grow(c->in, c->in_cap);
            }
            memcpy(c->in + c->in_len, rbuf, got);
            c->in_len += got;
            size_t used = requests(c);
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
        }
        while (dirty) {
            conn_t *c = dirty;
            dirty = c->next_dirty;
            c->dirty = 0;
            if (c->fd < 0) {
                free(c->in);
                free(c->out);
                free(c);
                continue;
            }
            flush(c);
        }
    }
    return 0;
}
