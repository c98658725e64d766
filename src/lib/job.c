/* job: the record, its durable and public JSON forms, result.json and error.json.
 * The transitions are in job_machine.c. */
#include "batchd/apitext.h"
#include "batchd/job.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define JOB_HISTORY_MAX    200
#define JOB_RECORD_VERSION 1
/* error.json as a whole (batchd(8), HOSTILE AND ACCIDENTAL INPUT); record-level errors beyond it
 * are counted, not listed. */
#define ERROR_JSON_MAX (64 * 1024)

static const char *const state_names[JOB_STATE_COUNT] = {
    [JOB_QUEUED] = "queued",
    [JOB_VALIDATING] = "validating",
    [JOB_CREATING_DATASET] = "creating_dataset",
    [JOB_UPLOADING] = "uploading",
    [JOB_IMPORTING] = "importing",
    [JOB_CREATING_BATCH] = "creating_batch",
    [JOB_SETTING_UP] = "setting_up",
    [JOB_PROCESSING] = "processing",
    [JOB_SYNCING] = "syncing",
    [JOB_READY] = "ready",
    [JOB_FAILED] = "failed",
    [JOB_CANCELLED] = "cancelled",
};

static const char *const op_names[JOB_OP_COUNT] = {
    [JOB_OP_NONE] = "none",
    [JOB_OP_CREATE_DATASET] = "create_dataset",
    [JOB_OP_UPLOAD_URL] = "upload_url",
    [JOB_OP_UPLOAD] = "upload",
    [JOB_OP_CHECK_UPLOAD] = "check_upload",
    [JOB_OP_GET_IMPORT] = "get_import",
    [JOB_OP_FIND_BATCH] = "find_batch",
    [JOB_OP_CREATE_BATCH] = "create_batch",
    [JOB_OP_CHECK_SETUP] = "check_setup",
    [JOB_OP_SETUP] = "setup",
    [JOB_OP_BATCH_STATUS] = "batch_status",
    [JOB_OP_GET_BATCH] = "get_batch",
    [JOB_OP_SYNC] = "sync",
    [JOB_OP_GET_SYNC] = "get_sync",
};

const char *job_state_name(job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT ? state_names[s] : "unknown";
}

int job_state_from_name(const char *name)
{
    for (int i = 0; name && i < JOB_STATE_COUNT; i++)
        if (strcmp(state_names[i], name) == 0)
            return i;
    return -1;
}

bool job_state_terminal(job_state s)
{
    return s == JOB_READY || s == JOB_FAILED || s == JOB_CANCELLED;
}

const char *job_op_name(job_op op)
{
    return (unsigned)op < JOB_OP_COUNT ? op_names[op] : "unknown";
}

static int job_op_from_name(const char *name)
{
    for (int i = 0; name && i < JOB_OP_COUNT; i++)
        if (strcmp(op_names[i], name) == 0)
            return i;
    return -1;
}

bool job_op_has_side_effect(job_op op)
{
    switch (op) {
    case JOB_OP_CREATE_DATASET:
    case JOB_OP_UPLOAD_URL:
    case JOB_OP_UPLOAD:
    case JOB_OP_CREATE_BATCH:
    case JOB_OP_SETUP:
    case JOB_OP_SYNC:
        return true;
    default:
        return false;
    }
}

void job_params_default(job_params *p)
{
    p->poll_initial_ms = 2000;
    p->poll_max_ms = 60000;
    p->poll_multiplier = 2;
    p->import_timeout_ms = 3600000;
    p->batch_timeout_ms = 6 * 3600000;
    p->retry_base_ms = 1000;
    p->retry_cap_ms = 300000;
    p->url_margin_ms = 30000;
    p->retry_attempts_max = JOB_RETRY_ATTEMPTS_MAX;
}

