/* test-deps: runner */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "batchd/runner.h"

/* runner_append_blocker: which job keeps an append from starting (pure; no clock needed). */

#define N  RUNNER_APPEND_NONE
#define U  RUNNER_APPEND_UNKNOWN
#define W  RUNNER_APPEND_WAITING
#define AC RUNNER_APPEND_ACTIVE

static void test_alone_goes(void **state)
{
    (void)state;
    runner_append_slot s[] = {{W, "d1"}};
    assert_int_equal(runner_append_blocker(s, 1, 0), -1);
}

static void test_active_on_same_dataset_blocks_wherever_it_stands(void **state)
{
    (void)state;
    /* Earlier or later in claim order: an append running on the dataset blocks. */
    runner_append_slot s[] = {{W, "d1"}, {AC, "d1"}};
    assert_int_equal(runner_append_blocker(s, 2, 0), 1);
    runner_append_slot t[] = {{AC, "d1"}, {W, "d1"}};
    assert_int_equal(runner_append_blocker(t, 2, 1), 0);
}

static void test_other_datasets_do_not_block(void **state)
{
    (void)state;
    runner_append_slot s[] = {{AC, "d2"}, {W, "d2"}, {N, NULL}, {AC, NULL}, {W, "d1"}};
    assert_int_equal(runner_append_blocker(s, 5, 4), -1);
}

static void test_claim_order_among_waiting(void **state)
{
    (void)state;
    /* Three appends to d1, claimed in this order: the first goes, each later one is
     * blocked by the nearest earlier one. */
    runner_append_slot s[] = {{W, "d1"}, {W, "d1"}, {W, "d1"}};
    assert_int_equal(runner_append_blocker(s, 3, 0), -1);
    assert_int_equal(runner_append_blocker(s, 3, 1), 0);
    assert_int_equal(runner_append_blocker(s, 3, 2), 1);
    /* A later waiting one never blocks an earlier one. */
    runner_append_slot t[] = {{W, "d1"}, {W, "d1"}};
    assert_int_equal(runner_append_blocker(t, 2, 0), -1);
}

static void test_unknown_earlier_blocks_unknown_later_does_not(void **state)
{
    (void)state;
    /* An earlier job not yet validated may append to d1: claim order makes it wait. */
    runner_append_slot s[] = {{U, NULL}, {W, "d1"}, {U, NULL}};
    assert_int_equal(runner_append_blocker(s, 3, 1), 0);
    runner_append_slot t[] = {{N, NULL}, {W, "d1"}, {U, NULL}};
    assert_int_equal(runner_append_blocker(t, 3, 1), -1);
}

static void test_active_wins_over_earlier_waiting(void **state)
{
    (void)state;
    /* The one running is named even when an earlier one waits too. */
    runner_append_slot s[] = {{W, "d1"}, {AC, "d1"}, {W, "d1"}};
    assert_int_equal(runner_append_blocker(s, 3, 2), 1);
    /* Once it is finished, the earlier waiting one is ahead. */
    s[1].kind = N;
    assert_int_equal(runner_append_blocker(s, 3, 2), 0);
    assert_int_equal(runner_append_blocker(s, 3, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alone_goes),
        cmocka_unit_test(test_active_on_same_dataset_blocks_wherever_it_stands),
        cmocka_unit_test(test_other_datasets_do_not_block),
        cmocka_unit_test(test_claim_order_among_waiting),
        cmocka_unit_test(test_unknown_earlier_blocks_unknown_later_does_not),
        cmocka_unit_test(test_active_wins_over_earlier_waiting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
