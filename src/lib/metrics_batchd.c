/* metrics: batchd's families (names and meanings in batchd(8), METRICS), fed from the
 * runner's hooks. Pure: the daemon passes the time and the values it read from /proc. */
#include "batchd/metrics.h"

#include "batchd/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Requests: 5 ms to 10 s (an API call, an upload of a large file takes longer and lands in
 * +Inf). Claim to READY: 30 s to 2 h. A stage: from a quick validation to a long import. */
static const double request_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const double ready_buckets[] = {30, 60, 120, 300, 600, 900, 1800, 3600, 7200};
static const double stage_buckets[] = {0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200};

/* A job seen in a state by this process: when it entered it. */
typedef struct seen {
    char id[32];
    char state[24];
    int64_t since_ms;
} seen;

struct metrics {
    metrics_registry *r;
    metrics_family *build_info, *jobs, *finished, *requests, *request_seconds, *retries,
        *upload_bytes, *ready_seconds, *stage_seconds, *incoming, *waiting, *stuck, *paused,
        *hook_runs, *exports, *token_wait, *cpu, *rss, *vsz, *fds, *max_fds, *start_time;
    seen *seen;
    size_t n_seen, cap_seen;
};

#define LABELS(...)                      ((const char *const[]){__VA_ARGS__, NULL})
#define FAMILY(name, type, help, labels) metrics_family_add(m->r, name, type, help, labels, NULL, 0)
#define HISTOGRAM(name, help, labels, buckets)                                                     \
    metrics_family_add(m->r, name, METRICS_HISTOGRAM, help, labels, buckets, BD_ARRAY_LEN(buckets))

static void add_job_families(metrics *m)
{
    m->jobs = FAMILY("batchd_jobs", METRICS_GAUGE,
                     "Jobs the daemon knows, by state (finished ones: the newest 1000).",
                     LABELS("state"));
    m->finished = FAMILY("batchd_jobs_finished_total", METRICS_COUNTER,
                         "Jobs that reached ready, failed or cancelled, by outcome and error "
                         "code (none when there was no error).",
                         LABELS("outcome", "code"));
    m->ready_seconds =
        HISTOGRAM("batchd_job_ready_duration_seconds",
                  "Time from a job's claim to its batch being READY.", NULL, ready_buckets);
    m->stage_seconds = HISTOGRAM("batchd_job_stage_duration_seconds",
                                 "Time a job spent in a state before it moved on, by state.",
                                 LABELS("stage"), stage_buckets);
    m->incoming = FAMILY("batchd_incoming_entries", METRICS_GAUGE,
                         "Entries waiting in incoming/ to be claimed.", NULL);
    m->waiting = FAMILY("batchd_waiting_for_slot_entries", METRICS_GAUGE,
                        "Entries in incoming/ that would be claimed now but for [job] max_active "
                        "or a pause.",
                        NULL);
    m->stuck = FAMILY("batchd_stuck_entries", METRICS_GAUGE,
                      "Entries in incoming/ that cannot be claimed (retried every minute).", NULL);
    m->paused = FAMILY("batchd_paused", METRICS_GAUGE,
                       "1 when claims and new requests are paused for this reason (operator, "
                       "api_token_rejected), else 0.",
                       LABELS("reason"));
}

static void add_api_families(metrics *m)
{
    m->requests = FAMILY("batchd_api_requests_total", METRICS_COUNTER,
                         "Requests to the API and to upload URLs that ended, by endpoint and "
                         "HTTP status class (network: no response).",
                         LABELS("endpoint", "status_class"));
    m->request_seconds = HISTOGRAM("batchd_api_request_duration_seconds",
                                   "Time from sending a request to its end, by endpoint.",
                                   LABELS("endpoint"), request_buckets);
    m->retries =
        FAMILY("batchd_api_retries_total", METRICS_COUNTER,
               "Failed requests whose step is retried later, by reason.", LABELS("reason"));
    m->upload_bytes = FAMILY("batchd_upload_bytes_total", METRICS_COUNTER,
                             "Bytes of data files sent to upload URLs.", NULL);
    m->token_wait = FAMILY("batchd_rate_limit_wait_seconds_total", METRICS_COUNTER,
                           "Time requests waited for the API token bucket ([api] max_rate).", NULL);
    m->hook_runs = FAMILY("batchd_hook_runs_total", METRICS_COUNTER,
                          "Hook runs that ended, by hook and outcome.", LABELS("hook", "outcome"));
    m->exports = FAMILY("batchd_exports_total", METRICS_COUNTER,
                        "Exports of ready jobs' responses that ended, by outcome (complete: the "
                        "ZIP is in done/NAME/exports/; failed).",
                        LABELS("outcome"));
}

