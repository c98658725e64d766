/* simcore_export: batch export jobs (api-2 §4) and the presigned URL their ZIP is fetched
 * from. A job generates for export_generating_ms, then is complete (or failed when its
 * ZIP would be too large for a plain ZIP). Each GET of a complete job signs a fresh URL
 * valid for export_url_ttl_ms, as the API does; the URL is checked the way S3 checks one
 * (the signature covers the key, X-Amz-Date and X-Amz-Expires), so an old URL stays
 * valid until it expires whatever newer ones were handed out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

/* The newer docs: at most 10 jobs per batch, all filters combined. */
#define EXPORT_CAP 10
/* A stored ZIP without ZIP64 stays below 4 GiB; a job whose estimate reaches this fails. */
#define EXPORT_MAX_BYTES (4000ULL * 1024 * 1024)

static const char *export_status_at(const sim_export *e, int64_t now_ms)
{
    if (now_ms < e->ready_ms)
        return "generating";
    return e->failed ? "failed" : "complete";
}

static sim_export *find_export(const sim_batch *b, const char *id)
{
    for (size_t i = 0; i < b->n_exports; i++)
        if (strcmp(b->exports[i]->id, id) == 0)
            return b->exports[i];
    return NULL;
}

static void export_free(sim_export *e)
{
    free(e->study_id);
    free(e->from);
    free(e->to);
    free(e);
}

static bool same_filter(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* ---- presigned URLs --------------------------------------------------------------- */

/* "20260901T120000Z", the form of X-Amz-Date. */
static void amz_date(int64_t sec, char out[17])
{
    time_t t = (time_t)sec;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static void sign(const simcore *sim, const char *key, const char *date, const char *expires,
                 char out[17])
{
    char *text =
        xasprintf("%016llx\n%s\n%s\n%s", (unsigned long long)sim->url_secret, key, date, expires);
    uint64_t h = sim_hash(text, strlen(text));
    free(text);
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static char *export_key(const sim_batch *b, const sim_export *e)
{
    return xasprintf("exports/%s/%s.zip", b->id, e->id);
}

/* A URL signed at now_ms; *expires_ms is when it stops working. */
static char *presign(const simcore *sim, const sim_batch *b, const sim_export *e, int64_t now_ms,
                     int64_t *expires_ms)
{
    int64_t ttl_s = sim->cfg.export_url_ttl_ms / 1000;
    if (ttl_s < 1)
        ttl_s = 1; /* X-Amz-Expires is whole seconds */
    char date[17], expires[24], sig[17];
    amz_date(now_ms / 1000, date);
    snprintf(expires, sizeof expires, "%lld", (long long)ttl_s);
    char *key = export_key(b, e);
    sign(sim, key, date, expires, sig);
    *expires_ms = (now_ms / 1000 + ttl_s) * 1000;
    char *url = xasprintf("%s/_download/%s?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=%s"
                          "&X-Amz-Expires=%s&X-Amz-SignedHeaders=host&X-Amz-Signature=%s",
                          sim->base_url, key, date, expires, sig);
    free(key);
    return url;
}

/* The decimal number of the n digits at p, or -1. */
static int digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* X-Amz-Date ("20260901T120000Z") + X-Amz-Expires (seconds) in epoch ms, or -1 when they
 * do not parse. */
static int64_t url_expiry(const char *date, const char *expires)
{
    size_t elen = strlen(expires);
    if (strlen(date) != 16 || date[8] != 'T' || date[15] != 'Z' || elen == 0 || elen > 6 ||
        digits(expires, (int)elen) < 0)
        return -1;
    char iso[32];
    snprintf(iso, sizeof iso, "%.4s-%.2s-%.2sT%.2s:%.2s:%.2sZ", date, date + 4, date + 6, date + 9,
             date + 11, date + 13);
    int64_t ms;
    if (digits(date, 8) < 0 || digits(date + 9, 6) < 0 || time_parse_rfc3339(iso, &ms) < 0)
        return -1;
    return ms + (int64_t)digits(expires, (int)elen) * 1000;
}

/* ---- the job's JSON --------------------------------------------------------------- */

/* BatchExportStatus (api-2 §4.3): generating with export_id, complete with url and
 * expires_at, failed with status only. */
static cJSON *status_json(const simcore *sim, const sim_batch *b, const sim_export *e,
                          int64_t now_ms)
{
    const char *status = export_status_at(e, now_ms);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", status);
    if (strcmp(status, "generating") == 0) {
        cJSON_AddStringToObject(j, "export_id", e->id);
    } else if (strcmp(status, "complete") == 0) {
        int64_t expires;
        char *url = presign(sim, b, e, now_ms, &expires);
        cJSON_AddStringToObject(j, "url", url);
        free(url);
        char buf[40];
        cJSON_AddStringToObject(j, "expires_at",
                                time_format_rfc3339(expires, false, buf, sizeof buf));
    }
    return j;
}

/* One entry of the list (and of /_sim/state). The list's schema is unconfirmed (api-2
 * §4.4): the sim gives each job's id, status, creation time and filters. */
static cJSON *list_item(const sim_export *e, int64_t now_ms)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "export_id", e->id);
    cJSON_AddStringToObject(j, "status", export_status_at(e, now_ms));
    sim_add_time(j, "created_at", e->created_ms);
    cJSON *f = cJSON_AddObjectToObject(j, "filters");
    json_add_str_or_null(f, "study_id", e->study_id);
    json_add_str_or_null(f, "from", e->from);
    json_add_str_or_null(f, "to", e->to);
    return j;
}

cJSON *sim_exports_json(const sim_batch *b, int64_t now_ms)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = b->n_exports; i-- > 0;) /* most recent first */
        cJSON_AddItemToArray(a, list_item(b->exports[i], now_ms));
    return a;
}

