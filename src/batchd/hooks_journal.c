/* hooks_journal: see hooks_journal.h.
 *
 * At least once, across crashes. Each run (one hook for one finish of one job) has a journal
 * file <state>/hooks/<job id>.<hook>.<finished_at>.json, written atomically and durably
 * (fsutil_write_atomic: fsync of the file and of the directory) on libuv's thread pool:
 *   pending  -> queued, never started
 *   started  -> attempt N was about to be spawned: written BEFORE the spawn
 *   retry    -> attempt N-1 ended badly, N is next: written AFTER the exit
 *   done / gave_up / dropped -> over: written after the last exit
 * At start every pending, started or retry entry is queued again (a started one runs its
 * attempt again), so a run interrupted by a crash, a kill -9 or a stop runs again.
 *
 * The window between "the job finished durably" and "its run is in the journal" is closed
 * at start instead of by making the runner wait: <state>/hooks/<hook>.since holds the time
 * (epoch ms) since which the hook has been configured without a break (written when it
 * becomes configured, removed when it is not). hooks_catch_up queues a run for every
 * finished job whose finished_at is not older than that and whose journal file name is not
 * in the directory listed at start (hj_list: names only, sorted, looked up by bsearch).
 * A job whose finish is durable has a record with finished_at, and the runner loads it, so
 * no finish is missed; a job that finished before its hook was configured is not run for.
 * Journal files that ended are kept as long as the runner keeps finished records (30 days),
 * which is what tells catch-up that a run already happened. Their contents are read on the
 * pool after catch-up (hj_load), so the start reads only the names on the loop. */
#include "hooks_journal.h"

#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Journal entries of runs that ended, older than this, are removed at start (as the runner
 * removes old records: runner_internal.h RUNNER_RECORD_KEEP_MS). */
#define HOOKS_KEEP_MS     (31LL * 86400 * 1000)
#define HOOKS_JOURNAL_MAX (64 * 1024)

static const char *const kind_names[HOOKS_KINDS] = {"on_ready", "on_failed", "on_export"};

const char *hooks_kind_name(hooks_kind k)
{
    return (unsigned)k < HOOKS_KINDS ? kind_names[k] : "?";
}

char *hj_base(const char *job_id, hooks_kind k, int64_t finished_at)
{
    return xasprintf("%s.%s.%" PRId64 ".json", job_id, hooks_kind_name(k), finished_at);
}

void hjentry_free(hjentry *e)
{
    free(e->job_id);
    free(e->job_name);
    free(e->job_state);
    free(e->dir);
    free(e->arg);
    free(e->dataset_id);
    free(e->batch_id);
    memset(e, 0, sizeof *e);
}

/* ---- writes ---- */

typedef struct jwrite {
    uv_work_t w;
    char *path, *text;
    int rc;
    void (*done)(void *ud, int rc);
    void *ud;
} jwrite;

static char *entry_text(const hjentry *e, const char *state)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", e->job_id);
    cJSON_AddStringToObject(o, "job", e->job_name);
    cJSON_AddStringToObject(o, "hook", hooks_kind_name(e->kind));
    cJSON_AddStringToObject(o, "state", state);
    cJSON_AddNumberToObject(o, "attempt", e->attempt);
    cJSON_AddStringToObject(o, "job_state", e->job_state);
    cJSON_AddStringToObject(o, "dir", e->dir);
    cJSON_AddStringToObject(o, "arg", e->arg);
    cJSON_AddStringToObject(o, "dataset_id", e->dataset_id);
    cJSON_AddStringToObject(o, "batch_id", e->batch_id);
    cJSON_AddNumberToObject(o, "finished_at", (double)e->finished_at);
    cJSON_AddNumberToObject(o, "at", (double)time_now_ms());
    char *text = json_print_pretty(o);
    cJSON_Delete(o);
    return text;
}

static void jwrite_work(uv_work_t *w)
{
    jwrite *jw = w->data;
    jw->rc = fsutil_write_atomic(jw->path, jw->text, strlen(jw->text), 0640);
}

