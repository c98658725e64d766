/* export_name: the names of downloaded ZIPs and the [export] keep decision. Only names of
 * the one form batchd makes are ever pruned: whatever else a person puts into exports/ stays. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchd/export.h"

#define SUFFIX_MAX 1000u
/* 9999-12-31T23:59:59Z */
#define LAST_MS 253402300799999LL

int export_dest_name(int64_t now_ms, bool (*exists)(void *ud, const char *name), void *ud,
                     char *buf, size_t len)
{
    if (now_ms < 0 || now_ms > LAST_MS || !buf || len < EXPORT_NAME_MAX)
        return -EINVAL;
    time_t secs = (time_t)(now_ms / 1000);
    struct tm tm;
    if (!gmtime_r(&secs, &tm))
        return -EINVAL;
    char stamp[24];
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    for (unsigned n = 1; n <= SUFFIX_MAX; n++) {
        if (n == 1)
            snprintf(buf, len, EXPORT_DIR "/%s.zip", stamp);
        else
            snprintf(buf, len, EXPORT_DIR "/%s-%u.zip", stamp, n);
        if (!exists || !exists(ud, buf))
            return 0;
    }
    buf[0] = '\0';
    return -EEXIST;
}

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int num(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* "-N" with N from 2 to SUFFIX_MAX, no leading zero; *out = N. */
static bool parse_suffix(const char *s, size_t n, unsigned *out)
{
    if (n < 2 || n > 5 || s[0] != '-' || s[1] == '0' || !digits(s + 1, n - 1))
        return false;
    int v = num(s + 1, n - 1);
    if (v < 2 || (unsigned)v > SUFFIX_MAX)
        return false;
    *out = (unsigned)v;
    return true;
}

/* YYYYMMDDTHHMMSSZ (16 bytes) as a real UTC time; *ms. */
static bool parse_stamp(const char *s, int64_t *ms)
{
    if (!digits(s, 8) || s[8] != 'T' || !digits(s + 9, 6) || s[15] != 'Z')
        return false;
    struct tm tm = {.tm_year = num(s, 4) - 1900,
                    .tm_mon = num(s + 4, 2) - 1,
                    .tm_mday = num(s + 6, 2),
                    .tm_hour = num(s + 9, 2),
                    .tm_min = num(s + 11, 2),
                    .tm_sec = num(s + 13, 2)};
    struct tm want = tm;
    time_t t = timegm(&tm);
    /* timegm normalises 20261332 into a valid date: only a date that is one as written counts. */
    if (t == (time_t)-1 || tm.tm_year != want.tm_year || tm.tm_mon != want.tm_mon ||
        tm.tm_mday != want.tm_mday || tm.tm_hour != want.tm_hour || tm.tm_min != want.tm_min ||
        tm.tm_sec != want.tm_sec || t < 0)
        return false;
    *ms = (int64_t)t * 1000;
    return true;
}

bool export_name_parse(const char *base, int64_t *at_ms, unsigned *suffix)
{
    if (!base)
        return false;
    size_t len = strlen(base);
    if (len < 20 || strcmp(base + len - 4, ".zip") != 0)
        return false;
    int64_t ms;
    unsigned sfx = 1;
    if (!parse_stamp(base, &ms))
        return false;
    if (len != 20 && !parse_suffix(base + 16, len - 20, &sfx))
        return false;
    if (at_ms)
        *at_ms = ms;
    if (suffix)
        *suffix = sfx;
    return true;
}

typedef struct cand {
    size_t idx;
    int64_t at;
    unsigned suffix;
} cand;

/* Newest first: later time, then the higher suffix (made later within the same second). */
static int newest_first(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->at != y->at)
        return x->at < y->at ? 1 : -1;
    if (x->suffix != y->suffix)
        return x->suffix < y->suffix ? 1 : -1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

static int by_index(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : (x > y);
}

size_t export_prune(const char *const *names, size_t n, unsigned keep, const char *protect,
                    size_t *out)
{
    if (keep == 0 || !names || n == 0)
        return 0;
    cand *c = calloc(n, sizeof *c);
    if (!c)
        return 0; /* removing nothing is always safe */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t at;
        unsigned sfx;
        if (!export_name_parse(names[i], &at, &sfx))
            continue;
        c[m++] = (cand){.idx = i, .at = at, .suffix = sfx};
    }
    qsort(c, m, sizeof *c, newest_first);
    size_t removed = 0;
    for (size_t i = keep; i < m; i++) {
        if (protect && strcmp(names[c[i].idx], protect) == 0)
            continue;
        out[removed++] = c[i].idx;
    }
    free(c);
    qsort(out, removed, sizeof *out, by_index);
    return removed;
}
