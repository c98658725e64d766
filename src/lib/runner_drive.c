/* runner_drive: one job's steps. The write state of its record (transitions in
 * runner_internal.h), the driver that asks the machine what to do next, and the actions that
 * go through a backend: validation, requests and the move to done/ or failed/. Their
 * completions drive the job again, so they live together here. */
#include "runner_internal.h"

#include "batchd/apitext.h"
#include "batchd/fsutil.h"
#include "batchd/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static void start_http(rjob *r, job_op op);
static void start_validation(rjob *r);
static void send_request(rjob *r, job_op op);
static void finish(rjob *r);

/* ---- record writes ---- */

static void write_failed(rjob *r, int rc)
{
    /* An intent that is not durable must not be acted on: take no step until a write
     * succeeds. */
    log_job_fields f = rj_fields(r->j);
    log_job(LOG_LVL_ERR, &f, "cannot write the job record in %s: %s; retrying in 5s",
            r->rn->state_dir, strerror(-rc));
    if (r->send_after_write != JOB_OP_NONE) {
        job_unsent(r->j, r->saved_pending);
        r->send_after_write = JOB_OP_NONE;
    }
    r->write = RJ_WRITE_FAILED;
    rj_arm(r, RUNNER_PERSIST_RETRY_MS);
}

static void write_done(void *cookie, int rc)
{
    rjob *r = cookie;
    runner *rn = r->rn;
    rj_write was = r->write;
    r->write = RJ_WRITE_IDLE;
    if (r->released || rn->stopping) {
        /* The newest state must be on disk before exit: write it here, now. */
        if (was == RJ_WRITE_OUT_CHANGED || rc < 0)
            rn->be.store->write_now(rn->be.ud, r->j);
        rj_maybe_release(r);
        return;
    }
    if (was == RJ_WRITE_OUT_CHANGED) {
        rj_persist(r);
        return;
    }
    if (rc < 0) {
        write_failed(r, rc);
        return;
    }
    job_op op = r->send_after_write;
    r->send_after_write = JOB_OP_NONE;
    if (op != JOB_OP_NONE && !job_state_terminal(r->j->state) && !rn->paused) {
        start_http(r, op);
        return;
    }
    if (op != JOB_OP_NONE)
        job_unsent(r->j, r->saved_pending); /* not sent after all (paused or cancelled) */
    rj_drive(r);
}

static bool writing(const rjob *r)
{
    return r->write == RJ_WRITE_OUT || r->write == RJ_WRITE_OUT_CHANGED;
}

static void persist_with_digest(rjob *r, uint64_t digest)
{
    r->dirty = false; /* this write (or the one queued behind the write out) carries it */
    r->lazy = false;
    if (writing(r)) {
        r->write = RJ_WRITE_OUT_CHANGED;
        return;
    }
    r->write = RJ_WRITE_OUT;
    r->written_digest = digest;
    /* The job waits for it: a send's intent, or its end before the move. */
    bool urgent = r->send_after_write != JOB_OP_NONE || r->ex_send_after_write ||
                  (job_state_terminal(r->j->state) && !r->finished);
    r->rn->be.store->write(r->rn->be.ud, r->j, urgent, write_done, r);
}

/* Makes the record durable now (the write goes out, or is queued behind the one out). Only a
 * side-effecting send (send_request) and the move to done/ or failed/ wait for it. */
void rj_persist(rjob *r)
{
    persist_with_digest(r, job_record_digest(r->j));
}

/* Watch promises every state change, but one step of the machine can pass several states (a
 * retry resuming past work already done). Publishes the states passed between `before` and the
 * current one, read from the history, each as the job in that state, oldest first. */
static void publish_passed(rjob *r, job_state before)
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
        r->rn->hooks.job_changed(r->rn->hooks.ud, j, s);
        prev = s;
    }
}

/* After the record changed: log a state change, tell watchers, and mark the record for
 * writing when the step in progress ends (rj_flush, which rj_drive calls): a reply and the
 * intent of the request that follows it then go to the disk in one write. */