job *job_new(const char *id, const char *name, const char *dir, int64_t now_ms)
{
    job *j = xcalloc(1, sizeof *j);
    strlcpy_bd(j->id, id, sizeof j->id);
    j->name = xstrdup(name);
    j->dir = xstrdup(dir);
    j->state = JOB_QUEUED;
    j->failed_stage = JOB_QUEUED;
    j->created_at = now_ms;
    j->updated_at = now_ms;
    j->records = -1;
    j->rejected_records = -1;
    j->bytes_total = -1;
    j->accepted_count = -1;
    j->rejected_count = -1;
    j->total_task_count = -1;
    j->total_task_groups = -1;
    job_append_reset_sync(&j->append);
    j->history = cJSON_CreateArray();
    job_note(j, now_ms, "claimed");
    return j;
}

void job_free(job *j)
{
    if (!j)
        return;
    free(j->name);
    free(j->dir);
    free(j->source);
    cJSON_Delete(j->spec);
    free(j->upload_path);
    free(j->upload_name);
    free(j->upload_sha256);
    free(j->workspace_id);
    free(j->dataset_id);
    free(j->import_id);
    free(j->upload_url);
    free(j->upload_content_type);
    free(j->import_status);
    free(j->batch_id);
    free(j->batch_status);
    free(j->append.target_job_id);
    free(j->append.target_job_name);
    free(j->append.sync_id);
    free(j->append.sync_status);
    free(j->last_error);
    free(j->error_code);
    free(j->error_message);
    cJSON_Delete(j->error_details);
    cJSON_Delete(j->api_error);
    cJSON_Delete(j->history);
    export_free(j->export);
    free(j);
}

void job_note(job *j, int64_t now_ms, const char *fmt, ...)
{
    char at[40];
    va_list ap;
    va_start(ap, fmt);
    char *raw = xvasprintf(fmt, ap);
    va_end(ap);
    /* Notes quote names and API texts (cleaned where they were received): capped and kept
     * valid UTF-8 here, so that no note can grow a record without bound. */
    char *note = apitext_clean_str(raw, NULL);
    free(raw);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "at", time_format_rfc3339(now_ms, true, at, sizeof at));
    cJSON_AddStringToObject(e, "state", job_state_name(j->state));
    cJSON_AddStringToObject(e, "note", note);
    cJSON_AddItemToArray(j->history, e);
    while (cJSON_GetArraySize(j->history) > JOB_HISTORY_MAX)
        cJSON_DeleteItemFromArray(j->history, 0);
    free(note);
    j->updated_at = now_ms;
}

void job_set_state(job *j, job_state s, int64_t now_ms, const char *note)
{
    if (j->state != s) {
        j->state = s;
        j->polls = 0;
        j->attempts = 0;
        j->retry_at = 0;
        free(j->last_error);
        j->last_error = NULL;
    }
    job_note(j, now_ms, "%s", note ? note : job_state_name(s));
}

/* ---- JSON helpers ---- */

static void add_time(cJSON *o, const char *key, int64_t ms)
{
    char buf[40];
    if (ms > 0)
        cJSON_AddStringToObject(o, key, time_format_rfc3339(ms, false, buf, sizeof buf));
    else
        cJSON_AddNullToObject(o, key);
}

static void add_ms(cJSON *o, const char *key, int64_t v)
{
    cJSON_AddNumberToObject(o, key, (double)v);
}

static void take_str(char **dst, const cJSON *o, const char *key)
{
    const char *s = json_str(o, key);
    free(*dst);
    *dst = s ? xstrdup(s) : NULL;
}

/* Names of files and directories are bytes, not text: JSON holds them as the writer makes them
 * (invalid UTF-8 shown as U+FFFD), so one that is not valid UTF-8 is also kept exactly, in
 * hex, as KEY_hex, for the record to bring the very same name back after a restart. */
