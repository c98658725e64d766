/* runner: claims entries from the spool and runs each job's state machine. The machine (job.h)
 * decides; the runner performs its actions — persist, send, wait, validate, finish — and
 * reports every change through hooks. It does no I/O itself: the record store, the HTTP
 * client, the spool, the validation pool and the clock are backends chosen at runner_new
 * (the daemon's are in src/batchd/backend.c, the unit test's in tests/unit/test_runner.c).
 * Everything runs on one thread (the daemon's loop): a backend calls the runner's completion
 * callbacks from that thread, later or (for the spool) from inside the call. */
#ifndef BATCHD_RUNNER_H
#define BATCHD_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batchd/export.h"
#include "batchd/job.h"

typedef struct runner runner;

/* A completion: cookie is what the runner passed in, rc 0 or -errno. */
typedef void (*runner_done_fn)(void *cookie, int rc);

/* The durable job records. write takes what it needs from j before it returns (j changes
 * afterwards) and calls done(cookie, rc) later, or from inside the call once the backend is
 * stopping; the runner has at most one write out per job,
 * so a later write can never be overtaken by an earlier one. urgent: the job waits for this
 * write (the intent of a side-effecting request, or a finished state before the move), so
 * it should not queue behind writes that nothing waits for (batchd's journal gives both one
 * path, since an append costs one fdatasync however many records it holds). */
typedef struct runner_store_ops {
    void (*write)(void *ud, const job *j, bool urgent, runner_done_fn done, void *cookie);
    /* Stopping: the newest record, now, on the caller's thread. */
    int (*write_now)(void *ud, const job *j);
    /* As store_load_all (store.h): each record to each(), an unreadable one to bad(). */
    int (*load)(void *ud, void (*each)(void *cud, job *j),
                void (*bad)(void *cud, const char *file, const char *reason), void *cud);
    int (*remove)(void *ud, const char *job_id);
} runner_store_ops;

/* What the machine's request becomes on the wire: the backend adds the API root, the token
 * and the headers. */
typedef struct runner_request {
    job_op op;
    const job_request *rq;   /* method, path (or the whole upload URL), body */
    const char *upload_path; /* JOB_OP_UPLOAD: the file to stream */
    const char *upload_content_type;
    int64_t upload_size;       /* validated size, 0 unknown */
    const char *upload_sha256; /* hex, or NULL in records written before digests */
} runner_request;

/* A finished exchange: the reply as the machine reads it, and the token generation the
 * request was sent with (a 401 to an older token holds nothing). */
typedef void (*runner_http_done_fn)(void *cookie, const job_reply *reply, unsigned token_gen);
typedef void (*runner_progress_fn)(void *cookie, int64_t bytes_sent);

typedef struct runner_http_ops {
    /* Returns a handle, or NULL when the request cannot be sent at all (permanent). done is
     * called once, later, unless cancel comes first. */
    void *(*send)(void *ud, const runner_request *req, runner_http_done_fn done,
                  runner_progress_fn progress, void *cookie);
    void (*cancel)(void *ud, void *handle);
} runner_http_ops;

/* An export's exchange (runner_export.c): an API call (method and path relative to the API
 * root, sent with the token) or, for EXPORT_OP_DOWNLOAD, a GET of the presigned URL in path
 * without any Authorization header into done/<job_dir>/exports/EXPORT_TMP_NAME. */
typedef struct runner_export_request {
    export_op op;
    const char *method;
    const char *path;
    const char *job_dir; /* the job's directory name in done/ */
} runner_export_request;

/* The reply as export_on_reply reads it. A 2xx download has been made durable and checked by
 * the backend before this (fsync, zipcheck, a new name by export_dest_name, rename, directory
 * fsync): reply->path or reply->zip_error says how that went. */
typedef void (*runner_export_done_fn)(void *cookie, const export_reply *reply, unsigned token_gen);

