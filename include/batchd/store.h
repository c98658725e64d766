/* store: the durable job records under <state>/jobs/<id>.json. One file per job, replaced
 * atomically (temp file, fsync, rename, fsync of the directory) so a crash leaves either
 * the old record or the new one, never a torn one. store_write_batch shares the directory
 * fsync among many records. */
#ifndef BATCHD_STORE_H
#define BATCHD_STORE_H

#include <cjson/cJSON.h>

#include "batchd/job.h"

/* Creates <state_dir>/jobs (0700) and removes temp files a crash left behind. 0 or -errno
 * with *err (malloc'd). */
int store_init(const char *state_dir, char **err);
/* Writes the job's record durably. 0 or -errno. */
int store_save(const char *state_dir, const job *j);
/* The same in two halves, so that the slow half (write and fsync) can run off the event
 * loop: store_encode on the loop (reads the job), store_write anywhere (thread-safe). */
char *store_encode(const job *j);
int store_write(const char *state_dir, const char *job_id, const char *text);
/* Many records at once (group commit): each is written to a temporary file, fsynced and
 * renamed into place as store_write does, then the jobs directory is fsynced once for all
 * of them. items[i].rc receives 0 or -errno (a failed directory fsync fails every record
 * of the batch). Thread-safe: no shared state, no logging; items must not name one job
 * twice. */
typedef struct store_item {
    const char *job_id; /* in */
    const char *text;   /* in: store_encode's output */
    int rc;             /* out */
} store_item;
void store_write_batch(const char *state_dir, store_item *items, size_t n);
/* Removes a job's record (durably). 0 or -errno. */
int store_remove(const char *state_dir, const char *job_id);
/* Reads every record, calling each(ud, job) with a job the callee owns, in id order (ids sort
 * by claim time). A record that cannot be read is reported through bad(ud, file, reason) and
 * left in place for a person to inspect. Returns the number of records read or -errno. */
int store_load_all(const char *state_dir, void (*each)(void *ud, job *j),
                   void (*bad)(void *ud, const char *file, const char *reason), void *ud);

#endif
