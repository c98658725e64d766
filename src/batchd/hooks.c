/* hooks: see hooks.h.
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
 * finished job whose finished_at is not older than that and that has no journal file yet.
 * A job whose finish is durable has a record with finished_at, and the runner loads it, so
 * no finish is missed; a job that finished before its hook was configured is not run for.
 * Journal files that ended are kept as long as the runner keeps finished records (30 days),
 * which is what tells catch-up that a run already happened. */
#include "hooks.h"

#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Journal entries of runs that ended, older than this, are removed at start (as the runner
 * removes old records: runner_internal.h RUNNER_RECORD_KEEP_MS). */
#define HOOKS_KEEP_MS (31LL * 86400 * 1000)
/* A longer output line is logged in pieces of this size. */
#define HOOKS_LINE_MAX 1024
/* Lines logged per attempt; the rest is read and dropped (one notice says so). */
#define HOOKS_LINES_MAX   1000
#define HOOKS_JOURNAL_MAX (64 * 1024)

static const char *const kind_names[HOOKS_KINDS] = {"on_ready", "on_failed"};

typedef struct hrun hrun;

typedef struct hstream {
    uv_pipe_t pipe;
    hrun *run;
    char buf[HOOKS_LINE_MAX];
    size_t len;
    bool open;
} hstream;

struct hrun {
    hooks *h;
    hrun *prev, *next; /* every run alive, for the stop */
    uint64_t qid;      /* hookq's id; 0 while not queued */
    hooks_kind kind;
    char *file; /* journal file path */
    char *job_id, *job_name, *job_state, *dir, *arg, *dataset_id, *batch_id;
    int64_t finished_at;
    int attempt; /* the attempt started last, or next */
    /* The journal: one write on the pool at a time, the next waits (one slot is enough: a
     * run writes at most its start while its previous outcome is out). */
    bool writing;
    int in_done; /* inside a write's done callback */
    bool dead;   /* run_free came while a write was out or its callback ran */
    char *next_state;
    void (*next_done)(hrun *r, int rc);
    /* The process. */
    uv_process_t proc;
    bool proc_open, exited, spawn_failed;
    int64_t exit_status;
    int term_signal;
    hstream out, err;
    unsigned lines;
};

struct hooks {
    uv_loop_t *loop;
    char *dir; /* <state>/hooks */
    char *done_dir, *failed_dir;
    hooks_options o;
    char *path[HOOKS_KINDS];
    int64_t since[HOOKS_KINDS]; /* 0: not configured */
    hookq *q;
    uv_timer_t timer;
    char **known; /* journal file names (sorted after start) */
    size_t n_known, cap_known;
    hrun *runs;  /* every run alive */
    size_t refs; /* runs alive + the timer + 1 until hooks_stop */
    bool stopping;
    uint64_t counts[HOOKS_KINDS][HOOKQ_OUTCOMES];
};

static void pump(hooks *h);
static void unref(hooks *h);

/* ---- runs ---- */

static hrun *run_new(hooks *h, hooks_kind kind, const char *job_id, int64_t finished_at)
{
    hrun *r = xcalloc(1, sizeof *r);
    r->h = h;
    r->kind = kind;
    r->finished_at = finished_at;
    r->job_id = xstrdup(job_id);
    r->attempt = 1;
    char *base = xasprintf("%s.%s.%" PRId64 ".json", job_id, kind_names[kind], finished_at);
    r->file = fsutil_join(h->dir, base);
    free(base);
    r->next = h->runs;
    if (h->runs)
        h->runs->prev = r;
    h->runs = r;
    h->refs++;
    return r;
}

static void run_free(hrun *r)
{
    if (r->writing || r->in_done) {
        r->dead = true; /* jwrite_after frees it */
        return;
    }
    hooks *h = r->h;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->runs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    free(r->file);
    free(r->job_id);
    free(r->job_name);
    free(r->job_state);
    free(r->dir);
    free(r->arg);
    free(r->dataset_id);
    free(r->batch_id);
    free(r->next_state);
    free(r);
    unref(h);
}

