/* store: the durable job records under <state>/jobs/<id>.json. One file per job, replaced
 * atomically (temp file, fsync, rename, fsync of the directory) so a crash leaves either
 * the old record or the new one, never a torn one. store_write_batch shares the directory
 * fsync among many records.
 *
 * The daemon writes records through the journal (store_journal_*, store_journal.c) instead:
 * a batch of records is appended to <state>/jobs/journal.<number> (16 hex digits) with one
 * write and one fdatasync, where the files would cost a new inode, two fsyncs and a rename
 * each. Each entry is a line "BJ1 <append> <index> <of> <id> <length> <check>" (the append's
 * number in its file in 16 hex digits, the entry's place in it and how many it holds; check:
 * the first 8 bytes of SHA-256 over the line up to it and the text, in hex), the record's
 * text and a newline. The record files are brought up to date from the journal later (a
 * checkpoint): in the background once a journal file has grown past its rotation size, at a
 * clean stop, and at every start (store_load_all). Since only checkpoints write the files
 * while a journal is in use, a file is never newer than its job's last journal entry, so
 * replaying the journal files in order over the files gives each job's newest record.
 *
 * Appends are acknowledged one at a time, each after its fdatasync, and a file closed cleanly
 * (rotated, or at a stop) ends with a mark "BJE <appends> <check>". So only a file without
 * its mark (open at a crash, or closed after a failed fdatasync) can have a torn last append,
 * anywhere in it: its intact entries replay (a record newer than the world is safe: the
 * runner resolves an intent whose request may not have gone out). A hole that lost an entry of
 * an earlier append, or any hole in a file with its mark, is damage (a changed byte, not a
 * crash): the file is reported and kept for a person to look at, and checkpoints refuse to
 * remove it. */
#ifndef BATCHD_STORE_H
#define BATCHD_STORE_H

#include <stdint.h>

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
    size_t len;         /* in: text's length; 0: strlen(text) */
    int rc;             /* out */
} store_item;
void store_write_batch(const char *state_dir, store_item *items, size_t n);
/* The journal (see above). A journal file is rotated (closed, and a new one opened at the
 * next append) once it holds rotate_bytes (0: STORE_JOURNAL_ROTATE). Opens nothing yet. */
#define STORE_JOURNAL_ROTATE (1u << 20)
typedef struct store_journal store_journal;
store_journal *store_journal_new(const char *state_dir, size_t rotate_bytes);
/* Appends the records and makes them durable (one write, one fdatasync); every items[i].rc
 * receives 0 or -errno (-EINVAL alone for a record the journal cannot hold: a job id that is
 * not a file name, an empty or oversized text). Returns the number of a journal file it
 * closed (full, or in doubt after a failed fdatasync), for store_checkpoint, or 0.
 * Thread-safe; items must not name one job twice. */
uint64_t store_journal_append(store_journal *jl, store_item *items, size_t n);
/* Closes the open file (no checkpoint). NULL is fine. */
void store_journal_free(store_journal *jl);
/* A checkpoint: writes the newest entry of each job in the journal files numbered up to upto
 * (UINT64_MAX: all) into its record file, durably, then removes those journal files, oldest
 * first. Never run two at once, nor one beside store_load_all. 0 or -errno (the journal files
 * not removed yet are kept); -EBADMSG for a damaged file, with *err saying which (malloc'd;
 * NULL otherwise). */
int store_checkpoint(const char *state_dir, uint64_t upto, char **err);
/* What a damaged journal file means, for the message that names it. */
#define STORE_DAMAGE_REASON                                                                        \
    "damaged: records written there are lost, and a job whose newest record was there "            \
    "resumes from an older one; move the file out of the directory once inspected (while it "      \
    "stays, no journal file is removed)"

/* Removes a job's record (durably). 0 or -errno. */
int store_remove(const char *state_dir, const char *job_id);
/* Checkpoints the journal (a failure keeps it for the next checkpoint), then reads every
 * record, calling each(ud, job) with a job the callee owns, in id order (ids sort by claim
 * time): a job's newest journal entry, else its file. A record that cannot be read, or a
 * damaged journal file, is reported through bad(ud, file, reason) and left in place for a
 * person to inspect; what is intact in a damaged journal file still loads. Returns the number
 * of records read or -errno. */
int store_load_all(const char *state_dir, void (*each)(void *ud, job *j),
                   void (*bad)(void *ud, const char *file, const char *reason), void *ud);

#endif
