/* runner_export: the exports of ready jobs (batchd(8), EXPORTS). The machine (export.h)
 * decides; this file performs: it persists the record when the export changed (a POST's
 * intent before the POST), sends each exchange through the export backend, takes in the
 * reply, prunes to [export] keep and reports a downloaded ZIP. It also runs the [export]
 * interval. A finished job's steps come here through runner.finished_step (rj_drive), so
 * that runner_drive.c need not call into this file. Nothing here waits: every exchange and
 * every file operation is the backend's, off the loop. */
#include "runner_internal.h"

#include "batchd/apitext.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define API_EXPORT_ROOT "/api/v1/data-collection/batches"

/* A job whose batch can be exported: ready, its files in done/, and the batch its own (an
 * append job's batch is its target's, exported there once, not once per append). */
static bool exportable(const rjob *r)
{
    return r->finished && r->j->state == JOB_READY && r->j->moved && !r->j->append.on &&
           r->j->batch_id && apitext_id_ok(r->j->batch_id);
}

/* The history says where the export went, so that show and Watch tell it. */
static void note_export(job *j, export_state before, int64_t now)
{
    const export_job *e = j->export;
    if (!e || e->state == before)
        return;
    if (e->state == EXPORT_COMPLETE)
        job_note(j, now, "export complete: %s", e->path ? e->path : "?");
    else if (e->state == EXPORT_FAILED)
        job_note(j, now, "export failed: %s", e->error ? e->error : "?");
    else
        job_note(j, now, "export %s", export_state_name(e->state));
}

/* The ZIP just downloaded: prune to keep, tell the owner (on_export). */
static void export_completed(rjob *r)
{
    runner *rn = r->rn;
    const job *j = r->j;
    const char *path = j->export->path;
    const char *slash = path ? strrchr(path, '/') : NULL;
    const char *base = slash ? slash + 1 : path;
    if (rn->export_cfg.keep > 0 && rn->be.exports->prune)
        rn->be.exports->prune(rn->be.export_ud, j->dir, rn->export_cfg.keep, base);
    log_job_fields f = rj_fields(j);
    log_job(LOG_LVL_NOTICE, &f, "export downloaded: done/%s/%s", j->dir, path ? path : "?");
    if (rn->hooks.export_done)
        rn->hooks.export_done(rn->hooks.ud, j);
}

/* The export just ended (a reply, or its own timeout): its ZIP is home, or it failed. */
static void export_ended(rjob *r, export_state before)
{
    runner *rn = r->rn;
    const export_job *e = r->j->export;
    if (e->state == EXPORT_COMPLETE && before != EXPORT_COMPLETE)
        export_completed(r);
    else if (e->state == EXPORT_FAILED && before != EXPORT_FAILED && rn->hooks.export_failed)
        rn->hooks.export_failed(rn->hooks.ud, r->j);
}

static void rx_done(void *cookie, const export_reply *reply, unsigned token_gen)
{
    rjob *r = cookie;
    runner *rn = r->rn;
    job *j = r->j;
    export_job *e = j->export;
    export_op op = r->exfer_op;
    r->exfer = NULL;
    int64_t now = rn_now(rn);
    export_state before = e->state;
    bool token_rejected = export_on_reply(e, op, reply, &rn->export_cfg.params, now, rn_random(rn));
    if (rn->hooks.export_request_done)
        rn->hooks.export_request_done(
            rn->hooks.ud, op,
            reply->net == EXPORT_NET_OK || reply->net == EXPORT_NET_TOO_LARGE ? reply->status : 0,
            rn_mono(rn) - r->exfer_started_ms);
    rj_log_reply(r, export_op_name(op), reply->net == EXPORT_NET_OK, reply->status,
                 reply->error_text, reply->secret, NULL);
    note_export(j, before, now);
    export_ended(r, before);
    rj_changed(r, j->state);
    if (token_rejected && rn->hooks.token_rejected)
        rn->hooks.token_rejected(rn->hooks.ud, token_gen);
    if (rn->stopping) {
        rj_flush(r); /* what the reply changed is written before the exit */
        if (rn->hooks.request_ended)
            rn->hooks.request_ended(rn->hooks.ud);
    } else {
        rj_drive(r);
    }
}

/* The request of op: API paths from the ids (both checked to be plain ids), the URL as is
 * (the backend holds it to the transport rule). malloc'd, or NULL when not buildable. */
