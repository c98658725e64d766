/* store: see include/batchd/store.h. */
#include "batchd/store.h"
#include "batchd/fsutil.h"
#include "batchd/util.h"
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *store_jobs_dir(const char *state_dir)
{
    return fsutil_join(state_dir, "jobs");
}

int store_init(const char *state_dir, char **err)
{
    char *dir = store_jobs_dir(state_dir);
    int r = fsutil_mkdir_p(dir, 0700);
    if (r < 0) {
        *err = xasprintf("cannot create %s: %s", dir, strerror(-r));
        free(dir);
        return r;
    }
    DIR *d = opendir(dir);
    if (!d) {
        r = -errno;
        *err = xasprintf("cannot open %s: %s", dir, strerror(errno));
        free(dir);
        return r;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        /* fsutil_write_atomic's temp files: ".<name>.<rand>.tmp" */
        if (e->d_name[0] == '.' && n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
    free(dir);
    return 0;
}

char *store_encode(const job *j)
{
    return job_record_print(j);
}

int store_write(const char *state_dir, const char *job_id, const char *text)
{
    store_item it = {.job_id = job_id, .text = text};
    store_write_batch(state_dir, &it, 1);
    return it.rc;
}

/* How many temp files a batch keeps open at once between begin and commit: enough for the
 * journal to take a turn's records in one commit, few enough not to run out of descriptors. */
#define STORE_OPEN_MAX 64

typedef struct sync_ctx {
    const store_item *items;
    fsutil_write *w;
} sync_ctx;

static void sync_one(void *ctx, size_t i)
{
    const sync_ctx *sx = ctx;
    if (sx->items[i].rc == 0)
        (void)fsutil_write_sync(&sx->w[i]);
}

/* Writes items[0..n) (n <= STORE_OPEN_MAX) in phases: every record's content begun, then
 * every one fsynced (concurrently: fsutil_parallel), then each renamed over its old record, so
 * their journal commits overlap. A crash leaves each old record or its new one. Returns how many
 * were written. */
static size_t write_chunk(const char *dir, store_item *items, size_t n)
{
    fsutil_write w[STORE_OPEN_MAX];
    for (size_t i = 0; i < n; i++) {
        char *name = xasprintf("%s.json", items[i].job_id);
        char *path = fsutil_join(dir, name);
        size_t len = items[i].len ? items[i].len : strlen(items[i].text);
        items[i].rc = fsutil_write_begin(&w[i], path, items[i].text, len, 0600);
        free(path);
        free(name);
    }
    /* Every sync before any rename: fsutil.h says why. A failed sync fails its commit. */
    sync_ctx sx = {.items = items, .w = w};
    fsutil_parallel(n, sync_one, &sx);
    size_t written = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc == 0)
            items[i].rc = fsutil_write_commit(&w[i]);
        written += items[i].rc == 0;
    }
    return written;
}

void store_write_batch(const char *state_dir, store_item *items, size_t n)
{
    char *dir = store_jobs_dir(state_dir);
    size_t written = 0;
    for (size_t i = 0; i < n; i += STORE_OPEN_MAX)
        written += write_chunk(dir, items + i, n - i < STORE_OPEN_MAX ? n - i : STORE_OPEN_MAX);
    /* One fsync makes every rename above durable. Until it returns no record counts as
     * written, so a caller never acts on a record a crash could still take back. */
    int r = written ? fsutil_fsync_dir(dir) : 0;
    for (size_t i = 0; r < 0 && i < n; i++)
        if (items[i].rc == 0)
            items[i].rc = r;
    free(dir);
}

int store_save(const char *state_dir, const job *j)
{
    char *text = store_encode(j);
    int r = store_write(state_dir, j->id, text);
    free(text);
    return r;
}

int store_remove(const char *state_dir, const char *job_id)
{
    char *dir = store_jobs_dir(state_dir);
    char *name = xasprintf("%s.json", job_id);
    char *path = fsutil_join(dir, name);
    int r = unlink(path) < 0 ? -errno : fsutil_fsync_dir(dir);
    free(path);
    free(name);
    free(dir);
    return r;
}