static void add_process_families(metrics *m)
{
    m->cpu = FAMILY("process_cpu_seconds_total", METRICS_COUNTER,
                    "Total user and system CPU time spent in seconds.", NULL);
    m->rss = FAMILY("process_resident_memory_bytes", METRICS_GAUGE,
                    "Resident memory size in bytes.", NULL);
    m->vsz = FAMILY("process_virtual_memory_bytes", METRICS_GAUGE, "Virtual memory size in bytes.",
                    NULL);
    m->fds = FAMILY("process_open_fds", METRICS_GAUGE, "Number of open file descriptors.", NULL);
    m->max_fds =
        FAMILY("process_max_fds", METRICS_GAUGE, "Maximum number of open file descriptors.", NULL);
    m->start_time = FAMILY("process_start_time_seconds", METRICS_GAUGE,
                           "Start time of the process since unix epoch in seconds.", NULL);
}

metrics *metrics_new(const char *version)
{
    metrics *m = xcalloc(1, sizeof *m);
    m->r = metrics_registry_new();
    m->build_info =
        FAMILY("batchd_build_info", METRICS_GAUGE,
               "Always 1; the version label says which batchd is running.", LABELS("version"));
    metrics_set(m->build_info, LABELS(version), 1);
    add_job_families(m);
    add_api_families(m);
    add_process_families(m);
    /* The unlabelled totals exist from the start: a rate over them needs the zero. */
    metrics_touch(m->ready_seconds, NULL);
    metrics_inc(m->upload_bytes, NULL, 0);
    metrics_inc(m->exports, LABELS("complete"), 0);
    metrics_inc(m->exports, LABELS("failed"), 0);
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    metrics_registry_free(m->r);
    free(m->seen);
    free(m);
}

static seen *seen_find(metrics *m, const char *id)
{
    for (size_t i = 0; i < m->n_seen; i++)
        if (strcmp(m->seen[i].id, id) == 0)
            return &m->seen[i];
    return NULL;
}

static void seen_add(metrics *m, const char *id, const char *state, int64_t now_ms)
{
    if (m->n_seen == m->cap_seen) {
        m->cap_seen = m->cap_seen ? m->cap_seen * 2 : 64;
        m->seen = xrealloc(m->seen, m->cap_seen * sizeof(seen));
    }
    seen *e = &m->seen[m->n_seen++];
    snprintf(e->id, sizeof e->id, "%s", id);
    snprintf(e->state, sizeof e->state, "%s", state);
    e->since_ms = now_ms;
}

static bool terminal(const char *state)
{
    return strcmp(state, "ready") == 0 || strcmp(state, "failed") == 0 ||
           strcmp(state, "cancelled") == 0;
}

/* A stage is timed from the first change this process sees in it; a finished job (one
 * recovered finished, or a history note added after its end) has no stage left. */
void metrics_job_changed(metrics *m, const job *j, const char *as_state, int64_t now_ms)
{
    const char *state = as_state ? as_state : job_state_name(j->state);
    seen *e = seen_find(m, j->id);
    if (!e) {
        if (!terminal(state))
            seen_add(m, j->id, state, now_ms);
        return;
    }
    if (strcmp(e->state, state) == 0)
        return;
    double in_stage = (double)(now_ms - e->since_ms) / 1000.0;
    metrics_observe(m->stage_seconds, LABELS(e->state), in_stage > 0 ? in_stage : 0);
    if (!terminal(state)) {
        snprintf(e->state, sizeof e->state, "%s", state);
        e->since_ms = now_ms;
        return;
    }
    *e = m->seen[--m->n_seen];
}

