/* test-deps: uv */
/* notify: a real AF_UNIX datagram socket stands in for systemd's NOTIFY_SOCKET; the tests
 * read what the module sent and, for the watchdog, when it arrived. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "batchd/notify.h"
#include "batchd/util.h"

#define MAX_MSGS 256

typedef struct sink {
    char dir[64];
    char path[128];
    int fd;
    uv_poll_t poll;
    bool polling;
    size_t count;
    char *msgs[MAX_MSGS];
    int64_t at_ms[MAX_MSGS];
} sink;

static void sink_store(sink *s, const char *buf, size_t len)
{
    assert_true(s->count < MAX_MSGS);
    s->msgs[s->count] = xstrndup(buf, len);
    s->at_ms[s->count] = time_mono_ms();
    s->count++;
}

/* Reads every datagram waiting on the socket. */
static void sink_drain(sink *s)
{
    char buf[4096];
    for (;;) {
        ssize_t n = recv(s->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            return;
        }
        sink_store(s, buf, (size_t)n);
    }
}

static void sink_clear(sink *s)
{
    for (size_t i = 0; i < s->count; i++)
        free(s->msgs[i]);
    s->count = 0;
}

static sink *sink_new(void)
{
    sink *s = xcalloc(1, sizeof(*s));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(s->dir, sizeof(s->dir), "/tmp/test_notify.XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof(s->path), "%s/notify", s->dir);
    strlcpy_bd(sa.sun_path, s->path, sizeof(sa.sun_path));
    s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(setenv("NOTIFY_SOCKET", s->path, 1), 0);
    return s;
}

static void sink_free(sink *s)
{
    if (!s)
        return;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    sink_clear(s);
    close(s->fd);
    unlink(s->path);
    rmdir(s->dir);
    free(s);
}

/* Exactly one message arrived since the last clear, and it is want. */
static void expect_one(sink *s, const char *want)
{
    sink_drain(s);
    assert_int_equal(s->count, 1);
    assert_string_equal(s->msgs[0], want);
    sink_clear(s);
}

static void expect_none(sink *s)
{
    sink_drain(s);
    assert_int_equal(s->count, 0);
}

static size_t count_msgs(const sink *s, const char *want)
{
    size_t n = 0;
    for (size_t i = 0; i < s->count; i++)
        n += strcmp(s->msgs[i], want) == 0;
    return n;
}

static void on_sink_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    assert_int_equal(status, 0);
    sink_drain(p->data);
}

static void on_deadline(uv_timer_t *t)
{
    (void)t;
}

/* Runs loop for window_ms of real time, collecting datagrams as they arrive (so their
 * arrival times are the loop's, not the end of the window). */
static void run_loop_for(uv_loop_t *loop, sink *s, int64_t window_ms)
{
    uv_timer_t deadline;
    int64_t end = time_mono_ms() + window_ms;
    assert_int_equal(uv_poll_init(loop, &s->poll, s->fd), 0);
    s->poll.data = s;
    assert_int_equal(uv_poll_start(&s->poll, UV_READABLE, on_sink_readable), 0);
    assert_int_equal(uv_timer_init(loop, &deadline), 0);
    /* A repeating wake-up keeps uv_run from blocking for good once the window is over (the
     * socket alone may stay silent); the monotonic clock decides when to stop. */
    assert_int_equal(uv_timer_start(&deadline, on_deadline, 10, 10), 0);
    while (time_mono_ms() < end)
        uv_run(loop, UV_RUN_ONCE);
    sink_drain(s);
    uv_close((uv_handle_t *)&s->poll, NULL);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* Closes the notify timer and checks the loop is left with no handle at all. */
static void finish_loop(uv_loop_t *loop)
{
    int r = UV_EBUSY;
    notify_close();
    for (int i = 0; i < 10 && r == UV_EBUSY; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        r = uv_loop_close(loop);
    }
    assert_int_equal(r, 0);
}

static void set_watchdog(uint64_t usec, pid_t pid)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, usec);
    assert_int_equal(setenv("WATCHDOG_USEC", buf, 1), 0);
    snprintf(buf, sizeof(buf), "%ld", (long)pid);
    assert_int_equal(setenv("WATCHDOG_PID", buf, 1), 0);
}

