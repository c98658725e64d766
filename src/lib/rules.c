/* rules: the dataset schema, task_details, whole request bodies and the API's two error
 * shapes. The batch_items walk is in rules_items.c; the checking context and helpers both
 * share are in rules_ctx.c.
 *
 * Source of truth is Prolific's published OpenAPI description of the Task Builder API. It
 * declares no `additionalProperties: false` on any request object, so members it does not
 * name are accepted everywhere (the CLI refuses unknown keys in a schema client-side, but
 * the API does not document doing so). Rules the OpenAPI can express (types, required
 * members, enums, formats, counts) are REQUEST issues (400); the documented semantic and
 * cross-field rules of batch_items are BATCH_ITEMS issues (422). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/rules.h"
#include "batchd/util.h"
#include "rules_internal.h"

#define RULES_MAX_FIELDS      200
#define RULES_MAX_KEY_CHARS   128
#define RULES_MAX_LABEL_CHARS 255
/* Past this many schema fields the duplicate-key scan (quadratic) is skipped: the
 * "too many fields" issue already rejects the schema. */
#define RULES_DUP_SCAN_LIMIT 1000

/* ---- schema ---------------------------------------------------------------------------- */

static void check_field_key(rules_ctx *c, const char *key)
{
    long chars = rutf8_chars(key);
    if (chars < 0)
        rctx_issue(c, RULES_KIND_REQUEST, NULL, "field key is not valid UTF-8");
    else if (chars == 0)
        rctx_issue(c, RULES_KIND_REQUEST, NULL, "field key is empty; keys are 1 to %d characters",
                   RULES_MAX_KEY_CHARS);
    else if (chars > RULES_MAX_KEY_CHARS)
        rctx_issue(c, RULES_KIND_REQUEST, NULL,
                   "field key is %ld characters long; keys are 1 to %d characters", chars,
                   RULES_MAX_KEY_CHARS);
}

static bool key_seen_before(const cJSON *fields, const cJSON *field)
{
    for (const cJSON *f = fields->child; f && f != field; f = f->next)
        if (f->string && field->string && strcmp(f->string, field->string) == 0)
            return true;
    return false;
}

static void check_field_type(rules_ctx *c, const cJSON *desc)
{
    const char *type;
    if (!rreq_string(c, desc, "type", &type))
        return;
    if (rules_field_type_known(type))
        return;
    char *shown = rjson_show(rget(desc, "type"));
    char *choices = rjoin_or(rules_field_types);
    const char *newer = (strcmp(type, "audio_url") == 0 || strcmp(type, "video_url") == 0)
                            ? " (audio_url and video_url are not in this API version)"
                            : "";
    rctx_issue(c, RULES_KIND_REQUEST, "type", "%s is not a field type; use %s%s", shown, choices,
               newer);
    free(choices);
    free(shown);
}

static void check_field_label(rules_ctx *c, const cJSON *desc)
{
    const char *label;
    if (!ropt_string(c, desc, "label", &label) || !label)
        return;
    long chars = rutf8_chars(label);
    if (chars < 0)
        rctx_issue(c, RULES_KIND_REQUEST, "label", "is not valid UTF-8");
    else if (chars > RULES_MAX_LABEL_CHARS)
        rctx_issue(c, RULES_KIND_REQUEST, "label",
                   "is %ld characters long; labels are at most %d characters", chars,
                   RULES_MAX_LABEL_CHARS);
}

