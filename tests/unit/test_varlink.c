/* test-deps: uv cjson */
/* varlink server: a real libuv loop serving a socket in a temporary directory, driven by raw
 * client sockets from the same thread. Waiting is always for a condition with a deadline:
 * the helpers poll the client fd and the loop's backend fd together. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "batchd/util.h"
#include "batchd/varlink.h"
#include "vltest.h"

typedef struct fixture {
    uv_loop_t loop;
    varlink_server *srv;
    char dir[64];
    char path[128];
    int counted;              /* Count calls received */
    int echoed;               /* Echo calls received */
    int slow, slow_root;      /* Slow calls received */
    bool unprivileged;        /* the test's peers are taken for unprivileged ones */
    varlink_call *streams[8]; /* open Stream calls */
    int n_streams;
    int cancelled;
} fixture;

static fixture *F;

/* ---------------------------------------------------------------- the test service */

static void m_echo(varlink_call *call, const cJSON *params, void *ud)
{
    (void)ud;
    F->echoed++;
    varlink_call_reply(call, cJSON_Duplicate(params, 1));
}

static void m_need(varlink_call *call, const cJSON *params, void *ud)
{
    (void)ud;
    const char *name = json_str(params, "name");
    if (!name) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "parameter", "name");
        varlink_call_error(call, "org.varlink.service.InvalidParameter", p);
        return;
    }
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "hello", name);
    varlink_call_reply(call, p);
}

static void m_count(varlink_call *call, const cJSON *params, void *ud)
{
    (void)params;
    (void)ud;
    F->counted++;
    varlink_call_reply(call, NULL);
}

static void m_silent(varlink_call *call, const cJSON *params, void *ud)
{
    (void)call;
    (void)params;
    (void)ud; /* forgets to answer: the server must answer for it */
}

static void stream_cancel(varlink_call *call, void *ud)
{
    (void)ud;
    for (int i = 0; i < F->n_streams; i++)
        if (F->streams[i] == call) {
            F->streams[i] = F->streams[--F->n_streams];
            break;
        }
    F->cancelled++;
}

static void m_stream(varlink_call *call, const cJSON *params, void *ud)
{
    (void)params;
    (void)ud;
    assert_true(varlink_call_more(call));
    if (varlink_call_notify_json(call, "{\"n\":0}") < 0)
        return;
    assert_true(F->n_streams < 8);
    F->streams[F->n_streams++] = call;
    varlink_call_set_cancel(call, stream_cancel, NULL);
}

static bool test_privileged(const varlink_peer *peer, void *ud)
{
    (void)peer;
    (void)ud;
    return !F->unprivileged;
}

static void start(const varlink_server_options *extra)
{
    varlink_server_options o = {.vendor = "test",
                                .product = "test",
                                .version = "1",
                                .url = "x",
                                .protocol_error = "org.example.test.ProtocolError",
                                .limit_error = "org.example.test.TooMany",
                                .busy_error = "org.example.test.Busy",
                                .too_large_error = "org.example.test.TooLarge"};
    o.is_privileged = test_privileged;
    if (extra) {
        o.reserved_connections = extra->reserved_connections;
        o.max_stream_out = extra->max_stream_out;
        o.memory_budget = extra->memory_budget;
        o.now_ms = extra->now_ms;
        o.max_connections = extra->max_connections;
        o.max_per_uid = extra->max_per_uid;
        o.privileged_uncapped = extra->privileged_uncapped;
        o.max_message = extra->max_message;
        o.max_pending_out = extra->max_pending_out;
        o.idle_timeout_ms = extra->idle_timeout_ms;
        o.quick_methods = extra->quick_methods;
    }
    assert_int_equal(varlink_server_new(&F->loop, &o, &F->srv), 0);
    assert_int_equal(
        varlink_server_add_interface(F->srv, "org.example.test", "interface org.example.test\n"),
        0);
    assert_int_equal(varlink_server_add_method(F->srv, "org.example.test.Echo", 0, m_echo, NULL),
                     0);
    assert_int_equal(varlink_server_add_method(F->srv, "org.example.test.Need", 0, m_need, NULL),
                     0);
    assert_int_equal(varlink_server_add_method(F->srv, "org.example.test.Count", 0, m_count, NULL),
                     0);
    assert_int_equal(
        varlink_server_add_method(F->srv, "org.example.test.Silent", 0, m_silent, NULL), 0);
    assert_int_equal(varlink_server_add_method(F->srv, "org.example.test.Stream",
                                               VARLINK_METHOD_MORE, m_stream, NULL),
                     0);
    char *err = NULL;
    int r = varlink_server_listen(F->srv, F->path, 0660, (gid_t)-1, &err);
    if (r < 0)
        fail_msg("listen: %s", err);
}

static int setup(void **state)
{
    F = calloc(1, sizeof(*F));
    assert_int_equal(uv_loop_init(&F->loop), 0);
    strcpy(F->dir, "/tmp/test_varlink.XXXXXX");
    assert_non_null(mkdtemp(F->dir));
    snprintf(F->path, sizeof(F->path), "%s/run/io.test", F->dir);
    vt_loop = &F->loop;
    vt_path = F->path;
    *state = F;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    varlink_server_free(F->srv);
    uv_run(&F->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&F->loop), 0);
    char run[160];
    snprintf(run, sizeof(run), "%s/run", F->dir);
    unlink(F->path);
    rmdir(run);
    rmdir(F->dir);
    free(F);
    F = NULL;
    return 0;
}

