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
#define ID_MAX           31
#define SUM_LEN          16
/* The same bound as a record file's (store.c). */
#define ENTRY_TEXT_MAX (16u << 20)

struct store_journal {
    pthread_mutex_t lock;
    char *dir; /* <state>/jobs */
    size_t rotate_bytes;
    int fd;       /* the open journal file, or -1 */
    uint64_t seq; /* its number, or the last one's; 0 before the first */
    size_t size;
};

static char *jobs_dir(const char *state_dir)
{
    return fsutil_join(state_dir, "jobs");
}

/* A job id as the runner makes them (a ULID) or a test does: letters and digits only, so
 * that it is safe as a file name. */
static bool id_ok(const char *id, size_t len)
{
    if (len == 0 || len > ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return false;
    }
    return true;
}

/* The entry's check: the first 8 bytes of SHA-256 over "id\ntext", in hex. A torn append
 * (a crash part-way, or blocks of zeros after one) never matches. */
static void entry_sum(const char *id, const char *text, size_t len, char out[SUM_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(c, id, strlen(id)) != 1 || EVP_DigestUpdate(c, "\n", 1) != 1 ||
        EVP_DigestUpdate(c, text, len) != 1 || EVP_DigestFinal_ex(c, md, &mdlen) != 1)
        mdlen = 0;
    EVP_MD_CTX_free(c);
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < SUM_LEN / 2; i++) {
        /* Without a digest (out of memory) the sum is all 'z': never valid, so the entry
         * would be ignored; the append that made it fails instead (append_entries). */
        out[2 * i] = mdlen ? hex[md[i] >> 4] : 'z';
        out[2 * i + 1] = mdlen ? hex[md[i] & 15] : 'z';
    }
    out[SUM_LEN] = '\0';
}

/* ---- reading: the newest entry of each job in some journal files ---- */

typedef struct jentry {
    char id[ID_MAX + 1];
    const char *text; /* in one of the set's mappings; not NUL-terminated */
    size_t len;
    size_t order; /* where it was read: later wins */
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
} jset;

static void jset_free(jset *s)
{
    for (size_t i = 0; i < s->n_maps; i++)
        munmap(s->maps[i].addr, s->maps[i].len);
    free(s->maps);
    free(s->e);
    memset(s, 0, sizeof *s);
}

/* Parses one entry at p (end: the buffer's end) into e. Returns the byte after it, or NULL
 * when what is there is not a whole, intact entry: the end of what this file holds. */