static void add_name(cJSON *o, const char *key, const char *s)
{
    json_add_str_or_null(o, key, s);
    if (!s || utf8_valid(s, strlen(s)))
        return;
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(s);
    char *h = xmalloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        h[2 * i] = hex[(unsigned char)s[i] >> 4];
        h[2 * i + 1] = hex[(unsigned char)s[i] & 15];
    }
    h[2 * n] = '\0';
    char *k = xasprintf("%s_hex", key);
    cJSON_AddStringToObject(o, k, h);
    free(k);
    free(h);
}

static int hexdigit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* KEY_hex when it is well-formed (and holds no NUL), otherwise KEY. NULL when neither. */
static const char *name_of(const cJSON *rec, const char *key, char **owned)
{
    char *k = xasprintf("%s_hex", key);
    const char *h = json_str(rec, k);
    free(k);
    *owned = NULL;
    size_t n = h ? strlen(h) : 0;
    if (h && n > 0 && n % 2 == 0) {
        char *out = xmalloc(n / 2 + 1);
        size_t i;
        for (i = 0; i < n / 2; i++) {
            int a = hexdigit(h[2 * i]), b = hexdigit(h[2 * i + 1]);
            if (a < 0 || b < 0 || (a == 0 && b == 0))
                break;
            out[i] = (char)(a << 4 | b);
        }
        out[i] = '\0';
        if (i == n / 2) {
            *owned = out;
            return out;
        }
        free(out);
    }
    return json_str(rec, key);
}

static void take_name(char **dst, const cJSON *rec, const char *key)
{
    char *owned;
    const char *s = name_of(rec, key, &owned);
    free(*dst);
    *dst = owned ? owned : s ? xstrdup(s) : NULL;
}

void job_append_reset_sync(job_append *a)
{
    free(a->sync_id);
    a->sync_id = NULL;
    free(a->sync_status);
    a->sync_status = NULL;
    a->tasks_created = -1;
    a->datapoints_processed = -1;
    a->groups_created = -1;
    a->groups_expanded = -1;
}

static cJSON *append_to_record(const job_append *a)
{
    cJSON *o = cJSON_CreateObject();
    json_add_str_or_null(o, "target_job_id", a->target_job_id);
    add_name(o, "target_job_name", a->target_job_name);
    json_add_str_or_null(o, "sync_id", a->sync_id);
    json_add_str_or_null(o, "sync_status", a->sync_status);
    add_ms(o, "tasks_created", a->tasks_created);
    add_ms(o, "datapoints_processed", a->datapoints_processed);
    add_ms(o, "groups_created", a->groups_created);
    add_ms(o, "groups_expanded", a->groups_expanded);
    add_ms(o, "sync_renewals", a->sync_renewals);
    cJSON_AddBoolToObject(o, "partial_accepted", a->partial_accepted);
    return o;
}

/* A record without "append" (every record before append jobs) is a job that does not. */
static void append_from_record(job_append *a, const cJSON *o)
{
    a->on = cJSON_IsObject(o);
    take_str(&a->target_job_id, o, "target_job_id");
    take_name(&a->target_job_name, o, "target_job_name");
    take_str(&a->sync_id, o, "sync_id");
    take_str(&a->sync_status, o, "sync_status");
    a->tasks_created = json_int64(o, "tasks_created", -1);
    a->datapoints_processed = json_int64(o, "datapoints_processed", -1);
    a->groups_created = json_int64(o, "groups_created", -1);
    a->groups_expanded = json_int64(o, "groups_expanded", -1);
    a->sync_renewals = (int)json_int64(o, "sync_renewals", 0);
    a->partial_accepted = json_bool(o, "partial_accepted", false);
}

/* v as a member of a record: a deep copy, or (by_ref, for a record printed and deleted at once)
 * a reference that shares v's members and is not freed with the record: the spec and the
 * history are most of a record, and copying them for every write and digest was most of the
 * loop's work in a burst of claims (bench/pickup, perf). */