static void jwrite_after(uv_work_t *w, int status)
{
    jwrite *jw = w->data;
    int rc = status < 0 ? status : jw->rc;
    void (*done)(void *, int) = jw->done;
    void *ud = jw->ud;
    free(jw->path);
    free(jw->text);
    free(jw);
    done(ud, rc);
}

int hj_write(uv_loop_t *loop, const char *path, const hjentry *e, const char *state,
             void (*done)(void *ud, int rc), void *ud)
{
    jwrite *jw = xcalloc(1, sizeof *jw);
    jw->w.data = jw;
    jw->path = xstrdup(path);
    jw->text = entry_text(e, state);
    jw->done = done;
    jw->ud = ud;
    int rc = uv_queue_work(loop, &jw->w, jwrite_work, jwrite_after);
    if (rc < 0) {
        free(jw->path);
        free(jw->text);
        free(jw);
    }
    return rc;
}

/* ---- names ---- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int hj_list(const char *dir, hj_names *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    size_t cap = 0;
    const struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.' || n < 6 || strcmp(e->d_name + n - 5, ".json") != 0)
            continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 64;
            out->v = xrealloc(out->v, cap * sizeof *out->v);
        }
        out->v[out->n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (out->n)
        qsort(out->v, out->n, sizeof *out->v, cmp_names);
    return 0;
}

bool hj_names_has(const hj_names *n, const char *base)
{
    return n->n && bsearch(&base, n->v, n->n, sizeof *n->v, cmp_names) != NULL;
}

void hj_names_free(hj_names *n)
{
    for (size_t i = 0; i < n->n; i++)
        free(n->v[i]);
    free(n->v);
    memset(n, 0, sizeof *n);
}

/* ---- the start's reading ---- */

typedef struct jload {
    uv_work_t w;
    char *dir;
    hj_names names;
    size_t cap, cap_bad;
    hj_loaded *res;
    void (*done)(void *ud, hj_loaded *res);
    void *ud;
} jload;

