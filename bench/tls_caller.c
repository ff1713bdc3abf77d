/* A mutual-TLS SIP caller in C: the calls of bench/tls_caller.py (INVITE, 100/180/200,
 * ACK and BYE along the Record-Route set, the BYE's 200) at a fraction of its CPU, so that
 * on a 2-core machine the load generator leaves the server most of both cores: what a
 * second worker buys can only show when the caller costs little beside it.
 *
 * Either a new connection (and mutual-TLS handshake) per call, offering the last session
 * with --resume, or with --persistent every call over one connection. A 503 to the INVITE
 * (the server shedding load) is ACKed and counted as shed, with its own response times.
 * One thread: calls start on a fixed schedule, every socket is non-blocking, one epoll.
 *
 * GnuTLS, not Debian's OpenSSL 3.0: a full mutual handshake costs this client 0.43 ms
 * there and 1.0 ms in OpenSSL 3.0 (its provider look-ups per handshake). The server's
 * certificate is not verified: the server's verification of ours is what is measured.
 *
 * Built by bench/call_rate.py (--tls-caller c) with: cc -O2 tls_caller.c -lgnutls
 * (Debian: libgnutls28-dev)
 *
 *   tls_caller --port 5061 --cert gw.pem --ca ca.crt --rate 500 --calls 4000
 *              [--resume | --persistent] [--rtt-file setup.txt] [--shed-file shed.txt]
 *
 * --shed-file: a line per shed call, ms since the first call was placed and ms to its 503.
 *
 * Prints one JSON line: started, answered, shed, failed, elapsed seconds, its own CPU ms
 * per call and the commonest failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define IN_SIZE 65536
#define AGAIN (-1) /* tls_wants: not an epoll event */

static const char SDP[] =
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

enum conn_state { CONNECTING, HANDSHAKE, OPEN, GONE };
enum call_state { WAITING, INVITED, BYE_SENT, ENDED };

struct call;

struct conn {
    int fd;
    gnutls_session_t tls;
    int has_tls, send_again; /* send_again: the last send said EAGAIN, repeat it */
    enum conn_state state;
    struct call *call; /* per-call mode: the call it carries */
    char local[64];
    char in[IN_SIZE];
    size_t in_len;
    char *out;
    size_t out_len, out_cap;
    unsigned events;
};

struct call {
    int number;
    enum call_state state;
    double deadline, sent_at, setup_ms; /* setup_ms: INVITE sent -> 200 received */
    struct conn *conn;
};

static struct {
    int port, calls, resume, persistent;
    double rate, timeout;
    const char *cert, *ca, *number, *rtt_file, *shed_file;
} args = {.timeout = 10.0, .number = "5000"};

static gnutls_certificate_credentials_t credentials;
static gnutls_priority_t priorities;
static gnutls_datum_t last_session; /* offered with --resume, as stunnel offers its last */
static int epfd, answered, shed, failed, live;
static double *setup_ms, *shed_ms, *shed_at; /* shed_at: ms from the start */
static double started;
static char first_failure[160];
static struct call *calls;
static struct conn *shared; /* --persistent */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void out_append(struct conn *c, const char *data, size_t len) {
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

/* In every Call-ID, tag and branch after the call's number (which atoi() reads back): a
 * step's calls must not meet the previous step's, still remembered by a proxy (the same
 * Call-IDs from step to step lost 574 of 8,000 calls through Kamailio). */
static int run_id;

static void request(struct conn *c, const char *method, const char *uri, int number, int cseq,
                    const char *extra, const char *branch) {
    char buf[4096];
    int invite = strcmp(method, "INVITE") == 0;
    int n = snprintf(buf, sizeof buf,
                     "%s %s SIP/2.0\r\n"
                     "Via: SIP/2.0/TLS %s;branch=z9hG4bK-%d-%d-%s;rport\r\n"
                     "From: <sip:caller@gw1.example.test>;tag=t%d-%d\r\n"
                     "Call-ID: %d-%d-tlscaller@127.0.0.1\r\nCSeq: %d %s\r\n"
                     "Contact: <sip:caller@%s;transport=tls>\r\nMax-Forwards: 70\r\n"
                     "%s%sContent-Length: %zu\r\n\r\n%s",
                     method, uri, c->local, number, run_id, branch, number, run_id, number,
                     run_id, cseq, method,
                     c->local, extra, invite ? "Content-Type: application/sdp\r\n" : "",
                     invite ? strlen(SDP) : 0, invite ? SDP : "");
    out_append(c, buf, (size_t)n);
}

static void fail(struct call *call, const char *why) {
    if (call->state == ENDED)
        return;
    call->state = ENDED;
    failed++;
    live--;
    if (!first_failure[0])
        snprintf(first_failure, sizeof first_failure, "%s", why);
    /* One line per failed call, its Call-ID first, to find it in the server's log. */
    fprintf(stderr, "%d-%d-tlscaller@127.0.0.1 failed at %.3f s: %s\n", call->number, run_id,
            now() - started, why);
}

static void finish(struct call *call) {
    call->state = ENDED;
    live--;
}

/* Per call, the connection goes with its call; the shared one is only marked gone. */
static void conn_close(struct conn *c) {
    if (c->state == GONE)
        return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->has_tls)
        gnutls_deinit(c->tls);
    c->has_tls = 0;
    c->state = GONE;
    if (c->call) {
        c->call->conn = NULL;
        free(c->out);
        free(c);
    }
}

