/* hooks: see hooks.h. The journal (what is recorded, and why that gives "at least once")
 * is hooks_journal.c; this file decides what to record when, and runs the processes.
 *
 * An attempt lasts while its process runs and its stdout and stderr are open. A hook that
 * leaves a background process holding them (`curl ... &`) would keep its slot forever, so
 * once the hook itself has exited its pipes get HOOKS_PIPE_GRACE_MS more, then are closed,
 * and the attempt ends with the hook's exit status. Signals (the timeout's, the stop's) go
 * to the hook's process group while the attempt lasts, whether or not the hook has
 * exited. */
#include "hooks.h"
#include "hooks_journal.h"

#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/util.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A longer output line is logged in pieces of this size. */
#define HOOKS_LINE_MAX 1024
/* Lines logged per attempt; the rest is read and dropped (one notice says so). */
#define HOOKS_LINES_MAX 1000
/* How long the pipes stay open after the hook exited (see above). */
#define HOOKS_PIPE_GRACE_MS 2000
/* On a stop: SIGTERM to every hook's group, SIGKILL this much later to what is left. */
#define HOOKS_STOP_GRACE_MS 2000
#define HOOKS_STOP_POLL_MS  100

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
    hjentry e;         /* what the journal records; e.attempt: started last, or next */
    char *file;        /* journal file path */
    /* The journal: one write on the pool at a time, the next waits (one slot is enough: a
     * run writes at most its start while its previous outcome is out). */
    bool writing;
    int in_done; /* inside a write's done callback */
    bool dead;   /* run_free came while a write was out or its callback ran */
    char *next_state;
    void (*next_done)(hrun *r, int rc);
    /* The process. */
    uv_process_t proc;
    uv_timer_t grace; /* the pipes' grace after the exit */
    bool proc_open, grace_open, exited, spawn_failed;
    int pgid; /* the hook's process group while the attempt lasts, else 0 */
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
    int64_t since[HOOKS_KINDS];    /* 0: not configured */
    bool since_busy[HOOKS_KINDS];  /* a write of <hook>.since is out */
    bool since_dirty[HOOKS_KINDS]; /* since changed while it was */
    hookq *q;
    uv_timer_t timer;
    hj_names known; /* the journal's file names at start, until hooks_caught_up */
    hrun *runs;     /* every run alive */
    size_t refs;    /* runs alive + works out + timers + 1 until hooks_stop */
    bool stopping;
    /* The stop: process groups signalled, and when. */
    uv_timer_t stop_timer;
    int *stop_groups;
    size_t n_stop_groups;
    uint64_t stop_at;
    uint64_t counts[HOOKS_KINDS][HOOKQ_OUTCOMES];
};

static void pump(hooks *h);
static void unref(hooks *h);

/* ---- runs ---- */

static hrun *run_new(hooks *h, hooks_kind kind, const char *job_id, int64_t finished_at)
{
    hrun *r = xcalloc(1, sizeof *r);
    r->h = h;
    r->e.kind = kind;
    r->e.finished_at = finished_at;
    r->e.job_id = xstrdup(job_id);
    r->e.attempt = 1;
    char *base = hj_base(job_id, kind, finished_at);
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
        r->dead = true; /* jwrite_done frees it */
        return;
    }
    hooks *h = r->h;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->runs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    hjentry_free(&r->e);
    free(r->file);
    free(r->next_state);
    free(r);
    unref(h);
}

static log_job_fields run_fields(const hrun *r)
{
    return (log_job_fields){.job_id = r->e.job_id,
                            .job_name = r->e.job_name,
                            .dataset_id =
                                r->e.dataset_id && *r->e.dataset_id ? r->e.dataset_id : NULL,
                            .batch_id = r->e.batch_id && *r->e.batch_id ? r->e.batch_id : NULL,
                            .state = r->e.job_state};
}

static const char *run_hook(const hrun *r)
{
    return hooks_kind_name(r->e.kind);
}

/* ---- the journal ---- */

static void journal_write(hrun *r, const char *state, void (*done)(hrun *r, int rc));

typedef struct jctx {
    hrun *run;
    void (*done)(hrun *r, int rc);
} jctx;

