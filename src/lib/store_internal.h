/* store's private interface between its files: store.c (the record files), store_journal.c
 * (the journal and its checkpoints, which write through store.c) and store_load.c (the load
 * at start, which reads through store_journal.c). */
#ifndef BATCHD_STORE_INTERNAL_H
#define BATCHD_STORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* The largest record text read back, from a file or the journal. */
#define STORE_RECORD_MAX (16u << 20)

/* "<state_dir>/jobs" (malloc'd). */
char *store_jobs_dir(const char *state_dir);

typedef struct store_replay store_replay;
/* Reads the journal files numbered up to upto. 0 with *out, or -errno (nothing to free). */
int store_replay_read(const char *state_dir, uint64_t upto, store_replay **out);
/* Its jobs, sorted by id. */
size_t store_replay_count(const store_replay *rp);
const char *store_replay_id(const store_replay *rp, size_t i);
/* The newest entry of job id (*len bytes, not NUL-terminated), or NULL. Owned by rp. */
const char *store_replay_text(const store_replay *rp, const char *id, size_t *len);
/* A description of the first damaged journal file (store.h), or NULL. */
const char *store_replay_damage(const store_replay *rp);
/* Writes every entry into its record file, then removes the journal files read. 0 or -errno
 * (-EBADMSG for a damaged file, which is kept). */
int store_replay_checkpoint(const store_replay *rp);
void store_replay_free(store_replay *rp);

#endif