static cJSON *record_item(const cJSON *v, bool by_ref)
{
    if (!v)
        return cJSON_CreateNull();
    if (by_ref && cJSON_IsArray(v))
        return cJSON_CreateArrayReference(v->child);
    if (by_ref && cJSON_IsObject(v))
        return cJSON_CreateObjectReference(v->child);
    return cJSON_Duplicate(v, 1);
}

static cJSON *record_build(const job *j, bool by_ref)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "version", JOB_RECORD_VERSION);
    cJSON_AddStringToObject(o, "id", j->id);
    add_name(o, "name", j->name);
    add_name(o, "dir", j->dir);
    add_name(o, "source", j->source);
    cJSON_AddStringToObject(o, "state", job_state_name(j->state));
    cJSON_AddStringToObject(o, "failed_stage", job_state_name(j->failed_stage));
    add_ms(o, "created_at", j->created_at);
    add_ms(o, "updated_at", j->updated_at);
    add_ms(o, "finished_at", j->finished_at);
    if (j->spec)
        cJSON_AddItemToObject(o, "spec", record_item(j->spec, by_ref));
    add_name(o, "upload_path", j->upload_path);
    add_name(o, "upload_name", j->upload_name);
    json_add_str_or_null(o, "upload_sha256", j->upload_sha256);
    add_ms(o, "records", j->records);
    add_ms(o, "rejected_records", j->rejected_records);
    add_ms(o, "bytes_total", j->bytes_total);
    add_ms(o, "bytes_sent", j->bytes_sent);
    json_add_str_or_null(o, "workspace_id", j->workspace_id);
    json_add_str_or_null(o, "dataset_id", j->dataset_id);
    json_add_str_or_null(o, "import_id", j->import_id);
    json_add_str_or_null(o, "upload_url", j->upload_url);
    json_add_str_or_null(o, "upload_content_type", j->upload_content_type);
    add_ms(o, "upload_expires_at", j->upload_expires_at);
    cJSON_AddBoolToObject(o, "uploaded", j->uploaded);
    json_add_str_or_null(o, "import_status", j->import_status);
    add_ms(o, "accepted_count", j->accepted_count);
    add_ms(o, "rejected_count", j->rejected_count);
    json_add_str_or_null(o, "batch_id", j->batch_id);
    json_add_str_or_null(o, "batch_status", j->batch_status);
    add_ms(o, "total_task_count", j->total_task_count);
    add_ms(o, "total_task_groups", j->total_task_groups);
    cJSON_AddBoolToObject(o, "setup_done", j->setup_done);
    if (j->append.on)
        cJSON_AddItemToObject(o, "append", append_to_record(&j->append));
    cJSON_AddStringToObject(o, "pending_op", job_op_name(j->pending_op));
    add_ms(o, "attempts", j->attempts);
    add_ms(o, "upload_refusals", j->upload_refusals);
    add_ms(o, "wait_started_at", j->wait_started_at);
    add_ms(o, "retry_at", j->retry_at);
    cJSON_AddBoolToObject(o, "moved", j->moved);
    json_add_str_or_null(o, "last_error", j->last_error);
    add_ms(o, "api_requests", j->api_requests);
    json_add_str_or_null(o, "error_code", j->error_code);
    json_add_str_or_null(o, "error_message", j->error_message);
    cJSON_AddItemToObject(o, "error_details", record_item(j->error_details, by_ref));
    add_ms(o, "http_status", j->http_status);
    cJSON_AddItemToObject(o, "api_error", record_item(j->api_error, by_ref));
    if (j->history)
        cJSON_AddItemToObject(o, "history", record_item(j->history, by_ref));
    if (j->export)
        cJSON_AddItemToObject(o, "export", export_to_json(j->export));
    return o;
}

cJSON *job_to_record(const job *j)
{
    return record_build(j, false);
}

char *job_record_print(const job *j)
{
    cJSON *rec = record_build(j, true);
    char *text = json_print(rec);
    cJSON_Delete(rec);
    return text;
}

