/* metrics_http: [metrics] listen, the GET /metrics endpoint (batchd.conf(5), [metrics]).
 * libmicrohttpd runs without a thread of its own: its epoll descriptor is watched by a
 * uv_poll and its timeouts by a uv_timer, so every request, and so every rendering of the
 * metrics, happens on the loop thread next to the job table it reads (no locks, no races).
 * Nothing but GET (or HEAD) /metrics is served: other paths get 404, other methods 405. */
#include "metrics_http.h"

#include "batchd/config.h"
#include "batchd/log.h"
#include "batchd/util.h"

#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Scrapers are few; a small cap keeps a flood of connections from costing memory. */
#define METRICS_HTTP_MAX_CONNECTIONS 32
#define METRICS_HTTP_TIMEOUT_S       10

struct metrics_http {
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t timer;
    int open_handles;
    metrics_http_render_fn render;
    void *ud;
    char last_error[256];
};

/* libmicrohttpd's error callback: the format is its own. */
static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    metrics_http *h = cls;
    vsnprintf(h->last_error, sizeof h->last_error, fmt, ap);
    size_t n = strlen(h->last_error);
    while (n && (h->last_error[n - 1] == '\n' || h->last_error[n - 1] == ' '))
        h->last_error[--n] = '\0';
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body,
                             const char *content_type)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)con_cls;
    *upload_data_size = 0; /* a body is never wanted: the reply goes out on the first call */
    metrics_http *h = cls;
    static const char *const text = "text/plain; charset=utf-8";
    if (strcmp(url, "/metrics") != 0)
        return reply(conn, MHD_HTTP_NOT_FOUND,
                     xstrdup("not found: this port serves only GET /metrics\n"), text);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                     xstrdup("method not allowed: /metrics answers GET\n"), text);
    return reply(conn, MHD_HTTP_OK, h->render(h->ud), "text/plain; version=0.0.4; charset=utf-8");
}

static void on_timer(uv_timer_t *t);

/* Lets MHD do what is due, then arms the timer for its next timeout. */
static void run(metrics_http *h)
{
    MHD_run(h->mhd);
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(h->mhd, &ms) == MHD_YES)
        uv_timer_start(&h->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&h->timer);
}

static void on_timer(uv_timer_t *t)
{
    run(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run(p->data);
}

static struct MHD_Daemon *start_mhd(metrics_http *h, const char *listen)
{
    struct sockaddr_storage ss;
    unsigned len = 0;
    const char *bad = config_parse_listen(listen, &ss, &len);
    if (bad) {
        snprintf(h->last_error, sizeof h->last_error, "%s", bad);
        return NULL;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_MAX_CONNECTIONS,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_HTTP_TIMEOUT_S,
                            MHD_OPTION_END);
}

int metrics_http_start(uv_loop_t *loop, const char *listen, metrics_http_render_fn render, void *ud,
                       metrics_http **out, char **err)
{
    metrics_http *h = xcalloc(1, sizeof *h);
    h->render = render;
    h->ud = ud;
    h->mhd = start_mhd(h, listen);
    const union MHD_DaemonInfo *info =
        h->mhd ? MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        *err = xasprintf("%s", h->last_error[0] ? h->last_error : "libmicrohttpd failed");
        if (h->mhd)
            MHD_stop_daemon(h->mhd);
        free(h);
        return -1;
    }
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_poll_init(loop, &h->poll, info->epoll_fd);
    h->poll.data = h;
    h->open_handles = 2;
    uv_poll_start(&h->poll, UV_READABLE, on_poll);
    run(h);
    *out = h;
    return 0;
}

static void on_closed(uv_handle_t *handle)
{
    metrics_http *h = handle->data;
    if (--h->open_handles == 0)
        free(h);
}

void metrics_http_stop(metrics_http *h)
{
    if (!h)
        return;
    /* The poll leaves the loop's epoll now, before MHD closes the descriptor it watches. */
    uv_poll_stop(&h->poll);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    uv_close((uv_handle_t *)&h->poll, on_closed);
    uv_close((uv_handle_t *)&h->timer, on_closed);
}