static char *export_path(const job *j, export_op op, const char **method)
{
    const export_job *e = j->export;
    switch (op) {
    case EXPORT_OP_REQUEST:
        *method = "POST";
        return xasprintf(API_EXPORT_ROOT "/%s/export", j->batch_id);
    case EXPORT_OP_STATUS:
    case EXPORT_OP_DELETE:
        *method = op == EXPORT_OP_STATUS ? "GET" : "DELETE";
        if (!e->export_id || !apitext_id_ok(e->export_id))
            return NULL;
        return xasprintf(API_EXPORT_ROOT "/%s/export/%s", j->batch_id, e->export_id);
    case EXPORT_OP_DOWNLOAD:
        *method = "GET";
        return e->url ? xstrdup(e->url) : NULL;
    default:
        return NULL;
    }
}

static void send_export(rjob *r, export_op op)
{
    runner *rn = r->rn;
    const char *method = NULL;
    char *path = export_path(r->j, op, &method);
    runner_export_request req = {.op = op, .method = method, .path = path, .job_dir = r->j->dir};
    r->exfer_op = op;
    r->exfer_started_ms = rn_mono(rn);
    r->exfer = path ? rn->be.exports->send(rn->be.export_ud, &req, rx_done, r) : NULL;
    free(path);
    if (!r->exfer) {
        /* Not sendable at all (a URL with line breaks, a missing id, no room on the thread
         * pool): the machine counts it as an attempt that was certainly not sent, and
         * retries or gives up. */
        export_reply nr = {
            .net = EXPORT_NET_NOT_SENT,
            .error_text = "the request could not be sent",
        };
        r->exfer = r; /* rx_done clears it */
        rx_done(r, &nr, 0);
        return;
    }
    rj_publish(r);
}

static void rx_step(rjob *r)
{
    runner *rn = r->rn;
    job *j = r->j;
    export_job *e = j->export;
    if (!e || !rn->be.exports || r->exfer || rn->stopping || r->released || !exportable(r))
        return;
    if (r->ex_send_after_write) {
        /* The POST's intent is durable (with a POST to send, rj_drive comes here only when
         * no write is out). */
        r->ex_send_after_write = false;
        if (!rn->paused)
            send_export(r, EXPORT_OP_REQUEST);
        return;
    }
    int64_t now = rn_now(rn);
    if (r->ex_adopted) {
        /* What the download's reply would have done, now that the owner is listening. */
        r->ex_adopted = false;
        note_export(j, EXPORT_DOWNLOADING, now);
        export_completed(r);
        rj_changed(r, j->state);
    }
    bool changed = false;
    export_state before = e->state;
    export_action a = export_next(e, &rn->export_cfg.params, now, &changed);
    if (changed) {
        note_export(j, before, now); /* written by rj_drive's flush (a finished job's at once) */
        export_ended(r, before);     /* a generating export can time out here */
        rj_changed(r, j->state);
    }
    if (a.kind == EXPORT_ACT_WAIT) {
        rj_arm(r, a.until - now);
    } else if (a.kind == EXPORT_ACT_SEND && !rn->paused) {
        export_mark_sent(e, a.op, now);
        if (a.op == EXPORT_OP_REQUEST) {
            /* Write before send: a crash now leaves a POST to send again, never one that a
             * record does not know of. */
            r->ex_send_after_write = true;
            rj_persist(r);
            return;
        }
        send_export(r, a.op);
    }
}

/* ---- the operator's export and the schedule ---- */

/* Starts j's export, or a finished one over; one in progress goes on. */
static void request_export(rjob *r, int64_t now, const char *why)
{
    job *j = r->j;
    if (j->export) {
        /* A live exchange (the DELETE of a finished export) is followed as well: a new
         * request now would take its reply for its own. */
        if (r->exfer || export_request_again(j->export, now) == -EBUSY) {
            /* Followed as it is; published all the same, so that a watcher that asked for
             * it sees its state after the ask (batchctl export --wait). */
            rj_publish(r);
            return;
        }
    } else {
        j->export = export_new(now);
    }
    job_note(j, now, "export requested (%s)", why);
    r->rn->be.clock->timer_stop(r->rn->be.ud, r->timer);
    rj_changed(r, j->state);
    rj_drive(r);
}

