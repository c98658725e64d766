/* test-deps: varlink control uv cjson */
/* vlclient: against a scripted raw server thread (exact bytes: fragments, several replies in
 * one write, garbage, silence, hang-ups) and against the real io.batchd server running its
 * libuv loop in a second thread. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "batchd/control.h"
#include "batchd/util.h"
#include "batchd/vlclient.h"

typedef void (*script_fn)(int fd);

typedef struct fixture {
    char dir[64];
    char path[128];
    int lfd;
    pthread_t thread;
    bool running;
    script_fn script;
    char got[4096]; /* the first message the server read */
} fixture;

static fixture *F;

static void read_message(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, 1);
        if (n <= 0 || buf[len] == '\0')
            break;
        len++;
    }
    buf[len] = '\0';
}

static void write_str(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t n = write(fd, s, len);
        if (n <= 0)
            return;
        s += n;
        len -= (size_t)n;
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    int fd = accept(F->lfd, NULL, NULL);
    if (fd >= 0) {
        F->script(fd);
        close(fd);
    }
    return NULL;
}

static void serve(script_fn fn)
{
    F->script = fn;
    assert_int_equal(pthread_create(&F->thread, NULL, server_main, NULL), 0);
    F->running = true;
}

static int setup(void **state)
{
    F = calloc(1, sizeof(*F));
    strcpy(F->dir, "/tmp/test_vlclient.XXXXXX");
    assert_non_null(mkdtemp(F->dir));
    snprintf(F->path, sizeof(F->path), "%s/sock", F->dir);
    F->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, F->path);
    assert_int_equal(bind(F->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(F->lfd, 8), 0);
    *state = F;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (F->running)
        pthread_join(F->thread, NULL);
    close(F->lfd);
    unlink(F->path);
    rmdir(F->dir);
    free(F);
    return 0;
}

/* ---------------------------------------------------------------- scripts */

static void s_fragments(int fd)
{
    read_message(fd, F->got, sizeof(F->got));
    static const char reply[] = "{\"parameters\":{\"answer\":42}}";
    for (size_t i = 0; i < sizeof(reply); i += 5) /* includes the NUL */
        write_str(fd, reply + i, sizeof(reply) - i < 5 ? sizeof(reply) - i : 5);
    char more[64];
    read_message(fd, more, sizeof(more)); /* wait for the client to hang up */
}

static void s_stream(int fd)
{
    read_message(fd, F->got, sizeof(F->got));
    static const char replies[] =
        "{\"parameters\":{\"n\":1},\"continues\":true}\0"
        "{\"parameters\":{\"n\":2},\"continues\":true}\0"
        "{\"error\":\"io.batchd.NoSuchJob\",\"parameters\":{\"job\":\"x\"}}";
    write_str(fd, replies, sizeof(replies));
}

static void s_hangup(int fd)
{
    read_message(fd, F->got, sizeof(F->got));
}

static void s_silent(int fd)
{
    read_message(fd, F->got, sizeof(F->got));
    char more[64];
    read_message(fd, more, sizeof(more)); /* until the client gives up and closes */
}

static void s_garbage(int fd)
{
    read_message(fd, F->got, sizeof(F->got));
    write_str(fd, "not json", 9);
    read_message(fd, F->got, sizeof(F->got));
    write_str(fd, "[1,2]", 6);
    read_message(fd, F->got, sizeof(F->got));
    write_str(fd, "{\"error\":5}", 12);
    char more[64];
    read_message(fd, more, sizeof(more));
}

static void s_huge(int fd)
{
    read_message(fd, F->got, sizeof(F->got));
    char big[4096];
    memset(big, 'h', sizeof(big));
    write_str(fd, big, sizeof(big));
    char more[64];
    read_message(fd, more, sizeof(more));
}

