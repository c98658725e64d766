/* simcore_upload: the presigned PUT. Checks the request the way S3 does, streams the bytes
 * through records (one record in memory at a time) and turns the verdicts into the
 * import's accepted/rejected counts, errors[] and task groups. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/csv.h"
#include "batchd/records.h"
#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

struct simcore_upload {
    char dataset_id[37];
    char import_id[37];
    records_format format;
    records_schema *schema;
    records_validator *validator;
    size_t max_errors;
    cJSON *errors;
    uint64_t accepted, rejected;
    char *group_field;
    long group_col; /* CSV: column of group_field; -2 until the header is known */
    sim_hashset groups;
    uint64_t hash, bytes;
    char first_problem[512];
};

/* ---- records glue -------------------------------------------------------------- */

/* Only records the validator accepted (and its accepted header) get here, so the CSV
 * splitter sees well-formed records only. */
static void add_group(simcore_upload *u, const char *raw, size_t len)
{
    char *value = NULL;
    size_t n = 0;
    if (u->format == RECORDS_JSONL) {
        cJSON *rec = cJSON_ParseWithLength(raw, len);
        const char *s = json_str(rec, u->group_field);
        if (s) {
            n = strlen(s);
            value = xstrndup(s, n);
        }
        cJSON_Delete(rec);
    } else {
        if (u->group_col == -2) {
            size_t hlen = 0;
            const char *h = records_csv_header(u->validator, &hlen);
            u->group_col = h ? csv_column(h, hlen, u->group_field) : -1;
        }
        strbuf field;
        strbuf_init(&field);
        if (u->group_col >= 0 && csv_field(raw, len, (size_t)u->group_col, &field) == 0 &&
            field.len > 0) {
            n = field.len;
            value = strbuf_steal(&field);
        }
        strbuf_free(&field);
    }
    uint64_t h;
    if (value) {
        h = sim_hash(value, n);
    } else {
        /* A record without a group value forms a group of its own. */
        uint64_t idx = u->accepted + u->rejected;
        /* Salted with the import, so that record 0 of two imports are two groups when
         * a sync counts them against the batch's groups. */
        h = sim_hash(&idx, sizeof idx) ^ sim_hash(u->import_id, strlen(u->import_id)) ^
            0x5bd1e995ULL;
    }
    free(value);
    sim_hashset_add(&u->groups, h);
}

static int on_record(void *ud, const char *raw, size_t raw_len, uint64_t record, const diag *errors)
{
    simcore_upload *u = ud;
    if (errors->count == 0) {
        if (u->group_field)
            add_group(u, raw, raw_len);
        u->accepted++;
        return 0;
    }
    u->rejected++;
    for (size_t i = 0; i < errors->count; i++) {
        const diag_entry *de = &errors->entries[i];
        if (!u->first_problem[0])
            snprintf(u->first_problem, sizeof u->first_problem, "record %llu (line %llu)%s%s: %s",
                     (unsigned long long)record, (unsigned long long)de->line,
                     de->field ? ", field " : "", de->field ? de->field : "", de->message);
        if ((size_t)cJSON_GetArraySize(u->errors) >= u->max_errors)
            continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "record_index", (double)record);
        /* The API marks a whole-record problem with the field "_raw". */
        cJSON_AddStringToObject(e, "field", de->field ? de->field : "_raw");
        cJSON_AddStringToObject(e, "reason", de->message);
        cJSON_AddItemToArray(u->errors, e);
    }
    return 0;
}

void simcore_upload_free(simcore_upload *u)
{
    if (!u)
        return;
    records_free(u->validator);
    records_schema_free(u->schema);
    cJSON_Delete(u->errors);
    free(u->group_field);
    sim_hashset_free(&u->groups);
    free(u);
}