uint64_t job_record_digest(const job *j)
{
    cJSON *rec = record_build(j, true);
    cJSON_DeleteItemFromObjectCaseSensitive(rec, "updated_at");
    cJSON_DeleteItemFromObjectCaseSensitive(rec, "api_requests");
    cJSON_DeleteItemFromObjectCaseSensitive(rec, "bytes_sent");
    char *text = json_print(rec);
    cJSON_Delete(rec);
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        h ^= *c;
        h *= 1099511628211ULL;
    }
    free(text);
    return h;
}

/* What the job made or found at the API. */
static void remote_from_record(job *j, const cJSON *rec)
{
    take_str(&j->workspace_id, rec, "workspace_id");
    take_str(&j->dataset_id, rec, "dataset_id");
    take_str(&j->import_id, rec, "import_id");
    take_str(&j->upload_url, rec, "upload_url");
    take_str(&j->upload_content_type, rec, "upload_content_type");
    j->upload_expires_at = json_int64(rec, "upload_expires_at", 0);
    j->uploaded = json_bool(rec, "uploaded", false);
    take_str(&j->import_status, rec, "import_status");
    j->accepted_count = json_int64(rec, "accepted_count", -1);
    j->rejected_count = json_int64(rec, "rejected_count", -1);
    take_str(&j->batch_id, rec, "batch_id");
    take_str(&j->batch_status, rec, "batch_status");
    j->total_task_count = json_int64(rec, "total_task_count", -1);
    j->total_task_groups = json_int64(rec, "total_task_groups", -1);
    j->setup_done = json_bool(rec, "setup_done", false);
    append_from_record(&j->append, cJSON_GetObjectItemCaseSensitive(rec, "append"));
}

/* A record's export that cannot be read is dropped (the job itself is fine: its batch stays
 * ready), and why goes into its history; the next export starts over. */
static void export_from_record(job *j, const cJSON *o)
{
    if (!o || cJSON_IsNull(o))
        return;
    char why[256] = "";
    j->export = export_from_json(o, why, sizeof why);
    if (!j->export)
        job_note(j, j->updated_at, "its export could not be read back and was dropped: %s", why);
}

