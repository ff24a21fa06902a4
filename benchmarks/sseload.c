/*
 * sseload: the load generator of the benchmarks (see README.md).
 *
 * One process, one epoll loop, one core.  It opens SSE streams, publishes
 * deliveries over a few pipelined keep-alive connections, counts every
 * `\n\n`-terminated frame of every stream and checks the per-user sequence
 * number ("seq") each task carries: duplicates (a bitmap per stream),
 * reordering and loss.  Publish-to-receive latency compares the "ts" a task
 * was stamped with just before its request was written (CLOCK_MONOTONIC, the
 * same process) with the time the frame was read.
 *
 *   sseload --target PORT [--target PORT] --users FILE --streams FILE
 *           [--concurrency N] [--open-timeout S] [--pause]
 *           [--publish none|dapr|bulk|nchan] [--batch N] [--publishers K]
 *           [--depth D] [--rate R] [--seconds S] [--drain S] [--latency]
 *
 * --users: one user name per line.  --streams: one stream per line,
 * "<user index> <target index> <path> <bearer token or ->".
 * Publisher k owns the users i with i % K == k and talks to target k % T, so
 * a user's deliveries travel on one connection, in order; HTTP/1.1 servers
 * answer pipelined requests in order.  --rate 0 keeps --depth requests in
 * flight per connection; --rate R sends single deliveries on a fixed
 * schedule of R per second in total.
 *
 * Output: JSON lines on stdout, {"stage":"opened",...} once the streams are
 * open and {"stage":"done",...} at the end.  With --pause the program waits
 * for a line on stdin after each of them (the caller probes the server).
 * Only 127.0.0.1 is ever contacted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_TARGETS 8
#define RING 4096
#define READ_BUF (256 * 1024)
#define MAX_REASONS 16
#define NO_TRACE "00-00000000000000000000000000000000-0000000000000000-00"

enum { TAG_STREAM = 1, TAG_PUB = 2, TAG_TIMER = 3 };
enum { S_IDLE, S_CONNECTING, S_HEAD, S_OPEN, S_DONE };
enum { CS_SIZE, CS_EXT, CS_DATA, CS_CRLF, CS_END };
enum { P_NONE, P_DAPR, P_BULK, P_NCHAN };

/* A task as a task API would publish it (about 300 bytes), carrying the
 * sequence number and the send time the streams check. */
#define TASK_FMT                                                                  \
    "{\"id\":%lld,\"seq\":%lld,\"ts\":%lld,\"title\":\"Prepare the quarterly "     \
    "report %lld\",\"description\":\"Collect the numbers from finance and draft "  \
    "the summary\",\"status\":\"in_progress\",\"priority\":\"medium\",\"tags\":"   \
    "[\"work\",\"reports\"],\"due_date\":\"2026-12-01\",\"created_at\":"           \
    "\"2026-11-27T08:00:00Z\",\"updated_at\":\"2026-11-27T08:05:00Z\"}"
/* The CloudEvent envelope as daprd forwards it: compact, keys sorted. */
#define CE_FMT                                                                    \
    "{\"data\":{\"event_type\":\"task.updated\",\"task\":%s,\"user_id\":\"%s\"},"  \
    "\"datacontenttype\":\"application/json\",\"id\":\"%s-%d-%lld\","             \
    "\"pubsubname\":\"taskpubsub\",\"source\":\"task-api\",\"specversion\":"       \
    "\"1.0\",\"time\":\"2026-11-27T08:05:00Z\",\"topic\":\"task-updates\","        \
    "\"traceid\":\"" NO_TRACE "\",\"traceparent\":\"" NO_TRACE "\","               \
    "\"tracestate\":\"\",\"type\":\"com.dapr.event.sent\"}"
/* What a client of the service receives, published as-is to Nchan. */
#define CLIENT_FMT "{\"type\":\"task_update\",\"event\":\"task.updated\",\"task\":%s}"

typedef struct {
    int fd, user, target, state, chunked, cstate, pending;
    int64_t chunk_left, t_open;
    char *path, *token;
    char *head;
    int head_len;
    char *carry;
    size_t carry_len, carry_cap;
    uint64_t *seen;
    int64_t seen_words;
    int64_t received, unique, dups, disorder, other, last_seq;
    int server_closed;
    char closing[32];
} stream_t;

