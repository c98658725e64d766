/* batchctl: the commands that talk to the daemon over its control socket (status, list, show,
 * watch, retry, cancel, pause, resume, reload) and the text rendering they share: aligned
 * tables, human durations and sizes, colour only on a terminal without NO_COLOR, and job
 * progress. submit and validate live in offline.c. */
#ifndef BATCHCTL_BATCHCTL_H
#define BATCHCTL_BATCHCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "batchd/vlclient.h"

/* Exit codes (sysexits where one fits). */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_JOB_FAILED = 1, /* the job asked about failed or was cancelled */
    CTL_EXIT_USAGE = 64,
    CTL_EXIT_REFUSED = 65,     /* no such job, ambiguous name, invalid state, bad parameter */
    CTL_EXIT_UNAVAILABLE = 69, /* the daemon cannot be reached */
    CTL_EXIT_SOFTWARE = 70,
    CTL_EXIT_TEMPFAIL = 75, /* the daemon has too many connections, or is busy */
    CTL_EXIT_PROTOCOL = 76, /* the daemon said something batchctl does not understand */
    CTL_EXIT_NOPERM = 77,
    CTL_EXIT_CONFIG = 78,
};

typedef struct ctl_ctx {
    const char *socket_path;
    const char *group; /* the control group, for hints */
    bool json;
    bool tty;   /* stdout is a terminal */
    bool color; /* tty, NO_COLOR unset or empty, TERM not dumb */
    int64_t timeout_ms;
} ctl_ctx;

/* Commands; argv[0] is the command name; return the exit code. */
int ctl_status(const ctl_ctx *x, int argc, char **argv);
int ctl_list(const ctl_ctx *x, int argc, char **argv);
int ctl_show(const ctl_ctx *x, int argc, char **argv);
int ctl_watch(const ctl_ctx *x, int argc, char **argv);
int ctl_retry(const ctl_ctx *x, int argc, char **argv);
int ctl_cancel(const ctl_ctx *x, int argc, char **argv);
int ctl_pause(const ctl_ctx *x, int argc, char **argv);
int ctl_resume(const ctl_ctx *x, int argc, char **argv);
int ctl_reload(const ctl_ctx *x, int argc, char **argv);
int ctl_metrics(const ctl_ctx *x, int argc, char **argv);
int ctl_wait(const ctl_ctx *x, int argc, char **argv);
int ctl_export(const ctl_ctx *x, int argc, char **argv);

/* Connects and makes one call: 0 with *r (the caller clears it), or an exit code (the error
 * printed). */
int ctl_call(const ctl_ctx *x, const char *method, const cJSON *params, vlclient_reply *r);

/* Prints "usage: batchctl ... cmd args" to stderr; returns CTL_EXIT_USAGE. */
int ctl_usage(const char *cmd, const char *args);
/* io.batchd.GetJob of a job reference: 0 with *job (the Job, without history; the caller
 * frees it), or an exit code (message printed). */
int ctl_get_job(const ctl_ctx *x, const char *ref, cJSON **job);

/* ---- wait.c ---- */

/* Follows the Watch stream on c until every job of jobs (an array of Job objects, updated in
 * place) is finished or timeout_ms passes (<0: no limit); prints the outcome and returns 0 (all
 * ready), 1 (any failed or cancelled), 75 (timed out) or 69 (the daemon went away). */
int ctl_wait_follow(const ctl_ctx *x, vlclient *c, cJSON *jobs, int64_t timeout_ms);
/* --timeout's value; 0 or CTL_EXIT_USAGE (message printed). */
int ctl_parse_timeout(const char *cmd, const char *s, int64_t *ms);

/* For watch: connects and starts io.batchd.Watch; 0 with *c and the snapshot reply in *first,
 * or an exit code (message printed). */
int ctl_watch_open(const ctl_ctx *x, vlclient **c, vlclient_reply *first);
/* Prints why the stream ended (a vlclient_recv error) and returns the exit code. */
int ctl_watch_lost(const ctl_ctx *x, int r);

/* ---- render.c ---- */

/* An aligned text table: header cells, then rows; a cell may carry a colour. */
typedef struct ctl_table ctl_table;
ctl_table *ctl_table_new(size_t ncols, const char *const *headers);
void ctl_table_free(ctl_table *t);
/* Starts a row; then ctl_table_cell once per column. */
void ctl_table_row(ctl_table *t);
void ctl_table_cell(ctl_table *t, const char *text, const char *color);
void ctl_table_print(const ctl_table *t, FILE *out, bool color);

/* ANSI colour sequence for a job state (or NULL). */
const char *ctl_state_color(const char *state);
#define CTL_RED    "\033[31m"
#define CTL_GREEN  "\033[32m"
#define CTL_YELLOW "\033[33m"
#define CTL_BLUE   "\033[34m"
#define CTL_DIM    "\033[2m"
#define CTL_BOLD   "\033[1m"
#define CTL_RESET  "\033[0m"

bool ctl_state_finished(const char *state);
/* In a finished state with its files moved out of active/ (Job dir): result.json or
 * error.json is in place. */
bool ctl_job_finished(const cJSON *job);
/* "12.3 MiB" */
char *ctl_format_bytes(int64_t n, char *buf, size_t len);
/* Milliseconds from an RFC 3339 job time to now (or -1 when absent or unreadable). */
int64_t ctl_since(const cJSON *job, const char *key, int64_t now_ms);
/* Short ids for tables: a prefix of the id, which every JOB argument accepts. Ids (ULIDs)
 * begin with their time, so jobs claimed in the same millisecond share ten characters: the
 * length is the shortest, at least CTL_SHORT_ID_MIN, that tells apart every id of jobs. */
#define CTL_SHORT_ID_MIN 12
size_t ctl_short_id_len(const cJSON *jobs);
const char *ctl_short_id(const char *id, size_t len, char *buf, size_t buflen);
/* What an append job adds to, from the Job object's append_to: "job NAME (ID)" or "batch B
 * (dataset D)", with ", sync SYNC_ID STATUS" when with_sync and there is one; "" for a job
 * that does not append. */
char *ctl_append_text(const cJSON *job, bool with_sync, char *buf, size_t len);
/* Progress text for a job ("upload 45% 12.3 MiB/27.0 MiB", "import PROCESSING", ...). */
char *ctl_progress_text(const cJSON *job, char *buf, size_t len);
/* Overall progress 0..1: upload bytes, then import, then batch state. */
double ctl_progress_fraction(const cJSON *job);
/* "retry in 12s: <last_error>", "<error_code>: <error_message>", "<last_error>" or "". */
char *ctl_problem_text(const cJSON *job, int64_t now_ms, char *buf, size_t len);
/* Text from the daemon, a file name or the API never reaches a terminal raw: for output to
 * people (not --json), every string and key of a reply has its control characters (and
 * invalid bytes) shown as \xNN. Call on each reply received. */
void ctl_defang_reply(const ctl_ctx *x, vlclient_reply *r);
/* s with control characters and invalid bytes shown as \xNN, for one printf: the result is
 * valid until eight more calls. */
const char *ctl_esc(const char *s);
/* A bar of width cells, e.g. "[=======>      ]". */
char *ctl_progress_bar(double fraction, int width, char *buf, size_t len);

#endif