static void s_refuse(int fd)
{
    /* Like the server at its connection cap: an error, then gone, without reading. */
    static const char e[] =
        "{\"error\":\"io.batchd.TooManyConnections\",\"parameters\":{\"limit\":1}}";
    write_str(fd, e, sizeof(e));
    shutdown(fd, SHUT_RDWR);
}

/* ---------------------------------------------------------------- tests */

static void test_call_fragmented_reply(void **state)
{
    (void)state;
    serve(s_fragments);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "job", "alpha");
    vlclient_reply r;
    assert_int_equal(vlclient_call(c, "io.batchd.GetJob", p, 5000, &r), 0);
    cJSON_Delete(p);
    assert_null(r.error);
    assert_false(r.continues);
    assert_int_equal(json_int64(r.parameters, "answer", 0), 42);
    vlclient_reply_clear(&r);
    vlclient_free(c);
    pthread_join(F->thread, NULL);
    F->running = false;
    cJSON *sent = cJSON_Parse(F->got);
    assert_string_equal(json_str(sent, "method"), "io.batchd.GetJob");
    assert_string_equal(json_str(cJSON_GetObjectItem(sent, "parameters"), "job"), "alpha");
    assert_null(cJSON_GetObjectItem(sent, "more"));
    cJSON_Delete(sent);
}

static void test_stream_and_error(void **state)
{
    (void)state;
    serve(s_stream);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    assert_int_equal(vlclient_send(c, "io.batchd.Watch", NULL, VLCLIENT_MORE), 0);
    vlclient_reply r;
    for (int i = 1; i <= 2; i++) {
        assert_int_equal(vlclient_recv(c, 5000, &r), 0);
        assert_true(r.continues);
        assert_int_equal(json_int64(r.parameters, "n", 0), i);
        vlclient_reply_clear(&r);
    }
    assert_int_equal(vlclient_recv(c, 5000, &r), 0);
    assert_string_equal(r.error, "io.batchd.NoSuchJob");
    assert_string_equal(json_str(r.parameters, "job"), "x");
    vlclient_reply_clear(&r);
    /* Then the server hung up. */
    assert_int_equal(vlclient_recv(c, 5000, &r), -ECONNRESET);
    vlclient_free(c);
    pthread_join(F->thread, NULL);
    F->running = false;
    cJSON *sent = cJSON_Parse(F->got);
    assert_true(json_bool(sent, "more", false));
    cJSON_Delete(sent);
}

static void test_hangup(void **state)
{
    (void)state;
    serve(s_hangup);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    vlclient_reply r;
    assert_int_equal(vlclient_call(c, "io.batchd.GetInfo", NULL, 5000, &r), -ECONNRESET);
    vlclient_free(c);
}

static void test_timeout(void **state)
{
    (void)state;
    serve(s_silent);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    vlclient_reply r;
    assert_int_equal(vlclient_send(c, "io.batchd.GetInfo", NULL, 0), 0);
    assert_int_equal(vlclient_recv(c, 0, &r), -EAGAIN);
    int64_t t0 = time_mono_ms();
    assert_int_equal(vlclient_recv(c, 150, &r), -ETIMEDOUT);
    assert_true(time_mono_ms() - t0 >= 140);
    vlclient_free(c);
}

static void test_bad_replies(void **state)
{
    (void)state;
    serve(s_garbage);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    vlclient_reply r;
    assert_int_equal(vlclient_call(c, "a.B", NULL, 5000, &r), -EBADMSG);
    assert_int_equal(vlclient_call(c, "a.B", NULL, 5000, &r), -EBADMSG);
    assert_int_equal(vlclient_call(c, "a.B", NULL, 5000, &r), -EBADMSG);
    vlclient_free(c);
}

static void test_reply_too_large(void **state)
{
    (void)state;
    serve(s_huge);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    vlclient_set_max_reply(c, 1024);
    vlclient_reply r;
    assert_int_equal(vlclient_call(c, "a.B", NULL, 5000, &r), -EMSGSIZE);
    vlclient_free(c);
}

