/* rules: the Task Builder API's request rules as pure code, shared by batchd (to reject a
 * job before any API call is spent) and batchd-sim (to answer 400/422 exactly as the API
 * does). One implementation, so the two can never disagree. No I/O.
 *
 * The OpenAPI file is the judge of what is accepted. It forbids no unknown members
 * (no additionalProperties: false anywhere), so members it does not name pass; what its
 * schema expresses (types, required members, enums, formats, counts) is a REQUEST issue
 * (400); the cross-field rules of batch_items it documents as 422 causes (dataset_field
 * against the schema, answer_limit against options, exclusive options, default_unit,
 * file counts, validation bounds, https images) are BATCH_ITEMS issues. */
#ifndef BATCHD_RULES_H
#define BATCHD_RULES_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "batchd/util.h"

typedef enum rules_kind {
    RULES_KIND_REQUEST = 0,     /* the API answers 400 with its Error envelope */
    RULES_KIND_BATCH_ITEMS = 1, /* the API answers 422 INVALID_BATCH_ITEMS */
} rules_kind;

/* Issues are reported into a diag (util.h): kind is the rules_kind; path is the full JSON
 * path from the checked root, with the caller's prefix ("dataset.schema.fields.prompt.type",
 * "batch.batch_items[0].rows[1].columns[0].items[2].answer_limit"); param is the top-level
 * request member the issue belongs to ("schema", "task_details", "name", ...: the key of the
 * 400 envelope's detail map); layout is the batch_items page/row/column/item (-1 when not a
 * batch_items issue); item_type the item's "type" when known; field the dataset_field's
 * "field" when relevant. Callers with issues of their own add them with diag_add. */

/* Field types the API knows (text, image_url, metadata, task_group_id). */
bool rules_field_type_known(const char *type);
/* True for the types a dataset_field item may show (text, image_url). */
bool rules_field_type_displayable(const char *type);

/* A DatasetSchema object: {strict: bool (required), fields: {key: {type, label?}}}.
 * 1 to 200 fields, keys 1..128 characters (unique), labels at most 255, at most one
 * task_group_id. Unknown members pass (the OpenAPI allows them). All issues are REQUEST
 * issues with param "schema". prefix is the path of `schema` itself. */
void rules_check_schema(const cJSON *schema, const char *prefix, diag *r);

/* task_details: task_name, task_introduction, task_steps, all required strings (the
 * OpenAPI sets no minimum length, so "" passes). param "task_details". */
void rules_check_task_details(const cJSON *task_details, const char *prefix, diag *r);

/* batch_items: pages -> rows (1..2 columns) -> items, each item type's required fields and
 * rules. schema is the attached dataset's schema, or NULL when no dataset (or a dataset
 * without a schema) is attached: then every dataset_field item is an issue. prefix is the
 * path of `batch_items` itself; JSON null (or a NULL pointer) is no layout and passes.
 * Shape problems (types, required members, enums, empty lists, column count) are REQUEST
 * issues; the semantic rules are BATCH_ITEMS issues. Every issue inside the layout carries
 * the page/row/column/item indices it has (-1 for the levels below it) and the item type. */
void rules_check_batch_items(const cJSON *batch_items, const cJSON *schema, const char *prefix,
                             diag *r);

/* Whole request bodies, as the API checks them (paths have no prefix). */
void rules_check_dataset_create(const cJSON *body, diag *r);
/* dataset_schema: the schema of the dataset named by body.dataset_id, NULL if none. */
void rules_check_batch_create(const cJSON *body, const cJSON *dataset_schema, diag *r);
/* PATCH /batches/{id}: every member optional; task_details, when sent, needs all three. */
void rules_check_batch_update(const cJSON *body, const cJSON *dataset_schema, diag *r);
/* body may be NULL (setup needs no body). */
void rules_check_setup(const cJSON *body, diag *r);

/* The API's answer for a failed check: REQUEST issues win and give 400 with
 * {"error": {"status": 400, "error_code": ..., "title": "Bad Request",
 *            "detail": {param: [message, ...]}}};
 * otherwise 422 {"type": "INVALID_BATCH_ITEMS", "message": ..., "issues": [...]}.
 * Issues of the 400 detail carry their path when it is deeper than the param
 * ("schema.fields.x.type: ..."); body-level issues go under "non_field_errors".
 * Returns NULL (and *http_status = 0) for an empty diag. Free with cJSON_Delete. */
cJSON *rules_api_error(const diag *r, int *http_status);

/* The API's Error envelope for any status (used for 401, 404, 405, 409 ...):
 * {"error": {"status", "error_code": 0, "title", "detail": detail (title when NULL)}}. */
cJSON *rules_error_envelope(int status, const char *title, const char *detail);

#endif