/* ---- handlers --------------------------------------------------------------------- */

typedef struct export_filters {
    const char *study_id, *from, *to;
} export_filters;

/* Reads study_id, from and to; from/to must be ISO 8601 date-times (the format is
 * unconfirmed, api-2 §4.2). Returns false with resp filled. */
static bool read_filters(const simcore_request *req, export_filters *f, simcore_response *resp)
{
    const char *(*q)(void *, const char *) = req->query;
    f->study_id = q ? q(req->query_ud, "study_id") : NULL;
    f->from = q ? q(req->query_ud, "from") : NULL;
    f->to = q ? q(req->query_ud, "to") : NULL;
    const char *bad = NULL;
    int64_t ms;
    if (f->from && time_parse_rfc3339(f->from, &ms) < 0)
        bad = "from";
    else if (f->to && time_parse_rfc3339(f->to, &ms) < 0)
        bad = "to";
    if (bad) {
        char *msg = xasprintf("Query parameter '%s' must be an ISO 8601 date-time such as "
                              "2026-09-01T12:00:00Z.",
                              bad);
        simcore_response_error(resp, 400, msg);
        free(msg);
        return false;
    }
    return true;
}

/* A rough upper bound of the ZIP's size: the records' text plus their padding. */
static uint64_t estimate_bytes(const sim_batch *b, const sim_export *e)
{
    uint64_t records = e->task_count + e->task_groups;
    uint64_t per_response = 900;
    uint64_t responses = e->task_count * (uint64_t)(b->instruction_count + 1) * 2;
    return records * (uint64_t)(e->pad + 300) + responses * per_response;
}

static sim_export *new_export(simcore *sim, sim_batch *b, const export_filters *f, int64_t now)
{
    sim_export *e = xcalloc(1, sizeof *e);
    uuid_v7(now, e->id);
    e->created_ms = now;
    e->ready_ms = now + sim->cfg.export_generating_ms;
    e->study_id = f->study_id ? xstrdup(f->study_id) : NULL;
    e->from = f->from ? xstrdup(f->from) : NULL;
    e->to = f->to ? xstrdup(f->to) : NULL;
    /* A snapshot: responses made after the POST are not in this job. */
    if (strcmp(sim_batch_status_at(b, now), "READY") == 0)
        sim_batch_counts_at(sim, b, now, &e->task_count, &e->task_groups);
    e->pad = sim->faults.export_pad;
    e->failed = estimate_bytes(b, e) >= EXPORT_MAX_BYTES;
    b->exports = sim_grow(b->exports, &b->cap_exports, b->n_exports, sizeof(void *));
    b->exports[b->n_exports++] = e;
    return e;
}

