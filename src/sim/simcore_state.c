/* simcore_state: finding datasets, imports and batches, and the statuses derived from
 * their timestamps. The lowest layer of simcore: every handler file uses it, it calls none
 * of them. */
#include <stdlib.h>
#include <string.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

/* Makes room for one more element; the state keeps arrays of pointers. */
void *sim_grow(void *p, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return p;
    *cap = *cap ? *cap * 2 : 8;
    return xrealloc(p, *cap * elem);
}

/* ---- lookup --------------------------------------------------------------------- */

sim_dataset *sim_find_dataset(const simcore *sim, const char *id)
{
    for (size_t i = 0; i < sim->n_datasets; i++)
        if (strcmp(sim->datasets[i]->id, id) == 0)
            return sim->datasets[i];
    return NULL;
}

sim_import *sim_find_import(const sim_dataset *d, const char *id)
{
    for (size_t i = 0; i < d->n_imports; i++)
        if (strcmp(d->imports[i]->id, id) == 0)
            return d->imports[i];
    return NULL;
}

sim_batch *sim_find_batch(const simcore *sim, const char *id)
{
    for (size_t i = 0; i < sim->n_batches; i++)
        if (strcmp(sim->batches[i]->id, id) == 0)
            return sim->batches[i];
    return NULL;
}

sim_import *sim_find_import_by_key(const simcore *sim, const char *file_key, sim_dataset **ds_out)
{
    for (size_t i = 0; i < sim->n_datasets; i++) {
        sim_dataset *d = sim->datasets[i];
        for (size_t k = 0; k < d->n_imports; k++) {
            if (strcmp(d->imports[k]->file_key, file_key) == 0) {
                if (ds_out)
                    *ds_out = d;
                return d->imports[k];
            }
        }
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

const char *sim_import_status_at(const sim_import *imp, int64_t now_ms)
{
    if (imp->uploaded_ms < 0)
        return "uninitialised";
    if (now_ms < imp->start_ms)
        return "queued";
    if (now_ms < imp->finish_ms)
        return "processing";
    switch (imp->outcome) {
    case SIM_OUTCOME_COMPLETE:
        return "complete";
    case SIM_OUTCOME_PARTIAL:
        return "partial";
    default:
        return "failed";
    }
}

bool sim_import_usable_at(const sim_import *imp, int64_t now_ms)
{
    return imp->uploaded_ms >= 0 && now_ms >= imp->finish_ms && imp->outcome != SIM_OUTCOME_FAILED;
}

bool sim_import_running_at(const sim_import *imp, int64_t now_ms)
{
    return imp->uploaded_ms >= 0 && imp->uploaded_ms <= now_ms && now_ms < imp->finish_ms;
}

const char *sim_batch_status_at(const sim_batch *b, int64_t now_ms)
{
    if (b->setup_ms < 0)
        return "UNINITIALISED";
    if (now_ms < b->ready_ms)
        return "PROCESSING";
    return b->error ? "ERROR" : "READY";
}

const char *simcore_import_status(const simcore *sim, const char *import_id, int64_t now_ms)
{
    for (size_t i = 0; i < sim->n_datasets; i++) {
        const sim_import *imp = sim_find_import(sim->datasets[i], import_id);
        if (imp)
            return sim_import_status_at(imp, now_ms);
    }
    return NULL;
}

const char *simcore_batch_status(const simcore *sim, const char *batch_id, int64_t now_ms)
{
    const sim_batch *b = sim_find_batch(sim, batch_id);
    return b ? sim_batch_status_at(b, now_ms) : NULL;
}

void sim_add_time(cJSON *o, const char *key, int64_t ms)
{
    char buf[40];
    cJSON_AddStringToObject(o, key, time_format_rfc3339(ms, true, buf, sizeof buf));
}

void sim_respond_not_found(simcore_response *resp, const char *what, const char *id)
{
    char *msg =
        xasprintf("No %s with id '%s' exists (or it is not visible to this token).", what, id);
    simcore_response_error(resp, 404, msg);
    free(msg);
}

bool sim_is_input_item(const char *type)
{
    static const char *const inputs[] = {"free_text", "free_text_with_unit", "multiple_choice",
                                         "multiple_choice_with_free_text", "file_upload"};
    for (size_t i = 0; type && i < BD_ARRAY_LEN(inputs); i++)
        if (strcmp(type, inputs[i]) == 0)
            return true;
    return false;
}