static void test_ready_stopping_extend(void **state)
{
    (void)state;
    sink *s = sink_new();
    notify_ready();
    expect_one(s, "READY=1");
    notify_stopping();
    expect_one(s, "STOPPING=1");
    notify_extend_timeout(90000000);
    expect_one(s, "EXTEND_TIMEOUT_USEC=90000000");
    sink_free(s);
}

static void test_status_sent_only_when_changed(void **state)
{
    (void)state;
    sink *s = sink_new();
    notify_status("%d active, %d done, %d failed", 3, 120, 2);
    expect_one(s, "STATUS=3 active, 120 done, 2 failed");
    notify_status("%d active, %d done, %d failed", 3, 120, 2);
    expect_none(s);
    notify_status("%d active, %d done, %d failed", 2, 121, 2);
    expect_one(s, "STATUS=2 active, 121 done, 2 failed");
    /* After close the last status is forgotten: the next one is sent even if equal. */
    notify_close();
    notify_status("%d active, %d done, %d failed", 2, 121, 2);
    expect_one(s, "STATUS=2 active, 121 done, 2 failed");
    notify_close();
    sink_free(s);
}

static void test_status_is_one_line(void **state)
{
    (void)state;
    sink *s = sink_new();
    notify_status("job %s failed", "x\nREADY=1\r");
    expect_one(s, "STATUS=job x READY=1  failed");
    notify_close();
    sink_free(s);
}

static uint64_t mono_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void test_reloading_carries_monotonic_usec(void **state)
{
    (void)state;
    sink *s = sink_new();
    uint64_t before = mono_usec();
    notify_reloading();
    uint64_t after = mono_usec();
    sink_drain(s);
    assert_int_equal(s->count, 1);
    static const char prefix[] = "RELOADING=1\nMONOTONIC_USEC=";
    assert_memory_equal(s->msgs[0], prefix, strlen(prefix));
    const char *digits = s->msgs[0] + strlen(prefix);
    char *end = NULL;
    errno = 0;
    uint64_t usec = strtoull(digits, &end, 10);
    assert_int_equal(errno, 0);
    assert_true(end > digits);
    assert_int_equal(*end, '\0');
    assert_true(usec >= before);
    assert_true(usec <= after);
    sink_clear(s);
    notify_ready();
    expect_one(s, "READY=1");
    sink_free(s);
}

/* The repeat of the watchdog's timer: the one unreferenced active timer on the loop. */
static void watchdog_repeat(uv_handle_t *h, void *arg)
{
    if (h->type == UV_TIMER && uv_is_active(h) && !uv_has_ref(h))
        *(uint64_t *)arg = uv_timer_get_repeat((uv_timer_t *)h);
}

static void test_watchdog_pings_every_half_interval(void **state)
{
    (void)state;
    uv_loop_t loop;
    sink *s = sink_new();
    assert_int_equal(uv_loop_init(&loop), 0);
    set_watchdog(200000, getpid()); /* 200 ms: pings expected every 100 ms */
    assert_int_equal(notify_init(&loop), 0);
    int64_t start = time_mono_ms();
    run_loop_for(&loop, s, 1200);
    size_t pings = count_msgs(s, "WATCHDOG=1");
    assert_int_equal(pings, s->count);
    /* Pings every 100 ms: the loop's timer repeats at half the interval. How many arrive in
     * the window only bounds them from above (a loaded machine wakes the loop late, which
     * makes fewer): not more than 12, and never faster than every 100 ms on average. */
    uint64_t repeat = 0;
    uv_walk(&loop, watchdog_repeat, &repeat);
    assert_int_equal(repeat, 100);
    if (pings < 2 || pings > 13)
        fail_msg("%zu watchdog pings in 1200 ms, expected up to 12", pings);
    int64_t mean_gap = (s->at_ms[pings - 1] - s->at_ms[0]) / (int64_t)(pings - 1);
    if (mean_gap < 90)
        fail_msg("watchdog pings every %" PRId64 " ms on average, expected 100", mean_gap);
    /* The first ping comes after half an interval, not at once (that would not prove the
     * loop is alive). */
    int64_t first = s->at_ms[0] - start;
    if (first < 80)
        fail_msg("first ping after %" PRId64 " ms, expected 100", first);
    sink_clear(s);

    /* Closing stops the pings. A ping sent just before the close may still sit in the
     * socket: drain first, then nothing more may come. */
    notify_close();
    run_loop_for(&loop, s, 50);
    sink_clear(s);
    run_loop_for(&loop, s, 300);
    assert_int_equal(s->count, 0);
    finish_loop(&loop);
    sink_free(s);
}

