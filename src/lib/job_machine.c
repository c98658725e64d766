/* job_machine: the transitions of a job, from claim to READY. See include/batchd/job.h.
 *
 * Crash safety rests on two rules. A call with a side effect is recorded as pending_op
 * (and persisted by the caller) before it is sent, and cleared when its outcome is known.
 * A pending_op found without a request in flight (after a restart, or after a timeout or a
 * dropped connection) means the outcome is unknown, and job_next first finds out what
 * happened (import status, the workspace's batches, the batch status) before acting again. */
#include "batchd/apitext.h"
#include "batchd/backoff.h"
#include "batchd/job.h"
#include "batchd/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_ROOT "/api/v1/data-collection"
/* Upload URLs refused this many times in a row fail the job instead of looping. */
#define UPLOAD_REFUSALS_MAX 5
/* Syncs the API lost (404 to their poll) renewed in a row before the job fails. */
#define SYNC_RENEWALS_MAX 5
/* Record-level errors of an import kept in error_details (error.json is capped anyway). */
#define IMPORT_ERRORS_MAX   1000
#define IMPORT_ERRORS_BYTES (48 * 1024)

static void set_str(char **dst, const char *s)
{
    char *n = s ? xstrdup(s) : NULL;
    free(*dst);
    *dst = n;
}

/* Keeps a text the API sent (a status, a content type): cleaned by apitext. */
static void set_api_str(char **dst, const char *s, const job_reply *r)
{
    char *n = apitext_clean_str(s, r->secret);
    free(*dst);
    *dst = n;
}

/* Fails the job: the message is formatted once, and owns api_error and details. */
static void vfail(job *j, int64_t now, const char *code, long http_status, cJSON *api_error,
                  cJSON *details, const char *fmt, va_list ap)
    __attribute__((format(printf, 7, 0)));

static void vfail(job *j, int64_t now, const char *code, long http_status, cJSON *api_error,
                  cJSON *details, const char *fmt, va_list ap)
{
    j->failed_stage = j->state;
    set_str(&j->error_code, code);
    free(j->error_message);
    char *msg = xvasprintf(fmt, ap);
    /* The parts from the API are cleaned already; this caps the whole and keeps it UTF-8. */
    j->error_message = apitext_clean_str(msg, NULL);
    free(msg);
    j->http_status = http_status;
    cJSON_Delete(j->api_error);
    j->api_error = api_error;
    cJSON_Delete(j->error_details);
    j->error_details = details;
    j->finished_at = now;
    job_set_state(j, JOB_FAILED, now, j->error_message);
}

static void fail(job *j, int64_t now, const char *code, long http_status, cJSON *api_error,
                 cJSON *details, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static void fail(job *j, int64_t now, const char *code, long http_status, cJSON *api_error,
                 cJSON *details, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(j, now, code, http_status, api_error, details, fmt, ap);
    va_end(ap);
}

void job_fail(job *j, int64_t now, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(j, now, code, 0, NULL, cJSON_CreateArray(), fmt, ap);
    va_end(ap);
}

static int64_t poll_delay(const job *j, const job_params *p, uint64_t rnd)
{
    return backoff_poll_interval((unsigned)j->polls, p->poll_initial_ms, p->poll_max_ms,
                                 p->poll_multiplier, 0.1, rnd);
}

static void start_waiting(job *j, job_state s, const job_params *p, int64_t now, uint64_t rnd,
                          const char *note)
{
    job_set_state(j, s, now, note);
    j->wait_started_at = now;
    j->poll_at = now + poll_delay(j, p, rnd);
}

static bool url_usable(const job *j, const job_params *p, int64_t now)
{
    if (!j->import_id || !j->upload_url)
        return false;
    return j->upload_expires_at == 0 || j->upload_expires_at - p->url_margin_ms > now;
}

static const char *dataset_name(const job *j)
{
    const char *n = json_str(cJSON_GetObjectItemCaseSensitive(j->spec, "dataset"), "name");
    return n ? n : j->name;
}

static bool schema_has_group_field(const job *j)
{
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j->spec, "dataset"),
                                         "schema"),
        "fields");
    const cJSON *f;
    cJSON_ArrayForEach(f, fields)
    {
        const char *t = json_str(f, "type");
        if (t && strcmp(t, "task_group_id") == 0)
            return true;
    }
    return false;
}

/* The step of a waiting state (importing, processing): start the clock, give up after the
 * timeout, otherwise poll when due. Returns true with *a filled, or false after failing the
 * job (the caller goes round again and finishes it). */
static bool wait_step(job *j, int64_t timeout_ms, const char *what, const char *last_status,
                      job_op poll_op, int64_t now, job_action *a, bool *changed)
{
    if (j->wait_started_at == 0) {
        j->wait_started_at = now;
        *changed = true;
    }
    if (now - j->wait_started_at >= timeout_ms) {
        char d[32];
        fail(j, now, "timeout", 0, NULL, NULL, "the %s (%s); last status %s", what,
             duration_format(timeout_ms, d, sizeof d), last_status ? last_status : "unknown");
        *changed = true;
        return false;
    }
    if (j->poll_at > now) {
        a->kind = JOB_ACT_WAIT;
        a->until = j->poll_at;
    } else {
        a->kind = JOB_ACT_SEND;
        a->op = poll_op;
    }
    return true;
}

/* Each step_* below: one state's step. Returns true when *a is decided (the caller returns
 * it), false when the state moved without a call (the caller looks at the new state). */

static bool act_send(job_action *a, job_op op)
{
    a->kind = JOB_ACT_SEND;
    a->op = op;
    return true;
}

static bool step_create_dataset(job *j, int64_t now, job_action *a, bool *changed)
{
    if (j->dataset_id) {
        job_set_state(j, JOB_UPLOADING, now, "uploading");
        *changed = true;
        return false;
    }
    if (j->pending_op == JOB_OP_CREATE_DATASET) {
        /* No way to look a dataset up (the API has no list): create again and say so, so a
         * person can find the orphan if the first create did land. */
        job_note(j, now,
                 "the outcome of an earlier dataset create is unknown; creating again "
                 "(a dataset named '%s' may be left orphaned in workspace %s)",
                 dataset_name(j), j->workspace_id ? j->workspace_id : "?");
        j->pending_op = JOB_OP_NONE;
        *changed = true;
    }
    return act_send(a, JOB_OP_CREATE_DATASET);
}

static bool step_uploading(job *j, const job_params *p, int64_t now, uint64_t rnd, job_action *a,
                           bool *changed)
{
    if (j->uploaded) {
        start_waiting(j, JOB_IMPORTING, p, now, rnd, "uploaded; waiting for the import");
        *changed = true;
        return false;
    }
    if (j->pending_op == JOB_OP_UPLOAD)
        return act_send(a, JOB_OP_CHECK_UPLOAD);
    if (j->pending_op == JOB_OP_UPLOAD_URL) {
        /* An unused import stays uninitialised and is harmless: just ask again. */
        job_note(j, now,
                 "the outcome of an earlier upload-URL request is unknown; requesting a new one");
        j->pending_op = JOB_OP_NONE;
        *changed = true;
    }
    return act_send(a, url_usable(j, p, now) ? JOB_OP_UPLOAD : JOB_OP_UPLOAD_URL);
}