static void wait_connections(size_t n)
{
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (varlink_server_connections(F->srv) != n && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(varlink_server_connections(F->srv), n);
}

/* ---------------------------------------------------------------- tests */

static void test_parse(void **state)
{
    (void)state;
    varlink_request r;
    const char *why = NULL;
    static const char ok[] = "{\"method\":\"a.B\",\"parameters\":{\"x\":1},\"more\":true}";
    assert_int_equal(varlink_request_parse(ok, strlen(ok), &r, &why), 0);
    assert_string_equal(r.method, "a.B");
    assert_true(r.more);
    assert_false(r.oneway);
    assert_int_equal(json_int64(r.parameters, "x", 0), 1);
    varlink_request_clear(&r);

    static const char *const bad[] = {
        "{\"method\":\"a.B\"} x",
        "[1]",
        "{}",
        "{\"method\":\"\"}",
        "{\"method\":3}",
        "{\"method\":\"a.B\",\"parameters\":[]}",
        "{\"method\":\"a.B\",\"more\":1}",
        "{\"method\":\"a.B\",\"oneway\":\"yes\"}",
        "{\"method\":\"a\xff\"}",
        "",
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        why = NULL;
        assert_int_equal(varlink_request_parse(bad[i], strlen(bad[i]), &r, &why), -EBADMSG);
        assert_non_null(why);
        assert_null(r.msg);
    }
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    static const char msg[] = "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"v\":42}}";
    for (size_t i = 0; i < sizeof(msg); i++) { /* includes the NUL */
        assert_int_equal(cl_write(c, msg + i, 1), 1);
        uv_run(&F->loop, UV_RUN_NOWAIT);
        if (i + 1 < sizeof(msg))
            assert_null(cl_recv_within(c, 0)); /* nothing before the frame is complete */
    }
    cJSON *m = cl_recv(c);
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "v", 0), 42);
    assert_null(cJSON_GetObjectItem(m, "continues"));
    cJSON_Delete(m);
    cl_free(c);
}

static void test_many_in_one_write(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    strbuf sb = {0};
    for (int i = 0; i < 200; i++) {
        strbuf_printf(&sb, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"i\":%d}}", i);
        strbuf_putc(&sb, '\0');
    }
    assert_int_equal(cl_write(c, sb.data, sb.len), sb.len);
    strbuf_free(&sb);
    for (int i = 0; i < 200; i++) {
        cJSON *m = cl_recv(c);
        assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "i", -1), i);
        cJSON_Delete(m);
    }
    cl_free(c);
}

static void test_oversize_unframed(void **state)
{
    (void)state;
    varlink_server_options o = {.max_message = 1024};
    start(&o);
    client *c = cl_connect();
    char big[4096];
    memset(big, 'x', sizeof(big));
    cl_write(c, big, sizeof(big));
    cJSON *m = cl_recv(c);
    assert_error(m, "org.example.test.ProtocolError");
    assert_non_null(strstr(json_str(cJSON_GetObjectItem(m, "parameters"), "reason"), "too large"));
    cJSON_Delete(m);
    cl_wait_eof(c);
    wait_connections(0);
    cl_free(c);
}

static void test_oversize_framed(void **state)
{
    (void)state;
    varlink_server_options o = {.max_message = 1024};
    start(&o);
    client *c = cl_connect();
    strbuf sb = {0};
    strbuf_puts(&sb, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"s\":\"");
    for (int i = 0; i < 2000; i++)
        strbuf_putc(&sb, 'y');
    strbuf_puts(&sb, "\"}}");
    cl_send(c, sb.data);
    strbuf_free(&sb);
    cJSON *m = cl_recv(c);
    assert_error(m, "org.example.test.ProtocolError");
    cJSON_Delete(m);
    cl_wait_eof(c);
    cl_free(c);

    /* Exactly at the limit is fine. */
    c = cl_connect();
    sb = (strbuf){0};
    strbuf_puts(&sb, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"s\":\"");
    while (sb.len < 1024 - 3)
        strbuf_putc(&sb, 'y');
    strbuf_puts(&sb, "\"}}");
    assert_int_equal(sb.len, 1024);
    cl_send(c, sb.data);
    strbuf_free(&sb);
    m = cl_recv(c);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    cl_free(c);
}

static void test_bad_json(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    cl_send(c, "{\"method\": nope");
    cJSON *m = cl_recv(c);
    assert_error(m, "org.example.test.ProtocolError");
    assert_string_equal(json_str(cJSON_GetObjectItem(m, "parameters"), "reason"),
                        "message is not valid JSON");
    cJSON_Delete(m);
    cl_wait_eof(c);
    cl_free(c);
}