static void check_schema_field(rules_ctx *c, const cJSON *fields, const cJSON *field, size_t count,
                               const char **first_group)
{
    const char *key = field->string ? field->string : "";
    size_t mark = rctx_push_key(c, key);
    check_field_key(c, key);
    if (count <= RULES_DUP_SCAN_LIMIT && key_seen_before(fields, field))
        rctx_issue(c, RULES_KIND_REQUEST, NULL,
                   "field key appears more than once; give each field a unique key");
    if (!cJSON_IsObject(field)) {
        rctx_issue(c, RULES_KIND_REQUEST, NULL, "is %s; it must be an object {type, label?}",
                   rjson_kind(field));
        rctx_pop(c, mark);
        return;
    }
    check_field_type(c, field);
    check_field_label(c, field);
    const char *type = json_str(field, "type");
    if (type && strcmp(type, "task_group_id") == 0) {
        if (*first_group) {
            char *first = rshow_str(*first_group);
            rctx_issue(c, RULES_KIND_REQUEST, "type",
                       "is a second task_group_id field (the first is %s); a schema may have at "
                       "most one",
                       first);
            free(first);
        } else
            *first_group = key;
    }
    rctx_pop(c, mark);
}

static void check_schema_fields(rules_ctx *c, const cJSON *fields)
{
    size_t mark = rctx_push_key(c, "fields");
    size_t count = (size_t)cJSON_GetArraySize(fields);
    if (count == 0)
        rctx_issue(c, RULES_KIND_REQUEST, NULL, "is empty; define at least one field");
    else if (count > RULES_MAX_FIELDS)
        rctx_issue(c, RULES_KIND_REQUEST, NULL, "has %zu fields; a schema may have at most %d",
                   count, RULES_MAX_FIELDS);
    const char *first_group = NULL;
    for (const cJSON *f = fields->child; f; f = f->next)
        check_schema_field(c, fields, f, count, &first_group);
    rctx_pop(c, mark);
}

void rules_schema_walk(rules_ctx *c, const cJSON *schema)
{
    if (!schema) {
        rctx_issue(c, RULES_KIND_REQUEST, NULL,
                   "is missing; it must be an object {\"strict\": bool, \"fields\": {...}}");
        return;
    }
    if (!cJSON_IsObject(schema)) {
        rctx_issue(c, RULES_KIND_REQUEST, NULL,
                   "is %s; it must be an object {\"strict\": bool, \"fields\": {...}}",
                   rjson_kind(schema));
        return;
    }
    const cJSON *strict = rget(schema, "strict");
    if (!strict)
        rmissing(c, "strict", "true or false");
    else if (!cJSON_IsBool(strict))
        rwrong_type(c, "strict", strict, "true or false");
    const cJSON *fields = rget(schema, "fields");
    if (!fields)
        rmissing(c, "fields", "an object mapping field keys to {type, label?}");
    else if (!cJSON_IsObject(fields))
        rwrong_type(c, "fields", fields, "an object mapping field keys to {type, label?}");
    else
        check_schema_fields(c, fields);
}

void rules_check_schema(const cJSON *schema, const char *prefix, diag *r)
{
    rules_ctx c;
    rctx_init(&c, r, prefix, "schema");
    rules_schema_walk(&c, schema);
    rctx_fini(&c);
}

/* ---- task_details ---------------------------------------------------------------------- */

static void task_details_walk(rules_ctx *c, const cJSON *td)
{
    static const char *const members[] = {"task_name", "task_introduction", "task_steps"};
    if (!td) {
        rctx_issue(c, RULES_KIND_REQUEST, NULL,
                   "is missing; it must be an object {task_name, task_introduction, "
                   "task_steps}");
        return;
    }
    if (!cJSON_IsObject(td)) {
        rctx_issue(c, RULES_KIND_REQUEST, NULL,
                   "is %s; it must be an object {task_name, task_introduction, task_steps}",
                   rjson_kind(td));
        return;
    }
    /* The OpenAPI asks for strings, not non-empty ones, so "" passes. */
    for (size_t i = 0; i < BD_ARRAY_LEN(members); i++) {
        const char *s;
        (void)rreq_string(c, td, members[i], &s);
    }
}

void rules_check_task_details(const cJSON *task_details, const char *prefix, diag *r)
{
    rules_ctx c;
    rctx_init(&c, r, prefix, "task_details");
    task_details_walk(&c, task_details);
    rctx_fini(&c);
}

/* ---- request bodies -------------------------------------------------------------------- */

