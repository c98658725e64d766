/* test-deps: util */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "batchd/hookq.h"

/* The fake clock: every call gets the time as an argument. */
static int64_t now;

static const hookq_limits limits = {.timeout_ms = 300000, .retries = 3, .max_parallel = 2};

/* The next action, which must be of kind k. */
static hookq_action expect_act(hookq *q, hookq_act_kind k)
{
    hookq_action a = {0};
    assert_true(hookq_next(q, now, &a));
    assert_int_equal(a.kind, k);
    return a;
}

static void expect_nothing(hookq *q)
{
    hookq_action a = {0};
    assert_false(hookq_next(q, now, &a));
}

/* Starts the next run: its start recorded, its process spawned. */
static hookq_action start(hookq *q)
{
    hookq_action a = expect_act(q, HOOKQ_ACT_START);
    hookq_started(q, a.run, now);
    return a;
}

static void test_parallel_cap_and_success(void **state)
{
    (void)state;
    now = 1000;
    hookq *q = hookq_new(&limits);
    int tags[3];
    for (int i = 0; i < 3; i++)
        hookq_add(q, &tags[i], 1, now);
    hookq_action a = start(q);
    assert_ptr_equal(a.ud, &tags[0]);
    assert_int_equal(a.attempt, 1);
    hookq_action b = start(q);
    assert_ptr_equal(b.ud, &tags[1]);
    /* Two slots: the third waits. */
    expect_nothing(q);
    assert_int_equal(hookq_running(q), 2);
    now += 50;
    hookq_result r = hookq_exited(q, a.run, now, 0, 0, false);
    assert_int_equal(r.outcome, HOOKQ_OK);
    assert_false(r.retry);
    assert_int_equal(r.attempt, 1);
    assert_int_equal(r.attempts_max, 4);
    assert_int_equal(hookq_count(q), 2);
    hookq_action c = start(q);
    assert_ptr_equal(c.ud, &tags[2]);
    expect_nothing(q);
    hookq_exited(q, b.run, now, 0, 0, false);
    hookq_exited(q, c.run, now, 0, 0, false);
    assert_int_equal(hookq_count(q), 0);
    assert_int_equal(hookq_wake_at(q), INT64_MAX);
    assert_string_equal(hookq_outcome_name(HOOKQ_TIMEOUT), "timeout");
    hookq_free(q);
}

/* exit 1 is retried after 1 s, 2 s, 4 s; then the run is given up (retries = 3). */
static void test_retry_backoff_then_give_up(void **state)
{
    (void)state;
    now = 0;
    hookq *q = hookq_new(&limits);
    int tag;
    hookq_add(q, &tag, 1, now);
    const int64_t waits[] = {1000, 2000, 4000};
    for (int attempt = 1; attempt <= 3; attempt++) {
        hookq_action a = start(q);
        assert_int_equal(a.attempt, attempt);
        now += 10;
        hookq_result r = hookq_exited(q, a.run, now, 1, 0, false);
        assert_int_equal(r.outcome, HOOKQ_EXIT);
        assert_true(r.retry);
        assert_int_equal(r.attempt, attempt);
        assert_int_equal(r.retry_at, now + waits[attempt - 1]);
        assert_int_equal(hookq_wake_at(q), r.retry_at);
        /* Not before the backoff has passed. */
        now = r.retry_at - 1;
        expect_nothing(q);
        now = r.retry_at;
    }
    hookq_action a = start(q);
    assert_int_equal(a.attempt, 4);
    hookq_result r = hookq_exited(q, a.run, now, 1, 0, false);
    assert_false(r.retry);
    assert_int_equal(r.attempt, 4);
    assert_int_equal(hookq_count(q), 0);
    expect_nothing(q);
    hookq_free(q);
}

/* The backoff doubles up to 30 s; a run that succeeds on a retry is over. */
static void test_backoff_cap(void **state)
{
    (void)state;
    now = 0;
    hookq_limits l = limits;
    l.retries = 8;
    hookq *q = hookq_new(&l);
    hookq_add(q, NULL, 1, now);
    const int64_t waits[] = {1000, 2000, 4000, 8000, 16000, 30000, 30000};
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
        hookq_action a = start(q);
        hookq_result r = hookq_exited(q, a.run, now, 0, 9, false);
        assert_int_equal(r.outcome, HOOKQ_SIGNAL);
        assert_int_equal(r.retry_at - now, waits[i]);
        now = r.retry_at;
    }
    hookq_action a = start(q);
    hookq_result r = hookq_exited(q, a.run, now, 0, 0, false);
    assert_int_equal(r.outcome, HOOKQ_OK);
    assert_false(r.retry);
    assert_int_equal(hookq_count(q), 0);
    hookq_free(q);
}