static void test_unknown_method(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Nope\"}");
    cJSON *m = cl_recv(c);
    assert_error(m, "org.varlink.service.MethodNotFound");
    assert_string_equal(json_str(cJSON_GetObjectItem(m, "parameters"), "method"),
                        "org.example.test.Nope");
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"com.other.Thing\"}");
    m = cl_recv(c);
    assert_error(m, "org.varlink.service.InterfaceNotFound");
    assert_string_equal(json_str(cJSON_GetObjectItem(m, "parameters"), "interface"), "com.other");
    cJSON_Delete(m);
    /* A handler that does not answer is answered for. */
    cl_send(c, "{\"method\":\"org.example.test.Silent\"}");
    m = cl_recv(c);
    assert_error(m, "org.varlink.service.MethodNotImplemented");
    cJSON_Delete(m);
    /* The connection survives errors. */
    cl_send(c, "{\"method\":\"org.example.test.Echo\",\"parameters\":{}}");
    m = cl_recv(c);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    cl_free(c);
}

static void test_missing_parameters(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Need\"}");
    cJSON *m = cl_recv(c);
    assert_error(m, "org.varlink.service.InvalidParameter");
    assert_string_equal(json_str(cJSON_GetObjectItem(m, "parameters"), "parameter"), "name");
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"org.example.test.Need\",\"parameters\":{\"name\":7}}");
    m = cl_recv(c);
    assert_error(m, "org.varlink.service.InvalidParameter");
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"org.example.test.Need\",\"parameters\":{\"name\":\"w\"}}");
    m = cl_recv(c);
    assert_string_equal(json_str(cJSON_GetObjectItem(m, "parameters"), "hello"), "w");
    cJSON_Delete(m);
    cl_free(c);
}

static void test_oneway(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Count\",\"oneway\":true}");
    cl_send(c, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"after\":true}}");
    cJSON *m = cl_recv(c);
    /* The first reply is Echo's: the oneway call produced none. */
    assert_true(json_bool(cJSON_GetObjectItem(m, "parameters"), "after", false));
    cJSON_Delete(m);
    assert_int_equal(F->counted, 1);
    /* oneway with more is a protocol error. */
    cl_send(c, "{\"method\":\"org.example.test.Stream\",\"oneway\":true,\"more\":true}");
    m = cl_recv(c);
    assert_error(m, "org.example.test.ProtocolError");
    cJSON_Delete(m);
    cl_wait_eof(c);
    cl_free(c);
}

static void test_more_continues(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Stream\"}");
    cJSON *m = cl_recv(c);
    assert_error(m, "org.varlink.service.ExpectedMore");
    cJSON_Delete(m);
    /* more on a method that does not stream: one ordinary reply. */
    cl_send(c, "{\"method\":\"org.example.test.Echo\",\"more\":true,\"parameters\":{\"a\":1}}");
    m = cl_recv(c);
    assert_null(cJSON_GetObjectItem(m, "continues"));
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "a", 0), 1);
    cJSON_Delete(m);

    cl_send(c, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    /* Queued behind the open stream: not answered until the stream ends. */
    cl_send(c, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"late\":true}}");
    m = cl_recv(c);
    assert_true(json_bool(m, "continues", false));
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "n", -1), 0);
    cJSON_Delete(m);
    assert_int_equal(F->n_streams, 1);
    for (int i = 1; i <= 3; i++) {
        char p[32];
        snprintf(p, sizeof(p), "{\"n\":%d}", i);
        assert_int_equal(varlink_call_notify_json(F->streams[0], p), 0);
    }
    for (int i = 1; i <= 3; i++) {
        m = cl_recv(c);
        assert_true(json_bool(m, "continues", false));
        assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "n", -1), i);
        cJSON_Delete(m);
    }
    assert_null(cl_recv_within(c, 50));
    /* The final reply ends the stream and unblocks the queued call. */
    varlink_call *s = F->streams[0];
    F->n_streams = 0;
    assert_int_equal(varlink_call_reply(s, NULL), 0);
    m = cl_recv(c);
    assert_null(cJSON_GetObjectItem(m, "continues"));
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    m = cl_recv(c);
    assert_true(json_bool(cJSON_GetObjectItem(m, "parameters"), "late", false));
    cJSON_Delete(m);
    assert_int_equal(F->cancelled, 0);
    cl_free(c);
}

/* A streaming client that goes away while replies are being written costs its connection only:
 * with SIGPIPE at its default the process would die on the first write after the close. */
static void test_peer_gone_mid_stream(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_DFL);
    start(NULL);
    struct sigaction sa;
    assert_int_equal(sigaction(SIGPIPE, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_IGN);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    cJSON *m = cl_recv(c);
    assert_true(json_bool(m, "continues", false));
    cJSON_Delete(m);
    assert_int_equal(F->n_streams, 1);
    cl_free(c);
    /* Notifications until the server notices: the first write after the close fails. */
    int r = 0;
    for (int i = 0; i < 1000 && F->n_streams == 1 && r == 0; i++) {
        r = varlink_call_notify_json(F->streams[0], "{\"n\":1}");
        pump(-1, 1);
    }
    assert_int_equal(F->n_streams, 0);
    assert_int_equal(F->cancelled, 1);
    wait_connections(0);
    /* The server still serves others. */
    client *d = cl_connect();
    cl_send(d, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"ok\":true}}");
    m = cl_recv(d);
    assert_true(json_bool(cJSON_GetObjectItem(m, "parameters"), "ok", false));
    cJSON_Delete(m);
    cl_free(d);
}

