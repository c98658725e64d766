/* zipcheck: is a downloaded file a whole ZIP? Checks the end-of-central-directory record
 * (EOCD) at the file's end, the part a truncated or padded download breaks: the record is
 * found within the last 64 KiB + 22 bytes, its comment reaches exactly to the end of the file,
 * the central directory lies inside the file and ends where the EOCD (or the ZIP64 end record)
 * starts, and the entry count fits the directory's size. Single-disk archives only; a ZIP64
 * EOCD locator is followed to a version-1 ZIP64 end record (44 bytes, no extensible data), any
 * other form is rejected with a reason. The entries themselves are not read. */
#ifndef BATCHD_ZIPCHECK_H
#define BATCHD_ZIPCHECK_H

#include <stddef.h>
#include <stdint.h>

/* How much of a file's end the check reads: the EOCD with the longest comment, the ZIP64
 * locator (20 bytes) and a version-1 ZIP64 end record (56 bytes) before it. */
#define ZIPCHECK_TAIL_MAX (22u + 65535u + 20u + 56u)

typedef struct zipcheck_info {
    uint64_t entries;     /* central directory entries */
    uint64_t cd_offset;   /* where the central directory starts */
    uint64_t cd_size;     /* its size in bytes */
    uint64_t eocd_offset; /* where the EOCD record starts */
    unsigned comment_len; /* the archive comment's length */
    int zip64;            /* 1 when the sizes came from a ZIP64 end record */
} zipcheck_info;

/* The check on the last len bytes (tail) of a file of file_size bytes (len <= file_size;
 * pass the whole file as tail with len == file_size). Returns 0 and fills *info (may be NULL),
 * or -EINVAL with *why (may be NULL) set to a static English reason. The first central
 * directory header's signature is checked when it lies within the tail. Pure. */
int zipcheck_tail(const unsigned char *tail, size_t len, uint64_t file_size, zipcheck_info *info,
                  const char **why);
/* The same on a whole file in memory (tests and the fuzzer). */
int zipcheck_buffer(const unsigned char *buf, size_t len, zipcheck_info *info, const char **why);
/* The same on an open regular file: fstat, pread of its last ZIPCHECK_TAIL_MAX bytes (and of
 * the first directory header's signature when it lies before them). -EINVAL with *why for a
 * file that is not a whole ZIP; another negative errno (why says so) when it cannot be read. */
int zipcheck_fd(int fd, zipcheck_info *info, const char **why);

#endif
