/* zipcheck: see include/batchd/zipcheck.h. Layout per PKWARE APPNOTE.TXT 6.3:
 *   EOCD (4.3.16): sig 50 4b 05 06, disk u16, cd disk u16, entries here u16, entries u16,
 *                  cd size u32, cd offset u32, comment length u16, comment;
 *   ZIP64 locator (4.3.15): sig 50 4b 06 07, cd64 disk u32, ZIP64 EOCD offset u64, disks u32;
 *   ZIP64 EOCD (4.3.14): sig 50 4b 06 06, record size u64 (44 without extensible data),
 *                  versions 2 x u16, disk u32, cd disk u32, entries here u64, entries u64,
 *                  cd size u64, cd offset u64. */
#include "batchd/zipcheck.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define EOCD_LEN    22u
#define EOCD_SIG    0x06054b50u
#define LOC64_LEN   20u
#define LOC64_SIG   0x07064b50u
#define EOCD64_LEN  56u
#define EOCD64_SIG  0x06064b50u
#define CDH_SIG     0x02014b50u
#define CDH_MIN     46u /* a central directory header without name, extra or comment */
#define COMMENT_MAX 65535u

static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const unsigned char *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static int reject(const char **why, const char *text)
{
    if (why)
        *why = text;
    return -EINVAL;
}

/* The EOCD's index in tail: the last signature whose comment reaches exactly to the end.
 * -1 when there is none; *seen says whether any signature was found at all. */
static long find_eocd(const unsigned char *tail, size_t len, bool *seen)
{
    *seen = false;
    size_t lowest = len - EOCD_LEN > COMMENT_MAX ? len - EOCD_LEN - COMMENT_MAX : 0;
    for (size_t i = len - EOCD_LEN + 1; i-- > lowest;) {
        if (rd32(tail + i) != EOCD_SIG)
            continue;
        *seen = true;
        if ((size_t)rd16(tail + i + 20) == len - EOCD_LEN - i)
            return (long)i;
    }
    return -1;
}

typedef struct dir {
    uint64_t entries_here, entries, cd_size, cd_offset, end; /* end: where the cd must end */
    uint32_t disk, cd_disk;
} dir;

/* Reads the ZIP64 end record the locator before the EOCD at `at` (index in tail) names. */
static int read_zip64(const unsigned char *tail, size_t len, uint64_t base, size_t at, dir *d,
                      const char **why)
{
    (void)len;
    if (at < LOC64_LEN || rd32(tail + at - LOC64_LEN) != LOC64_SIG)
        return reject(why, "the end record says ZIP64 but there is no ZIP64 locator before it");
    const unsigned char *loc = tail + at - LOC64_LEN;
    if (rd32(loc + 4) != 0 || rd32(loc + 16) != 1)
        return reject(why, "the ZIP64 locator names another disk (multi-disk archives are not "
                           "supported)");
    uint64_t off = rd64(loc + 8);
    uint64_t loc_pos = base + at - LOC64_LEN;
    /* A version-1 record sits right before the locator. */
    if (off > loc_pos || loc_pos - off != EOCD64_LEN)
        return reject(why, "the ZIP64 end record is not right before its locator (extensible "
                           "data is not supported)");
    if (off < base)
        return reject(why, "the ZIP64 end record lies outside the checked tail");
    const unsigned char *r = tail + (off - base);
    if (rd32(r) != EOCD64_SIG || rd64(r + 4) != EOCD64_LEN - 12)
        return reject(why, "no valid ZIP64 end record where the locator points");
    d->disk = rd32(r + 16);
    d->cd_disk = rd32(r + 20);
    d->entries_here = rd64(r + 24);
    d->entries = rd64(r + 32);
    d->cd_size = rd64(r + 40);
    d->cd_offset = rd64(r + 48);
    d->end = off;
    return 0;
}

