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
#include <signal.h>
#include <sys/resource.h>
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

/* ---- the journal ---- */

static char *journal_path(const char *dir, unsigned seq)
{
    char *name = xasprintf("jobs/journal.%016x", seq);
    char *path = fsutil_join(dir, name);
    free(name);
    return path;
}

/* A record of job id whose batch_id tells the versions apart. */
static char *record_text(const char *id, const char *batch)
{
    job *j = job_new(id, id, id, 1000);
    if (batch)
        j->batch_id = xstrdup(batch);
    char *text = store_encode(j);
    job_free(j);
    return text;
}

static void journal_put(store_journal *jl, const char *id, const char *batch, uint64_t *closed)
{
    char *text = record_text(id, batch);
    store_item it = {.job_id = id, .text = text};
    uint64_t c = store_journal_append(jl, &it, 1);
    assert_int_equal(it.rc, 0);
    if (closed)
        *closed = c;
    free(text);
}

static char *new_state(void)
{
    char tmpl[] = "/tmp/batchd-store-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    char *err = NULL;
    assert_int_equal(store_init(dir, &err), 0);
    return xstrdup(dir);
}

typedef struct batches {
    strbuf sb;
    int n, bad;
} batches;

static void on_job_batch(void *ud, job *j)
{
    batches *b = ud;
    strbuf_printf(&b->sb, "%s%s=%s", b->n++ ? " " : "", j->id, j->batch_id ? j->batch_id : "-");
    job_free(j);
}

static void on_bad_batch(void *ud, const char *file, const char *reason)
{
    (void)file;
    assert_non_null(reason);
    ((batches *)ud)->bad++;
}

/* The batch_id each loaded job has, "-" for none, in id order, as "ID=BATCH ...". */
static char *loaded_batches(const char *dir, int *bad)
{
    batches b = {0};
    int n = store_load_all(dir, on_job_batch, on_bad_batch, &b);
    assert_int_equal(n, b.n);
    if (bad)
        *bad = b.bad;
    char *out = xstrdup(b.sb.data ? b.sb.data : "");
    strbuf_free(&b.sb);
    return out;
}

/* What the journal holds wins over the record files, newest entry first; a job only in the
 * journal is loaded too; the load brings the files up to date and removes the journal. */
static void test_journal_replay(void **state)
{
    (void)state;
    char *dir = new_state();
    job *a = job_new("01A", "a", "a", 1000);
    a->batch_id = xstrdup("file");
    assert_int_equal(store_save(dir, a), 0);
    job *c = job_new("01C", "c", "c", 1000);
    c->batch_id = xstrdup("file");
    assert_int_equal(store_save(dir, c), 0);

    store_journal *jl = store_journal_new(dir, 0);
    journal_put(jl, "01A", "v1", NULL);
    journal_put(jl, "01B", "only-journal", NULL);
    journal_put(jl, "01A", "v2", NULL);
    store_journal_free(jl); /* a crash: no checkpoint */
    char *j1 = journal_path(dir, 1);
    assert_int_equal(access(j1, F_OK), 0);

    char *got = loaded_batches(dir, NULL);
    assert_string_equal(got, "01A=v2 01B=only-journal 01C=file");
    free(got);
    assert_int_not_equal(access(j1, F_OK), 0); /* checkpointed */
    char *ra = fsutil_join(dir, "jobs/01A.json");
    char *text = NULL;
    assert_int_equal(fsutil_read_file(ra, 1 << 20, true, &text, NULL), 0);
    assert_non_null(strstr(text, "\"v2\""));
    free(text);
    /* And the files alone say the same now. */
    got = loaded_batches(dir, NULL);
    assert_string_equal(got, "01A=v2 01B=only-journal 01C=file");
    free(got);
    free(ra);
    free(j1);
    job_free(a);
    job_free(c);
    rm_rf(dir);
    free(dir);
}

typedef struct pruner {
    const char *dir;
    int removed;
} pruner;

static void prune_each(void *ud, job *j)
{
    pruner *p = ud;
    p->removed += store_remove(p->dir, j->id) == 0;
    job_free(j);
}