/* Body-level problems go under DRF's "non_field_errors", the key the API's framework uses. */
#define BODY_PARAM "non_field_errors"

static bool body_is_object(rules_ctx *c, const cJSON *body)
{
    if (cJSON_IsObject(body))
        return true;
    c->param = BODY_PARAM;
    rctx_issue(c, RULES_KIND_REQUEST, NULL, "the request body is %s; it must be a JSON object",
               body ? rjson_kind(body) : "missing");
    return false;
}

static void check_name(rules_ctx *c, const cJSON *body)
{
    const char *name;
    c->param = "name";
    if (rreq_string(c, body, "name", &name) && !*name)
        rctx_issue(c, RULES_KIND_REQUEST, "name", "is empty; give a name");
}

static void check_workspace(rules_ctx *c, const cJSON *body)
{
    const char *ws;
    c->param = "workspace_id";
    (void)rreq_string(c, body, "workspace_id", &ws);
}

static void check_uuid_member(rules_ctx *c, const cJSON *body, const char *key)
{
    const char *s;
    c->param = key;
    if (!ropt_string(c, body, key, &s) || !s)
        return;
    if (!ruuid_valid(s)) {
        char *shown = rjson_show(rget(body, key));
        rctx_issue(c, RULES_KIND_REQUEST, key,
                   "%s is not a UUID; use the id the API returned, like "
                   "0192a3b5-e8f9-7a0b-1c2d-3e4f5a6b7c8d",
                   shown);
        free(shown);
    }
}

void rules_check_dataset_create(const cJSON *body, diag *r)
{
    rules_ctx c;
    rctx_init(&c, r, "", BODY_PARAM);
    if (body_is_object(&c, body)) {
        check_name(&c, body);
        check_workspace(&c, body);
        /* schema is optional (absent: a V3 dataset) but not nullable */
        const cJSON *schema = rget(body, "schema");
        if (schema) {
            c.param = "schema";
            size_t mark = rctx_push_key(&c, "schema");
            rules_schema_walk(&c, schema);
            rctx_pop(&c, mark);
        }
    }
    rctx_fini(&c);
}

/* The members create and update share; `creating` makes name, workspace_id and
 * task_details required. */
static void check_batch_body(const cJSON *body, const cJSON *dataset_schema, bool creating, diag *r)
{
    rules_ctx c;
    rctx_init(&c, r, "", BODY_PARAM);
    if (!body_is_object(&c, body))
        goto done;
    if (creating || rget(body, "name"))
        check_name(&c, body);
    if (creating)
        check_workspace(&c, body);
    check_uuid_member(&c, body, "dataset_id");
    const cJSON *td = rget(body, "task_details");
    if (creating || td) {
        c.param = "task_details";
        size_t mark = rctx_push_key(&c, "task_details");
        task_details_walk(&c, td);
        rctx_pop(&c, mark);
    }
    /* auto_sync_enabled: the OpenAPI lists it on PATCH only, the CLI sends it on create;
     * members the OpenAPI does not name are accepted, so only its type is checked. */
    const cJSON *flag;
    c.param = "auto_sync_enabled";
    (void)ropt_bool(&c, body, "auto_sync_enabled", &flag);
    const cJSON *items = rget(body, "batch_items");
    if (items) {
        c.param = "batch_items";
        size_t mark = rctx_push_key(&c, "batch_items");
        rules_items_walk(&c, items, dataset_schema);
        rctx_pop(&c, mark);
    }
done:
    rctx_fini(&c);
}

void rules_check_batch_create(const cJSON *body, const cJSON *dataset_schema, diag *r)
{
    check_batch_body(body, dataset_schema, true, r);
}

void rules_check_batch_update(const cJSON *body, const cJSON *dataset_schema, diag *r)
{
    check_batch_body(body, dataset_schema, false, r);
}

