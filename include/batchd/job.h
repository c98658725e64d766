/* job: one job's durable record and its state machine, as pure code. The machine decides; it
 * does not do: given the record and an event (a validation result, an HTTP reply, the clock)
 * it updates the record and says what to do next (send this request, wait until then,
 * validate, finish). The daemon performs the actions. No I/O, no clock reads: time and
 * randomness come in as arguments, so every transition, retry and restart is unit-tested. */
#ifndef BATCHD_JOB_H
#define BATCHD_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "batchd/export.h"

typedef enum job_state {
    JOB_QUEUED = 0,
    JOB_VALIDATING,
    JOB_CREATING_DATASET,
    JOB_UPLOADING,
    JOB_IMPORTING,
    JOB_CREATING_BATCH,
    JOB_SETTING_UP,
    JOB_PROCESSING,
    JOB_SYNCING, /* an append job: the batch takes the new datapoints in */
    JOB_READY,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_STATE_COUNT
} job_state;

const char *job_state_name(job_state s);
/* -1 for an unknown name. */
int job_state_from_name(const char *name);
bool job_state_terminal(job_state s);

/* The API calls a job makes. */
typedef enum job_op {
    JOB_OP_NONE = 0,
    JOB_OP_CREATE_DATASET, /* POST /datasets */
    JOB_OP_UPLOAD_URL,     /* GET /datasets/{id}/upload-url/{filename} (creates an import) */
    JOB_OP_UPLOAD,         /* PUT <upload_url> (no Authorization) */
    JOB_OP_CHECK_UPLOAD,   /* GET /datasets/{id}/imports/{import_id}: did an unknown PUT land? */
    JOB_OP_GET_IMPORT,     /* GET /datasets/{id}/imports/{import_id}: poll */
    JOB_OP_FIND_BATCH,     /* GET /batches?workspace_id=: did an unknown create land? */
    JOB_OP_CREATE_BATCH,   /* POST /batches */
    JOB_OP_CHECK_SETUP,    /* GET /batches/{id}/status: did an unknown setup land? */
    JOB_OP_SETUP,          /* POST /batches/{id}/setup */
    JOB_OP_BATCH_STATUS,   /* GET /batches/{id}/status: poll */
    JOB_OP_GET_BATCH,      /* GET /batches/{id}: task counts once READY */
    JOB_OP_SYNC,           /* POST /batches/{id}/sync (an append job; safe to repeat) */
    JOB_OP_GET_SYNC,       /* GET /batches/{id}/syncs/{sync_id}: poll */
    JOB_OP_COUNT
} job_op;

const char *job_op_name(job_op op);
/* True for calls with a side effect at the API: their intent is made durable before they are
 * sent, and an unknown outcome is resolved before they are sent again. */
bool job_op_has_side_effect(job_op op);

/* The longest Retry-After honoured; a longer one (or an absurd one) is cut to this. */
#define JOB_RETRY_AFTER_MAX_MS (6LL * 3600 * 1000)

/* Tunables of the machine (from [poll] and [api] in the config). */
typedef struct job_params {
    int64_t poll_initial_ms;
    int64_t poll_max_ms;
    double poll_multiplier;
    int64_t import_timeout_ms;
    int64_t batch_timeout_ms;
    int64_t retry_base_ms; /* first retry delay bound (full jitter) */
    int64_t retry_cap_ms;  /* largest retry delay bound */
    int64_t url_margin_ms; /* an upload URL this close to expiry is not used */
    /* Failed attempts of one step (network errors, timeouts, 5xx, 408, 429, refused upload
     * URLs, unreadable replies, counted across the checks of unknown outcomes in between)
     * after which the job fails with what the last one saw. With the default base and cap
     * (1 s, 5 min) the waits add up to about half an hour, an hour at most. */
    int retry_attempts_max;
} job_params;

#define JOB_RETRY_ATTEMPTS_MAX 20

void job_params_default(job_params *p);

/* What an append job adds to: a batch that exists (a ready job's, or one given by its ids).
 * Its records go into the batch's dataset as one more import, then a sync turns them into
 * tasks. The dataset and batch ids are the job's own dataset_id and batch_id. */
typedef struct job_append {
    bool on;               /* the job appends (append_to in its job.json) */
    char *target_job_id;   /* the batchd job appended to; NULL when ids were given */
    char *target_job_name; /* its name, for result.json and show */
    char *sync_id;
    char *sync_status; /* queued, processing, complete, failed; NULL before the request */
    /* The sync's counts once complete; -1 unknown. */
    int64_t tasks_created;
    int64_t datapoints_processed;
    int64_t groups_created;
    int64_t groups_expanded;
    int sync_renewals;     /* syncs the API lost, renewed in a row */
    bool partial_accepted; /* a retry accepted the partial import: it is synced as it is */
} job_append;