int runner_export(runner *rn, const job *cj)
{
    rjob *r = rj_of(rn, cj);
    if (!r)
        return -ENOENT;
    if (rn->stopping)
        return -ESHUTDOWN;
    if (!rn->be.exports)
        return -ENOTSUP;
    if (!exportable(r))
        return -EINVAL;
    request_export(r, rn_now(rn), "batchctl export");
    return 0;
}

static void on_export_timer(void *arg)
{
    runner *rn = arg;
    if (rn->stopping || !rn->be.exports)
        return;
    int64_t now = rn_now(rn);
    rn->driving_all = true; /* no eviction under this loop */
    for (size_t i = 0; i < rn->n_jobs; i++) {
        rjob *r = rn->jobs[i];
        if (exportable(r) && r->j->finished_at >= now - rn->export_cfg.window_ms)
            request_export(r, now, "[export] interval");
    }
    rn->driving_all = false;
    if (rn->export_cfg.interval_ms > 0)
        rn->be.clock->timer_arm(rn->be.ud, rn->export_timer, rn->export_cfg.interval_ms);
}

void runner_configure_export(runner *rn, const runner_export_config *c)
{
    int64_t was = rn->export_cfg.interval_ms;
    rn->export_cfg = *c;
    rn->finished_step = rx_step;
    if (!rn->export_timer)
        rn->export_timer = rn->be.clock->timer_new(rn->be.ud, on_export_timer, rn);
    if (c->interval_ms <= 0)
        rn->be.clock->timer_stop(rn->be.ud, rn->export_timer);
    else if (c->interval_ms != was)
        rn->be.clock->timer_arm(rn->be.ud, rn->export_timer, c->interval_ms);
}

/* ---- recovery and stopping ---- */

void rx_recover(rjob *r)
{
    runner *rn = r->rn;
    export_job *e = r->j->export;
    if (!e)
        return;
    int64_t now = rn_now(rn);
    export_recovered(e, now);
    if (!rn->be.exports || !rn->be.exports->clean || !exportable(r) ||
        e->state == EXPORT_COMPLETE || e->state == EXPORT_FAILED)
        return;
    /* A download cut short leaves its temporary file: it is never resumed, only removed. One
     * that ended in place just before the process died is taken as it is: downloading it
     * again would leave a second ZIP of the same export. */
    char *zip = rn->be.exports->clean(rn->be.export_ud, r->j->dir, e->requested_at);
    if (zip && export_adopt(e, zip, now)) {
        log_job_fields f = rj_fields(r->j);
        log_job(LOG_LVL_NOTICE, &f,
                "export: done/%s/%s was put in place before the stop; not downloaded again",
                r->j->dir, zip);
        r->ex_adopted = true;
    }
    free(zip);
}

size_t rx_cancel_all(runner *rn)
{
    size_t n = 0;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        rjob *r = rn->jobs[i];
        if (!r->exfer)
            continue;
        /* Every export exchange may be cut: a POST's intent is durable and sent again at the
         * next start, a download starts over. */
        rn->be.exports->cancel(rn->be.export_ud, r->exfer);
        r->exfer = NULL;
        n++;
    }
    return n;
}

/* An export exchange that acts at the API: a POST makes an export job there (one of the ten
 * a batch may have), a DELETE frees one. */
static bool acts(export_op op)
{
    return op == EXPORT_OP_REQUEST || op == EXPORT_OP_DELETE;
}

size_t rx_drain(runner *rn)
{
    size_t n = 0;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        rjob *r = rn->jobs[i];
        if (!r->exfer)
            continue;
        if (acts(r->exfer_op)) {
            n++; /* it ends on its own, as a job's side-effecting request does */
            continue;
        }
        /* A status poll is asked again, a download starts over at the next start. */
        rn->be.exports->cancel(rn->be.export_ud, r->exfer);
        r->exfer = NULL;
    }
    return n;
}

size_t rx_in_flight(const runner *rn)
{
    size_t n = 0;
    for (size_t i = 0; i < rn->n_jobs; i++)
        n += rn->jobs[i]->exfer != NULL;
    return n;
}

void rx_free(runner *rn)
{
    rx_cancel_all(rn);
    if (rn->export_timer)
        rn->be.clock->timer_free(rn->be.ud, rn->export_timer);
    rn->export_timer = NULL;
}