static void test_service_interface(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.varlink.service.GetInfo\"}");
    cJSON *m = cl_recv(c);
    cJSON *p = cJSON_GetObjectItem(m, "parameters");
    assert_string_equal(json_str(p, "vendor"), "test");
    cJSON *ifs = cJSON_GetObjectItem(p, "interfaces");
    assert_int_equal(cJSON_GetArraySize(ifs), 2);
    assert_string_equal(cJSON_GetArrayItem(ifs, 1)->valuestring, "org.example.test");
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"org.varlink.service.GetInterfaceDescription\","
               "\"parameters\":{\"interface\":\"org.example.test\"}}");
    m = cl_recv(c);
    assert_string_equal(json_str(cJSON_GetObjectItem(m, "parameters"), "description"),
                        "interface org.example.test\n");
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"org.varlink.service.GetInterfaceDescription\","
               "\"parameters\":{\"interface\":\"org.varlink.service\"}}");
    m = cl_recv(c);
    assert_non_null(strstr(json_str(cJSON_GetObjectItem(m, "parameters"), "description"),
                           "method GetInterfaceDescription"));
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"org.varlink.service.GetInterfaceDescription\","
               "\"parameters\":{\"interface\":\"no.such\"}}");
    m = cl_recv(c);
    assert_error(m, "org.varlink.service.InterfaceNotFound");
    cJSON_Delete(m);
    cl_send(c, "{\"method\":\"org.varlink.service.GetInterfaceDescription\"}");
    m = cl_recv(c);
    assert_error(m, "org.varlink.service.InvalidParameter");
    cJSON_Delete(m);
    cl_free(c);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    varlink_server_options o = {.idle_timeout_ms = 100};
    start(&o);
    client *idle = cl_connect();
    client *watching = cl_connect();
    cl_send(watching, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    cJSON_Delete(cl_recv(watching));
    int64_t t0 = time_mono_ms();
    cl_wait_eof(idle);
    assert_true(time_mono_ms() - t0 >= 50);
    /* Well past several idle periods, the streaming connection is still served. */
    int64_t end = time_mono_ms() + 350;
    while (time_mono_ms() < end)
        pump(-1, 20);
    assert_int_equal(varlink_server_connections(F->srv), 1);
    assert_int_equal(varlink_call_notify_json(F->streams[0], "{\"n\":9}"), 0);
    cJSON *m = cl_recv(watching);
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "n", 0), 9);
    cJSON_Delete(m);
    cl_free(idle);
    cl_free(watching);
}

static void test_connection_caps(void **state)
{
    (void)state;
    varlink_server_options o = {.max_connections = 3, .max_per_uid = 2};
    start(&o);
    client *a = cl_connect(), *b = cl_connect();
    wait_connections(2);
    client *c = cl_connect(); /* same uid: over the per-uid cap */
    cJSON *m = cl_recv(c);
    assert_error(m, "org.example.test.TooMany");
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "limit", 0), 2);
    cJSON_Delete(m);
    cl_wait_eof(c);
    cl_free(c);
    /* The accepted ones still work. */
    cl_send(a, "{\"method\":\"org.example.test.Echo\"}");
    m = cl_recv(a);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    /* Once one leaves, a new one is accepted. */
    cl_free(b);
    wait_connections(1);
    c = cl_connect();
    wait_connections(2);
    cl_free(a);
    cl_free(c);
    wait_connections(0);
}

/* With privileged_uncapped, the server's own uid (this test) is bound by the total cap and its
 * reserve only. */
static void test_privileged_uncapped(void **state)
{
    (void)state;
    varlink_server_options o = {.max_connections = 4,
                                .max_per_uid = 2,
                                .reserved_connections = 1,
                                .privileged_uncapped = true};
    start(&o);
    client *c[6];
    for (int i = 0; i < 5; i++)
        c[i] = cl_connect();
    wait_connections(5);
    for (int i = 0; i < 5; i++) {
        cl_send(c[i], "{\"method\":\"org.example.test.Echo\"}");
        cJSON *m = cl_recv(c[i]);
        assert_null(json_str(m, "error"));
        cJSON_Delete(m);
    }
    c[5] = cl_connect(); /* over the total cap and the reserve */
    cJSON *m = cl_recv(c[5]);
    assert_error(m, "org.example.test.TooMany");
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "limit", 0), 5);
    cJSON_Delete(m);
    for (int i = 0; i < 6; i++)
        cl_free(c[i]);
    wait_connections(0);
}

/* Unprivileged peers holding every ordinary slot leave the reserve to root and the server's
 * uid: those are still accepted and answered. */