static log_job_fields run_fields(const hrun *r)
{
    return (log_job_fields){.job_id = r->job_id,
                            .job_name = r->job_name,
                            .dataset_id = r->dataset_id && *r->dataset_id ? r->dataset_id : NULL,
                            .batch_id = r->batch_id && *r->batch_id ? r->batch_id : NULL,
                            .state = r->job_state};
}

/* ---- the journal ---- */

typedef struct jwrite {
    uv_work_t w;
    hrun *run;
    char *path, *text;
    int rc;
    void (*done)(hrun *r, int rc);
} jwrite;

static char *journal_text(const hrun *r, const char *state)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->job_id);
    cJSON_AddStringToObject(o, "job", r->job_name);
    cJSON_AddStringToObject(o, "hook", kind_names[r->kind]);
    cJSON_AddStringToObject(o, "state", state);
    cJSON_AddNumberToObject(o, "attempt", r->attempt);
    cJSON_AddStringToObject(o, "job_state", r->job_state);
    cJSON_AddStringToObject(o, "dir", r->dir);
    cJSON_AddStringToObject(o, "arg", r->arg);
    cJSON_AddStringToObject(o, "dataset_id", r->dataset_id);
    cJSON_AddStringToObject(o, "batch_id", r->batch_id);
    cJSON_AddNumberToObject(o, "finished_at", (double)r->finished_at);
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

static void journal_write(hrun *r, const char *state, void (*done)(hrun *r, int rc));

static void jwrite_after(uv_work_t *w, int status)
{
    jwrite *jw = w->data;
    hrun *r = jw->run;
    int rc = status < 0 ? status : jw->rc;
    void (*done)(hrun *, int) = jw->done;
    free(jw->path);
    free(jw->text);
    free(jw);
    r->writing = false;
    if (rc < 0)
        log_error("hook journal %s: cannot write: %s", r->file, strerror(-rc));
    if (!r->dead) {
        r->in_done++;
        done(r, rc);
        r->in_done--;
    }
    if (r->dead) {
        r->dead = false;
        run_free(r);
        return;
    }
    if (!r->writing && r->next_state) {
        char *st = r->next_state;
        r->next_state = NULL;
        journal_write(r, st, r->next_done);
        free(st);
    }
}

/* Writes the run's journal entry durably on the pool, then calls done on the loop. */
static void journal_write(hrun *r, const char *state, void (*done)(hrun *r, int rc))
{
    if (r->writing) {
        free(r->next_state);
        r->next_state = xstrdup(state);
        r->next_done = done;
        return;
    }
    jwrite *jw = xcalloc(1, sizeof *jw);
    jw->w.data = jw;
    jw->run = r;
    jw->path = xstrdup(r->file);
    jw->text = journal_text(r, state);
    jw->done = done;
    r->writing = true;
    int rc = uv_queue_work(r->h->loop, &jw->w, jwrite_work, jwrite_after);
    if (rc < 0) {
        r->writing = false;
        free(jw->path);
        free(jw->text);
        free(jw);
        done(r, rc);
    }
}

/* ---- the process ---- */

static void note(hrun *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(hrun *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    strbuf sb = {0};
    strbuf_vprintf(&sb, fmt, ap);
    va_end(ap);
    if (r->h->o.note && !r->h->stopping)
        r->h->o.note(r->h->o.ud, r->job_id, sb.data);
    strbuf_free(&sb);
}

static void log_line(hrun *r, const hstream *s, const char *line, size_t len)
{
    if (++r->lines > HOOKS_LINES_MAX) {
        if (r->lines == HOOKS_LINES_MAX + 1) {
            log_job_fields f = run_fields(r);
            log_job(LOG_LVL_NOTICE, &f,
                    "hook %s: more than %d lines of output; the rest is "
                    "not logged",
                    kind_names[r->kind], HOOKS_LINES_MAX);
        }
        return;
    }
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_INFO, &f, "hook %s %s: %.*s", kind_names[r->kind],
            s == &r->out ? "stdout" : "stderr", (int)len, line);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hstream *s = handle->data;
    buf->base = s->buf + s->len;
    buf->len = sizeof s->buf - s->len;
}

static void finish_attempt(hrun *r);