static void jwrite_done(void *ud, int rc)
{
    jctx *c = ud;
    hrun *r = c->run;
    void (*done)(hrun *, int) = c->done;
    free(c);
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
    jctx *c = xcalloc(1, sizeof *c);
    c->run = r;
    c->done = done;
    r->writing = true;
    int rc = hj_write(r->h->loop, r->file, &r->e, state, jwrite_done, c);
    if (rc < 0) {
        r->writing = false;
        free(c);
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
        r->h->o.note(r->h->o.ud, r->e.job_id, sb.data);
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
                    run_hook(r), HOOKS_LINES_MAX);
        }
        return;
    }
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_INFO, &f, "hook %s %s: %.*s", run_hook(r), s == &r->out ? "stdout" : "stderr",
            (int)len, line);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hstream *s = handle->data;
    buf->base = s->buf + s->len;
    buf->len = sizeof s->buf - s->len;
}

static void finish_attempt(hrun *r);

static void on_grace_closed(uv_handle_t *handle)
{
    hrun *r = handle->data;
    r->grace_open = false;
    finish_attempt(r);
}

static void close_grace(hrun *r)
{
    if (r->grace_open && !uv_is_closing((uv_handle_t *)&r->grace))
        uv_close((uv_handle_t *)&r->grace, on_grace_closed);
}

static void on_stream_closed(uv_handle_t *handle)
{
    hstream *s = handle->data;
    hrun *r = s->run;
    s->open = false;
    if (!r->out.open && !r->err.open)
        close_grace(r);
    finish_attempt(r);
}

/* Logs what is left of a partial line and closes the pipe (once). */
static void close_stream(hstream *s)
{
    if (!s->open || uv_is_closing((uv_handle_t *)&s->pipe))
        return;
    if (s->len)
        log_line(s->run, s, s->buf, s->len);
    s->len = 0;
    uv_close((uv_handle_t *)&s->pipe, on_stream_closed);
}

/* Splits what came into lines; a full buffer without a newline is logged as a piece. */
static void on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    hstream *s = stream->data;
    hrun *r = s->run;
    if (n < 0) {
        close_stream(s);
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

/* The hook exited; something it started may still hold its pipes. */
static void on_grace(uv_timer_t *t)
{
    hrun *r = t->data;
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_NOTICE, &f,
            "hook %s exited, but a process it left still holds its output; no longer "
            "reading it",
            run_hook(r));
    close_stream(&r->out);
    close_stream(&r->err);
    close_grace(r);
}

static void on_exit_cb(uv_process_t *p, int64_t exit_status, int term_signal)
{
    hrun *r = p->data;
    r->exited = true;
    r->exit_status = exit_status;
    r->term_signal = term_signal;
    uv_close((uv_handle_t *)p, on_proc_closed);
    if (r->out.open || r->err.open) {
        uv_timer_init(r->h->loop, &r->grace);
        r->grace.data = r;
        r->grace_open = true;
        uv_timer_start(&r->grace, on_grace, HOOKS_PIPE_GRACE_MS, 0);
    }
}

/* To the hook's whole process group (it is its leader), so that what it started gets it
 * too, also after the hook itself exited; to the hook alone before its setsid. */
static void group_signal(hrun *r, int sig)
{
    if (r->pgid <= 0)
        return;
    if (kill(-r->pgid, sig) < 0 && !r->exited)
        (void)uv_process_kill(&r->proc, sig);
}

/* The environment of batchd.conf(5), HOOKS, and nothing else: never the token, nor where
 * it comes from. */
static char **make_env(const hrun *r)
{
    char **env = xcalloc(8, sizeof *env);
    env[0] = xasprintf("BATCHD_JOB=%s", r->e.job_name);
    env[1] = xasprintf("BATCHD_JOB_ID=%s", r->e.job_id);
    env[2] = xasprintf("BATCHD_STATE=%s", r->e.job_state);
    env[3] = xasprintf("BATCHD_DIR=%s", r->e.dir);
    env[4] = xasprintf("BATCHD_DATASET_ID=%s", r->e.dataset_id);
    env[5] = xasprintf("BATCHD_BATCH_ID=%s", r->e.batch_id);
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
    char *args[] = {argv0, r->e.arg, NULL};
    char **env = make_env(r);
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE}, /* libuv gives the child /dev/null */
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->err.pipe},
    };
    /* Its own session and process group, so that signals reach what the hook started too. */
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
    r->pgid = r->proc.pid;
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
    const char *hook = run_hook(r);
    log_job_fields f = run_fields(r);
    const char *st;
    if (res.retry) {
        log_job(LOG_LVL_WARNING, &f, "hook %s %s (attempt %d of %d); retrying in %" PRId64 "s",
                hook, what, res.attempt, res.attempts_max,
                (res.retry_at - (int64_t)uv_now(h->loop)) / 1000);
        st = "retry";
        r->e.attempt = res.attempt + 1;
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
    h->counts[r->e.kind][res.outcome]++;
    if (h->o.outcome)
        h->o.outcome(h->o.ud, hook, hookq_outcome_name(res.outcome));
    journal_write(r, st, outcome_written);
}