static void test_reserve(void **state)
{
    (void)state;
    varlink_server_options o = {
        .max_connections = 3, .max_per_uid = 100, .reserved_connections = 2};
    F->unprivileged = true;
    start(&o);
    client *c[8];
    for (int i = 0; i < 3; i++)
        c[i] = cl_connect();
    wait_connections(3);
    c[3] = cl_connect(); /* unprivileged: refused, the reserve is not theirs */
    cJSON *m = cl_recv(c[3]);
    assert_error(m, "org.example.test.TooMany");
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "limit", 0), 3);
    cJSON_Delete(m);
    cl_wait_eof(c[3]);
    F->unprivileged = false; /* from now on the peers are root */
    for (int i = 4; i < 6; i++) {
        c[i] = cl_connect();
        cl_send(c[i], "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"root\":true}}");
        m = cl_recv(c[i]);
        assert_true(json_bool(cJSON_GetObjectItem(m, "parameters"), "root", false));
        cJSON_Delete(m);
    }
    wait_connections(5);
    c[6] = cl_connect(); /* the reserve is used up too */
    m = cl_recv(c[6]);
    assert_error(m, "org.example.test.TooMany");
    cJSON_Delete(m);
    /* An unprivileged peer that leaves frees an ordinary slot, for anyone. */
    F->unprivileged = true;
    cl_free(c[0]);
    wait_connections(4);
    c[7] = cl_connect();
    cl_send(c[7], "{\"method\":\"org.example.test.Echo\"}");
    m = cl_recv(c[7]);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    for (int i = 1; i < 8; i++)
        cl_free(c[i]);
    wait_connections(0);
}

static void test_total_cap(void **state)
{
    (void)state;
    varlink_server_options o = {.max_connections = 3, .max_per_uid = 100};
    F->unprivileged = true;
    start(&o);
    client *cs[3];
    for (int i = 0; i < 3; i++)
        cs[i] = cl_connect();
    wait_connections(3);
    client *d = cl_connect();
    cJSON *m = cl_recv(d);
    assert_error(m, "org.example.test.TooMany");
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "limit", 0), 3);
    cJSON_Delete(m);
    cl_wait_eof(d);
    cl_free(d);
    for (int i = 0; i < 3; i++)
        cl_free(cs[i]);
}

static void test_slow_reader_dropped(void **state)
{
    (void)state;
    varlink_server_options o = {.max_pending_out = 64 * 1024};
    start(&o);
    client *slow = cl_connect(), *fast = cl_connect();
    cl_send(slow, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    cl_send(fast, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    wait_connections(2);
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (F->n_streams < 2 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(F->n_streams, 2);
    cJSON_Delete(cl_recv(fast));

    strbuf payload = {0};
    strbuf_puts(&payload, "{\"blob\":\"");
    for (int i = 0; i < 4000; i++)
        strbuf_putc(&payload, 'z');
    strbuf_puts(&payload, "\"}");
    int received = 0;
    for (int i = 0; i < 2000; i++) {
        for (int k = F->n_streams - 1; k >= 0; k--)
            varlink_call_notify_json(F->streams[k], payload.data);
        uv_run(&F->loop, UV_RUN_NOWAIT);
        cJSON *m;
        while ((m = cl_recv_within(fast, 0)) != NULL) {
            received++;
            cJSON_Delete(m);
        }
    }
    strbuf_free(&payload);
    /* The slow reader was dropped, its call cancelled; the fast one got everything. */
    assert_int_equal(F->cancelled, 1);
    assert_int_equal(F->n_streams, 1);
    wait_connections(1);
    while (received < 2000) {
        cJSON *m = cl_recv(fast);
        received++;
        cJSON_Delete(m);
    }
    assert_int_equal(received, 2000);
    cl_wait_eof(slow);
    cl_free(slow);
    cl_free(fast);
}

static void test_garbage_64mib(void **state)
{
    (void)state;
    varlink_server_options o = {.max_message = 1024 * 1024};
    start(&o);
    client *bad = cl_connect(), *good = cl_connect();
    size_t total = 64u * 1024 * 1024;
    char *chunk = malloc(1024 * 1024);
    memset(chunk, 'g', 1024 * 1024);
    size_t sent = 0;
    while (sent < total) {
        size_t n = cl_write(bad, chunk, 1024 * 1024);
        sent += n;
        if (n < 1024 * 1024)
            break; /* the server hung up */
    }
    free(chunk);
    /* It was cut off long before 64 MiB: at most the cap plus socket buffers got through. */
    assert_true(sent < 8u * 1024 * 1024);
    cl_send(good, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"ok\":true}}");
    cJSON *m = cl_recv(good);
    assert_true(json_bool(cJSON_GetObjectItem(m, "parameters"), "ok", false));
    cJSON_Delete(m);
    wait_connections(1);
    cl_free(bad);
    cl_free(good);
}

static void test_500_connections(void **state)
{
    (void)state;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 1200 && rl.rlim_max >= 1200) {
        rl.rlim_cur = 1200;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    varlink_server_options o = {.max_connections = 1024, .max_per_uid = 1024};
    start(&o);
    enum { N = 500 };
    client **cs = calloc(N, sizeof(client *));
    for (int i = 0; i < N; i++)
        cs[i] = cl_connect();
    for (int i = 0; i < N; i++) {
        char msg[96];
        snprintf(msg, sizeof(msg),
                 "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"i\":%d}}", i);
        cl_send(cs[i], msg);
    }
    wait_connections(N);
    for (int i = 0; i < N; i++) {
        cJSON *m = cl_recv(cs[i]);
        assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "i", -1), i);
        cJSON_Delete(m);
    }
    for (int i = 0; i < N; i++)
        cl_free(cs[i]);
    free(cs);
    wait_connections(0);
}

/* Writes as much of buf as the server takes within `rounds` turns of its loop. */
static size_t push(client *c, const char *buf, size_t len, int rounds)
{
    size_t done = 0;
    for (int i = 0; i < rounds && done < len; i++) {
        ssize_t n = send(c->fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n > 0)
            done += (size_t)n;
        pump(-1, 5);
    }
    return done;
}

/* A frame of about `size` bytes: an Echo call with a string of that length. */
static void echo_frame(strbuf *sb, int i, size_t size)
{
    strbuf_printf(sb, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"i\":%d,\"s\":\"", i);
    for (size_t k = 0; k < size; k++)
        strbuf_putc(sb, 'p');
    strbuf_puts(sb, "\"}}");
    strbuf_putc(sb, '\0');
}

/* A peer that pipelines calls and does not read: the next call is taken only once the reply
 * to the previous one is written out, so the server neither reads ahead nor queues replies;
 * once the peer reads, every call is answered, in order. */
static void test_pipelined_one_at_a_time(void **state)
{
    (void)state;
    start(NULL);
    client *c = cl_connect();
    enum { N = 200, SIZE = 10000 };
    strbuf sb = {0};
    for (int i = 0; i < N; i++)
        echo_frame(&sb, i, SIZE);
    size_t sent = push(c, sb.data, sb.len, 200);
    /* The socket buffers hold a few replies; the server took a call for each and no more. */
    assert_true(F->echoed < N / 2);
    assert_true(sent < sb.len);
    /* What it holds: one reply in flight and one read buffer of calls (in a buffer at most
     * twice as large), not N of either. */
    size_t held = varlink_server_held(F->srv);
    if (held > 2 * (64 * 1024 + SIZE) + SIZE + 1024)
        fail_msg("the server holds %zu bytes for one pipelining peer", held);
    int got = 0;
    size_t off = sent;
    int64_t end = time_mono_ms() + DEADLINE_MS * 4;
    while (got < N && time_mono_ms() < end) {
        if (off < sb.len) {
            ssize_t n = send(c->fd, sb.data + off, sb.len - off, MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
        }
        cJSON *m = cl_recv_within(c, 20);
        if (!m)
            continue;
        assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "i", -1), got);
        got++;
        cJSON_Delete(m);
    }
    assert_int_equal(got, N);
    assert_int_equal(F->echoed, N);
    strbuf_free(&sb);
    cl_free(c);
}

