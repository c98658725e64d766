/* spool: the spool directory tree (tmp/ incoming/ active/ done/ failed/) and every move
 * inside it: claiming an entry from incoming/ into active/ (or rejecting it into failed/),
 * finishing a job into done/ or failed/, retrying a failed job, and watching incoming/.
 * It decides nothing about when to claim: the daemon does (it knows max_active).
 *
 * Protocol and guarantees
 * - Producers write in tmp/ and rename into incoming/ (maildir style). Names starting with
 *   '.' are ignored. tmp/ and incoming/ are created 02770 (group producers may drop; files
 *   inherit the spool's group), active/ done/ failed/ 0750. Existing directories are left
 *   as they are.
 * - A claim first renames the entry into a private staging directory active/.claim-<id>/,
 *   then looks at it with lstat only (never opens or follows it), then moves it to its final
 *   place. A crash leaves the entry in incoming/, in the staging directory (spool_init
 *   finishes it on the next start) or in its final place: never lost, never duplicated.
 * - Job names keep the producer's bytes (spaces, unicode). A name with a control character
 *   (newline, tab, ...) or that is not valid UTF-8 is rejected into failed/ with code
 *   "invalid_job": such names would break log lines, tables and API names further on.
 * - Nothing a user dropped is deleted; only the spool's own empty staging directories and
 *   temporary files are removed.
 * Blocking I/O: every call is a handful of metadata operations and fsyncs, independent of
 * the size of the data. */
#ifndef BATCHD_SPOOL_H
#define BATCHD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct spool spool;

/* A spool rooted at dir. Only copies the path: no I/O. Never NULL. */
spool *spool_new(const char *dir);
/* Closes the directory fds and frees. spool_free(NULL) is a no-op. */
void spool_free(spool *s);
/* "<dir>/<sub>" for sub in "tmp", "incoming", "active", "done", "failed"; the spool root for
 * NULL or ""; NULL for any other sub. Owned by s. */
const char *spool_dir(const spool *s, const char *sub);

/* For the daemon, once at start before anything else: creates missing directories (as
 * spool_open with create), then finishes every claim a crash interrupted (staging
 * directories active/.claim-*). 0 or -errno with a message (what, where, what to do) in
 * *err (malloc'd, NULL on success). Must not run while another process claims from this
 * spool. */
int spool_init(spool *s, char **err);
/* Opens the spool's directories without recovering anything: for clients such as
 * batchctl submit, which may run next to the daemon. With create, missing directories are
 * created; without, a missing one is an error. Refuses subdirectories that are symlinks or
 * on another file system than the spool root (renames between them would fail). 0 or
 * -errno with a message in *err. Calling it again is a no-op. */
int spool_open(spool *s, bool create, char **err);

/* Lists claimable entry names in incoming/ (dotfiles excluded), oldest first (mtime, then
 * name bytes), at most max of them. The oldest 4096 entries of a full scan are remembered
 * and served (each checked to still exist) until fewer than max of them are left, so that
 * claiming 10,000 waiting entries one at a time does not read the directory each time;
 * entries listed but not claimed are listed again. *names is a malloc'd array of malloc'd
 * strings (NULL when *count is 0); free with spool_names_free. 0 or -errno. */
int spool_scan_incoming(spool *s, size_t max, char ***names, size_t *count);
/* As spool_scan_incoming, but leaves out (and does not count towards max, nor stat, nor
 * cache) every name for which skip(ud, name) is true: entries the caller is skipping cost a
 * directory entry read, never a system call each. skip may be NULL. */
int spool_scan_incoming_ex(spool *s, size_t max, bool (*skip)(void *ud, const char *name), void *ud,
                           char ***names, size_t *count);
void spool_names_free(char **names, size_t count);
/* How many entries of incoming/ a scan could list now (dotfiles and those skip() leaves out
 * not counted): one read of the directory, no system call per entry, so it is meant for the
 * thread pool (it reads only the spool's directory fds). 0 or -errno. */
int spool_count_incoming(spool *s, bool (*skip)(void *ud, const char *name), void *ud,
                         size_t *count);

/* Entries of incoming/ that could not be claimed (a directory batchd may not rename, an I/O
 * error): remembered by name, without limit, so they are skipped by the scan (see
 * spool_scan_incoming_ex with spool_stuck_skip) and retried now and then. Pure: the caller
 * passes the time (monotonic ms) and does the logging. */
