/* hookq: the decisions about hook runs (batchd.conf(5), HOOKS), without any I/O. A run is one
 * hook for one finished job; it waits for one of max_parallel slots, has its start recorded,
 * runs, and on a non-zero exit, a signal or a timeout is tried again after 1 s, 2 s, 4 s ...
 * (at most 30 s), up to `retries` more times. A run past its timeout gets SIGTERM, and
 * SIGKILL HOOKQ_KILL_AFTER_MS later. The caller (src/batchd/hooks.c) performs what
 * hookq_next says and reports back; the time is always an argument (milliseconds, any
 * monotonic origin), so tests/unit/test_hookq.c drives it with a fake clock. */
#ifndef BATCHD_HOOKQ_H
#define BATCHD_HOOKQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HOOKQ_KILL_AFTER_MS   10000
#define HOOKQ_BACKOFF_BASE_MS 1000
#define HOOKQ_BACKOFF_CAP_MS  30000

typedef struct hookq hookq;

typedef struct hookq_limits {
    int64_t timeout_ms; /* hook_timeout */
    int retries;        /* hook_retries: attempts after the first */
    int max_parallel;   /* hook_max_parallel */
} hookq_limits;

typedef enum hookq_act_kind {
    HOOKQ_ACT_NONE = 0,
    HOOKQ_ACT_START, /* record the start durably, then spawn (hookq_started or hookq_exited) */
    HOOKQ_ACT_TERM,  /* send SIGTERM: the run timed out */
    HOOKQ_ACT_KILL,  /* send SIGKILL: it did not end HOOKQ_KILL_AFTER_MS after the SIGTERM */
} hookq_act_kind;

typedef struct hookq_action {
    hookq_act_kind kind;
    uint64_t run;
    void *ud;    /* what hookq_add was given */
    int attempt; /* 1 for the first run */
} hookq_action;

typedef enum hookq_outcome {
    HOOKQ_OK = 0,  /* exited 0 */
    HOOKQ_EXIT,    /* exited non-zero */
    HOOKQ_SIGNAL,  /* killed by a signal batchd did not send */
    HOOKQ_TIMEOUT, /* killed after its timeout */
    HOOKQ_NOT_RUN, /* could not be started (or its start not recorded) */
    HOOKQ_OUTCOMES,
} hookq_outcome;

typedef struct hookq_result {
    hookq_outcome outcome;
    int attempt;      /* the attempt that ended */
    int attempts_max; /* retries + 1 */
    bool retry;       /* it runs again at retry_at; else the run is over and forgotten */
    int64_t retry_at;
} hookq_result;

/* "ok", "failed", "killed", "timeout", "not_run": for logs and metrics labels. */
const char *hookq_outcome_name(hookq_outcome o);

hookq *hookq_new(const hookq_limits *l);
void hookq_free(hookq *q);
/* A reload: applies to runs started (and timeouts armed) from now on, and to the decision
 * whether a failed attempt is retried. */
void hookq_set_limits(hookq *q, const hookq_limits *l);
/* Queues a run whose next attempt is number attempt (1 for a new run; a run interrupted by
 * a restart runs its attempt again), not before not_before. Returns its id (never 0). */
uint64_t hookq_add(hookq *q, void *ud, int attempt, int64_t not_before);
/* The next thing to do now, or false when there is none. Call until false. */
bool hookq_next(hookq *q, int64_t now, hookq_action *a);
/* When hookq_next will next have something to do (INT64_MAX: nothing is timed). */
int64_t hookq_wake_at(const hookq *q);
/* The run's start is recorded and its process runs: its timeout counts from now. */
void hookq_started(hookq *q, uint64_t run, int64_t now);
/* The run's process ended (or never started: HOOKQ_NOT_RUN). exit_status is the exit code
 * when term_signal is 0. */
hookq_result hookq_exited(hookq *q, uint64_t run, int64_t now, int exit_status, int term_signal,
                          bool not_run);
/* Forgets a run whose process is not running (its hook is no longer configured). */
void hookq_cancel(hookq *q, uint64_t run);
/* Stopping: nothing more starts. */
void hookq_stop(hookq *q);
/* Runs holding a slot (being recorded, running, being killed), and runs known in all. */
size_t hookq_running(const hookq *q);
size_t hookq_count(const hookq *q);

#endif