static bool step_remote(job *j, const job_params *p, int64_t now, uint64_t rnd, job_action *a,
                        bool *changed)
{
    if (j->state == JOB_CREATING_BATCH) {
        if (!j->batch_id)
            return act_send(a, j->pending_op == JOB_OP_CREATE_BATCH ? JOB_OP_FIND_BATCH
                                                                    : JOB_OP_CREATE_BATCH);
        job_set_state(j, JOB_SETTING_UP, now, "setting up the batch");
    } else {
        if (!j->setup_done)
            return act_send(a, j->pending_op == JOB_OP_SETUP ? JOB_OP_CHECK_SETUP : JOB_OP_SETUP);
        start_waiting(j, JOB_PROCESSING, p, now, rnd, "set up; waiting for READY");
    }
    *changed = true;
    return false;
}

static bool step_processing(job *j, const job_params *p, int64_t now, job_action *a, bool *changed)
{
    if (j->batch_status && strcmp(j->batch_status, "READY") == 0) {
        if (j->total_task_count < 0)
            return act_send(a, JOB_OP_GET_BATCH);
        j->finished_at = now;
        job_set_state(j, JOB_READY, now, "ready");
        *changed = true;
        return false;
    }
    return wait_step(j, p->batch_timeout_ms, "batch did not become READY within batch_timeout",
                     j->batch_status, JOB_OP_BATCH_STATUS, now, a, changed);
}

/* An append job's last step: request a sync of the batch, wait for it, then read the batch's
 * new totals. A request whose outcome is unknown is simply made again: a sync takes only the
 * datapoints no earlier sync took, so a second one finds nothing left and creates nothing. */
static bool step_syncing(job *j, const job_params *p, int64_t now, job_action *a, bool *changed)
{
    job_append *ap = &j->append;
    if (ap->sync_status && strcmp(ap->sync_status, "complete") == 0) {
        if (j->total_task_count < 0)
            return act_send(a, JOB_OP_GET_BATCH);
        j->finished_at = now;
        job_set_state(j, JOB_READY, now, "ready");
        *changed = true;
        return false;
    }
    if (!ap->sync_id) {
        if (j->pending_op == JOB_OP_SYNC) {
            job_note(j, now,
                     "the outcome of an earlier sync request is unknown; requesting a sync again "
                     "(it takes only what no earlier sync took)");
            j->pending_op = JOB_OP_NONE;
            *changed = true;
        }
        return act_send(a, JOB_OP_SYNC);
    }
    return wait_step(j, p->batch_timeout_ms, "sync did not finish within batch_timeout",
                     ap->sync_status, JOB_OP_GET_SYNC, now, a, changed);
}

static bool step_state(job *j, const job_params *p, int64_t now, uint64_t rnd, job_action *a,
                       bool *changed)
{
    switch (j->state) {
    case JOB_QUEUED:
        job_set_state(j, JOB_VALIDATING, now, "validating records");
        *changed = true;
        return false;
    case JOB_VALIDATING:
        a->kind = JOB_ACT_VALIDATE;
        return true;
    case JOB_CREATING_DATASET:
        return step_create_dataset(j, now, a, changed);
    case JOB_UPLOADING:
        return step_uploading(j, p, now, rnd, a, changed);
    case JOB_IMPORTING:
        return wait_step(j, p->import_timeout_ms, "import did not finish within import_timeout",
                         j->import_status, JOB_OP_GET_IMPORT, now, a, changed);
    case JOB_CREATING_BATCH:
    case JOB_SETTING_UP:
        return step_remote(j, p, now, rnd, a, changed);
    case JOB_PROCESSING:
        return step_processing(j, p, now, a, changed);
    case JOB_SYNCING:
        return step_syncing(j, p, now, a, changed);
    default:
        return true;
    }
}

job_action job_next(job *j, const job_params *p, int64_t now, uint64_t rnd, bool *changed)
{
    job_action a = {JOB_ACT_NONE, JOB_OP_NONE, 0};
    *changed = false;
    for (;;) {
        if (job_state_terminal(j->state)) {
            a.kind = JOB_ACT_FINISH;
            return a;
        }
        if (j->retry_at > now) {
            a.kind = JOB_ACT_WAIT;
            a.until = j->retry_at;
            return a;
        }
        if (step_state(j, p, now, rnd, &a, changed))
            return a;
    }
}

job_op job_mark_sent(job *j, job_op op, int64_t now)
{
    job_op saved = j->pending_op;
    if (job_op_has_side_effect(op))
        j->pending_op = op;
    if (op != JOB_OP_UPLOAD)
        j->api_requests++;
    else
        j->bytes_sent = 0;
    j->updated_at = now;
    return saved;
}

void job_unsent(job *j, job_op saved_pending)
{
    j->pending_op = saved_pending;
}

/* Forgets what the job did remotely, on a retry that changed where its records go (another
 * target, or an append job that no longer appends, or the other way round): what exists is
 * left as it is and named in the history; an outcome that was still unknown no longer
 * matters to this job. */
static void forget_remote(job *j, int64_t now, const char *why)
{
    if (j->dataset_id || j->import_id || j->batch_id)
        job_note(j, now, "%s; dataset %s, import %s and batch %s are left as they are", why,
                 j->dataset_id ? j->dataset_id : "(none)", j->import_id ? j->import_id : "(none)",
                 j->batch_id ? j->batch_id : "(none)");
    set_str(&j->dataset_id, NULL);
    set_str(&j->import_id, NULL);
    set_str(&j->upload_url, NULL);
    set_str(&j->import_status, NULL);
    set_str(&j->batch_id, NULL);
    set_str(&j->batch_status, NULL);
    j->uploaded = false;
    j->setup_done = false;
    j->pending_op = JOB_OP_NONE;
    j->upload_refusals = 0;
    j->total_task_count = -1;
    j->total_task_groups = -1;
    job_append_reset_sync(&j->append);
    j->append.partial_accepted = false;
}

/* An append job goes straight to the upload into the target's dataset. A retry whose target
 * has changed starts over: an import into the old dataset is not this job's now. */
static void start_append(job *j, const job_validation *v, int64_t now)
{
    if (!v->dataset_id || !v->batch_id) {
        job_fail(j, now, "invalid_job", "the append target has no dataset or batch id");
        return;
    }
    if (!j->append.on)
        forget_remote(j, now, "now an append job");
    else if (j->dataset_id && strcmp(j->dataset_id, v->dataset_id) != 0)
        forget_remote(j, now, "the target changed");
    else if (j->batch_id && strcmp(j->batch_id, v->batch_id) != 0) {
        /* The same dataset under another batch: the import stands, the sync is the new
         * batch's to make. */
        job_note(j, now, "the target batch changed from %s; syncing the new one", j->batch_id);
        job_append_reset_sync(&j->append);
        j->total_task_count = -1;
        j->total_task_groups = -1;
    }
    j->append.on = true;
    set_str(&j->append.target_job_id, v->append_job_id);
    set_str(&j->append.target_job_name, v->append_job_name);
    set_str(&j->dataset_id, v->dataset_id);
    set_str(&j->batch_id, v->batch_id);
    char *msg =
        v->append_job_id
            ? xasprintf("valid; appending to job %s (batch %s)",
                        v->append_job_name ? v->append_job_name : v->append_job_id, v->batch_id)
            : xasprintf("valid; appending to batch %s (dataset %s)", v->batch_id, v->dataset_id);
    job_set_state(j, JOB_UPLOADING, now, msg);
    free(msg);
}

