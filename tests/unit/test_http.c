/* test-deps: mhd uv curl */
/* Unit tests of http: a real libuv loop and the real client against an in-process
 * libmicrohttpd server on 127.0.0.1 (thread per connection), which records what arrived. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <uv.h>

#include "batchd/http.h"
#include "batchd/util.h"

#define MAX_ARRIVALS 32
#define BIG_BODY     (9u * 1024u * 1024u)
#define DL_BODY      (3u * 1024u * 1024u + 5u)
/* The large download: 64 MiB, or 8 MiB when the tests run under valgrind
 * (BATCHD_TEST_WRAPPED), which would take minutes over it and whose memory is its own. */
#define HUGE_BODY huge_body()

/* ---- the server ---- */

typedef struct server {
    struct MHD_Daemon *daemon;
    uint16_t port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool release; /* lets /slow handlers finish */
    int concurrent;
    int max_concurrent;
    int requests;
    int redirect_followups; /* requests to /after-redirect */
    int connections;        /* TCP connections accepted */
    int64_t arrivals[MAX_ARRIVALS];
    int n_arrivals;
    char method[16];
    char auth[256];
    bool has_auth;
    bool has_expect;
    char user_agent[128];
    char x_test[128];
    char content_type[128];
    uint64_t upload_len;
    uint64_t upload_hash;
} server;

typedef struct conn_state {
    bool counted;
    uint64_t len;
    uint64_t hash;
} conn_state;

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME  1099511628211ULL

static bool test_wrapped(void)
{
    const char *w = getenv("BATCHD_TEST_WRAPPED");
    return w && *w;
}

static uint64_t huge_body(void)
{
    return (test_wrapped() ? 8ull : 64ull) * 1024u * 1024u;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static void copy_header(struct MHD_Connection *conn, const char *name, char *dst, size_t n,
                        bool *present)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    if (present)
        *present = v != NULL;
    strlcpy_bd(dst, v ? v : "", n);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *body,
                               const char *ctype, const char *hname, const char *hvalue)
{
    char *copy = xstrdup(body);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(copy), copy, MHD_RESPMEM_MUST_FREE);
    if (ctype)
        MHD_add_response_header(r, "Content-Type", ctype);
    if (hname)
        MHD_add_response_header(r, hname, hvalue);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Waits until released or until ms have passed (a server-side delay, not test sync). */
static void server_wait(server *s, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    while (!s->release) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&s->mu);
}

static ssize_t partial_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    if (pos >= 1000)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = max < 1000 - pos ? max : (size_t)(1000 - pos);
    memset(buf, 'p', n);
    return (ssize_t)n;
}

static ssize_t big_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    if (pos >= BIG_BODY)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = max < BIG_BODY - pos ? max : (size_t)(BIG_BODY - pos);
    memset(buf, 'b', n);
    return (ssize_t)n;
}

/* The bytes of a download body: a pattern of the position, so any byte out of place shows. */
static unsigned char dl_byte(uint64_t pos)
{
    return (unsigned char)(pos ^ (pos >> 8) ^ (pos >> 16) ^ 0x5a);
}

static ssize_t pattern_fill(uint64_t size, uint64_t pos, char *buf, size_t max)
{
    if (pos >= size)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = max < size - pos ? max : (size_t)(size - pos);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)dl_byte(pos + i);
    return (ssize_t)n;
}

static ssize_t dl_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    return pattern_fill(DL_BODY, pos, buf, max);
}

static ssize_t huge_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    return pattern_fill(HUGE_BODY, pos, buf, max);
}