typedef struct {
    int fd, target, nusers, cursor, rhead, rcount, writing;
    int *users;
    char *out, *in;
    size_t out_len, out_off, out_cap, in_len, in_cap;
    int ring[RING];
    int64_t next_at;
} pub_t;

typedef struct {
    char name[48];
    long count;
} reason_t;

static struct {
    int ports[MAX_TARGETS], ntargets, concurrency, pause, mode, batch, npubs, depth, latency;
    double open_timeout, rate, seconds, drain;
    const char *users_file, *streams_file;
} cfg = {.concurrency = 200, .open_timeout = 120, .batch = 50, .npubs = 4, .depth = 8,
         .seconds = 5, .drain = 30};

static int ep;
static char **users;
static int nusers;
static int64_t *user_seq; /* last sequence number sent, per user */
static stream_t *streams;
static int nstreams;
static pub_t *pubs;
static char rbuf[READ_BUF];
static char prefix[32];
static reason_t open_failures[MAX_REASONS], publish_errors[MAX_REASONS];
static int64_t *samples;
static size_t nsamples, samples_cap;
static int64_t last_frame_at, last_ack_at;
static long opened, open_failed, pending_total, requests, acked, failed, late;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

/* Time spent runnable but waiting for a CPU: how contended the client's core was. */
static double wait_seconds(void) {
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/self/schedstat", "r");
    if (!f) return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
    fclose(f);
    return wait / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "sseload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *grow(void *p, size_t size) {
    void *q = realloc(p, size);
    if (!q) die("out of memory");
    return q;
}

static void note(reason_t *table, const char *name) {
    for (int i = 0; i < MAX_REASONS; i++) {
        if (table[i].count && strcmp(table[i].name, name) == 0) {
            table[i].count++;
            return;
        }
        if (!table[i].count) {
            snprintf(table[i].name, sizeof table[i].name, "%s", name);
            table[i].count = 1;
            return;
        }
    }
    table[MAX_REASONS - 1].count++;
}

static void print_reasons(const reason_t *table) {
    printf("{");
    for (int i = 0, first = 1; i < MAX_REASONS && table[i].count; i++, first = 0)
        printf("%s\"%s\":%ld", first ? "" : ",", table[i].name, table[i].count);
    printf("}");
}

/* Case-insensitive search of a NUL-free needle in a bounded haystack. */
static const char *find_ci(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp(hay + i, needle, m) == 0) return hay + i;
    return NULL;
}

static int loopback_socket(int port, int blocking) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK), 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void watch(int fd, int op, uint32_t events, int tag, int index) {
    struct epoll_event e = {.events = events, .data.u64 = ((uint64_t)tag << 32) | (uint32_t)index};
    if (epoll_ctl(ep, op, fd, &e) < 0) die("epoll_ctl");
}

/* -- input files -------------------------------------------------------------------- */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *text = grow(NULL, n + 1);
    if (fread(text, 1, n, f) != (size_t)n) die(path);
    text[n] = 0;
    fclose(f);
    return text;
}

static void load_inputs(void) {
    char *text = slurp(cfg.users_file), *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        users = grow(users, sizeof *users * (nusers + 1));
        users[nusers++] = line;
    }
    user_seq = calloc(nusers ? nusers : 1, sizeof *user_seq);
    text = slurp(cfg.streams_file);
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        streams = grow(streams, sizeof *streams * (nstreams + 1));
        stream_t *s = &streams[nstreams];
        memset(s, 0, sizeof *s);
        char *inner = NULL;
        s->user = atoi(strtok_r(line, " ", &inner));
        s->target = atoi(strtok_r(NULL, " ", &inner));
        s->path = strtok_r(NULL, " ", &inner);
        s->token = strtok_r(NULL, " ", &inner);
        if (!s->path || !s->token || s->user < 0 || s->user >= nusers ||
            s->target < 0 || s->target >= cfg.ntargets) {
            fprintf(stderr, "sseload: bad stream line %d\n", nstreams + 1);
            exit(2);
        }
        s->fd = -1;
        nstreams++;
    }
}

/* -- streams ------------------------------------------------------------------------ */

static void stream_close(stream_t *s) {
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    s->state = S_DONE;
    free(s->head);
    s->head = NULL;
}

