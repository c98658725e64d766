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

typedef struct names {
    char **v;
    size_t n, cap;
} names;

static void names_add(names *ns, char *name)
{
    if (ns->n == ns->cap) {
        ns->cap = ns->cap ? ns->cap * 2 : 64;
        ns->v = xrealloc(ns->v, ns->cap * sizeof *ns->v);
    }
    ns->v[ns->n++] = name;
}

/* The record files' names, and "<id>.json" for each job the journal holds without a file
 * (written only to the journal before a crash), sorted. 0 or -errno. */
static int record_names(const char *dir, const store_replay *rp, names *ns)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        names_add(ns, xstrdup(e->d_name));
    }
    closedir(d);
    if (ns->n)
        qsort(ns->v, ns->n, sizeof *ns->v, cmp_names);
    size_t files = ns->n;
    for (size_t i = 0; i < store_replay_count(rp); i++) {
        char *name = xasprintf("%s.json", store_replay_id(rp, i));
        if (files && bsearch(&name, ns->v, files, sizeof *ns->v, cmp_names))
            free(name);
        else
            names_add(ns, name);
    }
    if (ns->n > files)
        qsort(ns->v, ns->n, sizeof *ns->v, cmp_names);
    return 0;
}

typedef struct load_ctx {
    void (*each)(void *ud, job *j);
    void (*bad)(void *ud, const char *file, const char *reason);
    void *ud;
    int count;
} load_ctx;

/* One record: its job's newest journal entry, else its file. */
static void load_one(const char *dir, const char *name, const store_replay *rp, load_ctx *lc)
{
    char *path = fsutil_join(dir, name);
    char *id = xstrndup(name, strlen(name) - 5);
    size_t len = 0;
    const char *jtext = store_replay_text(rp, id, &len);
    char *text = NULL;
    int r = jtext ? 0 : fsutil_read_file(path, RECORD_MAX, true, &text, &len);
    if (r < 0) {
        if (lc->bad)
            lc->bad(lc->ud, path, strerror(-r));
    } else {
        cJSON *rec = cJSON_ParseWithLength(jtext ? jtext : text, len);
        const char *why = "not valid JSON";
        job *j = rec ? job_from_record(rec, &why) : NULL;
        if (j) {
            lc->each(lc->ud, j);
            lc->count++;
        } else if (lc->bad) {
            char *where = jtext ? xasprintf("%s (its newest entry in %s/journal.*)", path, dir)
                                : xstrdup(path);
            lc->bad(lc->ud, where, why);
            free(where);
        }
        cJSON_Delete(rec);
    }
    free(text);
    free(id);
    free(path);
}

int store_load_all(const char *state_dir, void (*each)(void *ud, job *j),
                   void (*bad)(void *ud, const char *file, const char *reason), void *ud)
{
    /* Without the journal a record could be older than a request already sent: no load. */
    store_replay *rp = NULL;
    int r = store_replay_read(state_dir, UINT64_MAX, &rp);
    if (r < 0)
        return r;
    char *dir = jobs_dir(state_dir);
    /* The files are brought up to date first, so that they are what a person reads while
     * batchd is stopped and a record removed while loading (pruned) stays removed. A failure
     * keeps the journal files: the next checkpoint (or start) replays them, in order, before
     * anything newer; the records below come from memory either way. */
    (void)store_replay_trim(rp);
    (void)store_replay_checkpoint(rp);
    if (store_replay_damage(rp) && bad)
        bad(ud, store_replay_damage(rp), STORE_DAMAGE_REASON);
    names ns = {0};
    r = record_names(dir, rp, &ns);
    load_ctx lc = {.each = each, .bad = bad, .ud = ud};
    for (size_t i = 0; i < ns.n; i++) {
        if (r == 0)
            load_one(dir, ns.v[i], rp, &lc);
        free(ns.v[i]);
    }
    free(ns.v);
    store_replay_free(rp);
    free(dir);
    return r < 0 ? r : lc.count;
}
