/* util_errjson: the one builder of error.json. The daemon's finished jobs (job.c), entries
 * rejected as they are claimed (spool.c) and the intake checks all write the same document,
 * with the keys in the order man/batchd.8.scd shows. */
#include <stdint.h>

#include "batchd/util.h"

cJSON *error_json_new(const error_doc *e)
{
    cJSON *o = cJSON_CreateObject();
    json_add_str_or_null(o, "job", e->job);
    json_add_str_or_null(o, "id", e->id);
    cJSON_AddStringToObject(o, "state", e->state ? e->state : "failed");
    json_add_str_or_null(o, "stage", e->stage);
    json_add_str_or_null(o, "code", e->code);
    json_add_str_or_null(o, "message", e->message);
    cJSON_AddItemToObject(o, "errors",
                          e->errors ? cJSON_Duplicate(e->errors, true) : cJSON_CreateArray());
    if (e->http_status > 0)
        cJSON_AddNumberToObject(o, "http_status", (double)e->http_status);
    else
        cJSON_AddNullToObject(o, "http_status");
    cJSON_AddItemToObject(o, "api_error",
                          e->api_error ? cJSON_Duplicate(e->api_error, true) : cJSON_CreateNull());
    json_add_str_or_null(o, "dataset_id", e->dataset_id);
    json_add_str_or_null(o, "batch_id", e->batch_id);
    char at[40];
    if (e->at_ms > 0)
        cJSON_AddStringToObject(o, "at", time_format_rfc3339(e->at_ms, false, at, sizeof at));
    else
        cJSON_AddNullToObject(o, "at");
    return o;
}