static void finish_attempt(hrun *r)
{
    if (!r->exited || r->proc_open || r->out.open || r->err.open || r->grace_open)
        return;
    r->pgid = 0; /* no more signals: the group may be gone and its id reused */
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
    const char *path = h->path[r->e.kind];
    if (rc < 0) {
        /* Not recorded, so not started: the promise is "recorded before the start". */
        attempt_ended(r, hookq_exited(h->q, r->qid, (int64_t)uv_now(h->loop), 0, 0, true));
        return;
    }
    int sr = spawn(r, path);
    if (sr < 0) {
        log_job_fields f = run_fields(r);
        log_job(LOG_LVL_ERR, &f, "hook %s: cannot run %s: %s", run_hook(r), path, uv_strerror(sr));
        return; /* finish_attempt reports it once the handles are closed */
    }
    hookq_started(h->q, r->qid, (int64_t)uv_now(h->loop));
    pump(h);
}

/* ---- the queue ---- */

static void start_run(hooks *h, hrun *r, int attempt)
{
    if (!h->path[r->e.kind]) {
        /* Unconfigured by a reload since it was queued: it runs no more. */
        log_job_fields f = run_fields(r);
        log_job(LOG_LVL_NOTICE, &f, "hook %s not run: [hooks] %s is no longer configured",
                run_hook(r), run_hook(r));
        hookq_cancel(h->q, r->qid);
        r->qid = 0;
        journal_write(r, "dropped", outcome_written);
        return;
    }
    r->e.attempt = attempt;
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_INFO, &f, "hook %s: running %s %s (attempt %d)", run_hook(r),
            h->path[r->e.kind], r->e.arg, attempt);
    journal_write(r, "started", start_written);
}

