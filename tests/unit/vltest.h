/* vltest: raw varlink client sockets for the unit tests of varlink and control, driven from
 * the thread that runs the server's libuv loop. Every wait is for a condition with a deadline:
 * pump() polls the loop's backend fd (and a client fd) and then runs the loop once. */
#ifndef BATCHD_TEST_VLTEST_H
#define BATCHD_TEST_VLTEST_H

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "batchd/util.h"

#define DEADLINE_MS 5000

static uv_loop_t *vt_loop;  /* the loop serving the socket */
static const char *vt_path; /* the socket */

/* ---------------------------------------------------------------- raw clients */

typedef struct client {
    int fd;
    strbuf in;
    bool eof;
} client;

/* One step of the loop: waits (bounded) for the loop's own events or for fd, then runs it. */
static inline void pump(int fd, int max_wait_ms)
{
    struct pollfd p[2] = {{.fd = uv_backend_fd(vt_loop), .events = POLLIN},
                          {.fd = fd, .events = POLLIN}};
    int t = uv_backend_timeout(vt_loop);
    if (t < 0 || t > max_wait_ms)
        t = max_wait_ms;
    poll(p, fd >= 0 ? 2 : 1, t);
    uv_run(vt_loop, UV_RUN_NOWAIT);
}

static inline client *cl_connect(void)
{
    client *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, vt_path);
    /* Non-blocking connect on a Unix socket completes at once (or EAGAIN on a full backlog). */
    int r;
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while ((r = connect(c->fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 && errno == EAGAIN &&
           time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(r, 0);
    return c;
}

static inline void cl_free(client *c)
{
    close(c->fd);
    strbuf_free(&c->in);
    free(c);
}

/* Writes all of buf while the loop runs; returns bytes written before the peer went away. */
static inline size_t cl_write(client *c, const void *buf, size_t len)
{
    size_t done = 0;
    int64_t end = time_mono_ms() + DEADLINE_MS * 4;
    while (done < len && time_mono_ms() < end) {
        ssize_t n = send(c->fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            break;
        pump(-1, 10);
    }
    return done;
}

static inline void cl_send(client *c, const char *msg)
{
    assert_int_equal(cl_write(c, msg, strlen(msg) + 1), strlen(msg) + 1);
}

static inline void cl_fill(client *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            strbuf_append(&c->in, buf, (size_t)n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            c->eof = true;
        return;
    }
}

/* The next message, or NULL on EOF / deadline. */
static inline cJSON *cl_recv_within(client *c, int ms)
{
    int64_t end = time_mono_ms() + ms;
    cl_fill(c);
    for (;;) {
        char *nul = c->in.len ? memchr(c->in.data, '\0', c->in.len) : NULL;
        if (nul) {
            size_t len = (size_t)(nul - c->in.data);
            cJSON *m = cJSON_ParseWithLength(c->in.data, len);
            assert_non_null(m);
            memmove(c->in.data, nul + 1, c->in.len - len - 1);
            c->in.len -= len + 1;
            return m;
        }
        if (c->eof || time_mono_ms() >= end)
            return NULL;
        pump(c->fd, 20);
        cl_fill(c);
    }
}

static inline cJSON *cl_recv(client *c)
{
    cJSON *m = cl_recv_within(c, DEADLINE_MS);
    assert_non_null(m);
    return m;
}

static inline void cl_wait_eof(client *c)
{
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (!c->eof && time_mono_ms() < end) {
        pump(c->fd, 20);
        cl_fill(c);
    }
    assert_true(c->eof);
}

static inline void assert_error(cJSON *m, const char *name)
{
    const char *e = json_str(m, "error");
    if (!e || strcmp(e, name) != 0) {
        char *t = json_print(m);
        fail_msg("expected error %s, got %s", name, t);
    }
}

#endif