typedef struct runner_export_ops {
    /* Returns a handle, or NULL when it cannot be sent at all. done is called once, later,
     * unless cancel comes first. */
    void *(*send)(void *ud, const runner_export_request *req, runner_export_done_fn done,
                  void *cookie);
    void (*cancel)(void *ud, void *handle);
    /* Off the loop, no completion: removes the ZIPs of done/<job_dir>/exports/ beyond the
     * newest keep (export_prune; protect, a base name, is never removed). */
    void (*prune)(void *ud, const char *job_dir, unsigned keep, const char *protect);
    /* Recovery, at start, for an export that had not ended: removes a leftover
     * EXPORT_TMP_NAME now (before any download), and returns the ZIP this export already put
     * in place, if any ("exports/NAME.zip", malloc'd; else NULL): the newest ZIP of
     * done/<job_dir>/exports/ written at or after since_ms (the export's request). */
    char *(*clean)(void *ud, const char *job_dir, int64_t since_ms);
} runner_export_ops;

/* Result of a claim: the same kinds as spool_claim (spool.h). */
typedef enum runner_claim_kind {
    RUNNER_CLAIMED,
    RUNNER_REJECTED,
    RUNNER_GONE,
} runner_claim_kind;

typedef struct runner_claim {
    runner_claim_kind kind;
    const char *job_dir; /* the job's directory path (its base name is used) */
    const char *job_name;
    const char *job_id; /* REJECTED: the id written in error.json, or NULL */
    const char *code;   /* REJECTED */
    const char *reason; /* REJECTED */
    /* More claims of the same batch are handed over right after this one (in the same call
     * of the loop): the runner announces each claimed job at once and leaves its first steps
     * (its record, its validation) until the last, so that none waits for the others'. */
    bool more_follow;
} runner_claim;

typedef void (*runner_claim_done_fn)(void *cookie, int rc, const runner_claim *c);
typedef void (*runner_finish_done_fn)(void *cookie, int rc, const char *final_dir);
typedef void (*runner_count_done_fn)(void *cookie, int rc, size_t n);
typedef struct spool_stuck spool_stuck; /* spool.h (C11 allows the repeated typedef) */

typedef struct runner_spool_ops {
    /* Up to max names from incoming/, without those skip() says to leave out. */
    int (*scan)(void *ud, size_t max, bool (*skip)(void *sud, const char *name), void *sud,
                char ***names, size_t *n);
    void (*claim)(void *ud, const char *entry, const char *job_id, runner_claim_done_fn done,
                  void *cookie);
    /* Moves active/<dir> to done/ (ok) or failed/ with file_name holding body. */
    void (*finish)(void *ud, const char *dir, bool ok, const char *file_name, const char *body,
                   runner_finish_done_fn done, void *cookie);
    int (*list_active)(void *ud, char ***names, size_t *n);
    bool (*active_exists)(void *ud, const char *dir);
    /* failed/<name> back to active/; *active_name malloc'd. Synchronous: an operator waits. */
    int (*reactivate)(void *ud, const char *failed_name, char **active_name);
    /* Counts, off the loop (a directory read of a large backlog must not hold it up), the
     * entries a scan could list now: not the dotfiles, nor the names in skip (which the op
     * takes over: spool_stuck_free), nor those being claimed. done comes on the loop, later
     * or from inside the call. May be NULL: the backlog is then reported as 0. */
    void (*count)(void *ud, spool_stuck *skip, runner_count_done_fn done, void *cookie);
} runner_spool_ops;

/* A finished validation: v NULL when it was cancelled or could not run. */
typedef void (*runner_validated_fn)(void *cookie, const job_validation *v);

typedef struct runner_validate_ops {
    /* Validates active/<dir> off the caller's thread. target_schema: for an append job by
     * name, the target's dataset.schema (borrowed: copy it), else NULL (intake_options).
     * Returns 0, or -errno when it cannot start (done is then not called). */
    int (*start)(void *ud, const job *j, const cJSON *target_schema, runner_validated_fn done,
                 void *cookie, void **handle);
    /* Asks a running validation to stop early; done still comes. */
    void (*cancel)(void *ud, void *handle);
} runner_validate_ops;

typedef void (*runner_timer_fn)(void *arg);