static void signal_run(hrun *r, int sig)
{
    if (r->pgid <= 0)
        return;
    log_job_fields f = run_fields(r);
    log_job(LOG_LVL_WARNING, &f, "hook %s: %s after [hooks] hook_timeout; sending %s", run_hook(r),
            sig == SIGTERM ? "still running" : "still running 10s",
            sig == SIGTERM ? "SIGTERM" : "SIGKILL");
    group_signal(r, sig);
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

static void fill_from_job(hrun *r, const job *j)
{
    hooks *h = r->h;
    bool ready = j->state == JOB_READY;
    r->e.job_name = xstrdup(j->name);
    r->e.job_state = xstrdup(job_state_name(j->state));
    r->e.dir = fsutil_join(ready ? h->done_dir : h->failed_dir, j->dir);
    r->e.arg = fsutil_join(r->e.dir, ready ? "result.json" : "error.json");
    r->e.dataset_id = xstrdup(j->dataset_id ? j->dataset_id : "");
    r->e.batch_id = xstrdup(j->batch_id ? j->batch_id : "");
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

void hooks_export_done(hooks *h, const job *j)
{
    if (!h || h->stopping || !h->path[HOOKS_ON_EXPORT] || !j->export || !j->export->path)
        return;
    hrun *r = run_new(h, HOOKS_ON_EXPORT, j->id, j->export->at);
    fill_from_job(r, j);
    free(r->e.arg);
    r->e.arg = fsutil_join(r->e.dir, j->export->path);
    journal_write(r, "pending", pending_written);
}

void hooks_catch_up(hooks *h, const job *j)
{
    if (!h || !job_state_terminal(j->state) || j->finished_at <= 0)
        return;
    hooks_kind k = kind_of(j);
    if (!h->path[k] || h->since[k] == 0 || j->finished_at < h->since[k])
        return;
    char *base = hj_base(j->id, k, j->finished_at);
    bool have = hj_names_has(&h->known, base);
    free(base);
    if (have)
        return;
    /* Its record may predate the move's last write (j->dir then is its name in active/):
     * run only for files that are there. */
    char *dir = fsutil_join(k == HOOKS_ON_READY ? h->done_dir : h->failed_dir, j->dir);
    bool there = access(dir, F_OK) == 0;
    log_job_fields f = {.job_id = j->id, .job_name = j->name};
    if (!there)
        log_job(LOG_LVL_WARNING, &f, "hook %s not run: %s is not there", hooks_kind_name(k), dir);
    else
        log_job(LOG_LVL_NOTICE, &f,
                "hook %s: queued at start (the job finished just before "
                "the stop)",
                hooks_kind_name(k));
    free(dir);
    if (there)
        add_job(h, j);
}

/* ---- the journal at start ---- */

static void queue_loaded(hooks *h, hjentry *e)
{
    hrun *r = run_new(h, e->kind, e->job_id, e->finished_at);
    free(r->e.job_id);
    r->e = *e; /* takes its strings */
    memset(e, 0, sizeof *e);
    if (r->e.interrupted) {
        log_job_fields f = run_fields(r);
        log_job(LOG_LVL_NOTICE, &f,
                "hook %s: attempt %d was interrupted by the stop; "
                "running it again",
                run_hook(r), r->e.attempt);
    }
    queue_run(r, r->e.attempt, 0);
}

static void on_loaded(void *ud, hj_loaded *res)
{
    hooks *h = ud;
    for (size_t i = 0; i < res->n_bad; i++)
        log_error("hook journal %s: not readable; left in place", res->bad[i]);
    for (size_t i = 0; i < res->n && !h->stopping; i++)
        queue_loaded(h, &res->v[i]);
    hj_loaded_free(res);
    unref(h);
}

void hooks_caught_up(hooks *h)
{
    if (!h)
        return;
    h->refs++;
    int rc = hj_load(h->loop, h->dir, &h->known, on_loaded, h);
    if (rc < 0) {
        log_error("cannot read the hook journal %s: %s", h->dir, uv_strerror(rc));
        h->refs--; /* taken just above: never the last */
    }
}

/* ---- configuration ---- */

static void since_write(hooks *h, hooks_kind k);

typedef struct sctx {
    hooks *h;
    hooks_kind k;
} sctx;

static void since_done(void *ud)
{
    sctx *c = ud;
    hooks *h = c->h;
    hooks_kind k = c->k;
    free(c);
    h->since_busy[k] = false;
    if (h->since_dirty[k])
        since_write(h, k);
    unref(h);
}

/* One write of <hook>.since at a time per hook, so that the last one wins. */
static void since_write(hooks *h, hooks_kind k)
{
    if (h->since_busy[k]) {
        h->since_dirty[k] = true;
        return;
    }
    h->since_dirty[k] = false;
    sctx *c = xcalloc(1, sizeof *c);
    c->h = h;
    c->k = k;
    h->since_busy[k] = true;
    h->refs++;
    if (hj_since_write(h->loop, h->dir, k, h->since[k], since_done, c) < 0) {
        log_warn("cannot queue the write of %s's %s.since", h->dir, hooks_kind_name(k));
        h->since_busy[k] = false;
        free(c);
        h->refs--; /* taken just above: never the last */
    }
}

static hookq_limits limits_of(const config *c)
{
    return (hookq_limits){.timeout_ms = c->hooks.timeout_ms,
                          .retries = c->hooks.retries,
                          .max_parallel = c->hooks.max_parallel};
}

/* <hook>.since: written (on the pool) when the hook becomes configured, removed when it
 * is not; start says whether the file may already exist. */
static void set_paths(hooks *h, const config *c, bool start)
{
    const char *paths[HOOKS_KINDS] = {c->hooks.on_ready, c->hooks.on_failed, c->hooks.on_export};
    for (int i = 0; i < HOOKS_KINDS; i++) {
        hooks_kind k = (hooks_kind)i;
        free(h->path[k]);
        h->path[k] = paths[k] ? xstrdup(paths[k]) : NULL;
        if (paths[k] && h->since[k] == 0) {
            h->since[k] = start ? hj_since_read(h->dir, k) : 0;
            if (h->since[k] == 0) {
                h->since[k] = time_now_ms();
                since_write(h, k);
            }
        } else if (!paths[k] && (h->since[k] != 0 || start)) {
            h->since[k] = 0;
            since_write(h, k);
        }
    }
}

void hooks_configure(hooks *h, const config *c)
{
    set_paths(h, c, false);
    hookq_limits l = limits_of(c);
    hookq_set_limits(h->q, &l);
    pump(h);
}

/* Hooks run with the working directory /: their paths must not be relative. */
static char *abs_dir(const char *p)
{
    char *r = realpath(p, NULL);
    if (r || p[0] == '/')
        return r ? r : xstrdup(p);
    char cwd[PATH_MAX];
    return getcwd(cwd, sizeof cwd) ? fsutil_join(cwd, p) : xstrdup(p);
}

hooks *hooks_new(const hooks_options *o, const config *c)
{
    hooks *h = xcalloc(1, sizeof *h);
    h->o = *o;
    h->loop = o->loop;
    h->dir = fsutil_join(o->state_dir, "hooks");
    h->done_dir = abs_dir(o->done_dir);
    h->failed_dir = abs_dir(o->failed_dir);
    hookq_limits l = limits_of(c);
    h->q = hookq_new(&l);
    uv_timer_init(h->loop, &h->timer);
    h->timer.data = h;
    h->refs = 2; /* the timer, and until hooks_stop */
    int rc = fsutil_mkdir_p(h->dir, 0750);
    if (rc == 0)
        rc = hj_list(h->dir, &h->known);
    if (rc < 0) {
        log_error("cannot use the hook journal %s: %s", h->dir, strerror(-rc));
        hooks_stop(h);
        return NULL;
    }
    set_paths(h, c, true);
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
    hj_names_free(&h->known);
    for (int k = 0; k < HOOKS_KINDS; k++)
        free(h->path[k]);
    free(h->stop_groups);
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

/* The groups signalled at the stop: done when none is left, SIGKILL to the rest after
 * HOOKS_STOP_GRACE_MS. */
static void on_stop_timer(uv_timer_t *t)
{
    hooks *h = t->data;
    bool late = uv_now(h->loop) - h->stop_at >= HOOKS_STOP_GRACE_MS;
    size_t alive = 0;
    for (size_t i = 0; i < h->n_stop_groups; i++) {
        if (kill(-h->stop_groups[i], 0) < 0)
            continue;
        alive++;
        if (late)
            (void)kill(-h->stop_groups[i], SIGKILL);
    }
    if (late && alive)
        log_notice("stop: %zu hook process group(s) still there %ds after SIGTERM: SIGKILL", alive,
                   HOOKS_STOP_GRACE_MS / 1000);
    if (late || !alive)
        uv_close((uv_handle_t *)t, on_timer_closed);
}

/* A running attempt: SIGTERM to its group, and its pipes are closed (nothing more is read
 * from it, and a process it left cannot hold the stop). */
static void stop_attempt(hooks *h, hrun *r)
{
    h->stop_groups[h->n_stop_groups++] = r->pgid;
    group_signal(r, SIGTERM);
    close_stream(&r->out);
    close_stream(&r->err);
    close_grace(r);
}

/* Each run: a running one gets SIGTERM then SIGKILL (its exit and pipes free it), one
 * whose journal write is out is freed when the write returns, the others now. Journal
 * entries stay as they are: a stopped run is "started" and runs again on the next start. */
void hooks_stop(hooks *h)
{
    if (!h || h->stopping)
        return;
    h->stopping = true;
    hookq_stop(h->q);
    size_t n = 0;
    for (const hrun *r = h->runs; r; r = r->next)
        n++;
    h->stop_groups = xcalloc(n + 1, sizeof *h->stop_groups);
    hrun *next;
    for (hrun *r = h->runs; r; r = next) {
        next = r->next;
        if (r->pgid > 0)
            stop_attempt(h, r);
        else if (!r->proc_open && !r->out.open && !r->err.open && !r->grace_open)
            run_free(r);
    }
    if (h->n_stop_groups) {
        uv_timer_init(h->loop, &h->stop_timer);
        h->stop_timer.data = h;
        h->stop_at = uv_now(h->loop);
        h->refs++;
        uv_timer_start(&h->stop_timer, on_stop_timer, HOOKS_STOP_POLL_MS, HOOKS_STOP_POLL_MS);
    }
    uv_close((uv_handle_t *)&h->timer, on_timer_closed);
    unref(h);
}
