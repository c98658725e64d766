/* batchd's wiring: the daemon's state shared by main.c (start and tear down), jobs.c
 * (claiming and running jobs: the machine's actions performed with the http client, the
 * store, the spool and the thread pool), ctl.c (the io.batchd methods), reload.c (the
 * reload policy), hold.c (the pause and the token hold) and stop.c (signals and stopping). */
#ifndef BATCHD_DAEMON_H
#define BATCHD_DAEMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "batchd/config.h"
#include "batchd/control.h"
#include "batchd/http.h"
#include "batchd/intake.h"
#include "batchd/job.h"
#include "batchd/spool.h"

/* A config shared with validation work on the thread pool: a reload swaps in a new one and
 * the old one lives until the last validation holding it ends. */
typedef struct cfgref {
    config c;
    int refs;
} cfgref;

/* cfgref.c */
cfgref *cfgref_new(void);
cfgref *cfgref_get(cfgref *r);
void cfgref_put(cfgref *r);

struct batchd;

/* One job as the daemon runs it. */
typedef struct jobrun {
    job *j;
    struct batchd *d;
    uv_timer_t timer;
    http_transfer *xfer;
    job_op xfer_op;
    unsigned xfer_token_gen; /* batchd.token_gen when the request was sent */
    bool busy;               /* a request or a validation is in flight */
    bool finished;           /* its directory is in done/ or failed/ */
    bool waiting_validation;
    bool validating;
    atomic_int cancel_validation; /* set on the loop, polled by the validating thread */
    uv_work_t work;
    cfgref *work_cfg;
    intake_result ires;
    int ires_rc;
    int64_t last_publish_ms;
    /* Record writes run on the thread pool, one at a time per job, so a later write can
     * never be overtaken by an earlier one; the job takes no step while its write is out. */
    bool writing;
    bool write_again;        /* the record changed while it was being written */
    bool dirty;              /* the last write failed: write again before any step */
    bool released;           /* stopping: free once the thread pool is done with it */
    job_op send_after_write; /* a side-effecting call waiting for its intent to be durable */
    job_op saved_pending;    /* pending_op to restore if that write fails */
    uint64_t written_digest; /* job_record_digest of the last record handed to a write */
    uv_work_t write_work;
    char *write_text;
    char *write_dir;
    int write_rc;
} jobrun;

typedef struct batchd {
    uv_loop_t *loop;
    char *config_path;
    cfgref *cfg;
    char *token;
    bool token_from_env; /* read from BATCHD_API_TOKEN, which is gone from the environment */
    char *api_url;       /* cfg api.url without a trailing slash */
    job_params params;
    spool *sp;
    spool_watch *watch;
    http_client *http;
    control *ctl;
    jobrun **jobs; /* every known job, in claim order */
    size_t n_jobs, cap_jobs;
    size_t n_active; /* jobs not finished */
    size_t validations;
    /* No claims and no new requests: an operator's Pause, or a hold after the API rejected
     * the token (HTTP 401). paused is their union; Resume lifts both, a reload that loads a
     * different token lifts the hold. */
    bool paused;
    bool operator_paused;
    bool token_hold;
    int64_t paused_at;  /* when the current pause began (wall ms): waits do not run meanwhile */
    unsigned token_gen; /* counts token changes: a 401 to an older token holds nothing */
    bool stopping;
    bool claim_pending;
    /* jobs_drive_all is walking d->jobs: no eviction meanwhile */
    bool driving_all;
    /* job records that could not be read at start */
    size_t bad_records;
    /* job records removed at start because their jobs finished long ago */
    size_t pruned_records;
    uv_timer_t claim_timer;
    /* entries of incoming/ that could not be claimed (GetInfo "stuck"); NULL until one */
    spool_stuck *stuck;
    bool draining; /* stopping, waiting for creates/setups in flight */
    uv_timer_t drain_timer;
    uv_signal_t sig_term, sig_int, sig_hup;
    int64_t started_at;
    uint64_t rng;
} batchd;

/* jobs.c */
int jobs_recover(batchd *d);
void jobs_claim_soon(batchd *d);
void jobs_drive(jobrun *r);
void jobs_drive_all(batchd *d);
bool jobs_changed(jobrun *r, job_state before);
int jobs_cancel(jobrun *r);
int jobs_retry(jobrun *r);
void jobs_shutdown(batchd *d);
/* Stopping: cancels every request but creates and setups in flight; returns their number. */
size_t jobs_begin_drain(batchd *d);
size_t jobs_in_flight(const batchd *d);
void jobs_free_all(batchd *d);
jobrun *jobs_find(batchd *d, const char *key, bool *ambiguous);
void jobs_update_status(batchd *d);
/* After a pause of held_ms: the import and READY waits resume where they stood. */
void jobs_pause_ended(batchd *d, int64_t held_ms);
uint64_t batchd_random(batchd *d);

/* hold.c: the pause and the token hold. */
void batchd_set_paused(batchd *d, bool operator_paused, bool token_hold);
/* A request sent with token generation gen came back 401. */
void batchd_token_rejected(batchd *d, unsigned gen);
const char *batchd_pause_reason(const batchd *d);
/* Reads the token source again (a resume after a hold: the file may have been fixed). */
void batchd_reread_token(batchd *d);

/* ctl.c */
extern const control_ops ctl_ops;

/* reload.c: the reload policy. */
http_client_options batchd_http_options(const config *c);
/* Applies d->cfg to the job parameters and to the modules already started. */
void batchd_apply_config(batchd *d);
/* Reads the config and the token again and applies what may change without a restart. Returns
 * the reply ({"applied": [...], "restart_required": [...]}), or NULL with *err and *err_msg
 * (allocated) set, the running config untouched. */
cJSON *batchd_reload(batchd *d, const char **err, char **err_msg);

/* stop.c: signals and stopping. */
/* How long a stop waits for creates and setups in flight. */
#define DRAIN_MS 3000
/* SIGTERM and SIGINT stop, SIGHUP reloads. */
void batchd_signals_start(batchd *d);
/* Stops at once, without waiting for requests in flight (a start that failed part way). */
void batchd_stop_now(batchd *d);
/* Stopping: called when a request ends; stops once none is left in flight. */
void batchd_check_drained(batchd *d);

#endif