typedef struct job {
    char id[32];
    char *name;
    char *dir;    /* the job's directory name under active/ */
    char *source; /* the entry name in incoming/ it was claimed from; NULL in older records */
    job_state state;
    job_state failed_stage; /* the state it failed in (for error.json "stage") */
    int64_t created_at;     /* claim time, epoch ms */
    int64_t updated_at;
    int64_t finished_at; /* 0 until ready/failed */
    bool moved;          /* its directory has been moved to done/ or failed/ */

    /* From validation. */
    cJSON *spec; /* the resolved job.json (workspace_id, dataset{}, batch{}) */
    char *upload_path;
    char *upload_name;
    char *upload_sha256; /* hex SHA-256 of the validated bytes; NULL in records before it */
    int64_t records;     /* -1 unknown */
    int64_t rejected_records;
    int64_t bytes_total;
    int64_t bytes_sent;

    /* Remote state. */
    char *workspace_id;
    char *dataset_id;
    char *import_id;
    char *upload_url; /* presigned: a bearer capability, never logged */
    char *upload_content_type;
    int64_t upload_expires_at; /* epoch ms, 0 unknown */
    bool uploaded;             /* the PUT is known to have landed */
    char *import_status;
    int64_t accepted_count;
    int64_t rejected_count;
    char *batch_id;
    char *batch_status;
    int64_t total_task_count;
    int64_t total_task_groups;
    bool setup_done;
    job_append append;

    /* Progress of the current step. */
    job_op pending_op;       /* durable intent: sent, outcome not yet recorded */
    int attempts;            /* failed attempts of the current call */
    int upload_refusals;     /* upload URLs refused (403) in a row */
    int polls;               /* polls made in the current waiting state */
    int64_t retry_at;        /* epoch ms of the next retry after an error; 0 = none */
    int64_t poll_at;         /* epoch ms of the next status poll; 0 = now */
    int64_t wait_started_at; /* start of the current import / batch wait, for the timeouts */
    char *last_error;
    int64_t api_requests;

    /* Outcome on failure (error.json). */
    char *error_code;
    char *error_message;
    cJSON *error_details; /* array: per-record errors, or 422 issues */
    long http_status;     /* 0 none */
    cJSON *api_error;     /* the API's error body, when there was one */

    cJSON *history; /* [{at, state, note}] */

    /* The newest export of a ready job's batch (batchd(8), EXPORTS); NULL when none. */
    export_job *export;
} job;

/* Forgets a sync (its id, status and counts), so that the next one is requested anew. */
void job_append_reset_sync(job_append *a);

/* A new job in state queued. */
job *job_new(const char *id, const char *name, const char *dir, int64_t now_ms);
void job_free(job *j);

/* Durable form (what the store writes) and back. job_from_json returns NULL and sets *err
 * (static text) when the record is unusable. */
cJSON *job_to_record(const job *j);
/* job_to_record printed (json_print), without copying the job's JSON members. malloc'd. */
char *job_record_print(const job *j);
job *job_from_record(const cJSON *rec, const char **err);

/* A digest of what must survive a crash: the durable record without the fields that only
 * count or time things (updated_at, api_requests, bytes_sent). A poll that learned nothing
 * new leaves it unchanged, so its reply needs no write. */
uint64_t job_record_digest(const job *j);

/* The public Job object of the control socket (batchd(8), CONTROL SOCKET; batchctl(1)), with
 * history and the first JOB_PUBLIC_RECORD_ERRORS record errors (record_errors) when asked. */
#define JOB_PUBLIC_RECORD_ERRORS 20
cJSON *job_to_public(const job *j, bool with_history);
/* done/NAME/result.json and failed/NAME/error.json (batchd(8), RESULTS). */
cJSON *job_result_json(const job *j);
cJSON *job_error_json(const job *j);
/* Records left out of the upload by invalid_records = skip; 0 otherwise. */
int64_t job_skipped_records(const job *j);