/* A stream whose peer does not read is closed once its unsent output passes max_stream_out,
 * far below the cap of a reply. */
static void test_stream_output_cap(void **state)
{
    (void)state;
    varlink_server_options o = {.max_stream_out = 64 * 1024};
    start(&o);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (F->n_streams < 1 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(F->n_streams, 1);
    strbuf p = {0};
    strbuf_puts(&p, "{\"blob\":\"");
    for (int i = 0; i < 4000; i++)
        strbuf_putc(&p, 'w');
    strbuf_puts(&p, "\"}");
    int sent = 0;
    while (F->n_streams == 1 && sent < 1000) {
        varlink_call_notify_json(F->streams[0], p.data);
        sent++;
        uv_run(&F->loop, UV_RUN_NOWAIT);
    }
    strbuf_free(&p);
    assert_int_equal(F->cancelled, 1);
    /* Closed after the socket buffers and 64 KiB, not after 1000 notifications (4 MB). */
    assert_true(sent < 500);
    wait_connections(0);
    assert_int_equal(varlink_server_held(F->srv), 0);
    cl_free(c);
}

/* A stream whose unsent output does not move for an idle period is closed: a Watch that
 * stopped reading does not hold its backlog (nor its slot) forever. */
static void test_stalled_stream_closed(void **state)
{
    (void)state;
    varlink_server_options o = {.idle_timeout_ms = 100};
    start(&o);
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (F->n_streams < 1 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(F->n_streams, 1);
    strbuf p = {0};
    strbuf_puts(&p, "{\"blob\":\"");
    for (int i = 0; i < 800 * 1024; i++)
        strbuf_putc(&p, 'v');
    strbuf_puts(&p, "\"}");
    assert_int_equal(varlink_call_notify_json(F->streams[0], p.data), 0);
    strbuf_free(&p);
    assert_true(varlink_server_held(F->srv) > 0);
    end = time_mono_ms() + DEADLINE_MS;
    while (F->cancelled == 0 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(F->cancelled, 1);
    wait_connections(0);
    cl_free(c);
}

/* Near the memory budget, an unprivileged peer's call is refused with busy_error (the
 * connection stays); a privileged peer still has the last quarter. A reply over
 * max_pending_out is refused with too_large_error. */
static void test_budget_busy(void **state)
{
    (void)state;
    /* Input buffers count with their capacity: a 180 KB call costs 256 KiB while it runs. */
    varlink_server_options o = {.memory_budget = 1024 * 1024, .max_pending_out = 450 * 1024};
    start(&o);
    client *w = cl_connect(); /* a stream that does not read holds 400 KB */
    cl_send(w, "{\"method\":\"org.example.test.Stream\",\"more\":true}");
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (F->n_streams < 1 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(F->n_streams, 1);
    strbuf p = {0};
    strbuf_puts(&p, "{\"blob\":\"");
    for (int i = 0; i < 400 * 1024; i++)
        strbuf_putc(&p, 'b');
    strbuf_puts(&p, "\"}");
    assert_int_equal(varlink_call_notify_json(F->streams[0], p.data), 0);
    strbuf_free(&p);
    assert_true(varlink_server_held(F->srv) >= 400 * 1024);

    strbuf sb = {0};
    echo_frame(&sb, 1, 180 * 1024); /* 400 + 256 + 180 KiB: over 768 KiB, under 1 MiB */
    F->unprivileged = true;
    client *u = cl_connect();
    cl_send(u, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"small\":1}}");
    cJSON *m = cl_recv(u);
    assert_null(json_str(m, "error")); /* small calls still fit */
    cJSON_Delete(m);
    assert_int_equal(cl_write(u, sb.data, sb.len), sb.len);
    m = cl_recv(u);
    assert_error(m, "org.example.test.Busy");
    cJSON_Delete(m);
    /* The connection stays usable. */
    cl_send(u, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"small\":2}}");
    m = cl_recv(u);
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "small", 0), 2);
    cJSON_Delete(m);
    F->unprivileged = false;
    client *r = cl_connect();
    assert_int_equal(cl_write(r, sb.data, sb.len), sb.len);
    m = cl_recv(r);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    strbuf_free(&sb);
    /* Larger than a reply may be: refused whoever asks. */
    sb = (strbuf){0};
    echo_frame(&sb, 2, 460 * 1024);
    assert_int_equal(cl_write(r, sb.data, sb.len), sb.len);
    m = cl_recv(r);
    assert_error(m, "org.example.test.TooLarge");
    assert_int_equal(json_int64(cJSON_GetObjectItem(m, "parameters"), "limit", 0), 450 * 1024);
    cJSON_Delete(m);
    strbuf_free(&sb);
    cl_free(u);
    cl_free(r);
    cl_free(w);
    wait_connections(0);
}

/* Stands for an expensive call (a long ListJobs): 15 ms of work. */
static void m_slow(varlink_call *call, const cJSON *params, void *ud)
{
    (void)ud;
    if (json_bool(params, "root", false))
        F->slow_root++;
    else
        F->slow++;
    int64_t end = time_mono_ms() + 15;
    while (time_mono_ms() < end)
        ;
    varlink_call_reply(call, NULL);
}

/* Expensive calls of unprivileged peers arriving together are spread over loop turns (10 ms of
 * them per turn), so that nothing waits behind all of them; a privileged call is taken at
 * once. */
static void test_work_per_turn(void **state)
{
    (void)state;
    start(NULL);
    assert_int_equal(varlink_server_add_method(F->srv, "org.example.test.Slow", 0, m_slow, NULL),
                     0);
    F->unprivileged = true;
    enum { N = 4 };
    client *c[N];
    for (int i = 0; i < N; i++)
        c[i] = cl_connect();
    wait_connections(N); /* accepted as unprivileged */
    F->unprivileged = false;
    client *root = cl_connect();
    wait_connections(N + 1);
    uv_run(&F->loop, UV_RUN_NOWAIT); /* libuv registers the new connections with epoll */
    for (int i = 0; i < N; i++)
        cl_send(c[i], "{\"method\":\"org.example.test.Slow\"}");
    cl_send(root, "{\"method\":\"org.example.test.Slow\",\"parameters\":{\"root\":true}}");
    struct pollfd p = {.fd = uv_backend_fd(&F->loop), .events = POLLIN};
    assert_int_equal(poll(&p, 1, DEADLINE_MS), 1);
    uv_run(&F->loop, UV_RUN_NOWAIT); /* one turn */
    assert_int_equal(F->slow_root, 1);
    assert_true(F->slow <= 1);
    for (int i = 0; i < N; i++) {
        cJSON *m = cl_recv(c[i]);
        assert_null(json_str(m, "error"));
        cJSON_Delete(m);
        cl_free(c[i]);
    }
    assert_int_equal(F->slow, N);
    cJSON_Delete(cl_recv(root));
    cl_free(root);
}

/* A quick method from an unprivileged peer is taken in the turn it is read, like the
 * operator's calls, while costly unprivileged calls wait in the run queue. */
static void test_quick_call_not_queued(void **state)
{
    (void)state;
    static const char *const quick[] = {"org.example.test.Echo", NULL};
    varlink_server_options o = {.quick_methods = quick};
    start(&o);
    assert_int_equal(varlink_server_add_method(F->srv, "org.example.test.Slow", 0, m_slow, NULL),
                     0);
    F->unprivileged = true;
    enum { N = 4 };
    client *c[N];
    for (int i = 0; i < N; i++)
        c[i] = cl_connect();
    client *member = cl_connect();
    wait_connections(N + 1);
    uv_run(&F->loop, UV_RUN_NOWAIT); /* libuv registers the new connections with epoll */
    for (int i = 0; i < N; i++)
        cl_send(c[i], "{\"method\":\"org.example.test.Slow\"}");
    cl_send(member, "{\"method\":\"org.example.test.Echo\",\"parameters\":{\"x\":1}}");
    struct pollfd p = {.fd = uv_backend_fd(&F->loop), .events = POLLIN};
    assert_int_equal(poll(&p, 1, DEADLINE_MS), 1);
    uv_run(&F->loop, UV_RUN_NOWAIT); /* one turn */
    assert_true(F->slow <= 1);
    cJSON *m = cl_recv_within(member, 0); /* answered in that turn: already written */
    assert_non_null(m);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    assert_true(F->slow <= 1);
    for (int i = 0; i < N; i++) {
        cJSON_Delete(cl_recv(c[i]));
        cl_free(c[i]);
    }
    cl_free(member);
}

static void test_ratelimit(void **state)
{
    (void)state;
    varlink_ratelimit rl = {0};
    size_t quiet = 99;
    assert_true(varlink_ratelimit_check(&rl, 1000, 5000, 1000, &quiet));
    assert_int_equal(quiet, 0);
    for (int i = 0; i < 7; i++)
        assert_false(varlink_ratelimit_check(&rl, 1000, 5000 + i * 100, 1000, &quiet));
    /* Another uid has its own allowance. */
    assert_true(varlink_ratelimit_check(&rl, 1001, 5100, 1000, &quiet));
    assert_int_equal(quiet, 0);
    assert_false(varlink_ratelimit_check(&rl, 1000, 5999, 1000, &quiet));
    /* A second later: logged again, with the count left out in between. */
    assert_true(varlink_ratelimit_check(&rl, 1000, 6000, 1000, &quiet));
    assert_int_equal(quiet, 8);
    assert_true(varlink_ratelimit_check(&rl, 1000, 7000, 1000, &quiet));
    assert_int_equal(quiet, 0);
    /* More uids than slots: the table stays bounded and new uids are still logged. */
    for (uid_t u = 0; u < 3 * VARLINK_RATELIMIT_SLOTS; u++)
        assert_true(varlink_ratelimit_check(&rl, 20000 + u, 8000 + (int64_t)u, 1000, &quiet));
    assert_false(
        varlink_ratelimit_check(&rl, 20000 + 3 * VARLINK_RATELIMIT_SLOTS - 1, 8500, 1000, &quiet));
}

static void test_socket_file(void **state)
{
    (void)state;
    start(NULL);
    struct stat st;
    assert_int_equal(stat(F->path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0660);
    char run[160];
    snprintf(run, sizeof(run), "%s/run", F->dir);
    assert_int_equal(stat(run, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0750);

    /* A second server refuses while the first answers. */
    varlink_server *two = NULL;
    varlink_server_options o = {0};
    assert_int_equal(varlink_server_new(&F->loop, &o, &two), 0);
    char *err = NULL;
    assert_int_equal(varlink_server_listen(two, F->path, 0660, (gid_t)-1, &err), -EADDRINUSE);
    assert_non_null(strstr(err, "already running"));
    assert_non_null(strstr(err, F->path));
    free(err);

    /* A stale socket file (nobody listening) is replaced. */
    varlink_server_free(F->srv);
    F->srv = NULL;
    uv_run(&F->loop, UV_RUN_NOWAIT);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, F->path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_int_equal(varlink_server_listen(two, F->path, 0660, (gid_t)-1, &err), 0);
    F->srv = two;
    client *c = cl_connect();
    cl_send(c, "{\"method\":\"org.varlink.service.GetInfo\"}");
    cJSON_Delete(cl_recv(c));
    cl_free(c);

    /* Something that is not a socket is never removed. */
    varlink_server *three = NULL;
    assert_int_equal(varlink_server_new(&F->loop, &o, &three), 0);
    char other[200];
    snprintf(other, sizeof(other), "%s/plain", F->dir);
    fd = open(other, O_CREAT | O_WRONLY, 0600);
    close(fd);
    assert_int_equal(varlink_server_listen(three, other, 0660, (gid_t)-1, &err), -EEXIST);
    assert_non_null(strstr(err, "not a socket"));
    free(err);
    assert_int_equal(access(other, F_OK), 0);
    unlink(other);
    varlink_server_free(three);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test_setup_teardown(test_byte_by_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_in_one_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_unframed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_framed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_parameters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oneway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_more_continues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_gone_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_interface, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_privileged_uncapped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve, setup, teardown),
        cmocka_unit_test_setup_teardown(test_total_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_reader_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_64mib, setup, teardown),
        cmocka_unit_test_setup_teardown(test_500_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_one_at_a_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_output_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stalled_stream_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_work_per_turn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quick_call_not_queued, setup, teardown),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test_setup_teardown(test_socket_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