/* The value of the first header called name (or its compact form), or NULL. */
static const char *header(const char *head, const char *name, const char *compact, size_t *len) {
    size_t name_len = strlen(name), compact_len = compact ? strlen(compact) : 0;
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *p = line + 2, *value = NULL;
        if (!strncasecmp(p, name, name_len) && (p[name_len] == ':' || p[name_len] == ' '))
            value = p + name_len;
        else if (compact && !strncasecmp(p, compact, compact_len) &&
                 (p[compact_len] == ':' || p[compact_len] == ' '))
            value = p + compact_len;
        if (!value)
            continue;
        while (*value == ' ' || *value == ':')
            value++;
        const char *end = strstr(value, "\r\n");
        *len = end ? (size_t)(end - value) : strlen(value);
        return value;
    }
    return NULL;
}

/* Route headers for the UAC's route set: the Record-Route values, last first. */
static void route_set(const char *head, char *routes, size_t size) {
    const char *values[16];
    size_t lens[16];
    int count = 0;
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *p = line + 2;
        if (strncasecmp(p, "Record-Route:", 13))
            continue;
        const char *end = strstr(p, "\r\n");
        if (!end)
            end = p + strlen(p);
        for (const char *v = p + 13; v < end && count < 16;) {
            while (*v == ' ' || *v == ',')
                v++;
            const char *comma = memchr(v, ',', (size_t)(end - v));
            const char *stop = comma ? comma : end;
            values[count] = v;
            lens[count++] = (size_t)(stop - v);
            v = stop;
        }
    }
    size_t used = 0;
    routes[0] = 0;
    for (int i = count - 1; i >= 0; i--)
        used += (size_t)snprintf(routes + used, size - used, "Route: %.*s\r\n", (int)lens[i],
                                 values[i]);
}

