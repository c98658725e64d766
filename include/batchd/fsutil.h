/* fsutil: durable file-system primitives. Every write that must survive a crash goes through
 * fsutil_write_atomic (temp file with O_EXCL, write, fsync, rename, fsync of the directory),
 * and every move through fsutil_rename_durable. Blocking calls: use them off the event loop
 * for large data, or for small records where the fsync is the point. */
#ifndef BATCHD_FSUTIL_H
#define BATCHD_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Writes data to path atomically and durably. mode is the new file's mode. 0 or -errno. */
int fsutil_write_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* The same without the fsync of the directory: the file's content is durable, its name is
 * not until the caller fsyncs the directory, which it does once after writing many files
 * there (store_write_batch, spool_finish_batch). 0 or -errno. */
int fsutil_write_replace(const char *path, const void *data, size_t len, mode_t mode);
/* A write split in phases so that a batch of files shares its journal commits: begin every
 * file (temp file created and written, its writeback started), then sync every one, then
 * commit every one (close, rename over path), then fsync their directories once. The first
 * sync finds the others' data already on its way and its journal commit usually covers
 * theirs; renames made between the syncs would open new transactions for the later syncs to
 * wait on (measured on ext4: a batch of 64 costs about half with the renames after all the
 * syncs). fsutil_write_replace is begin + commit. */
typedef struct fsutil_write {
    int fd;      /* the temp file, open between begin and commit/abort; -1 otherwise */
    bool synced; /* its content is durable */
    int err;     /* a failed sync's -errno, kept for commit (a second fsync could wrongly pass) */
    char *tmp;   /* its path (malloc'd) */
    char *path;  /* where commit renames it (malloc'd) */
} fsutil_write;

/* Creates path's temp file beside it, writes data and starts its writeback (not waiting for
 * it). On failure nothing is left behind and w holds nothing. The fd stays open until
 * commit or abort, so a batch should begin a bounded number at a time. 0 or -errno. */
int fsutil_write_begin(fsutil_write *w, const char *path, const void *data, size_t len,
                       mode_t mode);
/* fsyncs a begun write's temp file. On failure w still holds it: commit (which then fails
 * with the same error) or abort it. 0 or -errno. */
int fsutil_write_sync(fsutil_write *w);
/* Syncs the temp file unless fsutil_write_sync did, closes it and renames it over path: the
 * content is durable, the name not yet (fsync the directory). On failure the temp file is
 * removed. Either way w holds nothing afterwards. 0 or -errno. */
int fsutil_write_commit(fsutil_write *w);
/* Closes and removes the temp file of a begun write. Harmless on a w that holds nothing. */
void fsutil_write_abort(fsutil_write *w);
/* Runs fn(ctx, i) for every i in [0, n) from the calling thread and up to
 * FSUTIL_PARALLEL_MAX - 1 threads of its own, and returns once every call has. For batches
 * of fsyncs that do not depend on each other (the job directories of a claim batch, the
 * temp files of a record batch): the disk then takes their cache flushes together instead
 * of one after another. fn must be safe to run concurrently for different i. Without a
 * thread (pthread_create failing) the calling thread makes every call itself. */
#define FSUTIL_PARALLEL_MAX 8
void fsutil_parallel(size_t n, void (*fn)(void *ctx, size_t i), void *ctx);
/* fsync()s a directory. 0 or -errno. */
int fsutil_fsync_dir(const char *dir);
/* fsync()s the directory that holds path. */
int fsutil_fsync_parent(const char *path);
/* rename(2) then fsync of both parent directories. 0 or -errno. */
int fsutil_rename_durable(const char *from, const char *to);
/* renameat2(RENAME_NOREPLACE): -EEXIST when `to` exists; no fsync. */
int fsutil_rename_noreplace(const char *from, const char *to);
/* mkdir -p with mode for the directories it creates. 0 or -errno. */
int fsutil_mkdir_p(const char *path, mode_t mode);
/* Reads a whole (small) file, up to max bytes, NUL-terminated. 0 or -errno (-EFBIG if
 * larger than max). *out is malloc'd. Does not follow a final symlink when nofollow. */
int fsutil_read_file(const char *path, size_t max, bool nofollow, char **out, size_t *len);
/* Copies a regular file (streaming, fixed memory), then fsyncs the copy. 0 or -errno. */
int fsutil_copy_file(const char *from, const char *to, mode_t mode);
/* Joins two path parts with one '/'. malloc'd. */
char *fsutil_join(const char *a, const char *b);
/* The directory part of path ("." when there is none, "/" for the root). malloc'd. */
char *fsutil_dirname(const char *path);
/* basename without modifying the argument; returns a pointer into path. */
const char *fsutil_basename(const char *path);
/* A file name made of the first head_len bytes of head and then tail, that always fits in
 * NAME_MAX: when it would not, head is cut (never inside a UTF-8 sequence) and followed by
 * "~" and 8 hex digits of a hash of the whole head, so two long heads that share a prefix
 * still get different names. tail (an extension, a ".cleaned.jsonl", a "-2") is kept whole;
 * it must be shorter than NAME_MAX - 16. Any bytes are accepted. malloc'd, never NULL. */
char *fsutil_fit_name(const char *head, size_t head_len, const char *tail);

#endif