typedef struct spool_stuck spool_stuck;
spool_stuck *spool_stuck_new(void);
void spool_stuck_free(spool_stuck *st); /* NULL: no-op */
size_t spool_stuck_count(const spool_stuck *st);
bool spool_stuck_has(const spool_stuck *st, const char *name);
/* For spool_scan_incoming_ex: ud is a spool_stuck. */
bool spool_stuck_skip(void *ud, const char *name);
/* Records a failed claim of name: it is next due at now_ms + retry_ms. Returns true when the
 * failure should be logged now: the first time, and then when relog_ms have passed since it
 * last was. */
bool spool_stuck_failed(spool_stuck *st, const char *name, int64_t now_ms, int64_t retry_ms,
                        int64_t relog_ms);
/* Forgets name (claimed, or gone). No-op when it is not there. */
void spool_stuck_forget(spool_stuck *st, const char *name);
/* Copies into out (malloc'd strings) up to max names whose retry time has come, earliest
 * first; returns how many. Costs O(what it returns). */
size_t spool_stuck_due(const spool_stuck *st, int64_t now_ms, size_t max, char **out);
/* A copy of st's names (NULL: an empty set), for a pool thread to look names up in while
 * st itself changes on the loop; more names are added with spool_stuck_failed. */
spool_stuck *spool_stuck_dup(const spool_stuck *st);

typedef enum spool_claim_kind {
    SPOOL_CLAIMED,  /* now active/<job_name>/ (a directory) */
    SPOOL_REJECTED, /* moved into failed/<job_name>/ with error.json written */
    SPOOL_GONE,     /* vanished meanwhile (someone else took it): nothing to do */
} spool_claim_kind;

typedef struct spool_claim_result {
    spool_claim_kind kind;
    char *job_name;   /* final directory name, with any -2, -3 suffix (NULL when GONE);
                         for a REJECTED entry whose name is not UTF-8, its escaped form
                         (spool_name_escape, as error.json's "job"), so it is safe in JSON */
    char *job_dir;    /* "<spool>/active/<job_name>" or "<spool>/failed/<job_name>" */
    char *job_id;     /* REJECTED: the id written into error.json */
    char *reason;     /* REJECTED: what is wrong and what to do (safe to log: escaped) */
    const char *code; /* REJECTED: "unsupported_entry" or "invalid_job" (static) */
} spool_claim_result;

/* Claims incoming/<entry>:
 * - a directory becomes active/NAME (NAME = entry); a result.json or error.json already in
 *   it is kept as result.json.orig / error.json.orig, since batchd writes those names;
 * - a regular file NAME.jsonl or NAME.csv (extension in any case, as inside a job directory)
 *   becomes active/NAME/NAME.jsonl (the file keeps its name, the job directory gets the
 *   name without extension);
 * - anything else (another regular file, a symlink, FIFO, socket or device), and any entry
 *   whose name has control characters or is not UTF-8, is rejected: moved as it is into
 *   failed/NAME/ next to an error.json (batchd(8), RESULTS: stage "queued", code
 *   "unsupported_entry" or "invalid_job"; id job_id, or a fresh one when job_id is NULL).
 *   An entry named "error.json" is renamed "error.json.entry" as it is claimed (and that is
 *   its job name), so it can never be mistaken for the error.json batchd writes.
 * NAME gets a -2, -3 ... suffix when active/NAME, done/NAME or failed/NAME exists. Durable
 * (directories fsynced) before returning. 0 with *out filled (clear it with
 * spool_claim_clear), or -EINVAL for a name with '/' or a leading '.', -EBADF before
 * spool_open, or another -errno (the entry is then still in incoming/ or in staging). */
int spool_claim(spool *s, const char *entry, const char *job_id, spool_claim_result *out);
/* Frees the strings of c and zeroes it. */
void spool_claim_clear(spool_claim_result *c);

/* Claims many entries at once (spool_claim is a batch of one), with what spool_claim does
 * for each, but each shared directory fsynced once for the whole batch: failed/ (when an
 * entry was rejected), active/, then incoming/. Only a data file's new job directory (and a
 * rejected entry's, with its error.json) costs an fsync of its own.
 *
 * Why a crash loses or doubles nothing: every entry moves by rename(2) alone, which a
 * journalling file system commits whole, so after a crash an entry is in exactly one place:
 * - still in incoming/: its claim was never reported, and it is claimed again;
 * - in a staging directory active/.claim-*: spool_init finishes that claim;
 * - in active/ or failed/: the daemon adopts a directory of active/ that has no record.
 * The destinations are fsynced before incoming/, so a file system that persisted the two
 * halves of a rename apart could show an entry twice but never lose it. The call returns
 * only after every fsync, so no claim it reports can be undone by a crash; a failed fsync
 * fails every entry of the batch that left incoming/.
 *
 * Thread-safe against the event loop: uses only s's directory fds and paths (not the scan
 * cache), and logs nothing. Run one batch at a time per spool (concurrent claimers are safe
 * but may pick the same -N suffix and retry). */
