/* simcore: the simulated Prolific state and the API's answers. Every handler takes the
 * time as a parameter; statuses are derived from stored timestamps, so nothing needs a
 * timer and a test can jump the clock. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/records.h"
#include "batchd/rules.h"
#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

#define CREATED_BY "sim-researcher"

simcore *simcore_new(const simcore_config *cfg)
{
    simcore *sim = xcalloc(1, sizeof *sim);
    sim->cfg = *cfg;
    if (!sim->cfg.max_errors)
        sim->cfg.max_errors = 100;
    if (!sim->cfg.max_record)
        sim->cfg.max_record = 1024 * 1024;
    if (!sim->cfg.max_log)
        sim->cfg.max_log = 100000;
    sim->cfg.base_url = NULL;
    sim->base_url = xstrdup(cfg->base_url ? cfg->base_url : "http://127.0.0.1:8080");
    sim->rng = cfg->seed;
    if (!sim->cfg.export_url_ttl_ms)
        sim->cfg.export_url_ttl_ms = 3600 * 1000; /* the API's documented 1 h */
    /* From the seed but not drawn from the fault RNG, so faults replay the same. */
    uint64_t salt = cfg->seed ^ 0x5e3c7e7d0a1b2c3dULL;
    sim->url_secret = sim_hash(&salt, sizeof salt);
    sim->faults.retry_after_s = 1;
    sim->faults.slow_ms = 5000;
    sim->faults.hostile_status = 400;
    sim->faults.huge_bytes = SIMCORE_HUGE_DEFAULT;
    sim->faults.deep_levels = SIMCORE_DEEP_DEFAULT;
    sim->log = xcalloc(sim->cfg.max_log, sizeof *sim->log);
    return sim;
}

void sim_import_free(sim_import *imp)
{
    if (!imp)
        return;
    free(imp->filename);
    free(imp->file_key);
    cJSON_Delete(imp->errors);
    free(imp->reason);
    sim_hashset_free(&imp->groups);
    free(imp);
}

static void dataset_free(sim_dataset *d)
{
    for (size_t i = 0; i < d->n_imports; i++)
        sim_import_free(d->imports[i]);
    free(d->imports);
    free(d->name);
    free(d->workspace_id);
    cJSON_Delete(d->schema);
    free(d->group_field);
    free(d);
}

static void batch_free(sim_batch *b)
{
    free(b->name);
    free(b->workspace_id);
    cJSON_Delete(b->task_details);
    cJSON_Delete(b->batch_items);
    sim_hashset_free(&b->taken);
    sim_hashset_free(&b->groups);
    sim_syncs_free(b);
    sim_exports_free(b);
    free(b);
}

void simcore_free(simcore *sim)
{
    if (!sim)
        return;
    for (size_t i = 0; i < sim->n_datasets; i++)
        dataset_free(sim->datasets[i]);
    for (size_t i = 0; i < sim->n_batches; i++)
        batch_free(sim->batches[i]);
    for (size_t i = 0; i < sim->cfg.max_log; i++) {
        free(sim->log[i].method);
        free(sim->log[i].path);
        free(sim->log[i].uri);
    }
    free(sim->log);
    free(sim->datasets);
    free(sim->batches);
    free(sim->base_url);
    free(sim);
}

void simcore_set_base_url(simcore *sim, const char *base_url)
{
    free(sim->base_url);
    sim->base_url = xstrdup(base_url);
}

simcore_faults *simcore_get_faults(simcore *sim)
{
    return &sim->faults;
}

static uint64_t dataset_datapoints_at(const sim_dataset *d, int64_t now_ms)
{
    uint64_t n = 0;
    for (size_t i = 0; i < d->n_imports; i++)
        if (sim_import_usable_at(d->imports[i], now_ms))
            n += d->imports[i]->accepted;
    return n;
}

/* ---- JSON ----------------------------------------------------------------------- */