static void on_stream_closed(uv_handle_t *handle)
{
    hstream *s = handle->data;
    s->open = false;
    finish_attempt(s->run);
}

/* Splits what came into lines; a full buffer without a newline is logged as a piece. */
static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    hstream *s = stream->data;
    hrun *r = s->run;
    if (n < 0) {
        if (s->len)
            log_line(r, s, s->buf, s->len);
        s->len = 0;
        uv_close((uv_handle_t *)stream, on_stream_closed);
        return;
    }
    s->len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < s->len; i++) {
        if (s->buf[i] == '\n') {
            log_line(r, s, s->buf + start, i - start);
            start = i + 1;
        }
    }
    if (start == 0 && s->len == sizeof s->buf) {
        log_line(r, s, s->buf, s->len);
        start = s->len;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
}

static void on_proc_closed(uv_handle_t *handle)
{
    hrun *r = handle->data;
    r->proc_open = false;
    finish_attempt(r);
}

static void on_exit_cb(uv_process_t *p, int64_t exit_status, int term_signal)
{
    hrun *r = p->data;
    r->exited = true;
    r->exit_status = exit_status;
    r->term_signal = term_signal;
    uv_close((uv_handle_t *)p, on_proc_closed);
}

/* The environment of batchd.conf(5), HOOKS, and nothing else: never the token, nor where
 * it comes from. */
static char **make_env(const hrun *r)
{
    char **env = xcalloc(8, sizeof *env);
    env[0] = xasprintf("BATCHD_JOB=%s", r->job_name);
    env[1] = xasprintf("BATCHD_JOB_ID=%s", r->job_id);
    env[2] = xasprintf("BATCHD_STATE=%s", r->job_state);
    env[3] = xasprintf("BATCHD_DIR=%s", r->dir);
    env[4] = xasprintf("BATCHD_DATASET_ID=%s", r->dataset_id);
    env[5] = xasprintf("BATCHD_BATCH_ID=%s", r->batch_id);
    env[6] = xstrdup("PATH=/usr/local/bin:/usr/bin:/bin");
    return env;
}

static void free_env(char **env)
{
    for (size_t i = 0; env[i]; i++)
        free(env[i]);
    free(env);
}

static void stream_init(hrun *r, hstream *s)
{
    memset(s, 0, sizeof *s);
    uv_pipe_init(r->h->loop, &s->pipe, 0);
    s->pipe.data = s;
    s->run = r;
    s->open = true;
}

/* Spawns the hook; 0 or a libuv error (then nothing is left open). */
static int spawn(hrun *r, const char *path)
{
    hooks *h = r->h;
    stream_init(r, &r->out);
    stream_init(r, &r->err);
    char *argv0 = xstrdup(path);
    char *args[] = {argv0, r->arg, NULL};
    char **env = make_env(r);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE}, /* libuv gives the child /dev/null */
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->err.pipe},
    };
    /* Its own process group, so that a timeout's signals reach what the hook started too. */
    uv_process_options_t po = {
        .exit_cb = on_exit_cb,
        .file = path,
        .args = args,
        .env = env,
        .cwd = "/",
        .flags = UV_PROCESS_DETACHED,
        .stdio_count = 3,
        .stdio = stdio,
    };
    r->proc.data = r;
    r->exited = false;
    r->spawn_failed = false;
    r->lines = 0;
    int rc = uv_spawn(h->loop, &r->proc, &po);
    free_env(env);
    free(argv0);
    r->proc_open = true;
    if (rc < 0) {
        /* The handles are initialised even when the spawn fails and must be closed;
         * finish_attempt goes on once they are. */
        r->exited = true;
        r->spawn_failed = true;
        uv_close((uv_handle_t *)&r->proc, on_proc_closed);
        uv_close((uv_handle_t *)&r->out.pipe, on_stream_closed);
        uv_close((uv_handle_t *)&r->err.pipe, on_stream_closed);
        return rc;
    }
    uv_read_start((uv_stream_t *)&r->out.pipe, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&r->err.pipe, on_alloc, on_read);
    return 0;
}

/* ---- outcomes ---- */

static void outcome_written(hrun *r, int rc)
{
    (void)rc;
    if (r->qid == 0)
        run_free(r); /* over: hookq forgot it */
    else
        pump(r->h);
}