static enum MHD_Result respond_reader(struct MHD_Connection *conn, uint64_t size,
                                      MHD_ContentReaderCallback reader)
{
    struct MHD_Response *r = MHD_create_response_from_callback(size, 64 * 1024, reader, NULL, NULL);
    enum MHD_Result ret = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static void record_request(server *s, struct MHD_Connection *conn, const char *url,
                           const char *method, conn_state *cs)
{
    pthread_mutex_lock(&s->mu);
    s->requests++;
    strlcpy_bd(s->method, method, sizeof s->method);
    copy_header(conn, "Authorization", s->auth, sizeof s->auth, &s->has_auth);
    char expect[64];
    copy_header(conn, "Expect", expect, sizeof expect, &s->has_expect);
    copy_header(conn, "User-Agent", s->user_agent, sizeof s->user_agent, NULL);
    copy_header(conn, "X-Test", s->x_test, sizeof s->x_test, NULL);
    copy_header(conn, "Content-Type", s->content_type, sizeof s->content_type, NULL);
    if (strcmp(url, "/rate") == 0 && s->n_arrivals < MAX_ARRIVALS)
        s->arrivals[s->n_arrivals++] = time_mono_ms();
    if (strcmp(url, "/after-redirect") == 0)
        s->redirect_followups++;
    if (strcmp(url, "/hold") == 0 || strcmp(url, "/slow") == 0) {
        cs->counted = true;
        s->concurrent++;
        if (s->concurrent > s->max_concurrent)
            s->max_concurrent = s->concurrent;
    }
    pthread_mutex_unlock(&s->mu);
}

static void uncount(server *s, conn_state *cs)
{
    pthread_mutex_lock(&s->mu);
    if (cs->counted)
        s->concurrent--;
    cs->counted = false;
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result final_response(server *s, struct MHD_Connection *conn, const char *url,
                                      const char *method, conn_state *cs)
{
    char buf[128];
    if (strcmp(url, "/echo") == 0 || strcmp(url, "/upload") == 0 || strcmp(url, "/json") == 0) {
        pthread_mutex_lock(&s->mu);
        s->upload_len = cs->len;
        s->upload_hash = cs->hash;
        pthread_mutex_unlock(&s->mu);
        snprintf(buf, sizeof buf, "%s %llu %016llx", method, (unsigned long long)cs->len,
                 (unsigned long long)cs->hash);
        return respond(conn, 200, buf, "text/plain", NULL, NULL);
    }
    if (strcmp(url, "/hold") == 0 || strcmp(url, "/slow") == 0) {
        server_wait(s, strcmp(url, "/hold") == 0 ? 150 : 10000);
        uncount(s, cs);
        return respond(conn, 200, "held", "text/plain", NULL, NULL);
    }
    if (strcmp(url, "/429") == 0)
        return respond(conn, 429, "{\"error\":\"slow down\"}", "application/json", "Retry-After",
                       "7");
    if (strcmp(url, "/redirect") == 0)
        return respond(conn, 302, "", NULL, "Location", "/after-redirect");
    if (strcmp(url, "/partial") == 0)
        return respond_reader(conn, 100000, partial_reader);
    if (strcmp(url, "/big") == 0)
        return respond_reader(conn, BIG_BODY, big_reader);
    if (strcmp(url, "/dl") == 0)
        return respond_reader(conn, DL_BODY, dl_reader);
    if (strcmp(url, "/dl-chunked") == 0) /* the same body, no Content-Length */
        return respond_reader(conn, MHD_SIZE_UNKNOWN, dl_reader);
    if (strcmp(url, "/huge") == 0)
        return respond_reader(conn, HUGE_BODY, huge_reader);
    if (strcmp(url, "/denied") == 0)
        return respond(conn, 403, "<Error><Code>AccessDenied</Code></Error>", "application/xml",
                       NULL, NULL);
    if (strcmp(url, "/drop") == 0)
        return MHD_NO;
    return respond(conn, 200, "ok", "text/plain", NULL, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    server *s = cls;
    (void)version;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        cs->hash = FNV_OFFSET;
        *con_cls = cs;
        record_request(s, conn, url, method, cs);
        return MHD_YES;
    }
    if (*upload_size > 0) {
        cs->hash = fnv1a(cs->hash, upload, *upload_size);
        cs->len += *upload_size;
        *upload_size = 0;
        /* the server hangs up in the middle of an upload */
        if (strcmp(url, "/dropupload") == 0 && cs->len > 1024 * 1024)
            return MHD_NO;
        return MHD_YES;
    }
    return final_response(s, conn, url, method, cs);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *s = cls;
    (void)conn;
    (void)toe;
    conn_state *cs = *con_cls;
    if (cs) {
        uncount(s, cs);
        free(cs);
    }
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    server *s = cls;
    (void)conn;
    (void)socket_context;
    if (toe != MHD_CONNECTION_NOTIFY_STARTED)
        return;
    pthread_mutex_lock(&s->mu);
    s->connections++;
    pthread_mutex_unlock(&s->mu);
}

static server *server_start(void)
{
    server *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->daemon =
        MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL,
                         NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &sa,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
                         on_connection, s, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
    assert_non_null(s->daemon);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(info);
    s->port = info->port;
    assert_true(s->port > 0);
    return s;
}

static void server_stop(server *s)
{
    pthread_mutex_lock(&s->mu);
    s->release = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    MHD_stop_daemon(s->daemon);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int server_get(server *s, const int *field)
{
    pthread_mutex_lock(&s->mu);
    int v = *field;
    pthread_mutex_unlock(&s->mu);
    return v;
}

static uint64_t server_get64(server *s, const uint64_t *field)
{
    pthread_mutex_lock(&s->mu);
    uint64_t v = *field;
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* ---- the client side ---- */

typedef struct result {
    long status;
    char *body;
    size_t body_len;
    char *retry_after;
    char *content_type;
    uint64_t bytes_sent;
    int64_t started_ms;
    uint64_t progress_sent;
    uint64_t progress_total;
    int calls;
    enum http_error error;
    int progress_calls;
    char error_text[512];
} result;

typedef struct fixture {
    uv_loop_t loop;
    server *srv;
    http_client *client;
    bool closed;
    char url[128];
} fixture;

static void on_done(void *ud, const http_response *r)
{
    result *res = ud;
    res->calls++;
    res->status = r->status;
    res->error = r->error;
    strlcpy_bd(res->error_text, r->error_text, sizeof res->error_text);
    assert_non_null(r->body);
    assert_int_equal(r->body[r->body_len], '\0');
    free(res->body);
    res->body = xstrndup(r->body, r->body_len);
    res->body_len = r->body_len;
    free(res->retry_after);
    res->retry_after = r->retry_after ? xstrdup(r->retry_after) : NULL;
    free(res->content_type);
    res->content_type = r->content_type ? xstrdup(r->content_type) : NULL;
    res->bytes_sent = r->bytes_sent;
    res->started_ms = r->started_ms;
}

static void on_progress(void *ud, uint64_t sent, uint64_t total)
{
    result *res = ud;
    res->progress_calls++;
    res->progress_sent = sent;
    res->progress_total = total;
}

static void result_free(result *res)
{
    free(res->body);
    free(res->retry_after);
    free(res->content_type);
    memset(res, 0, sizeof *res);
}

static void on_closed(void *ud)
{
    fixture *f = ud;
    f->closed = true;
}

typedef struct waiter {
    bool (*cond)(void *);
    void *arg;
    bool expired;
} waiter;

/* Runs before the loop blocks: stopping here keeps uv_run from sleeping once cond holds. */
static void on_prepare(uv_prepare_t *p)
{
    waiter *w = p->data;
    if (w->cond(w->arg))
        uv_stop(p->loop);
}

static void on_deadline(uv_timer_t *t)
{
    waiter *w = t->data;
    w->expired = true;
    uv_stop(t->loop);
}

/* Runs the loop until cond(arg) holds; fails the test after deadline_ms. */
static void run_until(fixture *f, bool (*cond)(void *), void *arg, uint64_t deadline_ms)
{
    waiter w = {.cond = cond, .arg = arg};
    uv_timer_t deadline;
    uv_prepare_t check;
    uv_timer_init(&f->loop, &deadline);
    uv_prepare_init(&f->loop, &check);
    deadline.data = &w;
    check.data = &w;
    uv_timer_start(&deadline, on_deadline, deadline_ms, 0);
    uv_prepare_start(&check, on_prepare);
    while (!cond(arg) && !w.expired)
        uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_close((uv_handle_t *)&check, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_false(w.expired);
}

static bool called(void *arg)
{
    return ((result *)arg)->calls > 0;
}

typedef struct all_called {
    result *res;
    size_t n;
} all_called;

static bool all_done(void *arg)
{
    all_called *a = arg;
    for (size_t i = 0; i < a->n; i++)
        if (a->res[i].calls == 0)
            return false;
    return true;
}

static bool fixture_closed(void *arg)
{
    return ((fixture *)arg)->closed;
}

static http_client *make_client(fixture *f, int max_conn, double rate, double burst)
{
    http_client_options o = {.timeout_ms = 10000,
                             .max_connections = max_conn,
                             .max_rate = rate,
                             .burst = burst,
                             .user_agent = "batchd-test/1"};
    f->client = http_client_new(&f->loop, &o);
    assert_non_null(f->client);
    return f->client;
}

static const char *url_of(fixture *f, const char *path)
{
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%u%s", (unsigned)f->srv->port, path);
    return f->url;
}

static http_transfer *get(fixture *f, const char *path, result *res)
{
    http_request req = {.method = "GET", .url = url_of(f, path)};
    http_transfer *t = http_start(f->client, &req, on_done, NULL, res);
    assert_non_null(t);
    return t;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->srv = server_start();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->client && !f->closed) {
        http_client_close(f->client, on_closed, f);
        run_until(f, fixture_closed, f, 5000);
    }
    /* Every handle the client opened is closed: the loop closes cleanly. */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    server_stop(f->srv);
    free(f);
    return 0;
}

/* Writes size bytes of a reproducible pattern; returns the path (free it) and the hash. */
static char *make_file(size_t size, uint64_t *hash)
{
    char *path = xstrdup("/tmp/test_http_upload.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unsigned char buf[65536];
    uint64_t x = 0x243F6A8885A308D3ULL;
    *hash = FNV_OFFSET;
    for (size_t done = 0; done < size;) {
        size_t n = size - done < sizeof buf ? size - done : sizeof buf;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = (unsigned char)x;
        }
        assert_int_equal(write(fd, buf, n), (ssize_t)n);
        *hash = fnv1a(*hash, buf, n);
        done += n;
    }
    close(fd);
    return path;
}

/* ---- tests ---- */

static void test_get_roundtrip(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    const char *hdrs[] = {"Authorization: Token s3cret", "X-Test: hello", NULL};
    http_request req = {.method = "GET", .url = url_of(f, "/echo"), .headers = hdrs};
    int64_t before = time_now_ms();
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    /* never from inside http_start */
    assert_int_equal(res.calls, 0);
    assert_int_equal(http_client_queued(f->client), 1);
    run_until(f, called, &res, 5000);
    assert_int_equal(res.calls, 1);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.error_text, "");
    assert_string_equal(res.body, "GET 0 cbf29ce484222325");
    assert_string_equal(res.content_type, "text/plain");
    assert_null(res.retry_after);
    assert_true(res.started_ms >= before && res.started_ms <= time_now_ms());
    assert_string_equal(f->srv->auth, "Token s3cret");
    assert_string_equal(f->srv->x_test, "hello");
    assert_string_equal(f->srv->user_agent, "batchd-test/1");
    assert_int_equal(http_client_active(f->client), 0);
    assert_int_equal(http_client_queued(f->client), 0);
    /* An idle client keeps no handle active: it causes no wakeups. */
    assert_int_equal(uv_loop_alive(&f->loop), 0);
    result_free(&res);
}

static void test_post_and_put_json(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    const char *body = "{\"name\":\"x\",\"n\":1}";
    const char *hdrs[] = {"Content-Type: application/json", "Authorization: Token t", NULL};
    uint64_t h = fnv1a(FNV_OFFSET, body, strlen(body));
    char expect[128];
    const char *methods[] = {"POST", "PUT"};
    for (size_t i = 0; i < 2; i++) {
        result res = {0};
        http_request req = {.method = methods[i],
                            .url = url_of(f, "/json"),
                            .headers = hdrs,
                            .body = body,
                            .body_len = strlen(body)};
        assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
        run_until(f, called, &res, 5000);
        assert_int_equal(res.error, HTTP_OK);
        assert_int_equal(res.status, 200);
        snprintf(expect, sizeof expect, "%s %zu %016llx", methods[i], strlen(body),
                 (unsigned long long)h);
        assert_string_equal(res.body, expect);
        assert_string_equal(f->srv->method, methods[i]);
        assert_string_equal(f->srv->content_type, "application/json");
        assert_false(f->srv->has_expect);
        assert_int_equal(res.bytes_sent, strlen(body));
        result_free(&res);
    }
    /* POST without a body sends an empty one */
    result res = {0};
    http_request req = {.method = "POST", .url = url_of(f, "/json")};
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    run_until(f, called, &res, 5000);
    assert_int_equal(res.status, 200);
    assert_string_equal(res.body, "POST 0 cbf29ce484222325");
    result_free(&res);
}

static void test_upload_streamed(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    size_t size = 5 * 1024 * 1024 + 7;
    uint64_t hash;
    char *path = make_file(size, &hash);
    result res = {0};
    const char *hdrs[] = {"Content-Type: text/csv", NULL};
    http_request req = {.method = "PUT",
                        .url = url_of(f, "/upload"),
                        .headers = hdrs,
                        .upload_path = path,
                        .timeout_ms = 60000};
    assert_non_null(http_start(f->client, &req, on_done, on_progress, &res));
    run_until(f, called, &res, 30000);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 200);
    char expect[128];
    snprintf(expect, sizeof expect, "PUT %zu %016llx", size, (unsigned long long)hash);
    assert_string_equal(res.body, expect);
    assert_int_equal(res.bytes_sent, size);
    assert_true(res.progress_calls > 0);
    assert_int_equal(res.progress_sent, size);
    assert_int_equal(res.progress_total, size);
    /* the presigned URL never sees an Authorization header the caller did not pass */
    assert_false(f->srv->has_auth);
    assert_false(f->srv->has_expect);
    assert_string_equal(f->srv->content_type, "text/csv");
    unlink(path);
    free(path);
    result_free(&res);
}

static void test_upload_missing_file(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    http_request req = {
        .method = "PUT", .url = url_of(f, "/upload"), .upload_path = "/nonexistent/dir/data.jsonl"};
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    assert_int_equal(res.calls, 0);
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_ERR_FILE);
    assert_int_equal(res.status, 0);
    assert_non_null(strstr(res.error_text, "/nonexistent/dir/data.jsonl"));
    assert_non_null(strstr(res.error_text, "No such file"));
    assert_int_equal(server_get(f->srv, &f->srv->requests), 0);
    result_free(&res);
}

/* The upload file lives where its producer can still write: a symlink or FIFO swapped in,
 * or a file changed since validation, is refused without blocking or following it. */
static void test_upload_refuses_swapped_file(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    char dir[] = "/tmp/batchd-http-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *fifo = xasprintf("%s/fifo.jsonl", dir), *link = xasprintf("%s/link.jsonl", dir),
         *plain = xasprintf("%s/plain.jsonl", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(symlink("/etc/passwd", link), 0);
    FILE *fp = fopen(plain, "w");
    fputs("{\"a\": \"b\"}\n", fp);
    fclose(fp);
    struct {
        const char *path;
        uint64_t expect;
        const char *says;
    } cases[] = {{fifo, 0, "not a regular file"},
                 {link, 0, "Too many levels"},
                 {plain, 999, "changed size"}};
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        result res = {0};
        http_request req = {.method = "PUT",
                            .url = url_of(f, "/upload"),
                            .upload_path = cases[i].path,
                            .upload_expect_size = cases[i].expect};
        assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
        run_until(f, called, &res, 5000);
        assert_int_equal(res.error, HTTP_ERR_FILE);
        assert_non_null(strstr(res.error_text, cases[i].says));
        result_free(&res);
    }
    assert_int_equal(server_get(f->srv, &f->srv->requests), 0);
    unlink(fifo);
    unlink(link);
    unlink(plain);
    rmdir(dir);
    free(fifo);
    free(link);
    free(plain);
}

/* ---- uploads verified against the validated digest ---- */

static void sha256_file(const char *path, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        EVP_DigestUpdate(md, buf, (size_t)n);
    close(fd);
    unsigned int len = 0;
    assert_int_equal(EVP_DigestFinal_ex(md, out, &len), 1);
    assert_int_equal(len, 32);
    EVP_MD_CTX_free(md);
}

typedef enum edit_kind { EDIT_NONE, EDIT_SAME_SIZE, EDIT_TRUNCATE, EDIT_EXTEND } edit_kind;

typedef struct edit_ctx {
    result res;
    const char *path;
    size_t size;
    edit_kind kind;
    bool edited;
} edit_ctx;

/* A producer changes the file once the upload is under way (the first bytes have left). */
static void progress_edits(void *ud, uint64_t sent, uint64_t total)
{
    edit_ctx *e = ud;
    on_progress(&e->res, sent, total);
    if (sent == 0 || e->edited || e->kind == EDIT_NONE)
        return;
    e->edited = true;
    int fd = open(e->path, O_WRONLY);
    assert_true(fd >= 0);
    if (e->kind == EDIT_SAME_SIZE) {
        /* the last byte, flipped: same size, different bytes */
        unsigned char b = 0;
        int rfd = open(e->path, O_RDONLY);
        assert_int_equal(pread(rfd, &b, 1, (off_t)e->size - 1), 1);
        close(rfd);
        b ^= 0xff;
        assert_int_equal(pwrite(fd, &b, 1, (off_t)e->size - 1), 1);
    } else if (e->kind == EDIT_TRUNCATE) {
        assert_int_equal(ftruncate(fd, (off_t)(e->size - 1000)), 0);
    } else {
        assert_int_equal(pwrite(fd, "{}\n", 3, (off_t)e->size), 3);
    }
    close(fd);
}

static void test_upload_verified_against_digest(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    /* Much larger than what loopback socket buffers can take in before the server reads, so
     * the edit lands while most of the file is still unread. */
    size_t size = 24 * 1024 * 1024 + 5;
    static const struct {
        edit_kind kind;
        const char *says;
    } cases[] = {{EDIT_SAME_SIZE, "SHA-256 differs"},
                 {EDIT_TRUNCATE, "shrank"},
                 {EDIT_EXTEND, "grew"},
                 {EDIT_NONE, NULL}};
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        uint64_t hash;
        char *path = make_file(size, &hash);
        unsigned char digest[32];
        sha256_file(path, digest);
        pthread_mutex_lock(&f->srv->mu);
        f->srv->upload_len = 0;
        f->srv->upload_hash = 0;
        pthread_mutex_unlock(&f->srv->mu);
        edit_ctx e = {.path = path, .size = size, .kind = cases[i].kind};
        http_request req = {.method = "PUT",
                            .url = url_of(f, "/upload"),
                            .upload_path = path,
                            .upload_expect_size = size,
                            .upload_sha256 = digest,
                            .timeout_ms = 60000};
        assert_non_null(http_start(f->client, &req, on_done, progress_edits, &e));
        run_until(f, called, &e.res, 30000);
        if (cases[i].kind == EDIT_NONE) {
            assert_int_equal(e.res.error, HTTP_OK);
            assert_int_equal(e.res.status, 200);
            assert_int_equal(e.res.bytes_sent, size);
            assert_int_equal(server_get64(f->srv, &f->srv->upload_len), size);
            assert_true(server_get64(f->srv, &f->srv->upload_hash) == hash);
        } else {
            assert_true(e.edited);
            assert_int_equal(e.res.error, HTTP_ERR_CHANGED);
            assert_int_equal(e.res.status, 0);
            assert_non_null(strstr(e.res.error_text, "changed after it was validated"));
            assert_non_null(strstr(e.res.error_text, cases[i].says));
            /* the last bytes never left: the body never completed at the server */
            assert_true(e.res.bytes_sent < size);
            assert_int_equal(server_get64(f->srv, &f->srv->upload_len), 0);
        }
        unlink(path);
        free(path);
        result_free(&e.res);
    }
}