static void stream_fail(stream_t *s, const char *reason) {
    if (s->pending) {
        s->pending = 0;
        pending_total--;
        open_failed++;
        note(open_failures, reason);
    }
    stream_close(s);
}

static int stream_request(stream_t *s) {
    char req[4096];
    int n = strcmp(s->token, "-") == 0
                ? snprintf(req, sizeof req,
                           "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: "
                           "text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                           s->path, cfg.ports[s->target])
                : snprintf(req, sizeof req,
                           "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: "
                           "Bearer %s\r\nAccept: text/event-stream\r\nCache-Control: "
                           "no-cache\r\n\r\n",
                           s->path, cfg.ports[s->target], s->token);
    return write(s->fd, req, n) == n ? 0 : errno == EAGAIN || errno == ENOTCONN ? 1 : -1;
}

static void stream_start(int i) {
    stream_t *s = &streams[i];
    s->fd = loopback_socket(cfg.ports[s->target], 0);
    s->pending = 1;
    pending_total++;
    if (s->fd < 0) {
        stream_fail(s, "connect_error");
        return;
    }
    /* On loopback the handshake has usually finished when connect() returns:
     * writing at once saves a readiness round trip per stream. */
    int sent = stream_request(s);
    if (sent < 0) {
        stream_fail(s, "write_error");
        return;
    }
    s->state = sent == 0 ? S_HEAD : S_CONNECTING;
    watch(s->fd, EPOLL_CTL_ADD, sent == 0 ? EPOLLIN : EPOLLOUT, TAG_STREAM, i);
}

static void frame(stream_t *s, const char *f, size_t n, int64_t now) {
    const char *q = memmem(f, n, "\"seq\":", 6);
    if (!q) {
        if (memmem(f, n, "data:", 5)) s->other++;
        if (n > 11 && memcmp(f, ": closing: ", 11) == 0) {
            size_t len = n - 11 < sizeof s->closing - 1 ? n - 11 : sizeof s->closing - 1;
            memcpy(s->closing, f + 11, len);
            s->closing[len] = 0;
            char *nl = strchr(s->closing, '\n');
            if (nl) *nl = 0;
        }
        return;
    }
    const char *end = f + n;
    q += 6;
    while (q < end && *q == ' ') q++;
    int64_t seq = 0;
    while (q < end && *q >= '0' && *q <= '9') seq = seq * 10 + (*q++ - '0');
    s->received++;
    last_frame_at = now;
    int64_t word = seq >> 6;
    if (word >= s->seen_words) {
        int64_t words = s->seen_words ? s->seen_words : 64;
        while (words <= word) words *= 2;
        s->seen = grow(s->seen, words * sizeof *s->seen);
        memset(s->seen + s->seen_words, 0, (words - s->seen_words) * sizeof *s->seen);
        s->seen_words = words;
    }
    uint64_t bit = 1ULL << (seq & 63);
    if (s->seen[word] & bit) {
        s->dups++;
        return;
    }
    s->seen[word] |= bit;
    s->unique++;
    if (seq != s->last_seq + 1) s->disorder++;
    s->last_seq = seq;
    if (cfg.latency) {
        const char *t = memmem(f, n, "\"ts\":", 5);
        if (!t) return;
        t += 5;
        while (t < end && *t == ' ') t++;
        int64_t ts = 0;
        while (t < end && *t >= '0' && *t <= '9') ts = ts * 10 + (*t++ - '0');
        if (nsamples == samples_cap) {
            samples_cap = samples_cap ? samples_cap * 2 : 65536;
            samples = grow(samples, samples_cap * sizeof *samples);
        }
        samples[nsamples++] = now - ts;
    }
}

static size_t frames(stream_t *s, const char *p, size_t len, int64_t now) {
    size_t pos = 0;
    while (pos < len) {
        const char *e = memmem(p + pos, len - pos, "\n\n", 2);
        if (!e) break;
        frame(s, p + pos, e - (p + pos), now);
        pos = e - p + 2;
    }
    return pos;
}

static void carry(stream_t *s, const char *p, size_t len) {
    if (s->carry_len + len > s->carry_cap) {
        s->carry_cap = (s->carry_len + len) * 2 + 1024;
        s->carry = grow(s->carry, s->carry_cap);
    }
    memcpy(s->carry + s->carry_len, p, len);
    s->carry_len += len;
}

/* Decode the chunked framing in place; returns the payload length. */
static size_t dechunk(stream_t *s, char *p, size_t len) {
    size_t in = 0, out = 0;
    while (in < len) {
        char c = p[in];
        switch (s->cstate) {
        case CS_SIZE:
        case CS_EXT:
            in++;
            if (c == '\n') {
                s->cstate = s->chunk_left ? CS_DATA : CS_END;
            } else if (s->cstate == CS_SIZE && c != '\r') {
                if (c == ';') s->cstate = CS_EXT;
                else s->chunk_left = s->chunk_left * 16 +
                                     (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
            }
            break;
        case CS_DATA: {
            size_t take = len - in < (size_t)s->chunk_left ? len - in : (size_t)s->chunk_left;
            memmove(p + out, p + in, take);
            in += take;
            out += take;
            s->chunk_left -= take;
            if (!s->chunk_left) s->cstate = CS_CRLF;
            break;
        }
        case CS_CRLF:
            in++;
            if (c == '\n') s->cstate = CS_SIZE;
            break;
        default:
            return out;
        }
    }
    return out;
}

static void body(stream_t *s, char *p, size_t len, int64_t now) {
    if (s->chunked) len = dechunk(s, p, len);
    if (!len) return;
    if (s->pending) {
        s->pending = 0;
        pending_total--;
        opened++;
        s->t_open = now;
    }
    if (s->carry_len) {
        carry(s, p, len);
        size_t used = frames(s, s->carry, s->carry_len, now);
        memmove(s->carry, s->carry + used, s->carry_len - used);
        s->carry_len -= used;
    } else {
        size_t used = frames(s, p, len, now);
        if (used < len) carry(s, p + used, len - used);
    }
}

static void stream_event(int i, uint32_t events, int64_t now) {
    stream_t *s = &streams[i];
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            stream_fail(s, "connect_error");
            return;
        }
        if (stream_request(s) != 0) {
            stream_fail(s, "write_error");
            return;
        }
        s->state = S_HEAD;
        watch(s->fd, EPOLL_CTL_MOD, EPOLLIN, TAG_STREAM, i);
        return;
    }
    (void)events;
    ssize_t n = read(s->fd, rbuf, sizeof rbuf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        if (s->pending) {
            stream_fail(s, "closed_before_open");
        } else {
            s->server_closed = 1;
            stream_close(s);
        }
        return;
    }
    if (s->state == S_OPEN) {
        body(s, rbuf, n, now);
        return;
    }
    s->head = grow(s->head, s->head_len + n + 1);
    memcpy(s->head + s->head_len, rbuf, n);
    s->head_len += n;
    s->head[s->head_len] = 0;
    char *end = memmem(s->head, s->head_len, "\r\n\r\n", 4);
    if (!end) {
        if (s->head_len > 16384) stream_fail(s, "bad_response");
        return;
    }
    int status = s->head_len > 12 ? atoi(s->head + 9) : 0;
    if (status != 200) {
        char reason[32];
        snprintf(reason, sizeof reason, "HTTP %d", status);
        stream_fail(s, reason);
        return;
    }
    s->chunked = find_ci(s->head, end - s->head, "\r\ntransfer-encoding: chunked") != NULL;
    s->state = S_OPEN;
    char *rest = end + 4;
    body(s, rest, s->head + s->head_len - rest, now);
    free(s->head);
    s->head = NULL;
}

