/* runner_job: what the rest of the runner builds on: the clock and the jitter, publishing,
 * the per-job timer, the table's upkeep (eviction, release) and the claim timer. It calls no
 * other file of the runner. */
#include "runner_internal.h"

#include "batchd/util.h"

#include <stdlib.h>
#include <string.h>

uint64_t rn_random(runner *rn)
{
    /* xorshift64*: jitter needs spread, not secrecy. */
    uint64_t x = rn->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rn->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

int64_t rn_now(runner *rn)
{
    return rn->be.clock->now_ms(rn->be.ud);
}

int64_t rn_mono(runner *rn)
{
    return rn->be.clock->mono_ms(rn->be.ud);
}

log_job_fields rj_fields(const job *j)
{
    log_job_fields f = {j->id, j->name, j->dataset_id, j->batch_id, job_state_name(j->state)};
    return f;
}

const char *rj_last_note(const job *j)
{
    const cJSON *last = cJSON_GetArrayItem(j->history, cJSON_GetArraySize(j->history) - 1);
    const char *n = json_str(last, "note");
    return n ? n : "";
}

void rj_publish(rjob *r)
{
    runner *rn = r->rn;
    if (rn->hooks.job_changed)
        rn->hooks.job_changed(rn->hooks.ud, r->j, NULL);
    r->last_publish_ms = rn_mono(rn);
}

void runner_update_status(runner *rn)
{
    size_t done = 0, failed = 0;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        if (!rn->jobs[i]->finished)
            continue;
        if (rn->jobs[i]->j->state == JOB_READY)
            done++;
        else
            failed++;
    }
    if (rn->hooks.status)
        rn->hooks.status(rn->hooks.ud, rn->n_active, done, failed);
}

void rj_arm(rjob *r, int64_t delay_ms)
{
    if (delay_ms < 1)
        delay_ms = 1;
    r->rn->be.clock->timer_arm(r->rn->be.ud, r->timer, delay_ms);
}

bool rj_busy(const rjob *r)
{
    return r->xfer || r->validating || r->finishing || r->exfer;
}

/* The states that wait for the API with a timeout (import_timeout, batch_timeout). */
bool rj_waits_with_timeout(job_state s)
{
    return s == JOB_IMPORTING || s == JOB_PROCESSING;
}

void rj_free(rjob *r)
{
    runner *rn = r->rn;
    rn->be.clock->timer_free(rn->be.ud, r->timer);
    rj_append_clear(r);
    job_free(r->j);
    free(r);
}

void rn_free_now(runner *rn)
{
    free(rn->claimed_later);
    free(rn->state_dir);
    free(rn->incoming_dir);
    free(rn);
}

/* Frees a job left behind by runner_free once no backend holds it. */
void rj_maybe_release(rjob *r)
{
    if (!r->released || r->write == RJ_WRITE_OUT || r->write == RJ_WRITE_OUT_CHANGED ||
        r->validating || r->finishing)
        return;
    runner *rn = r->rn;
    rj_free(r);
    if (--rn->held == 0 && rn->freed)
        rn_free_now(rn);
}

rjob *rj_of(const runner *rn, const job *j)
{
    for (size_t i = 0; i < rn->n_jobs; i++)
        if (rn->jobs[i]->j == j)
            return rn->jobs[i];
    return NULL;
}

/* A finished job that must stay in memory: its export is under way (its timer is the
 * job's), or an append job in memory grows its batch (a standing batch's target is its oldest
 * job, and the next drop resolves it here). */
static bool still_needed(const runner *rn, const rjob *r)
{
    if (r->ex_adopted || (!r->j->append.on && export_unsettled(r->j->export)))
        return true; /* an adopted export completes (and runs on_export) at its first step */
    if (r->j->state != JOB_READY || r->j->append.on)
        return false;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        const job *o = rn->jobs[i]->j;
        if (o->append.on && o->append.target_job_id && !strcmp(o->append.target_job_id, r->j->id))
            return true;
    }
    return false;
}

/* Finished jobs stay listed, but only the newest RUNNER_FINISHED_KEPT of them in memory: a
 * daemon running for months must not grow with its history. Their records stay on disk. */
void rn_evict_finished(runner *rn)
{
    if (rn->driving_all)
        return;
    size_t finished = 0;
    for (size_t i = 0; i < rn->n_jobs; i++)
        finished += rn->jobs[i]->finished;
    size_t i = 0;
    while (finished > RUNNER_FINISHED_KEPT && i < rn->n_jobs) {
        rjob *r = rn->jobs[i];
        if (!r->finished || rj_busy(r) || r->write != RJ_WRITE_IDLE || r->lazy ||
            still_needed(rn, r)) {
            i++;
            continue;
        }
        memmove(&rn->jobs[i], &rn->jobs[i + 1], (rn->n_jobs - i - 1) * sizeof(rjob *));
        rn->n_jobs--;
        finished--;
        rj_free(r);
    }
}

void runner_claim_soon(runner *rn)
{
    if (rn->claim_pending || rn->stopping)
        return;
    rn->claim_pending = true;
    rn->be.clock->timer_arm(rn->be.ud, rn->claim_timer, 1);
}