static void test_refused_connection_error_is_read(void **state)
{
    (void)state;
    serve(s_refuse);
    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(F->path, 2000, &c), 0);
    pthread_join(F->thread, NULL); /* the server has written and hung up */
    F->running = false;
    vlclient_reply r;
    assert_int_equal(vlclient_call(c, "io.batchd.GetInfo", NULL, 5000, &r), 0);
    assert_string_equal(r.error, "io.batchd.TooManyConnections");
    vlclient_reply_clear(&r);
    vlclient_free(c);
}

static void test_connect_errors(void **state)
{
    (void)state;
    vlclient *c = NULL;
    char path[200];
    snprintf(path, sizeof(path), "%s/missing", F->dir);
    assert_int_equal(vlclient_connect(path, 1000, &c), -ENOENT);
    assert_null(c);
    /* A socket file nobody listens on. */
    snprintf(path, sizeof(path), "%s/stale", F->dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_int_equal(vlclient_connect(path, 1000, &c), -ECONNREFUSED);
    unlink(path);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    assert_int_equal(vlclient_connect(longp, 1000, &c), -ENAMETOOLONG);
}

/* ---------------------------------------------------------------- against the real server */

typedef struct live {
    uv_loop_t loop;
    uv_async_t stop;
    control *ctl;
} live;

static cJSON *live_info(void *ud)
{
    (void)ud;
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "version", "live");
    return p;
}

static cJSON *live_list(void *ud, const char *const *states, size_t n, size_t limit)
{
    (void)ud;
    (void)states;
    (void)n;
    (void)limit;
    cJSON *a = cJSON_CreateArray();
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", "one");
    cJSON_AddItemToArray(a, j);
    return a;
}

static void on_stop(uv_async_t *a)
{
    live *l = a->data;
    control_stop(l->ctl);
    uv_close((uv_handle_t *)a, NULL);
}

static void *live_main(void *arg)
{
    live *l = arg;
    uv_run(&l->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void test_against_server(void **state)
{
    (void)state;
    live l = {0};
    assert_int_equal(uv_loop_init(&l.loop), 0);
    char path[200];
    snprintf(path, sizeof(path), "%s/io.batchd", F->dir);
    control_ops ops = {.get_info = live_info, .list_jobs = live_list};
    control_options o = {.socket_path = path};
    char *err = NULL;
    assert_int_equal(control_start(&l.loop, &o, &ops, &l.ctl, &err), 0);
    uv_async_init(&l.loop, &l.stop, on_stop);
    l.stop.data = &l;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, live_main, &l), 0);

    vlclient *c = NULL;
    assert_int_equal(vlclient_connect(path, 2000, &c), 0);
    vlclient_reply r;
    assert_int_equal(vlclient_call(c, "io.batchd.GetInfo", NULL, 5000, &r), 0);
    assert_null(r.error);
    assert_string_equal(json_str(r.parameters, "version"), "live");
    vlclient_reply_clear(&r);
    assert_int_equal(vlclient_call(c, "io.batchd.Nope", NULL, 5000, &r), 0);
    assert_string_equal(r.error, "org.varlink.service.MethodNotFound");
    vlclient_reply_clear(&r);
    assert_int_equal(vlclient_send(c, "io.batchd.Watch", NULL, VLCLIENT_MORE), 0);
    assert_int_equal(vlclient_recv(c, 5000, &r), 0);
    assert_true(r.continues);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(r.parameters, "jobs")), 1);
    vlclient_reply_clear(&r);
    /* Stopping the daemon ends the stream with a hang-up. */
    uv_async_send(&l.stop);
    assert_int_equal(vlclient_recv(c, 5000, &r), -ECONNRESET);
    vlclient_free(c);
    pthread_join(t, NULL);
    assert_int_equal(uv_loop_close(&l.loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_call_fragmented_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_and_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hangup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_connection_error_is_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_against_server, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