static void count_timers(uv_handle_t *h, void *arg)
{
    size_t *n = arg;
    if (h->type == UV_TIMER && uv_is_active(h) && !uv_has_ref(h))
        (*n)++;
}

static void test_watchdog_timer_does_not_hold_the_loop(void **state)
{
    (void)state;
    uv_loop_t loop;
    size_t unref_active = 0;
    sink *s = sink_new();
    assert_int_equal(uv_loop_init(&loop), 0);
    set_watchdog(10000000, getpid());
    assert_int_equal(notify_init(&loop), 0);
    uv_walk(&loop, count_timers, &unref_active);
    assert_int_equal(unref_active, 1);
    assert_int_equal(uv_loop_alive(&loop), 0);
    /* A second init while the timer is open is refused. */
    assert_int_equal(notify_init(&loop), -EALREADY);
    finish_loop(&loop);
    /* Once closed, init works again. */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(notify_init(&loop), 0);
    unref_active = 0;
    uv_walk(&loop, count_timers, &unref_active);
    assert_int_equal(unref_active, 1);
    finish_loop(&loop);
    sink_free(s);
}

static void test_watchdog_off_for_another_pid(void **state)
{
    (void)state;
    uv_loop_t loop;
    size_t unref_active = 0;
    sink *s = sink_new();
    assert_int_equal(uv_loop_init(&loop), 0);
    set_watchdog(200000, getpid() + 1); /* meant for some other process */
    assert_int_equal(notify_init(&loop), 0);
    uv_walk(&loop, count_timers, &unref_active);
    assert_int_equal(unref_active, 0);
    run_loop_for(&loop, s, 300);
    assert_int_equal(count_msgs(s, "WATCHDOG=1"), 0);
    finish_loop(&loop);
    sink_free(s);
}

static void test_watchdog_off_without_watchdog_usec(void **state)
{
    (void)state;
    uv_loop_t loop;
    size_t unref_active = 0;
    sink *s = sink_new();
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(notify_init(&loop), 0);
    uv_walk(&loop, count_timers, &unref_active);
    assert_int_equal(unref_active, 0);
    finish_loop(&loop);
    sink_free(s);
}

static void test_malformed_watchdog_usec_is_an_error(void **state)
{
    (void)state;
    uv_loop_t loop;
    sink *s = sink_new();
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(setenv("WATCHDOG_USEC", "soon", 1), 0);
    assert_true(notify_init(&loop) < 0);
    finish_loop(&loop);
    sink_free(s);
}

static void test_without_notify_socket_nothing_is_sent(void **state)
{
    (void)state;
    sink *s = sink_new();
    unsetenv("NOTIFY_SOCKET");
    notify_ready();
    notify_status("quiet");
    notify_reloading();
    notify_stopping();
    notify_extend_timeout(1);
    expect_none(s);
    notify_close();
    notify_close(); /* twice, and without init: harmless */
    sink_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_stopping_extend),
        cmocka_unit_test(test_status_sent_only_when_changed),
        cmocka_unit_test(test_status_is_one_line),
        cmocka_unit_test(test_reloading_carries_monotonic_usec),
        cmocka_unit_test(test_watchdog_pings_every_half_interval),
        cmocka_unit_test(test_watchdog_timer_does_not_hold_the_loop),
        cmocka_unit_test(test_watchdog_off_for_another_pid),
        cmocka_unit_test(test_watchdog_off_without_watchdog_usec),
        cmocka_unit_test(test_malformed_watchdog_usec_is_an_error),
        cmocka_unit_test(test_without_notify_socket_nothing_is_sent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