cJSON *sim_import_json(const sim_dataset *d, const sim_import *imp, int64_t now_ms)
{
    cJSON *j = cJSON_CreateObject();
    const char *status = sim_import_status_at(imp, now_ms);
    cJSON_AddStringToObject(j, "dataset_id", d->id);
    cJSON_AddStringToObject(j, "import_id", imp->id);
    cJSON_AddStringToObject(j, "type", "file_upload");
    cJSON_AddStringToObject(j, "filename", imp->filename);
    sim_add_time(j, "created_at", imp->created_ms);
    int64_t updated = imp->created_ms;
    if (imp->uploaded_ms >= 0)
        updated = now_ms >= imp->finish_ms  ? imp->finish_ms
                  : now_ms >= imp->start_ms ? imp->start_ms
                                            : imp->uploaded_ms;
    sim_add_time(j, "updated_at", updated);
    cJSON_AddStringToObject(j, "status", status);
    if (imp->uploaded_ms >= 0 && now_ms >= imp->start_ms)
        sim_add_time(j, "processing_started_at", imp->start_ms);
    if (strcmp(status, "complete") == 0 || strcmp(status, "partial") == 0)
        cJSON_AddNumberToObject(j, "accepted_count", (double)imp->accepted);
    if (strcmp(status, "partial") == 0) {
        cJSON_AddNumberToObject(j, "rejected_count", (double)imp->rejected);
        cJSON_AddItemToObject(j, "errors", cJSON_Duplicate(imp->errors, 1));
    }
    if (strcmp(status, "failed") == 0)
        cJSON_AddStringToObject(j, "reason", imp->reason ? imp->reason : "import failed");
    return j;
}

cJSON *sim_dataset_json(const sim_dataset *d, int64_t now_ms)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", d->id);
    cJSON_AddStringToObject(j, "name", d->name);
    sim_add_time(j, "created_at", d->created_ms);
    cJSON_AddStringToObject(j, "created_by", CREATED_BY);
    cJSON_AddStringToObject(j, "workspace_id", d->workspace_id);
    cJSON_AddNumberToObject(j, "total_datapoint_count", (double)dataset_datapoints_at(d, now_ms));
    /* The spec types schema_version as a string enum "3" | "4". */
    cJSON_AddStringToObject(j, "schema_version", d->schema ? "4" : "3");
    if (!d->schema) {
        cJSON_AddStringToObject(j, "status", "UNINITIALISED");
        cJSON_AddNullToObject(j, "filename");
        cJSON_AddNullToObject(j, "has_predetermined_grouping_id");
        cJSON_AddNullToObject(j, "schema");
        cJSON_AddNullToObject(j, "imports");
        return j;
    }
    cJSON_AddItemToObject(j, "schema", cJSON_Duplicate(d->schema, 1));
    cJSON *imports = cJSON_AddArrayToObject(j, "imports");
    for (size_t i = d->n_imports; i-- > 0;) /* newest first */
        cJSON_AddItemToArray(imports, sim_import_json(d, d->imports[i], now_ms));
    return j;
}