#define SPOOL_STAGE_MAX 64
typedef struct spool_claim_item {
    const char *entry;      /* in: a name in incoming/ */
    const char *job_id;     /* in: the id a rejected entry's error.json gets (NULL: fresh) */
    int rc;                 /* out: as spool_claim returns */
    spool_claim_result res; /* out: as spool_claim's *out; clear with spool_claim_clear */
    /* out: when rc < 0 and the entry left incoming/, the staging directory under active/
     * where it may wait for the next start (as spool_claim logs); else "". */
    char stage[SPOOL_STAGE_MAX];
} spool_claim_item;
void spool_claim_batch(spool *s, spool_claim_item *items, size_t n);

/* Lists the job directories in active/ (dot names excluded), sorted by name. Free with
 * spool_names_free. 0 or -errno. */
int spool_list_active(spool *s, char ***names, size_t *count);

/* Finishes a job: writes file_name ("result.json" or "error.json") holding body into
 * active/<job_name>/ durably, then moves active/<job_name> to done/ (ok) or failed/ (!ok),
 * with a -2, -3 suffix when the name is taken there. *final_dir (when final_dir is not NULL)
 * receives the new path, malloc'd. Idempotent: when active/<job_name> is gone and
 * <dest>/<job_name> (or a suffixed <job_name>-N) holds file_name with the same "id" member
 * as body, returns 0 with that directory. -ENOENT when the job is found nowhere, -EINVAL
 * for names with '/' or a leading '.', else -errno. */
int spool_finish(spool *s, const char *job_name, bool ok, const char *file_name, const char *body,
                 char **final_dir);

/* Finishes many jobs at once (spool_finish is a batch of one): each job's file is written
 * and fsynced, the job directories are fsynced, then each moves into done/ or failed/ as
 * spool_finish does, and done/, failed/ and active/ are fsynced once each for the batch.
 * The file is durable in its directory before the directory moves, so a finished job is
 * never found without its result.json / error.json. items[i].rc and final_dir as
 * spool_finish's (final_dir malloc'd, NULL on error); a failed directory fsync fails every
 * job that moved. Thread-safe as spool_claim_batch; job names must differ. */
typedef struct spool_finish_item {
    const char *job_name;  /* in: the directory in active/ */
    bool ok;               /* in: done/ (true) or failed/ */
    const char *file_name; /* in: "result.json" or "error.json" */
    const char *body;      /* in */
    int rc;                /* out */
    char *final_dir;       /* out: malloc'd */
} spool_finish_item;
void spool_finish_batch(spool *s, spool_finish_item *items, size_t n);

/* Moves failed/<failed_name> back to active/ for a retry, as active/<failed_name> or with a
 * -2, -3 suffix when active/ or done/ has that name. The old error.json is kept, renamed to
 * error.json.1 (then .2, ... on later retries), so a job's history of failures stays with it
 * and a fresh error.json always means the latest attempt. *active_name (malloc'd) receives
 * the job's new name. 0, -ENOENT, -EINVAL, or -errno. */
int spool_reactivate(spool *s, const char *failed_name, char **active_name);

/* Escapes a name for logs and messages: control characters as \n, \t or \xNN, bytes that
 * are not UTF-8 as \xNN, backslash as \\; everything else (spaces, unicode) as it is.
 * malloc'd, never NULL. */
char *spool_name_escape(const char *name);

/* Watches incoming/: calls changed(ud) once soon after start (the start rescan), after a
 * short debounce (2 ms, so a burst of renames costs one call) whenever an entry appears in
 * incoming/, and every rescan_ms regardless (libuv can miss events on inotify overflow).
 * When the file system watch cannot be set up (inotify limits), logs a warning and relies
 * on the rescan timer. s must outlive the watch. NULL only for invalid arguments. */
typedef struct spool_watch spool_watch;
spool_watch *spool_watch_start(spool *s, uv_loop_t *loop, int64_t rescan_ms,
                               void (*changed)(void *ud), void *ud);
/* Changes the rescan interval (config reload); the next rescan is rescan_ms from now. */
void spool_watch_set_interval(spool_watch *w, int64_t rescan_ms);
/* Stops calling back at once; closes the handles and frees w once the loop has run their
 * close callbacks. spool_watch_stop(NULL) is a no-op. */
void spool_watch_stop(spool_watch *w);

#endif