/* Changed before the upload starts (size differs at open): refused without a byte sent. */
static void test_upload_changed_before_start(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    uint64_t hash;
    size_t size = 4096;
    char *path = make_file(size, &hash);
    unsigned char digest[32];
    sha256_file(path, digest);
    assert_int_equal(truncate(path, 100), 0);
    result res = {0};
    http_request req = {.method = "PUT",
                        .url = url_of(f, "/upload"),
                        .upload_path = path,
                        .upload_expect_size = size,
                        .upload_sha256 = digest};
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_ERR_CHANGED);
    assert_non_null(strstr(res.error_text, "shrank"));
    assert_int_equal(server_get(f->srv, &f->srv->requests), 0);
    /* with a digest an expected size of 0 is checked too: an empty file was validated */
    result_free(&res);
    memset(&res, 0, sizeof res);
    req.upload_expect_size = 0;
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_ERR_CHANGED);
    assert_non_null(strstr(res.error_text, "grew"));
    assert_int_equal(server_get(f->srv, &f->srv->requests), 0);
    result_free(&res);
    /* an empty file that is still empty uploads, verified at its end */
    memset(&res, 0, sizeof res);
    assert_int_equal(truncate(path, 0), 0);
    sha256_file(path, digest);
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 200);
    unlink(path);
    free(path);
    result_free(&res);
}