void job_on_validated(job *j, const job_validation *v, int64_t now)
{
    if (j->state != JOB_VALIDATING)
        return;
    if (!v->ok) {
        fail(j, now, v->code ? v->code : "invalid_job", 0, NULL,
             v->errors ? cJSON_Duplicate(v->errors, 1) : cJSON_CreateArray(), "%s",
             v->message ? v->message : "the job is invalid");
        return;
    }
    cJSON_Delete(j->spec);
    j->spec = v->spec ? cJSON_Duplicate(v->spec, 1) : cJSON_CreateObject();
    set_str(&j->workspace_id, json_str(j->spec, "workspace_id"));
    set_str(&j->upload_path, v->upload_path);
    set_str(&j->upload_name, v->upload_name);
    set_str(&j->upload_sha256, v->sha256 && *v->sha256 ? v->sha256 : NULL);
    j->records = v->records;
    j->rejected_records = v->rejected;
    j->bytes_total = v->bytes;
    if (v->rejected > 0)
        job_note(j, now, "%" PRId64 " invalid records skipped (see rejected.jsonl)", v->rejected);
    if (v->append) {
        start_append(j, v, now);
    } else {
        if (j->append.on) {
            forget_remote(j, now, "no longer an append job");
            j->append.on = false;
            set_str(&j->append.target_job_id, NULL);
            set_str(&j->append.target_job_name, NULL);
        }
        job_set_state(j, JOB_CREATING_DATASET, now, "valid; creating the dataset");
    }
    char msg[96];
    snprintf(msg, sizeof msg, "%" PRId64 " records, %" PRId64 " bytes", v->records, v->bytes);
    job_note(j, now, "%s", msg);
}

void job_on_progress(job *j, int64_t bytes_sent)
{
    j->bytes_sent = bytes_sent;
}

/* ---- replies ---- */

static cJSON *parse_body(const job_reply *r)
{
    if (!r->body || !r->body_len)
        return NULL;
    return cJSON_ParseWithLength(r->body, r->body_len);
}

/* What a failed exchange saw, for last_error and the final message: "upload: HTTP 500". */
static char *reply_text(job_op op, const job_reply *r)
{
    if (r->net == JOB_NET_OK)
        return xasprintf("%s: HTTP %ld", job_op_name(op), r->status);
    if (r->net == JOB_NET_TOO_LARGE)
        return xasprintf("%s: HTTP %ld with a reply too large to read (%s)", job_op_name(op),
                         r->status,
                         r->error_text && *r->error_text ? r->error_text : "over the size limit");
    return xasprintf("%s: %s", job_op_name(op),
                     r->error_text && *r->error_text
                         ? r->error_text
                         : (r->net == JOB_NET_TIMEOUT ? "timed out" : "connection failed"));
}

/* The API's body as error.json keeps it: JSON when it parses, else the text. */
static cJSON *reply_body_json(const job_reply *r)
{
    if (r->net == JOB_NET_TOO_LARGE)
        return NULL; /* cut off: neither whole nor worth keeping */
    return apitext_body(r->body, r->body_len, r->secret);
}

/* The retry bound is reached: fail with what the last attempt saw. The pending_op is kept
 * when the outcome is unknown, so a later `batchctl retry` checks it before acting again. */
static void give_up(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now)
{
    bool answered = r->net == JOB_NET_OK || r->net == JOB_NET_TOO_LARGE;
    /* The transport's text is the network's: cleaned like any API text. */
    char *raw = reply_text(op, r);
    char *what = apitext_clean_str(raw, r->secret);
    free(raw);
    fail(j, now, answered ? "api_rejected" : "timeout", answered ? r->status : 0,
         reply_body_json(r), cJSON_CreateArray(),
         "gave up after %d attempts of %s; the last one ended with %s%s", p->retry_attempts_max,
         job_op_name(op), what,
         !job_op_has_side_effect(op) || j->pending_op != op ? ""
         : op == JOB_OP_SYNC ? " (its outcome is unknown: batchctl retry requests a sync again, "
                               "which takes only what no earlier one took)"
                             : " (its outcome is unknown: batchctl retry checks it before "
                               "sending it again)");
    free(what);
}

/* One more failed attempt of the current step: wait (full jitter growing with the attempts,
 * or the server's Retry-After), or give up once the step has failed retry_attempts_max times.
 * `attempts` counts per step, across the checks of unknown outcomes in between: only
 * progress resets it (see job_on_reply), so the delay keeps growing and the bound holds. */
static void retry_later(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                        uint64_t rnd, bool outcome_unknown, const char *why)
{
    if (!outcome_unknown && job_op_has_side_effect(op) && j->pending_op == op)
        j->pending_op = JOB_OP_NONE;
    j->attempts++;
    if (p->retry_attempts_max > 0 && j->attempts >= p->retry_attempts_max) {
        give_up(j, op, r, p, now);
        return;
    }
    bool honoured;
    int64_t delay =
        backoff_retry_delay((unsigned)j->attempts, p->retry_base_ms, p->retry_cap_ms,
                            r->retry_after, JOB_RETRY_AFTER_MAX_MS, now, rnd, &honoured);
    j->retry_at = now + delay;
    strbuf sb = {0};
    char *what = reply_text(op, r);
    strbuf_printf(&sb, "%s", what);
    free(what);
    if (why)
        strbuf_printf(&sb, " (%s)", why);
    if (honoured)
        strbuf_printf(&sb, " (Retry-After %s)", r->retry_after);
    free(j->last_error);
    /* The transport's error text and Retry-After come from the network. */
    j->last_error = apitext_clean(sb.data ? sb.data : "", sb.len, r->secret);
    strbuf_free(&sb);
    char d[32];
    job_note(j, now, "%s; attempt %d of %d failed, retrying in %s%s", j->last_error, j->attempts,
             p->retry_attempts_max, duration_format(delay, d, sizeof d),
             outcome_unknown && job_op_has_side_effect(op) ? " (outcome unknown: checking first)"
                                                           : "");
}

/* Real progress: the step's retry count and error start over. */
static void succeeded(job *j)
{
    j->attempts = 0;
    free(j->last_error);
    j->last_error = NULL;
}

/* A check of an unknown outcome (or a fresh upload URL) that succeeded is not progress of
 * the step it serves: the step itself has still failed that many times. It is progress only
 * when it found that the checked call did act. */
static bool step_progressed(const job *j, job_op op)
{
    switch (op) {
    case JOB_OP_CHECK_UPLOAD:
        return j->uploaded;
    case JOB_OP_FIND_BATCH:
        return j->batch_id != NULL;
    case JOB_OP_CHECK_SETUP:
        return j->setup_done;
    case JOB_OP_UPLOAD_URL:
    case JOB_OP_SYNC:
        /* Only a sync seen by a poll is progress: one that keeps vanishing must not reset
         * the bound of its step. */
        return false;
    default:
        return true;
    }
}

