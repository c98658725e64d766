/* simcore_sync: POST …/batches/{id}/sync and GET …/batches/{id}/syncs/{sync_id}
 * (api-2 §3). A sync's times are fixed when it is made: syncs of one batch are serialised,
 * so it starts sync_queued_ms after the POST or when the previous one finishes, whichever
 * is later. What it does is decided from the state at its start (the worker's moment) the
 * first time anything looks at the batch at or after that moment; since imports and setup
 * are timestamps too, deciding late gives the same answer as deciding on time. */
#include <stdlib.h>
#include <string.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

static const char *sync_status_at(const sim_sync *s, int64_t now_ms)
{
    if (now_ms < s->start_ms)
        return "queued";
    if (s->reason)
        return "failed"; /* a refused sync ends at once */
    if (now_ms < s->finish_ms)
        return "processing";
    return "complete";
}

/* The counts before sync k: what setup made, then each earlier complete sync. */
static void counts_before(const sim_batch *b, size_t k, uint64_t *tasks, uint64_t *groups)
{
    *tasks = b->task_count;
    *groups = b->task_groups;
    for (size_t i = k; i-- > 0;) {
        if (b->syncs[i]->resolved && !b->syncs[i]->reason) {
            *tasks = b->syncs[i]->total_tasks;
            *groups = b->syncs[i]->total_groups;
            return;
        }
    }
}

/* Fixed size groups: the open (last, not full) group is topped up first, the rest is cut
 * into new groups. groups_expanded stays 0: the spec says it is non-zero only for
 * predetermined grouping, although the guide calls the top-up an expansion (api-2 §3.4). */
static void group_fixed(const sim_batch *b, uint64_t before, sim_sync *s)
{
    uint64_t tpg = (uint64_t)b->tasks_per_group;
    uint64_t open = before % tpg;
    uint64_t room = open ? tpg - open : 0;
    uint64_t rest = s->tasks_created > room ? s->tasks_created - room : 0;
    s->groups_created = (rest + tpg - 1) / tpg;
}

/* Predetermined grouping: a datapoint joins the batch's group with its key, or starts
 * one. A group counts once per sync, as created or as expanded. */
static void group_keyed(sim_batch *b, const sim_hashset *seen, sim_sync *s)
{
    for (size_t i = 0; i < seen->n; i++) {
        if (sim_hashset_has(&b->groups, seen->v[i]))
            s->groups_expanded++;
        else
            s->groups_created++;
    }
    sim_hashset_merge(&b->groups, seen);
}

/* Why sync s cannot run at its start, or NULL. The texts are the ones the CLI's test
 * fixtures show (api-2 §3.3), with the detail a person needs. */
static char *refusal(const sim_batch *b, const sim_dataset *d, int64_t t)
{
    const char *status = sim_batch_status_at(b, t);
    if (strcmp(status, "READY") != 0)
        return xasprintf("batch must be in READY status to sync (it is %s)", status);
    for (size_t i = 0; i < d->n_imports; i++)
        if (sim_import_running_at(d->imports[i], t))
            return xasprintf("dataset has an import in progress (import %s)", d->imports[i]->id);
    return NULL;
}

/* Serialised (api-2 §3.6): sync k starts sync_queued_ms after its POST, or when the one
 * before it ends if that is later: when it finishes, or at its start if it was refused (a
 * refused sync ends at once). */
static void schedule(const simcore *sim, sim_batch *b, size_t k)
{
    sim_sync *s = b->syncs[k];
    s->start_ms = s->created_ms + sim->cfg.sync_queued_ms;
    if (k > 0) {
        const sim_sync *prev = b->syncs[k - 1];
        int64_t prev_end = prev->reason ? prev->start_ms : prev->finish_ms;
        if (s->start_ms < prev_end)
            s->start_ms = prev_end;
    }
    s->finish_ms = s->start_ms + sim->cfg.sync_processing_ms;
}

static void resolve(simcore *sim, sim_batch *b, size_t k)
{
    sim_sync *s = b->syncs[k];
    int64_t t = s->start_ms;
    const sim_dataset *d = b->dataset_id[0] ? sim_find_dataset(sim, b->dataset_id) : NULL;
    s->resolved = true;
    if (!d) {
        s->reason = xstrdup("batch has no dataset"); /* POST refuses such a batch */
        return;
    }
    s->reason = refusal(b, d, t);
    if (s->reason)
        return;
    uint64_t tasks, groups;
    counts_before(b, k, &tasks, &groups);
    sim_hashset seen = {0};
    for (size_t i = 0; i < d->n_imports; i++) {
        const sim_import *imp = d->imports[i];
        uint64_t h = sim_hash(imp->id, strlen(imp->id));
        if (!sim_import_usable_at(imp, t) || sim_hashset_has(&b->taken, h))
            continue;
        sim_hashset_add(&b->taken, h);
        s->datapoints_processed += imp->accepted;
        sim_hashset_merge(&seen, &imp->groups);
    }
    s->tasks_created = s->datapoints_processed; /* one task per datapoint */
    if (d->group_field)
        group_keyed(b, &seen, s);
    else
        group_fixed(b, tasks, s);
    sim_hashset_free(&seen);
    s->total_tasks = tasks + s->tasks_created;
    s->total_groups = groups + s->groups_created;
}

