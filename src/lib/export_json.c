/* export_json: the export's record form (inside the job's record), strict on read, and its
 * public form. The presigned URL is never written: after a restart it is asked for again. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/apitext.h"
#include "batchd/export.h"
#include "batchd/util.h"

/* Bounds a record's numbers must keep: times within the years 2000 to 9999 (or 0), counters
 * small. Anything else was not written by batchd. */
#define TIME_MAX_MS  253402300799999LL
#define COUNT_MAX    1000000
#define TEXT_MAX_LEN (APITEXT_MAX + 64)

static void add_ms(cJSON *o, const char *key, int64_t v)
{
    cJSON_AddNumberToObject(o, key, (double)v);
}

cJSON *export_to_json(const export_job *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", export_state_name(e->state));
    json_add_str_or_null(o, "export_id", e->export_id);
    json_add_str_or_null(o, "path", e->path);
    add_ms(o, "requested_at", e->requested_at);
    add_ms(o, "at", e->at);
    json_add_str_or_null(o, "error", e->error);
    json_add_str_or_null(o, "last_error", e->last_error);
    json_add_str_or_null(o, "pending", e->pending == EXPORT_OP_REQUEST ? "request" : NULL);
    cJSON_AddBoolToObject(o, "delete_pending", e->delete_pending);
    cJSON_AddBoolToObject(o, "was_complete", e->was_complete);
    add_ms(o, "attempts", e->attempts);
    add_ms(o, "renewals", e->renewals);
    add_ms(o, "refusals", e->refusals);
    add_ms(o, "polls", e->polls);
    add_ms(o, "retry_at", e->retry_at);
    add_ms(o, "wait_started_at", e->wait_started_at);
    return o;
}

cJSON *export_to_public(const export_job *e)
{
    cJSON *o = cJSON_CreateObject();
    char buf[40];
    cJSON_AddStringToObject(o, "state", export_state_name(e->state));
    json_add_str_or_null(o, "export_id", e->export_id);
    json_add_str_or_null(o, "path", e->path);
    if (e->at > 0)
        cJSON_AddStringToObject(o, "at", time_format_rfc3339(e->at, false, buf, sizeof buf));
    else
        cJSON_AddNullToObject(o, "at");
    /* While retrying, what the last attempt saw; once failed, why. */
    json_add_str_or_null(o, "error", e->state == EXPORT_FAILED ? e->error : e->last_error);
    return o;
}

/* ---- strict reading ---- */

typedef struct reader {
    const cJSON *o;
    char *err;
    size_t errlen;
    bool bad;
} reader;

/* Writes "export.KEY: WHAT" (or "export: WHAT" without a key); the first problem is the
 * one reported. */
static void reject(reader *rd, const char *key, const char *what)
{
    if (!rd->bad && rd->err && rd->errlen)
        snprintf(rd->err, rd->errlen, "export%s%s: %s", key ? "." : "", key ? key : "", what);
    rd->bad = true;
}

static const char *const known_keys[] = {
    "state",      "export_id", "path",           "requested_at",    "at",       "error",
    "last_error", "pending",   "delete_pending", "was_complete",    "attempts", "renewals",
    "refusals",   "polls",     "retry_at",       "wait_started_at",
};

static void check_keys(reader *rd)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, rd->o)
    {
        bool known = false;
        for (size_t i = 0; i < BD_ARRAY_LEN(known_keys) && !known; i++)
            known = m->string && strcmp(m->string, known_keys[i]) == 0;
        if (!known) {
            char *shown = apitext_display(m->string ? m->string : "", 64, NULL);
            char *what = xasprintf("unknown member \"%s\"", shown);
            reject(rd, NULL, what);
            free(what);
            free(shown);
            return;
        }
    }
}

/* An integer member within [0, max]; absent is 0. */
static int64_t get_int(reader *rd, const char *key, int64_t max)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rd->o, key);
    if (!v)
        return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    if (!cJSON_IsNumber(v) || !(d >= 0) || d > (double)max || floor(d) != d) {
        char what[64];
        snprintf(what, sizeof what, "not an integer from 0 to %lld", (long long)max);
        reject(rd, key, what);
        return 0;
    }
    return (int64_t)d;
}

static bool get_bool(reader *rd, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rd->o, key);
    if (v && !cJSON_IsBool(v))
        reject(rd, key, "not true or false");
    return cJSON_IsTrue(v);
}