static void api_rejected(job *j, job_op op, const job_reply *r, int64_t now)
{
    /* Everything below is read from the cleaned body. */
    cJSON *body = apitext_body(r->body, r->body_len, r->secret);
    cJSON *details = NULL;
    const char *detail_text = NULL;
    char *flat = NULL;
    if (body && r->status == 422) {
        const cJSON *issues = cJSON_GetObjectItemCaseSensitive(body, "issues");
        if (cJSON_IsArray(issues)) {
            details = cJSON_CreateArray();
            const cJSON *is;
            cJSON_ArrayForEach(is, issues)
            {
                cJSON *c = cJSON_Duplicate(is, 1);
                char *path = xasprintf("batch.batch_items[%" PRId64 "].rows[%" PRId64
                                       "].columns[%" PRId64 "].items[%" PRId64 "]",
                                       json_int64(is, "page", 0), json_int64(is, "row", 0),
                                       json_int64(is, "column", 0), json_int64(is, "item", 0));
                cJSON_AddStringToObject(c, "path", path);
                free(path);
                cJSON_AddItemToArray(details, c);
            }
        }
        detail_text = json_str(body, "message");
    } else if (body) {
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(body, "error");
        const cJSON *detail = cJSON_GetObjectItemCaseSensitive(err ? err : body, "detail");
        if (cJSON_IsString(detail))
            detail_text = detail->valuestring;
        else if (detail) {
            details = cJSON_CreateArray();
            cJSON_AddItemToArray(details, cJSON_Duplicate(detail, 1));
        }
        /* The flat form {message, detail} of a refused sync: the why, then more about it. */
        const char *why = err || op != JOB_OP_SYNC ? NULL : json_str(body, "message");
        if (why) {
            flat = detail_text ? xasprintf("%s (%s)", why, detail_text) : xstrdup(why);
            detail_text = flat;
        }
    }
    const char *hint = r->status == 401   ? " (the API token was refused: check the token)"
                       : r->status == 403 ? " (no access to the workspace or resource)"
                                          : "";
    /* A 4xx is a definitive answer: the call did not act, nothing is left to check. */
    j->pending_op = JOB_OP_NONE;
    /* A sync refused outright (the batch is not READY, say) is a failed sync. */
    fail(j, now, op == JOB_OP_SYNC && r->status == 400 ? "sync_failed" : "api_rejected", r->status,
         body, details ? details : cJSON_CreateArray(), "the API rejected %s with HTTP %ld%s%s%s",
         job_op_name(op), r->status, detail_text ? ": " : "", detail_text ? detail_text : "", hint);
    free(flat);
}

static void protocol_error(job *j, job_op op, const job_reply *r, int64_t now, const char *what)
{
    cJSON *body = apitext_body(r->body, r->body_len, r->secret);
    /* A presigned URL is a bearer capability: it does not go into error.json. */
    cJSON_DeleteItemFromObjectCaseSensitive(body, "upload_url");
    fail(j, now, "api_rejected", r->status, body, cJSON_CreateArray(),
         "unexpected reply to %s (HTTP %ld): %s", job_op_name(op), r->status, what);
}

static void import_errors_to_details(job *j, const cJSON *import, const job_reply *r)
{
    cJSON *details = cJSON_CreateArray();
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(import, "errors");
    const cJSON *e;
    int total = cJSON_GetArraySize(errs), kept = 0;
    size_t bytes = 0;
    cJSON_ArrayForEach(e, errs)
    {
        /* The record keeps what error.json can show: a bounded number and size. */
        if (kept >= IMPORT_ERRORS_MAX || bytes >= IMPORT_ERRORS_BYTES)
            break;
        char *field = apitext_clean_str(json_str(e, "field"), r->secret);
        char *reason = apitext_clean_str(json_str(e, "reason"), r->secret);
        cJSON *d = cJSON_CreateObject();
        int64_t idx;
        if (json_get_int64(e, "record_index", &idx))
            cJSON_AddNumberToObject(d, "record_index", (double)idx);
        json_add_str_or_null(d, "field", field);
        json_add_str_or_null(d, "message", reason);
        bytes += 64 + (field ? strlen(field) : 0) + (reason ? strlen(reason) : 0);
        free(field);
        free(reason);
        cJSON_AddItemToArray(details, d);
        kept++;
    }
    cJSON_Delete(j->error_details);
    j->error_details = details;
    if (kept < total) {
        char suffix[64];
        snprintf(suffix, sizeof suffix, " (%d more record errors not listed)", total - kept);
        char *m = apitext_with_suffix(j->error_message, suffix);
        free(j->error_message);
        j->error_message = m;
    }
}

/* Applies an import status read from the API (poll or post-crash check). */
static void apply_import(job *j, const cJSON *body, const job_reply *r, const job_params *p,
                         int64_t now, uint64_t rnd)
{
    set_api_str(&j->import_status, json_str(body, "status"), r);
    const char *st = j->import_status;
    j->accepted_count = json_int64(body, "accepted_count", j->accepted_count);
    j->rejected_count = json_int64(body, "rejected_count", j->rejected_count);
    if (!st)
        st = "";
    if (strcmp(st, "complete") == 0) {
        if (j->append.on) {
            /* batch_timeout bounds the whole step, requests renewed on the way included. */
            j->wait_started_at = now;
            job_set_state(j, JOB_SYNCING, now, "import complete; syncing the batch");
        } else {
            job_set_state(j, JOB_CREATING_BATCH, now, "import complete; creating the batch");
        }
        job_note(j, now, "%" PRId64 " records accepted", j->accepted_count);
    } else if (strcmp(st, "partial") == 0 && j->append.on && j->append.partial_accepted) {
        j->wait_started_at = now;
        job_set_state(j, JOB_SYNCING, now,
                      "import partial, as before the retry; syncing the records it accepted");
    } else if (strcmp(st, "partial") == 0) {
        fail(j, now, "import_partial", 0, apitext_json(body, r->secret), NULL,
             "the import was partial: %" PRId64 " records accepted, %" PRId64 " rejected",
             j->accepted_count, j->rejected_count);
        import_errors_to_details(j, body, r);
    } else if (strcmp(st, "failed") == 0) {
        char *reason = apitext_clean_str(json_str(body, "reason"), r->secret);
        fail(j, now, "import_failed", 0, apitext_json(body, r->secret), NULL,
             "the import failed: %s", reason ? reason : "no reason given");
        free(reason);
        import_errors_to_details(j, body, r);
    } else if (strcmp(st, "pending_schema") == 0) {
        fail(j, now, "import_failed", 0, apitext_json(body, r->secret), cJSON_CreateArray(),
             "the import is pending_schema: the dataset has no schema");
    } else {
        j->polls++;
        j->poll_at = now + poll_delay(j, p, rnd);
    }
}

