/* store_load: reading every record at start, over the journal's replay (include/batchd/store.h).
 * Its own file: it reads through store_journal.c, which writes through store.c. */
#include "batchd/fsutil.h"
#include "batchd/store.h"
#include "batchd/util.h"
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    int r = jtext ? 0 : fsutil_read_file(path, STORE_RECORD_MAX, true, &text, &len);
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
    char *dir = store_jobs_dir(state_dir);
    /* The files are brought up to date first, so that they are what a person reads while
     * batchd is stopped and a record removed while loading (pruned) stays removed. A failure
     * keeps the journal files: the next checkpoint (or start) replays them, in order, before
     * anything newer; the records below come from memory either way. */
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
