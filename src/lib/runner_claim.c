/* runner_claim: taking entries from incoming/ into active/ through the spool backend.
 *
 * Entries that could not be claimed (a directory batchd may not rename, a full disk) are
 * stuck: kept in rn->stuck (no limit), left out of every scan, and retried every
 * RUNNER_CLAIM_RETRY_MS, so any number of them can neither block the others nor spin. The
 * bookkeeping is spool_stuck (spool_stuck.c), pure code with no I/O: the spool itself is only
 * reached through the backend. */
#include "runner_internal.h"

#include "batchd/fsutil.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct claim_ctx {
    runner *rn;
    char *entry;
    char id[27];
    int64_t now;
} claim_ctx;

static spool_stuck *stuck_of(runner *rn)
{
    if (!rn->stuck)
        rn->stuck = spool_stuck_new();
    return rn->stuck;
}

static void claim_failed(runner *rn, const char *entry, int rc)
{
    bool first = !spool_stuck_has(rn->stuck, entry);
    if (!spool_stuck_failed(stuck_of(rn), entry, rn_mono(rn), RUNNER_CLAIM_RETRY_MS,
                            RUNNER_STUCK_RELOG_MS))
        return;
    char *esc = spool_name_escape(entry);
    log_error("%s incoming/%s: %s; it stays in incoming/ and is tried again every minute "
              "(batchd's user needs to be able to rename it: check its owner and mode, and "
              "free disk space); %zu entr%s in incoming/ cannot be claimed",
              first ? "cannot claim" : "still cannot claim", esc, strerror(-rc),
              spool_stuck_count(rn->stuck), spool_stuck_count(rn->stuck) == 1 ? "y" : "ies");
    free(esc);
}

static void claimed(runner *rn, const claim_ctx *cx, const runner_claim *c)
{
    const char *base = fsutil_basename(c->job_dir);
    bool rejected = c->kind == RUNNER_REJECTED;
    job *j = job_new(rejected && c->job_id ? c->job_id : cx->id, c->job_name, base, cx->now);
    j->source = xstrdup(cx->entry); /* lets batchctl submit find the job its entry became */
    if (rejected) {
        job_fail(j, cx->now, c->code ? c->code : "unsupported_entry", "%s",
                 c->reason ? c->reason : "unsupported entry");
        j->moved = true; /* the spool put it in failed/ with its error.json */
    }
    rjob *r = rj_add(rn, j, rejected);
    log_job_fields f = rj_fields(j);
    if (rejected)
        log_job(LOG_LVL_WARNING, &f, "rejected into failed/%s: %s", base, j->error_message);
    else
        log_job(LOG_LVL_INFO, &f, "claimed into active/%s", base);
    rj_publish(r);
    if (rejected) {
        rj_persist(r);
        if (rn->hooks.job_finished)
            rn->hooks.job_finished(rn->hooks.ud, j);
        return;
    }
    /* Its record and first step wait for the batch's last claim (claimed_start). */
    if (rn->n_claimed_later == rn->cap_claimed_later) {
        rn->cap_claimed_later = rn->cap_claimed_later ? rn->cap_claimed_later * 2 : 64;
        rn->claimed_later = xrealloc(rn->claimed_later, rn->cap_claimed_later * sizeof(rjob *));
    }
    rn->claimed_later[rn->n_claimed_later++] = r;
}

/* The first steps of the jobs claimed so far: their records, then their validations. A
 * batch's claims are all announced (log line, Watch event) before any of this: a burst of a
 * hundred would otherwise announce its last claim only after the other 99 jobs' records. */
static void claimed_start(runner *rn)
{
    size_t n = rn->n_claimed_later;
    rn->n_claimed_later = 0;
    /* Stopping too (a claim batch that ends during the drain): the record keeps the id the
     * Watch event gave it across a crash before the stop's own writes. */
    for (size_t i = 0; i < n; i++)
        rj_persist(rn->claimed_later[i]);
    for (size_t i = 0; i < n && !rn->stopping; i++)
        rj_drive(rn->claimed_later[i]);
}

static void claim_done(void *cookie, int rc, const runner_claim *c)
{
    claim_ctx *cx = cookie;
    runner *rn = cx->rn;
    rn->claims_out--;
    if (rn->freed) {
        /* The runner is gone. A claimed entry is in active/ without a record: the next start
         * adopts it; a rejected one is in failed/ with its error.json. */
        free(cx->entry);
        free(cx);
        if (--rn->held == 0)
            rn_free_now(rn);
        return;
    }
    if (rc < 0)
        claim_failed(rn, cx->entry, rc);
    else
        spool_stuck_forget(rn->stuck, cx->entry);
    if (rc >= 0 && c->kind != RUNNER_GONE)
        claimed(rn, cx, c);
    if (!c->more_follow)
        claimed_start(rn);
    free(cx->entry);
    free(cx);
    /* Claims end after the turn that asked for them (a backend batches them on the pool):
     * once the last one is in, the status counts them. */
    if (rn->claims_out == 0) {
        runner_update_status(rn);
        if (spool_stuck_count(rn->stuck) > 0)
            runner_claim_soon(rn); /* the stuck entries' retries waited for this */
    }
}