void rules_check_setup(const cJSON *body, diag *r)
{
    /* The OpenAPI does not require a request body for setup: none means all defaults. */
    if (!body)
        return;
    rules_ctx c;
    rctx_init(&c, r, "", BODY_PARAM);
    if (body_is_object(&c, body)) {
        check_uuid_member(&c, body, "dataset_id");
        int64_t tpg;
        bool present;
        c.param = "tasks_per_group";
        if (ropt_integer(&c, body, "tasks_per_group", &tpg, &present) && present && tpg < 1)
            rctx_issue(&c, RULES_KIND_REQUEST, "tasks_per_group",
                       "is %lld; it must be 1 or more tasks per group", (long long)tpg);
    }
    rctx_fini(&c);
}

/* ---- the API's error shapes ------------------------------------------------------------ */

cJSON *rules_error_envelope(int status, const char *title, const char *detail)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddNumberToObject(err, "status", status);
    /* error_code values are undocumented; the type (integer) and presence are required */
    cJSON_AddNumberToObject(err, "error_code", 0);
    cJSON_AddStringToObject(err, "title", title ? title : "Error");
    cJSON_AddStringToObject(err, "detail", detail ? detail : (title ? title : "Error"));
    return root;
}

/* One 400 detail message: the path below the param tells which part of it is wrong. */
static char *detail_message(const diag_entry *is)
{
    const char *param = is->param ? is->param : BODY_PARAM;
    if (!is->path || !*is->path || strcmp(is->path, param) == 0)
        return xstrdup(is->message);
    return xasprintf("%s: %s", is->path, is->message);
}

static cJSON *request_error(const diag *r)
{
    cJSON *root = rules_error_envelope(400, "Bad Request", NULL);
    cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    cJSON *detail = cJSON_CreateObject();
    for (size_t i = 0; i < r->count; i++) {
        const diag_entry *is = &r->entries[i];
        if (is->kind != RULES_KIND_REQUEST)
            continue;
        const char *param = is->param ? is->param : BODY_PARAM;
        cJSON *list = cJSON_GetObjectItemCaseSensitive(detail, param);
        if (!list)
            list = cJSON_AddArrayToObject(detail, param);
        char *msg = detail_message(is);
        cJSON_AddItemToArray(list, cJSON_CreateString(msg));
        free(msg);
    }
    cJSON_ReplaceItemInObjectCaseSensitive(err, "detail", detail);
    return root;
}

static cJSON *batch_items_error(const diag *r, size_t n)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "type", "INVALID_BATCH_ITEMS");
    char *msg = xasprintf("batch_items failed validation: %zu issue%s", n, n == 1 ? "" : "s");
    cJSON_AddStringToObject(root, "message", msg);
    free(msg);
    cJSON *issues = cJSON_AddArrayToObject(root, "issues");
    for (size_t i = 0; i < r->count; i++) {
        const diag_entry *is = &r->entries[i];
        if (is->kind != RULES_KIND_BATCH_ITEMS)
            continue;
        cJSON *o = cJSON_CreateObject();
        /* page..item are required integers in the API's shape; -1 stands for "none" */
        cJSON_AddNumberToObject(o, "page", is->layout.page);
        cJSON_AddNumberToObject(o, "row", is->layout.row);
        cJSON_AddNumberToObject(o, "column", is->layout.column);
        cJSON_AddNumberToObject(o, "item", is->layout.item);
        cJSON_AddStringToObject(o, "type", is->item_type ? is->item_type : "unknown");
        if (is->field)
            cJSON_AddStringToObject(o, "field", is->field);
        cJSON_AddStringToObject(o, "message", is->message);
        cJSON_AddItemToArray(issues, o);
    }
    return root;
}

cJSON *rules_api_error(const diag *r, int *http_status)
{
    if (!r || r->count == 0) {
        if (http_status)
            *http_status = 0;
        return NULL;
    }
    if (diag_count_kind(r, RULES_KIND_REQUEST) > 0) {
        if (http_status)
            *http_status = 400;
        return request_error(r);
    }
    if (http_status)
        *http_status = 422;
    return batch_items_error(r, r->count);
}