static void describe(const hookq_result *res, const hrun *r, char *buf, size_t len)
{
    switch (res->outcome) {
    case HOOKQ_OK:
        snprintf(buf, len, "exited 0");
        break;
    case HOOKQ_EXIT:
        snprintf(buf, len, "exited %" PRId64, r->exit_status);
        break;
    case HOOKQ_SIGNAL:
        snprintf(buf, len, "killed by signal %d", r->term_signal);
        break;
    case HOOKQ_TIMEOUT:
        snprintf(buf, len, "killed after its timeout");
        break;
    default:
        snprintf(buf, len, "could not be started");
        break;
    }
}

/* An attempt ended (its process and both pipes, or its start failed): log, note, count,
 * journal. */
static void attempt_ended(hrun *r, hookq_result res)
{
    hooks *h = r->h;
    char what[96];
    describe(&res, r, what, sizeof what);
    const char *hook = kind_names[r->kind];
    log_job_fields f = run_fields(r);
    const char *st;
    if (res.retry) {
        log_job(LOG_LVL_WARNING, &f, "hook %s %s (attempt %d of %d); retrying in %" PRId64 "s",
                hook, what, res.attempt, res.attempts_max,
                (res.retry_at - (int64_t)uv_now(h->loop)) / 1000);
        st = "retry";
        r->attempt = res.attempt + 1;
    } else if (res.outcome == HOOKQ_OK) {
        log_job(LOG_LVL_INFO, &f, "hook %s %s (attempt %d of %d)", hook, what, res.attempt,
                res.attempts_max);
        st = "done";
        r->qid = 0;
    } else {
        log_job(LOG_LVL_ERR, &f, "hook %s %s (attempt %d of %d); giving up", hook, what,
                res.attempt, res.attempts_max);
        st = "gave_up";
        r->qid = 0;
    }
    note(r, "hook %s %s (attempt %d of %d)%s", hook, what, res.attempt, res.attempts_max,
         res.retry                 ? ""
         : res.outcome == HOOKQ_OK ? ""
                                   : "; given up");
    h->counts[r->kind][res.outcome]++;
    if (h->o.outcome)
        h->o.outcome(h->o.ud, hook, hookq_outcome_name(res.outcome));
    journal_write(r, st, outcome_written);
}

static void finish_attempt(hrun *r)
{
    if (!r->exited || r->proc_open || r->out.open || r->err.open)
        return;
    hooks *h = r->h;
    if (h->stopping) {
        run_free(r); /* killed by the stop: its entry stays "started", it runs again */
        return;
    }
    hookq_result res = hookq_exited(h->q, r->qid, (int64_t)uv_now(h->loop), (int)r->exit_status,
                                    r->term_signal, r->spawn_failed);
    attempt_ended(r, res);
}

static void start_written(hrun *r, int rc)
{
    hooks *h = r->h;
    if (h->stopping) {
        run_free(r);
        return;
    }
    const char *path = h->path[r->kind];
    if (rc < 0) {
        /* Not recorded, so not started: the promise is "recorded before the start". */
        attempt_ended(r, hookq_exited(h->q, r->qid, (int64_t)uv_now(h->loop), 0, 0, true));
        return;
    }
    int sr = spawn(r, path);
    if (sr < 0) {
        log_job_fields f = run_fields(r);
        log_job(LOG_LVL_ERR, &f, "hook %s: cannot run %s: %s", kind_names[r->kind], path,
                uv_strerror(sr));
        return; /* finish_attempt reports it once the handles are closed */
    }
    hookq_started(h->q, r->qid, (int64_t)uv_now(h->loop));
    pump(h);
}

/* ---- the queue ---- */

static void start_run(hooks *h, hrun *r, int attempt)
{
    if (!h->path[r->kind]) {
        /* Unconfigured by a reload since it was queued: it runs no more. */
        log_job_fields f = run_fields(r);
        log_job(LOG_LVL_NOTICE, &f, "hook %s not run: [hooks] %s is no longer configured",
                kind_names[r->kind], kind_names[r->kind]);
        hookq_cancel(h->q, r->qid);
        r->qid = 0;
        journal_write(r, "dropped", outcome_written);
        return;
    }
    r->attempt = attempt;
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_INFO, &f, "hook %s: running %s %s (attempt %d)", kind_names[r->kind],
            h->path[r->kind], r->arg, attempt);
    journal_write(r, "started", start_written);
}