job *job_from_record(const cJSON *rec, const char **err)
{
    char *name_owned, *dir_owned;
    const char *id = json_str(rec, "id"), *name = name_of(rec, "name", &name_owned),
               *dir = name_of(rec, "dir", &dir_owned);
    int state = job_state_from_name(json_str(rec, "state"));
    /* The id names the record's file: only letters, digits, '-' and '_'. */
    if (!cJSON_IsObject(rec) || !id || !name || !dir || state < 0 || strlen(id) >= 32 ||
        !apitext_id_ok(id)) {
        *err = "the record lacks id, name, dir or a known state";
        free(name_owned);
        free(dir_owned);
        return NULL;
    }
    if (json_int64(rec, "version", 0) != JOB_RECORD_VERSION) {
        *err = "the record has an unknown version";
        free(name_owned);
        free(dir_owned);
        return NULL;
    }
    job *j = xcalloc(1, sizeof *j);
    strlcpy_bd(j->id, id, sizeof j->id);
    j->name = name_owned ? name_owned : xstrdup(name);
    j->dir = dir_owned ? dir_owned : xstrdup(dir);
    take_name(&j->source, rec, "source");
    j->state = (job_state)state;
    int fs = job_state_from_name(json_str(rec, "failed_stage"));
    j->failed_stage = fs < 0 ? JOB_QUEUED : (job_state)fs;
    j->created_at = json_int64(rec, "created_at", 0);
    j->updated_at = json_int64(rec, "updated_at", 0);
    j->finished_at = json_int64(rec, "finished_at", 0);
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(rec, "spec");
    j->spec = cJSON_IsObject(spec) ? cJSON_Duplicate(spec, 1) : NULL;
    take_name(&j->upload_path, rec, "upload_path");
    take_name(&j->upload_name, rec, "upload_name");
    take_str(&j->upload_sha256, rec, "upload_sha256");
    j->records = json_int64(rec, "records", -1);
    j->rejected_records = json_int64(rec, "rejected_records", -1);
    j->bytes_total = json_int64(rec, "bytes_total", -1);
    j->bytes_sent = json_int64(rec, "bytes_sent", 0);
    remote_from_record(j, rec);
    int op = job_op_from_name(json_str(rec, "pending_op"));
    j->pending_op = op < 0 ? JOB_OP_NONE : (job_op)op;
    /* Only an append job syncs: nothing else would ever resolve such an intent. */
    if (j->pending_op == JOB_OP_SYNC && !j->append.on)
        j->pending_op = JOB_OP_NONE;
    if (j->state == JOB_SYNCING && !j->append.on) {
        /* It would sync a batch it made itself: a record no batchd writes. */
        *err = "the record is in state syncing but is not an append job's";
        job_free(j);
        return NULL;
    }
    j->attempts = (int)json_int64(rec, "attempts", 0);
    j->upload_refusals = (int)json_int64(rec, "upload_refusals", 0);
    j->wait_started_at = json_int64(rec, "wait_started_at", 0);
    j->retry_at = json_int64(rec, "retry_at", 0);
    j->moved = json_bool(rec, "moved", false);
    take_str(&j->last_error, rec, "last_error");
    j->api_requests = json_int64(rec, "api_requests", 0);
    take_str(&j->error_code, rec, "error_code");
    take_str(&j->error_message, rec, "error_message");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(rec, "error_details");
    j->error_details = cJSON_IsArray(d) ? cJSON_Duplicate(d, 1) : NULL;
    j->http_status = (long)json_int64(rec, "http_status", 0);
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(rec, "api_error");
    j->api_error = ae && !cJSON_IsNull(ae) ? cJSON_Duplicate(ae, 1) : NULL;
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(rec, "history");
    j->history = cJSON_IsArray(h) ? cJSON_Duplicate(h, 1) : cJSON_CreateArray();
    export_from_record(j, cJSON_GetObjectItemCaseSensitive(rec, "export"));
    return j;
}

int64_t job_skipped_records(const job *j)
{
    /* Validation keeps rejected_records only for a job it let through: more than 0 only
     * with invalid_records = skip; -1 before validation. */
    return j->rejected_records > 0 ? j->rejected_records : 0;
}

static void add_count(cJSON *o, const char *key, int64_t v)
{
    json_add_int_or_null(o, key, v);
}

/* The first JOB_PUBLIC_RECORD_ERRORS record-level errors (those that name a line or a record
 * index: validation's and an import's; a 422's issues are not about records), so that
 * batchctl show can print them without reading error.json. */
static void add_record_errors(cJSON *o, const job *j)
{
    cJSON *arr = cJSON_AddArrayToObject(o, "record_errors");
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, j->error_details)
    {
        const cJSON *line = cJSON_GetObjectItemCaseSensitive(e, "line");
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(e, "record_index");
        if (!cJSON_IsNumber(line) && !cJSON_IsNumber(idx))
            continue;
        if (n++ == JOB_PUBLIC_RECORD_ERRORS)
            break;
        cJSON *r = cJSON_CreateObject();
        if (cJSON_IsNumber(line))
            cJSON_AddNumberToObject(r, "line", line->valuedouble);
        else
            cJSON_AddNullToObject(r, "line");
        if (cJSON_IsNumber(idx))
            cJSON_AddNumberToObject(r, "record_index", idx->valuedouble);
        json_add_str_or_null(r, "field", json_str(e, "field"));
        json_add_str_or_null(r, "message", json_str(e, "message"));
        cJSON_AddItemToArray(arr, r);
    }
}

/* What an append job adds to, as show and list print it and result.json keeps it: the job
 * appended to ({job, id}), or the ids it was given ({batch_id, dataset_id}). */