static void test_timeout(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    http_request req = {.method = "GET", .url = url_of(f, "/slow"), .timeout_ms = 200};
    int64_t t0 = time_mono_ms();
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    run_until(f, called, &res, 5000);
    int64_t took = time_mono_ms() - t0;
    assert_int_equal(res.error, HTTP_ERR_TIMEOUT);
    assert_int_equal(res.status, 0);
    assert_true(res.error_text[0] != '\0');
    /* The timeout ended it: not before 200 ms, and long before the server's 10 s answer. */
    assert_in_range(took, 180, 9000);
    result_free(&res);
}

static void test_connection_refused(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    /* A bound socket that never listens: connecting to it is refused. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/x", (unsigned)ntohs(sa.sin_port));
    result res = {0};
    http_request req = {.method = "GET", .url = url};
    assert_non_null(http_start(f->client, &req, on_done, NULL, &res));
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_ERR_NETWORK);
    assert_int_equal(res.status, 0);
    assert_true(res.error_text[0] != '\0');
    close(fd);
    result_free(&res);
}

static void test_server_closes_connection(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    uint64_t hash;
    char *path = make_file(4 * 1024 * 1024, &hash);
    result res[3] = {{0}};
    get(f, "/drop", &res[0]);    /* closed before any response */
    get(f, "/partial", &res[1]); /* closed in the middle of the body */
    http_request up = {.method = "PUT", .url = url_of(f, "/dropupload"), .upload_path = path};
    assert_non_null(http_start(f->client, &up, on_done, NULL, &res[2])); /* mid-upload */
    all_called all = {res, 3};
    run_until(f, all_done, &all, 10000);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_int_equal(res[i].error, HTTP_ERR_NETWORK);
        result_free(&res[i]);
    }
    /* the client is still usable afterwards */
    result ok = {0};
    get(f, "/echo", &ok);
    run_until(f, called, &ok, 5000);
    assert_int_equal(ok.status, 200);
    result_free(&ok);
    unlink(path);
    free(path);
}

