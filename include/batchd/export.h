/* export: one export of one job's batch (batchd(8) EXPORTS; PRODUCT section 11), as pure code
 * in the style of the job machine: given the export's record, the time (an argument) and an
 * event (the API's answer to POST/GET/DELETE .../export, the end of a download), it updates
 * the record and says what to do next: request the export, poll its status on the [poll]
 * schedule, download the ZIP from its presigned URL, refresh an expired URL by polling again,
 * request anew when the export vanished, delete the export job at the API after a download,
 * retry transient errors with backoff (honouring Retry-After), give up on permanent ones.
 * Also: the record's JSON form (strict on read), the public form (Job.export), the name of a
 * downloaded ZIP (exports/YYYYMMDDTHHMMSSZ.zip, -2, -3 on a clash) and the [export] keep
 * pruning decision. No I/O, no clock reads. */
#ifndef BATCHD_EXPORT_H
#define BATCHD_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef enum export_state {
    EXPORT_REQUESTED = 0, /* POST .../export to be sent (or sent, answer not yet known) */
    EXPORT_GENERATING,    /* the API builds the ZIP: GET .../export/{export_id} on [poll] */
    EXPORT_DOWNLOADING,   /* a URL is known (or being refreshed): GET <url> into a file */
    EXPORT_COMPLETE,      /* the ZIP is at path (a DELETE of the API's job may still follow) */
    EXPORT_FAILED,        /* error says why */
    EXPORT_STATE_COUNT
} export_state;

const char *export_state_name(export_state s);
/* -1 for an unknown name. */
int export_state_from_name(const char *name);

typedef enum export_op {
    EXPORT_OP_NONE = 0,
    EXPORT_OP_REQUEST,  /* POST /batches/{batch_id}/export */
    EXPORT_OP_STATUS,   /* GET /batches/{batch_id}/export/{export_id} */
    EXPORT_OP_DOWNLOAD, /* GET <url> (no Authorization) into the temporary file */
    EXPORT_OP_DELETE,   /* DELETE /batches/{batch_id}/export/{export_id} */
    EXPORT_OP_COUNT
} export_op;

const char *export_op_name(export_op op);

/* Tunables: [poll] and the retry bounds of the job machine (job_params). */
typedef struct export_params {
    int64_t poll_initial_ms;
    int64_t poll_max_ms;
    double poll_multiplier;
    int64_t generate_timeout_ms; /* give up waiting for `complete`; 0: never */
    int64_t retry_base_ms;
    int64_t retry_cap_ms;
    int64_t url_margin_ms;  /* a URL this close to its expires_at is refreshed, not used */
    int retry_attempts_max; /* failed attempts of one step before the export fails */
} export_params;

void export_params_default(export_params *p);

/* The longest Retry-After honoured (as the job machine's JOB_RETRY_AFTER_MAX_MS). */
#define EXPORT_RETRY_AFTER_MAX_MS (6LL * 3600 * 1000)
/* An export that vanished (404) or was found failed after it had been complete is requested
 * anew at most this many times in a row; a presigned URL refused (403) at most this many. */
#define EXPORT_RENEWALS_MAX 5
#define EXPORT_REFUSALS_MAX 5

/* Where the runner downloads to, inside the job's exports/ directory: one export at a time
 * per job, so one fixed name. It is never a name export_dest_name makes (those never start
 * with a dot), and the runner removes it at every recovery before the export resumes. */
#define EXPORT_DIR      "exports"
#define EXPORT_TMP_NAME ".download.zip.tmp"

typedef struct export_job {
    export_state state;
    char *export_id;         /* the API's id (checked before use in a path); NULL when unknown */
    char *url;               /* presigned: a bearer capability; in memory only, never in a record */
    int64_t url_expires_at;  /* epoch ms, 0 unknown; in memory only, with url */
    char *path;              /* "exports/NAME.zip" relative to the job's directory, once complete */
    int64_t requested_at;    /* when this export was asked for */
    int64_t at;              /* the last change of state */
    char *error;             /* why it failed (state failed), or why the DELETE was abandoned */
    char *last_error;        /* the last failed attempt, while retrying */
    export_op pending;       /* a POST sent whose answer is not known */
    bool delete_pending;     /* complete, and the API's export job is still to be deleted */
    bool was_complete;       /* the API reported complete for export_id (a later failed/404 means
                                the archive went away: request anew) */
    int attempts;            /* failed attempts of the current step */
    int renewals;            /* requests anew in a row */
    int refusals;            /* download URLs refused in a row */
    int polls;               /* status polls while generating */
    int64_t retry_at;        /* next attempt after an error; 0 none */
    int64_t poll_at;         /* next status poll; 0 now */
    int64_t wait_started_at; /* start of the generating wait */
} export_job;

/* A new export, state requested. */
export_job *export_new(int64_t now_ms);
void export_free(export_job *e);
/* Work is left for it: in progress, or complete with the API's export job still to delete.
 * Such an export keeps its job in memory and its record on disk. false for NULL. */
bool export_unsettled(const export_job *e);

