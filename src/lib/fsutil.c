/* fsutil: see include/batchd/fsutil.h. */
#include "batchd/fsutil.h"
#include "batchd/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *fsutil_join(const char *a, const char *b)
{
    size_t la = strlen(a);
    while (la > 1 && a[la - 1] == '/')
        la--;
    while (*b == '/')
        b++;
    return xasprintf("%.*s/%s", (int)la, a, b);
}

const char *fsutil_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

char *fsutil_dirname(const char *path)
{
    const char *s = strrchr(path, '/');
    if (!s)
        return xstrdup(".");
    if (s == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(s - path));
}

typedef struct parallel_run {
    atomic_size_t next;
    size_t n;
    void (*fn)(void *ctx, size_t i);
    void *ctx;
} parallel_run;

static void *parallel_worker(void *arg)
{
    parallel_run *p = arg;
    for (size_t i; (i = atomic_fetch_add(&p->next, 1)) < p->n;)
        p->fn(p->ctx, i);
    return NULL;
}

void fsutil_parallel(size_t n, void (*fn)(void *ctx, size_t i), void *ctx)
{
    parallel_run p = {.n = n, .fn = fn, .ctx = ctx};
    atomic_init(&p.next, 0);
    pthread_t th[FSUTIL_PARALLEL_MAX - 1];
    size_t want = n < FSUTIL_PARALLEL_MAX ? (n > 0 ? n - 1 : 0) : FSUTIL_PARALLEL_MAX - 1;
    size_t started = 0;
    while (started < want && pthread_create(&th[started], NULL, parallel_worker, &p) == 0)
        started++;
    parallel_worker(&p);
    for (size_t k = 0; k < started; k++)
        pthread_join(th[k], NULL);
}

int fsutil_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int fsutil_fsync_parent(const char *path)
{
    char *p = fsutil_dirname(path);
    int r = fsutil_fsync_dir(p);
    free(p);
    return r;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

char *fsutil_fit_name(const char *head, size_t head_len, const char *tail)
{
    size_t tl = strlen(tail);
    if (head_len + tl <= NAME_MAX)
        return xasprintf("%.*s%s", (int)head_len, head, tail);
    /* FNV-1a of the whole head: cheap, and enough to tell two cut names apart. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < head_len; i++)
        h = (h ^ (unsigned char)head[i]) * 16777619u;
    char mark[16];
    int ml = snprintf(mark, sizeof mark, "~%08x", (unsigned)h);
    size_t keep = NAME_MAX - tl - (size_t)ml;
    /* Step back over at most three continuation bytes so a UTF-8 character is not split
     * (bytes that are not UTF-8 at all are cut anywhere). */
    for (int i = 0; i < 3 && keep > 0 && ((unsigned char)head[keep] & 0xc0) == 0x80; i++)
        keep--;
    return xasprintf("%.*s%s%s", (int)keep, head, mark, tail);
}

int fsutil_write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    int r = fsutil_write_replace(path, data, len, mode);
    return r < 0 ? r : fsutil_fsync_parent(path);
}

static void write_clear(fsutil_write *w)
{
    w->fd = -1;
    w->synced = false;
    w->err = 0;
    free(w->tmp);
    free(w->path);
    w->tmp = NULL;
    w->path = NULL;
}

/* The temp name ".<name>.<rand>.tmp" beside path, cut to fit when name is long. */
static char *temp_path_of(const char *path)
{
    char rnd[16];
    unsigned char b[4];
    random_bytes(b, sizeof b);
    snprintf(rnd, sizeof rnd, ".%02x%02x%02x.tmp", b[0], b[1], b[2]);
    char *dir = fsutil_dirname(path);
    char *dotted = xasprintf(".%s", fsutil_basename(path));
    char *tname = fsutil_fit_name(dotted, strlen(dotted), rnd);
    char *tmp = fsutil_join(dir, tname);
    free(tname);
    free(dotted);
    free(dir);
    return tmp;
}