/* Time and timers. The runner has one timer per job (its next step) and one for claims, which
 * it arms for 1 ms to claim "soon": after the loop has polled for I/O, never in the same pass. */
typedef struct runner_clock_ops {
    int64_t (*now_ms)(void *ud);  /* wall clock, epoch ms */
    int64_t (*mono_ms)(void *ud); /* monotonic ms */
    void *(*timer_new)(void *ud, runner_timer_fn fn, void *arg);
    void (*timer_arm)(void *ud, void *timer, int64_t delay_ms); /* one-shot, re-arms */
    void (*timer_stop)(void *ud, void *timer);
    void (*timer_free)(void *ud, void *timer); /* fn is never called after this */
} runner_clock_ops;

/* One exchange with the API or an upload URL that ended with a reply or a transport error
 * (a cancelled one is not reported). */
typedef struct runner_request_info {
    job_op op;                /* the endpoint: job_op_name(op), never an id or a URL */
    long status;              /* HTTP status; 0 when no response came */
    int64_t latency_ms;       /* monotonic, from the send to the end */
    const char *retry_reason; /* the step is retried later, and why (static); NULL: not */
    int64_t upload_bytes;     /* JOB_OP_UPLOAD: bytes that left for the upload URL */
} runner_request_info;

/* What the runner tells its owner. Any may be NULL. */
typedef struct runner_hooks {
    void *ud;
    /* A job changed (as_state NULL) or passed through state as_state. */
    void (*job_changed)(void *ud, const job *j, const char *as_state);
    /* Counts for the status line. */
    void (*status)(void *ud, size_t active, size_t done, size_t failed);
    /* Stopping: a request in flight ended (the owner checks whether any is left). */
    void (*request_ended)(void *ud);
    /* The API answered 401 to a request sent with token generation gen. */
    void (*token_rejected)(void *ud, unsigned gen);
    /* The job finished and its files are in done/ or failed/ (j->dir names them there): once
     * per finish, before its record says so durably (the owner covers that window itself,
     * see src/batchd/hooks.c). */
    void (*job_finished)(void *ud, const job *j);
    /* A request ended (for the metrics), after the job took in its reply. */
    void (*request_done)(void *ud, const job *j, const runner_request_info *info);
    /* The job's export downloaded a ZIP: j->export->path (relative to done/<j->dir>). */
    void (*export_done)(void *ud, const job *j);
    /* The job's export failed: j->export->error says why. */
    void (*export_failed)(void *ud, const job *j);
    /* An export exchange ended (for the metrics): its op, HTTP status (0: none) and
     * monotonic latency. */
    void (*export_request_done)(void *ud, export_op op, long status, int64_t latency_ms);
} runner_hooks;

typedef struct runner_backend {
    const runner_store_ops *store;
    const runner_http_ops *http;
    const runner_spool_ops *spool;
    const runner_validate_ops *validate;
    const runner_clock_ops *clock;
    const runner_export_ops *exports; /* NULL: no exports */
    void *ud;                         /* passed to every op but the exports' */
    void *export_ud;                  /* passed to the exports' ops */
} runner_backend;

typedef struct runner_options {
    const char *state_dir;    /* for messages: where the records are */
    const char *incoming_dir; /* for messages */
    uint64_t seed;            /* for the jitter */
} runner_options;

/* ---- appends to one dataset: one at a time, in claim order (runner_append.c) ----
 * Each job of the table, in claim order, as the decision sees it. */
typedef enum runner_append_kind {
    RUNNER_APPEND_NONE = 0, /* finished, or uploads into no dataset one could append to */
    RUNNER_APPEND_UNKNOWN,  /* not yet validated: it may append to any dataset */
    RUNNER_APPEND_WAITING,  /* appends to dataset_id and waits for its turn */
    RUNNER_APPEND_ACTIVE,   /* its turn came, or it runs (uploads) on dataset_id */
} runner_append_kind;

typedef struct runner_append_slot {
    runner_append_kind kind;
    const char *dataset_id;
} runner_append_slot;