/* Past hook_timeout: SIGTERM; 10 s later SIGKILL; the run counts as timed out and is
 * retried. */
static void test_timeout_term_then_kill(void **state)
{
    (void)state;
    now = 5000;
    hookq_limits l = limits;
    l.timeout_ms = 2000;
    hookq *q = hookq_new(&l);
    hookq_add(q, NULL, 1, now);
    hookq_action a = start(q);
    assert_int_equal(hookq_wake_at(q), 7000);
    now = 6999;
    expect_nothing(q);
    now = 7000;
    hookq_action t = expect_act(q, HOOKQ_ACT_TERM);
    assert_int_equal(t.run, a.run);
    expect_nothing(q);
    assert_int_equal(hookq_wake_at(q), 7000 + HOOKQ_KILL_AFTER_MS);
    now = 7000 + HOOKQ_KILL_AFTER_MS - 1;
    expect_nothing(q);
    now = 7000 + HOOKQ_KILL_AFTER_MS;
    hookq_action k = expect_act(q, HOOKQ_ACT_KILL);
    assert_int_equal(k.run, a.run);
    expect_nothing(q);
    /* Killed: no more timers until it is reaped. */
    assert_int_equal(hookq_wake_at(q), INT64_MAX);
    hookq_result r = hookq_exited(q, a.run, now, 0, 9, false);
    assert_int_equal(r.outcome, HOOKQ_TIMEOUT);
    assert_true(r.retry);
    assert_int_equal(r.retry_at, now + 1000);
    now = r.retry_at;
    hookq_action b = start(q);
    assert_int_equal(b.attempt, 2);
    /* A run that ends on the SIGTERM is a timeout too. */
    now += 2000;
    expect_act(q, HOOKQ_ACT_TERM);
    r = hookq_exited(q, b.run, now, 143, 0, false);
    assert_int_equal(r.outcome, HOOKQ_TIMEOUT);
    hookq_free(q);
}

/* A run interrupted by a restart is queued again with the attempt it was in; a run that
 * could not be started is retried like a failure; after a stop nothing starts. */
static void test_recovered_run_and_stop(void **state)
{
    (void)state;
    now = 100;
    hookq *q = hookq_new(&limits);
    hookq_add(q, NULL, 2, now);
    hookq_action a = start(q);
    assert_int_equal(a.attempt, 2);
    hookq_result r = hookq_exited(q, a.run, now, 0, 0, true);
    assert_int_equal(r.outcome, HOOKQ_NOT_RUN);
    assert_true(r.retry);
    assert_int_equal(r.retry_at, now + 2000);
    now = r.retry_at;
    hookq_stop(q);
    expect_nothing(q);
    assert_int_equal(hookq_wake_at(q), INT64_MAX);
    assert_int_equal(hookq_count(q), 1);
    hookq_free(q);
}

/* A reload that lowers hook_retries gives up a run already past the new count. */
static void test_reload_limits(void **state)
{
    (void)state;
    now = 0;
    hookq *q = hookq_new(&limits);
    hookq_add(q, NULL, 1, now);
    hookq_action a = start(q);
    hookq_result r = hookq_exited(q, a.run, now, 2, 0, false);
    assert_true(r.retry);
    hookq_limits l = limits;
    l.retries = 0;
    hookq_set_limits(q, &l);
    now = r.retry_at;
    a = start(q);
    r = hookq_exited(q, a.run, now, 2, 0, false);
    assert_false(r.retry);
    assert_int_equal(r.attempts_max, 1);
    hookq_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parallel_cap_and_success),
        cmocka_unit_test(test_retry_backoff_then_give_up),
        cmocka_unit_test(test_backoff_cap),
        cmocka_unit_test(test_timeout_term_then_kill),
        cmocka_unit_test(test_recovered_run_and_stop),
        cmocka_unit_test(test_reload_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