/* A string member (NULL when absent or null): valid UTF-8, no NUL, bounded. */
static char *get_str(reader *rd, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rd->o, key);
    if (!v || cJSON_IsNull(v))
        return NULL;
    if (!cJSON_IsString(v) || !v->valuestring) {
        reject(rd, key, "not a string or null");
        return NULL;
    }
    size_t len = strlen(v->valuestring);
    if (len > TEXT_MAX_LEN || !utf8_valid(v->valuestring, len)) {
        reject(rd, key, "too long or not UTF-8");
        return NULL;
    }
    return xstrdup(v->valuestring);
}

/* path: "exports/NAME" where NAME is one export_dest_name makes: the runner later opens,
 * hands to hooks and prunes it, so no other file can be named here. */
static void check_path(reader *rd, const char *path)
{
    static const char prefix[] = EXPORT_DIR "/";
    if (path && (strncmp(path, prefix, sizeof prefix - 1) != 0 ||
                 !export_name_parse(path + sizeof prefix - 1, NULL, NULL)))
        reject(rd, "path", "not a name batchd makes (" EXPORT_DIR "/YYYYMMDDTHHMMSSZ.zip)");
}

static void check_consistent(reader *rd, const export_job *e)
{
    if (e->export_id && !apitext_id_ok(e->export_id))
        reject(rd, "export_id", "not an id (1 to 128 letters, digits, '-' or '_')");
    check_path(rd, e->path);
    if (e->state == EXPORT_COMPLETE && !e->path)
        reject(rd, NULL, "state complete without a path");
    if (e->state != EXPORT_COMPLETE && e->path)
        reject(rd, "path", "set while the state is not complete");
    if (e->state == EXPORT_GENERATING && !e->export_id)
        reject(rd, NULL, "state generating without an export_id");
    if (e->state == EXPORT_FAILED && !e->error)
        reject(rd, NULL, "state failed without an error");
    if (e->delete_pending &&
        ((e->state != EXPORT_COMPLETE && e->state != EXPORT_FAILED) || !e->export_id))
        reject(rd, "delete_pending", "set without a finished export and its export_id");
}

static void read_fields(reader *rd, export_job *e)
{
    e->export_id = get_str(rd, "export_id");
    e->path = get_str(rd, "path");
    e->error = get_str(rd, "error");
    e->last_error = get_str(rd, "last_error");
    char *pending = get_str(rd, "pending");
    if (pending && strcmp(pending, "request") != 0)
        reject(rd, "pending", "not \"request\" or null");
    e->pending = pending ? EXPORT_OP_REQUEST : EXPORT_OP_NONE;
    free(pending);
    e->requested_at = get_int(rd, "requested_at", TIME_MAX_MS);
    e->at = get_int(rd, "at", TIME_MAX_MS);
    e->retry_at = get_int(rd, "retry_at", TIME_MAX_MS);
    e->wait_started_at = get_int(rd, "wait_started_at", TIME_MAX_MS);
    e->attempts = (int)get_int(rd, "attempts", COUNT_MAX);
    e->renewals = (int)get_int(rd, "renewals", COUNT_MAX);
    e->refusals = (int)get_int(rd, "refusals", COUNT_MAX);
    e->polls = (int)get_int(rd, "polls", COUNT_MAX);
    e->delete_pending = get_bool(rd, "delete_pending");
    e->was_complete = get_bool(rd, "was_complete");
}

export_job *export_from_json(const cJSON *o, char *err, size_t errlen)
{
    reader rd = {.o = o, .err = err, .errlen = errlen};
    if (err && errlen)
        err[0] = '\0';
    if (!cJSON_IsObject(o)) {
        reject(&rd, NULL, "not a JSON object");
        return NULL;
    }
    check_keys(&rd);
    const char *st = json_str(o, "state");
    int state = export_state_from_name(st);
    if (state < 0)
        reject(&rd, "state", "not one of requested, generating, downloading, complete, failed");
    if (rd.bad)
        return NULL;
    export_job *e = export_new(0);
    e->state = (export_state)state;
    read_fields(&rd, e);
    if (!rd.bad)
        check_consistent(&rd, e);
    if (rd.bad) {
        export_free(e);
        return NULL;
    }
    return e;
}