/* Appends to the history (bounded: the oldest entries beyond 200 are dropped). */
void job_note(job *j, int64_t now_ms, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Moves to a state and notes it. */
void job_set_state(job *j, job_state s, int64_t now_ms, const char *note);

/* ---- the machine ---- */

typedef enum job_action_kind {
    JOB_ACT_NONE = 0, /* nothing to do: a request is in flight, or the job is finished */
    JOB_ACT_VALIDATE, /* run local validation (intake) */
    JOB_ACT_SEND,     /* send request op (persist first when job_op_has_side_effect) */
    JOB_ACT_WAIT,     /* nothing until `until` (epoch ms), then call job_next again */
    JOB_ACT_FINISH,   /* write result.json / error.json and move the directory */
} job_action_kind;

typedef struct job_action {
    job_action_kind kind;
    job_op op;
    int64_t until;
} job_action;

/* What to do now. May change the record (state moves that need no call, timeouts); the
 * caller persists when *changed. rnd: a random 64-bit value (poll jitter). */
job_action job_next(job *j, const job_params *p, int64_t now_ms, uint64_t rnd, bool *changed);

/* Marks op as sent: for side-effecting calls this is the intent to persist before sending.
 * Returns the pending_op before, to restore with job_unsent when op is not sent after all (its
 * intent could not be made durable, or the job was paused or cancelled meanwhile). */
job_op job_mark_sent(job *j, job_op op, int64_t now_ms);
void job_unsent(job *j, job_op saved_pending);

/* A finished local validation. */
typedef struct job_validation {
    bool ok;
    const char *code; /* on failure: invalid_job / invalid_records */
    const char *message;
    const cJSON *errors; /* borrowed; copied */
    const cJSON *spec;   /* borrowed; copied */
    const char *upload_path;
    const char *upload_name;
    const char *sha256; /* hex SHA-256 of upload_path's validated bytes */
    int64_t records;
    int64_t rejected;
    int64_t bytes;
    /* An append job: the target, resolved by the caller (never by the machine: it knows no
     * other job). dataset_id and batch_id are required; the job's fields are NULL when ids
     * were given instead of a job. */
    bool append;
    const char *append_job_id;
    const char *append_job_name;
    const char *dataset_id;
    const char *batch_id;
} job_validation;

void job_on_validated(job *j, const job_validation *v, int64_t now_ms);

/* One HTTP exchange's outcome as the machine needs it. */
typedef enum job_net_error {
    JOB_NET_OK = 0,    /* an HTTP response arrived (any status) */
    JOB_NET_TIMEOUT,   /* no answer in time: outcome unknown */
    JOB_NET_FAILED,    /* connection failed or dropped: outcome unknown */
    JOB_NET_NOT_SENT,  /* certainly not sent (connect refused, local file error) */
    JOB_NET_TOO_LARGE, /* a response came (status set) but too large to read: outcome unknown */
    JOB_NET_FILE,      /* the file to upload could not be read: not sent */
    JOB_NET_CHANGED,   /* the file to upload is not what was validated: aborted before its end */
} job_net_error;

typedef struct job_reply {
    job_net_error net;
    long status;
    const char *body; /* may be NULL */
    size_t body_len;
    const char *retry_after; /* header value or NULL */
    const char *error_text;  /* transport error text */
    /* The API token, which the API or a proxy may echo: whatever the machine keeps from this
     * reply is cleaned by apitext with it. Borrowed, never stored. NULL: nothing to redact. */
    const char *secret;
} job_reply;

/* Records the outcome of op. rnd: random 64-bit value for the retry jitter. Returns true when
 * the API rejected the token (HTTP 401 to an API call): the job then stays where it is, its
 * call to be made again, and nothing about it failed; the caller holds every job until it
 * has a new token (batchd(8), JOB STATES). */
bool job_on_reply(job *j, job_op op, const job_reply *r, const job_params *p, int64_t now_ms,
                  uint64_t rnd);

/* Upload progress. */
void job_on_progress(job *j, int64_t bytes_sent);

/* Fails the job for a local reason (no API reply involved). */
void job_fail(job *j, int64_t now_ms, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Operator actions. job_cancel: any non-terminal job becomes cancelled (finish it next).
 * job_retry: a failed or cancelled job goes back to validation, keeping what exists remotely.
 * Both return 0 or -EINVAL when the state does not allow it. */
int job_cancel(job *j, int64_t now_ms);
int job_retry(job *j, int64_t now_ms);
/* A job waiting for its retry time after an error (retry_at in the future) makes the attempt
 * now; 0, or -EINVAL when it is not waiting for one. */
int job_retry_now(job *j, int64_t now_ms);

/* Recovery after a restart: a job read back from its record. Notes what is being resumed
 * (an unknown outcome is resolved by job_next). */
void job_recovered(job *j, int64_t now_ms);

/* The request for op: method, path relative to the API root (e.g.
 * "/api/v1/data-collection/datasets") or the full upload URL for JOB_OP_UPLOAD, and a JSON
 * body (malloc'd) or NULL. Returns 0, or -EINVAL when the record lacks what op needs. */
typedef struct job_request {
    const char *method;
    char *path;
    char *body;
} job_request;
int job_build_request(const job *j, job_op op, job_request *out);
void job_request_clear(job_request *r);

#endif
