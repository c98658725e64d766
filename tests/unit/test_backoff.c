/* Unit tests of backoff: full-jitter bounds, exponent saturation, poll intervals, Retry-After. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <math.h>

#include <cmocka.h>

#include "batchd/backoff.h"
#include "batchd/util.h"

static void test_full_jitter_bounds(void **state)
{
    (void)state;
    /* attempt 0: [0, base] */
    assert_int_equal(backoff_full_jitter(0, 1000, 60000, 2.0, 0), 0);
    assert_int_equal(backoff_full_jitter(0, 1000, 60000, 2.0, UINT64_MAX), 1000);
    /* attempt 3: [0, 8000] */
    assert_int_equal(backoff_full_jitter(3, 1000, 60000, 2.0, UINT64_MAX), 8000);
    /* the middle of the random range lands in the middle of the interval */
    int64_t mid = backoff_full_jitter(3, 1000, 60000, 2.0, UINT64_MAX / 2);
    assert_in_range(mid, 3990, 4010);
    /* capped */
    assert_int_equal(backoff_full_jitter(10, 1000, 60000, 2.0, UINT64_MAX), 60000);
    assert_int_equal(backoff_full_jitter(10, 1000, 60000, 2.0, 0), 0);
}

static void test_full_jitter_overflow(void **state)
{
    (void)state;
    /* 2^4000000000 overflows anything; it must saturate at the cap, never wrap. */
    assert_int_equal(backoff_full_jitter(4000000000u, 1000, 60000, 2.0, UINT64_MAX), 60000);
    assert_int_equal(backoff_full_jitter(UINT32_MAX, 1000, INT64_MAX, 2.0, UINT64_MAX), INT64_MAX);
    assert_int_equal(backoff_full_jitter(63, 1, INT64_MAX, 2.0, UINT64_MAX),
                     (int64_t)9223372036854775807LL);
    int64_t v = backoff_full_jitter(200, 1000, INT64_MAX, 10.0, UINT64_MAX / 3);
    assert_true(v > 0);
    /* a multiplier below 1 or NaN does not shrink the interval below the base */
    assert_int_equal(backoff_full_jitter(5, 1000, 60000, 0.5, UINT64_MAX), 1000);
    assert_int_equal(backoff_full_jitter(5, 1000, 60000, NAN, UINT64_MAX), 1000);
    /* nonsense bases give no delay */
    assert_int_equal(backoff_full_jitter(5, 0, 60000, 2.0, UINT64_MAX), 0);
    assert_int_equal(backoff_full_jitter(5, -5, 60000, 2.0, UINT64_MAX), 0);
}

static void test_full_jitter_spread(void **state)
{
    (void)state;
    /* Over many random values every result stays inside [0, upper] and both halves are hit. */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    int low = 0, high = 0;
    for (int i = 0; i < 10000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t v = backoff_full_jitter(2, 100, 10000, 2.0, x);
        assert_in_range(v, 0, 400);
        if (v < 200)
            low++;
        else
            high++;
    }
    assert_in_range(low, 4500, 5500);
    assert_in_range(high, 4500, 5500);
}

static void test_poll_interval(void **state)
{
    (void)state;
    /* no jitter: the plain schedule 2s 4s 8s ... capped at 60s */
    assert_int_equal(backoff_poll_interval(0, 2000, 60000, 2.0, 0.0, 12345), 2000);
    assert_int_equal(backoff_poll_interval(1, 2000, 60000, 2.0, 0.0, 12345), 4000);
    assert_int_equal(backoff_poll_interval(4, 2000, 60000, 2.0, 0.0, 12345), 32000);
    assert_int_equal(backoff_poll_interval(5, 2000, 60000, 2.0, 0.0, 12345), 60000);
    assert_int_equal(backoff_poll_interval(4000000000u, 2000, 60000, 2.0, 0.0, 1), 60000);
    /* ±10 %: rnd 0 is the low end, UINT64_MAX the high end */
    assert_int_equal(backoff_poll_interval(0, 2000, 60000, 2.0, 0.1, 0), 1800);
    assert_int_equal(backoff_poll_interval(0, 2000, 60000, 2.0, 0.1, UINT64_MAX), 2200);
    assert_int_equal(backoff_poll_interval(9, 2000, 60000, 2.0, 0.1, UINT64_MAX), 66000);
    assert_int_equal(backoff_poll_interval(9, 2000, 60000, 2.0, 0.1, 0), 54000);
    /* never below 1 ms */
    assert_int_equal(backoff_poll_interval(0, 1, 60000, 2.0, 1.0, 0), 1);
    assert_int_equal(backoff_poll_interval(0, 0, 0, 2.0, 0.5, 0), 1);
    /* a jitter fraction above 1 is clamped, so the result is still within max*(1+1) */
    assert_true(backoff_poll_interval(30, 2000, 60000, 2.0, 5.0, UINT64_MAX) <= 120000);
}