/* An operator's `batchctl export` on a job that has an export: a finished (complete or
 * failed) one starts over as a new request; 0, or -EBUSY while one is in progress (the caller
 * keeps following that one). */
int export_request_again(export_job *e, int64_t now_ms);

typedef enum export_action_kind {
    EXPORT_ACT_NONE = 0, /* nothing: finished, or a request is in flight */
    EXPORT_ACT_SEND,     /* perform op (EXPORT_OP_DOWNLOAD: from e->url into EXPORT_TMP_NAME) */
    EXPORT_ACT_WAIT,     /* nothing until `until` (epoch ms), then export_next again */
} export_action_kind;

typedef struct export_action {
    export_action_kind kind;
    export_op op;
    int64_t until;
} export_action;

/* What to do now. May change the record (a timeout, an expired URL); the caller persists
 * when *changed. */
export_action export_next(export_job *e, const export_params *p, int64_t now_ms, bool *changed);

/* op is about to be sent. For EXPORT_OP_REQUEST this records the intent (persist before
 * sending, like the job machine's write-before-send) and moves a finished wait on. */
void export_mark_sent(export_job *e, export_op op, int64_t now_ms);

typedef enum export_net {
    EXPORT_NET_OK = 0,    /* a response arrived (any status) */
    EXPORT_NET_TIMEOUT,   /* no answer in time */
    EXPORT_NET_FAILED,    /* connection failed or dropped */
    EXPORT_NET_NOT_SENT,  /* certainly not sent */
    EXPORT_NET_TOO_LARGE, /* a response came but too large to read (or a download over its cap) */
    EXPORT_NET_FILE,      /* download: the local file could not be written */
    EXPORT_NET_URL,       /* download: the URL failed the transport rule (nothing sent) */
} export_net;

typedef struct export_reply {
    export_net net;
    long status;
    const char *body; /* may be NULL */
    size_t body_len;
    const char *retry_after; /* header value or NULL */
    const char *error_text;  /* transport error text */
    const char *secret;      /* the API token, to redact whatever is kept; borrowed */
    /* EXPORT_OP_DOWNLOAD only, for a 2xx that was written whole: */
    const char *zip_error; /* non-NULL: the file is not a whole ZIP (zipcheck's reason) */
    const char *path;      /* NULL: ok; where it was renamed to ("exports/NAME.zip") */
} export_reply;

/* Records the outcome of op. rnd: a random 64-bit value (jitter). Returns true when the API
 * rejected the token (401 to an API call, not to the download): nothing changed, the call is
 * made again once the daemon has a new token (the caller holds, as for jobs). */
bool export_on_reply(export_job *e, export_op op, const export_reply *r, const export_params *p,
                     int64_t now_ms, uint64_t rnd);

/* Recovery after a restart. The URL is never in the record: an export that was downloading
 * polls its status again for a fresh URL (or, without an export_id, requests anew); one that
 * was generating polls again; a POST whose answer is unknown is sent again. The runner
 * removes EXPORT_TMP_NAME before resuming. */
void export_recovered(export_job *e, int64_t now_ms);
/* At start: the ZIP of this export was already renamed into place (path, "exports/NAME.zip")
 * when the process died, before its record said so. The export is complete with it (its API
 * job still to be deleted), so it is not downloaded a second time. false, changing nothing,
 * for an export that had already ended. */
bool export_adopt(export_job *e, const char *path, int64_t now_ms);

/* The record form (kept inside the job's record) and back. export_from_json is strict: an
 * unknown member, a wrong type, an id not usable in a path, a path that is not a name batchd
 * makes, an impossible state: it returns NULL and writes a reason naming the member to err. */
cJSON *export_to_json(const export_job *e);
export_job *export_from_json(const cJSON *o, char *err, size_t errlen);
/* Job.export on the control socket: {state, export_id, path, at, error}. */
cJSON *export_to_public(const export_job *e);

/* ---- file names ---- */

/* The longest name export_dest_name makes, with its NUL. */
#define EXPORT_NAME_MAX 48
/* The destination of a download finished at now_ms (UTC): "exports/YYYYMMDDTHHMMSSZ.zip", or
 * with "-2", "-3" ... before ".zip" while exists(ud, name) says the name is taken. 0, or
 * -EEXIST when 1000 names are all taken, -EINVAL for a time before 1970 or after 9999. */
int export_dest_name(int64_t now_ms, bool (*exists)(void *ud, const char *name), void *ud,
                     char *buf, size_t len);
/* True when base (a name inside exports/, without the directory) is one export_dest_name
 * makes; *at_ms (second precision) and *suffix (1 without one) are set when non-NULL. */
bool export_name_parse(const char *base, int64_t *at_ms, unsigned *suffix);
/* [export] keep: of the names in a job's exports/ directory, which to remove so that the
 * newest `keep` of batchd's ZIPs remain. Only names export_name_parse accepts are ever
 * candidates; `protect` (a base name, may be NULL: the ZIP just downloaded) is never one.
 * Writes the indices (into names) to remove to out (room for n) and returns how many.
 * keep 0 removes none (pruning off). */
size_t export_prune(const char *const *names, size_t n, unsigned keep, const char *protect,
                    size_t *out);

#endif