static const cJSON *find_batch_for_dataset(const cJSON *list, const char *dataset_id)
{
    const cJSON *results = cJSON_GetObjectItemCaseSensitive(list, "results");
    if (!cJSON_IsArray(results))
        results = list; /* tolerate a bare array */
    const cJSON *b;
    cJSON_ArrayForEach(b, results)
    {
        const char *did = json_str(b, "dataset_id");
        if (did && strcmp(did, dataset_id) == 0)
            return b;
        const cJSON *ds;
        cJSON_ArrayForEach(ds, cJSON_GetObjectItemCaseSensitive(b, "datasets"))
        {
            const char *id = json_str(ds, "id");
            if (id && strcmp(id, dataset_id) == 0)
                return b;
        }
    }
    return NULL;
}

/* What exists remotely, for a message naming what to clean up. malloc'd. */
static char *created_text(const job *j)
{
    strbuf sb = {0};
    if (j->dataset_id)
        strbuf_printf(&sb, "dataset %s", j->dataset_id);
    if (j->import_id)
        strbuf_printf(&sb, "%simport %s", sb.len ? ", " : "", j->import_id);
    if (j->batch_id)
        strbuf_printf(&sb, "%sbatch %s", sb.len ? ", " : "", j->batch_id);
    if (!sb.len)
        strbuf_puts(&sb, "nothing");
    return strbuf_steal(&sb);
}

/* An id from the API goes into the paths of later calls: anything but 1 to 128 letters,
 * digits, '-' and '_' (a '/', "..", "%2e", '?', '#', a space) could make a later call address
 * another resource. Such an id is a protocol error that fails the job, naming it and what
 * already exists (made_by_this_call: the reply itself reports a new resource with it).
 * Returns true when the id is usable. */
static bool id_usable(job *j, job_op op, const job_reply *r, int64_t now, const char *kind,
                      const char *id, bool made_by_this_call)
{
    if (apitext_id_ok(id))
        return true;
    char *shown = apitext_display(id, 256, r->secret);
    char *created = created_text(j);
    char *what = xasprintf("the %s id \"%s\" cannot be used in a URL (an id is 1 to %d letters, "
                           "digits, '-' or '_'); already created: %s%s%s",
                           kind, shown, APITEXT_ID_MAX, created,
                           made_by_this_call ? ", and the " : "", made_by_this_call ? kind : "");
    protocol_error(j, op, r, now, what);
    free(what);
    free(created);
    free(shown);
    return false;
}

/* The id member `key` of a reply that creates a resource: a usable string, or NULL after
 * failing the job with a message that names what came instead (missing, or not a string:
 * a number such as 12345 is shown as it was sent). */
static const char *reply_id(job *j, job_op op, const job_reply *r, int64_t now, const cJSON *body,
                            const char *key, const char *kind)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    if (cJSON_IsString(v))
        return id_usable(j, op, r, now, kind, v->valuestring, true) ? v->valuestring : NULL;
    char *what;
    if (!v) {
        what = xasprintf("no %s id (member \"%s\")", kind, key);
    } else {
        char *printed = json_print(v);
        char *shown = apitext_display(printed, 256, r->secret);
        what = xasprintf("the %s id %s is not a string (member \"%s\")", kind, shown, key);
        free(shown);
        free(printed);
    }
    protocol_error(j, op, r, now, what);
    free(what);
    return NULL;
}

/* A 2xx to a call about the dataset and the upload URL. */
static void ok_dataset(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                       uint64_t rnd, const cJSON *body)
{
    (void)p;
    (void)rnd;
    switch (op) {
    case JOB_OP_CREATE_DATASET: {
        const char *id = reply_id(j, op, r, now, body, "id", "dataset");
        if (!id)
            break;
        set_str(&j->dataset_id, id);
        j->pending_op = JOB_OP_NONE;
        job_set_state(j, JOB_UPLOADING, now, "dataset created; uploading");
        break;
    }
    case JOB_OP_UPLOAD_URL: {
        const char *url = json_str(body, "upload_url");
        const char *method = json_str(body, "http_method");
        if (!url || (method && strcmp(method, "PUT") != 0)) {
            protocol_error(j, op, r, now, "no upload_url, or not a PUT");
            break;
        }
        const char *imp = reply_id(j, op, r, now, body, "import_id", "import");
        if (!imp)
            break;
        /* The URL is kept in the record and used as it is: it must not hold the token (it is
         * never sent anywhere but the Authorization header of API calls). */
        if (apitext_has_secret(url, strlen(url), r->secret)) {
            protocol_error(j, op, r, now, "the upload URL contains the API token; not using it");
            break;
        }
        set_str(&j->upload_url, url);
        set_str(&j->import_id, imp);
        set_api_str(&j->upload_content_type, json_str(body, "content_type"), r);
        int64_t exp = 0;
        if (!json_str(body, "expires_at") ||
            time_parse_rfc3339(json_str(body, "expires_at"), &exp) < 0)
            exp = 0;
        j->upload_expires_at = exp;
        j->uploaded = false;
        set_str(&j->import_status, "uninitialised");
        j->pending_op = JOB_OP_NONE;
        job_note(j, now, "import %s created; uploading", imp);
        break;
    }
    default:
        break;
    }
}

/* A 2xx to a call about the upload and the import. */
static void ok_upload(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                      uint64_t rnd, const cJSON *body)
{
    switch (op) {
    case JOB_OP_UPLOAD:
        j->uploaded = true;
        j->upload_refusals = 0;
        j->pending_op = JOB_OP_NONE;
        if (j->bytes_total >= 0)
            j->bytes_sent = j->bytes_total;
        start_waiting(j, JOB_IMPORTING, p, now, rnd, "uploaded; waiting for the import");
        break;
    case JOB_OP_CHECK_UPLOAD: {
        const char *st = json_str(body, "status");
        if (!st) {
            protocol_error(j, op, r, now, "no import status");
            break;
        }
        j->pending_op = JOB_OP_NONE;
        if (strcmp(st, "uninitialised") == 0) {
            if (url_usable(j, p, now)) {
                job_note(j, now, "the earlier upload did not land; uploading again");
            } else {
                job_note(j, now,
                         "the earlier upload did not land and its URL has expired; "
                         "requesting a new one");
                free(j->upload_url);
                j->upload_url = NULL;
            }
            break;
        }
        j->uploaded = true;
        start_waiting(j, JOB_IMPORTING, p, now, rnd, "the earlier upload landed");
        apply_import(j, body, r, p, now, rnd);
        break;
    }
    case JOB_OP_GET_IMPORT:
        if (!json_str(body, "status")) {
            protocol_error(j, op, r, now, "no import status");
            break;
        }
        apply_import(j, body, r, p, now, rnd);
        break;
    default:
        break;
    }
}