static void claim_one(runner *rn, const char *entry)
{
    if (!spool_stuck_has(rn->stuck, entry) && rn->incoming > 0)
        rn->incoming--; /* counted, now being claimed (a stuck entry's retry never was) */
    if (rn->counting)
        rn->incoming_dirty = true; /* the count on the pool may not have seen it go */
    claim_ctx *cx = xcalloc(1, sizeof *cx);
    cx->rn = rn;
    cx->entry = xstrdup(entry);
    cx->now = rn_now(rn);
    id_new(cx->now, cx->id);
    rn->claims_out++;
    rn->be.spool->claim(rn->be.ud, entry, cx->id, claim_done, cx);
}

/* The stuck entries whose retry time has come, a bounded number per turn; true when there
 * may be more. */
static bool claim_due(runner *rn, size_t room)
{
    if (room > RUNNER_STUCK_RETRIES_PER_TURN)
        room = RUNNER_STUCK_RETRIES_PER_TURN;
    char **due = xcalloc(room, sizeof *due);
    size_t nd = spool_stuck_due(rn->stuck, rn_mono(rn), room, due);
    for (size_t i = 0; i < nd && !rn->stopping; i++)
        claim_one(rn, due[i]);
    spool_names_free(due, nd);
    return nd == room;
}

void runner_incoming_changed(runner *rn)
{
    rn->incoming_dirty = true;
    runner_claim_soon(rn);
}

static void count_incoming(runner *rn);

static void count_done(void *cookie, int rc, size_t n)
{
    runner *rn = cookie;
    rn->counting = false;
    if (rn->freed) {
        if (--rn->held == 0)
            rn_free_now(rn);
        return;
    }
    if (rc < 0) {
        if (rc != -ECANCELED && !rn->stopping) /* ECANCELED: the backend is stopping */
            log_error("cannot count the entries in %s: %s", rn->incoming_dir, strerror(-rc));
        rn->incoming_dirty = true; /* the rescan tries again */
        return;
    }
    rn->incoming = n;
    /* Changed while it was counted (or a claim started, which the count may have seen or
     * not): once more, so that the figure settles. */
    if (rn->incoming_dirty && !rn->stopping)
        count_incoming(rn);
}

/* Counts incoming/ when it changed, paused or not, so that the backlog shows. The directory
 * read runs on the pool (the backend's count): a backlog of any size costs the loop nothing
 * but the copy of the stuck names. One count at a time, and not more often than
 * RUNNER_COUNT_MIN_MS: a burst of events comes back for one count at the end of it (the
 * claim timer, armed without claim_pending so a claim_soon still claims at once). */
static void count_incoming(runner *rn)
{
    if (!rn->incoming_dirty || rn->counting || !rn->be.spool->count)
        return;
    int64_t now = rn_mono(rn);
    if (rn->incoming_counted_at > 0 && now - rn->incoming_counted_at < RUNNER_COUNT_MIN_MS) {
        if (!rn->claim_pending)
            rn->be.clock->timer_arm(rn->be.ud, rn->claim_timer,
                                    RUNNER_COUNT_MIN_MS - (now - rn->incoming_counted_at));
        return;
    }
    rn->incoming_dirty = false;
    rn->incoming_counted_at = now > 0 ? now : 1;
    rn->counting = true;
    rn->be.spool->count(rn->be.ud, spool_stuck_dup(rn->stuck), count_done, rn);
}

void rn_claim_run(void *arg)
{
    runner *rn = arg;
    rn->claim_pending = false;
    if (rn->stopping)
        return;
    count_incoming(rn);
    if (rn->paused || rn->n_active + rn->claims_out >= rn->max_active)
        return;
    size_t want = rn->max_active - rn->n_active - rn->claims_out;
    if (want > RUNNER_CLAIMS_PER_TURN)
        want = RUNNER_CLAIMS_PER_TURN;
    char **names = NULL;
    size_t n = 0;
    /* The scan leaves the stuck entries out (a hash lookup each, no system call), so any
     * number of them cannot starve the others. */
    int rc = rn->be.spool->scan(rn->be.ud, want, spool_stuck_skip, rn->stuck, &names, &n);
    if (rc < 0) {
        log_error("cannot scan %s: %s", rn->incoming_dir, strerror(-rc));
        return;
    }
    size_t tried = 0;
    for (size_t i = 0; i < n && !rn->stopping; i++) {
        tried++;
        claim_one(rn, names[i]);
    }
    spool_names_free(names, n);
    bool more_due = false;
    /* A due entry stays due until its claim ends, so none is retried while claims are out
     * (one could be a retry of the same entry): the claim that ends asks again. */
    if (tried < want && rn->claims_out == 0 && !rn->stopping && spool_stuck_count(rn->stuck) > 0)
        more_due = claim_due(rn, want - tried);
    runner_update_status(rn);
    /* A full scan's worth of entries (or of due retries) means more may wait: come back
     * after the loop has polled for I/O (the claim timer is 1 ms, never 0, so it cannot
     * re-run in the same pass). Each turn makes progress: an entry that failed is stuck
     * now and left out of the next scan, so newly found stuck entries cannot delay a good
     * one behind them by more than a few turns. */
    if (n == want || more_due)
        runner_claim_soon(rn);
}
