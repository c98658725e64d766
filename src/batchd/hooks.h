/* hooks: runs [hooks] on_ready and on_failed for finished jobs, and on_export for their exports
 * (batchd.conf(5), HOOKS): the durable journal of runs in <state>/hooks/, the processes (uv_spawn,
 * no shell, a fixed environment without the token), their output to the log, and the outcomes. The
 * decisions (slots, retries, timeouts) are hookq's (batchd/hookq.h). */
#ifndef BATCHD_HOOKS_H
#define BATCHD_HOOKS_H

#include <stdint.h>

#include <uv.h>

#include "batchd/config.h"
#include "batchd/hookq.h"
#include "batchd/job.h"

typedef struct hooks hooks;

typedef enum hooks_kind {
    HOOKS_ON_READY = 0,
    HOOKS_ON_FAILED = 1,
    HOOKS_ON_EXPORT = 2, /* after each downloaded export of a ready job */
    HOOKS_KINDS,
} hooks_kind;

typedef struct hooks_options {
    uv_loop_t *loop;
    const char *state_dir; /* the journal is state_dir/hooks/ */
    const char *done_dir;  /* the spool's done/ and failed/ */
    const char *failed_dir;
    void *ud;
    /* A line for the job's history (the owner adds it to the job's record). */
    void (*note)(void *ud, const char *job_id, const char *text);
    /* An attempt ended: hook "on_ready" or "on_failed", outcome as hookq_outcome_name(), for
     * the metrics (hook runs by hook and outcome). */
    void (*outcome)(void *ud, const char *hook, const char *outcome);
} hooks_options;

/* Creates the journal directory and lists its file names (for hooks_catch_up); the done and
 * failed directories are made absolute (hooks run in /). NULL after logging why when the
 * journal cannot be used. Blocking: call before the loop runs. */
hooks *hooks_new(const hooks_options *o, const config *c);
/* A reload: new paths and limits apply to attempts started from now on. */
void hooks_configure(hooks *h, const config *c);
/* The job's files are in done/ or failed/: queue its hook. */
void hooks_job_finished(hooks *h, const job *j);
/* The job's export downloaded a ZIP (j->export->path): queue on_export with the ZIP's
 * absolute path as argv[1]. One run per ZIP (the journal names it by the export's time). */
void hooks_export_done(hooks *h, const job *j);
/* At start, for every finished job known: queue its hook if it finished while the hook was
 * configured and the journal has no run for it (the daemon stopped between the finish and
 * the journal's first write). */
void hooks_catch_up(hooks *h, const job *j);
/* After the last hooks_catch_up: the journal's runs that have not ended (pending, or
 * started and interrupted by a crash or a stop) are read on the thread pool and queued. */
void hooks_caught_up(hooks *h);
/* Attempts that ended, by hook and outcome, since the start. */
uint64_t hooks_runs(const hooks *h, hooks_kind k, hookq_outcome o);
/* Stopping: nothing more starts; running hooks' process groups get SIGTERM, and SIGKILL
 * 2 s later if still there, and their output is no longer read (their journal entries stay
 * "started", so they run again on the next start). Frees h once the journal writes on the
 * pool, the processes and the handles are done. */
void hooks_stop(hooks *h);

#endif