void rj_changed(rjob *r, job_state before)
{
    job *j = r->j;
    if (j->state != before && r->rn->hooks.job_changed)
        publish_passed(r, before);
    if (j->state != before) {
        log_job_fields f = rj_fields(j);
        log_job(j->state == JOB_FAILED ? LOG_LVL_WARNING : LOG_LVL_INFO, &f, "%s -> %s: %s",
                job_state_name(before), job_state_name(j->state), rj_last_note(j));
    }
    r->dirty = true;
    rj_publish(r);
}

/* Starts the write rj_changed asked for, or leaves it to the lazy timer when nothing waits
 * for it: the disk may lag behind the job (see drive_step), and a poll's status or a state
 * entered on the way then shares the write of the next intent instead of costing its own. A
 * reply that changed nothing durable (a poll with the same status) is not written. */
void rj_flush(rjob *r)
{
    if (!r->dirty)
        return;
    r->dirty = false;
    runner *rn = r->rn;
    uint64_t digest = job_record_digest(r->j);
    if (!writing(r) && r->write != RJ_WRITE_FAILED && digest == r->written_digest)
        return;
    if (writing(r) || r->write == RJ_WRITE_FAILED || r->finished || rn->stopping) {
        persist_with_digest(r, digest);
        return;
    }
    r->lazy = true;
    if (!rn->lazy_armed) {
        rn->lazy_armed = true;
        rn->be.clock->timer_arm(rn->be.ud, rn->lazy_timer, RUNNER_LAZY_WRITE_MS);
    }
}

void rn_lazy_run(void *arg)
{
    runner *rn = arg;
    rn->lazy_armed = false;
    for (size_t i = 0; i < rn->n_jobs; i++)
        if (rn->jobs[i]->lazy)
            rj_persist(rn->jobs[i]);
}

/* ---- the driver ---- */

static void on_timer(void *arg)
{
    rj_drive(arg);
}

rjob *rj_add(runner *rn, job *j, bool finished)
{
    rjob *r = xcalloc(1, sizeof *r);
    r->j = j;
    r->rn = rn;
    r->finished = finished;
    r->timer = rn->be.clock->timer_new(rn->be.ud, on_timer, r);
    if (rn->n_jobs == rn->cap_jobs) {
        rn->cap_jobs = rn->cap_jobs ? rn->cap_jobs * 2 : 64;
        rn->jobs = xrealloc(rn->jobs, rn->cap_jobs * sizeof(rjob *));
    }
    rn->jobs[rn->n_jobs++] = r;
    if (!finished)
        rn->n_active++;
    return r;
}

static void perform(rjob *r, job_action a, int64_t now)
{
    switch (a.kind) {
    case JOB_ACT_VALIDATE:
        start_validation(r);
        break;
    case JOB_ACT_SEND:
        if (!r->rn->paused)
            send_request(r, a.op);
        break;
    case JOB_ACT_WAIT:
        rj_arm(r, a.until - now);
        break;
    case JOB_ACT_FINISH:
        finish(r);
        break;
    case JOB_ACT_NONE:
        break;
    }
}

/* One step of the job, if it can take one. A write out does not hold the job up: the disk
 * may lag behind the job, since every state it can hold resumes correctly (a side-effecting
 * request is sent only once its intent is durable, and a later write never overtakes an
 * earlier one). Two steps wait for the write: such a send (send_after_write) and the move to
 * done/ or failed/ (a record that is not terminal yet must still find active/NAME). */
static void drive_step(rjob *r)
{
    runner *rn = r->rn;
    if (rj_busy(r) || rn->stopping || r->waiting_validation || r->send_after_write != JOB_OP_NONE ||
        rj_append_holds(r))
        return;
    /* Paused, a waiting job takes no step (it could only send a poll, which waits, or time
     * out on time that is not the API's); runner_set_paused drives it when the pause ends. */
    bool failed = r->write == RJ_WRITE_FAILED;
    if (rn->paused && !failed && !r->finished && rj_waits_with_timeout(r->j->state))
        return;
    if (failed) {
        rj_persist(r); /* a failed write: no step before it succeeds (finished jobs too) */
        return;
    }
    if (r->finished) {
        /* Its export (runner_export.c); a POST waits for the write of its intent. */
        if (rn->finished_step && !(r->ex_send_after_write && writing(r)))
            rn->finished_step(r);
        return;
    }
    job *j = r->j;
    job_state before = j->state;
    int64_t now = rn_now(rn);
    bool changed = false;
    job_action a = job_next(j, &rn->params, now, rn_random(rn), &changed);
    if (changed)
        rj_changed(r, before);
    if (a.kind == JOB_ACT_FINISH && (writing(r) || r->dirty || r->lazy)) {
        if (!writing(r))
            rj_persist(r); /* now: the move waits for it */
        return;            /* write_done drives the job again, and job_next finishes it then */
    }
    perform(r, a, now);
}

