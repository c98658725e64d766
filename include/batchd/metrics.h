/* metrics: the daemon's Prometheus metrics. Two layers, both pure (no I/O, no clock):
 * - a registry of counter, gauge and histogram families with label sets, rendered to the
 *   text exposition format 0.0.4 (metrics_registry_*, metrics_family_*);
 * - batchd's own families (metrics_new and the event functions below), which the daemon feeds
 *   from the runner's hooks and reads with metrics_render (GetMetrics, GET /metrics).
 * The process_* values are read from /proc by the daemon and handed in (metrics_snapshot). */
#ifndef BATCHD_METRICS_H
#define BATCHD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batchd/job.h"

/* ---- the registry ---- */

typedef enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
} metrics_type;

/* Labels per family, and series per family: past the cap a new label set is dropped (and
 * counted in the family's own series-dropped total), so a surprise value can never grow the
 * daemon's memory without bound. */
#define METRICS_MAX_LABELS 4
#define METRICS_MAX_SERIES 2000

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;

metrics_registry *metrics_registry_new(void);
void metrics_registry_free(metrics_registry *r);

/* A family, rendered in the order added. labels: NULL-terminated names (NULL: none).
 * buckets: a histogram's upper bounds, increasing, without +Inf. Names are the caller's
 * (static) and not checked; the registry owns the family. */
metrics_family *metrics_family_add(metrics_registry *r, const char *name, metrics_type type,
                                   const char *help, const char *const *labels,
                                   const double *buckets, size_t n_buckets);

/* values: one per label name, in order (NULL: "" each); copied. Return 0, or -ENOSPC when
 * the family is full and the series is new, -EINVAL on the wrong type or a NaN/negative
 * counter increment. */
int metrics_inc(metrics_family *f, const char *const *values, double by);
int metrics_set(metrics_family *f, const char *const *values, double v);
int metrics_observe(metrics_family *f, const char *const *values, double v);
/* Creates the series with nothing counted yet, so that it is rendered (as 0). */
int metrics_touch(metrics_family *f, const char *const *values);
/* Forgets every series (a gauge recomputed from scratch before each render). */
void metrics_family_clear(metrics_family *f);

/* The whole registry as text/plain; version=0.0.4. malloc'd. */
char *metrics_registry_render(const metrics_registry *r);

/* ---- batchd's families ---- */

typedef struct metrics metrics;

/* The daemon's version for batchd_build_info. */
metrics *metrics_new(const char *version);
void metrics_free(metrics *m);

/* A job changed (as_state NULL) or passed through state as_state (runner.h, job_changed).
 * now_ms: wall clock. Feeds the stage histogram. */
void metrics_job_changed(metrics *m, const job *j, const char *as_state, int64_t now_ms);
/* A job finished (runner.h, job_finished: once per finish, rejected claims included): the
 * finished count and, for READY, the claim-to-READY histogram. */
void metrics_job_finished(metrics *m, const job *j, int64_t now_ms);

/* One API or upload exchange that ended (runner.h, runner_request_done). */
typedef struct metrics_request {
    const char *endpoint;     /* low-cardinality name, e.g. "create_dataset" */
    long status;              /* HTTP status, 0 when no response came */
    int64_t latency_ms;       /* from the send to the end */
    const char *retry_reason; /* a retry was scheduled, and why; NULL: none */
    int64_t upload_bytes;     /* bytes sent to an upload URL by this exchange */
} metrics_request;
void metrics_request_done(metrics *m, const metrics_request *rq);

/* A hook run ended: hook e.g. "on_ready", outcome e.g. "ok", "failed", "timeout". */
void metrics_hook_run(metrics *m, const char *hook, const char *outcome);
/* An export ended: its ZIP is in place (ok), or it failed. */
void metrics_export_ended(metrics *m, bool ok);

/* The values read at render time. -1 in a process_* field: unknown (not rendered). */
typedef struct metrics_snapshot {
    size_t jobs_by_state[JOB_STATE_COUNT];
    int64_t incoming;         /* entries waiting in incoming/, -1 unknown */
    int64_t waiting_for_slot; /* of those, claimable now but for max_active or a pause */
    size_t stuck;
    bool paused;
    const char *pause_reason;       /* "operator", "api_token_rejected", NULL */
    double rate_limit_wait_seconds; /* requests' waits for the API token bucket, summed */
    double process_cpu_seconds;
    double process_resident_bytes;
    double process_virtual_bytes;
    double process_open_fds;
    double process_max_fds;
    double process_start_time_seconds;
} metrics_snapshot;

/* The text exposition format (0.0.4) of every family, malloc'd. */
char *metrics_render(metrics *m, const metrics_snapshot *s);

#endif