static void signal_run(hrun *r, int sig)
{
    if (!r->proc_open || r->exited)
        return;
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_WARNING, &f, "hook %s: %s after [hooks] hook_timeout; sending %s",
            kind_names[r->kind], sig == SIGTERM ? "still running" : "still running 10s",
            sig == SIGTERM ? "SIGTERM" : "SIGKILL");
    /* The whole process group (the hook is its leader), else the hook's own children. */
    if (kill(-r->proc.pid, sig) < 0)
        (void)uv_process_kill(&r->proc, sig);
}

static void on_timer(uv_timer_t *t)
{
    pump(t->data);
}

static void pump(hooks *h)
{
    if (h->stopping)
        return;
    hookq_action a;
    while (hookq_next(h->q, (int64_t)uv_now(h->loop), &a)) {
        hrun *r = a.ud;
        if (a.kind == HOOKQ_ACT_START)
            start_run(h, r, a.attempt);
        else
            signal_run(r, a.kind == HOOKQ_ACT_TERM ? SIGTERM : SIGKILL);
    }
    int64_t at = hookq_wake_at(h->q);
    if (at == INT64_MAX) {
        uv_timer_stop(&h->timer);
        return;
    }
    int64_t now = (int64_t)uv_now(h->loop);
    uv_timer_start(&h->timer, on_timer, (uint64_t)(at > now ? at - now : 0), 0);
}

static void queue_run(hrun *r, int attempt, int64_t delay_ms)
{
    hooks *h = r->h;
    r->qid = hookq_add(h->q, r, attempt, (int64_t)uv_now(h->loop) + delay_ms);
    pump(h);
}

static void pending_written(hrun *r, int rc)
{
    (void)rc; /* not durable: the next start's catch-up queues it again */
    if (r->h->stopping) {
        run_free(r);
        return;
    }
    queue_run(r, 1, 0);
}

/* ---- finished jobs ---- */

static bool known(const hooks *h, const char *base)
{
    for (size_t i = 0; i < h->n_known; i++)
        if (strcmp(h->known[i], base) == 0)
            return true;
    return false;
}

static void remember(hooks *h, const char *base)
{
    if (h->n_known == h->cap_known) {
        h->cap_known = h->cap_known ? h->cap_known * 2 : 64;
        h->known = xrealloc(h->known, h->cap_known * sizeof *h->known);
    }
    h->known[h->n_known++] = xstrdup(base);
}

static void fill_from_job(hrun *r, const job *j)
{
    hooks *h = r->h;
    bool ready = j->state == JOB_READY;
    r->job_name = xstrdup(j->name);
    r->job_state = xstrdup(job_state_name(j->state));
    r->dir = fsutil_join(ready ? h->done_dir : h->failed_dir, j->dir);
    r->arg = fsutil_join(r->dir, ready ? "result.json" : "error.json");
    r->dataset_id = xstrdup(j->dataset_id ? j->dataset_id : "");
    r->batch_id = xstrdup(j->batch_id ? j->batch_id : "");
}

/* Cancelled jobs are in failed/ with error.json "code": "cancelled": on_failed runs for
 * them too, and BATCHD_STATE says which (batchd.conf(5), HOOKS). */
static hooks_kind kind_of(const job *j)
{
    return j->state == JOB_READY ? HOOKS_ON_READY : HOOKS_ON_FAILED;
}

static void add_job(hooks *h, const job *j)
{
    hrun *r = run_new(h, kind_of(j), j->id, j->finished_at);
    fill_from_job(r, j);
    journal_write(r, "pending", pending_written);
}

void hooks_job_finished(hooks *h, const job *j)
{
    if (!h || h->stopping || !job_state_terminal(j->state) || !h->path[kind_of(j)])
        return;
    add_job(h, j);
}