void rj_drive(rjob *r)
{
    drive_step(r);
    rj_flush(r);
}

/* ---- validation ---- */

/* Appends held in queued whose turn may have come: a job was validated or finished
 * (runner_append.c decides). */
static void wake_appends(runner *rn)
{
    bool was = rn->driving_all;
    rn->driving_all = true; /* no eviction while walking */
    int64_t now = rn_now(rn);
    for (size_t i = 0; i < rn->n_jobs && !rn->stopping; i++) {
        rjob *o = rn->jobs[i];
        int w = rj_append_wake(o, now);
        if (w == 1) {
            rj_changed(o, o->j->state);
            rj_flush(o);
        } else if (w == 2)
            rj_drive(o);
    }
    rn->driving_all = was;
}

/* Hands a freed validation slot to the oldest job waiting for one. */
static void start_waiting_validations(runner *rn)
{
    for (size_t i = 0; i < rn->n_jobs && rn->validations < RUNNER_VALIDATIONS_MAX && !rn->stopping;
         i++) {
        rjob *o = rn->jobs[i];
        if (o->waiting_validation) {
            o->waiting_validation = false;
            start_validation(o);
        }
    }
}

static void validate_done(void *cookie, const job_validation *v)
{
    rjob *r = cookie;
    runner *rn = r->rn;
    r->validating = false;
    r->vhandle = NULL;
    rn->validations--;
    if (r->released || rn->stopping) {
        /* Its record is durable; the result is dropped and the validation runs again on
         * the next start. */
        rj_maybe_release(r);
        return;
    }
    job *j = r->j;
    job_state before = j->state;
    if (v && j->state == JOB_VALIDATING) {
        if (!rj_append_take(r, v, rn_now(rn)))
            job_on_validated(j, v, rn_now(rn));
        rj_changed(r, before);
    }
    start_waiting_validations(rn);
    rj_drive(r); /* stopping, it only writes what changed */
    wake_appends(rn);
}

static void start_validation(rjob *r)
{
    runner *rn = r->rn;
    if (rn->validations >= RUNNER_VALIDATIONS_MAX) {
        r->waiting_validation = true;
        return;
    }
    rn->validations++;
    r->validating = true;
    int rc =
        rn->be.validate->start(rn->be.ud, r->j, r->append.schema, validate_done, r, &r->vhandle);
    if (rc < 0) {
        rn->validations--;
        r->validating = false;
        r->vhandle = NULL;
        log_error("cannot queue validation: %s", strerror(-rc));
        rj_arm(r, RUNNER_PERSIST_RETRY_MS);
    }
}

/* ---- requests ---- */

/* One line per reply, for a job's calls and its export's alike: the transport's text when
 * nothing came back (the network's, so cleaned like an API text), else the status. note, when
 * not NULL, says what the reply did to the job. */
void rj_log_reply(const rjob *r, const char *what, bool answered, long status,
                  const char *error_text, const char *secret, const char *note)
{
    log_job_fields f = rj_fields(r->j);
    if (!answered) {
        char *why = apitext_clean_str(error_text ? error_text : "", secret);
        log_job(LOG_LVL_NOTICE, &f, "%s: %s", what, why);
        free(why);
    } else if (note) {
        log_job(status >= 400 ? LOG_LVL_NOTICE : LOG_LVL_DEBUG, &f, "%s: HTTP %ld (%s)", what,
                status, note);
    } else {
        log_job(status >= 400 ? LOG_LVL_NOTICE : LOG_LVL_DEBUG, &f, "%s: HTTP %ld", what, status);
    }
}

