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
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

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

/* ---- the two phases of a batch, seen from fsync ---- */

enum { TWO_N = 70 }; /* more than store.c opens at once, so two rounds of begin/commit */

static const char *two_jobs;      /* the jobs directory under test */
static char two_paths[TWO_N][96]; /* the records' final paths */
static size_t two_file_fsyncs;    /* regular files fsynced so far */
static size_t two_tmp_at_first;   /* temp files present at the first file fsync */
static size_t two_fail_at;        /* the record whose file fsync fails with EIO; TWO_N: none */
static char two_ids[TWO_N][16];   /* the records' ids */

static size_t count_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        n += len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0;
    }
    closedir(d);
    return n;
}

/* A file is fsynced before it is renamed into place, and the directory after every file. */
static int two_phase_hook(int fd)
{
    struct stat st, at;
    assert_int_equal(fstat(fd, &st), 0);
    if (S_ISDIR(st.st_mode)) {
        assert_int_equal(two_file_fsyncs, TWO_N);
        return 0;
    }
    if (two_file_fsyncs++ == 0)
        two_tmp_at_first = count_tmp(two_jobs);
    for (size_t i = 0; i < TWO_N; i++)
        if (stat(two_paths[i], &at) == 0)
            assert_false(at.st_ino == st.st_ino);
    return two_fail_at < TWO_N && fsync_fd_path_has(fd, two_ids[two_fail_at]) ? EIO : 0;
}

static int two_dir_fails(int fd)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    return S_ISDIR(st.st_mode) ? EIO : 0;
}

/* Every record of a batch is fsynced once, before its rename and before the one directory
 * fsync; the writes are all begun before the first fsync waits; a record whose fsync fails
 * fails alone, keeps its old content and leaves no temp file, and a failed directory fsync
 * fails every record. */
static void test_write_batch_phases(void **state)
{
    (void)state;
    char tmpl[] = "/tmp/batchd-store-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    char *err = NULL;
    assert_int_equal(store_init(dir, &err), 0);
    char *jobs = xasprintf("%s/jobs", dir);
    two_jobs = jobs;
    char(*ids)[16] = two_ids;
    store_item items[TWO_N];
    for (size_t i = 0; i < TWO_N; i++) {
        snprintf(ids[i], sizeof ids[i], "J%03zu", i);
        snprintf(two_paths[i], sizeof two_paths[i], "%s/%s.json", jobs, ids[i]);
        assert_int_equal(store_write(dir, ids[i], "{\"old\":1}"), 0);
        items[i] = (store_item){.job_id = ids[i], .text = "{\"new\":1}"};
    }
    two_file_fsyncs = 0;
    /* The last record's commit: a failed temp file's inode is freed and may come back as a
     * later file's, which fsync_count_of would count twice. */
    two_fail_at = TWO_N - 1;
    fsync_count_hook = two_phase_hook;
    fsync_count_start();
    store_write_batch(dir, items, TWO_N);
    fsync_count_stop();
    assert_int_equal(fsync_count_all(), TWO_N + 1);
    assert_int_equal(fsync_count_of(jobs), 1);
    assert_true(two_tmp_at_first > 1);
    for (size_t i = 0; i < TWO_N; i++) {
        assert_int_equal(items[i].rc, i == TWO_N - 1 ? -EIO : 0);
        char *text = NULL;
        assert_int_equal(fsutil_read_file(two_paths[i], 100, true, &text, NULL), 0);
        assert_string_equal(text, i == TWO_N - 1 ? "{\"old\":1}" : "{\"new\":1}");
        free(text);
        if (i != TWO_N - 1)
            assert_int_equal(fsync_count_of(two_paths[i]), 1);
    }
    assert_int_equal(count_tmp(jobs), 0);

    /* The directory's fsync fails: no record counts as written. */
    fsync_count_hook = two_dir_fails;
    fsync_count_start();
    store_write_batch(dir, items, TWO_N);
    fsync_count_stop();
    fsync_count_hook = NULL;
    for (size_t i = 0; i < TWO_N; i++)
        assert_int_equal(items[i].rc, -EIO);
    free(jobs);
    rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_and_load),
        cmocka_unit_test(test_init_fails_clearly),
        cmocka_unit_test(test_write_batch),
        cmocka_unit_test(test_write_batch_phases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
