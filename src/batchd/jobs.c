/* jobs: claiming entries from the spool and running each job's state machine: the machine
 * decides (job_next / job_on_reply), this file performs its actions — persist, send, wait,
 * validate on the thread pool, finish — and publishes every change to the log, the control
 * socket and systemd's status line. */
#include "batchd.h"

#include "batchd/apitext.h"
#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/notify.h"
#include "batchd/store.h"
#include "batchd/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Validations running at once on the thread pool: each may read gigabytes; the rest of the
 * pool stays free for the loop's other work. */
#define VALIDATIONS_MAX 2
/* Entries claimed per loop iteration, so 10,000 dropped at once never stall the loop. */
#define CLAIMS_PER_TURN 64
/* A failed durable write (disk full?) is retried after this long; nothing is sent meanwhile. */
#define PERSIST_RETRY_MS 5000
/* Entries that fail to claim (stuck) are remembered, without limit, and tried again after
 * CLAIM_RETRY_MS; each is logged when first found and then at most every STUCK_RELOG_MS.
 * At most STUCK_RETRIES_PER_TURN of them are retried per loop turn. */
#define CLAIM_RETRY_MS         60000
#define STUCK_RELOG_MS         (3600LL * 1000)
#define STUCK_RETRIES_PER_TURN 64
/* Records of jobs finished longer ago than this are removed at start. */
#define RECORD_KEEP_MS (30LL * 86400 * 1000)
/* Finished jobs kept in memory (and so in ListJobs); older ones live on disk only. */
#define FINISHED_KEPT 1000
/* Upload progress is published at most this often per job. */
#define PROGRESS_PUBLISH_MS 250
/* The slowest upload rate tolerated before a PUT is given up as timed out (bytes/s). */
#define UPLOAD_MIN_RATE 65536