void hooks_catch_up(hooks *h, const job *j)
{
    if (!h || !job_state_terminal(j->state) || j->finished_at <= 0)
        return;
    hooks_kind k = kind_of(j);
    if (!h->path[k] || h->since[k] == 0 || j->finished_at < h->since[k])
        return;
    char *base = xasprintf("%s.%s.%" PRId64 ".json", j->id, kind_names[k], j->finished_at);
    bool have = known(h, base);
    free(base);
    if (have)
        return;
    /* Its record may predate the move's last write (j->dir then is its name in active/):
     * run only for files that are there. */
    char *dir = fsutil_join(k == HOOKS_ON_READY ? h->done_dir : h->failed_dir, j->dir);
    bool there = access(dir, F_OK) == 0;
    log_job_fields f = {.job_id = j->id, .job_name = j->name};
    if (!there)
        log_job(LOG_LVL_WARNING, &f, "hook %s not run: %s is not there", kind_names[k], dir);
    else
        log_job(LOG_LVL_NOTICE, &f,
                "hook %s: queued at start (the job finished just before "
                "the stop)",
                kind_names[k]);
    free(dir);
    if (there)
        add_job(h, j);
}

/* ---- the journal at start ---- */

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

/* Queues the entry of a run that has not ended; 0, or -1 when it is not a journal entry. */
static int load_entry(hooks *h, const char *base, int64_t now)
{
    char *path = fsutil_join(h->dir, base);
    char *text = NULL;
    int rc = fsutil_read_file(path, HOOKS_JOURNAL_MAX, true, &text, NULL);
    cJSON *o = rc == 0 ? cJSON_Parse(text) : NULL;
    free(text);
    const char *id = json_str(o, "id"), *hook = json_str(o, "hook"), *st = json_str(o, "state");
    int kind = hook && strcmp(hook, "on_ready") == 0    ? HOOKS_ON_READY
               : hook && strcmp(hook, "on_failed") == 0 ? HOOKS_ON_FAILED
                                                        : -1;
    if (!o || !id || !st || kind < 0) {
        log_error("hook journal %s: not readable; left in place", path);
        free(path);
        cJSON_Delete(o);
        return -1;
    }
    int64_t finished_at = (int64_t)jnum(o, "finished_at", 0);
    bool over =
        strcmp(st, "pending") != 0 && strcmp(st, "started") != 0 && strcmp(st, "retry") != 0;
    if (over && now - finished_at > HOOKS_KEEP_MS) {
        (void)unlink(path);
    } else if (!over) {
        hrun *r = run_new(h, (hooks_kind)kind, id, finished_at);
        r->job_name = jstr(o, "job");
        r->job_state = jstr(o, "job_state");
        r->dir = jstr(o, "dir");
        r->arg = jstr(o, "arg");
        r->dataset_id = jstr(o, "dataset_id");
        r->batch_id = jstr(o, "batch_id");
        int attempt = (int)jnum(o, "attempt", 1);
        if (strcmp(st, "started") == 0) {
            log_job_fields f = run_fields(r);
            log_job(LOG_LVL_NOTICE, &f,
                    "hook %s: attempt %d was interrupted by the stop; "
                    "running it again",
                    hook, attempt);
        }
        queue_run(r, attempt, 0);
    }
    remember(h, base);
    free(path);
    cJSON_Delete(o);
    return 0;
}

static int load_journal(hooks *h)
{
    DIR *d = opendir(h->dir);
    if (!d)
        return -errno;
    int64_t now = time_now_ms();
    const struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.' || n < 6 || strcmp(e->d_name + n - 5, ".json") != 0)
            continue;
        (void)load_entry(h, e->d_name, now);
    }
    closedir(d);
    return 0;
}