cJSON *sim_batch_json(simcore *sim, sim_batch *b, int64_t now_ms)
{
    uint64_t tasks, groups;
    sim_batch_counts_at(sim, b, now_ms, &tasks, &groups);
    cJSON *j = cJSON_CreateObject();
    const char *status = sim_batch_status_at(b, now_ms);
    cJSON_AddStringToObject(j, "id", b->id);
    sim_add_time(j, "created_at", b->created_ms);
    cJSON_AddStringToObject(j, "created_by", CREATED_BY);
    cJSON *datasets = cJSON_AddArrayToObject(j, "datasets");
    const sim_dataset *d = b->dataset_id[0] ? sim_find_dataset(sim, b->dataset_id) : NULL;
    if (d) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "id", d->id);
        cJSON_AddNumberToObject(e, "total_datapoint_count",
                                (double)dataset_datapoints_at(d, now_ms));
        const sim_import *last = NULL;
        for (size_t i = 0; i < d->n_imports; i++)
            if (d->imports[i]->uploaded_ms >= 0)
                last = d->imports[i];
        json_add_str_or_null(e, "filename", last ? last->filename : NULL);
        cJSON_AddItemToArray(datasets, e);
    }
    cJSON_AddStringToObject(j, "name", b->name);
    cJSON_AddStringToObject(j, "status", status);
    bool ready = strcmp(status, "READY") == 0;
    cJSON_AddNumberToObject(j, "total_task_count", ready ? (double)tasks : 0);
    cJSON_AddNumberToObject(j, "total_instruction_count", (double)b->instruction_count);
    cJSON_AddStringToObject(j, "workspace_id", b->workspace_id);
    cJSON_AddNumberToObject(j, "schema_version", d && !d->schema ? 3 : 4);
    cJSON_AddItemToObject(j, "task_details", cJSON_Duplicate(b->task_details, 1));
    cJSON_AddNumberToObject(j, "total_task_groups", ready ? (double)groups : 0);
    if (b->batch_items)
        cJSON_AddItemToObject(j, "batch_items", cJSON_Duplicate(b->batch_items, 1));
    else
        cJSON_AddNullToObject(j, "batch_items");
    cJSON_AddBoolToObject(j, "auto_sync_enabled", b->auto_sync_enabled);
    if (b->setup_ms >= 0)
        cJSON_AddNumberToObject(j, "tasks_per_group", (double)b->tasks_per_group);
    return j;
}

cJSON *simcore_state_json(simcore *sim, int64_t now_ms)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *ds = cJSON_AddArrayToObject(j, "datasets");
    for (size_t i = 0; i < sim->n_datasets; i++)
        cJSON_AddItemToArray(ds, sim_dataset_json(sim->datasets[i], now_ms));
    cJSON *bs = cJSON_AddArrayToObject(j, "batches");
    for (size_t i = 0; i < sim->n_batches; i++) {
        cJSON *b = sim_batch_json(sim, sim->batches[i], now_ms);
        cJSON_AddItemToObject(b, "syncs", sim_syncs_json(sim, sim->batches[i], now_ms));
        cJSON_AddItemToObject(b, "exports", sim_exports_json(sim->batches[i], now_ms));
        cJSON_AddItemToArray(bs, b);
    }
    cJSON_AddItemToObject(j, "requests", simcore_requests_json(sim, 0));
    cJSON_AddItemToObject(j, "faults", simcore_faults_to_json(&sim->faults));
    return j;
}

/* ---- responses ------------------------------------------------------------------ */

/* A 400 whose detail maps one request member to one message, as validation errors do. */
static void respond_field_error(simcore_response *resp, const char *param, const char *msg)
{
    diag r = {0};
    diag_add(&r, DIAG_ERROR,
             &(diag_where){.path = param, .kind = RULES_KIND_REQUEST, .param = param}, "%s", msg);
    int status = 400;
    cJSON *j = rules_api_error(&r, &status);
    diag_free(&r);
    sim_respond_json(resp, status, j);
}

static void respond_report(simcore_response *resp, const diag *r)
{
    int status = 400;
    cJSON *j = rules_api_error(r, &status);
    sim_respond_json(resp, status, j);
}

/* ---- handlers ------------------------------------------------------------------- */

static char *find_group_field(const cJSON *schema)
{
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(schema, "fields");
    const cJSON *f;
    cJSON_ArrayForEach(f, fields)
    {
        const char *type = json_str(f, "type");
        if (type && strcmp(type, "task_group_id") == 0 && f->string)
            return xstrdup(f->string);
    }
    return NULL;
}