static void test_max_connections(void **state)
{
    fixture *f = *state;
    make_client(f, 2, 0, 0);
    result res[6] = {{0}};
    for (int i = 0; i < 6; i++)
        get(f, "/hold", &res[i]);
    assert_int_equal(http_client_queued(f->client), 6);
    all_called all = {res, 6};
    run_until(f, all_done, &all, 10000);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(res[i].status, 200);
        result_free(&res[i]);
    }
    assert_int_equal(server_get(f->srv, &f->srv->max_concurrent), 2);
    assert_int_equal(http_client_active(f->client), 0);
}

static void test_many_requests_reuse_connections(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    enum { N = 120 };
    result *res = calloc(N, sizeof *res);
    for (int i = 0; i < N; i++)
        get(f, "/echo", &res[i]);
    all_called all = {res, N};
    run_until(f, all_done, &all, 20000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_int_equal(res[i].status, 200);
        result_free(&res[i]);
    }
    free(res);
    /* keep-alive: a handful of connections, not one per request */
    assert_in_range(server_get(f->srv, &f->srv->connections), 1, 4);
    assert_int_equal(server_get(f->srv, &f->srv->requests), N);
}

static void test_rate_limit_spacing(void **state)
{
    fixture *f = *state;
    make_client(f, 8, 10.0, 1.0); /* one request every 100 ms */
    result res[5] = {{0}};
    for (int i = 0; i < 5; i++) {
        http_request req = {.method = "GET", .url = url_of(f, "/rate"), .rate_limited = true};
        assert_non_null(http_start(f->client, &req, on_done, NULL, &res[i]));
    }
    all_called all = {res, 5};
    run_until(f, all_done, &all, 10000);
    pthread_mutex_lock(&f->srv->mu);
    assert_int_equal(f->srv->n_arrivals, 5);
    int64_t arrivals[5];
    memcpy(arrivals, f->srv->arrivals, sizeof arrivals);
    pthread_mutex_unlock(&f->srv->mu);
    for (int i = 1; i < 5; i++) {
        assert_in_range(arrivals[i] - arrivals[i - 1], 70, 1000);
        /* client side: each left the queue a token later (wall clock, tolerance for jumps) */
        assert_true(res[i].started_ms - res[i - 1].started_ms >= 90);
    }
    assert_in_range(arrivals[4] - arrivals[0], 370, 2000);
    for (int i = 0; i < 5; i++)
        result_free(&res[i]);
}

