/* Unit tests of the store: durable records survive a reload, torn temp files are cleaned up,
 * and an unreadable record is reported, not fatal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

#include <cmocka.h>

#include "batchd/fsutil.h"
#include "batchd/store.h"
#include "batchd/util.h"
#include "fsync_count.h"

typedef struct loaded {
    job *jobs[8];
    int n;
    int bad;
} loaded;

static void on_job(void *ud, job *j)
{
    loaded *l = ud;
    if (l->n < 8)
        l->jobs[l->n++] = j;
    else
        job_free(j);
}

static void on_bad(void *ud, const char *file, const char *reason)
{
    (void)file;
    assert_non_null(reason);
    ((loaded *)ud)->bad++;
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static void test_save_and_load(void **state)
{
    (void)state;
    char tmpl[] = "/tmp/batchd-store-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    char *err = NULL;
    assert_int_equal(store_init(dir, &err), 0);

    job *b = job_new("01B", "second", "second", 2000);
    job *a = job_new("01A", "first", "first", 1000);
    a->dataset_id = xstrdup("ds-1");
    a->pending_op = JOB_OP_CREATE_BATCH;
    assert_int_equal(store_save(dir, b), 0);
    assert_int_equal(store_save(dir, a), 0);
    /* Saving again replaces the record. */
    a->batch_id = xstrdup("b-1");
    assert_int_equal(store_save(dir, a), 0);

    /* A temp file left by a crash mid-write and a corrupt record. */
    char *jobs = fsutil_join(dir, "jobs");
    char *tmp = fsutil_join(jobs, ".01C.json.abc123.tmp");
    char *corrupt = fsutil_join(jobs, "01Z.json");
    FILE *fp = fopen(tmp, "w");
    fputs("{", fp);
    fclose(fp);
    fp = fopen(corrupt, "w");
    fputs("{\"id\": ", fp);
    fclose(fp);
    assert_int_equal(store_init(dir, &err), 0);
    assert_int_not_equal(access(tmp, F_OK), 0);

    loaded l = {0};
    assert_int_equal(store_load_all(dir, on_job, on_bad, &l), 2);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.bad, 1);
    assert_string_equal(l.jobs[0]->id, "01A"); /* id order */
    assert_string_equal(l.jobs[0]->dataset_id, "ds-1");
    assert_string_equal(l.jobs[0]->batch_id, "b-1");
    assert_int_equal(l.jobs[0]->pending_op, JOB_OP_CREATE_BATCH);
    assert_string_equal(l.jobs[1]->name, "second");
    /* The corrupt record stays for a person to look at. */
    assert_int_equal(access(corrupt, F_OK), 0);

    for (int i = 0; i < l.n; i++)
        job_free(l.jobs[i]);
    /* A removed record is gone for the next load. */
    assert_int_equal(store_remove(dir, "01B"), 0);
    assert_int_equal(store_remove(dir, "01B"), -ENOENT);
    loaded l2 = {0};
    assert_int_equal(store_load_all(dir, on_job, on_bad, &l2), 1);
    assert_string_equal(l2.jobs[0]->id, "01A");
    job_free(l2.jobs[0]);
    job_free(a);
    job_free(b);
    free(tmp);
    free(corrupt);
    free(jobs);
    rm_rf(dir);
}

static void test_init_fails_clearly(void **state)
{
    (void)state;
    char *err = NULL;
    assert_true(store_init("/proc/version/nope", &err) < 0);
    assert_non_null(err);
    assert_non_null(strstr(err, "/proc/version/nope"));
    free(err);
}

/* A batch of records costs one fsync of the jobs directory (and one per record for its
 * content); a record that cannot be written fails alone. */
static void test_write_batch(void **state)
{
    (void)state;
    char tmpl[] = "/tmp/batchd-store-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    char *err = NULL;
    assert_int_equal(store_init(dir, &err), 0);
    job *a = job_new("01A", "first", "first", 1000);
    job *b = job_new("01B", "second", "second", 2000);
    char *ta = store_encode(a), *tb = store_encode(b);
    store_item items[] = {
        {.job_id = "01A", .text = ta},
        {.job_id = "no/such/dir", .text = tb},
        {.job_id = "01B", .text = tb},
    };
    char *jobs = xasprintf("%s/jobs", dir);
    fsync_count_start();
    store_write_batch(dir, items, 3);
    fsync_count_stop();
    assert_int_equal(items[0].rc, 0);
    assert_int_equal(items[1].rc, -ENOENT);
    assert_int_equal(items[2].rc, 0);
    assert_int_equal(fsync_count_of(jobs), 1);
    assert_int_equal(fsync_count_all(), 3);

    loaded l = {0};
    assert_int_equal(store_load_all(dir, on_job, on_bad, &l), 2);
    assert_int_equal(l.bad, 0);
    assert_string_equal(l.jobs[0]->id, "01A");
    assert_string_equal(l.jobs[1]->name, "second");
    for (int i = 0; i < l.n; i++)
        job_free(l.jobs[i]);

    /* store_write is a batch of one. */
    fsync_count_start();
    assert_int_equal(store_write(dir, "01A", tb), 0);
    fsync_count_stop();
    assert_int_equal(fsync_count_of(jobs), 1);
    assert_int_equal(fsync_count_all(), 2);
    store_write_batch(dir, NULL, 0); /* nothing to do: no fsync either */

    free(jobs);
    free(ta);
    free(tb);
    job_free(a);
    job_free(b);
    rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_and_load),
        cmocka_unit_test(test_init_fails_clearly),
        cmocka_unit_test(test_write_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