/* Why a failed attempt is retried, as a metrics label (batchd(8), METRICS). */
static const char *retry_reason(job_op op, const job_reply *reply)
{
    if (reply->net == JOB_NET_TIMEOUT || (reply->net == JOB_NET_OK && reply->status == 408))
        return "timeout";
    if (reply->net != JOB_NET_OK)
        return "network";
    if (reply->status == 429)
        return "rate_limited";
    if (reply->status >= 500)
        return "server_error";
    if (op == JOB_OP_UPLOAD && reply->status == 403)
        return "upload_url_refused";
    return "other";
}

static void report_request(rjob *r, job_op op, const job_reply *reply, int attempts_before)
{
    runner *rn = r->rn;
    const job *j = r->j;
    if (!rn->hooks.request_done)
        return;
    bool retried =
        j->attempts > attempts_before && j->retry_at > 0 && !job_state_terminal(j->state);
    runner_request_info info = {
        .op = op,
        .status = reply->net == JOB_NET_OK || reply->net == JOB_NET_TOO_LARGE ? reply->status : 0,
        .latency_ms = rn_mono(rn) - r->xfer_started_ms,
        .retry_reason = retried ? retry_reason(op, reply) : NULL,
        .upload_bytes = op == JOB_OP_UPLOAD ? r->xfer_bytes : 0,
    };
    rn->hooks.request_done(rn->hooks.ud, j, &info);
}

static void http_done(void *cookie, const job_reply *reply, unsigned token_gen)
{
    rjob *r = cookie;
    runner *rn = r->rn;
    job *j = r->j;
    job_op op = r->xfer_op;
    r->xfer = NULL;
    job_state before = j->state;
    int attempts_before = j->attempts;
    bool token_rejected = job_on_reply(j, op, reply, &rn->params, rn_now(rn), rn_random(rn));
    report_request(r, op, reply, attempts_before);
    rj_log_reply(r, job_op_name(op), reply->net == JOB_NET_OK, reply->status, reply->error_text,
                 reply->secret, rj_last_note(r->j));
    rj_changed(r, before);
    if (token_rejected && rn->hooks.token_rejected)
        rn->hooks.token_rejected(rn->hooks.ud, token_gen);
    if (rn->stopping) {
        rj_flush(r);
        if (rn->hooks.request_ended)
            rn->hooks.request_ended(rn->hooks.ud);
    } else {
        rj_drive(r);
    }
}

static void http_progress(void *cookie, int64_t sent)
{
    rjob *r = cookie;
    if (sent > r->xfer_bytes)
        r->xfer_bytes = sent;
    job_on_progress(r->j, sent);
    if (rn_mono(r->rn) - r->last_publish_ms >= RUNNER_PROGRESS_PUBLISH_MS)
        rj_publish(r);
}

/* Fails the job for a local reason; takes msg. */
static void fail_now(rjob *r, const char *code, char *msg)
{
    job_state before = r->j->state;
    job_fail(r->j, rn_now(r->rn), code, "%s", msg);
    free(msg);
    rj_changed(r, before);
    rj_drive(r);
}

/* Starts the request for op; for a side-effecting op its intent is already durable. */
static void start_http(rjob *r, job_op op)
{
    runner *rn = r->rn;
    job *j = r->j;
    job_request rq;
    if (job_build_request(j, op, &rq) < 0) {
        fail_now(r, "invalid_job",
                 xasprintf("internal error: the record lacks what %s needs", job_op_name(op)));
        return;
    }
    runner_request req = {
        .op = op,
        .rq = &rq,
        .upload_path = j->upload_path,
        .upload_content_type = j->upload_content_type,
        .upload_size = j->bytes_total > 0 ? j->bytes_total : 0,
        .upload_sha256 = j->upload_sha256,
    };
    r->xfer_op = op;
    r->xfer_started_ms = rn_mono(rn);
    r->xfer_bytes = 0;
    r->xfer = rn->be.http->send(rn->be.ud, &req, http_done,
                                op == JOB_OP_UPLOAD ? http_progress : NULL, r);
    job_request_clear(&rq);
    if (!r->xfer) {
        /* A request that cannot be sent at all (a URL or Content-Type with line breaks, from
         * the API's own reply): permanent. */
        fail_now(r, "api_rejected",
                 xasprintf("cannot send %s: the URL or Content-Type the API gave is not usable",
                           job_op_name(op)));
        return;
    }
    rj_publish(r);
}