static void respond_generating(simcore_response *resp, const sim_export *e)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", "generating");
    cJSON_AddStringToObject(j, "export_id", e->id);
    sim_respond_json(resp, 202, j);
}

/* The job POST answers with instead of making one, or NULL. New behaviour: a generating
 * job with the same filters. Old behaviour: any generating job, else any complete one. */
static const sim_export *reusable(const sim_batch *b, const export_filters *f, bool old,
                                  int64_t now)
{
    const sim_export *complete = NULL;
    for (size_t i = b->n_exports; i-- > 0;) {
        const sim_export *e = b->exports[i];
        const char *st = export_status_at(e, now);
        if (strcmp(st, "generating") == 0 &&
            (old || (same_filter(e->study_id, f->study_id) && same_filter(e->from, f->from) &&
                     same_filter(e->to, f->to))))
            return e;
        if (old && !complete && strcmp(st, "complete") == 0)
            complete = e;
    }
    return complete;
}

static void handle_post(simcore *sim, sim_batch *b, const simcore_request *req,
                        simcore_response *resp)
{
    export_filters f;
    if (!read_filters(req, &f, resp))
        return;
    bool old = sim->faults.export_mode == SIMCORE_EXPORT_OLD;
    const sim_export *e = reusable(b, &f, old, req->now_ms);
    if (e && strcmp(export_status_at(e, req->now_ms), "complete") == 0) {
        sim_respond_json(resp, 200, status_json(sim, b, e, req->now_ms));
        return;
    }
    if (e) {
        respond_generating(resp, e);
        return;
    }
    if (b->n_exports >= EXPORT_CAP) {
        /* The code for the cap is unconfirmed (409, 400 or 429, api-2 §4.2); 409, the
         * code DELETE uses for a job in the wrong state, with the Error envelope. */
        char *msg = xasprintf("Batch '%s' already has %d export jobs, the most it may have; "
                              "delete one (DELETE …/export/{export_id}) and ask again.",
                              b->id, EXPORT_CAP);
        simcore_response_error(resp, 409, msg);
        free(msg);
        return;
    }
    respond_generating(resp, new_export(sim, b, &f, req->now_ms));
}

static void handle_delete(sim_batch *b, const simcore_route *rt, int64_t now,
                          simcore_response *resp)
{
    for (size_t i = 0; i < b->n_exports; i++) {
        sim_export *e = b->exports[i];
        if (strcmp(e->id, rt->sub) != 0)
            continue;
        if (strcmp(export_status_at(e, now), "generating") == 0) {
            simcore_response_error(resp, 409,
                                   "The export is still generating; wait until it is complete "
                                   "or failed, then delete it.");
            return;
        }
        memmove(b->exports + i, b->exports + i + 1, (b->n_exports - i - 1) * sizeof(void *));
        b->n_exports--;
        export_free(e);
        /* "Export deleted"; the code is unconfirmed (200 or 204, api-2 §4.4): 204. */
        resp->status = 204;
        return;
    }
    sim_respond_not_found(resp, "export job", rt->sub);
}

void sim_handle_export(simcore *sim, const simcore_route *rt, const simcore_request *req,
                       simcore_response *resp)
{
    sim_batch *b = sim_find_batch(sim, rt->id);
    if (!b) {
        sim_respond_not_found(resp, "batch", rt->id);
        return;
    }
    if (rt->endpoint == SIMCORE_EP_EXPORT) {
        handle_post(sim, b, req, resp);
    } else if (rt->endpoint == SIMCORE_EP_LIST_EXPORTS) {
        /* The list's envelope is unconfirmed (api-2 §4.4): results + meta, as the API's
         * other lists. */
        cJSON *j = cJSON_CreateObject();
        cJSON_AddItemToObject(j, "results", sim_exports_json(b, req->now_ms));
        cJSON *meta = cJSON_AddObjectToObject(j, "meta");
        cJSON_AddNumberToObject(meta, "count", (double)b->n_exports);
        sim_respond_json(resp, 200, j);
    } else if (rt->endpoint == SIMCORE_EP_DELETE_EXPORT) {
        handle_delete(b, rt, req->now_ms, resp);
    } else {
        const sim_export *e = find_export(b, rt->sub);
        if (!e)
            sim_respond_not_found(resp, "export job", rt->sub);
        else
            sim_respond_json(resp, 200, status_json(sim, b, e, req->now_ms));
    }
}