/* A record removed while loading (the runner prunes old finished jobs from its each()) stays
 * removed, though its newest version was only in the journal: the load's checkpoint comes
 * first. */
static void test_journal_prune_while_loading(void **state)
{
    (void)state;
    char *dir = new_state();
    store_journal *jl = store_journal_new(dir, 0);
    journal_put(jl, "01A", "v1", NULL);
    store_journal_free(jl);
    pruner p = {.dir = dir};
    assert_int_equal(store_load_all(dir, prune_each, on_bad, &p), 1);
    assert_int_equal(p.removed, 1);
    char *got = loaded_batches(dir, NULL);
    assert_string_equal(got, "");
    free(got);
    rm_rf(dir);
    free(dir);
}

/* One append of the given jobs, every one at version v. */
static void journal_append_all(store_journal *jl, const char *const *ids, size_t n, const char *v)
{
    store_item items[8];
    char *texts[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        texts[i] = record_text(ids[i], v);
        items[i] = (store_item){.job_id = ids[i], .text = texts[i]};
    }
    store_journal_append(jl, items, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(items[i].rc, 0);
        free(texts[i]);
    }
}

/* Where the text of the n-th entry (from 0) of a journal file starts. */
static long entry_text_at(const char *path, int n)
{
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(fsutil_read_file(path, 1 << 20, true, &buf, &len), 0);
    const char *p = buf;
    for (int i = 0; i <= n; i++) {
        p = strstr(p, "BJ1 ");
        assert_non_null(p);
        if (i < n)
            p++;
    }
    long at = (long)(strchr(p, '\n') + 1 - buf);
    free(buf);
    return at;
}

static void flip_byte(const char *path, long at)
{
    FILE *f = fopen(path, "r+");
    assert_non_null(f);
    assert_int_equal(fseek(f, at, SEEK_SET), 0);
    fputc('#', f);
    fclose(f);
}

/* What a crash leaves of a file store_journal_free closed: the same without the end mark
 * written at a clean close (its last line). */
static void unseal(const char *path)
{
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(fsutil_read_file(path, 1 << 20, true, &buf, &len), 0);
    const char *mark = strstr(buf, "BJE ");
    assert_non_null(mark);
    assert_int_equal(strlen(mark), 4 + 16 + 1 + 16 + 1);
    assert_int_equal(truncate(path, mark - buf), 0);
    free(buf);
}

/* A crash part-way through a file's last append: its torn entries are not replayed, anywhere
 * in it (pages reach the disk in no fixed order), and the entries of the appends before it
 * are. Nothing is reported, though a newer file follows. */
static void test_journal_torn_tail(void **state)
{
    (void)state;
    char *dir = new_state();
    store_journal *jl = store_journal_new(dir, 0);
    const char *const first[] = {"01A", "01B"};
    const char *const last[] = {"01A", "01B", "01C"};
    journal_append_all(jl, first, 2, "v1");
    journal_append_all(jl, last, 3, "v2");
    store_journal_free(jl);
    char *j1 = journal_path(dir, 1);
    unseal(j1);
    /* The last append's middle entry lost, its last one cut short, then zeros. */
    flip_byte(j1, entry_text_at(j1, 3) + 5);
    struct stat st;
    assert_int_equal(stat(j1, &st), 0);
    assert_int_equal(truncate(j1, st.st_size - 1), 0);
    FILE *f = fopen(j1, "a");
    assert_non_null(f);
    static const char zeros[512];
    assert_int_equal(fwrite(zeros, 1, sizeof zeros, f), sizeof zeros);
    fclose(f);

    /* A newer file after it (the start's checkpoint failed, say): it is still a torn end, not
     * damage, since journal 1 has no end mark. */
    jl = store_journal_new(dir, 0);
    journal_put(jl, "01C", "v3", NULL);
    store_journal_free(jl);

    int bad = 0;
    char *got = loaded_batches(dir, &bad);
    assert_string_equal(got, "01A=v2 01B=v1 01C=v3");
    assert_int_equal(bad, 0);
    assert_int_not_equal(access(j1, F_OK), 0); /* checkpointed */
    free(got);
    free(j1);
    rm_rf(dir);
    free(dir);
}