static void test_rate_limit_unlimited_bypass(void **state)
{
    fixture *f = *state;
    make_client(f, 8, 0.1, 1.0); /* one token per 10 s: "held up" is far from "at once" */
    result res[3] = {{0}};
    for (int i = 0; i < 2; i++) {
        http_request req = {.method = "GET", .url = url_of(f, "/echo"), .rate_limited = true};
        assert_non_null(http_start(f->client, &req, on_done, NULL, &res[i]));
    }
    /* an unlimited request queued behind an API request waiting for a token is not held up */
    get(f, "/echo", &res[2]);
    int64_t t0 = time_mono_ms();
    run_until(f, called, &res[2], 5000);
    assert_true(time_mono_ms() - t0 < 5000);
    assert_int_equal(res[1].calls, 0);
    assert_int_equal(http_client_queued(f->client), 1);
    /* a reload to unlimited releases the waiting one at once */
    http_client_options o = {.timeout_ms = 10000, .max_connections = 8, .max_rate = 0};
    http_client_configure(f->client, &o);
    all_called all = {res, 3};
    run_until(f, all_done, &all, 5000);
    assert_true(time_mono_ms() - t0 < 5000);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].status, 200);
        result_free(&res[i]);
    }
}

typedef struct cancel_ctx {
    result res;
    http_transfer *victim;
    http_transfer *self;
    http_client *client;
    bool close_client;
    void (*closed)(void *);
    void *closed_ud;
} cancel_ctx;

static void done_cancels_other(void *ud, const http_response *r)
{
    cancel_ctx *cx = ud;
    on_done(&cx->res, r);
    if (cx->victim)
        http_cancel(cx->victim);
    if (cx->close_client)
        http_client_close(cx->client, NULL, NULL);
}

static void progress_cancels(void *ud, uint64_t sent, uint64_t total)
{
    cancel_ctx *cx = ud;
    on_progress(&cx->res, sent, total);
    if (cx->victim) {
        http_cancel(cx->victim);
        cx->victim = NULL;
    }
    if (cx->self && sent > 0) {
        http_cancel(cx->self);
        cx->self = NULL;
    }
}

static void progress_closes(void *ud, uint64_t sent, uint64_t total)
{
    cancel_ctx *cx = ud;
    on_progress(&cx->res, sent, total);
    if (sent > 0 && cx->close_client) {
        http_client_close(cx->client, cx->closed, cx->closed_ud);
        cx->close_client = false;
    }
}

static void test_close_from_progress(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    uint64_t hash;
    char *path = make_file(3 * 1024 * 1024, &hash);
    result slow = {0};
    cancel_ctx cx = {
        .client = f->client, .close_client = true, .closed = on_closed, .closed_ud = f};
    get(f, "/slow", &slow);
    http_request req = {.method = "PUT", .url = url_of(f, "/upload"), .upload_path = path};
    assert_non_null(http_start(f->client, &req, on_done, progress_closes, &cx));
    /* closing from inside curl is deferred until curl returns, then completes normally */
    run_until(f, fixture_closed, f, 10000);
    assert_int_equal(cx.res.calls, 0);
    assert_int_equal(slow.calls, 0);
    assert_true(cx.res.progress_calls > 0);
    assert_int_equal(uv_loop_alive(&f->loop), 0);
    unlink(path);
    free(path);
}

static void test_cancel_from_done(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result slow = {0}, queued = {0};
    cancel_ctx cx = {0};
    http_request req = {.method = "GET", .url = url_of(f, "/echo")};
    assert_non_null(http_start(f->client, &req, done_cancels_other, NULL, &cx));
    cx.victim = get(f, "/slow", &slow);
    run_until(f, called, &cx.res, 5000);
    assert_int_equal(cx.res.status, 200);
    assert_int_equal(http_client_active(f->client), 0);
    /* cancelling a queued transfer: done is never called either */
    http_transfer *q = get(f, "/echo", &queued);
    http_cancel(q);
    assert_int_equal(http_client_queued(f->client), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* returns: nothing left to do */
    assert_int_equal(slow.calls, 0);
    assert_int_equal(queued.calls, 0);
    result_free(&cx.res);
}

static void test_cancel_from_progress(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    uint64_t hash;
    char *path = make_file(3 * 1024 * 1024, &hash);
    result slow = {0};
    cancel_ctx up = {0}, self = {0};
    up.victim = get(f, "/slow", &slow);
    http_request req = {.method = "PUT", .url = url_of(f, "/upload"), .upload_path = path};
    assert_non_null(http_start(f->client, &req, on_done, progress_cancels, &up));
    /* an upload that cancels itself from its own progress callback */
    self.self = http_start(f->client, &req, on_done, progress_cancels, &self);
    assert_non_null(self.self);
    run_until(f, called, &up.res, 10000);
    assert_int_equal(up.res.status, 200);
    /* nothing else is pending: the self-cancelled one is gone too */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(http_client_active(f->client), 0);
    assert_int_equal(slow.calls, 0);
    assert_int_equal(self.res.calls, 0);
    assert_true(self.res.progress_calls > 0);
    unlink(path);
    free(path);
    result_free(&up.res);
}

static bool server_sees_three(void *arg)
{
    fixture *f = arg;
    return server_get(f->srv, &f->srv->concurrent) == 3;
}

static void test_close_in_flight(void **state)
{
    fixture *f = *state;
    make_client(f, 3, 0, 0);
    result res[5] = {{0}};
    for (int i = 0; i < 5; i++)
        get(f, "/slow", &res[i]);
    run_until(f, server_sees_three, f, 5000);
    assert_int_equal(http_client_active(f->client), 3);
    assert_int_equal(http_client_queued(f->client), 2);
    http_client_close(f->client, on_closed, f);
    assert_false(f->closed); /* handles close asynchronously */
    run_until(f, fixture_closed, f, 5000);
    for (int i = 0; i < 5; i++)
        assert_int_equal(res[i].calls, 0);
    assert_int_equal(uv_loop_alive(&f->loop), 0);
}

static void test_close_from_done(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result slow = {0}, second = {0};
    cancel_ctx cx = {.client = f->client, .close_client = true};
    http_request req = {.method = "GET", .url = url_of(f, "/echo")};
    assert_non_null(http_start(f->client, &req, done_cancels_other, NULL, &cx));
    get(f, "/slow", &slow);
    /* finishes in the same loop turn as the first; must not be reported after close */
    get(f, "/echo", &second);
    run_until(f, called, &cx.res, 5000);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* the client frees itself once its handles are closed */
    assert_int_equal(slow.calls, 0);
    assert_true(second.calls <= 1);
    f->client = NULL;
    result_free(&cx.res);
    result_free(&second);
}

static void test_retry_after_and_status(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    get(f, "/429", &res);
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 429);
    assert_string_equal(res.retry_after, "7");
    assert_string_equal(res.content_type, "application/json");
    assert_string_equal(res.body, "{\"error\":\"slow down\"}");
    result_free(&res);
}