static int check_dir(const dir *d, const char **why)
{
    if (d->disk != 0 || d->cd_disk != 0 || d->entries_here != d->entries)
        return reject(why, "a multi-disk archive (not supported)");
    if (d->cd_offset > d->end || d->cd_size > d->end - d->cd_offset)
        return reject(why, "the central directory lies beyond the end record (truncated?)");
    if (d->cd_offset + d->cd_size != d->end)
        return reject(why, "the central directory does not end where the end record starts "
                           "(data missing or inserted)");
    if (d->entries == 0 ? d->cd_size != 0 : d->entries > d->cd_size / CDH_MIN)
        return reject(why, "the entry count does not fit the central directory's size");
    return 0;
}

int zipcheck_tail(const unsigned char *tail, size_t len, uint64_t file_size, zipcheck_info *info,
                  const char **why)
{
    if (!tail || len > file_size)
        return reject(why, "invalid arguments");
    if (len < EOCD_LEN)
        return reject(why, "too short to be a ZIP file");
    uint64_t base = file_size - len; /* file offset of tail[0] */
    bool seen;
    long at = find_eocd(tail, len, &seen);
    if (at < 0)
        return reject(why, seen ? "the end record's comment length does not match the file's "
                                  "end (bytes added or cut off)"
                                : "no end-of-central-directory record (not a ZIP file, or "
                                  "truncated)");
    const unsigned char *e = tail + at;
    dir d = {.disk = rd16(e + 4),
             .cd_disk = rd16(e + 6),
             .entries_here = rd16(e + 8),
             .entries = rd16(e + 10),
             .cd_size = rd32(e + 12),
             .cd_offset = rd32(e + 16),
             .end = base + (uint64_t)at};
    if (d.entries_here == 0xffff || d.entries == 0xffff || d.cd_size == 0xffffffffu ||
        d.cd_offset == 0xffffffffu || d.disk == 0xffff || d.cd_disk == 0xffff) {
        int r = read_zip64(tail, len, base, (size_t)at, &d, why);
        if (r < 0)
            return r;
    }
    int r = check_dir(&d, why);
    if (r < 0)
        return r;
    if (d.entries > 0 && d.cd_offset >= base && d.cd_offset - base + 4 <= len &&
        rd32(tail + (d.cd_offset - base)) != CDH_SIG)
        return reject(why, "no central directory header where the end record points");
    if (info) {
        info->entries = d.entries;
        info->cd_offset = d.cd_offset;
        info->cd_size = d.cd_size;
        info->eocd_offset = base + (uint64_t)at;
        info->comment_len = rd16(e + 20);
        info->zip64 = d.end != base + (uint64_t)at;
    }
    return 0;
}

int zipcheck_buffer(const unsigned char *buf, size_t len, zipcheck_info *info, const char **why)
{
    return zipcheck_tail(buf, len, len, info, why);
}

static int pread_all(int fd, unsigned char *buf, size_t len, off_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO; /* shrank under us */
        done += (size_t)n;
    }
    return 0;
}

int zipcheck_fd(int fd, zipcheck_info *info, const char **why)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = -errno;
        if (why)
            *why = "cannot stat the file";
        return err;
    }
    if (!S_ISREG(st.st_mode))
        return reject(why, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    size_t len = size < ZIPCHECK_TAIL_MAX ? (size_t)size : ZIPCHECK_TAIL_MAX;
    unsigned char *tail = malloc(len ? len : 1);
    if (!tail)
        return reject(why, "out of memory");
    int r = pread_all(fd, tail, len, (off_t)(size - len));
    zipcheck_info got;
    if (r < 0) {
        if (why)
            *why = "cannot read the file";
    } else {
        r = zipcheck_tail(tail, len, size, &got, why);
    }
    free(tail);
    if (r < 0)
        return r;
    /* The directory's first header lies before the tail: its signature is read on its own. */
    if (got.entries > 0 && got.cd_offset < size - len) {
        unsigned char sig[4];
        r = pread_all(fd, sig, sizeof sig, (off_t)got.cd_offset);
        if (r < 0) {
            if (why)
                *why = "cannot read the file";
            return r;
        }
        if (rd32(sig) != CDH_SIG)
            return reject(why, "no central directory header where the end record points");
    }
    if (info)
        *info = got;
    return 0;
}