static void response(struct conn *c, char *head) {
    int status = atoi(head + 8);
    size_t len;
    const char *cseq = header(head, "CSeq", NULL, &len);
    const char *call_id = header(head, "Call-ID", "i", &len);
    if (!cseq || !call_id || status < 200)
        return;
    int number = atoi(call_id);
    if (number < 0 || number >= args.calls)
        return;
    struct call *call = &calls[number];
    if (call->conn != c || call->state == ENDED)
        return;
    int is_invite = strstr(cseq, "INVITE") != NULL && strstr(cseq, "INVITE") < cseq + len;
    size_t to_len;
    const char *to = header(head, "To", "t", &to_len);
    if (call->state == INVITED && is_invite) {
        double ms = (now() - call->sent_at) * 1000;
        char dialog[2048];
        if (status == 503) { /* shed: ACK the final response, as a UAC's transaction does */
            char uri[128];
            snprintf(uri, sizeof uri, "sip:%s@sip.example.test", args.number);
            snprintf(dialog, sizeof dialog, "To: %.*s\r\n", (int)to_len, to);
            request(c, "ACK", uri, number, 1, dialog, "invite");
            shed_at[shed] = (call->sent_at - started) * 1000;
            shed_ms[shed++] = ms;
            finish(call);
            return;
        }
        if (status != 200) {
            char why[64];
            snprintf(why, sizeof why, "INVITE answered %d", status);
            fail(call, why);
            return;
        }
        call->setup_ms = ms; /* kept until the BYE's 200 makes the call answered */
        size_t contact_len;
        const char *contact = header(head, "Contact", "m", &contact_len);
        char target[256];
        if (!contact || !to) {
            fail(call, "200 without Contact or To");
            return;
        }
        /* The remote target is the whole URI, its parameters included (transport=TCP
         * says how to reach it: without it a proxy that drops its Record-Route entries
         * sends the ACK and BYE over UDP); only what follows <...> belongs to the header. */
        size_t target_len;
        if (*contact == '<') {
            const char *close = memchr(contact, '>', contact_len);
            contact++;
            target_len = close ? (size_t)(close - contact) : contact_len - 1;
        } else {
            const char *semi = memchr(contact, ';', contact_len);
            target_len = semi ? (size_t)(semi - contact) : contact_len;
        }
        snprintf(target, sizeof target, "%.*s", (int)target_len, contact);
        char routes[1536];
        route_set(head, routes, sizeof routes);
        snprintf(dialog, sizeof dialog, "%sTo: %.*s\r\n", routes, (int)to_len, to);
        request(c, "ACK", target, number, 1, dialog, "ack");
        request(c, "BYE", target, number, 2, dialog, "bye");
        call->state = BYE_SENT;
    } else if (call->state == BYE_SENT && !is_invite) {
        if (status != 200) {
            fail(call, "BYE not answered 200");
            return;
        }
        setup_ms[answered++] = call->setup_ms;
        finish(call);
        if (!args.persistent && args.resume) {
            gnutls_free(last_session.data);
            last_session.data = NULL;
            last_session.size = 0;
            gnutls_session_get_data2(c->tls, &last_session);
        }
    }
}