static void handle_create_dataset(simcore *sim, const cJSON *body, int64_t now,
                                  simcore_response *resp)
{
    diag r = {0};
    rules_check_dataset_create(body, &r);
    if (r.count) {
        respond_report(resp, &r);
        diag_free(&r);
        return;
    }
    diag_free(&r);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(body, "schema");
    if (schema && !cJSON_IsNull(schema)) {
        records_schema *rs = records_schema_new(schema);
        if (!rs) {
            respond_field_error(resp, "schema", "The schema cannot be used to read records.");
            return;
        }
        records_schema_free(rs);
    }
    sim_dataset *d = xcalloc(1, sizeof *d);
    uuid_v7(now, d->id);
    d->name = xstrdup(json_str(body, "name"));
    d->workspace_id = xstrdup(json_str(body, "workspace_id"));
    d->created_ms = now;
    if (schema && !cJSON_IsNull(schema)) {
        d->schema = cJSON_Duplicate(schema, 1);
        d->group_field = find_group_field(schema);
    }
    sim->datasets = sim_grow(sim->datasets, &sim->cap_datasets, sim->n_datasets, sizeof(void *));
    sim->datasets[sim->n_datasets++] = d;
    sim_respond_json(resp, 201, sim_dataset_json(d, now));
}

static void handle_get_dataset(simcore *sim, const simcore_route *rt, int64_t now,
                               simcore_response *resp)
{
    const sim_dataset *d = sim_find_dataset(sim, rt->id);
    if (!d) {
        sim_respond_not_found(resp, "dataset", rt->id);
        return;
    }
    sim_respond_json(resp, 200, sim_dataset_json(d, now));
}

static bool filename_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 255 || !utf8_valid(name, n))
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '/' || *p == '\\')
            return false;
    return true;
}

/* Percent-encodes everything but RFC 3986 unreserved characters and '/'. */
static void url_encode(strbuf *sb, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
            strbuf_putc(sb, (char)c);
        } else {
            strbuf_putc(sb, '%');
            strbuf_putc(sb, hex[c >> 4]);
            strbuf_putc(sb, hex[c & 15]);
        }
    }
}

static void handle_upload_url(simcore *sim, const simcore_route *rt, int64_t now,
                              simcore_response *resp)
{
    sim_dataset *d = sim_find_dataset(sim, rt->id);
    if (!d) {
        sim_respond_not_found(resp, "dataset", rt->id);
        return;
    }
    records_format fmt;
    if (!filename_ok(rt->sub) || records_format_from_name(rt->sub, &fmt) < 0) {
        simcore_response_error(resp, 400,
                               "Unsupported file name or type: a V4 dataset accepts files "
                               "ending in .csv or .jsonl; rename the file and ask again.");
        return;
    }
    if (!d->schema) {
        simcore_response_error(resp, 400,
                               "This dataset has no schema (legacy V3); batchd-sim only "
                               "imports into V4 datasets: create the dataset with a schema.");
        return;
    }
    sim_import *imp = xcalloc(1, sizeof *imp);
    uuid_v7(now, imp->id);
    imp->filename = xstrdup(rt->sub);
    imp->file_key = xasprintf("%s/%s/%s", d->id, imp->id, rt->sub);
    imp->content_type = fmt == RECORDS_CSV ? "text/csv" : "application/x-ndjson";
    unsigned char sig[16];
    random_bytes(sig, sizeof sig);
    for (size_t i = 0; i < sizeof sig; i++)
        snprintf(imp->signature + 2 * i, 3, "%02x", sig[i]);
    imp->created_ms = now;
    imp->expires_ms = now + sim->cfg.upload_ttl_ms;
    imp->uploaded_ms = -1;
    imp->errors = cJSON_CreateArray();
    d->imports = sim_grow(d->imports, &d->cap_imports, d->n_imports, sizeof(void *));
    d->imports[d->n_imports++] = imp;

    strbuf url;
    strbuf_init(&url);
    strbuf_printf(&url, "%s/_upload/", sim->base_url);
    url_encode(&url, imp->file_key);
    strbuf_printf(&url,
                  "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=%lld"
                  "&X-Amz-SignedHeaders=content-type%%3Bhost&X-Amz-Signature=%s",
                  (long long)(sim->cfg.upload_ttl_ms / 1000), imp->signature);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "dataset_id", d->id);
    cJSON_AddStringToObject(j, "upload_url", url.data);
    cJSON_AddStringToObject(j, "http_method", "PUT");
    cJSON_AddStringToObject(j, "content_type", imp->content_type);
    char buf[40];
    cJSON_AddStringToObject(j, "expires_at",
                            time_format_rfc3339(imp->expires_ms, false, buf, sizeof buf));
    cJSON_AddStringToObject(j, "file_key", imp->file_key);
    cJSON_AddStringToObject(j, "import_id", imp->id);
    strbuf_free(&url);
    sim_respond_json(resp, 201, j);
}