static void test_no_redirects(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    get(f, "/redirect", &res);
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 302);
    assert_int_equal(server_get(f->srv, &f->srv->redirect_followups), 0);
    result_free(&res);
}

static void test_body_too_large(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    get(f, "/big", &res);
    run_until(f, called, &res, 10000);
    assert_int_equal(res.error, HTTP_ERR_TOO_LARGE);
    assert_int_equal(res.status, 200);
    assert_true(res.body_len <= HTTP_MAX_BODY);
    result_free(&res);
}

static void test_invalid_arguments(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    result res = {0};
    http_request no_url = {.method = "GET"};
    assert_null(http_start(f->client, &no_url, on_done, NULL, &res));
    http_request r = {.method = "GET", .url = url_of(f, "/echo")};
    assert_null(http_start(f->client, &r, NULL, NULL, &res));
    assert_null(http_start(NULL, &r, on_done, NULL, &res));
    http_request lower = {.method = "get", .url = url_of(f, "/echo")};
    assert_null(http_start(f->client, &lower, on_done, NULL, &res));
    const char *evil[] = {"X-A: 1\r\nX-Injected: 2", NULL};
    http_request inj = {.method = "GET", .url = url_of(f, "/echo"), .headers = evil};
    assert_null(http_start(f->client, &inj, on_done, NULL, &res));
    http_request both = {.method = "PUT",
                         .url = url_of(f, "/echo"),
                         .body = "x",
                         .body_len = 1,
                         .upload_path = "/etc/hostname"};
    assert_null(http_start(f->client, &both, on_done, NULL, &res));
    http_request nobody = {.method = "POST", .url = url_of(f, "/echo"), .body_len = 3};
    assert_null(http_start(f->client, &nobody, on_done, NULL, &res));
    assert_int_equal(http_client_queued(f->client), 0);
    assert_null(http_client_new(NULL, NULL));
    http_cancel(NULL);
    http_client_close(NULL, NULL, NULL);
    assert_string_equal(http_error_name(HTTP_ERR_TIMEOUT), "timeout");
}

/* ---- downloads into an fd ---- */

static int temp_fd(char **path)
{
    *path = xstrdup("/tmp/test_http_download.XXXXXX");
    int fd = mkstemp(*path);
    assert_true(fd >= 0);
    return fd;
}

/* The file holds exactly the pattern of size bytes. */
static void assert_pattern(int fd, uint64_t size)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal((uint64_t)st.st_size, size);
    static unsigned char buf[1 << 16];
    for (uint64_t pos = 0; pos < size;) {
        ssize_t n = pread(fd, buf, sizeof buf, (off_t)pos);
        assert_true(n > 0);
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != dl_byte(pos + (uint64_t)i))
                fail_msg("byte %llu differs", (unsigned long long)(pos + (uint64_t)i));
        pos += (uint64_t)n;
    }
}

static http_transfer *download(fixture *f, const char *url, int fd, uint64_t max, result *res,
                               http_progress_fn progress)
{
    const char *hdrs[] = {"X-Test: download", NULL};
    http_request req = {.url = url,
                        .headers = hdrs,
                        .download = true,
                        .download_fd = fd,
                        .download_max = max,
                        .timeout_ms = 120000};
    http_transfer *t = http_start(f->client, &req, on_done, progress, res);
    assert_non_null(t);
    return t;
}

static void test_download_to_fd(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    char *path;
    int fd = temp_fd(&path);
    result res = {0};
    download(f, url_of(f, "/dl"), fd, 0, &res, on_progress);
    run_until(f, called, &res, 30000);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 200);
    /* the body went to the file, not into the response */
    assert_int_equal(res.body_len, 0);
    assert_pattern(fd, DL_BODY);
    assert_true(res.progress_calls > 0);
    assert_int_equal(res.progress_sent, DL_BODY);
    /* a presigned URL never gets an Authorization header; other headers pass */
    assert_false(f->srv->has_auth);
    assert_string_equal(f->srv->x_test, "download");
    assert_string_equal(f->srv->method, "GET");
    close(fd);
    unlink(path);
    free(path);
    result_free(&res);
}

/* The API token must never reach a presigned URL: a download with an Authorization header,
 * however written, is refused by http_start itself. */
static void test_download_refuses_authorization(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    const char *forms[] = {"Authorization: Token s3cret", "authorization:Token s3cret",
                           "AUTHORIZATION \t: Token s3cret"};
    result res = {0};
    for (size_t i = 0; i < BD_ARRAY_LEN(forms); i++) {
        const char *hdrs[] = {"X-Test: a", forms[i], NULL};
        http_request req = {.url = url_of(f, "/dl"), .headers = hdrs, .download = true};
        assert_null(http_start(f->client, &req, on_done, NULL, &res));
    }
    /* nor a body, an upload, another method or no fd */
    http_request post = {.method = "POST", .url = url_of(f, "/dl"), .download = true};
    assert_null(http_start(f->client, &post, on_done, NULL, &res));
    http_request nofd = {.url = url_of(f, "/dl"), .download = true, .download_fd = -1};
    assert_null(http_start(f->client, &nofd, on_done, NULL, &res));
    assert_int_equal(http_client_queued(f->client), 0);
    assert_int_equal(server_get(f->srv, &f->srv->requests), 0);
}

/* The transport rule of [api] url applies: http:// only to loopback, no user info, no other
 * scheme; a refused URL ends with HTTP_ERR_URL before any connection is made. */
