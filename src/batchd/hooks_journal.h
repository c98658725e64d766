/* hooks_journal: the durable journal of hook runs in <state>/hooks/ (hooks_journal.c says
 * what it holds and why). Writes and the start's reading of entries run on libuv's thread
 * pool; hooks.c decides what to write when. */
#ifndef BATCHD_HOOKS_JOURNAL_H
#define BATCHD_HOOKS_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "hooks.h"

/* What the journal records about a run. */
typedef struct hjentry {
    char *job_id, *job_name, *job_state, *dir, *arg, *dataset_id, *batch_id;
    hooks_kind kind;
    int attempt;
    int64_t finished_at;
    bool interrupted; /* loaded as "started": a stop or a crash cut its attempt short */
} hjentry;

/* Journal file names, sorted (hj_list). */
typedef struct hj_names {
    char **v;
    size_t n;
} hj_names;

/* Entries that had not ended, and files that could not be read (hj_load). */
typedef struct hj_loaded {
    hjentry *v;
    size_t n;
    char **bad; /* paths */
    size_t n_bad;
} hj_loaded;

/* "on_ready", "on_failed" or "on_export". */
const char *hooks_kind_name(hooks_kind k);
/* The file name of a run: <job id>.<hook>.<finished_at>.json. */
char *hj_base(const char *job_id, hooks_kind k, int64_t finished_at);
void hjentry_free(hjentry *e);

/* Writes the entry with state (pending, started, retry, done, gave_up, dropped) to path,
 * atomically and durably, on the pool; then done(ud, 0 or -errno) on the loop. < 0 when the
 * work cannot be queued (done is then not called). */
int hj_write(uv_loop_t *loop, const char *path, const hjentry *e, const char *state,
             void (*done)(void *ud, int rc), void *ud);

/* The journal's file names, without reading the files (cheap enough for the start). */
int hj_list(const char *dir, hj_names *out);
bool hj_names_has(const hj_names *n, const char *base);
void hj_names_free(hj_names *n);

/* Reads the files named (taking *names) on the pool: removes those that ended long ago,
 * and hands the ones that have not ended to done on the loop, which owns *res and frees it
 * with hj_loaded_free. < 0 when the work cannot be queued (*names is freed). */
int hj_load(uv_loop_t *loop, const char *dir, hj_names *names,
            void (*done)(void *ud, hj_loaded *res), void *ud);
void hj_loaded_free(hj_loaded *res);

/* <dir>/<hook>.since: the time (epoch ms) since which the hook has been configured. Read
 * blocks (the start only); 0 when absent or unreadable. */
int64_t hj_since_read(const char *dir, hooks_kind k);
/* Writes since (0: removes the file) on the pool, then done(ud) on the loop. < 0 when the
 * work cannot be queued. */
int hj_since_write(uv_loop_t *loop, const char *dir, hooks_kind k, int64_t since,
                   void (*done)(void *ud), void *ud);

#endif
