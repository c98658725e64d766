/* runner's private state, shared by its files: runner.c (the public face), runner_job.c
 * (shared upkeep), runner_drive.c (one job's steps), runner_claim.c
 * and runner_recover.c. */
#ifndef BATCHD_RUNNER_INTERNAL_H
#define BATCHD_RUNNER_INTERNAL_H

#include "batchd/log.h"
#include "batchd/runner.h"
#include "batchd/spool.h"

/* Validations running at once: each may read gigabytes, and the rest of the pool stays free
 * (main.c: 12 threads; the backend's lanes take one each). Four, not two: a burst of small
 * jobs then does not queue behind the loop's turn between one validation and the next
 * (bench/pipeline, 200 jobs: validating 160-260 ms on average with two, 80-120 with four;
 * with eight the wait moves on to the uploads and the total stays the same). */
#define RUNNER_VALIDATIONS_MAX 4
/* A record change that no step waits for (a poll's status, a state entered without a side-
 * effecting request) is written at most this long after it was made, together with whatever
 * changes meanwhile; a step that must wait for the disk writes it at once. */
#define RUNNER_LAZY_WRITE_MS 1000
/* Entries claimed per turn: enough that a burst of a hundred drops goes out as one claim
 * batch (one round of fsyncs: bench/pickup), few enough that 10,000 dropped at once never
 * stall the loop (a turn's claims then cost it some 15-20 ms: a job each, its first record,
 * its log line and its Watch event). */
#define RUNNER_CLAIMS_PER_TURN 128
/* A failed durable write (disk full?) is retried after this long; nothing is sent meanwhile. */
#define RUNNER_PERSIST_RETRY_MS 5000
/* Entries that fail to claim (stuck) are remembered, without limit, and tried again after
 * CLAIM_RETRY_MS; each is logged when first found and then at most every STUCK_RELOG_MS.
 * At most STUCK_RETRIES_PER_TURN of them are retried per turn. */
#define RUNNER_CLAIM_RETRY_MS         60000
#define RUNNER_STUCK_RELOG_MS         (3600LL * 1000)
#define RUNNER_STUCK_RETRIES_PER_TURN 64
/* incoming/ is counted again (one directory read) at most this often, however many events
 * come: the backlog count lags by at most this much plus the rescan. */
#define RUNNER_COUNT_MIN_MS 100
/* Records of jobs finished longer ago than this are removed at start. */
#define RUNNER_RECORD_KEEP_MS (30LL * 86400 * 1000)
/* Finished jobs kept in memory (and so in ListJobs); older ones live on disk only. */
#define RUNNER_FINISHED_KEPT 1000
/* Upload progress is published at most this often per job. */
#define RUNNER_PROGRESS_PUBLISH_MS 250

/* The job's record write, one at a time per job, so a later write can never be overtaken by
 * an earlier one. A change is marked (rjob.dirty) and written when the step that made it
 * ends (rj_flush), so a reply and the intent of the request that follows it share a write.
 * The job does not wait for a write (the disk may lag behind it: every record it can hold
 * resumes correctly) except before a side-effecting send (send_after_write: write-before-
 * send) and before its move to done/ or failed/. Transitions:
 *   IDLE or FAILED --persist--> OUT
 *   OUT --the record changes--> OUT_CHANGED
 *   OUT --write ok--> IDLE (then the send that waited for it, or the next drive)
 *   OUT --write failed--> FAILED (retried after RUNNER_PERSIST_RETRY_MS; the intent that
 *                         waited is withdrawn, and no step is taken until a write succeeds)
 *   OUT_CHANGED --write ends--> OUT (the newest record is written again)
 *   stopping: any --write ends--> IDLE, after writing the newest record now when needed. */
typedef enum rj_write {
    RJ_WRITE_IDLE = 0,
    RJ_WRITE_OUT,
    RJ_WRITE_OUT_CHANGED,
    RJ_WRITE_FAILED,
} rj_write;

/* What an append job's manifest said, and its place in the line (runner_append.c). Kept
 * on the loop while the job is unfinished; nothing of it is durable (a restart validates
 * again). */
typedef struct rj_append {
    bool known;        /* a validation read its manifest */
    char *dataset_id;  /* the dataset it appends to; NULL: it does not append */
    char *batch_id;    /* the batch it syncs */
    char *target_id;   /* append_to NAME: the target job, */
    char *target_name; /* its name */
    cJSON *schema;     /* and its dataset.schema, for the record check */
    bool admitted;     /* its turn came: it may go on (others wait for it) */
    bool waiting;      /* held in queued for the one ahead of it */
    char *waiting_for; /* the id of the job its last note named */
} rj_append;