/* ---- the download ----------------------------------------------------------------- */

/* "exports/BATCH/EXPORT.zip" → the job, or NULL. */
static const sim_export *export_by_key(const simcore *sim, const char *key, const sim_batch **bo)
{
    char batch[37], exp[37];
    if (strncmp(key, "exports/", 8) != 0 || strlen(key) != 8 + 36 + 1 + 36 + 4 ||
        key[8 + 36] != '/' || strcmp(key + 8 + 36 + 1 + 36, ".zip") != 0)
        return NULL;
    memcpy(batch, key + 8, 36);
    batch[36] = '\0';
    memcpy(exp, key + 8 + 37, 36);
    exp[36] = '\0';
    const sim_batch *b = sim_find_batch(sim, batch);
    *bo = b;
    return b ? find_export(b, exp) : NULL;
}

/* Checks the presigned GET as S3 does: one auth mechanism only, then the signature, then
 * the expiry, then whether the object exists. Returns false with resp filled. */
static bool download_allowed(const simcore *sim, const char *key, const simcore_request *req,
                             simcore_response *resp)
{
    if (req->authorization) {
        sim_s3_error(resp, 400, "InvalidArgument",
                     "Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                     "parameter, Signature query string parameter or the Authorization header "
                     "should be specified");
        return false;
    }
    const char *(*q)(void *, const char *) = req->query;
    const char *date = q ? q(req->query_ud, "X-Amz-Date") : NULL;
    const char *expires = q ? q(req->query_ud, "X-Amz-Expires") : NULL;
    const char *sig = q ? q(req->query_ud, "X-Amz-Signature") : NULL;
    if (!date || !expires || !sig) {
        sim_s3_error(resp, 403, "AccessDenied", "Access Denied");
        return false;
    }
    char want[17];
    sign(sim, key, date, expires, want);
    int64_t expiry = url_expiry(date, expires);
    if (strcmp(sig, want) != 0 || expiry < 0) {
        sim_s3_error(resp, 403, "SignatureDoesNotMatch",
                     "The request signature we calculated does not match the signature you "
                     "provided. Check your key and signing method.");
        return false;
    }
    if (req->now_ms >= expiry) {
        sim_s3_error(resp, 403, "AccessDenied", "Request has expired");
        return false;
    }
    return true;
}

void sim_handle_download(simcore *sim, const simcore_route *rt, const simcore_request *req,
                         simcore_response *resp)
{
    if (!download_allowed(sim, rt->sub, req, resp))
        return;
    const sim_batch *b = NULL;
    const sim_export *e = export_by_key(sim, rt->sub, &b);
    if (!e || strcmp(export_status_at(e, req->now_ms), "complete") != 0) {
        sim_s3_error(resp, 404, "NoSuchKey", "The specified key does not exist.");
        return;
    }
    sim_zip_source src = {.batch_id = b->id,
                          .base_ms = b->ready_ms,
                          .task_count = e->task_count,
                          .task_groups = e->task_groups,
                          .batch_items = b->batch_items,
                          .pad = e->pad};
    const sim_dataset *d = b->dataset_id[0] ? sim_find_dataset(sim, b->dataset_id) : NULL;
    /* 0: predetermined grouping */
    src.tasks_per_group = d && d->group_field ? 0 : b->tasks_per_group;
    resp->status = 200;
    resp->content_type = "application/zip";
    resp->stream = sim_zip_new(&src);
}

void sim_exports_free(sim_batch *b)
{
    for (size_t i = 0; i < b->n_exports; i++)
        export_free(b->exports[i]);
    free(b->exports);
    b->exports = NULL;
    b->n_exports = b->cap_exports = 0;
}