static const char *parse_entry(const char *p, const char *end, jentry *e)
{
    size_t magic = strlen(ENTRY_MAGIC);
    if ((size_t)(end - p) < magic || memcmp(p, ENTRY_MAGIC, magic) != 0)
        return NULL;
    p += magic;
    const char *id = p;
    while (p < end && *p != ' ')
        p++;
    if (p == end || !id_ok(id, (size_t)(p - id)))
        return NULL;
    memcpy(e->id, id, (size_t)(p - id));
    e->id[p - id] = '\0';
    p++;
    size_t len = 0;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9' && p - digits < 9)
        len = len * 10 + (size_t)(*p++ - '0');
    if (p == digits || p == end || *p != ' ' || len > ENTRY_TEXT_MAX)
        return NULL;
    p++;
    if ((size_t)(end - p) < SUM_LEN + 1 || p[SUM_LEN] != '\n')
        return NULL;
    const char *sum = p;
    p += SUM_LEN + 1;
    if ((size_t)(end - p) < len + 1 || p[len] != '\n')
        return NULL;
    char want[SUM_LEN + 1];
    entry_sum(e->id, p, len, want);
    if (memcmp(want, sum, SUM_LEN) != 0)
        return NULL;
    e->text = p;
    e->len = len;
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

/* Adds every intact entry of one journal file to s, up to the first that is not. 0 or -errno
 * (the file cannot be read). */
static int read_journal(const char *dir, uint64_t seq, jset *s)
{
    const jmap *m = NULL;
    int r = map_journal(dir, seq, s, &m);
    if (r < 0 || !m)
        return r;
    const char *p = m->addr, *end = p + m->len;
    for (;;) {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 64;
            s->e = xrealloc(s->e, s->cap * sizeof *s->e);
        }
        jentry *e = &s->e[s->n];
        memset(e, 0, sizeof *e);
        p = parse_entry(p, end, e);
        if (!p)
            break;
        e->order = s->n++;
    }
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
        const char *nm = de->d_name;
        if (strlen(nm) != JOURNAL_NAME_LEN || strncmp(nm, JOURNAL_PREFIX, 8) != 0)
            continue;
        char *endp = NULL;
        uint64_t seq = strtoull(nm + 8, &endp, 16);
        if (!endp || *endp || seq == 0 || seq > upto)
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
 * record it holds is durable in its file, so a crash in between replays it again. */
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
    for (size_t i = 0; i < n && r == 0; i++) {
        char name[JOURNAL_NAME_LEN + 1];
        snprintf(name, sizeof name, JOURNAL_PREFIX "%016" PRIx64, seqs[i]);
        char *path = fsutil_join(dir, name);
        if (unlink(path) < 0 && errno != ENOENT)
            r = -errno;
        free(path);
    }
    if (r == 0 && n > 0)
        r = fsutil_fsync_dir(dir);
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
    rp->dir = jobs_dir(state_dir);
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

int store_replay_checkpoint(const store_replay *rp)
{
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

int store_checkpoint(const char *state_dir, uint64_t upto)
{
    store_replay *rp = NULL;
    int r = store_replay_read(state_dir, upto, &rp);
    if (r == 0)
        r = store_replay_checkpoint(rp);
    store_replay_free(rp);
    return r;
}

/* ---- writing ---- */

store_journal *store_journal_new(const char *state_dir, size_t rotate_bytes)
{
    store_journal *jl = xcalloc(1, sizeof *jl);
    pthread_mutex_init(&jl->lock, NULL);
    jl->dir = jobs_dir(state_dir);
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
    return 0;
}

/* Closes the open file; its number, to checkpoint. */
static uint64_t close_current(store_journal *jl)
{
    if (jl->fd < 0)
        return 0;
    close(jl->fd);
    jl->fd = -1;
    return jl->seq;
}

/* An entry's header line: "BJ1 <id> <length> <check>\n". */
#define HEADER_MAX (sizeof ENTRY_MAGIC + ID_MAX + 24 + SUM_LEN + 2)

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

static int batch_prepare(batch_io *b, const store_item *items, size_t n)
{
    static char newline[] = "\n"; /* never written */
    b->headers = xcalloc(n ? n : 1, sizeof *b->headers);
    b->iov = xcalloc(n ? 3 * n : 1, sizeof *b->iov);
    for (size_t i = 0; i < n; i++) {
        size_t len = items[i].len ? items[i].len : strlen(items[i].text);
        if (!id_ok(items[i].job_id, strlen(items[i].job_id)) || len > ENTRY_TEXT_MAX)
            return -EINVAL;
        char sum[SUM_LEN + 1];
        entry_sum(items[i].job_id, items[i].text, len, sum);
        int h = snprintf(b->headers[i], HEADER_MAX, ENTRY_MAGIC "%s %zu %s\n", items[i].job_id, len,
                         sum);
        b->iov[b->cnt++] = (struct iovec){.iov_base = b->headers[i], .iov_len = (size_t)h};
        /* writev only reads the pieces (struct iovec has no const member). */
        union {
            const char *in;
            void *base;
        } text = {.in = items[i].text};
        b->iov[b->cnt++] = (struct iovec){.iov_base = text.base, .iov_len = len};
        b->iov[b->cnt++] = (struct iovec){.iov_base = newline, .iov_len = 1};
        b->bytes += (size_t)h + len + 1;
    }
    return 0;
}

uint64_t store_journal_append(store_journal *jl, store_item *items, size_t n)
{
    batch_io b = {0};
    int r = batch_prepare(&b, items, n);
    uint64_t closed = 0;
    bool in_doubt = false;
    pthread_mutex_lock(&jl->lock);
    if (r == 0 && n > 0 && jl->fd < 0)
        r = open_next(jl);
    if (r == 0 && n > 0) {
        r = writev_all(jl->fd, b.iov, b.cnt);
        if (r == 0)
            r = fdatasync(jl->fd) < 0 ? -errno : 0;
        in_doubt = r < 0;
    }
    if (r == 0)
        jl->size += b.bytes;
    /* A failed write or fdatasync leaves the file in doubt (a torn entry, or pages the
     * kernel may have dropped): nothing more goes into it. Its intact entries replay. */
    if (in_doubt || jl->size >= jl->rotate_bytes)
        closed = close_current(jl);
    pthread_mutex_unlock(&jl->lock);
    free(b.headers);
    free(b.iov);
    for (size_t i = 0; i < n; i++)
        items[i].rc = r;
    return closed;
}

void store_journal_free(store_journal *jl)
{
    if (!jl)
        return;
    close_current(jl);
    pthread_mutex_destroy(&jl->lock);
    free(jl->dir);
    free(jl);
}