static void test_download_url_rule(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    char *path;
    int fd = temp_fd(&path);
    char urls[3][128];
    /* not loopback: refused before any connection (a connection would time out here) */
    snprintf(urls[0], sizeof urls[0], "http://10.255.255.1:%u/dl", (unsigned)f->srv->port);
    /* our own server, but with user info: refused, and the server sees no connection */
    snprintf(urls[1], sizeof urls[1], "http://user:pw@127.0.0.1:%u/dl", (unsigned)f->srv->port);
    snprintf(urls[2], sizeof urls[2], "ftp://127.0.0.1:%u/dl", (unsigned)f->srv->port);
    for (size_t i = 0; i < 3; i++) {
        result res = {0};
        download(f, urls[i], fd, 0, &res, NULL);
        assert_int_equal(res.calls, 0); /* never from inside http_start */
        run_until(f, called, &res, 5000);
        assert_int_equal(res.error, HTTP_ERR_URL);
        assert_int_equal(res.status, 0);
        assert_non_null(strstr(res.error_text, "download URL refused"));
        /* the URL is a capability: the message names the rule, not the URL */
        assert_null(strstr(res.error_text, "10.255.255.1"));
        result_free(&res);
    }
    assert_int_equal(server_get(f->srv, &f->srv->connections), 0);
    assert_int_equal(server_get(f->srv, &f->srv->requests), 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_string_equal(http_error_name(HTTP_ERR_URL), "URL refused");
    close(fd);
    unlink(path);
    free(path);
}

/* An error status (an expired URL) is read as a body, never written into the file. */
static void test_download_error_status(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    char *path;
    int fd = temp_fd(&path);
    result res = {0};
    download(f, url_of(f, "/denied"), fd, 0, &res, NULL);
    run_until(f, called, &res, 5000);
    assert_int_equal(res.error, HTTP_OK);
    assert_int_equal(res.status, 403);
    assert_non_null(strstr(res.body, "AccessDenied"));
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 0);
    close(fd);
    unlink(path);
    free(path);
    result_free(&res);
}

/* Over the cap: a declared length fails before a byte is written; a body without one is cut
 * at the cap. */
static void test_download_size_cap(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    const char *paths[] = {"/dl", "/dl-chunked"};
    for (size_t i = 0; i < 2; i++) {
        char *path;
        int fd = temp_fd(&path);
        result res = {0};
        download(f, url_of(f, paths[i]), fd, 1024 * 1024, &res, NULL);
        run_until(f, called, &res, 30000);
        assert_int_equal(res.error, HTTP_ERR_TOO_LARGE);
        assert_int_equal(res.status, 200);
        assert_non_null(strstr(res.error_text, "size cap"));
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        if (i == 0)
            assert_int_equal(st.st_size, 0);
        else
            assert_true(st.st_size <= 1024 * 1024);
        close(fd);
        unlink(path);
        free(path);
        result_free(&res);
    }
}

/* kB of a /proc/self/status line ("VmHWM:", "VmRSS:"), -1 when absent. */
static long proc_status_kb(const char *key)
{
    FILE *fp = fopen("/proc/self/status", "r");
    if (!fp)
        return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, key, strlen(key)) == 0)
            v = strtol(line + strlen(key), NULL, 10);
    fclose(fp);
    return v;
}

typedef struct flat_check {
    result res;
    int fd;
    int checks;
    bool held_back; /* the file was ever shorter than what was reported written */
} flat_check;

/* At every progress report the file already holds every byte reported: the client keeps
 * nothing of the body back in memory. */
static void on_flat_progress(void *ud, uint64_t written, uint64_t total)
{
    flat_check *fc = ud;
    struct stat st;
    assert_int_equal(fstat(fc->fd, &st), 0);
    if ((uint64_t)st.st_size != written)
        fc->held_back = true;
    fc->checks++;
    on_progress(&fc->res, written, total);
}

static void on_flat_done(void *ud, const http_response *r)
{
    on_done(&((flat_check *)ud)->res, r);
}

static bool flat_called(void *arg)
{
    return ((flat_check *)arg)->res.calls > 0;
}

static void test_download_large_flat_memory(void **state)
{
    fixture *f = *state;
    make_client(f, 4, 0, 0);
    char *path;
    flat_check fc = {.fd = temp_fd(&path)};
    /* Resets the peak RSS to the current RSS (Linux >= 4.0): the peak after the download then
     * shows what the download itself needed. */
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    bool reset = cr && fputs("5", cr) >= 0;
    if (cr)
        reset = (fclose(cr) == 0) && reset;
    long before = reset ? proc_status_kb("VmHWM:") : proc_status_kb("VmRSS:");
    const char *hdrs[] = {NULL};
    http_request req = {.url = url_of(f, "/huge"),
                        .headers = hdrs,
                        .download = true,
                        .download_fd = fc.fd,
                        .timeout_ms = 240000};
    assert_non_null(http_start(f->client, &req, on_flat_done, on_flat_progress, &fc));
    run_until(f, flat_called, &fc, 240000);
    assert_int_equal(fc.res.error, HTTP_OK);
    assert_int_equal(fc.res.status, 200);
    assert_int_equal(fc.res.body_len, 0);
    assert_true(fc.checks >= 2); /* checked during the transfer, not only at its end */
    assert_false(fc.held_back);
    assert_int_equal(fc.res.progress_sent, HUGE_BODY);
    long after = proc_status_kb("VmHWM:");
    if (before > 0 && after > 0 && !test_wrapped()) {
        /* 64 MiB went through; memory grew by far less than that (both ends of the transfer
         * live in this process: the server's reader works in 64 KiB blocks too). */
        if (after - before >= 16 * 1024)
            fail_msg("peak RSS grew by %ld kB during a %llu MiB download", after - before,
                     (unsigned long long)(HUGE_BODY >> 20));
    }
    assert_pattern(fc.fd, HUGE_BODY);
    close(fc.fd);
    unlink(path);
    free(path);
    result_free(&fc.res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_and_put_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_streamed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_refuses_swapped_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_verified_against_digest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_changed_before_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_closes_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_requests_reuse_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit_spacing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit_unlimited_bypass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_after_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_redirects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_download_to_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_download_refuses_authorization, setup, teardown),
        cmocka_unit_test_setup_teardown(test_download_url_rule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_download_error_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_download_size_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_download_large_flat_memory, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