/* <hook>.since: written when the hook becomes configured, removed when it is not. */
static void set_since(hooks *h, hooks_kind k, bool configured)
{
    char *base = xasprintf("%s.since", kind_names[k]);
    char *path = fsutil_join(h->dir, base);
    free(base);
    if (!configured) {
        h->since[k] = 0;
        if (unlink(path) < 0 && errno != ENOENT)
            log_warn("cannot remove %s: %s", path, strerror(errno));
        free(path);
        return;
    }
    char *text = NULL;
    if (fsutil_read_file(path, 64, true, &text, NULL) == 0) {
        h->since[k] = strtoll(text, NULL, 10);
        free(text);
    }
    if (h->since[k] <= 0) {
        h->since[k] = time_now_ms();
        char buf[32];
        int len = snprintf(buf, sizeof buf, "%" PRId64 "\n", h->since[k]);
        /* Small and rare (a start or a reload that adds a hook). */
        int rc = fsutil_write_atomic(path, buf, (size_t)len, 0640);
        if (rc < 0)
            log_warn("cannot write %s: %s", path, strerror(-rc));
    }
    free(path);
}

static hookq_limits limits_of(const config *c)
{
    return (hookq_limits){.timeout_ms = c->hooks.timeout_ms,
                          .retries = c->hooks.retries,
                          .max_parallel = c->hooks.max_parallel};
}

void hooks_configure(hooks *h, const config *c)
{
    const char *paths[HOOKS_KINDS] = {c->hooks.on_ready, c->hooks.on_failed};
    for (int k = 0; k < HOOKS_KINDS; k++) {
        free(h->path[k]);
        h->path[k] = paths[k] ? xstrdup(paths[k]) : NULL;
        set_since(h, (hooks_kind)k, paths[k] != NULL);
    }
    hookq_limits l = limits_of(c);
    hookq_set_limits(h->q, &l);
    pump(h);
}

hooks *hooks_new(const hooks_options *o, const config *c)
{
    hooks *h = xcalloc(1, sizeof *h);
    h->o = *o;
    h->loop = o->loop;
    h->dir = fsutil_join(o->state_dir, "hooks");
    h->done_dir = xstrdup(o->done_dir);
    h->failed_dir = xstrdup(o->failed_dir);
    hookq_limits l = limits_of(c);
    h->q = hookq_new(&l);
    uv_timer_init(h->loop, &h->timer);
    h->timer.data = h;
    h->refs = 2; /* the timer, and until hooks_stop */
    int rc = fsutil_mkdir_p(h->dir, 0750);
    if (rc < 0) {
        log_error("cannot create the hook journal %s: %s", h->dir, strerror(-rc));
        hooks_stop(h);
        return NULL;
    }
    hooks_configure(h, c);
    rc = load_journal(h);
    if (rc < 0) {
        log_error("cannot read the hook journal %s: %s", h->dir, strerror(-rc));
        hooks_stop(h);
        return NULL;
    }
    return h;
}

uint64_t hooks_runs(const hooks *h, hooks_kind k, hookq_outcome o)
{
    if (!h || (unsigned)k >= HOOKS_KINDS || (unsigned)o >= HOOKQ_OUTCOMES)
        return 0;
    return h->counts[k][o];
}

/* ---- stopping ---- */

static void destroy(hooks *h)
{
    hookq_free(h->q);
    for (size_t i = 0; i < h->n_known; i++)
        free(h->known[i]);
    free(h->known);
    for (int k = 0; k < HOOKS_KINDS; k++)
        free(h->path[k]);
    free(h->dir);
    free(h->done_dir);
    free(h->failed_dir);
    free(h);
}

static void unref(hooks *h)
{
    if (--h->refs == 0)
        destroy(h);
}

static void on_timer_closed(uv_handle_t *t)
{
    unref(t->data);
}

/* Each run: a running one is killed (its exit and pipes free it), one whose journal write
 * is out is freed when the write returns, the others now. Journal entries stay as they are:
 * a killed run is "started" and runs again on the next start. */
void hooks_stop(hooks *h)
{
    if (!h || h->stopping)
        return;
    h->stopping = true;
    hookq_stop(h->q);
    hrun *next;
    for (hrun *r = h->runs; r; r = next) {
        next = r->next;
        if (r->proc_open && !r->exited) {
            if (kill(-r->proc.pid, SIGKILL) < 0)
                (void)uv_process_kill(&r->proc, SIGKILL);
        } else if (!r->proc_open && !r->out.open && !r->err.open) {
            run_free(r);
        }
    }
    uv_close((uv_handle_t *)&h->timer, on_timer_closed);
    unref(h);
}
