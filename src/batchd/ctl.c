/* ctl: the io.batchd methods, backed by the live job table. The control module owns the
 * socket, framing and access checks; this file only answers. */
#include "batchd.h"

#include "batchd/log.h"
#include "batchd/notify.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static cJSON *get_info(void *ud)
{
    batchd *d = ud;
    cJSON *o = cJSON_CreateObject();
    char at[40];
    cJSON_AddStringToObject(o, "version", BATCHD_VERSION);
    cJSON_AddStringToObject(o, "started_at",
                            time_format_rfc3339(d->started_at, false, at, sizeof at));
    cJSON_AddBoolToObject(o, "paused", d->paused);
    const char *reason = batchd_pause_reason(d);
    if (reason)
        cJSON_AddStringToObject(o, "pause_reason", reason);
    else
        cJSON_AddNullToObject(o, "pause_reason");
    cJSON_AddStringToObject(o, "api_url", d->api_url);
    cJSON_AddStringToObject(o, "spool_dir", d->cfg->c.spool.dir);
    cJSON *counts = cJSON_AddObjectToObject(o, "jobs");
    for (int s = 0; s < JOB_STATE_COUNT; s++) {
        size_t n = 0;
        for (size_t i = 0; i < runner_count(d->runner); i++)
            if ((int)runner_job_at(d->runner, i)->state == s)
                n++;
        cJSON_AddNumberToObject(counts, job_state_name((job_state)s), (double)n);
    }
    /* Kept by the claim turns (runner.h): no directory is read here. */
    cJSON_AddNumberToObject(o, "incoming", (double)runner_incoming(d->runner));
    cJSON_AddNumberToObject(o, "waiting_for_slot", (double)runner_waiting_for_slot(d->runner));
    cJSON_AddNumberToObject(o, "stuck", (double)runner_stuck_count(d->runner));
    return o;
}

typedef struct job_ref {
    const job *j;
} job_ref;

/* Newest first: claim time, then id (a ULID, which sorts by time too). */
static int newest_first(const void *a, const void *b)
{
    const job *x = ((const job_ref *)a)->j, *y = ((const job_ref *)b)->j;
    if (x->created_at != y->created_at)
        return x->created_at > y->created_at ? -1 : 1;
    return -strcmp(x->id, y->id);
}

/* Only the jobs that are sent are turned into JSON: a small limit costs little whatever the
 * number of jobs known. */
static cJSON *list_jobs(void *ud, const char *const *states, size_t n_states, size_t limit)
{
    batchd *d = ud;
    size_t n_jobs = runner_count(d->runner);
    job_ref *match = xcalloc(n_jobs + 1, sizeof(*match));
    size_t n = 0;
    for (size_t i = 0; i < n_jobs; i++) {
        const job *j = runner_job_at(d->runner, i);
        bool keep = n_states == 0;
        for (size_t k = 0; k < n_states && !keep; k++)
            keep = strcmp(states[k], job_state_name(j->state)) == 0;
        if (keep)
            match[n++].j = j;
    }
    qsort(match, n, sizeof(*match), newest_first);
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n && i < limit; i++)
        cJSON_AddItemToArray(arr, job_to_public(match[i].j, false));
    free(match);
    return arr;
}

static const job *lookup(batchd *d, const char *key, const char **err)
{
    bool ambiguous = false;
    const job *r = runner_find(d->runner, key, &ambiguous);
    if (!r)
        *err = "io.batchd.NoSuchJob";
    else if (ambiguous) {
        *err = "io.batchd.AmbiguousJob";
        r = NULL;
    }
    return r;
}

/* As the runner's own job lines: "job ID (NAME): ...", with the journal fields. */
static log_job_fields fields_of(const job *j)
{
    log_job_fields f = {j->id, j->name, j->dataset_id, j->batch_id, job_state_name(j->state)};
    return f;
}

static cJSON *candidates(void *ud, const char *key)
{
    batchd *d = ud;
    /* The reply stays small whatever the number of jobs that share a short prefix. */
    const char *ids[CONTROL_CANDIDATES_MAX];
    size_t n = runner_candidates(d->runner, key, ids, BD_ARRAY_LEN(ids));
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < n && i < BD_ARRAY_LEN(ids); i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(ids[i]));
    return arr;
}

static cJSON *get_job(void *ud, const char *key, const char **err)
{
    const job *j = lookup(ud, key, err);
    return j ? job_to_public(j, true) : NULL;
}