static void handle_get_import(simcore *sim, const simcore_route *rt, int64_t now,
                              simcore_response *resp)
{
    const sim_dataset *d = sim_find_dataset(sim, rt->id);
    if (!d) {
        sim_respond_not_found(resp, "dataset", rt->id);
        return;
    }
    const sim_import *imp = sim_find_import(d, rt->sub);
    if (!imp) {
        sim_respond_not_found(resp, "import job", rt->sub);
        return;
    }
    sim_respond_json(resp, 200, sim_import_json(d, imp, now));
}

/* Gives every object in an array an "id" unless it has one, and walks into "rows",
 * "columns" and "items" below it: the API assigns ids on create. */
static void assign_ids(cJSON *arr, int64_t now, int64_t *inputs)
{
    cJSON *o;
    cJSON_ArrayForEach(o, arr)
    {
        if (!cJSON_IsObject(o))
            continue;
        if (!cJSON_GetObjectItemCaseSensitive(o, "id")) {
            char id[37];
            uuid_v7(now, id);
            cJSON_AddStringToObject(o, "id", id);
        }
        if (sim_is_input_item(json_str(o, "type")))
            (*inputs)++;
        static const char *const kids[] = {"rows", "columns", "items"};
        for (size_t i = 0; i < BD_ARRAY_LEN(kids); i++) {
            cJSON *k = cJSON_GetObjectItemCaseSensitive(o, kids[i]);
            if (cJSON_IsArray(k))
                assign_ids(k, now, inputs);
        }
    }
}

/* A dataset the request names must exist and live in the request's workspace. */
static sim_dataset *check_dataset_ref(simcore *sim, const cJSON *body, const char *workspace,
                                      diag *r)
{
    static const diag_where dataset_id_at = {
        .path = "dataset_id", .kind = RULES_KIND_REQUEST, .param = "dataset_id"};
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(body, "dataset_id");
    if (!cJSON_IsString(ds))
        return NULL;
    sim_dataset *d = sim_find_dataset(sim, ds->valuestring);
    if (!d) {
        diag_add(r, DIAG_ERROR, &dataset_id_at, "Dataset '%s' does not exist.", ds->valuestring);
        return NULL;
    }
    if (workspace && strcmp(d->workspace_id, workspace) != 0) {
        diag_add(r, DIAG_ERROR, &dataset_id_at,
                 "Dataset '%s' belongs to workspace '%s', not to '%s'.", d->id, d->workspace_id,
                 workspace);
        return NULL;
    }
    return d;
}

static void handle_create_batch(simcore *sim, const cJSON *body, int64_t now,
                                simcore_response *resp)
{
    diag r = {0};
    const char *workspace = json_str(body, "workspace_id");
    sim_dataset *d = check_dataset_ref(sim, body, workspace, &r);
    rules_check_batch_create(body, d ? d->schema : NULL, &r);
    if (r.count) {
        respond_report(resp, &r);
        diag_free(&r);
        return;
    }
    diag_free(&r);
    sim_batch *b = xcalloc(1, sizeof *b);
    uuid_v7(now, b->id);
    b->name = xstrdup(json_str(body, "name"));
    b->workspace_id = xstrdup(workspace);
    if (d)
        strlcpy_bd(b->dataset_id, d->id, sizeof b->dataset_id);
    b->created_ms = now;
    b->task_details = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(body, "task_details"), 1);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(body, "batch_items");
    if (cJSON_IsArray(items)) {
        b->batch_items = cJSON_Duplicate(items, 1);
        assign_ids(b->batch_items, now, &b->instruction_count);
    }
    b->auto_sync_enabled = json_bool(body, "auto_sync_enabled", false);
    b->setup_ms = -1;
    b->tasks_per_group = 1;
    sim->batches = sim_grow(sim->batches, &sim->cap_batches, sim->n_batches, sizeof(void *));
    sim->batches[sim->n_batches++] = b;
    sim_respond_json(resp, 201, sim_batch_json(sim, b, now));
}