static void resolve_started(simcore *sim, sim_batch *b, int64_t now_ms)
{
    for (size_t k = 0; k < b->n_syncs; k++) {
        if (b->syncs[k]->resolved || now_ms < b->syncs[k]->start_ms)
            continue;
        resolve(sim, b, k);
        /* Refused, it ended at its start: the ones queued behind it move up (none has
         * started, since each starts after the one before it). */
        for (size_t i = k + 1; b->syncs[k]->reason && i < b->n_syncs; i++)
            schedule(sim, b, i);
    }
}

void sim_batch_counts_at(simcore *sim, sim_batch *b, int64_t now_ms, uint64_t *tasks,
                         uint64_t *groups)
{
    resolve_started(sim, b, now_ms);
    size_t done = 0;
    for (size_t k = 0; k < b->n_syncs; k++)
        if (strcmp(sync_status_at(b->syncs[k], now_ms), "complete") == 0)
            done = k + 1;
    counts_before(b, done, tasks, groups);
}

/* The SyncJob of api-2 §3.4: the counts only when complete, reason only when failed. */
static cJSON *sync_json(const sim_batch *b, const sim_sync *s, int64_t now_ms)
{
    const char *status = sync_status_at(s, now_ms);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "batch_id", b->id);
    cJSON_AddStringToObject(j, "dataset_id", b->dataset_id);
    cJSON_AddStringToObject(j, "sync_id", s->id);
    sim_add_time(j, "created_at", s->created_ms);
    int64_t updated = strcmp(status, "queued") == 0     ? s->created_ms
                      : strcmp(status, "complete") == 0 ? s->finish_ms
                                                        : s->start_ms;
    sim_add_time(j, "updated_at", updated);
    cJSON_AddStringToObject(j, "status", status);
    if (strcmp(status, "complete") == 0) {
        cJSON_AddNumberToObject(j, "tasks_created", (double)s->tasks_created);
        cJSON_AddNumberToObject(j, "datapoints_processed", (double)s->datapoints_processed);
        cJSON_AddNumberToObject(j, "groups_created", (double)s->groups_created);
        cJSON_AddNumberToObject(j, "groups_expanded", (double)s->groups_expanded);
    } else if (strcmp(status, "failed") == 0) {
        cJSON_AddStringToObject(j, "reason", s->reason);
    }
    return j;
}

void sim_handle_sync(simcore *sim, const simcore_route *rt, int64_t now, simcore_response *resp)
{
    sim_batch *b = sim_find_batch(sim, rt->id);
    if (!b) {
        sim_respond_not_found(resp, "batch", rt->id);
        return;
    }
    const sim_dataset *d = b->dataset_id[0] ? sim_find_dataset(sim, b->dataset_id) : NULL;
    if (!d) {
        /* Documented precondition (api-2 §3.2): the batch must have a dataset. */
        simcore_response_error(resp, 400,
                               "The batch has no dataset; attach one and set the batch up "
                               "before syncing.");
        return;
    }
    if (!d->schema) {
        /* Documented precondition (api-2 §3.2); the code is unconfirmed, 400 is the only
         * documented error. */
        simcore_response_error(resp, 400,
                               "The batch's dataset is a legacy V3 dataset; only V4 (schema) "
                               "datasets can be synced.");
        return;
    }
    sim_sync *s = xcalloc(1, sizeof *s);
    uuid_v7(now, s->id);
    s->created_ms = now;
    resolve_started(sim, b, now);
    b->syncs = sim_grow(b->syncs, &b->cap_syncs, b->n_syncs, sizeof(void *));
    b->syncs[b->n_syncs++] = s;
    schedule(sim, b, b->n_syncs - 1);
    resolve_started(sim, b, now);
    sim_respond_json(resp, 202, sync_json(b, s, now));
}

static sim_sync *find_sync(const sim_batch *b, const char *id)
{
    for (size_t i = 0; i < b->n_syncs; i++)
        if (strcmp(b->syncs[i]->id, id) == 0)
            return b->syncs[i];
    return NULL;
}

void sim_handle_get_sync(simcore *sim, const simcore_route *rt, int64_t now, simcore_response *resp)
{
    sim_batch *b = sim_find_batch(sim, rt->id);
    if (!b) {
        sim_respond_not_found(resp, "batch", rt->id);
        return;
    }
    const sim_sync *s = find_sync(b, rt->sub);
    if (!s) {
        sim_respond_not_found(resp, "sync job", rt->sub);
        return;
    }
    resolve_started(sim, b, now);
    sim_respond_json(resp, 200, sync_json(b, s, now));
}

const char *simcore_sync_status(simcore *sim, const char *batch_id, const char *sync_id,
                                int64_t now_ms)
{
    sim_batch *b = sim_find_batch(sim, batch_id);
    const sim_sync *s = b ? find_sync(b, sync_id) : NULL;
    if (!s)
        return NULL;
    resolve_started(sim, b, now_ms);
    return sync_status_at(s, now_ms);
}

cJSON *sim_syncs_json(simcore *sim, sim_batch *b, int64_t now_ms)
{
    resolve_started(sim, b, now_ms);
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < b->n_syncs; i++)
        cJSON_AddItemToArray(a, sync_json(b, b->syncs[i], now_ms));
    return a;
}

void sim_syncs_free(sim_batch *b)
{
    for (size_t i = 0; i < b->n_syncs; i++) {
        free(b->syncs[i]->reason);
        free(b->syncs[i]);
    }
    free(b->syncs);
    b->syncs = NULL;
    b->n_syncs = b->cap_syncs = 0;
}