static int retry(void *ud, const char *key, cJSON **job_out, const char **err, const char **err_msg)
{
    batchd *d = ud;
    const job *j = lookup(d, key, err);
    if (!j) {
        *err_msg = "no single job has that id or name";
        return -ENOENT;
    }
    bool waiting = j->retry_at > 0 && !job_state_terminal(j->state);
    int rc = runner_retry(d->runner, j);
    if (rc == -EBUSY) {
        *err = "io.batchd.InvalidState";
        *err_msg = "the job is running and not waiting to retry after an error: only a failed "
                   "or cancelled job, or one waiting for its retry time, can be retried";
        return rc;
    }
    if (rc == -EAGAIN) {
        *err = "io.batchd.InvalidState";
        *err_msg = "the job is still being moved to failed/; try again in a moment";
        return rc;
    }
    if (rc == -EINVAL) {
        *err = "io.batchd.InvalidState";
        *err_msg = "the job is ready: only a failed or cancelled job, or one waiting for its "
                   "retry time, can be retried";
        return rc;
    }
    if (rc < 0) {
        *err = "io.batchd.InvalidState";
        *err_msg = "the job's directory could not be moved back from failed/ to active/";
        return rc;
    }
    log_job_fields f = fields_of(j);
    log_job(LOG_LVL_NOTICE, &f, "%s by an operator",
            waiting ? "retried now, without waiting for its retry time," : "retried");
    *job_out = job_to_public(j, true);
    return 0;
}

static int cancel(void *ud, const char *key, cJSON **job_out, const char **err,
                  const char **err_msg)
{
    batchd *d = ud;
    const job *j = lookup(d, key, err);
    if (!j) {
        *err_msg = "no single job has that id or name";
        return -ENOENT;
    }
    if (runner_cancel(d->runner, j) < 0) {
        *err = "io.batchd.InvalidState";
        *err_msg = "the job has already finished";
        return -EINVAL;
    }
    log_job_fields f = fields_of(j);
    log_job(LOG_LVL_NOTICE, &f, "cancelled by an operator");
    *job_out = job_to_public(j, true);
    return 0;
}

static int export_(void *ud, const char *key, cJSON **job_out, const char **err,
                   const char **err_msg)
{
    batchd *d = ud;
    const job *j = lookup(d, key, err);
    if (!j) {
        *err_msg = "no single job has that id or name";
        return -ENOENT;
    }
    int rc = runner_export(d->runner, j);
    if (rc < 0) {
        *err = "io.batchd.InvalidState";
        *err_msg = rc == -ESHUTDOWN ? "batchd is stopping"
                   : rc == -ENOTSUP ? "exports are not available in this batchd"
                   : j->append.on   ? "an append job's batch is its target's: export the "
                                      "target job"
                                    : "only a ready job (in done/) can be exported: this one "
                                      "is not ready, not yet in done/, or has no batch";
        return rc;
    }
    const export_job *e = j->export;
    log_job_fields f = fields_of(j);
    log_job(LOG_LVL_NOTICE, &f, "export %s by an operator",
            e && e->state == EXPORT_REQUESTED ? "requested" : "in progress, followed");
    *job_out = job_to_public(j, true);
    return 0;
}

static void pause_(void *ud)
{
    batchd *d = ud;
    if (d->operator_paused)
        return;
    log_notice("paused by an operator: no new claims and no new requests; requests in flight "
               "finish; the pause holds across restarts until batchctl resume");
    batchd_set_paused(d, true, d->token_hold);
    backend_pause_marker(d, true);
}

static void resume_(void *ud)
{
    batchd *d = ud;
    if (!d->paused)
        return;
    if (d->token_hold) {
        log_notice("resumed by an operator: lifting the API token hold; requests are sent with "
                   "the token as it reads now (another 401 holds again)");
        batchd_reread_token(d);
    } else
        log_notice("resumed");
    if (d->operator_paused)
        backend_pause_marker(d, false);
    batchd_set_paused(d, false, false);
}

static cJSON *reload(void *ud, const char **err, char **err_msg)
{
    return batchd_reload(ud, err, err_msg);
}

static char *get_metrics(void *ud)
{
    return batchd_metrics_text(ud);
}

const control_ops ctl_ops = {
    .get_info = get_info,
    .list_jobs = list_jobs,
    .get_job = get_job,
    .retry = retry,
    .cancel = cancel,
    .export_job = export_,
    .candidates = candidates,
    .pause = pause_,
    .resume = resume_,
    .reload = reload,
    .get_metrics = get_metrics,
};
