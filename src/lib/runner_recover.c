/* runner_recover: the job table at start, from the records and the directories of active/. */
#include "runner_internal.h"

#include "batchd/util.h"

#include <stdlib.h>
#include <string.h>

static void recover_finished(runner *rn, job *j, bool present)
{
    int64_t now = rn_now(rn);
    if (j->moved && j->finished_at > 0 && now - j->finished_at > RUNNER_RECORD_KEEP_MS &&
        !export_unsettled(j->export)) {
        /* Long finished: its outcome lives in done/ or failed/; the record would only make
         * every start slower. Not while an export has work left (its temporary file, the
         * API's export job): that record resumes it. */
        if (rn->be.store->remove(rn->be.ud, j->id) == 0)
            rn->pruned_records++;
        job_free(j);
        return;
    }
    /* Moved before: finished, even if a newer job now uses the same name in active/.
     * Not moved: it finished just before the stop; finish the move now. */
    rjob *r = rj_add(rn, j, j->moved || !present);
    if (r->finished)
        rx_recover(r);
    /* Keep memory bounded while thousands of records load. */
    if (rn->n_jobs > RUNNER_FINISHED_KEPT + RUNNER_FINISHED_KEPT / 4)
        rn_evict_finished(rn);
}

static void recover_one(void *ud, job *j)
{
    runner *rn = ud;
    bool present = rn->be.spool->active_exists(rn->be.ud, j->dir);
    if (job_state_terminal(j->state)) {
        recover_finished(rn, j, present);
        return;
    }
    log_job_fields f = rj_fields(j);
    if (!present) {
        log_job(LOG_LVL_ERR, &f,
                "active/%s is gone (removed by hand?); the job cannot continue and is marked "
                "failed; its remote resources are named in its record",
                j->dir);
        job_fail(j, rn_now(rn), "invalid_job", "the job directory active/%s disappeared", j->dir);
        j->moved = true;
        rj_persist(rj_add(rn, j, true));
        return;
    }
    job_recovered(j, rn_now(rn));
    log_job(LOG_LVL_INFO, &f, "recovered in state %s", job_state_name(j->state));
    rj_persist(rj_add(rn, j, false));
}

static void recover_bad(void *ud, const char *file, const char *reason)
{
    runner *rn = ud;
    rn->bad_records++;
    log_error("cannot read job record %s: %s; it is left in place for you to inspect", file,
              reason);
}

static bool known_active(const runner *rn, const char *dir)
{
    for (size_t k = 0; k < rn->n_jobs; k++)
        if (!rn->jobs[k]->finished && strcmp(rn->jobs[k]->j->dir, dir) == 0)
            return true;
    return false;
}

/* A directory in active/ without a live record was claimed just before a crash. */
static void recover_orphan(runner *rn, const char *name)
{
    if (rn->bad_records) {
        /* It may be the job of an unreadable record, with a dataset or batch already
         * made: starting it over could create them twice. */
        char *esc = spool_name_escape(name);
        log_error("active/%s has no readable record and is not resumed, since it may "
                  "belong to one of the %zu unreadable records; inspect them, then "
                  "move the directory back into incoming/ to start it over",
                  esc, rn->bad_records);
        free(esc);
        return;
    }
    char id[27];
    int64_t now = rn_now(rn);
    id_new(now, id);
    job *j = job_new(id, name, name, now);
    job_note(j, now, "found in active/ without a record (claimed just before a crash)");
    rj_persist(rj_add(rn, j, false));
    log_job_fields f = rj_fields(j);
    log_job(LOG_LVL_INFO, &f, "recovered from active/%s without a record", name);
}

int runner_recover(runner *rn)
{
    int n = rn->be.store->load(rn->be.ud, recover_one, recover_bad, rn);
    if (n < 0) {
        /* Without the records, every job in active/ would start over and create its dataset
         * and batch a second time: refuse to run instead. */
        log_error("cannot read the job records in %s/jobs: %s; fix its permissions (it must "
                  "belong to batchd's user), then start again",
                  rn->state_dir, strerror(-n));
        return n;
    }
    char **names = NULL;
    size_t count = 0;
    if (rn->be.spool->list_active(rn->be.ud, &names, &count) == 0) {
        for (size_t i = 0; i < count; i++)
            if (!known_active(rn, names[i]))
                recover_orphan(rn, names[i]);
        spool_names_free(names, count);
    }
    rn_evict_finished(rn);
    if (rn->pruned_records)
        log_notice("removed %zu job record(s) of jobs finished more than %d days ago (their "
                   "results stay in done/ and failed/)",
                   rn->pruned_records, (int)(RUNNER_RECORD_KEEP_MS / 86400000));
    log_notice("recovered %zu unfinished job(s), %zu known in all", rn->n_active, rn->n_jobs);
    return 0;
}