/* A 2xx to a call about the batch. */
static void ok_batch(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                     uint64_t rnd, const cJSON *body)
{
    (void)p;
    (void)rnd;
    switch (op) {
    case JOB_OP_FIND_BATCH: {
        if (!cJSON_IsObject(body) && !cJSON_IsArray(body)) {
            protocol_error(j, op, r, now, "the batch list is not JSON");
            break;
        }
        const cJSON *b = find_batch_for_dataset(body, j->dataset_id);
        if (b && json_str(b, "id") && !id_usable(j, op, r, now, "batch", json_str(b, "id"), true))
            break;
        j->pending_op = JOB_OP_NONE;
        if (b && json_str(b, "id")) {
            set_str(&j->batch_id, json_str(b, "id"));
            set_api_str(&j->batch_status, json_str(b, "status"), r);
            job_note(j, now, "found batch %s created before the interruption", j->batch_id);
            if (j->batch_status && strcmp(j->batch_status, "UNINITIALISED") != 0)
                j->setup_done = true;
        } else {
            job_note(j, now, "no batch exists for dataset %s; creating it", j->dataset_id);
        }
        break;
    }
    case JOB_OP_CREATE_BATCH: {
        const char *id = reply_id(j, op, r, now, body, "id", "batch");
        if (!id)
            break;
        set_str(&j->batch_id, id);
        set_api_str(&j->batch_status, json_str(body, "status"), r);
        j->pending_op = JOB_OP_NONE;
        job_set_state(j, JOB_SETTING_UP, now, "batch created; setting up");
        break;
    }
    default:
        break;
    }
}

/* A 2xx to a call about the setup and the wait for READY. */
static void ok_setup(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                     uint64_t rnd, const cJSON *body)
{
    switch (op) {
    case JOB_OP_CHECK_SETUP: {
        if (!json_str(body, "status")) {
            protocol_error(j, op, r, now, "no batch status");
            break;
        }
        set_api_str(&j->batch_status, json_str(body, "status"), r);
        const char *st = j->batch_status;
        j->pending_op = JOB_OP_NONE;
        if (strcmp(st, "UNINITIALISED") == 0) {
            job_note(j, now, "the earlier setup did not land; setting up again");
        } else {
            j->setup_done = true;
            job_note(j, now, "the earlier setup landed (status %s)", st);
        }
        break;
    }
    case JOB_OP_SETUP:
        j->setup_done = true;
        j->pending_op = JOB_OP_NONE;
        start_waiting(j, JOB_PROCESSING, p, now, rnd, "set up; waiting for READY");
        break;
    case JOB_OP_BATCH_STATUS: {
        set_api_str(&j->batch_status, json_str(body, "status"), r);
        const char *st = j->batch_status;
        if (st && strcmp(st, "ERROR") == 0) {
            fail(j, now, "batch_error", 0, apitext_body(r->body, r->body_len, r->secret),
                 cJSON_CreateArray(), "the batch went to ERROR during setup");
        } else if (!st || strcmp(st, "READY") != 0) {
            j->polls++;
            j->poll_at = now + poll_delay(j, p, rnd);
        } else {
            job_note(j, now, "batch READY");
        }
        break;
    }
    case JOB_OP_GET_BATCH:
        set_api_str(&j->batch_status, json_str(body, "status"), r);
        j->total_task_count = json_int64(body, "total_task_count", 0);
        j->total_task_groups = json_int64(body, "total_task_groups", -1);
        break;
    default:
        break;
    }
}

/* Applies a sync's status, from the request's answer or a poll. */
static void apply_sync(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                       uint64_t rnd, const cJSON *body)
{
    job_append *ap = &j->append;
    const char *st = json_str(body, "status");
    if (!st || (strcmp(st, "queued") != 0 && strcmp(st, "processing") != 0 &&
                strcmp(st, "complete") != 0 && strcmp(st, "failed") != 0)) {
        protocol_error(j, op, r, now, st ? "an unknown sync status" : "no sync status");
        return;
    }
    const char *id = json_str(body, "sync_id");
    if (op == JOB_OP_GET_SYNC && id && strcmp(id, ap->sync_id) != 0) {
        protocol_error(j, op, r, now, "the status of another sync");
        return;
    }
    set_str(&ap->sync_status, st);
    if (strcmp(st, "complete") == 0) {
        ap->sync_renewals = 0;
        ap->tasks_created = json_int64(body, "tasks_created", -1);
        ap->datapoints_processed = json_int64(body, "datapoints_processed", -1);
        ap->groups_created = json_int64(body, "groups_created", -1);
        ap->groups_expanded = json_int64(body, "groups_expanded", -1);
        /* The batch's totals are read after the sync, not kept from before it. */
        j->total_task_count = -1;
        j->total_task_groups = -1;
        job_note(j, now,
                 "sync %s complete: %" PRId64 " tasks created from %" PRId64 " datapoints, %" PRId64
                 " groups created, %" PRId64 " expanded",
                 ap->sync_id, ap->tasks_created, ap->datapoints_processed, ap->groups_created,
                 ap->groups_expanded);
    } else if (strcmp(st, "failed") == 0) {
        char *reason = apitext_clean_str(json_str(body, "reason"), r->secret);
        fail(j, now, "sync_failed", 0, apitext_json(body, r->secret), cJSON_CreateArray(),
             "sync %s of batch %s failed: %s", ap->sync_id, j->batch_id,
             reason ? reason : "no reason given");
        free(reason);
    } else {
        j->polls++;
        j->poll_at = now + poll_delay(j, p, rnd);
    }
}

/* A 2xx to a call about an append job's sync. */
static void ok_sync(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                    uint64_t rnd, const cJSON *body)
{
    if (op == JOB_OP_SYNC) {
        const char *id = reply_id(j, op, r, now, body, "sync_id", "sync");
        if (!id)
            return;
        set_str(&j->append.sync_id, id);
        j->pending_op = JOB_OP_NONE;
        job_note(j, now, "sync %s requested", id);
    }
    apply_sync(j, op, r, p, now, rnd, body);
}

static void on_success(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                       uint64_t rnd)
{
    cJSON *body = parse_body(r);
    switch (op) {
    case JOB_OP_CREATE_DATASET:
    case JOB_OP_UPLOAD_URL:
        ok_dataset(j, op, r, p, now, rnd, body);
        break;
    case JOB_OP_UPLOAD:
    case JOB_OP_CHECK_UPLOAD:
    case JOB_OP_GET_IMPORT:
        ok_upload(j, op, r, p, now, rnd, body);
        break;
    case JOB_OP_FIND_BATCH:
    case JOB_OP_CREATE_BATCH:
        ok_batch(j, op, r, p, now, rnd, body);
        break;
    case JOB_OP_SYNC:
    case JOB_OP_GET_SYNC:
        ok_sync(j, op, r, p, now, rnd, body);
        break;
    default:
        ok_setup(j, op, r, p, now, rnd, body);
        break;
    }
    cJSON_Delete(body);
}

/* The upload's file is not what was validated, or cannot be read: no retry can fix that.
 * Returns true when the reply was one of those (the job has failed). */
static bool upload_file_failed(job *j, job_op op, const job_reply *r, int64_t now)
{
    const char *why = r->error_text ? r->error_text : "";
    if (op != JOB_OP_UPLOAD)
        return false;
    if (r->net == JOB_NET_CHANGED) {
        /* What was validated is what is uploaded. The PUT was aborted before its last bytes,
         * so nothing changed remotely but the empty dataset. */
        job_fail(j, now, "invalid_job",
                 "%s; it was not uploaded (the upload was aborted before its end); a job's "
                 "data must not change once it is in incoming/: put the intended data in the "
                 "job's directory in failed/ and run batchctl retry %s, which validates it "
                 "again",
                 why, j->id);
        return true;
    }
    if (r->net == JOB_NET_FILE) {
        /* The data file vanished or became unreadable under us. */
        job_fail(j, now, "invalid_job",
                 "%s; the data must stay as validated until it is uploaded: fix the job in "
                 "failed/ and run batchctl retry, which validates it again",
                 why);
        return true;
    }
    return false;
}