/* Pure: the index of the job that keeps slots[me] (an append to slots[me].dataset_id) from
 * starting, or -1 when its turn has come. A job active on the dataset blocks it wherever it
 * stands; an earlier one blocks it when it waits for the same dataset or is not validated
 * yet (it may be an append to it: claim order holds). Of those, the nearest earlier one. */
long runner_append_blocker(const runner_append_slot *slots, size_t n, size_t me);

runner *runner_new(const runner_backend *be, const runner_hooks *hooks, const runner_options *o);
/* Tunables that a reload may change. */
void runner_configure(runner *rn, const job_params *p, size_t max_active);
/* Exports (runner_export.c): the machine's tunables and [export]. interval_ms 0: no scheduled
 * exports; window_ms: a ready job is exported on the schedule while it finished within this
 * long; keep: ZIPs kept per job (0: all). */
typedef struct runner_export_config {
    export_params params;
    int64_t interval_ms;
    int64_t window_ms;
    unsigned keep;
} runner_export_config;
void runner_configure_export(runner *rn, const runner_export_config *c);
/* io.batchd.Export: a finished ready job's export starts (or a finished one starts over; one
 * in progress goes on). 0; -EINVAL when the job is not ready in done/; -ENOTSUP without an
 * export backend; -ESHUTDOWN when stopping. */
int runner_export(runner *rn, const job *j);

/* Loads the records and the directories of active/; -errno when the records cannot be read. */
int runner_recover(runner *rn);
void runner_claim_soon(runner *rn);
/* incoming/ may have changed (an event, the rescan): the next claim turn counts it again,
 * at most every RUNNER_COUNT_MIN_MS, and claims. */
void runner_incoming_changed(runner *rn);
void runner_drive_all(runner *rn);
void runner_update_status(runner *rn);
/* Paused: no claims and no new requests; the waits of a pause do not count (import_timeout,
 * batch_timeout). */
void runner_set_paused(runner *rn, bool paused);

/* The job table, in claim order. */
size_t runner_count(const runner *rn);
const job *runner_job_at(const runner *rn, size_t i);
/* A job reference (batchctl(1), JOB): an exact id, else an exact name or directory name (one
 * unfinished job wins over finished namesakes), else a unique id prefix of at least
 * RUNNER_ID_PREFIX_MIN characters. NULL when none matches; *ambiguous (and a non-NULL match)
 * when several do, never to be used as the answer. */
#define RUNNER_ID_PREFIX_MIN 4
const job *runner_find(const runner *rn, const char *key, bool *ambiguous);
/* The ids of the jobs an ambiguous key matches (those of the name when it names a job, else
 * those of the prefix), at most max of them into ids (borrowed); returns how many match. */
size_t runner_candidates(const runner *rn, const char *key, const char **ids, size_t max);
size_t runner_stuck_count(const runner *rn);
/* The backlog as of the last count (kept by the claim turns, not read from the disk here):
 * entries in incoming/ not yet claimed (dotfiles, stuck entries and claims in progress not
 * counted), and how many of those would be claimed now but for max_active or a pause. */
size_t runner_incoming(const runner *rn);
size_t runner_waiting_for_slot(const runner *rn);
size_t runner_bad_records(const runner *rn);
/* -EINVAL when the job's state does not allow it; retry: -errno from the spool. Retry on a
 * running job waiting for its retry time after an error makes the attempt now; on any other
 * running job it is -EBUSY. */
int runner_cancel(runner *rn, const job *j);
int runner_retry(runner *rn, const job *j);
/* Adds a note to a known job's history and writes its record: -ENOENT when the job is not
 * in the table (evicted or unknown), -ESHUTDOWN when stopping. */
int runner_note(runner *rn, const char *job_id, const char *note);

/* Stopping: cancels every request but creates, setups, syncs and export POSTs and DELETEs;
 * returns those left in flight. */
size_t runner_begin_drain(runner *rn);
size_t runner_in_flight(const runner *rn);
/* Cancels everything and writes every record that is not durable yet. */
void runner_shutdown(runner *rn);
/* Frees the runner; jobs whose write or validation is still out, and claims still out, are
 * dropped when they end. */
void runner_free(runner *rn);

#endif
