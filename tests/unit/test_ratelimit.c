/* Unit tests of ratelimit: burst, refill, waits, unlimited rates and reconfiguration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>

#include <cmocka.h>

#include "batchd/ratelimit.h"

static void test_burst_then_wait(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 5.0, 0.0, 1000); /* burst defaults to the rate: 5 */
    for (int i = 0; i < 5; i++)
        assert_int_equal(ratelimit_take(&rl, 1000), 0);
    /* empty: one token every 200 ms */
    assert_int_equal(ratelimit_take(&rl, 1000), 200);
    /* a refused take takes nothing: the wait shrinks with time */
    assert_int_equal(ratelimit_take(&rl, 1150), 50);
    assert_int_equal(ratelimit_take(&rl, 1200), 0);
    assert_int_equal(ratelimit_take(&rl, 1200), 200);
}

static void test_refill_caps_at_burst(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 10.0, 3.0, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ratelimit_take(&rl, 0), 0);
    assert_true(ratelimit_take(&rl, 0) > 0);
    /* an hour idle refills to the burst (3), not to 36000 */
    int64_t t = 3600000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(ratelimit_take(&rl, t), 0);
    assert_int_equal(ratelimit_take(&rl, t), 100);
    /* partial refill: 50 ms at 10/s is half a token */
    assert_int_equal(ratelimit_take(&rl, t + 50), 50);
    assert_int_equal(ratelimit_take(&rl, t + 100), 0);
}

static void test_fractional_rate(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 3.0, 1.0, 0);
    assert_int_equal(ratelimit_take(&rl, 0), 0);
    int64_t wait = ratelimit_take(&rl, 0);
    assert_int_equal(wait, 334); /* ceil(1000 / 3) */
    /* waiting exactly what was asked always succeeds */
    assert_int_equal(ratelimit_take(&rl, wait), 0);
    /* slow rates: one request every 10 s */
    ratelimit_init(&rl, 0.1, 0.0, 0); /* burst max(1, 0.1) = 1 */
    assert_int_equal(ratelimit_take(&rl, 0), 0);
    assert_int_equal(ratelimit_take(&rl, 0), 10000);
    assert_int_equal(ratelimit_take(&rl, 9999), 1);
    assert_int_equal(ratelimit_take(&rl, 10000), 0);
}

static void test_unlimited(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 0.0, 0.0, 0);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(ratelimit_take(&rl, 0), 0);
    ratelimit_init(&rl, -3.0, 2.0, 0);
    assert_int_equal(ratelimit_take(&rl, 0), 0);
    ratelimit_init(&rl, NAN, 2.0, 0);
    assert_int_equal(ratelimit_take(&rl, 0), 0);
}

static void test_clock_backwards(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 1.0, 1.0, 10000);
    assert_int_equal(ratelimit_take(&rl, 10000), 0);
    /* time going back earns nothing and does not wedge the bucket */
    assert_int_equal(ratelimit_take(&rl, 5000), 1000);
    assert_int_equal(ratelimit_take(&rl, 11000), 0);
}

static void test_set_rate(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 1.0, 1.0, 0);
    assert_int_equal(ratelimit_take(&rl, 0), 0);
    assert_int_equal(ratelimit_take(&rl, 0), 1000);
    /* half a token earned at the old rate is kept; the rest comes at the new rate */
    ratelimit_set_rate(&rl, 10.0, 5.0, 500);
    assert_int_equal(ratelimit_take(&rl, 500), 50);
    assert_int_equal(ratelimit_take(&rl, 550), 0);
    /* a smaller burst caps the tokens already saved */
    ratelimit_set_rate(&rl, 10.0, 5.0, 100000);
    ratelimit_set_rate(&rl, 10.0, 2.0, 100000);
    assert_int_equal(ratelimit_take(&rl, 100000), 0);
    assert_int_equal(ratelimit_take(&rl, 100000), 0);
    assert_int_equal(ratelimit_take(&rl, 100000), 100);
    /* to unlimited and back: starts again with a full bucket */
    ratelimit_set_rate(&rl, 0.0, 0.0, 100000);
    for (int i = 0; i < 100; i++)
        assert_int_equal(ratelimit_take(&rl, 100000), 0);
    ratelimit_set_rate(&rl, 2.0, 2.0, 100000);
    assert_int_equal(ratelimit_take(&rl, 100000), 0);
    assert_int_equal(ratelimit_take(&rl, 100000), 0);
    assert_int_equal(ratelimit_take(&rl, 100000), 500);
}

static void test_burst_below_one(void **state)
{
    (void)state;
    ratelimit rl;
    ratelimit_init(&rl, 4.0, 0.25, 0); /* raised to 1: a token is always reachable */
    assert_int_equal(ratelimit_take(&rl, 0), 0);
    assert_int_equal(ratelimit_take(&rl, 0), 250);
    assert_int_equal(ratelimit_take(&rl, 250), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_wait), cmocka_unit_test(test_refill_caps_at_burst),
        cmocka_unit_test(test_fractional_rate), cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_clock_backwards), cmocka_unit_test(test_set_rate),
        cmocka_unit_test(test_burst_below_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