static void test_retry_after_seconds(void **state)
{
    (void)state;
    int64_t d = -1;
    assert_int_equal(backoff_parse_retry_after("120", 0, &d), 0);
    assert_int_equal(d, 120000);
    assert_int_equal(backoff_parse_retry_after("  0 ", 0, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(backoff_parse_retry_after("\t7", 0, &d), 0);
    assert_int_equal(d, 7000);
    assert_int_equal(backoff_parse_retry_after("-1", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("1.5", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("12abc", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("   ", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after(NULL, 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("soon", 0, &d), -EINVAL);
    /* overflow of int64 milliseconds */
    assert_int_equal(backoff_parse_retry_after("99999999999999999999", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("9223372036854776", 0, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("9223372036854", 0, &d), 0);
    assert_int_equal(d, 9223372036854000LL);
}

static void test_retry_after_date(void **state)
{
    (void)state;
    int64_t at;
    assert_int_equal(time_parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", &at), 0);
    int64_t d = -1;
    assert_int_equal(backoff_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at - 30000, &d), 0);
    assert_int_equal(d, 30000);
    /* RFC 850 form */
    assert_int_equal(backoff_parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", at - 5000, &d), 0);
    assert_int_equal(d, 5000);
    /* asctime form */
    assert_int_equal(backoff_parse_retry_after("Sun Nov  6 08:49:37 1994", at - 1000, &d), 0);
    assert_int_equal(d, 1000);
    /* a date in the past means: now */
    assert_int_equal(backoff_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + 99000, &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(backoff_parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", at, &d), -EINVAL);
    assert_int_equal(backoff_parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", at, &d), -EINVAL);
}

static void test_retry_delay(void **state)
{
    (void)state;
    bool honoured = true;
    /* attempt 1: within [1, base]; attempt 4: within [1, 8 * base] */
    assert_int_equal(backoff_retry_delay(1, 1000, 60000, NULL, 3600000, 0, 0, &honoured), 1);
    assert_false(honoured);
    assert_int_equal(backoff_retry_delay(1, 1000, 60000, NULL, 3600000, 0, UINT64_MAX, NULL), 1000);
    assert_int_equal(backoff_retry_delay(4, 1000, 60000, NULL, 3600000, 0, UINT64_MAX, NULL), 8000);
    /* Retry-After: never before it, at most base later; an absurd one is bounded */
    int64_t d = backoff_retry_delay(9, 1000, 60000, "30", 3600000, 0, UINT64_MAX / 2, &honoured);
    assert_true(honoured);
    assert_in_range(d, 30000, 31000);
    d = backoff_retry_delay(1, 1000, 60000, "99999999", 3600000, 0, 0, &honoured);
    assert_int_equal(d, 3600000);
    /* garbage is ignored: the backoff applies */
    d = backoff_retry_delay(1, 1000, 60000, "soon", 3600000, 0, UINT64_MAX, &honoured);
    assert_false(honoured);
    assert_int_equal(d, 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_delay),          cmocka_unit_test(test_full_jitter_bounds),
        cmocka_unit_test(test_full_jitter_overflow), cmocka_unit_test(test_full_jitter_spread),
        cmocka_unit_test(test_poll_interval),        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_retry_after_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