/* A hole that lost an acknowledged entry is damage, not a crash: in an earlier append of a
 * file a crash left open (no end mark), anywhere in a file closed cleanly (rotated, or at a
 * stop: it has its end mark), including its last append. It is reported like an unreadable
 * record, what is intact still loads (around the hole too), and the file stays for a person
 * to look at. */
static void test_journal_damage(void **state)
{
    (void)state;
    const char *const ab[] = {"01A", "01B"};
    enum { CRASHED, OLDER, STOPPED };
    static const char *const want[] = {"01A=v3 01B=v2", "01A=v3 01B=v1", "01A=v2 01B=v2"};
    for (int c = CRASHED; c <= STOPPED; c++) {
        char *dir = new_state();
        store_journal *jl = store_journal_new(dir, 0);
        journal_append_all(jl, ab, 2, "v1");
        journal_append_all(jl, ab, 2, "v2");
        if (c == OLDER) {
            store_journal_free(jl); /* rotated: the next append opens journal 2 */
            jl = store_journal_new(dir, 0);
        }
        journal_append_all(jl, ab, 1, "v3");
        store_journal_free(jl);
        char *j1 = journal_path(dir, 1);
        if (c == CRASHED)
            unseal(j1);
        /* CRASHED: 01A's v2, in the second of three appends. OLDER: journal 1's last entry
         * (01B's v2). STOPPED: the last append (01A's v3). */
        flip_byte(j1, entry_text_at(j1, c == CRASHED ? 2 : c == OLDER ? 3 : 4) + 5);

        int bad = 0;
        char *got = loaded_batches(dir, &bad);
        assert_string_equal(got, want[c]);
        assert_int_equal(bad, 1);
        free(got);
        assert_int_equal(access(j1, F_OK), 0); /* kept */
        char *err = NULL;
        assert_int_equal(store_checkpoint(dir, UINT64_MAX, &err), -EBADMSG);
        assert_non_null(err);
        assert_non_null(strstr(err, "journal.0000000000000001 (at byte"));
        free(err);
        free(j1);
        rm_rf(dir);
        free(dir);
    }
}

/* A journal file closes once it holds rotate_bytes; a checkpoint up to its number writes
 * what it holds into the files and removes it, and leaves the newer ones, which still win
 * at the next load. */
static void test_journal_rotate_and_checkpoint(void **state)
{
    (void)state;
    char *dir = new_state();
    store_journal *jl = store_journal_new(dir, 1); /* every append fills a file */
    uint64_t closed = 0;
    journal_put(jl, "01A", "v1", &closed);
    assert_int_equal(closed, 1);
    journal_put(jl, "01A", "v2", &closed);
    assert_int_equal(closed, 2);
    store_journal_free(jl);
    char *j1 = journal_path(dir, 1), *j2 = journal_path(dir, 2);

    char *err = NULL;
    assert_int_equal(store_checkpoint(dir, 1, &err), 0);
    assert_null(err);
    assert_int_not_equal(access(j1, F_OK), 0);
    assert_int_equal(access(j2, F_OK), 0);
    char *ra = fsutil_join(dir, "jobs/01A.json");
    char *text = NULL;
    assert_int_equal(fsutil_read_file(ra, 1 << 20, true, &text, NULL), 0);
    assert_non_null(strstr(text, "\"v1\""));
    free(text);

    char *got = loaded_batches(dir, NULL);
    assert_string_equal(got, "01A=v2");
    free(got);
    assert_int_not_equal(access(j2, F_OK), 0);
    free(ra);
    free(j1);
    free(j2);
    rm_rf(dir);
    free(dir);
}

static int fail_journal_sync(int fd)
{
    return fsync_fd_path_has(fd, "/journal.") ? EIO : 0;
}

/* An append costs one fdatasync whatever its size (and the directory's fsync when it opens
 * a file). A failed one fails the whole batch and closes the file, which is in doubt; the
 * next append opens a new one. A job id that is not a plain name is refused. */