int fsutil_write_begin(fsutil_write *w, const char *path, const void *data, size_t len, mode_t mode)
{
    w->fd = -1;
    w->synced = false;
    w->err = 0;
    w->path = NULL;
    w->tmp = temp_path_of(path);
    if (strlen(w->tmp) >= PATH_MAX) {
        write_clear(w);
        return -ENAMETOOLONG;
    }
    int fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        int e = -errno;
        write_clear(w);
        return e;
    }
    w->fd = fd;
    w->path = xstrdup(path);
    int r = write_all(fd, data, len);
    if (r < 0) {
        fsutil_write_abort(w);
        return r;
    }
    /* Only starts the writeback, so that the data of a whole batch is in flight before the
     * first fsync waits; a failure here is no promise either way, and the fsync in
     * fsutil_write_commit reports any write error that matters. */
    (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    return 0;
}

int fsutil_write_sync(fsutil_write *w)
{
    if (w->fd < 0)
        return -EBADF;
    if (!w->synced && w->err == 0) {
        if (fsync(w->fd) < 0)
            w->err = -errno;
        else
            w->synced = true;
    }
    return w->err;
}

int fsutil_write_commit(fsutil_write *w)
{
    if (w->fd < 0) {
        write_clear(w);
        return -EBADF;
    }
    int r = fsutil_write_sync(w);
    /* A failed close can report a deferred write error (NFS); check it. */
    if (close(w->fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(w->tmp, w->path) < 0)
        r = -errno;
    if (r < 0)
        unlink(w->tmp);
    write_clear(w);
    return r;
}

void fsutil_write_abort(fsutil_write *w)
{
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    write_clear(w);
}

int fsutil_write_replace(const char *path, const void *data, size_t len, mode_t mode)
{
    fsutil_write w;
    int r = fsutil_write_begin(&w, path, data, len, mode);
    return r < 0 ? r : fsutil_write_commit(&w);
}

int fsutil_rename_noreplace(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) < 0)
        return -errno;
    return 0;
}

int fsutil_rename_durable(const char *from, const char *to)
{
    if (rename(from, to) < 0)
        return -errno;
    char *a = fsutil_dirname(from), *b = fsutil_dirname(to);
    int r = fsutil_fsync_dir(b);
    if (r == 0 && strcmp(a, b) != 0)
        r = fsutil_fsync_dir(a);
    free(a);
    free(b);
    return r;
}

int fsutil_mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    if (strlcpy_bd(buf, path, sizeof buf) >= sizeof buf)
        return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
        return -errno;
    struct stat st;
    if (stat(buf, &st) < 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int fsutil_read_file(const char *path, size_t max, bool nofollow, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (nofollow ? O_NOFOLLOW : 0));
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    strbuf sb = {0};
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            strbuf_free(&sb);
            return e;
        }
        if (n == 0)
            break;
        if (sb.len + (size_t)n > max) {
            close(fd);
            strbuf_free(&sb);
            return -EFBIG;
        }
        strbuf_append(&sb, chunk, (size_t)n);
    }
    close(fd);
    if (len)
        *len = sb.len;
    *out = strbuf_steal(&sb);
    return 0;
}

int fsutil_copy_file(const char *from, const char *to, mode_t mode)
{
    int in = open(from, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (in < 0)
        return -errno;
    struct stat st;
    if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(in);
        return -EINVAL;
    }
    int outfd = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (outfd < 0) {
        int e = -errno;
        close(in);
        return e;
    }
    int r = 0;
    char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        r = write_all(outfd, buf, (size_t)n);
        if (r < 0)
            break;
    }
    if (r == 0 && fsync(outfd) < 0)
        r = -errno;
    if (close(outfd) < 0 && r == 0)
        r = -errno;
    close(in);
    if (r < 0)
        unlink(to);
    return r;
}
