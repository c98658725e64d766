/* store_journal: the record journal and its checkpoints (include/batchd/store.h). */
#include "batchd/fsutil.h"
#include "batchd/store.h"
#include "batchd/util.h"
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/evp.h>

#define JOURNAL_PREFIX   "journal."
#define JOURNAL_NAME_LEN (sizeof JOURNAL_PREFIX - 1 + 16)
#define ENTRY_MAGIC      "BJ1 "
#define END_MAGIC        "BJE "
#define ID_MAX           31
#define SUM_LEN          16

struct store_journal {
    pthread_mutex_t lock;
    char *dir; /* <state>/jobs */
    size_t rotate_bytes;
    int fd;       /* the open journal file, or -1 */
    uint64_t seq; /* its number, or the last one's; 0 before the first */
    size_t size;
    uint64_t batch; /* the appends made to it */
};

/* A job id as job_from_record takes it (job.c): letters, digits, '-' and '_', under 32
 * bytes, so that it is safe as a file name. */
static bool id_ok(const char *id, size_t len)
{
    if (len == 0 || len > ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* The entry's check: the first 8 bytes of SHA-256 over its header up to the check (head)
 * and its text, in hex. A torn append (a crash part-way, or blocks of zeros after one) never
 * matches. 0, or -ENOMEM when no digest could be made (an entry is then neither written nor
 * judged). */
static int entry_sum(const char *head, size_t head_len, const char *text, size_t len,
                     char out[SUM_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(c, head, head_len) == 1 && EVP_DigestUpdate(c, text, len) == 1 &&
              EVP_DigestFinal_ex(c, md, &mdlen) == 1 && mdlen >= SUM_LEN / 2;
    EVP_MD_CTX_free(c);
    if (!ok)
        return -ENOMEM;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < SUM_LEN / 2; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[SUM_LEN] = '\0';
    return 0;
}

/* ---- reading: the newest entry of each job in some journal files ---- */

typedef struct jentry {
    char id[ID_MAX + 1];
    const char *text; /* in one of the set's mappings; not NUL-terminated */
    size_t len;
    size_t order;     /* where it was read: later wins */
    uint64_t batch;   /* the append it came in, numbered from 1 in its file */
    size_t index, of; /* its place in that append, and how many the append held */
} jentry;

/* The journal files are mapped, not read into the heap: a checkpoint on a pool thread then
 * leaves no grown malloc arena behind, and the pages are the page cache's. */
typedef struct jmap {
    void *addr;
    size_t len;
} jmap;

typedef struct jset {
    jentry *e;
    size_t n, cap;
    jmap *maps;
    size_t n_maps;
    char *damage; /* the first damaged file's description (malloc'd), or NULL */
} jset;

static void jset_free(jset *s)
{
    for (size_t i = 0; i < s->n_maps; i++)
        munmap(s->maps[i].addr, s->maps[i].len);
    free(s->maps);
    free(s->e);
    free(s->damage);
    memset(s, 0, sizeof *s);
}

/* Reads an unsigned number of at most max_digits digits in base 10 or 16 (lower case) at
 * *p, which it moves past them. */
static bool parse_num(const char **p, const char *end, int base, int max_digits, uint64_t *out)
{
    uint64_t v = 0;
    int n = 0;
    for (; *p < end && n < max_digits; (*p)++, n++) {
        char c = **p;
        int d = c >= '0' && c <= '9'                 ? c - '0'
                : base == 16 && c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                     : -1;
        if (d < 0)
            break;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    *out = v;
    return n > 0;
}

/* Reads " " then a field at *p. */
static bool parse_field(const char **p, const char *end, int base, int max_digits, uint64_t *out)
{
    if (*p >= end || **p != ' ')
        return false;
    (*p)++;
    return parse_num(p, end, base, max_digits, out);
}

/* Moves *p past magic when it starts there. */
static bool skip_magic(const char **p, const char *end, const char *magic)
{
    size_t n = strlen(magic);
    if ((size_t)(end - *p) < n || memcmp(*p, magic, n) != 0)
        return false;
    *p += n;
    return true;
}

/* Checks " <check>\n" at p against the digest of head (head_len bytes) and text, as
 * entry_sum makes it. Returns the byte after it, or NULL (*err = -ENOMEM when that could not
 * be told). */
static const char *check_sum(const char *p, const char *end, const char *head, size_t head_len,
                             const char *text, size_t len, int *err)
{
    if ((size_t)(end - p) < SUM_LEN + 2 || p[0] != ' ' || p[SUM_LEN + 1] != '\n')
        return NULL;
    char want[SUM_LEN + 1];
    *err = entry_sum(head, head_len, text, len, want);
    if (*err < 0 || memcmp(want, p + 1, SUM_LEN) != 0)
        return NULL;
    return p + SUM_LEN + 2;
}

/* Parses one entry at p (end: the buffer's end) into e: "BJ1 <append> <index> <of> <id>
 * <length> <check>\n<text>\n" (store.h). Returns the byte after it, or NULL when what is
 * there is not a whole, intact entry (*err = -ENOMEM when that could not be told). */
static const char *parse_entry(const char *p, const char *end, jentry *e, int *err)
{
    const char *head = p;
    if (!skip_magic(&p, end, ENTRY_MAGIC))
        return NULL;
    uint64_t batch = 0, index = 0, of = 0, len = 0;
    if (!parse_num(&p, end, 16, 16, &batch) || !parse_field(&p, end, 10, 9, &index) ||
        !parse_field(&p, end, 10, 9, &of) || batch == 0 || index >= of || p >= end || *p != ' ')
        return NULL;
    const char *id = ++p;
    while (p < end && *p != ' ')
        p++;
    if (p == end || !id_ok(id, (size_t)(p - id)))
        return NULL;
    memcpy(e->id, id, (size_t)(p - id));
    e->id[p - id] = '\0';
    /* A record is never empty; a length of 0 is not an entry. */
    if (!parse_field(&p, end, 10, 9, &len) || len == 0 || len > STORE_RECORD_MAX)
        return NULL;
    /* The check comes before the text it covers: the text's place is known from its length. */
    const char *text = p + SUM_LEN + 2;
    if ((size_t)(end - p) < SUM_LEN + 2 || (size_t)(end - text) < len + 1 || text[len] != '\n' ||
        !check_sum(p, end, head, (size_t)(p - head), text, len, err))
        return NULL;
    p = text;
    e->text = p;
    e->len = len;
    e->batch = batch;
    e->index = index;
    e->of = of;
    return p + len + 1;
}

/* Maps one journal file (read-only) into s->maps. 0 with *m (NULL for an empty file), or
 * -errno. */
static int map_journal(const char *dir, uint64_t seq, jset *s, const jmap **m)
{
    char name[JOURNAL_NAME_LEN + 1];
    snprintf(name, sizeof name, JOURNAL_PREFIX "%016" PRIx64, seq);
    char *path = fsutil_join(dir, name);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    free(path);
    *m = NULL;
    if (fd < 0)
        return -errno;
    struct stat st;
    int r = fstat(fd, &st) < 0 ? -errno : !S_ISREG(st.st_mode) ? -EINVAL : 0;
    /* Mapped whatever its size (rotation keeps it near STORE_JOURNAL_ROTATE): a bound here
     * would stop the start that must replay it. */
    if (r == 0 && (uint64_t)st.st_size > SIZE_MAX / 2)
        r = -EFBIG;
    void *addr = MAP_FAILED;
    if (r == 0 && st.st_size > 0) {
        addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (addr == MAP_FAILED)
            r = -errno;
    }
    close(fd);
    if (r < 0 || addr == MAP_FAILED)
        return r;
    s->maps = xrealloc(s->maps, (s->n_maps + 1) * sizeof *s->maps);
    s->maps[s->n_maps] = (jmap){.addr = addr, .len = (size_t)st.st_size};
    *m = &s->maps[s->n_maps++];
    return 0;
}

/* Whether the entries a hole lost had been acknowledged. before is the intact entry before
 * it (NULL at the file's start), after the one after it; max the file's last append. Appends
 * go one at a time and each is acknowledged only after its fdatasync, so only the last one
 * can be torn by a crash, and anywhere in it (pages reach the disk in no fixed order). An
 * entry missing from an earlier append is damage: a record once durable is gone. */
static bool hole_lost_acknowledged(const jentry *before, const jentry *after, uint64_t max)
{
    uint64_t b1 = before ? before->batch : 0;
    bool b1_whole = !before || before->index + 1 == before->of;
    if (b1 == after->batch)
        return b1 < max; /* entries of one append lost in between */
    if (!b1_whole || after->batch > b1 + 1)
        return true; /* the end of an earlier append, or whole appends, lost */
    return after->index > 0 && after->batch < max; /* the start of an earlier append lost */
}

/* Moves p past what is not an intact entry, to the next "BJ1 " or "BJE " (or the end). A
 * record's text cannot fake one: JSON keeps newlines out of its strings, and a header ends
 * with one. */
static const char *skip_to_next(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        p = memmem(p, (size_t)(end - p), "BJ", 2);
        if (!p)
            return end;
        if ((size_t)(end - p) >= 4 && (p[2] == '1' || p[2] == 'E') && p[3] == ' ')
            return p;
    }
    return end;
}

/* The end mark of a file closed cleanly: "BJE <appends> <check>\n", the number of appends
 * it holds in 16 hex digits, and the check over "BJE <appends>". Written after the last
 * append's fdatasync, so a file that has one holds every append whole. Returns the byte
 * after it with *appends, or NULL. */
static const char *parse_end_mark(const char *p, const char *end, uint64_t *appends, int *err)
{
    const char *head = p;
    if (!skip_magic(&p, end, END_MAGIC))
        return NULL;
    const char *digits = p;
    if (!parse_num(&p, end, 16, 16, appends) || p - digits != 16)
        return NULL;
    return check_sum(p, end, head, (size_t)(p - head), "", 0, err);
}

/* A stretch of a file that holds no intact entry, followed by one that is. */
typedef struct hole {
    size_t at;    /* where it starts in the file */
    size_t after; /* the index in the set of the intact entry after it */
} hole;

/* Whether one file's holes (tail: where a hole at the end starts, or SIZE_MAX) lost an
 * acknowledged entry. A file
 * with its end mark (sealed, with its number of appends) must hold every append whole. One
 * without it may have been open at a crash, or closed in doubt after a failed fdatasync: its
 * last append may be torn, anywhere in it (pages reach the disk in no fixed order), and
 * nothing else. Returns the offset of the first damage, or SIZE_MAX. */
static size_t first_damage(const jset *s, size_t first, const hole *holes, size_t n_holes,
                           size_t tail, uint64_t max, bool sealed, uint64_t appends)
{
    if (sealed && (tail != SIZE_MAX || max != appends))
        return tail != SIZE_MAX ? tail : 0;
    for (size_t h = 0; h < n_holes; h++) {
        size_t after = holes[h].after;
        const jentry *before = after > first ? &s->e[after - 1] : NULL;
        if (sealed || hole_lost_acknowledged(before, &s->e[after], max))
            return holes[h].at;
    }
    return SIZE_MAX;
}

/* Adds every intact entry of one journal file to s. What is not intact is passed over up to
 * the next entry that is. A hole that lost an acknowledged entry (first_damage) is damage,
 * described in s->damage (the first one only) for the caller. 0 or -errno (the file cannot
 * be read). */
static int read_journal(const char *dir, uint64_t seq, jset *s)
{
    const jmap *m = NULL;
    int r = map_journal(dir, seq, s, &m);
    if (r < 0 || !m)
        return r;
    const char *start = m->addr, *p = start, *end = start + m->len;
    size_t first = s->n;
    hole *holes = NULL;
    size_t n_holes = 0;
    const char *gap = NULL;
    uint64_t max = 0, appends = 0;
    bool sealed = false;
    while (p < end) {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 64;
            s->e = xrealloc(s->e, s->cap * sizeof *s->e);
        }
        jentry *e = &s->e[s->n];
        memset(e, 0, sizeof *e);
        int err = 0;
        const char *next = parse_entry(p, end, e, &err);
        const char *mark = next || err < 0 ? NULL : parse_end_mark(p, end, &appends, &err);
        if (err < 0) {
            free(holes);
            return err;
        }
        if (mark) {
            /* Nothing follows an end mark: what does is a hole at the end. */
            sealed = true;
            p = mark;
            break;
        }
        if (!next) {
            gap = gap ? gap : p;
            p = skip_to_next(p, end);
            continue;
        }
        if (gap) {
            holes = xrealloc(holes, (n_holes + 1) * sizeof *holes);
            holes[n_holes++] = (hole){.at = (size_t)(gap - start), .after = s->n};
        }
        gap = NULL;
        e->order = s->n++;
        max = e->batch > max ? e->batch : max;
        p = next;
    }
    size_t tail = gap       ? (size_t)(gap - start)
                  : p < end ? (size_t)(p - start) /* after the end mark */
                            : SIZE_MAX;
    size_t at = first_damage(s, first, holes, n_holes, tail, max, sealed, appends);
    if (at != SIZE_MAX && !s->damage)
        s->damage = xasprintf("%s/" JOURNAL_PREFIX "%016" PRIx64 " (at byte %zu)", dir, seq, at);
    free(holes);
    return 0;
}

static int cmp_entries(const void *a, const void *b)
{
    const jentry *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

/* Keeps only the newest entry of each job, sorted by id. */
static void jset_newest(jset *s)
{
    if (s->n == 0)
        return;
    qsort(s->e, s->n, sizeof *s->e, cmp_entries);
    size_t out = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (i + 1 < s->n && strcmp(s->e[i].id, s->e[i + 1].id) == 0)
            continue; /* a newer one follows */
        s->e[out++] = s->e[i];
    }
    s->n = out;
}

/* "journal." and exactly 16 lower-case hex digits (as the files are named), numbered from 1:
 * any other name is not a journal file, and is left alone. */
static bool journal_seq(const char *name, uint64_t *seq)
{
    size_t len = strlen(name);
    const char *p = name + strlen(JOURNAL_PREFIX), *end = name + len;
    uint64_t v = 0;
    if (len != JOURNAL_NAME_LEN || strncmp(name, JOURNAL_PREFIX, strlen(JOURNAL_PREFIX)) != 0 ||
        !parse_num(&p, end, 16, 16, &v) || p != end)
        return false;
    *seq = v;
    return v > 0 && v < UINT64_MAX; /* open_next numbers the next one */
}

static int cmp_seqs(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The numbers of the journal files in dir, ascending, those up to upto only. 0 or -errno. */
static int list_journals(const char *dir, uint64_t upto, uint64_t **seqs, size_t *n)
{
    *seqs = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t seq = 0;
        if (!journal_seq(de->d_name, &seq) || seq > upto)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            *seqs = xrealloc(*seqs, cap * sizeof **seqs);
        }
        (*seqs)[(*n)++] = seq;
    }
    closedir(d);
    if (*n)
        qsort(*seqs, *n, sizeof **seqs, cmp_seqs);
    return 0;
}

/* Reads the journal files numbered in seqs into s (newest entry per job). 0 or -errno. */
static int collect(const char *dir, const uint64_t *seqs, size_t n, jset *s)
{
    for (size_t i = 0; i < n; i++) {
        int r = read_journal(dir, seqs[i], s);
        if (r < 0) {
            jset_free(s);
            return r;
        }
    }
    jset_newest(s);
    return 0;
}

/* Writes s into the record files, then removes the journal files: each only once every
 * record it holds is durable in its file, so a crash in between replays it again. A failure
 * keeps the files not removed yet. */
static int checkpoint_set(const char *state_dir, const char *dir, const jset *s,
                          const uint64_t *seqs, size_t n)
{
    store_item *items = xcalloc(s->n ? s->n : 1, sizeof *items);
    for (size_t i = 0; i < s->n; i++)
        items[i] = (store_item){.job_id = s->e[i].id, .text = s->e[i].text, .len = s->e[i].len};
    store_write_batch(state_dir, items, s->n);
    int r = 0;
    for (size_t i = 0; i < s->n && r == 0; i++)
        r = items[i].rc;
    free(items);
    /* Oldest first, each removal durable before the next: whatever a crash leaves is the
     * newest files, whose entries are at least as new as the record files now. */
    for (size_t i = 0; i < n && r == 0; i++) {
        char name[JOURNAL_NAME_LEN + 1];
        snprintf(name, sizeof name, JOURNAL_PREFIX "%016" PRIx64, seqs[i]);
        char *path = fsutil_join(dir, name);
        if (unlink(path) < 0 && errno != ENOENT)
            r = -errno;
        free(path);
        if (r == 0)
            r = fsutil_fsync_dir(dir);
    }
    return r;
}

struct store_replay {
    char *state_dir;
    char *dir;
    uint64_t *seqs;
    size_t n_seqs;
    jset s;
};

int store_replay_read(const char *state_dir, uint64_t upto, store_replay **out)
{
    store_replay *rp = xcalloc(1, sizeof *rp);
    rp->state_dir = xstrdup(state_dir);
    rp->dir = store_jobs_dir(state_dir);
    int r = list_journals(rp->dir, upto, &rp->seqs, &rp->n_seqs);
    if (r == 0)
        r = collect(rp->dir, rp->seqs, rp->n_seqs, &rp->s);
    if (r < 0) {
        store_replay_free(rp);
        rp = NULL;
    }
    *out = rp;
    return r;
}

size_t store_replay_count(const store_replay *rp)
{
    return rp->s.n;
}

const char *store_replay_id(const store_replay *rp, size_t i)
{
    return rp->s.e[i].id;
}

const char *store_replay_text(const store_replay *rp, const char *id, size_t *len)
{
    size_t lo = 0, hi = rp->s.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(rp->s.e[mid].id, id);
        if (c == 0) {
            *len = rp->s.e[mid].len;
            return rp->s.e[mid].text;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *store_replay_damage(const store_replay *rp)
{
    return rp->s.damage;
}

int store_replay_checkpoint(const store_replay *rp)
{
    /* A damaged file stays for a person to look at: its records are not all there. */
    if (rp->s.damage)
        return -EBADMSG;
    return rp->n_seqs ? checkpoint_set(rp->state_dir, rp->dir, &rp->s, rp->seqs, rp->n_seqs) : 0;
}

void store_replay_free(store_replay *rp)
{
    if (!rp)
        return;
    jset_free(&rp->s);
    free(rp->seqs);
    free(rp->dir);
    free(rp->state_dir);
    free(rp);
}

int store_checkpoint(const char *state_dir, uint64_t upto, char **err)
{
    *err = NULL;
    store_replay *rp = NULL;
    int r = store_replay_read(state_dir, upto, &rp);
    if (r == 0) {
        r = store_replay_checkpoint(rp);
        if (store_replay_damage(rp))
            *err = xstrdup(store_replay_damage(rp));
    }
    store_replay_free(rp);
    return r;
}

/* ---- writing ---- */

store_journal *store_journal_new(const char *state_dir, size_t rotate_bytes)
{
    store_journal *jl = xcalloc(1, sizeof *jl);
    pthread_mutex_init(&jl->lock, NULL);
    jl->dir = store_jobs_dir(state_dir);
    jl->rotate_bytes = rotate_bytes ? rotate_bytes : STORE_JOURNAL_ROTATE;
    jl->fd = -1;
    return jl;
}

/* Opens the next journal file, numbered after every one in the directory (an earlier run's
 * that a checkpoint has not removed yet replays before it). Its name is made durable before
 * anything is appended: an fdatasync of the file does not cover its directory entry. */
static int open_next(store_journal *jl)
{
    if (jl->seq == 0) {
        uint64_t *seqs = NULL;
        size_t n = 0;
        int r = list_journals(jl->dir, UINT64_MAX, &seqs, &n);
        if (r < 0)
            return r;
        jl->seq = n ? seqs[n - 1] : 0;
        free(seqs);
    }
    char name[JOURNAL_NAME_LEN + 1];
    snprintf(name, sizeof name, JOURNAL_PREFIX "%016" PRIx64, jl->seq + 1);
    char *path = fsutil_join(jl->dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    int r = fd < 0 ? -errno : fsutil_fsync_dir(jl->dir);
    if (fd >= 0 && r < 0) {
        close(fd);
        (void)unlink(path);
        fd = -1;
    }
    free(path);
    /* The number is used up either way: an O_EXCL clash (a file we did not list) moves on. */
    jl->seq++;
    if (fd < 0)
        return r;
    jl->fd = fd;
    jl->size = 0;
    jl->batch = 0;
    return 0;
}

static int writev_all(int fd, struct iovec *iov, size_t cnt);

/* Closes the open file; its number, to checkpoint. A file closed cleanly gets its end mark
 * (parse_end_mark) first, so that a reader holds every append in it to be whole; one closed
 * in doubt does not. A mark that fails to be written only makes the reader less strict. */
static uint64_t close_current(store_journal *jl, bool seal)
{
    if (jl->fd < 0)
        return 0;
    if (seal) {
        char mark[sizeof END_MAGIC + 16 + SUM_LEN + 3];
        int hl = snprintf(mark, sizeof mark, END_MAGIC "%016" PRIx64, jl->batch);
        char sum[SUM_LEN + 1];
        if (entry_sum(mark, (size_t)hl, "", 0, sum) == 0) {
            hl += snprintf(mark + hl, sizeof mark - (size_t)hl, " %s\n", sum);
            struct iovec iov = {.iov_base = mark, .iov_len = (size_t)hl};
            if (writev_all(jl->fd, &iov, 1) == 0)
                (void)fdatasync(jl->fd);
        }
    }
    close(jl->fd);
    jl->fd = -1;
    return jl->seq;
}

/* An entry's header line: "BJ1 <append> <index> <of> <id> <length> <check>\n". */
#define HEADER_MAX (sizeof ENTRY_MAGIC + 16 + 3 * 24 + ID_MAX + SUM_LEN + 4)

/* Pieces per writev: Linux takes up to 1024 (UIO_MAXIOV). */
#define WRITEV_MAX 1024

/* writev of every piece, going on after a short write. 0 or -errno. */
static int writev_all(int fd, struct iovec *iov, size_t cnt)
{
    while (cnt > 0) {
        int now = cnt > WRITEV_MAX ? WRITEV_MAX : (int)cnt;
        ssize_t w = writev(fd, iov, now);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* The entries of a batch as header, text and newline pieces (no copy of the texts: a batch of
 * two hundred records would otherwise grow a pool thread's malloc arena by as much). */
typedef struct batch_io {
    char (*headers)[HEADER_MAX];
    struct iovec *iov;
    size_t cnt, bytes;
} batch_io;

static size_t item_len(const store_item *it)
{
    return it->len ? it->len : strlen(it->text);
}

/* An item the journal cannot hold fails alone: a job id that is not a file name, an empty
 * or oversized record. */
static bool item_ok(const store_item *it)
{
    size_t len = item_len(it);
    return id_ok(it->job_id, strlen(it->job_id)) && len > 0 && len <= STORE_RECORD_MAX;
}

/* Marks what the journal cannot hold (item_ok) with rc -EINVAL, the rest with 0. Returns how
 * many it can. */
static size_t mark_items(store_item *items, size_t n)
{
    size_t of = 0;
    for (size_t i = 0; i < n; i++) {
        items[i].rc = item_ok(&items[i]) ? 0 : -EINVAL;
        of += items[i].rc == 0;
    }
    return of;
}

/* Lays out the of items mark_items left at rc 0 as append number batch. 0 or -ENOMEM. */
static int batch_prepare(batch_io *b, const store_item *items, size_t n, size_t of, uint64_t batch)
{
    static char newline[] = "\n"; /* never written */
    size_t index = 0;
    b->headers = xcalloc(of ? of : 1, sizeof *b->headers);
    b->iov = xcalloc(of ? 3 * of : 1, sizeof *b->iov);
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc < 0)
            continue;
        size_t len = item_len(&items[i]);
        char *h = b->headers[index];
        int hl = snprintf(h, HEADER_MAX, ENTRY_MAGIC "%016" PRIx64 " %zu %zu %s %zu", batch, index,
                          of, items[i].job_id, len);
        char sum[SUM_LEN + 1];
        if (entry_sum(h, (size_t)hl, items[i].text, len, sum) < 0)
            return -ENOMEM;
        hl += snprintf(h + hl, HEADER_MAX - (size_t)hl, " %s\n", sum);
        /* writev only reads the pieces (struct iovec has no const member). */
        union {
            const char *in;
            void *base;
        } text = {.in = items[i].text};
        b->iov[b->cnt++] = (struct iovec){.iov_base = h, .iov_len = (size_t)hl};
        b->iov[b->cnt++] = (struct iovec){.iov_base = text.base, .iov_len = len};
        b->iov[b->cnt++] = (struct iovec){.iov_base = newline, .iov_len = 1};
        b->bytes += (size_t)hl + len + 1;
        index++;
    }
    return 0;
}

/* Writes and syncs a laid-out batch into the open file (under the lock). A failed write is
 * cut off again when it can be, and the file goes on (a full disk must not leave a trail of
 * new files); a failed fdatasync, or a write that cannot be cut off, leaves the file in doubt
 * (a torn entry, or pages the kernel may have dropped) and it is closed: *closed is its
 * number, to checkpoint. Its intact entries replay. */
static int append_locked(store_journal *jl, batch_io *b, uint64_t *closed)
{
    int r = jl->fd < 0 ? open_next(jl) : 0;
    if (r < 0)
        return r;
    r = writev_all(jl->fd, b->iov, b->cnt);
    bool in_doubt = false;
    if (r < 0)
        in_doubt = ftruncate(jl->fd, (off_t)jl->size) < 0;
    else if (fdatasync(jl->fd) < 0) {
        r = -errno;
        in_doubt = true;
    }
    if (r == 0) {
        jl->size += b->bytes;
        jl->batch++;
    }
    if (in_doubt || jl->size >= jl->rotate_bytes)
        *closed = close_current(jl, !in_doubt);
    return r;
}

uint64_t store_journal_append(store_journal *jl, store_item *items, size_t n)
{
    uint64_t closed = 0;
    batch_io b = {0};
    size_t of = mark_items(items, n);
    pthread_mutex_lock(&jl->lock);
    /* Numbered under the lock: appends reach the file in the order of their numbers. The
     * number a file's next append gets is only known once one is open. */
    int r = jl->fd < 0 ? open_next(jl) : 0;
    if (r == 0)
        r = batch_prepare(&b, items, n, of, jl->batch + 1);
    if (r == 0 && b.cnt > 0)
        r = append_locked(jl, &b, &closed);
    pthread_mutex_unlock(&jl->lock);
    free(b.headers);
    free(b.iov);
    for (size_t i = 0; i < n; i++)
        if (items[i].rc == 0)
            items[i].rc = r;
    return closed;
}

void store_journal_free(store_journal *jl)
{
    if (!jl)
        return;
    close_current(jl, true);
    pthread_mutex_destroy(&jl->lock);
    free(jl->dir);
    free(jl);
}