static double jnum(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static char *jstr(const cJSON *o, const char *key)
{
    const char *v = json_str(o, key);
    return xstrdup(v ? v : "");
}

static void add_bad(jload *l, const char *path)
{
    hj_loaded *res = l->res;
    if (res->n_bad == l->cap_bad) {
        l->cap_bad = l->cap_bad ? l->cap_bad * 2 : 8;
        res->bad = xrealloc(res->bad, l->cap_bad * sizeof *res->bad);
    }
    res->bad[res->n_bad++] = xstrdup(path);
}

static void add_entry(jload *l, const cJSON *o, hooks_kind kind, bool interrupted)
{
    hj_loaded *res = l->res;
    if (res->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        res->v = xrealloc(res->v, l->cap * sizeof *res->v);
    }
    res->v[res->n++] = (hjentry){.job_id = jstr(o, "id"),
                                 .job_name = jstr(o, "job"),
                                 .job_state = jstr(o, "job_state"),
                                 .dir = jstr(o, "dir"),
                                 .arg = jstr(o, "arg"),
                                 .dataset_id = jstr(o, "dataset_id"),
                                 .batch_id = jstr(o, "batch_id"),
                                 .kind = kind,
                                 .attempt = (int)jnum(o, "attempt", 1),
                                 .finished_at = (int64_t)jnum(o, "finished_at", 0),
                                 .interrupted = interrupted};
}

/* One file: an entry that has not ended is kept, one that ended long ago removed. */
static void load_one(jload *l, const char *base, int64_t now)
{
    char *path = fsutil_join(l->dir, base);
    char *text = NULL;
    int rc = fsutil_read_file(path, HOOKS_JOURNAL_MAX, true, &text, NULL);
    cJSON *o = rc == 0 ? cJSON_Parse(text) : NULL;
    free(text);
    const char *id = json_str(o, "id"), *hook = json_str(o, "hook"), *st = json_str(o, "state");
    int kind = hook && strcmp(hook, "on_ready") == 0    ? HOOKS_ON_READY
               : hook && strcmp(hook, "on_failed") == 0 ? HOOKS_ON_FAILED
               : hook && strcmp(hook, "on_export") == 0 ? HOOKS_ON_EXPORT
                                                        : -1;
    if (!o || !id || !st || kind < 0) {
        add_bad(l, path);
    } else {
        bool started = strcmp(st, "started") == 0;
        bool over = !started && strcmp(st, "pending") != 0 && strcmp(st, "retry") != 0;
        if (!over)
            add_entry(l, o, (hooks_kind)kind, started);
        else if (now - (int64_t)jnum(o, "finished_at", 0) > HOOKS_KEEP_MS)
            (void)unlink(path);
    }
    free(path);
    cJSON_Delete(o);
}

static void jload_work(uv_work_t *w)
{
    jload *l = w->data;
    int64_t now = time_now_ms();
    for (size_t i = 0; i < l->names.n; i++)
        load_one(l, l->names.v[i], now);
}

static void jload_after(uv_work_t *w, int status)
{
    (void)status; /* the work always runs: nothing cancels it */
    jload *l = w->data;
    hj_loaded *res = l->res;
    void (*done)(void *, hj_loaded *) = l->done;
    void *ud = l->ud;
    hj_names_free(&l->names);
    free(l->dir);
    free(l);
    done(ud, res);
}

int hj_load(uv_loop_t *loop, const char *dir, hj_names *names,
            void (*done)(void *ud, hj_loaded *res), void *ud)
{
    jload *l = xcalloc(1, sizeof *l);
    l->w.data = l;
    l->dir = xstrdup(dir);
    l->names = *names;
    memset(names, 0, sizeof *names);
    l->res = xcalloc(1, sizeof *l->res);
    l->done = done;
    l->ud = ud;
    int rc = uv_queue_work(loop, &l->w, jload_work, jload_after);
    if (rc < 0) {
        hj_names_free(&l->names);
        free(l->res);
        free(l->dir);
        free(l);
    }
    return rc;
}

void hj_loaded_free(hj_loaded *res)
{
    if (!res)
        return;
    for (size_t i = 0; i < res->n; i++)
        hjentry_free(&res->v[i]);
    free(res->v);
    for (size_t i = 0; i < res->n_bad; i++)
        free(res->bad[i]);
    free(res->bad);
    free(res);
}

/* ---- <hook>.since ---- */

static char *since_path(const char *dir, hooks_kind k)
{
    char *base = xasprintf("%s.since", hooks_kind_name(k));
    char *path = fsutil_join(dir, base);
    free(base);
    return path;
}

int64_t hj_since_read(const char *dir, hooks_kind k)
{
    char *path = since_path(dir, k);
    char *text = NULL;
    int64_t since = 0;
    if (fsutil_read_file(path, 64, true, &text, NULL) == 0) {
        since = strtoll(text, NULL, 10);
        free(text);
    }
    free(path);
    return since > 0 ? since : 0;
}

typedef struct swrite {
    uv_work_t w;
    char *path;
    int64_t since;
    int rc;
    void (*done)(void *ud);
    void *ud;
} swrite;

static void swrite_work(uv_work_t *w)
{
    swrite *sw = w->data;
    if (sw->since == 0) {
        sw->rc = unlink(sw->path) < 0 && errno != ENOENT ? -errno : 0;
        return;
    }
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%" PRId64 "\n", sw->since);
    sw->rc = fsutil_write_atomic(sw->path, buf, (size_t)len, 0640);
}

static void swrite_after(uv_work_t *w, int status)
{
    swrite *sw = w->data;
    int rc = status < 0 ? status : sw->rc;
    if (rc < 0)
        log_warn("cannot %s %s: %s", sw->since ? "write" : "remove", sw->path, strerror(-rc));
    void (*done)(void *) = sw->done;
    void *ud = sw->ud;
    free(sw->path);
    free(sw);
    done(ud);
}

int hj_since_write(uv_loop_t *loop, const char *dir, hooks_kind k, int64_t since,
                   void (*done)(void *ud), void *ud)
{
    swrite *sw = xcalloc(1, sizeof *sw);
    sw->w.data = sw;
    sw->path = since_path(dir, k);
    sw->since = since;
    sw->done = done;
    sw->ud = ud;
    int rc = uv_queue_work(loop, &sw->w, swrite_work, swrite_after);
    if (rc < 0) {
        free(sw->path);
        free(sw);
    }
    return rc;
}