/* -- publishers --------------------------------------------------------------------- */

static char task_buf[1024], event_buf[4096];
static char *body_buf;
static size_t body_cap;

static void reserve(char **buf, size_t *cap, size_t used, size_t more) {
    if (used + more > *cap) {
        *cap = (used + more) * 2;
        *buf = grow(*buf, *cap);
    }
}

static int cloudevent(char *out, size_t cap, int user, int64_t seq, int64_t ts) {
    snprintf(task_buf, sizeof task_buf, TASK_FMT, (long long)seq, (long long)seq,
             (long long)ts, (long long)seq);
    return snprintf(out, cap, CE_FMT, task_buf, users[user], prefix, user, (long long)seq);
}

static void pub_send(pub_t *p, int64_t now) {
    int count = cfg.mode == P_BULK ? cfg.batch : 1;
    int64_t ts = now_ns();
    size_t len = 0;
    const char *path = "/task-updates", *type = "application/cloudevents+json";
    char nchan_path[300];
    reserve(&body_buf, &body_cap, 0, 256 + (size_t)count * 1400);
    if (cfg.mode == P_BULK) {
        type = "application/json";
        len += sprintf(body_buf, "{\"entries\":[");
        for (int i = 0; i < count; i++) {
            int u = p->users[p->cursor++ % p->nusers];
            cloudevent(event_buf, sizeof event_buf, u, ++user_seq[u], ts);
            len += sprintf(body_buf + len,
                           "%s{\"entryId\":\"%d\",\"event\":%s,\"contentType\":"
                           "\"application/cloudevents+json\",\"metadata\":{}}",
                           i ? "," : "", i, event_buf);
        }
        len += sprintf(body_buf + len,
                       "],\"id\":\"%s-bulk-%ld\",\"metadata\":{},\"pubsubname\":\"taskpubsub\","
                       "\"topic\":\"task-updates\",\"type\":\"com.dapr.event.sent.bulk\"}",
                       prefix, requests);
    } else {
        int u = p->users[p->cursor++ % p->nusers];
        int64_t seq = ++user_seq[u];
        if (cfg.mode == P_DAPR) {
            len = cloudevent(body_buf, body_cap, u, seq, ts);
        } else {
            snprintf(task_buf, sizeof task_buf, TASK_FMT, (long long)seq, (long long)seq,
                     (long long)ts, (long long)seq);
            len = snprintf(body_buf, body_cap, CLIENT_FMT, task_buf);
            snprintf(nchan_path, sizeof nchan_path, "/pub/%s", users[u]);
            path = nchan_path;
            type = "application/json";
        }
    }
    reserve(&p->out, &p->out_cap, p->out_len, len + 512);
    if (cfg.mode == P_NCHAN)
        p->out_len += sprintf(p->out + p->out_len,
                              "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\n"
                              "Content-Length: %zu\r\n\r\n",
                              path, cfg.ports[p->target], type, len);
    else
        p->out_len += sprintf(p->out + p->out_len,
                              "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\n"
                              "Content-Length: %zu\r\ntraceparent: " NO_TRACE "\r\n"
                              "pubsubname: taskpubsub\r\n\r\n",
                              path, cfg.ports[p->target], type, len);
    memcpy(p->out + p->out_len, body_buf, len);
    p->out_len += len;
    p->ring[(p->rhead + p->rcount++) % RING] = count;
    requests++;
    (void)now;
}