typedef struct rjob {
    job *j;
    runner *rn;
    void *timer;
    void *xfer; /* the request in flight, or NULL */
    job_op xfer_op;
    int64_t xfer_started_ms; /* monotonic */
    int64_t xfer_bytes;      /* an upload's progress */
    void *vhandle;           /* the validation running, or NULL */
    bool validating;
    bool waiting_validation; /* for a free validation slot */
    bool finishing;          /* its directory is being moved */
    bool finished;           /* its directory is in done/ or failed/ */
    bool released;           /* the runner is gone: free once no backend holds it */
    rj_write write;
    bool dirty; /* changed since the last write was handed out: rj_flush writes it */
    bool lazy;  /* a change no step waits for, left to the lazy timer (RUNNER_LAZY_WRITE_MS) */
    uint64_t written_digest; /* job_record_digest of the last record handed to a write */
    /* A side-effecting call waiting for its intent to be durable, and the pending_op to
     * restore if it is not sent after all. */
    job_op send_after_write;
    job_op saved_pending;
    int64_t last_publish_ms;
    rj_append append;
    /* Its export (runner_export.c): the exchange in flight, and a POST whose intent is being
     * written. */
    void *exfer;
    export_op exfer_op;
    int64_t exfer_started_ms; /* monotonic */
    bool ex_send_after_write;
    bool ex_adopted; /* recovered with its ZIP already in place: completed at the first step */
} rjob;

struct runner {
    runner_backend be;
    runner_hooks hooks;
    char *state_dir;
    char *incoming_dir;
    job_params params;
    size_t max_active;
    uint64_t rng;
    rjob **jobs; /* every known job, in claim order */
    size_t n_jobs, cap_jobs;
    size_t n_active; /* jobs not finished */
    size_t validations;
    size_t claims_out; /* claims handed to the spool and not ended */
    /* Jobs claimed in a batch whose last claim has not been handed over yet (more_follow in
     * runner.h): their first steps wait for it. */
    rjob **claimed_later;
    size_t n_claimed_later, cap_claimed_later;
    bool paused;
    int64_t paused_at;
    bool stopping;
    bool claim_pending;
    bool driving_all; /* walking jobs: no eviction meanwhile */
    bool freed;       /* runner_free came while jobs were still held */
    size_t held;      /* released jobs, claims and a count a backend still holds */
    size_t bad_records;
    size_t pruned_records;
    void *claim_timer;
    void *lazy_timer; /* writes the changes no step waits for (rj_flush) */
    bool lazy_armed;
    spool_stuck *stuck;  /* entries of incoming/ that could not be claimed; NULL until one */
    size_t incoming;     /* unclaimed entries in incoming/ as of the last count, less claims */
    bool incoming_dirty; /* incoming/ changed since the last count */
    int64_t incoming_counted_at; /* monotonic ms of the last count */
    bool counting;               /* a count is on the pool */
    runner_export_config export_cfg;
    void *export_timer; /* [export] interval; NULL until configured */
    /* A finished job's step (its export), set by runner_configure_export; NULL: none. */
    void (*finished_step)(rjob *r);
};

/* runner_job.c */
uint64_t rn_random(runner *rn);
int64_t rn_now(runner *rn);
int64_t rn_mono(runner *rn);
log_job_fields rj_fields(const job *j);
const char *rj_last_note(const job *j);
void rj_publish(rjob *r);
void rj_arm(rjob *r, int64_t delay_ms);
bool rj_busy(const rjob *r);
/* The states that wait for the API with a timeout (import_timeout, batch_timeout). */
bool rj_waits_with_timeout(job_state s);
void rj_free(rjob *r);
void rn_free_now(runner *rn);
void rj_maybe_release(rjob *r);
rjob *rj_of(const runner *rn, const job *j);
void rn_evict_finished(runner *rn);

/* runner_drive.c */
rjob *rj_add(runner *rn, job *j, bool finished);
void rj_persist(rjob *r);
void rj_changed(rjob *r, job_state before);
void rj_flush(rjob *r);
void rn_lazy_run(void *arg);
void rj_drive(rjob *r);
/* Logs a reply to one of r's requests (what: the request's name; answered: a status came
 * back; note: what it did to the job, or NULL). The transport's text is cleaned of secret. */
void rj_log_reply(const rjob *r, const char *what, bool answered, long status,
                  const char *error_text, const char *secret, const char *note);

/* runner_append.c */
/* A finished validation of r: true when it was taken here (an append job: resolved, held
 * for its turn, validated again with the target's schema, or given to the machine with the
 * target's ids); false for the caller to give it to the machine (job_on_validated). */
bool rj_append_take(rjob *r, const job_validation *v, int64_t now);
/* r waits in queued for the job ahead of it: no step. */
bool rj_append_holds(const rjob *r);
/* Looks again at a held job: 0 nothing changed, 1 its note changed (persist it), 2 its turn
 * came (drive it). */
int rj_append_wake(rjob *r, int64_t now);
void rj_append_clear(rjob *r);
/* What a finished job keeps of its resolved spec (owned; spec is consumed): a ready job's
 * dataset.schema, for appends to it; NULL otherwise. */
cJSON *rn_append_kept_spec(cJSON *spec, bool ready);
/* runner_export.c */
void rx_recover(rjob *r);
size_t rx_cancel_all(runner *rn);
/* Stopping: cancels the export reads; returns the exchanges left to end (POST, DELETE). */
size_t rx_drain(runner *rn);
size_t rx_in_flight(const runner *rn);
void rx_free(runner *rn);

/* runner_claim.c */
void rn_claim_run(void *arg);

#endif
