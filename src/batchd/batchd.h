/* batchd's wiring: the daemon's state shared by main.c (start and tear down), backend.c
 * (the runner's backends: the http client, the store, the spool and the thread pool),
 * cfgref.c (the counted config), ctl.c (the io.batchd methods), reload.c (the reload
 * policy), hold.c (the pause and the token hold) and stop.c (signals and stopping). The
 * jobs themselves are the runner's (batchd/runner.h). */
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
#include "batchd/metrics.h"
#include "batchd/runner.h"
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

typedef struct backend backend;
struct metrics_http;

#define BATCHD_TOKENS_KEPT 4

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
    runner *runner;          /* the jobs: claimed, recovered, run */
    struct backend *backend; /* backend.c's state for the runner */
    struct hooks *hooks;     /* [hooks] runs (hooks.c); NULL before the start and once stopped */
    /* No claims and no new requests: an operator's Pause, or a hold after the API rejected
     * the token (HTTP 401). paused is their union; Resume lifts both, a reload that loads a
     * different token lifts the hold. */
    bool paused;
    bool operator_paused;
    bool token_hold;
    unsigned token_gen; /* counts token changes: a 401 to an older token holds nothing */
    /* The tokens replaced last (token_gen - 1 - i), kept so that a reply to a request sent
     * with one of them is cleaned of the token it carried (batchd_token_of). */
    char *token_before[BATCHD_TOKENS_KEPT];
    bool stopping;
    bool draining; /* stopping, waiting for creates/setups in flight */
    uv_timer_t drain_timer;
    uv_signal_t sig_term, sig_int, sig_hup;
    int64_t started_at;
    metrics *metrics;                  /* fed by the runner's hooks (main.c) */
    struct metrics_http *metrics_http; /* [metrics] listen, or NULL */
} batchd;

/* backend.c: a runner over the daemon's store, spool, HTTP client and thread pool. */
runner *backend_runner_new(batchd *d, const runner_hooks *hooks);
/* apicall.c: starts an API call: the API root before path, the token in the Authorization
 * header only, JSON accepted (and sent when body), the shared rate limit; fresh_connect for a
 * call with a side effect (http.h). NULL when it cannot start. */
http_transfer *batchd_api_start(batchd *d, const char *method, const char *path, const char *body,
                                bool fresh_connect, http_done_fn done, void *ud);

/* apicall.c: token becomes the one in use (taken over); token_gen counts the change when it
 * differs from the one before. Returns whether it differed. */
bool batchd_token_replace(batchd *d, char *token);
/* The token requests of generation gen carried, to clean their replies of: the one in use
 * for a generation not kept. */
const char *batchd_token_of(const batchd *d, unsigned gen);
/* Wipes and frees every token held. */
void batchd_tokens_free(batchd *d);

/* backend_export.c: the runner's export backend (its ud is the batchd). */
extern const runner_export_ops backend_export_ops;
/* Stopping, after runner_free: abandons the disk work not started, lets the rest end. */
void backend_stop(batchd *d);
/* The operator's pause survives a restart as a marker file in the state directory:
 * backend_pause_marker writes (present) or removes it durably on the pool, in call order;
 * backend_pause_marker_present reads it at start. */
#define BATCHD_PAUSE_MARKER "paused"
void backend_pause_marker(batchd *d, bool present);
bool backend_pause_marker_present(const batchd *d);

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
/* The runner's export settings: [export], [poll] and the jobs' retry bounds. */
runner_export_config batchd_export_config(const batchd *d);
/* Applies d->cfg to the job parameters and to the modules already started. */
void batchd_apply_config(batchd *d);
/* Reads the config and the token again and applies what may change without a restart. Returns
 * the reply ({"applied": [...], "restart_required": [...]}), or NULL with *err and *err_msg
 * (allocated) set, the running config untouched. */
cJSON *batchd_reload(batchd *d, const char **err, char **err_msg);

/* metrics_text.c: the Prometheus text of GetMetrics and GET /metrics, malloc'd. */
char *batchd_metrics_text(batchd *d);

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