static void send_request(rjob *r, job_op op)
{
    job_op saved_pending = job_mark_sent(r->j, op, rn_now(r->rn));
    if (!job_op_has_side_effect(op)) {
        start_http(r, op);
        return;
    }
    /* Record the intent first; write_done sends once it is on disk. */
    r->saved_pending = saved_pending;
    r->send_after_write = op;
    rj_persist(r);
}

/* ---- finishing ---- */

static void log_finished(const rjob *r, bool ok)
{
    const job *j = r->j;
    log_job_fields f = rj_fields(j);
    if (ok)
        log_job(LOG_LVL_NOTICE, &f, "ready: %" PRId64 " tasks in %" PRId64 " groups, %s/%s",
                j->total_task_count, j->total_task_groups, "done", j->dir);
    else
        log_job(LOG_LVL_WARNING, &f, "failed (%s): %s; see failed/%s/error.json",
                j->error_code ? j->error_code : "?", j->error_message ? j->error_message : "",
                j->dir);
}

static bool finish_failed(rjob *r, bool ok, int rc)
{
    const job *j = r->j;
    log_job_fields f = rj_fields(j);
    if (rc == -ENOENT) {
        /* Its directory is gone (removed by hand): nothing to move, and no retry can help. The
         * record keeps what exists remotely. */
        log_job(LOG_LVL_ERR, &f,
                "active/%s disappeared before the job could be moved to %s/; the job is %s "
                "(dataset %s, batch %s); its record is %s/jobs/%s.json",
                j->dir, ok ? "done" : "failed", job_state_name(j->state),
                j->dataset_id ? j->dataset_id : "none", j->batch_id ? j->batch_id : "none",
                r->rn->state_dir, j->id);
        return false;
    }
    log_job(LOG_LVL_ERR, &f, "cannot move the job to %s/: %s; retrying in 5s",
            ok ? "done" : "failed", strerror(-rc));
    rj_arm(r, RUNNER_PERSIST_RETRY_MS);
    return true;
}

static void finish_done(void *cookie, int rc, const char *final_dir)
{
    rjob *r = cookie;
    runner *rn = r->rn;
    job *j = r->j;
    r->finishing = false;
    if (r->released) {
        rj_maybe_release(r);
        return;
    }
    bool ok = j->state == JOB_READY;
    if (rc < 0 && finish_failed(r, ok, rc))
        return;
    bool gone = rc == -ENOENT;
    r->finished = true;
    j->moved = true;
    rn->n_active--;
    if (final_dir) {
        const char *base = fsutil_basename(final_dir);
        if (strcmp(base, j->dir) != 0) {
            free(j->dir);
            j->dir = xstrdup(base);
        }
    }
    job_note(j, rn_now(rn), "moved to %s/%s", ok ? "done" : "failed", j->dir);
    /* The resolved job is not needed any more (a retry validates again), but for what an
     * append to it checks its records against. */
    j->spec = rn_append_kept_spec(j->spec, ok);
    rj_append_clear(r);
    log_finished(r, ok);
    rj_persist(r);
    rj_publish(r);
    if (gone) {
        /* A hook's argv[1] would name a file that does not exist (as hooks_catch_up in
         * src/batchd/hooks.c, which skips a job whose directory is not there). */
        log_job_fields f = rj_fields(j);
        log_job(LOG_LVL_WARNING, &f, "no hook run: its files are not in %s/",
                ok ? "done" : "failed");
    } else if (rn->hooks.job_finished) {
        rn->hooks.job_finished(rn->hooks.ud, j);
    }
    wake_appends(rn);
    rn_evict_finished(rn);
    runner_update_status(rn);
    runner_claim_soon(rn);
}

static void finish(rjob *r)
{
    runner *rn = r->rn;
    job *j = r->j;
    bool ok = j->state == JOB_READY;
    cJSON *body = ok ? job_result_json(j) : job_error_json(j);
    char *text = json_print_pretty(body);
    cJSON_Delete(body);
    r->finishing = true;
    rn->be.spool->finish(rn->be.ud, j->dir, ok, ok ? "result.json" : "error.json", text,
                         finish_done, r);
    free(text);
}