uint64_t batchd_random(batchd *d)
{
    /* xorshift64*: jitter needs spread, not secrecy. */
    uint64_t x = d->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    d->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static log_job_fields fields_of(const job *j)
{
    log_job_fields f = {j->id, j->name, j->dataset_id, j->batch_id, job_state_name(j->state)};
    return f;
}

static const char *last_note(const job *j)
{
    const cJSON *last = cJSON_GetArrayItem(j->history, cJSON_GetArraySize(j->history) - 1);
    const char *n = json_str(last, "note");
    return n ? n : "";
}

static void publish(jobrun *r)
{
    if (!r->d->ctl)
        return;
    cJSON *pub = job_to_public(r->j, false);
    control_job_changed(r->d->ctl, pub);
    cJSON_Delete(pub);
    r->last_publish_ms = time_mono_ms();
}

void jobs_update_status(batchd *d)
{
    size_t done = 0, failed = 0;
    for (size_t i = 0; i < d->n_jobs; i++) {
        job_state s = d->jobs[i]->j->state;
        if (!d->jobs[i]->finished)
            continue;
        if (s == JOB_READY)
            done++;
        else
            failed++;
    }
    notify_status("%zu active, %zu done, %zu failed%s", d->n_active, done, failed,
                  d->token_hold ? ", on hold: the API rejected the token (fix it, then reload)"
                  : d->paused   ? ", paused"
                                : "");
}

static void free_jobrun(uv_handle_t *h);
static void start_http(jobrun *r, job_op op);

static void on_timer(uv_timer_t *t)
{
    jobs_drive(t->data);
}

static void arm_timer(jobrun *r, int64_t delay_ms)
{
    if (delay_ms < 1)
        delay_ms = 1;
    uv_timer_start(&r->timer, on_timer, (uint64_t)delay_ms, 0);
}

/* Frees a job left behind by jobs_free_all once the thread pool no longer holds it. */
static void maybe_release(jobrun *r)
{
    if (r->released && !r->writing && !r->validating)
        uv_close((uv_handle_t *)&r->timer, free_jobrun);
}

static void write_work(uv_work_t *w)
{
    jobrun *r = w->data;
    r->write_rc = store_write(r->write_dir, r->j->id, r->write_text);
}

static void persist(jobrun *r);

static void write_done(uv_work_t *w, int status)
{
    jobrun *r = w->data;
    batchd *d = r->d;
    r->writing = false;
    free(r->write_text);
    free(r->write_dir);
    r->write_text = r->write_dir = NULL;
    int rc = status < 0 ? status : r->write_rc;
    if (d->stopping) {
        /* The newest state must be on disk before exit: write it here, synchronously. */
        if (r->write_again || rc < 0)
            store_save(d->cfg->c.state.dir, r->j);
        r->write_again = false;
        maybe_release(r);
        return;
    }
    if (r->write_again) {
        r->write_again = false;
        persist(r);
        return;
    }
    if (rc < 0) {
        /* An intent that is not durable must not be acted on: take no step until a write
         * succeeds. */
        log_job_fields f = fields_of(r->j);
        log_job(LOG_LVL_ERR, &f, "cannot write the job record in %s: %s; retrying in 5s",
                d->cfg->c.state.dir, strerror(-rc));
        if (r->send_after_write != JOB_OP_NONE) {
            r->j->pending_op = r->saved_pending;
            r->send_after_write = JOB_OP_NONE;
        }
        r->dirty = true;
        arm_timer(r, PERSIST_RETRY_MS);
        return;
    }
    r->dirty = false;
    job_op op = r->send_after_write;
    r->send_after_write = JOB_OP_NONE;
    if (op != JOB_OP_NONE && !job_state_terminal(r->j->state) && !d->paused) {
        start_http(r, op);
        return;
    }
    if (op != JOB_OP_NONE)
        r->j->pending_op = r->saved_pending; /* not sent after all (paused or cancelled) */
    jobs_drive(r);
}

/* Makes the record durable off the loop; the job's next step waits for it (jobs_drive). */
static void persist_with_digest(jobrun *r, uint64_t digest)
{
    if (r->writing) {
        r->write_again = true;
        return;
    }
    r->writing = true;
    r->written_digest = digest;
    r->write_text = store_encode(r->j);
    r->write_dir = xstrdup(r->d->cfg->c.state.dir);
    r->write_work.data = r;
    int rc = uv_queue_work(r->d->loop, &r->write_work, write_work, write_done);
    if (rc < 0) {
        /* Only with a broken loop: report it like a failed write. */
        r->write_rc = rc;
        write_done(&r->write_work, rc);
    }
}

static void persist(jobrun *r)
{
    if (r->writing)
        r->write_again = true;
    else
        persist_with_digest(r, job_record_digest(r->j));
}

/* Watch promises every state change, but one step of the machine can pass several states (a
 * retry resuming past work already done). Publishes the states passed between `before` and the
 * current one, read from the history, each as the job in that state, oldest first. */
static void publish_passed(jobrun *r, job_state before)
{
    const job *j = r->j;
    const char *from = job_state_name(before), *to = job_state_name(j->state);
    const cJSON *start = NULL, *end = NULL, *e;
    cJSON_ArrayForEach(e, j->history)
    {
        const char *s = json_str(e, "state");
        if (s && strcmp(s, from) == 0)
            start = e->next; /* after the last entry in the old state */
        if (s && strcmp(s, to) != 0)
            end = NULL;
        else if (!end)
            end = e; /* the first entry of the final run in the new state */
    }
    const char *prev = from;
    for (e = start; e && e != end; e = e->next) {
        const char *s = json_str(e, "state");
        if (!s || strcmp(s, prev) == 0)
            continue;
        cJSON *pub = job_to_public(j, false);
        cJSON_ReplaceItemInObjectCaseSensitive(pub, "state", cJSON_CreateString(s));
        control_job_changed(r->d->ctl, pub);
        cJSON_Delete(pub);
        prev = s;
    }
}

/* After the record changed: make it durable, log a state change, tell watchers. Returns
 * true when a write started (the job's next step then waits for it); a reply that changed
 * nothing durable (a poll with the same status) is not written. */
bool jobs_changed(jobrun *r, job_state before)
{
    job *j = r->j;
    if (j->state != before && r->d->ctl)
        publish_passed(r, before);
    if (j->state != before) {
        log_job_fields f = fields_of(j);
        log_job(j->state == JOB_FAILED ? LOG_LVL_WARNING : LOG_LVL_INFO, &f, "%s -> %s: %s",
                job_state_name(before), job_state_name(j->state), last_note(j));
    }
    bool write = r->writing;
    if (write) {
        r->write_again = true;
    } else {
        uint64_t digest = job_record_digest(j);
        write = r->dirty || digest != r->written_digest;
        if (write)
            persist_with_digest(r, digest);
    }
    publish(r);
    return write;
}

static jobrun *jobrun_add(batchd *d, job *j, bool finished)
{
    jobrun *r = xcalloc(1, sizeof *r);
    r->j = j;
    r->d = d;
    r->finished = finished;
    uv_timer_init(d->loop, &r->timer);
    r->timer.data = r;
    if (d->n_jobs == d->cap_jobs) {
        d->cap_jobs = d->cap_jobs ? d->cap_jobs * 2 : 64;
        d->jobs = xrealloc(d->jobs, d->cap_jobs * sizeof(jobrun *));
    }
    d->jobs[d->n_jobs++] = r;
    if (!finished)
        d->n_active++;
    return r;
}

jobrun *jobs_find(batchd *d, const char *key, bool *ambiguous)
{
    *ambiguous = false;
    for (size_t i = 0; i < d->n_jobs; i++)
        if (strcmp(d->jobs[i]->j->id, key) == 0)
            return d->jobs[i];
    /* By name (or directory name): it must be unique, except that one unfinished job wins
     * over finished namesakes. */
    jobrun *any = NULL, *live = NULL;
    size_t n_any = 0, n_live = 0;
    for (size_t i = 0; i < d->n_jobs; i++) {
        jobrun *r = d->jobs[i];
        if (strcmp(r->j->name, key) != 0 && strcmp(r->j->dir, key) != 0)
            continue;
        any = r;
        n_any++;
        if (!r->finished) {
            live = r;
            n_live++;
        }
    }
    if (n_live == 1)
        return live;
    if (n_live > 1 || n_any > 1)
        *ambiguous = true;
    return any;
}

/* Finished jobs stay listed, but only the newest FINISHED_KEPT of them in memory: a daemon
 * running for months must not grow with its history. Their records stay on disk. */
static void evict_finished(batchd *d)
{
    if (d->driving_all)
        return;
    size_t finished = 0;
    for (size_t i = 0; i < d->n_jobs; i++)
        finished += d->jobs[i]->finished;
    size_t i = 0;
    while (finished > FINISHED_KEPT && i < d->n_jobs) {
        jobrun *r = d->jobs[i];
        if (!r->finished || r->busy || r->validating || r->writing || r->dirty) {
            i++;
            continue;
        }
        memmove(&d->jobs[i], &d->jobs[i + 1], (d->n_jobs - i - 1) * sizeof(jobrun *));
        d->n_jobs--;
        finished--;
        uv_close((uv_handle_t *)&r->timer, free_jobrun);
    }
}

/* ---- validation on the thread pool ---- */

static void validate_work(uv_work_t *w)
{
    jobrun *r = w->data;
    char *dir = fsutil_join(spool_dir(r->d->sp, "active"), r->j->dir);
    r->ires_rc = intake_check(dir, r->j->name, &r->work_cfg->c, &r->cancel_validation, &r->ires);
    free(dir);
}

static void start_validation(jobrun *r);

static void validate_done(uv_work_t *w, int status)
{
    jobrun *r = w->data;
    batchd *d = r->d;
    if (d->stopping) {
        /* Its record is durable; the result is dropped and the validation runs again on
         * the next start. */
        d->validations--;
        r->validating = false;
        cfgref_put(r->work_cfg);
        r->work_cfg = NULL;
        intake_result_free(&r->ires);
        maybe_release(r);
        return;
    }
    r->busy = false;
    r->validating = false;
    d->validations--;
    cfgref_put(r->work_cfg);
    r->work_cfg = NULL;
    job *j = r->j;
    job_state before = j->state;
    int64_t now = time_now_ms();
    if (status == 0 && r->ires_rc != -ECANCELED && j->state == JOB_VALIDATING) {
        job_validation v = {
            .ok = r->ires.code == NULL,
            .code = r->ires.code,
            .message = r->ires.message,
            .errors = r->ires.errors,
            .spec = r->ires.job,
            .upload_path = r->ires.upload_path,
            .upload_name = r->ires.upload_name,
            .sha256 = r->ires.sha256,
            .records = (int64_t)r->ires.records,
            .rejected = (int64_t)r->ires.rejected,
            .bytes = (int64_t)r->ires.bytes,
        };
        job_on_validated(j, &v, now);
        jobs_changed(r, before);
    }
    intake_result_free(&r->ires);
    memset(&r->ires, 0, sizeof r->ires);
    /* Hand the freed slot to the oldest job waiting for one. */
    for (size_t i = 0; i < d->n_jobs && d->validations < VALIDATIONS_MAX && !d->stopping; i++) {
        jobrun *o = d->jobs[i];
        if (o->waiting_validation) {
            o->waiting_validation = false;
            start_validation(o);
        }
    }
    if (!d->stopping)
        jobs_drive(r);
}

static void start_validation(jobrun *r)
{
    batchd *d = r->d;
    if (d->validations >= VALIDATIONS_MAX) {
        r->waiting_validation = true;
        return;
    }
    d->validations++;
    r->busy = true;
    r->validating = true;
    atomic_store(&r->cancel_validation, 0);
    r->work_cfg = cfgref_get(d->cfg);
    memset(&r->ires, 0, sizeof r->ires);
    r->work.data = r;
    int rc = uv_queue_work(d->loop, &r->work, validate_work, validate_done);
    if (rc < 0) {
        d->validations--;
        r->busy = false;
        r->validating = false;
        cfgref_put(r->work_cfg);
        r->work_cfg = NULL;
        log_error("cannot queue validation: %s", uv_strerror(rc));
        arm_timer(r, PERSIST_RETRY_MS);
    }
}

/* ---- HTTP ---- */

static job_net_error net_of(enum http_error e)
{
    switch (e) {
    case HTTP_OK:
        return JOB_NET_OK;
    case HTTP_ERR_TIMEOUT:
        return JOB_NET_TIMEOUT;
    case HTTP_ERR_FILE:
        return JOB_NET_NOT_SENT;
    case HTTP_ERR_TOO_LARGE:
        /* A create may have acted before its reply was cut off: checked like a timeout. */
        return JOB_NET_TOO_LARGE;
    default:
        return JOB_NET_FAILED;
    }
}

static void on_http_done(void *ud, const http_response *resp)
{
    jobrun *r = ud;
    batchd *d = r->d;
    job *j = r->j;
    job_op op = r->xfer_op;
    r->xfer = NULL;
    r->busy = false;
    job_state before = j->state;
    int64_t now = time_now_ms();
    bool token_rejected = false;
    if (op == JOB_OP_UPLOAD && resp->error == HTTP_ERR_CHANGED) {
        /* PRODUCT.md §9: what was validated is what is uploaded. The PUT was aborted before
         * its last bytes, so nothing changed remotely but the empty dataset. */
        job_fail(j, now, "invalid_job",
                 "%s; it was not uploaded (the upload was aborted before its end); a job's "
                 "data must not change once it is in incoming/: put the intended data in the "
                 "job's directory in failed/ and run batchctl retry %s, which validates it "
                 "again",
                 resp->error_text, j->id);
    } else if (op == JOB_OP_UPLOAD && resp->error == HTTP_ERR_FILE) {
        /* The data file vanished or became unreadable under us: no retry can fix that. */
        job_fail(j, now, "invalid_job",
                 "%s; the data must stay as validated until it is uploaded: fix the job in "
                 "failed/ and run batchctl retry, which validates it again",
                 resp->error_text);
    } else {
        job_reply jr = {
            .net = net_of(resp->error),
            .status = resp->status,
            .body = resp->body,
            .body_len = resp->body_len,
            .retry_after = resp->retry_after,
            .error_text = resp->error_text,
            .secret = d->token,
        };
        token_rejected = job_on_reply(j, op, &jr, &d->params, now, batchd_random(d));
    }
    log_job_fields f = fields_of(j);
    if (resp->error != HTTP_OK) {
        /* The transport's text is the network's: cleaned like an API text. */
        char *why = apitext_clean_str(resp->error_text ? resp->error_text : "", d->token);
        log_job(LOG_LVL_NOTICE, &f, "%s: %s", job_op_name(op), why);
        free(why);
    } else {
        log_job(resp->status >= 400 ? LOG_LVL_NOTICE : LOG_LVL_DEBUG, &f, "%s: HTTP %ld (%s)",
                job_op_name(op), resp->status, last_note(j));
    }
    jobs_changed(r, before);
    if (token_rejected)
        batchd_token_rejected(d, r->xfer_token_gen);
    if (d->stopping)
        batchd_check_drained(d);
    else
        jobs_drive(r);
}

static void on_http_progress(void *ud, uint64_t sent, uint64_t total)
{
    (void)total;
    jobrun *r = ud;
    job_on_progress(r->j, (int64_t)sent);
    if (time_mono_ms() - r->last_publish_ms >= PROGRESS_PUBLISH_MS)
        publish(r);
}

/* 64 hex digits into 32 bytes; -EINVAL for anything else (NULL included). */
static int hex_to_sha256(const char *hex, unsigned char out[32])
{
    if (!hex || strlen(hex) != 64)
        return -EINVAL;
    for (size_t i = 0; i < 32; i++) {
        unsigned v = 0;
        for (size_t k = 0; k < 2; k++) {
            char c = hex[2 * i + k];
            unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                         : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                                : 16u;
            if (d > 15)
                return -EINVAL;
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

/* Starts the request for op; for a side-effecting op its intent is already durable. */
static void start_http(jobrun *r, job_op op)
{
    batchd *d = r->d;
    job *j = r->j;
    job_request rq;
    if (job_build_request(j, op, &rq) < 0) {
        job_state before = j->state;
        job_fail(j, time_now_ms(), "invalid_job", "internal error: the record lacks what %s needs",
                 job_op_name(op));
        jobs_changed(r, before);
        jobs_drive(r);
        return;
    }
    char *url = NULL;
    char *auth = NULL;
    char *ctype = NULL;
    const char *headers[5] = {0};
    unsigned char digest[32];
    http_request req = {
        .method = rq.method, .body = rq.body, .body_len = rq.body ? strlen(rq.body) : 0};
    if (op == JOB_OP_UPLOAD) {
        /* The presigned URL carries its own signature: never the API token. */
        url = xstrdup(rq.path);
        ctype = xasprintf("Content-Type: %s", j->upload_content_type ? j->upload_content_type
                                                                     : "application/octet-stream");
        headers[0] = ctype;
        req.upload_path = j->upload_path;
        int64_t size = j->bytes_total > 0 ? j->bytes_total : 0;
        req.upload_expect_size = (uint64_t)size;
        /* Records written before digests existed upload with the size check only. */
        if (hex_to_sha256(j->upload_sha256, digest) == 0)
            req.upload_sha256 = digest;
        req.timeout_ms = (long)(d->cfg->c.api.timeout_ms + size * 1000 / UPLOAD_MIN_RATE);
        req.rate_limited = false;
    } else {
        url = xasprintf("%s%s", d->api_url, rq.path);
        auth = xasprintf("Authorization: Token %s", d->token);
        headers[0] = auth;
        headers[1] = "Accept: application/json";
        if (rq.body)
            headers[2] = "Content-Type: application/json";
        req.rate_limited = true;
        /* A create or setup must never be re-sent behind our back (see http.h). */
        req.fresh_connect = job_op_has_side_effect(op);
    }
    req.url = url;
    req.headers = headers;
    r->xfer_op = op;
    r->xfer_token_gen = d->token_gen;
    r->busy = true;
    r->xfer =
        http_start(d->http, &req, on_http_done, op == JOB_OP_UPLOAD ? on_http_progress : NULL, r);
    if (auth) {
        explicit_bzero(auth, strlen(auth));
        free(auth);
    }
    free(ctype);
    free(url);
    job_request_clear(&rq);
    if (!r->xfer) {
        /* http_start refuses only a request it cannot send at all (a URL or Content-Type
         * with line breaks, from the API's own reply): permanent. */
        r->busy = false;
        job_state before = j->state;
        job_fail(j, time_now_ms(), "api_rejected",
                 "cannot send %s: the URL or Content-Type the API gave is not usable",
                 job_op_name(op));
        jobs_changed(r, before);
        jobs_drive(r);
        return;
    }
    publish(r);
}

static void send_request(jobrun *r, job_op op)
{
    job *j = r->j;
    job_op saved_pending = j->pending_op;
    job_mark_sent(j, op, time_now_ms());
    if (!job_op_has_side_effect(op)) {
        start_http(r, op);
        return;
    }
    /* Record the intent first; write_done sends once it is on disk. */
    r->saved_pending = saved_pending;
    r->send_after_write = op;
    persist(r);
}

/* ---- finishing ---- */

static void finish(jobrun *r)
{
    batchd *d = r->d;
    job *j = r->j;
    bool ok = j->state == JOB_READY;
    cJSON *body = ok ? job_result_json(j) : job_error_json(j);
    char *text = json_print_pretty(body);
    cJSON_Delete(body);
    char *final_dir = NULL;
    int rc = spool_finish(d->sp, j->dir, ok, ok ? "result.json" : "error.json", text, &final_dir);
    free(text);
    log_job_fields f = fields_of(j);
    if (rc == -ENOENT) {
        /* Its directory is gone (removed by hand): nothing to move, and no retry can help. The
         * record keeps what exists remotely. */
        log_job(LOG_LVL_ERR, &f,
                "active/%s disappeared before the job could be moved to %s/; the job is %s "
                "(dataset %s, batch %s); its record is %s/jobs/%s.json",
                j->dir, ok ? "done" : "failed", job_state_name(j->state),
                j->dataset_id ? j->dataset_id : "none", j->batch_id ? j->batch_id : "none",
                d->cfg->c.state.dir, j->id);
    } else if (rc < 0) {
        log_job(LOG_LVL_ERR, &f, "cannot move the job to %s/: %s; retrying in 5s",
                ok ? "done" : "failed", strerror(-rc));
        arm_timer(r, PERSIST_RETRY_MS);
        return;
    }
    r->finished = true;
    j->moved = true;
    d->n_active--;
    if (final_dir) {
        const char *base = fsutil_basename(final_dir);
        if (strcmp(base, j->dir) != 0) {
            free(j->dir);
            j->dir = xstrdup(base);
        }
    }
    job_note(j, time_now_ms(), "moved to %s/%s", ok ? "done" : "failed", j->dir);
    /* The resolved job is not needed any more (a retry validates again). */
    cJSON_Delete(j->spec);
    j->spec = NULL;
    if (ok)
        log_job(LOG_LVL_NOTICE, &f, "ready: %" PRId64 " tasks in %" PRId64 " groups, %s/%s",
                j->total_task_count, j->total_task_groups, "done", j->dir);
    else
        log_job(LOG_LVL_WARNING, &f, "failed (%s): %s; see failed/%s/error.json",
                j->error_code ? j->error_code : "?", j->error_message ? j->error_message : "",
                j->dir);
    free(final_dir);
    persist(r);
    publish(r);
    evict_finished(d);
    jobs_update_status(d);
    jobs_claim_soon(d);
}

/* ---- the driver ---- */

/* The states that wait for the API with a timeout (import_timeout, batch_timeout). */
static bool waits_with_timeout(job_state s)
{
    return s == JOB_IMPORTING || s == JOB_PROCESSING;
}

void jobs_pause_ended(batchd *d, int64_t held_ms)
{
    if (held_ms <= 0)
        return;
    /* A pause (a token the API rejected, an operator's) stops the polls: the time it took is
     * not the API's, and must not time a job out once it is lifted. */
    for (size_t i = 0; i < d->n_jobs; i++) {
        job *j = d->jobs[i]->j;
        if (!d->jobs[i]->finished && waits_with_timeout(j->state) && j->wait_started_at > 0)
            j->wait_started_at += held_ms;
    }
}

void jobs_drive(jobrun *r)
{
    batchd *d = r->d;
    if (r->busy || d->stopping || r->waiting_validation || r->writing)
        return;
    /* Paused, a waiting job takes no step (it could only send a poll, which waits, or time
     * out on time that is not the API's); jobs_pause_ended then batchd_set_paused drive it. */
    if (d->paused && !r->dirty && !r->finished && waits_with_timeout(r->j->state) &&
        !job_state_terminal(r->j->state))
        return;
    if (r->dirty) {
        persist(r); /* a failed write: no step before it succeeds (finished jobs too) */
        return;
    }
    if (r->finished)
        return;
    job *j = r->j;
    job_state before = j->state;
    int64_t now = time_now_ms();
    bool changed = false;
    job_action a = job_next(j, &d->params, now, batchd_random(d), &changed);
    /* Durable before the next step: write_done drives the job again, and job_next gives
     * the same action from the updated record. */
    if (changed && jobs_changed(r, before))
        return;
    switch (a.kind) {
    case JOB_ACT_VALIDATE:
        start_validation(r);
        break;
    case JOB_ACT_SEND:
        if (!d->paused)
            send_request(r, a.op);
        break;
    case JOB_ACT_WAIT:
        arm_timer(r, a.until - now);
        break;
    case JOB_ACT_FINISH:
        finish(r);
        break;
    case JOB_ACT_NONE:
        break;
    }
}

void jobs_drive_all(batchd *d)
{
    /* Driving may finish jobs; evicting them would shift d->jobs under this loop. */
    d->driving_all = true;
    for (size_t i = 0; i < d->n_jobs; i++)
        jobs_drive(d->jobs[i]);
    d->driving_all = false;
    evict_finished(d);
}

int jobs_cancel(jobrun *r)
{
    job *j = r->j;
    if (r->finished || job_state_terminal(j->state))
        return -EINVAL;
    if (r->xfer) {
        http_cancel(r->xfer);
        r->xfer = NULL;
        r->busy = false;
    }
    if (r->validating)
        atomic_store(&r->cancel_validation, 1); /* validate_done releases the job */
    r->waiting_validation = false;
    uv_timer_stop(&r->timer);
    job_state before = j->state;
    job_cancel(j, time_now_ms());
    jobs_changed(r, before);
    jobs_drive(r);
    return 0;
}

int jobs_retry(jobrun *r)
{
    batchd *d = r->d;
    job *j = r->j;
    if (!r->finished || (j->state != JOB_FAILED && j->state != JOB_CANCELLED))
        return -EINVAL;
    char *active = NULL;
    int rc = spool_reactivate(d->sp, j->dir, &active);
    if (rc < 0)
        return rc;
    free(j->dir);
    j->dir = active;
    job_state before = j->state;
    job_retry(j, time_now_ms());
    r->finished = false;
    d->n_active++;
    jobs_changed(r, before);
    jobs_update_status(d);
    jobs_drive(r);
    return 0;
}

/* ---- claiming ---- */

/* Entries that could not be claimed (a directory batchd may not rename, a full disk) are
 * stuck: kept in d->stuck (no limit), left out of every scan, and retried every
 * CLAIM_RETRY_MS, so any number of them can neither block the others nor spin the loop. */
static spool_stuck *stuck_of(batchd *d)
{
    if (!d->stuck)
        d->stuck = spool_stuck_new();
    return d->stuck;
}

static void claim_failed(batchd *d, const char *entry, int rc)
{
    bool first = !spool_stuck_has(d->stuck, entry);
    if (!spool_stuck_failed(stuck_of(d), entry, time_mono_ms(), CLAIM_RETRY_MS, STUCK_RELOG_MS))
        return;
    char *esc = spool_name_escape(entry);
    log_error("%s incoming/%s: %s; it stays in incoming/ and is tried again every minute "
              "(batchd's user needs to be able to rename it: check its owner and mode, and "
              "free disk space); %zu entr%s in incoming/ cannot be claimed",
              first ? "cannot claim" : "still cannot claim", esc, strerror(-rc),
              spool_stuck_count(d->stuck), spool_stuck_count(d->stuck) == 1 ? "y" : "ies");
    free(esc);
}

/* Claims one entry; true when it left incoming/ (claimed, rejected or gone). */
static bool claim_one(batchd *d, const char *entry)
{
    char id[27];
    int64_t now = time_now_ms();
    id_new(now, id);
    spool_claim_result c;
    memset(&c, 0, sizeof c);
    int rc = spool_claim(d->sp, entry, id, &c);
    if (rc < 0) {
        claim_failed(d, entry, rc);
        spool_claim_clear(&c);
        return false;
    }
    spool_stuck_forget(d->stuck, entry);
    if (c.kind == SPOOL_GONE) {
        spool_claim_clear(&c);
        return true;
    }
    const char *base = fsutil_basename(c.job_dir);
    job *j = job_new(c.kind == SPOOL_REJECTED && c.job_id ? c.job_id : id, c.job_name, base, now);
    if (c.kind == SPOOL_REJECTED) {
        job_fail(j, now, c.code ? c.code : "unsupported_entry", "%s",
                 c.reason ? c.reason : "unsupported entry");
        j->moved = true; /* spool_claim put it in failed/ with its error.json */
        jobrun *r = jobrun_add(d, j, true);
        log_job_fields f = fields_of(j);
        log_job(LOG_LVL_WARNING, &f, "rejected into failed/%s: %s", base, j->error_message);
        persist(r);
        publish(r);
    } else {
        jobrun *r = jobrun_add(d, j, false);
        log_job_fields f = fields_of(j);
        log_job(LOG_LVL_INFO, &f, "claimed into active/%s", base);
        persist(r);
        publish(r);
        jobs_drive(r);
    }
    spool_claim_clear(&c);
    return true;
}

static void claim_run(uv_timer_t *t)
{
    batchd *d = t->data;
    d->claim_pending = false;
    if (d->stopping || d->paused)
        return;
    size_t max_active = (size_t)d->cfg->c.job.max_active;
    if (d->n_active >= max_active)
        return;
    size_t want = max_active - d->n_active;
    if (want > CLAIMS_PER_TURN)
        want = CLAIMS_PER_TURN;
    char **names = NULL;
    size_t n = 0;
    /* The scan leaves the stuck entries out (a hash lookup each, no system call), so any
     * number of them cannot starve the others. */
    int rc = spool_scan_incoming_ex(d->sp, want, spool_stuck_skip, d->stuck, &names, &n);
    if (rc < 0) {
        log_error("cannot scan %s: %s", spool_dir(d->sp, "incoming"), strerror(-rc));
        return;
    }
    size_t tried = 0;
    for (size_t i = 0; i < n && !d->stopping; i++) {
        tried++;
        claim_one(d, names[i]);
    }
    spool_names_free(names, n);
    /* Then the stuck entries whose retry time has come, a bounded number per turn. */
    bool more_due = false;
    if (tried < want && !d->stopping && spool_stuck_count(d->stuck) > 0) {
        size_t room = want - tried < STUCK_RETRIES_PER_TURN ? want - tried : STUCK_RETRIES_PER_TURN;
        char **due = xcalloc(room, sizeof *due);
        size_t nd = spool_stuck_due(d->stuck, time_mono_ms(), room, due);
        for (size_t i = 0; i < nd && !d->stopping; i++)
            claim_one(d, due[i]);
        more_due = nd == room;
        spool_names_free(due, nd);
    }
    jobs_update_status(d);
    /* A full scan's worth of entries (or of due retries) means more may wait: come back
     * after the loop has polled for I/O (the claim timer is 1 ms, never 0, so it cannot
     * re-run in the same pass). Each turn makes progress: an entry that failed is stuck
     * now and left out of the next scan, so newly found stuck entries cannot delay a good
     * one behind them by more than a few turns. */
    if (n == want || more_due)
        jobs_claim_soon(d);
}

void jobs_claim_soon(batchd *d)
{
    if (d->claim_pending || d->stopping)
        return;
    d->claim_pending = true;
    d->claim_timer.data = d;
    uv_timer_start(&d->claim_timer, claim_run, 1, 0);
}

/* ---- recovery ---- */

static void recover_one(void *ud, job *j)
{
    batchd *d = ud;
    char *dir = fsutil_join(spool_dir(d->sp, "active"), j->dir);
    bool present = access(dir, F_OK) == 0;
    free(dir);
    log_job_fields f = fields_of(j);
    if (job_state_terminal(j->state)) {
        int64_t now = time_now_ms();
        if (j->moved && j->finished_at > 0 && now - j->finished_at > RECORD_KEEP_MS) {
            /* Long finished: its outcome lives in done/ or failed/; the record would only
             * make every start slower. */
            if (store_remove(d->cfg->c.state.dir, j->id) == 0)
                d->pruned_records++;
            job_free(j);
            return;
        }
        /* Moved before: finished, even if a newer job now uses the same name in active/.
         * Not moved: it finished just before the stop; finish the move now. */
        jobrun_add(d, j, j->moved || !present);
        /* Keep memory bounded while thousands of records load. */
        if (d->n_jobs > FINISHED_KEPT + FINISHED_KEPT / 4)
            evict_finished(d);
        return;
    }
    if (!present) {
        int64_t now = time_now_ms();
        log_job(LOG_LVL_ERR, &f,
                "active/%s is gone (removed by hand?); the job cannot continue and is marked "
                "failed; its remote resources are named in its record",
                j->dir);
        job_fail(j, now, "invalid_job", "the job directory active/%s disappeared", j->dir);
        j->moved = true;
        jobrun *r = jobrun_add(d, j, true);
        persist(r);
        return;
    }
    job_recovered(j, time_now_ms());
    log_job(LOG_LVL_INFO, &f, "recovered in state %s", job_state_name(j->state));
    jobrun *r = jobrun_add(d, j, false);
    persist(r);
}

static void recover_bad(void *ud, const char *file, const char *reason)
{
    batchd *d = ud;
    d->bad_records++;
    log_error("cannot read job record %s: %s; it is left in place for you to inspect", file,
              reason);
}

int jobs_recover(batchd *d)
{
    int n = store_load_all(d->cfg->c.state.dir, recover_one, recover_bad, d);
    if (n < 0) {
        /* Without the records, every job in active/ would start over and create its dataset
         * and batch a second time: refuse to run instead. */
        log_error("cannot read the job records in %s/jobs: %s; fix its permissions (it must "
                  "belong to batchd's user), then start again",
                  d->cfg->c.state.dir, strerror(-n));
        return n;
    }
    /* Directories in active/ without a live record were claimed just before a crash. */
    char **names = NULL;
    size_t count = 0;
    if (spool_list_active(d->sp, &names, &count) == 0) {
        for (size_t i = 0; i < count; i++) {
            bool known = false;
            for (size_t k = 0; k < d->n_jobs && !known; k++)
                known = !d->jobs[k]->finished && strcmp(d->jobs[k]->j->dir, names[i]) == 0;
            if (known)
                continue;
            if (d->bad_records) {
                /* It may be the job of an unreadable record, with a dataset or batch already
                 * made: starting it over could create them twice. */
                char *esc = spool_name_escape(names[i]);
                log_error("active/%s has no readable record and is not resumed, since it may "
                          "belong to one of the %zu unreadable records; inspect them, then "
                          "move the directory back into incoming/ to start it over",
                          esc, d->bad_records);
                free(esc);
                continue;
            }
            char id[27];
            int64_t now = time_now_ms();
            id_new(now, id);
            job *j = job_new(id, names[i], names[i], now);
            job_note(j, now, "found in active/ without a record (claimed just before a crash)");
            jobrun *r = jobrun_add(d, j, false);
            persist(r);
            log_job_fields f = fields_of(j);
            log_job(LOG_LVL_INFO, &f, "recovered from active/%s without a record", names[i]);
        }
        spool_names_free(names, count);
    }
    evict_finished(d);
    if (d->pruned_records)
        log_notice("removed %zu job record(s) of jobs finished more than %d days ago (their "
                   "results stay in done/ and failed/)",
                   d->pruned_records, (int)(RECORD_KEEP_MS / 86400000));
    log_notice("recovered %zu unfinished job(s), %zu known in all", d->n_active, d->n_jobs);
    return 0;
}

/* ---- shutdown ---- */

size_t jobs_begin_drain(batchd *d)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_jobs; i++) {
        jobrun *r = d->jobs[i];
        uv_timer_stop(&r->timer);
        if (r->xfer && !job_op_has_side_effect(r->xfer_op)) {
            http_cancel(r->xfer); /* a read: nothing to lose */
            r->xfer = NULL;
            r->busy = false;
        }
        n += r->xfer != NULL;
    }
    uv_timer_stop(&d->claim_timer);
    return n;
}

size_t jobs_in_flight(const batchd *d)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_jobs; i++)
        n += d->jobs[i]->xfer != NULL;
    return n;
}

void jobs_shutdown(batchd *d)
{
    for (size_t i = 0; i < d->n_jobs; i++) {
        jobrun *r = d->jobs[i];
        uv_timer_stop(&r->timer);
        if (r->xfer) {
            /* Its intent is durable: the next start resolves the unknown outcome. */
            http_cancel(r->xfer);
            r->xfer = NULL;
            r->busy = false;
        }
        if (r->validating)
            atomic_store(&r->cancel_validation, 1);
        if (r->writing)
            r->write_again = true; /* write_done writes the newest state */
        else if (!r->finished || r->dirty)
            store_save(d->cfg->c.state.dir, r->j);
    }
    uv_timer_stop(&d->claim_timer);
}

static void free_jobrun(uv_handle_t *h)
{
    jobrun *r = h->data;
    job_free(r->j);
    free(r);
}

void jobs_free_all(batchd *d)
{
    for (size_t i = 0; i < d->n_jobs; i++) {
        /* A job the thread pool still holds is freed by its write_done / validate_done. */
        d->jobs[i]->released = true;
        maybe_release(d->jobs[i]);
    }
    free(d->jobs);
    d->jobs = NULL;
    d->n_jobs = 0;
    spool_stuck_free(d->stuck);
    d->stuck = NULL;
}