static void test_journal_append_costs_and_failures(void **state)
{
    (void)state;
    char *dir = new_state();
    char *jobs = fsutil_join(dir, "jobs");
    store_journal *jl = store_journal_new(dir, 0);
    enum { N = 50 };
    char ids[N][8];
    char *texts[N];
    store_item items[N];
    for (size_t i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "J%03zu", i);
        texts[i] = record_text(ids[i], "v1");
        items[i] = (store_item){.job_id = ids[i], .text = texts[i]};
    }
    fsync_count_start();
    assert_int_equal(store_journal_append(jl, items, N), 0);
    fsync_count_stop();
    for (size_t i = 0; i < N; i++)
        assert_int_equal(items[i].rc, 0);
    char *j1 = journal_path(dir, 1);
    assert_int_equal(fsync_count_of(j1), 1);
    assert_int_equal(fsync_count_of(jobs), 1);
    assert_int_equal(fsync_count_all(), 2);

    fsync_count_hook = fail_journal_sync;
    fsync_count_start();
    assert_int_equal(store_journal_append(jl, items, 2), 1); /* journal 1 closed */
    fsync_count_stop();
    fsync_count_hook = NULL;
    assert_int_equal(items[0].rc, -EIO);
    assert_int_equal(items[1].rc, -EIO);
    journal_put(jl, "J000", "v2", NULL);
    char *j2 = journal_path(dir, 2);
    assert_int_equal(access(j2, F_OK), 0);

    /* What the journal cannot hold fails alone: the others of the batch are written. */
    char *ok_text = record_text("job-1_x", "v1");
    store_item mixed[] = {{.job_id = "../x", .text = "{}"},
                          {.job_id = "job-1_x", .text = ok_text},
                          {.job_id = "01Q", .text = ""}};
    assert_int_equal(store_journal_append(jl, mixed, 3), 0);
    assert_int_equal(mixed[0].rc, -EINVAL);
    assert_int_equal(mixed[1].rc, 0);
    assert_int_equal(mixed[2].rc, -EINVAL);
    free(ok_text);

    /* A write that fails (here: over the file size limit, as a full disk would) is cut off
     * again and the same file goes on: no new file per failed batch. */
    struct stat before;
    assert_int_equal(stat(j2, &before), 0);
    struct rlimit old_lim, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
    lim = old_lim;
    lim.rlim_cur = (rlim_t)before.st_size + 100;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    assert_int_equal(store_journal_append(jl, items, N), 0);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
    assert_int_equal(items[0].rc, -EFBIG);
    struct stat after;
    assert_int_equal(stat(j2, &after), 0);
    assert_int_equal(after.st_size, before.st_size);
    journal_put(jl, "J001", "v3", NULL);
    char *j3 = journal_path(dir, 3);
    assert_int_not_equal(access(j3, F_OK), 0);
    free(j3);
    store_journal_free(jl);

    /* A name that is not exactly a journal file's is not one (and is left alone). */
    char *stray = fsutil_join(jobs, "journal.00000000000000AB");
    FILE *sf = fopen(stray, "w");
    assert_non_null(sf);
    fclose(sf);

    int bad_loads = 0;
    char *got = loaded_batches(dir, &bad_loads);
    assert_non_null(strstr(got, "J000=v2 J001=v3 J002=v1"));
    assert_non_null(strstr(got, "job-1_x=v1"));
    assert_int_equal(bad_loads, 0);
    free(got);
    assert_int_equal(access(stray, F_OK), 0);
    free(stray);
    for (size_t i = 0; i < N; i++)
        free(texts[i]);
    free(j1);
    free(j2);
    free(jobs);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_and_load),
        cmocka_unit_test(test_init_fails_clearly),
        cmocka_unit_test(test_write_batch),
        cmocka_unit_test(test_write_batch_phases),
        cmocka_unit_test(test_journal_replay),
        cmocka_unit_test(test_journal_torn_tail),
        cmocka_unit_test(test_journal_damage),
        cmocka_unit_test(test_journal_prune_while_loading),
        cmocka_unit_test(test_journal_rotate_and_checkpoint),
        cmocka_unit_test(test_journal_append_costs_and_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