static cJSON *append_target(const job *j)
{
    cJSON *t = cJSON_CreateObject();
    if (j->append.target_job_id) {
        json_add_str_or_null(t, "job", j->append.target_job_name);
        cJSON_AddStringToObject(t, "id", j->append.target_job_id);
    } else {
        json_add_str_or_null(t, "batch_id", j->batch_id);
        json_add_str_or_null(t, "dataset_id", j->dataset_id);
    }
    return t;
}

static cJSON *append_public(const job *j)
{
    cJSON *t = append_target(j);
    json_add_str_or_null(t, "sync_id", j->append.sync_id);
    json_add_str_or_null(t, "sync_status", j->append.sync_status);
    return t;
}

static void add_sync_counts(cJSON *o, const job_append *a)
{
    add_count(o, "tasks_created", a->tasks_created);
    add_count(o, "datapoints_processed", a->datapoints_processed);
    add_count(o, "groups_created", a->groups_created);
    add_count(o, "groups_expanded", a->groups_expanded);
}

cJSON *job_to_public(const job *j, bool with_history)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "name", j->name);
    cJSON_AddStringToObject(o, "state", job_state_name(j->state));
    json_add_str_or_null(o, "dataset_id", j->dataset_id);
    json_add_str_or_null(o, "import_id", j->import_id);
    json_add_str_or_null(o, "batch_id", j->batch_id);
    add_count(o, "records", j->records);
    cJSON_AddNumberToObject(o, "skipped_records", (double)job_skipped_records(j));
    add_count(o, "bytes_total", j->bytes_total);
    add_count(o, "bytes_sent", j->bytes_total >= 0 ? j->bytes_sent : -1);
    json_add_str_or_null(o, "import_status", j->import_status);
    add_count(o, "accepted_count", j->accepted_count);
    add_count(o, "rejected_count", j->rejected_count);
    json_add_str_or_null(o, "batch_status", j->batch_status);
    add_count(o, "total_task_count", j->total_task_count);
    if (j->append.on)
        cJSON_AddItemToObject(o, "append_to", append_public(j));
    else
        cJSON_AddNullToObject(o, "append_to");
    cJSON_AddNumberToObject(o, "attempts", j->attempts);
    add_time(o, "retry_at", j->retry_at);
    json_add_str_or_null(o, "last_error", j->last_error);
    add_time(o, "created_at", j->created_at);
    add_time(o, "updated_at", j->updated_at);
    if (j->state == JOB_FAILED || j->state == JOB_CANCELLED) {
        json_add_str_or_null(o, "error_code", j->error_code);
        json_add_str_or_null(o, "error_message", j->error_message);
    }
    json_add_str_or_null(o, "source", j->source);
    if (j->export)
        cJSON_AddItemToObject(o, "export", export_to_public(j->export));
    else
        cJSON_AddNullToObject(o, "export");
    /* Where its files are: a client waiting for a finished job also waits for this to leave
     * active/, so that result.json or error.json is there when it looks. */
    const char *where = !j->moved ? "active" : j->state == JOB_READY ? "done" : "failed";
    char *dir = xasprintf("%s/%s", where, j->dir);
    cJSON_AddStringToObject(o, "dir", dir);
    free(dir);
    if (with_history) {
        cJSON_AddItemToObject(o, "history", cJSON_Duplicate(j->history, 1));
        add_record_errors(o, j);
    }
    return o;
}