/* The 4xx answers that a fresh request can get past, within the step's retry bound: a sync
 * the API no longer knows, and a refused upload URL. Returns true when handled so. */
static bool retried_4xx(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                        uint64_t rnd)
{
    long s = r->status;
    if (op == JOB_OP_GET_SYNC && s == 404 && j->append.sync_renewals < SYNC_RENEWALS_MAX) {
        /* The sync is gone (its record expired, or the id was never the server's): a new one
         * takes whatever this one had not. Bounded on its own, as a poll between renewals
         * is progress that starts the step's attempts over. */
        job_append_reset_sync(&j->append);
        j->append.sync_renewals++;
        retry_later(j, op, r, p, now, rnd, false, "the sync is unknown; requesting a new one");
        return true;
    }
    if (op == JOB_OP_UPLOAD && (s == 403 || s == 401) && j->upload_refusals < UPLOAD_REFUSALS_MAX) {
        /* The presigned URL expired or was refused: ask for a fresh one, backing off like any
         * other retry so a refusing store is not hammered. */
        j->upload_refusals++;
        free(j->upload_url);
        j->upload_url = NULL;
        j->pending_op = JOB_OP_NONE;
        retry_later(j, op, r, p, now, rnd, false,
                    "the upload URL was refused, expired?; requesting a new one");
        return true;
    }
    return false;
}

bool job_on_reply(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now,
                  uint64_t rnd)
{
    if (job_state_terminal(j->state) || upload_file_failed(j, op, r, now))
        return false;
    if (r->net == JOB_NET_FILE || r->net == JOB_NET_CHANGED) {
        /* Only an upload reads a file: for any other call, certainly not sent. */
        job_reply other = *r;
        other.net = r->net == JOB_NET_FILE ? JOB_NET_NOT_SENT : JOB_NET_FAILED;
        return job_on_reply(j, op, &other, p, now, rnd);
    }
    j->updated_at = now;
    if (r->net == JOB_NET_TOO_LARGE) {
        if (r->status >= 400 && r->status < 500) {
            /* A 4xx is a definitive answer whatever its body: handled by its status alone
             * (the body was cut off and is not kept). */
            job_note(j, now, "%s: HTTP %ld with a reply too large to read; handled by its status",
                     job_op_name(op), r->status);
            job_reply cut = *r;
            cut.net = JOB_NET_OK;
            cut.body = NULL;
            cut.body_len = 0;
            return job_on_reply(j, op, &cut, p, now, rnd);
        }
        /* The reply could not be read whole: for a create or setup its effect is unknown
         * (it may have acted), so it is checked first, as after a timeout; a read is asked
         * again. Both within the retry bound. */
        retry_later(j, op, r, p, now, rnd, true, NULL);
        return false;
    }
    if (r->net != JOB_NET_OK) {
        retry_later(j, op, r, p, now, rnd, r->net != JOB_NET_NOT_SENT, NULL);
        return false;
    }
    long s = r->status;
    if (s >= 200 && s < 300) {
        j->retry_at = 0;
        on_success(j, op, r, p, now, rnd);
        if (step_progressed(j, op))
            succeeded(j);
        return false;
    }
    if (s == 401 && op != JOB_OP_UPLOAD) {
        /* The token is wrong for every job, not for this one: the job stays where it is and
         * its call is made again once the daemon has a token that works. A 401 did not act,
         * so nothing is left to check; it is not a failed attempt of the step either. */
        if (job_op_has_side_effect(op) && j->pending_op == op)
            j->pending_op = JOB_OP_NONE;
        j->retry_at = 0;
        free(j->last_error);
        j->last_error = xasprintf("%s: HTTP 401 (the API token was rejected; waiting for a "
                                  "new token)",
                                  job_op_name(op));
        job_note(j, now, "%s", j->last_error);
        return true;
    }
    if (s == 408 || s == 429) {
        /* The server refused before acting. */
        retry_later(j, op, r, p, now, rnd, false, NULL);
        return false;
    }
    if (s >= 500) {
        /* A 5xx may come from a proxy after the backend acted: outcome unknown. */
        retry_later(j, op, r, p, now, rnd, true, NULL);
        return false;
    }
    if (!retried_4xx(j, op, r, p, now, rnd))
        api_rejected(j, op, r, now);
    return false;
}

int job_cancel(job *j, int64_t now)
{
    if (job_state_terminal(j->state))
        return -EINVAL;
    j->failed_stage = j->state;
    set_str(&j->error_code, "cancelled");
    set_str(&j->error_message, "cancelled by an operator");
    j->finished_at = now;
    job_set_state(j, JOB_CANCELLED, now, "cancelled by an operator");
    return 0;
}

int job_retry_now(job *j, int64_t now)
{
    if (job_state_terminal(j->state) || j->retry_at <= now)
        return -EINVAL;
    /* The attempts already made still count: an operator's nudge does not lift the bound. */
    j->retry_at = 0;
    j->updated_at = now;
    job_note(j, now, "retry requested by an operator: the next attempt is made now");
    return 0;
}

int job_retry(job *j, int64_t now)
{
    if (j->state != JOB_FAILED && j->state != JOB_CANCELLED)
        return -EINVAL;
    const char *is = j->import_status;
    if (is && j->append.on && strcmp(is, "partial") == 0) {
        /* Uploading again would put the accepted records into the live dataset twice. */
        j->append.partial_accepted = true;
        job_note(j, now,
                 "import %s was partial: the records it accepted are synced, the rejected ones "
                 "are not uploaded again (drop them, fixed, as a new append job)",
                 j->import_id);
    } else if (is && (strcmp(is, "partial") == 0 || strcmp(is, "failed") == 0 ||
                      strcmp(is, "pending_schema") == 0)) {
        job_note(j, now, "import %s ended %s; the data will be uploaded again", j->import_id, is);
        free(j->import_id);
        j->import_id = NULL;
        free(j->upload_url);
        j->upload_url = NULL;
        free(j->import_status);
        j->import_status = NULL;
        j->uploaded = false;
    }
    if (j->append.sync_status && strcmp(j->append.sync_status, "failed") == 0) {
        job_note(j, now, "sync %s failed; a new sync will be requested", j->append.sync_id);
        job_append_reset_sync(&j->append);
    }
    if (j->batch_status && strcmp(j->batch_status, "ERROR") == 0 && !j->append.on) {
        job_note(j, now, "batch %s is in ERROR; a new batch will be created", j->batch_id);
        free(j->batch_id);
        j->batch_id = NULL;
        free(j->batch_status);
        j->batch_status = NULL;
        j->setup_done = false;
    }
    free(j->error_code);
    j->error_code = NULL;
    free(j->error_message);
    j->error_message = NULL;
    cJSON_Delete(j->error_details);
    j->error_details = NULL;
    cJSON_Delete(j->api_error);
    j->api_error = NULL;
    j->http_status = 0;
    j->finished_at = 0;
    j->moved = false;
    /* A retry starts the step's bounds over (attempts start over with the state change). */
    j->upload_refusals = 0;
    j->wait_started_at = 0;
    j->poll_at = 0;
    job_set_state(j, JOB_VALIDATING, now, "retry requested: validating again, then resuming");
    return 0;
}