/* Frame the responses in c->in by Content-Length and hand each to response(). */
static void feed(struct conn *c) {
    size_t start = 0;
    for (;;) {
        char *base = c->in + start;
        size_t avail = c->in_len - start;
        char *end = memmem(base, avail, "\r\n\r\n", 4);
        if (!end)
            break;
        size_t head_len = (size_t)(end - base), body = 0, len;
        *end = 0;
        const char *cl = header(base, "Content-Length", "l", &len);
        if (cl)
            body = strtoul(cl, NULL, 10);
        *end = '\r';
        if (avail < head_len + 4 + body)
            break;
        *end = 0;
        response(c, base);
        start += head_len + 4 + body;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
}

static void want(struct conn *c, unsigned events) {
    if (c->state == GONE || events == c->events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

static void conn_fail(struct conn *c, const char *why) {
    if (c->call)
        fail(c->call, why);
    else
        for (int i = 0; i < args.calls; i++)
            if (calls[i].conn == c)
                fail(&calls[i], why);
    conn_close(c);
}

/* What to wait for after a GnuTLS call returned ret < 0: EPOLLIN or EPOLLOUT (blocked is
 * the one a send or receive blocks on, -1 for the handshake: GnuTLS says), AGAIN to call
 * again at once (a non-fatal alert), or 0 when the connection failed (and is closed). */
static int tls_wants(struct conn *c, int ret, const char *what, int blocked) {
    if (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED) {
        if (blocked < 0)
            return gnutls_record_get_direction(c->tls) ? EPOLLOUT : EPOLLIN;
        return blocked;
    }
    if (!gnutls_error_is_fatal(ret))
        return AGAIN;
    char why[160];
    snprintf(why, sizeof why, "%s: %s", what, gnutls_strerror(ret));
    conn_fail(c, why);
    return 0;
}

static void send_invite(struct call *call) {
    struct conn *c = call->conn;
    char to[128];
    snprintf(to, sizeof to, "To: <sip:%s@sip.example.test>\r\n", args.number);
    char uri[128];
    snprintf(uri, sizeof uri, "sip:%s@sip.example.test", args.number);
    call->sent_at = now();
    request(c, "INVITE", uri, call->number, 1, to, "invite");
    call->state = INVITED;
}

/* Advance a connection as far as its socket allows. */
static void step(struct conn *c) {
    if (c->state == CONNECTING) {
        int error = 0;
        socklen_t len = sizeof error;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
        if (error) {
            conn_fail(c, strerror(error));
            return;
        }
        gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
        c->has_tls = 1;
        gnutls_priority_set(c->tls, priorities);
        gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, credentials);
        gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, "sip.example.test", 16);
        gnutls_transport_set_int(c->tls, c->fd);
        if (args.resume && last_session.size)
            gnutls_session_set_data(c->tls, last_session.data, last_session.size);
        c->state = HANDSHAKE;
    }
    while (c->state == HANDSHAKE) {
        int r = gnutls_handshake(c->tls);
        if (r < 0) {
            int events = tls_wants(c, r, "handshake", -1);
            if (events == AGAIN)
                continue;
            if (events)
                want(c, (unsigned)events);
            return;
        }
        struct sockaddr_in local;
        socklen_t len = sizeof local;
        getsockname(c->fd, (struct sockaddr *)&local, &len);
        snprintf(c->local, sizeof c->local, "127.0.0.1:%d", ntohs(local.sin_port));
        c->state = OPEN;
        if (c->call)
            send_invite(c->call);
        else
            for (int i = 0; i < args.calls; i++)
                if (calls[i].conn == c && calls[i].state == WAITING)
                    send_invite(&calls[i]);
    }
    for (;;) {
        while (c->out_len) {
            /* after EAGAIN GnuTLS holds the record: repeat with no data, bytes come first */
            ssize_t r = c->send_again ? gnutls_record_send(c->tls, NULL, 0)
                                      : gnutls_record_send(c->tls, c->out, c->out_len);
            c->send_again = r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED;
            if (r < 0) {
                int events = tls_wants(c, (int)r, "write", EPOLLOUT);
                if (events == AGAIN)
                    continue;
                if (events)
                    want(c, (unsigned)events);
                return;
            }
            memmove(c->out, c->out + r, c->out_len - (size_t)r);
            c->out_len -= (size_t)r;
        }
        if (c->call && c->call->state == ENDED) {
            conn_close(c);
            return;
        }
        ssize_t r = gnutls_record_recv(c->tls, c->in + c->in_len, IN_SIZE - 1 - c->in_len);
        if (r == 0) {
            conn_fail(c, "connection closed by the server");
            return;
        }
        if (r < 0) {
            int events = tls_wants(c, (int)r, "read", EPOLLIN);
            if (events == AGAIN)
                continue;
            if (events)
                want(c, (unsigned)events);
            return;
        }
        c->in_len += (size_t)r;
        feed(c);
    }
}

static struct conn *conn_open(void) {
    struct conn *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)args.port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    connect(c->fd, (struct sockaddr *)&to, sizeof to);
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    return c;
}

