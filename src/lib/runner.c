/* runner: the runner's public face (runner.h): life, the table, pausing, the operator's
 * actions and stopping. The steps of a job are in runner_drive.c, claims in runner_claim.c,
 * recovery in runner_recover.c, shared upkeep in runner_job.c. */
#include "runner_internal.h"

#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- life ---- */

runner *runner_new(const runner_backend *be, const runner_hooks *hooks, const runner_options *o)
{
    runner *rn = xcalloc(1, sizeof *rn);
    rn->be = *be;
    if (hooks)
        rn->hooks = *hooks;
    rn->state_dir = xstrdup(o->state_dir ? o->state_dir : "");
    rn->incoming_dir = xstrdup(o->incoming_dir ? o->incoming_dir : "");
    rn->rng = o->seed | 1;
    job_params_default(&rn->params);
    rn->max_active = 1;
    rn->claim_timer = be->clock->timer_new(be->ud, rn_claim_run, rn);
    rn->lazy_timer = be->clock->timer_new(be->ud, rn_lazy_run, rn);
    return rn;
}

void runner_configure(runner *rn, const job_params *p, size_t max_active)
{
    rn->params = *p;
    rn->max_active = max_active;
}

void runner_free(runner *rn)
{
    if (!rn)
        return;
    rn->be.clock->timer_free(rn->be.ud, rn->claim_timer);
    rn->be.clock->timer_free(rn->be.ud, rn->lazy_timer);
    rx_free(rn); /* no export completion may come for a job freed below */
    spool_stuck_free(rn->stuck);
    rn->stuck = NULL;
    rn->stopping = true;
    rn->n_claimed_later = 0; /* the jobs are released below */
    size_t n = rn->n_jobs;
    rjob **jobs = rn->jobs;
    rn->jobs = NULL;
    rn->n_jobs = 0;
    /* Claims and a count still out hold the runner too (claim_done and count_done drop
     * them). + 1 until the loop below is done. */
    rn->held = n + rn->claims_out + (rn->counting ? 1 : 0) + 1;
    for (size_t i = 0; i < n; i++) {
        /* A job a backend still holds is freed by its write_done / validate_done. */
        jobs[i]->released = true;
        rj_maybe_release(jobs[i]);
    }
    free(jobs);
    rn->freed = true;
    if (--rn->held == 0)
        rn_free_now(rn);
}

/* ---- the table ---- */

size_t runner_count(const runner *rn)
{
    return rn->n_jobs;
}

const job *runner_job_at(const runner *rn, size_t i)
{
    return i < rn->n_jobs ? rn->jobs[i]->j : NULL;
}

size_t runner_stuck_count(const runner *rn)
{
    return spool_stuck_count(rn->stuck);
}

size_t runner_incoming(const runner *rn)
{
    return rn->incoming;
}

size_t runner_waiting_for_slot(const runner *rn)
{
    if (rn->paused)
        return rn->incoming;
    size_t busy = rn->n_active + rn->claims_out;
    size_t room = busy < rn->max_active ? rn->max_active - busy : 0;
    return rn->incoming > room ? rn->incoming - room : 0;
}

size_t runner_bad_records(const runner *rn)
{
    return rn->bad_records;
}

int runner_note(runner *rn, const char *job_id, const char *note)
{
    if (rn->stopping)
        return -ESHUTDOWN;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        rjob *r = rn->jobs[i];
        if (strcmp(r->j->id, job_id) != 0)
            continue;
        job_note(r->j, rn_now(rn), "%s", note);
        rj_persist(r);
        rj_publish(r);
        return 0;
    }
    return -ENOENT;
}

static bool names(const rjob *r, const char *key)
{
    return strcmp(r->j->name, key) == 0 || strcmp(r->j->dir, key) == 0;
}

static bool id_prefix(const rjob *r, const char *key)
{
    size_t n = strlen(key);
    return n >= RUNNER_ID_PREFIX_MIN && strncmp(r->j->id, key, n) == 0;
}

/* The jobs that match key by name, or else by id prefix, in claim order. */
static size_t matches(const runner *rn, const char *key, bool by_name, const char **ids, size_t max,
                      const rjob **any)
{
    size_t n = 0;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        const rjob *r = rn->jobs[i];
        if (by_name ? !names(r, key) : !id_prefix(r, key))
            continue;
        if (ids && n < max)
            ids[n] = r->j->id;
        *any = r;
        n++;
    }
    return n;
}

const job *runner_find(const runner *rn, const char *key, bool *ambiguous)
{
    *ambiguous = false;
    for (size_t i = 0; i < rn->n_jobs; i++)
        if (strcmp(rn->jobs[i]->j->id, key) == 0)
            return rn->jobs[i]->j;
    /* By name (or directory name): it must be unique, except that one unfinished job wins
     * over finished namesakes. */
    const rjob *any = NULL, *live = NULL;
    size_t n_any = 0, n_live = 0;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        const rjob *r = rn->jobs[i];
        if (!names(r, key))
            continue;
        any = r;
        n_any++;
        if (!r->finished) {
            live = r;
            n_live++;
        }
    }
    if (n_live == 1)
        return live->j;
    if (n_live > 1 || n_any > 1)
        *ambiguous = true;
    if (any)
        return any->j;
    /* A name always wins over a prefix: only a key that names no job is a prefix. */
    size_t n = matches(rn, key, false, NULL, 0, &any);
    *ambiguous = n > 1;
    return any ? any->j : NULL;
}

size_t runner_candidates(const runner *rn, const char *key, const char **ids, size_t max)
{
    const rjob *any = NULL;
    size_t n = matches(rn, key, true, ids, max, &any);
    return n > 0 ? n : matches(rn, key, false, ids, max, &any);
}