static void pub_flush(pub_t *p, int index) {
    while (p->out_off < p->out_len) {
        ssize_t n = write(p->fd, p->out + p->out_off, p->out_len - p->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            return; /* the read side sees the reset and accounts for it */
        }
        p->out_off += n;
    }
    if (p->out_off == p->out_len) p->out_off = p->out_len = 0;
    int writing = p->out_len > 0;
    if (writing != p->writing) {
        p->writing = writing;
        watch(p->fd, EPOLL_CTL_MOD, EPOLLIN | (writing ? EPOLLOUT : 0), TAG_PUB, index);
    }
}

static int successes(int status, const char *b, size_t n, int count) {
    if (cfg.mode == P_NCHAN) return status == 201 || status == 202 ? count : 0;
    if (status != 200) return 0;
    int ok = 0;
    for (const char *q = b; (q = memmem(q, n - (q - b), "\"SUCCESS\"", 9)); q += 9) ok++;
    return ok < count ? ok : count;
}

static void pub_connect(pub_t *p, int index) {
    p->fd = loopback_socket(cfg.ports[p->target], 1);
    if (p->fd < 0) die("publisher connect");
    int one = 1;
    setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(p->fd, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
    p->writing = 0;
    p->out_len = p->out_off = p->in_len = 0;
    watch(p->fd, EPOLL_CTL_ADD, EPOLLIN, TAG_PUB, index);
}

static void pub_event(int index, uint32_t events, int64_t now) {
    pub_t *p = &pubs[index];
    if (events & EPOLLOUT) pub_flush(p, index);
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    reserve(&p->in, &p->in_cap, p->in_len, READ_BUF);
    ssize_t n = read(p->fd, p->in + p->in_len, p->in_cap - p->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        /* Everything in flight on a broken connection counts as failed. */
        while (p->rcount) {
            failed += p->ring[p->rhead];
            p->rhead = (p->rhead + 1) % RING;
            p->rcount--;
        }
        note(publish_errors, n == 0 ? "connection_closed" : "connection_reset");
        epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
        close(p->fd);
        pub_connect(p, index);
        return;
    }
    p->in_len += n;
    size_t pos = 0;
    while (pos < p->in_len) {
        const char *h = p->in + pos;
        size_t avail = p->in_len - pos;
        const char *end = memmem(h, avail, "\r\n\r\n", 4);
        if (!end) break;
        size_t hlen = end + 4 - h, blen = 0;
        int status = avail > 12 ? atoi(h + 9) : 0;
        const char *cl = find_ci(h, hlen, "\r\ncontent-length:");
        if (cl) {
            blen = strtoul(cl + 17, NULL, 10);
        } else if (find_ci(h, hlen, "\r\ntransfer-encoding: chunked")) {
            const char *last = memmem(end + 4, avail - hlen, "0\r\n\r\n", 5);
            if (!last) break;
            blen = last + 5 - (end + 4);
        }
        if (hlen + blen > avail) break;
        if (!p->rcount) {
            note(publish_errors, "unexpected_response");
            pos += hlen + blen;
            continue;
        }
        int count = p->ring[p->rhead];
        p->rhead = (p->rhead + 1) % RING;
        p->rcount--;
        int ok = successes(status, end + 4, blen, count);
        acked += ok;
        if (ok != count) {
            char reason[48];
            failed += count - ok;
            snprintf(reason, sizeof reason, "HTTP %d", status);
            note(publish_errors, reason);
        }
        last_ack_at = now;
        pos += hlen + blen;
    }
    memmove(p->in, p->in + pos, p->in_len - pos);
    p->in_len -= pos;
}

/* -- phases ------------------------------------------------------------------------- */

static void dispatch(int timeout_ms) {
    struct epoll_event events[1024];
    int n = epoll_wait(ep, events, 1024, timeout_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    int64_t now = now_ns();
    for (int i = 0; i < n; i++) {
        int tag = events[i].data.u64 >> 32, index = (int)(uint32_t)events[i].data.u64;
        if (tag == TAG_STREAM) stream_event(index, events[i].events, now);
        else if (tag == TAG_PUB) pub_event(index, events[i].events, now);
        else if (tag == TAG_TIMER) {
            uint64_t ticks;
            if (read(index, &ticks, sizeof ticks) < 0 && errno != EAGAIN) die("timerfd");
        }
    }
}

static int64_t open_streams(void) {
    int64_t start = now_ns(), deadline = start + (int64_t)(cfg.open_timeout * 1e9), last = start;
    int next = 0;
    while (next < nstreams || pending_total) {
        while (next < nstreams && pending_total < cfg.concurrency) stream_start(next++);
        dispatch(10);
        if (now_ns() > deadline) {
            for (int i = 0; i < nstreams; i++)
                if (streams[i].pending) stream_fail(&streams[i], "timeout");
            while (next < nstreams) {
                open_failed++;
                note(open_failures, "timeout");
                next++;
            }
        }
    }
    for (int i = 0; i < nstreams; i++)
        if (streams[i].t_open > last) last = streams[i].t_open;
    return last - start;
}

static int complete(void) {
    for (int i = 0; i < nstreams; i++) {
        stream_t *s = &streams[i];
        if (s->state == S_OPEN && s->unique < user_seq[s->user]) return 0;
    }
    return 1;
}

static int in_flight(void) {
    int total = 0;
    for (int k = 0; k < cfg.npubs; k++) total += pubs[k].rcount;
    return total;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void publish(int64_t *t_start, int64_t *t_sent, int64_t *t_acked, int64_t *t_drained) {
    pubs = calloc(cfg.npubs, sizeof *pubs);
    for (int k = 0; k < cfg.npubs; k++) {
        pub_t *p = &pubs[k];
        p->target = k % cfg.ntargets;
        p->users = calloc(nusers / cfg.npubs + 1, sizeof *p->users);
        for (int u = k; u < nusers; u += cfg.npubs) p->users[p->nusers++] = u;
        pub_connect(p, k);
    }
    int timer = -1;
    int64_t interval = cfg.rate > 0 ? (int64_t)(cfg.npubs * 1e9 / cfg.rate) : 0;
    int64_t start = now_ns(), until = start + (int64_t)(cfg.seconds * 1e9);
    if (interval) {
        timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (timer < 0) die("timerfd_create");
        watch(timer, EPOLL_CTL_ADD, EPOLLIN, TAG_TIMER, timer);
        for (int k = 0; k < cfg.npubs; k++) pubs[k].next_at = start + k * interval / cfg.npubs;
    }
    *t_start = start;
    for (;;) {
        int64_t now = now_ns();
        if (now >= until) break;
        int64_t soonest = until;
        for (int k = 0; k < cfg.npubs; k++) {
            pub_t *p = &pubs[k];
            if (!p->nusers) continue;
            if (interval) {
                if (p->next_at <= now) {
                    if (now - p->next_at > interval) late++;
                    if (p->rcount < RING) pub_send(p, now);
                    p->next_at += interval;
                }
                if (p->next_at < soonest) soonest = p->next_at;
            } else {
                while (p->rcount < cfg.depth) pub_send(p, now);
            }
            if (p->out_len > p->out_off) pub_flush(p, k);
        }
        if (interval) {
            struct itimerspec due = {.it_value = {soonest / 1000000000LL, soonest % 1000000000LL}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &due, NULL);
            dispatch(-1);
        } else {
            dispatch(5);
        }
    }
    *t_sent = now_ns();
    int64_t ack_deadline = *t_sent + 30000000000LL;
    while (in_flight() && now_ns() < ack_deadline) dispatch(5);
    *t_acked = last_ack_at ? last_ack_at : now_ns();
    int64_t drain_deadline = now_ns() + (int64_t)(cfg.drain * 1e9);
    while (!complete() && now_ns() < drain_deadline) {
        int64_t until_check = now_ns() + 20000000LL;
        while (now_ns() < until_check) dispatch(5);
    }
    *t_drained = now_ns();
    if (timer >= 0) close(timer);
}

static void wait_for_caller(void) {
    char line[64];
    fflush(stdout);
    if (cfg.pause && !fgets(line, sizeof line, stdin)) exit(0);
}

static void report(int64_t t_start, int64_t t_sent, int64_t t_acked, int64_t t_drained,
                   double cpu, double waited, double wall) {
    int64_t received = 0, unique = 0, dups = 0, disorder = 0, other = 0, expected = 0;
    int64_t missing = 0;
    long disconnected = 0, streams_open = 0;
    reason_t closings[MAX_REASONS] = {0};
    for (int i = 0; i < nstreams; i++) {
        stream_t *s = &streams[i];
        if (s->state != S_OPEN && !s->server_closed) continue;
        streams_open++;
        received += s->received;
        unique += s->unique;
        dups += s->dups;
        disorder += s->disorder;
        other += s->other;
        expected += user_seq[s->user];
        if (user_seq[s->user] > s->unique) missing += user_seq[s->user] - s->unique;
        disconnected += s->server_closed;
        if (s->closing[0]) note(closings, s->closing);
    }
    double delivery = last_frame_at > t_start ? (last_frame_at - t_start) / 1e9 : 0;
    printf("{\"stage\":\"done\",\"streams\":%ld,\"requests\":%ld,\"published\":%ld,"
           "\"publish_failures\":%ld,\"publish_errors\":",
           streams_open, requests, acked, failed);
    print_reasons(publish_errors);
    printf(",\"late_sends\":%ld,\"publish_seconds\":%.4f,\"ack_seconds\":%.4f,"
           "\"drain_seconds\":%.4f,\"delivery_seconds\":%.4f,\"expected\":%lld,"
           "\"received\":%lld,\"unique\":%lld,\"missing\":%lld,\"duplicates\":%lld,"
           "\"out_of_order\":%lld,\"non_task_events\":%lld,\"disconnected\":%ld,\"closings\":",
           late, (t_sent - t_start) / 1e9, (t_acked - t_start) / 1e9,
           (t_drained - t_acked) / 1e9, delivery, (long long)expected, (long long)received,
           (long long)unique, (long long)missing, (long long)dups, (long long)disorder,
           (long long)other, disconnected);
    print_reasons(closings);
    printf(",\"cpu_seconds\":%.4f,\"wait_seconds\":%.4f,\"wall_seconds\":%.4f,\"samples\":%zu",
           cpu, waited, wall, nsamples);
    if (nsamples) {
        qsort(samples, nsamples, sizeof *samples, cmp64);
        double sum = 0;
        for (size_t i = 0; i < nsamples; i++) sum += samples[i];
#define AT(q) (samples[(size_t)((q) * (nsamples - 1))] / 1e6)
        printf(",\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
               "\"max\":%.3f,\"mean\":%.3f}",
               AT(0.5), AT(0.9), AT(0.99), AT(0.999), samples[nsamples - 1] / 1e6,
               sum / nsamples / 1e6);
    }
    printf("}\n");
}

static void usage(void) {
    fprintf(stderr, "usage: sseload --target PORT --users FILE --streams FILE [options]\n"
                    "(see the comment at the top of sseload.c)\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--pause") == 0) { cfg.pause = 1; continue; }
        if (strcmp(a, "--latency") == 0) { cfg.latency = 1; continue; }
        if (!v) usage();
        i++;
        if (strcmp(a, "--target") == 0 && cfg.ntargets < MAX_TARGETS)
            cfg.ports[cfg.ntargets++] = atoi(v);
        else if (strcmp(a, "--users") == 0) cfg.users_file = v;
        else if (strcmp(a, "--streams") == 0) cfg.streams_file = v;
        else if (strcmp(a, "--concurrency") == 0) cfg.concurrency = atoi(v);
        else if (strcmp(a, "--open-timeout") == 0) cfg.open_timeout = atof(v);
        else if (strcmp(a, "--batch") == 0) cfg.batch = atoi(v);
        else if (strcmp(a, "--publishers") == 0) cfg.npubs = atoi(v);
        else if (strcmp(a, "--depth") == 0) cfg.depth = atoi(v);
        else if (strcmp(a, "--rate") == 0) cfg.rate = atof(v);
        else if (strcmp(a, "--seconds") == 0) cfg.seconds = atof(v);
        else if (strcmp(a, "--drain") == 0) cfg.drain = atof(v);
        else if (strcmp(a, "--publish") == 0)
            cfg.mode = strcmp(v, "dapr") == 0    ? P_DAPR
                       : strcmp(v, "bulk") == 0  ? P_BULK
                       : strcmp(v, "nchan") == 0 ? P_NCHAN
                                                 : P_NONE;
        else usage();
    }
    if (!cfg.ntargets || !cfg.users_file || !cfg.streams_file || cfg.npubs < 1 ||
        cfg.depth < 1 || cfg.depth > RING || cfg.batch < 1 || cfg.concurrency < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
    snprintf(prefix, sizeof prefix, "%x%llx", (unsigned)getpid(), (unsigned long long)now_ns());
    load_inputs();
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");

    double cpu0 = cpu_seconds(), wait0 = wait_seconds();
    int64_t t0 = now_ns();
    int64_t open_ns = open_streams();
    double open_cpu = cpu_seconds() - cpu0, open_wait = wait_seconds() - wait0;
    printf("{\"stage\":\"opened\",\"requested\":%d,\"opened\":%ld,\"failures\":", nstreams,
           opened);
    print_reasons(open_failures);
    printf(",\"open_seconds\":%.4f,\"cpu_seconds\":%.4f,\"wait_seconds\":%.4f,"
           "\"wall_seconds\":%.4f}\n",
           open_ns / 1e9, open_cpu, open_wait, (now_ns() - t0) / 1e9);
    wait_for_caller();

    int64_t t_start = now_ns(), t_sent = t_start, t_acked = t_start, t_drained = t_start;
    double cpu1 = cpu_seconds(), wait1 = wait_seconds();
    if (cfg.mode != P_NONE) publish(&t_start, &t_sent, &t_acked, &t_drained);
    report(t_start, t_sent, t_acked, t_drained, cpu_seconds() - cpu1, wait_seconds() - wait1,
           (now_ns() - t_start) / 1e9);
    wait_for_caller();
    for (int i = 0; i < nstreams; i++) stream_close(&streams[i]);
    return 0;
}