static void handle_list_batches(simcore *sim, const simcore_request *req, simcore_response *resp)
{
    const char *ws = req->query ? req->query(req->query_ud, "workspace_id") : NULL;
    if (!ws || !*ws) {
        respond_field_error(resp, "workspace_id", "This query parameter is required.");
        return;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON *results = cJSON_AddArrayToObject(j, "results");
    int count = 0;
    for (size_t i = 0; i < sim->n_batches; i++) {
        if (strcmp(sim->batches[i]->workspace_id, ws) != 0)
            continue;
        cJSON_AddItemToArray(results, sim_batch_json(sim, sim->batches[i], req->now_ms));
        count++;
    }
    cJSON *meta = cJSON_AddObjectToObject(j, "meta");
    cJSON_AddNumberToObject(meta, "count", count);
    sim_respond_json(resp, 200, j);
}

static void handle_get_batch(simcore *sim, const simcore_route *rt, int64_t now, bool status_only,
                             simcore_response *resp)
{
    sim_batch *b = sim_find_batch(sim, rt->id);
    if (!b) {
        sim_respond_not_found(resp, "batch", rt->id);
        return;
    }
    if (!status_only) {
        sim_respond_json(resp, 200, sim_batch_json(sim, b, now));
        return;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", sim_batch_status_at(b, now));
    sim_respond_json(resp, 200, j);
}

static bool dataset_has_complete_import(const sim_dataset *d, int64_t now)
{
    for (size_t i = 0; i < d->n_imports; i++)
        if (strcmp(sim_import_status_at(d->imports[i], now), "complete") == 0)
            return true;
    return false;
}

/* Snapshots what setup makes of the dataset: one task per accepted datapoint, grouped by
 * task_group_id when the schema has one, else by tasks_per_group. */
static void compute_tasks(const sim_dataset *d, sim_batch *b, int64_t now)
{
    uint64_t count = 0;
    sim_hashset groups = {0};
    for (size_t i = 0; i < d->n_imports; i++) {
        const sim_import *imp = d->imports[i];
        if (!sim_import_usable_at(imp, now))
            continue;
        count += imp->accepted;
        sim_hashset_merge(&groups, &imp->groups);
        /* Setup took these datapoints: a sync only takes the imports after them. */
        sim_hashset_add(&b->taken, sim_hash(imp->id, strlen(imp->id)));
    }
    b->task_count = count;
    if (d->group_field) {
        b->task_groups = groups.n;
        sim_hashset_free(&b->groups);
        b->groups = groups;
    } else {
        b->task_groups = (count + (uint64_t)b->tasks_per_group - 1) / (uint64_t)b->tasks_per_group;
        sim_hashset_free(&groups);
    }
}

static void handle_setup(simcore *sim, const simcore_route *rt, const cJSON *body, int64_t now,
                         simcore_response *resp)
{
    sim_batch *b = sim_find_batch(sim, rt->id);
    if (!b) {
        sim_respond_not_found(resp, "batch", rt->id);
        return;
    }
    diag r = {0};
    rules_check_setup(body, &r);
    sim_dataset *d = check_dataset_ref(sim, body, b->workspace_id, &r);
    if (r.count) {
        respond_report(resp, &r);
        diag_free(&r);
        return;
    }
    diag_free(&r);
    if (b->setup_ms >= 0) {
        char *msg = xasprintf("Batch '%s' is %s; setup is only possible while it is "
                              "UNINITIALISED.",
                              b->id, sim_batch_status_at(b, now));
        simcore_response_error(resp, 400, msg);
        free(msg);
        return;
    }
    if (!d && b->dataset_id[0])
        d = sim_find_dataset(sim, b->dataset_id);
    if (!d) {
        respond_field_error(resp, "dataset_id",
                            "The batch has no dataset: pass dataset_id or attach one first.");
        return;
    }
    if (!dataset_has_complete_import(d, now)) {
        char *msg = xasprintf("Dataset '%s' has no import with status complete; upload the "
                              "data and wait for the import to complete before setup.",
                              d->id);
        simcore_response_error(resp, 400, msg);
        free(msg);
        return;
    }
    strlcpy_bd(b->dataset_id, d->id, sizeof b->dataset_id);
    b->tasks_per_group = json_int64(body, "tasks_per_group", 1);
    if (b->tasks_per_group < 1)
        b->tasks_per_group = 1;
    b->setup_ms = now;
    b->ready_ms = now + sim->cfg.batch_processing_ms;
    b->error = sim_rand01(sim) < sim->faults.batch_error;
    compute_tasks(d, b, now);
    sim_respond_json(resp, 202, cJSON_CreateObject());
}

/* ---- /_sim ---------------------------------------------------------------------- */

static void handle_sim(simcore *sim, const simcore_route *rt, const simcore_request *req,
                       const cJSON *body, simcore_response *resp)
{
    if (rt->endpoint == SIMCORE_EP_SIM_STATE) {
        sim_respond_json(resp, 200, simcore_state_json(sim, req->now_ms));
    } else if (rt->endpoint == SIMCORE_EP_SIM_REQUESTS) {
        const char *since = req->query ? req->query(req->query_ud, "since") : NULL;
        uint64_t s = since ? strtoull(since, NULL, 10) : 0;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddItemToObject(j, "requests", simcore_requests_json(sim, s));
        sim_respond_json(resp, 200, j);
    } else if (strcmp(req->method, "POST") == 0) {
        char err[256];
        if (simcore_faults_from_json(&sim->faults, body, err, sizeof err) < 0) {
            simcore_response_error(resp, 400, err);
            return;
        }
        sim_respond_json(resp, 200, simcore_faults_to_json(&sim->faults));
    } else {
        sim_respond_json(resp, 200, simcore_faults_to_json(&sim->faults));
    }
}

/* ---- dispatch ------------------------------------------------------------------- */

static bool auth_ok(const char *token, const char *header)
{
    if (!header || strncmp(header, "Token ", 6) != 0)
        return false;
    return strcmp(header + 6, token) == 0;
}

static bool is_json_type(const char *ct)
{
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* Parses a POST body. Returns the JSON object, or NULL with resp filled. */
static cJSON *parse_body(const simcore_route *rt, const simcore_request *req,
                         simcore_response *resp)
{
    /* An empty setup body means "all defaults", as the API's own framework takes it; sync
     * and export take no body at all (the CLI sends none, with or without Content-Type). */
    if ((rt->endpoint == SIMCORE_EP_SETUP || rt->endpoint == SIMCORE_EP_SYNC ||
         rt->endpoint == SIMCORE_EP_EXPORT) &&
        req->body_len == 0)
        return cJSON_CreateObject();
    if (!is_json_type(req->content_type)) {
        simcore_response_error(resp, 415,
                               "Unsupported media type: send the body as JSON with "
                               "'Content-Type: application/json'.");
        return NULL;
    }
    if (!req->body || req->body_len == 0 || !utf8_valid(req->body, req->body_len) ||
        strlen(req->body) != req->body_len) {
        simcore_response_error(resp, 400,
                               req->body_len ? "JSON parse error: the body is not valid UTF-8 "
                                               "text."
                                             : "JSON parse error: the body is empty.");
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(req->body, &end, 1);
    if (!j) {
        size_t off = end ? (size_t)(end - req->body) : 0;
        char *msg =
            xasprintf("JSON parse error at byte %zu: the body is not well-formed JSON.", off);
        simcore_response_error(resp, 400, msg);
        free(msg);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        respond_field_error(resp, "non_field_errors",
                            "Invalid data. Expected a JSON object (dictionary).");
        return NULL;
    }
    return j;
}

/* The endpoint's own handler, after the checks every request goes through. */
static void dispatch(simcore *sim, const simcore_route *rt, const simcore_request *req,
                     const cJSON *body, simcore_response *resp)
{
    switch (rt->endpoint) {
    case SIMCORE_EP_CREATE_DATASET:
        handle_create_dataset(sim, body, req->now_ms, resp);
        break;
    case SIMCORE_EP_GET_DATASET:
        handle_get_dataset(sim, rt, req->now_ms, resp);
        break;
    case SIMCORE_EP_UPLOAD_URL:
        handle_upload_url(sim, rt, req->now_ms, resp);
        break;
    case SIMCORE_EP_GET_IMPORT:
        handle_get_import(sim, rt, req->now_ms, resp);
        break;
    case SIMCORE_EP_CREATE_BATCH:
        handle_create_batch(sim, body, req->now_ms, resp);
        break;
    case SIMCORE_EP_LIST_BATCHES:
        handle_list_batches(sim, req, resp);
        break;
    case SIMCORE_EP_GET_BATCH:
        handle_get_batch(sim, rt, req->now_ms, false, resp);
        break;
    case SIMCORE_EP_BATCH_STATUS:
        handle_get_batch(sim, rt, req->now_ms, true, resp);
        break;
    case SIMCORE_EP_SETUP:
        handle_setup(sim, rt, body, req->now_ms, resp);
        break;
    case SIMCORE_EP_SYNC:
        sim_handle_sync(sim, rt, req->now_ms, resp);
        break;
    case SIMCORE_EP_GET_SYNC:
        sim_handle_get_sync(sim, rt, req->now_ms, resp);
        break;
    case SIMCORE_EP_EXPORT:
    case SIMCORE_EP_LIST_EXPORTS:
    case SIMCORE_EP_GET_EXPORT:
    case SIMCORE_EP_DELETE_EXPORT:
        sim_handle_export(sim, rt, req, resp);
        break;
    default:
        handle_sim(sim, rt, req, body, resp);
        break;
    }
}

void simcore_handle(simcore *sim, const char *token, const simcore_request *req,
                    simcore_response *resp)
{
    memset(resp, 0, sizeof *resp);
    simcore_route rt;
    simcore_route_request(req->method, req->path, &rt);
    if (rt.status == 404) {
        simcore_response_error(resp, 404, "Not found: no such API path.");
        return;
    }
    if (rt.endpoint == SIMCORE_EP_UPLOAD) {
        /* Only a PUT goes through simcore_upload_*; anything else is the wrong method. */
        simcore_response_error(resp, 405, "Upload URLs take PUT only.");
        resp->allow = "PUT";
        return;
    }
    if (rt.endpoint == SIMCORE_EP_DOWNLOAD) {
        /* A presigned URL: no API token (one is refused), the S3 answers. */
        if (rt.status == 405) {
            sim_s3_error(resp, 405, "MethodNotAllowed",
                         "The specified method is not allowed against this resource.");
            resp->allow = "GET";
            return;
        }
        sim_handle_download(sim, &rt, req, resp);
        return;
    }
    bool control = simcore_endpoint_is_control(rt.endpoint);
    if (!control && !auth_ok(token, req->authorization)) {
        simcore_response_error(resp, 401,
                               req->authorization
                                   ? "Invalid token: send 'Authorization: Token <api token>'."
                                   : "Authentication credentials were not provided: send "
                                     "'Authorization: Token <api token>'.");
        return;
    }
    if (rt.status == 405) {
        char *msg = xasprintf("Method \"%s\" not allowed.", req->method);
        simcore_response_error(resp, 405, msg);
        free(msg);
        resp->allow = rt.allow;
        return;
    }
    cJSON *body = NULL;
    if (strcmp(req->method, "POST") == 0) {
        body = parse_body(&rt, req, resp);
        if (!body)
            return;
    }
    dispatch(sim, &rt, req, body, resp);
    cJSON_Delete(body);
}