void runner_drive_all(runner *rn)
{
    /* Driving may finish jobs; evicting them would shift rn->jobs under this loop. */
    rn->driving_all = true;
    for (size_t i = 0; i < rn->n_jobs; i++)
        rj_drive(rn->jobs[i]);
    rn->driving_all = false;
    rn_evict_finished(rn);
}

void runner_set_paused(runner *rn, bool paused)
{
    bool was = rn->paused;
    rn->paused = paused;
    runner_update_status(rn);
    if (!was && paused)
        rn->paused_at = rn_now(rn);
    if (!was || paused)
        return;
    /* A pause (a token the API rejected, an operator's) stops the polls: the time it took is
     * not the API's, and must not time a job out once it is lifted. */
    int64_t held = rn_now(rn) - rn->paused_at;
    for (size_t i = 0; i < rn->n_jobs && held > 0; i++) {
        job *j = rn->jobs[i]->j;
        if (!rn->jobs[i]->finished && rj_waits_with_timeout(j->state) && j->wait_started_at > 0)
            j->wait_started_at += held;
    }
    /* Every job waiting to send does so now; claims start again. */
    runner_drive_all(rn);
    runner_claim_soon(rn);
}

/* ---- operator actions ---- */

int runner_cancel(runner *rn, const job *cj)
{
    rjob *r = rj_of(rn, cj);
    if (!r || r->finished || job_state_terminal(r->j->state))
        return -EINVAL;
    if (r->xfer) {
        rn->be.http->cancel(rn->be.ud, r->xfer);
        r->xfer = NULL;
    }
    if (r->validating && r->vhandle)
        rn->be.validate->cancel(rn->be.ud, r->vhandle); /* validate_done releases the job */
    r->waiting_validation = false;
    rn->be.clock->timer_stop(rn->be.ud, r->timer);
    job_state before = r->j->state;
    job_cancel(r->j, rn_now(rn));
    rj_changed(r, before);
    rj_drive(r);
    return 0;
}

/* A running job waiting for its retry time: the timer goes, the attempt is made now. */
static int retry_now(runner *rn, rjob *r)
{
    if (rj_busy(r) || job_retry_now(r->j, rn_now(rn)) < 0)
        return -EBUSY;
    rn->be.clock->timer_stop(rn->be.ud, r->timer);
    /* The cleared retry time goes out with the step's write (with the intent, for a send
     * that has a side effect). */
    rj_changed(r, r->j->state);
    rj_drive(r);
    return 0;
}

int runner_retry(runner *rn, const job *cj)
{
    rjob *r = rj_of(rn, cj);
    if (r && !r->finished && !job_state_terminal(r->j->state))
        return retry_now(rn, r);
    /* Failed or cancelled, but its directory is not in failed/ yet (the move is on the pool,
     * or waits to be tried again): reactivating now would race with it. */
    if (r && !r->finished && (r->j->state == JOB_FAILED || r->j->state == JOB_CANCELLED))
        return -EAGAIN;
    if (!r || !r->finished || (r->j->state != JOB_FAILED && r->j->state != JOB_CANCELLED))
        return -EINVAL;
    job *j = r->j;
    char *active = NULL;
    int rc = rn->be.spool->reactivate(rn->be.ud, j->dir, &active);
    if (rc < 0)
        return rc;
    free(j->dir);
    j->dir = active;
    job_state before = j->state;
    job_retry(j, rn_now(rn));
    r->finished = false;
    rn->n_active++;
    rj_changed(r, before);
    runner_update_status(rn);
    rj_drive(r);
    return 0;
}

/* ---- stopping ---- */

size_t runner_begin_drain(runner *rn)
{
    rn->stopping = true;
    size_t n = rx_drain(rn);
    for (size_t i = 0; i < rn->n_jobs; i++) {
        rjob *r = rn->jobs[i];
        rn->be.clock->timer_stop(rn->be.ud, r->timer);
        if (r->xfer && !job_op_has_side_effect(r->xfer_op)) {
            rn->be.http->cancel(rn->be.ud, r->xfer); /* a read: nothing to lose */
            r->xfer = NULL;
        }
        n += r->xfer != NULL;
    }
    rn->be.clock->timer_stop(rn->be.ud, rn->claim_timer);
    return n;
}

size_t runner_in_flight(const runner *rn)
{
    size_t n = rn ? rx_in_flight(rn) : 0;
    for (size_t i = 0; rn && i < rn->n_jobs; i++)
        n += rn->jobs[i]->xfer != NULL;
    return n;
}

void runner_shutdown(runner *rn)
{
    if (!rn)
        return;
    rn->stopping = true;
    rx_cancel_all(rn);
    for (size_t i = 0; i < rn->n_jobs; i++) {
        rjob *r = rn->jobs[i];
        rn->be.clock->timer_stop(rn->be.ud, r->timer);
        if (r->xfer) {
            /* Its intent is durable: the next start resolves the unknown outcome. */
            rn->be.http->cancel(rn->be.ud, r->xfer);
            r->xfer = NULL;
        }
        if (r->validating && r->vhandle)
            rn->be.validate->cancel(rn->be.ud, r->vhandle);
        if (r->write == RJ_WRITE_OUT || r->write == RJ_WRITE_OUT_CHANGED)
            r->write = RJ_WRITE_OUT_CHANGED; /* write_done writes the newest state */
        else if (!r->finished || r->write == RJ_WRITE_FAILED || r->lazy)
            rn->be.store->write_now(rn->be.ud, r->j);
        r->lazy = false;
    }
    rn->be.clock->timer_stop(rn->be.ud, rn->claim_timer);
    rn->be.clock->timer_stop(rn->be.ud, rn->lazy_timer);
    rn->lazy_armed = false;
}