/* One line per call: its response time in ms, after (with at) when it was placed. */
static void write_times(const char *path, const double *ms, const double *at, int count) {
    if (!path)
        return;
    FILE *f = fopen(path, "w");
    for (int i = 0; i < count; i++)
        if (at)
            fprintf(f, "%.1f %.3f\n", at[i], ms[i]);
        else
            fprintf(f, "%.3f\n", ms[i]);
    fclose(f);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--resume"))
            args.resume = 1;
        else if (!strcmp(a, "--persistent"))
            args.persistent = 1;
        else if (v && !strcmp(a, "--port"))
            args.port = atoi(argv[++i]);
        else if (v && !strcmp(a, "--cert"))
            args.cert = argv[++i];
        else if (v && !strcmp(a, "--ca")) /* tls_caller.py's command line; not verified */
            args.ca = argv[++i];
        else if (v && !strcmp(a, "--rate"))
            args.rate = atof(argv[++i]);
        else if (v && !strcmp(a, "--calls"))
            args.calls = atoi(argv[++i]);
        else if (v && !strcmp(a, "--number"))
            args.number = argv[++i];
        else if (v && !strcmp(a, "--timeout"))
            args.timeout = atof(argv[++i]);
        else if (v && !strcmp(a, "--rtt-file"))
            args.rtt_file = argv[++i];
        else if (v && !strcmp(a, "--shed-file"))
            args.shed_file = argv[++i];
        else {
            fprintf(stderr, "unknown or incomplete argument: %s\n", a);
            exit(2);
        }
    }
    if (!args.port || !args.cert || args.rate <= 0 || args.calls <= 0) {
        fprintf(stderr, "needs --port, --cert, --rate and --calls\n");
        exit(2);
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    run_id = (int)getpid();
    gnutls_certificate_allocate_credentials(&credentials);
    int r = gnutls_certificate_set_x509_key_file(credentials, args.cert, args.cert,
                                                 GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", args.cert, gnutls_strerror(r));
        return 2;
    }
    /* X25519 alone, as the peers in the field (and stunnel, sipp) offer. */
    gnutls_priority_init(&priorities, "NORMAL:-GROUP-ALL:+GROUP-X25519", NULL);
    calls = calloc((size_t)args.calls, sizeof *calls);
    setup_ms = calloc((size_t)args.calls, sizeof *setup_ms);
    shed_ms = calloc((size_t)args.calls, sizeof *shed_ms);
    shed_at = calloc((size_t)args.calls, sizeof *shed_at);
    epfd = epoll_create1(0);
    struct epoll_event events[256];
    started = now();
    double next_sweep = started;
    int placed = 0;
    if (args.persistent)
        shared = conn_open();
    while (placed < args.calls || live > 0) {
        double t = now();
        while (placed < args.calls && started + placed / args.rate <= t) {
            struct call *call = &calls[placed];
            call->number = placed++;
            call->deadline = t + args.timeout;
            live++;
            if (args.persistent) {
                call->conn = shared;
                if (shared->state == OPEN) {
                    send_invite(call);
                    step(shared);
                }
            } else {
                call->conn = conn_open();
                call->conn->call = call;
            }
        }
        double next = placed < args.calls ? started + placed / args.rate : t + 0.05;
        /* rounded up: a call starts at most a millisecond late, but the loop never spins */
        int wait_ms = (int)((next - t) * 1000) + 1;
        int n = epoll_wait(epfd, events, 256, next <= t ? 0 : wait_ms > 50 ? 50 : wait_ms);
        for (int i = 0; i < n; i++)
            step(events[i].data.ptr);
        t = now();
        if (t >= next_sweep) {
            next_sweep = t + 0.05;
            for (int i = 0; i < placed; i++) {
                struct call *call = &calls[i];
                if (call->state == ENDED || call->deadline >= t)
                    continue;
                fail(call, call->state == BYE_SENT ? "timed out waiting for the BYE's 200"
                           : call->state == INVITED ? "timed out waiting for the INVITE's answer"
                           : call->conn && call->conn->state == CONNECTING ? "timed out connecting"
                                                                            : "timed out in the handshake");
                if (!args.persistent && call->conn)
                    conn_close(call->conn);
            }
        }
        if (args.persistent && shared->state == GONE && placed < args.calls) {
            failed += args.calls - placed; /* never placed: the connection is gone */
            placed = args.calls;
        }
    }
    double elapsed = now() - started;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    write_times(args.rtt_file, setup_ms, NULL, answered);
    write_times(args.shed_file, shed_ms, shed_at, shed);
    printf("{\"started\": %d, \"answered\": %d, \"shed\": %d, \"failed\": %d, "
           "\"elapsed\": %.3f, \"cpu_ms_per_call\": %.3f, \"failures\": {",
           args.calls, answered, shed, failed, elapsed, cpu * 1000 / args.calls);
    if (first_failure[0])
        printf("\"%s\": %d", first_failure, failed);
    printf("}}\n");
    return 0;
}
