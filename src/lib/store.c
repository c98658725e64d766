/* store: see include/batchd/store.h. */
#include "batchd/store.h"
#include "batchd/fsutil.h"
#include "batchd/util.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RECORD_MAX (16u << 20)

static char *jobs_dir(const char *state_dir)
{
    return fsutil_join(state_dir, "jobs");
}

int store_init(const char *state_dir, char **err)
{
    char *dir = jobs_dir(state_dir);
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
    cJSON *rec = job_to_record(j);
    char *text = json_print(rec);
    cJSON_Delete(rec);
    return text;
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
        items[i].rc = fsutil_write_begin(&w[i], path, items[i].text, strlen(items[i].text), 0600);
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
    char *dir = jobs_dir(state_dir);
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
    char *dir = jobs_dir(state_dir);
    char *name = xasprintf("%s.json", job_id);
    char *path = fsutil_join(dir, name);
    int r = unlink(path) < 0 ? -errno : fsutil_fsync_dir(dir);
    free(path);
    free(name);
    free(dir);
    return r;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int store_load_all(const char *state_dir, void (*each)(void *ud, job *j),
                   void (*bad)(void *ud, const char *file, const char *reason), void *ud)
{
    char *dir = jobs_dir(state_dir);
    DIR *d = opendir(dir);
    if (!d) {
        int r = -errno;
        free(dir);
        return r;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = xrealloc(names, cap * sizeof *names);
        }
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_names);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        char *path = fsutil_join(dir, names[i]);
        char *text = NULL;
        size_t len = 0;
        int r = fsutil_read_file(path, RECORD_MAX, true, &text, &len);
        if (r < 0) {
            if (bad)
                bad(ud, path, strerror(-r));
        } else {
            cJSON *rec = cJSON_ParseWithLength(text, len);
            const char *why = "not valid JSON";
            job *j = rec ? job_from_record(rec, &why) : NULL;
            if (j) {
                each(ud, j);
                count++;
            } else if (bad) {
                bad(ud, path, why);
            }
            cJSON_Delete(rec);
        }
        free(text);
        free(path);
        free(names[i]);
    }
    free(names);
    free(dir);
    return count;
}