/* Counted where the runner says a job finished, not from its changes: a rejected claim is
 * finished from its first change, and a finished job changes again when a hook's outcome is
 * noted in its history. */
void metrics_job_finished(metrics *m, const job *j, int64_t now_ms)
{
    const char *state = job_state_name(j->state);
    const char *code = j->state == JOB_FAILED && j->error_code ? j->error_code : "none";
    metrics_inc(m->finished, LABELS(state, code), 1);
    if (j->state == JOB_READY) {
        double total = (double)(now_ms - j->created_at) / 1000.0;
        metrics_observe(m->ready_seconds, NULL, total > 0 ? total : 0);
    }
}

static const char *status_class(long status)
{
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    if (status >= 100 && status < 600)
        return classes[status / 100 - 1];
    return "network";
}

void metrics_request_done(metrics *m, const metrics_request *rq)
{
    metrics_inc(m->requests, LABELS(rq->endpoint, status_class(rq->status)), 1);
    double s = (double)rq->latency_ms / 1000.0;
    metrics_observe(m->request_seconds, LABELS(rq->endpoint), s > 0 ? s : 0);
    if (rq->retry_reason)
        metrics_inc(m->retries, LABELS(rq->retry_reason), 1);
    if (rq->upload_bytes > 0)
        metrics_inc(m->upload_bytes, NULL, (double)rq->upload_bytes);
}

void metrics_hook_run(metrics *m, const char *hook, const char *outcome)
{
    metrics_inc(m->hook_runs, LABELS(hook, outcome), 1);
}

void metrics_export_ended(metrics *m, bool ok)
{
    metrics_inc(m->exports, LABELS(ok ? "complete" : "failed"), 1);
}

static void set_if_known(metrics_family *f, double v)
{
    metrics_family_clear(f);
    if (v >= 0)
        metrics_set(f, NULL, v);
}

static void set_total(metrics_family *f, double v)
{
    metrics_family_clear(f);
    if (v >= 0)
        metrics_inc(f, NULL, v);
}

char *metrics_render(metrics *m, const metrics_snapshot *s)
{
    metrics_family_clear(m->jobs);
    for (int i = 0; i < JOB_STATE_COUNT; i++)
        metrics_set(m->jobs, LABELS(job_state_name((job_state)i)), (double)s->jobs_by_state[i]);
    set_if_known(m->incoming, (double)s->incoming);
    set_if_known(m->waiting, (double)s->waiting_for_slot);
    set_if_known(m->stuck, (double)s->stuck);
    metrics_family_clear(m->paused);
    static const char *const reasons[] = {"operator", "api_token_rejected"};
    bool named = false;
    for (size_t i = 0; i < BD_ARRAY_LEN(reasons); i++) {
        bool on = s->paused && s->pause_reason && strcmp(s->pause_reason, reasons[i]) == 0;
        named = named || on;
        metrics_set(m->paused, LABELS(reasons[i]), on ? 1 : 0);
    }
    if (s->paused && !named)
        metrics_set(m->paused, LABELS(s->pause_reason ? s->pause_reason : "unknown"), 1);
    /* Totals kept elsewhere (the HTTP client, the kernel): set afresh on each render. */
    set_total(m->token_wait, s->rate_limit_wait_seconds);
    set_total(m->cpu, s->process_cpu_seconds);
    set_if_known(m->rss, s->process_resident_bytes);
    set_if_known(m->vsz, s->process_virtual_bytes);
    set_if_known(m->fds, s->process_open_fds);
    set_if_known(m->max_fds, s->process_max_fds);
    set_if_known(m->start_time, s->process_start_time_seconds);
    return metrics_registry_render(m->r);
}