void job_recovered(job *j, int64_t now)
{
    /* A retry time from before the restart still holds (a server's Retry-After), but not
     * one beyond what any retry could have asked for (a clock jump). */
    if (j->retry_at > now + JOB_RETRY_AFTER_MAX_MS)
        j->retry_at = 0;
    j->poll_at = 0;
    if (!j->uploaded)
        j->bytes_sent = 0;
    if (j->pending_op != JOB_OP_NONE)
        job_note(j, now,
                 "recovered after a restart; the outcome of %s is unknown and is checked "
                 "first",
                 job_op_name(j->pending_op));
    else
        job_note(j, now, "recovered after a restart");
}

/* ---- requests ---- */

static char *body_create_dataset(const job *j)
{
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(j->spec, "dataset");
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "name", dataset_name(j));
    cJSON_AddStringToObject(b, "workspace_id", j->workspace_id);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(ds, "schema");
    if (schema)
        cJSON_AddItemToObject(b, "schema", cJSON_Duplicate(schema, 1));
    char *s = json_print(b);
    cJSON_Delete(b);
    return s;
}

static char *body_create_batch(const job *j)
{
    const cJSON *bt = cJSON_GetObjectItemCaseSensitive(j->spec, "batch");
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "name", json_str(bt, "name") ? json_str(bt, "name") : j->name);
    cJSON_AddStringToObject(b, "workspace_id", j->workspace_id);
    cJSON_AddStringToObject(b, "dataset_id", j->dataset_id);
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(bt, "task_details");
    if (td)
        cJSON_AddItemToObject(b, "task_details", cJSON_Duplicate(td, 1));
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(bt, "batch_items");
    if (items)
        cJSON_AddItemToObject(b, "batch_items", cJSON_Duplicate(items, 1));
    char *s = json_print(b);
    cJSON_Delete(b);
    return s;
}

static char *body_setup(const job *j)
{
    cJSON *b = cJSON_CreateObject();
    /* With a task_group_id field the API groups by it and ignores tasks_per_group. */
    if (!schema_has_group_field(j)) {
        int64_t tpg =
            json_int64(cJSON_GetObjectItemCaseSensitive(j->spec, "batch"), "tasks_per_group", 1);
        cJSON_AddNumberToObject(b, "tasks_per_group", (double)(tpg > 0 ? tpg : 1));
    }
    char *s = json_print(b);
    cJSON_Delete(b);
    return s;
}

/* The request of a call about the dataset (job_build_request). */
static int build_dataset_request(const job *j, job_op op, job_request *out)
{
    char *a = NULL, *b = NULL;
    int r = 0;
    switch (op) {
    case JOB_OP_CREATE_DATASET:
        if (!j->workspace_id)
            return -EINVAL;
        out->method = "POST";
        out->path = xstrdup(API_ROOT "/datasets");
        out->body = body_create_dataset(j);
        break;
    case JOB_OP_UPLOAD_URL:
        if (!j->dataset_id || !j->upload_name)
            return -EINVAL;
        a = url_escape(j->dataset_id);
        b = url_escape(j->upload_name);
        out->method = "GET";
        out->path = xasprintf(API_ROOT "/datasets/%s/upload-url/%s", a, b);
        break;
    case JOB_OP_UPLOAD:
        if (!j->upload_url)
            return -EINVAL;
        out->method = "PUT";
        out->path = xstrdup(j->upload_url);
        break;
    case JOB_OP_CHECK_UPLOAD:
    case JOB_OP_GET_IMPORT:
        if (!j->dataset_id || !j->import_id)
            return -EINVAL;
        a = url_escape(j->dataset_id);
        b = url_escape(j->import_id);
        out->method = "GET";
        out->path = xasprintf(API_ROOT "/datasets/%s/imports/%s", a, b);
        break;
    default:
        r = -EINVAL;
    }
    free(a);
    free(b);
    return r;
}

/* The request of a call about the batch (job_build_request). */
static int build_batch_request(const job *j, job_op op, job_request *out)
{
    char *a = NULL, *b = NULL;
    int r = 0;
    switch (op) {
    case JOB_OP_FIND_BATCH:
        if (!j->workspace_id)
            return -EINVAL;
        a = url_escape(j->workspace_id);
        out->method = "GET";
        out->path = xasprintf(API_ROOT "/batches?workspace_id=%s", a);
        break;
    case JOB_OP_CREATE_BATCH:
        if (!j->workspace_id || !j->dataset_id)
            return -EINVAL;
        out->method = "POST";
        out->path = xstrdup(API_ROOT "/batches");
        out->body = body_create_batch(j);
        break;
    case JOB_OP_CHECK_SETUP:
    case JOB_OP_BATCH_STATUS:
        if (!j->batch_id)
            return -EINVAL;
        a = url_escape(j->batch_id);
        out->method = "GET";
        out->path = xasprintf(API_ROOT "/batches/%s/status", a);
        break;
    case JOB_OP_SETUP:
        if (!j->batch_id)
            return -EINVAL;
        a = url_escape(j->batch_id);
        out->method = "POST";
        out->path = xasprintf(API_ROOT "/batches/%s/setup", a);
        out->body = body_setup(j);
        break;
    case JOB_OP_GET_BATCH:
        if (!j->batch_id)
            return -EINVAL;
        a = url_escape(j->batch_id);
        out->method = "GET";
        out->path = xasprintf(API_ROOT "/batches/%s", a);
        break;
    case JOB_OP_SYNC:
        if (!j->batch_id)
            return -EINVAL;
        a = url_escape(j->batch_id);
        out->method = "POST"; /* no body: none is documented, and the CLI sends none */
        out->path = xasprintf(API_ROOT "/batches/%s/sync", a);
        break;
    case JOB_OP_GET_SYNC:
        if (!j->batch_id || !j->append.sync_id)
            return -EINVAL;
        a = url_escape(j->batch_id);
        b = url_escape(j->append.sync_id);
        out->method = "GET";
        out->path = xasprintf(API_ROOT "/batches/%s/syncs/%s", a, b);
        break;
    default:
        r = -EINVAL;
    }
    free(a);
    free(b);
    return r;
}

int job_build_request(const job *j, job_op op, job_request *out)
{
    memset(out, 0, sizeof *out);
    /* Ids are checked when they arrive; a record from before that check is held to it too. */
    if ((j->dataset_id && !apitext_id_ok(j->dataset_id)) ||
        (j->import_id && !apitext_id_ok(j->import_id)) ||
        (j->batch_id && !apitext_id_ok(j->batch_id)) ||
        (j->append.sync_id && !apitext_id_ok(j->append.sync_id)))
        return -EINVAL;
    if (op >= JOB_OP_CREATE_DATASET && op <= JOB_OP_GET_IMPORT)
        return build_dataset_request(j, op, out);
    return build_batch_request(j, op, out);
}

void job_request_clear(job_request *r)
{
    free(r->path);
    free(r->body);
    memset(r, 0, sizeof *r);
}