int simcore_upload_begin(simcore *sim, const char *file_key, const simcore_request *req,
                         simcore_upload **out, simcore_response *resp)
{
    memset(resp, 0, sizeof *resp);
    *out = NULL;
    if (req->authorization) {
        sim_s3_error(resp, 400, "InvalidArgument",
                     "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                     "Signature query string parameter or the Authorization header should be "
                     "specified");
        return -EINVAL;
    }
    sim_dataset *d = NULL;
    sim_import *imp = sim_find_import_by_key(sim, file_key, &d);
    const char *sig = req->query ? req->query(req->query_ud, "X-Amz-Signature") : NULL;
    if (!imp) {
        sim_s3_error(resp, 403, "AccessDenied", "Access Denied");
        return -EACCES;
    }
    if (!sig || strcmp(sig, imp->signature) != 0) {
        sim_s3_error(resp, 403, "SignatureDoesNotMatch",
                     "The request signature we calculated does not match the signature you "
                     "provided. Check your key and signing method.");
        return -EACCES;
    }
    if (req->now_ms >= imp->expires_ms) {
        sim_s3_error(resp, 403, "AccessDenied", "Request has expired");
        return -EACCES;
    }
    if (!req->content_type || strcmp(req->content_type, imp->content_type) != 0) {
        sim_s3_error(resp, 403, "SignatureDoesNotMatch",
                     "The request signature we calculated does not match the signature you "
                     "provided. Check your key and signing method.");
        return -EACCES;
    }
    simcore_upload *u = xcalloc(1, sizeof *u);
    strlcpy_bd(u->dataset_id, d->id, sizeof u->dataset_id);
    strlcpy_bd(u->import_id, imp->id, sizeof u->import_id);
    u->format = strcmp(imp->content_type, "text/csv") == 0 ? RECORDS_CSV : RECORDS_JSONL;
    u->schema = records_schema_new(d->schema);
    u->max_errors = sim->cfg.max_errors;
    u->errors = cJSON_CreateArray();
    u->group_field = d->group_field ? xstrdup(d->group_field) : NULL;
    u->group_col = -2;
    u->hash = sim_hash("", 0);
    if (u->schema) {
        records_options o = {.format = u->format,
                             .schema = u->schema,
                             .max_record = sim->cfg.max_record,
                             .on_record = on_record,
                             .ud = u};
        u->validator = records_new(&o);
    }
    *out = u;
    return 0;
}

void simcore_upload_feed(simcore_upload *u, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        u->hash ^= p[i];
        u->hash *= 0x100000001b3ULL;
    }
    u->bytes += len;
    if (u->validator)
        records_feed(u->validator, data, len);
}

/* Decides complete / partial / failed from what the validator saw. */
static void upload_outcome(simcore_upload *u, sim_import *imp)
{
    uint64_t line = 0;
    const char *ferr = u->validator ? records_file_error(u->validator, &line) : "no schema";
    if (ferr) {
        imp->outcome = SIM_OUTCOME_FAILED;
        imp->reason = xasprintf("The file could not be processed: line %llu: %s",
                                (unsigned long long)line, ferr);
    } else if (u->accepted == 0) {
        imp->outcome = SIM_OUTCOME_FAILED;
        imp->reason = u->rejected == 0
                          ? xstrdup("The file holds no records.")
                          : xasprintf("None of the %llu records matches the schema; first "
                                      "problem: %s",
                                      (unsigned long long)u->rejected, u->first_problem);
    } else {
        imp->outcome = u->rejected ? SIM_OUTCOME_PARTIAL : SIM_OUTCOME_COMPLETE;
        imp->accepted = u->accepted;
        imp->rejected = u->rejected;
        cJSON_Delete(imp->errors);
        imp->errors = u->errors;
        u->errors = NULL;
        imp->groups = u->groups;
        u->groups = (sim_hashset){0};
    }
}

void simcore_upload_finish(simcore *sim, simcore_upload *u, int64_t now_ms, simcore_response *resp)
{
    memset(resp, 0, sizeof *resp);
    if (u->validator)
        records_finish(u->validator);
    resp->status = 200;
    snprintf(resp->etag, sizeof resp->etag, "\"%016llx%016llx\"", (unsigned long long)u->hash,
             (unsigned long long)u->bytes);
    sim_dataset *d = sim_find_dataset(sim, u->dataset_id);
    sim_import *imp = d ? sim_find_import(d, u->import_id) : NULL;
    /* Like S3, a second PUT to a live URL succeeds, but the import was triggered by the
     * first one and does not change. */
    if (imp && imp->uploaded_ms < 0) {
        upload_outcome(u, imp);
        imp->uploaded_ms = now_ms;
        int64_t start = now_ms + sim->cfg.import_queued_ms;
        if (start < d->last_finish_ms)
            start = d->last_finish_ms;
        imp->start_ms = start;
        imp->finish_ms = start + sim->cfg.import_processing_ms;
        d->last_finish_ms = imp->finish_ms;
    }
    simcore_upload_free(u);
}