cJSON *job_result_json(const job *j)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "job", j->name);
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "state", "ready");
    json_add_str_or_null(o, "workspace_id", j->workspace_id);
    json_add_str_or_null(o, "dataset_id", j->dataset_id);
    json_add_str_or_null(o, "import_id", j->import_id);
    json_add_str_or_null(o, "batch_id", j->batch_id);
    json_add_str_or_null(o, "batch_status", j->batch_status);
    add_count(o, "records", j->records);
    cJSON_AddNumberToObject(o, "skipped_records", (double)job_skipped_records(j));
    add_count(o, "total_task_count", j->total_task_count);
    add_count(o, "total_task_groups", j->total_task_groups);
    if (j->append.on) {
        cJSON_AddItemToObject(o, "append_to", append_target(j));
        json_add_str_or_null(o, "sync_id", j->append.sync_id);
        add_sync_counts(o, &j->append);
    }
    json_add_str_or_null(o, "sha256", j->upload_sha256);
    add_time(o, "claimed_at", j->created_at);
    add_time(o, "finished_at", j->finished_at ? j->finished_at : j->updated_at);
    cJSON_AddNumberToObject(o, "api_requests", (double)j->api_requests);
    return o;
}

static size_t printed_size(const cJSON *o)
{
    char *text = json_print_pretty(o);
    size_t n = strlen(text);
    free(text);
    return n;
}

/* Keeps the first keep entries of a (possibly long) array. */
static void truncate_array(cJSON *a, int keep)
{
    cJSON *rest;
    if (!a || !a->child)
        return;
    if (keep <= 0) {
        rest = a->child;
        a->child = NULL;
    } else {
        cJSON *last = a->child;
        for (int i = 1; i < keep && last->next; i++)
            last = last->next;
        rest = last->next;
        last->next = NULL;
        a->child->prev = last;
    }
    if (rest) {
        rest->prev = NULL;
        cJSON_Delete(rest);
    }
}

/* error.json stays within ERROR_JSON_MAX: the record-level errors that do not fit are
 * dropped from the end, and the message says how many. Everything else in it is capped where
 * it is made (message and texts 4 KiB, api_error 16 KiB). */
static void cap_error_json(cJSON *o)
{
    if (printed_size(o) <= ERROR_JSON_MAX)
        return;
    cJSON *errors = cJSON_GetObjectItemCaseSensitive(o, "errors");
    int total = cJSON_GetArraySize(errors);
    int keep = total;
    /* Roughly first, by each entry's share of the size, then exactly. */
    size_t size = printed_size(o);
    /* The message as it was, so that each round replaces the note instead of adding one. */
    char *base = xstrdup(json_str(o, "message") ? json_str(o, "message") : "");
    while (keep > 0 && size > ERROR_JSON_MAX) {
        int next = (int)((double)keep * ((double)ERROR_JSON_MAX / (double)size) * 0.9);
        keep = next < keep ? next : keep - 1;
        truncate_array(errors, keep);
        char suffix[96];
        snprintf(suffix, sizeof suffix,
                 " (%d more errors not listed: error.json is capped at %d KiB)", total - keep,
                 ERROR_JSON_MAX / 1024);
        char *m = apitext_with_suffix(base, suffix);
        cJSON_ReplaceItemInObjectCaseSensitive(o, "message", cJSON_CreateString(m));
        free(m);
        size = printed_size(o);
    }
    free(base);
    if (size > ERROR_JSON_MAX) /* cannot happen with the caps above; never write more */
        cJSON_ReplaceItemInObjectCaseSensitive(o, "api_error",
                                               cJSON_CreateString("[too large to keep]"));
}

cJSON *job_error_json(const job *j)
{
    /* The remote resources are the dataset and the batch; an import's counts are in message
     * and api_error. */
    error_doc e = {
        .job = j->name,
        .id = j->id,
        .state = j->state == JOB_CANCELLED ? "cancelled" : "failed",
        .stage = job_state_name(j->failed_stage),
        .code = j->error_code ? j->error_code : "cancelled",
        .message = j->error_message,
        .errors = j->error_details,
        .http_status = j->http_status,
        .api_error = j->api_error,
        .dataset_id = j->dataset_id,
        .batch_id = j->batch_id,
        .at_ms = j->finished_at ? j->finished_at : j->updated_at,
    };
    cJSON *o = error_json_new(&e);
    cap_error_json(o);
    return o;
}
