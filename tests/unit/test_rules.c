/* Unit tests of rules: for every rule a passing and a failing case (path, kind, message),
 * the locations of batch_items issues, the pairwise example and batchd(8)'s job.json, and the API's
 * two error shapes. Test JSON is written with single quotes and converted before parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/rules.h"
#include "batchd/util.h"

/* ---- helpers --------------------------------------------------------------------------- */

static cJSON *parse_q(const char *text)
{
    char *s = xstrdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    cJSON *j = cJSON_Parse(s);
    if (!j)
        fail_msg("test JSON does not parse: %s", s);
    free(s);
    return j;
}

#define SCHEMA                                                                                     \
    "{'strict': true, 'fields': {'prompt': {'type': 'text'}, 'image': {'type': 'image_url'}, "     \
    "'src': {'type': 'metadata'}, 'group': {'type': 'task_group_id'}}}"

static void dump(const diag *r)
{
    for (size_t i = 0; i < r->count; i++)
        print_message("  issue %zu: kind=%d path=%s param=%s msg=%s\n", i, r->entries[i].kind,
                      r->entries[i].path, r->entries[i].param ? r->entries[i].param : "(null)",
                      r->entries[i].message);
}

typedef enum target {
    T_SCHEMA,         /* rules_check_schema, prefix "dataset.schema" */
    T_TASK,           /* rules_check_task_details, prefix "batch.task_details" */
    T_ITEM,           /* one item in a one-page layout, with SCHEMA */
    T_ITEMS,          /* rules_check_batch_items, prefix "batch.batch_items", with SCHEMA */
    T_ITEMS_NOSCHEMA, /* the same without a schema */
    T_DATASET,        /* rules_check_dataset_create */
    T_BATCH,          /* rules_check_batch_create with SCHEMA */
    T_UPDATE,         /* rules_check_batch_update with SCHEMA */
    T_SETUP,          /* rules_check_setup */
} target;

/* Field order follows the tables' reading order; padding does not matter in a test. */
// NOLINTNEXTLINE(clang-analyzer-optin.performance.Padding)
typedef struct rcase {
    const char *name;
    target t;
    const char *json;
    size_t count;     /* expected number of issues; 0 for a passing case */
    rules_kind kind;  /* of the first issue */
    const char *path; /* of the first issue */
    const char *msg;  /* substring of the first issue's message */
} rcase;

#define ITEM_PATH "batch.batch_items[0].rows[0].columns[0].items[0]"

static void run_target(target t, const cJSON *in, diag *r)
{
    cJSON *schema = parse_q(SCHEMA);
    switch (t) {
    case T_SCHEMA:
        rules_check_schema(in, "dataset.schema", r);
        break;
    case T_TASK:
        rules_check_task_details(in, "batch.task_details", r);
        break;
    case T_ITEM: {
        cJSON *items = parse_q("[{'rows': [{'columns': [{'items': []}]}]}]");
        cJSON *list = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetArrayItem(
                cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetArrayItem(
                        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(items, 0), "rows"), 0),
                    "columns"),
                0),
            "items");
        cJSON_AddItemToArray(list, cJSON_Duplicate(in, true));
        rules_check_batch_items(items, schema, "batch.batch_items", r);
        cJSON_Delete(items);
        break;
    }
    case T_ITEMS:
        rules_check_batch_items(in, schema, "batch.batch_items", r);
        break;
    case T_ITEMS_NOSCHEMA:
        rules_check_batch_items(in, NULL, "batch.batch_items", r);
        break;
    case T_DATASET:
        rules_check_dataset_create(in, r);
        break;
    case T_BATCH:
        rules_check_batch_create(in, schema, r);
        break;
    case T_UPDATE:
        rules_check_batch_update(in, schema, r);
        break;
    case T_SETUP:
        rules_check_setup(in, r);
        break;
    }
    cJSON_Delete(schema);
}

static void run_cases(const rcase *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const rcase *tc = &cases[i];
        cJSON *in = parse_q(tc->json);
        diag r = {0};
        run_target(tc->t, in, &r);
        if (r.count != tc->count) {
            print_error("case \"%s\": %zu issues, expected %zu\n", tc->name, r.count, tc->count);
            dump(&r);
            fail();
        }
        if (tc->count > 0) {
            const diag_entry *is = &r.entries[0];
            if (is->kind != (int)tc->kind || strcmp(is->path, tc->path) != 0 ||
                !strstr(is->message, tc->msg)) {
                print_error("case \"%s\": expected kind %d path %s message ~ \"%s\"\n", tc->name,
                            tc->kind, tc->path, tc->msg);
                dump(&r);
                fail();
            }
        }
        diag_free(&r);
        cJSON_Delete(in);
    }
}

#define REQ RULES_KIND_REQUEST
#define BAD RULES_KIND_BATCH_ITEMS

/* ---- schema ---------------------------------------------------------------------------- */

static const rcase schema_cases[] = {
    {"seed schema", T_SCHEMA,
     "{'strict': false, 'fields': {'prompt': {'type': 'text'}, 'response_a': {'type': 'text'}, "
     "'response_b': {'type': 'text'}, 'session_id': {'type': 'task_group_id'}}}",
     0, REQ, NULL, NULL},
    {"all four types with labels", T_SCHEMA,
     "{'strict': true, 'fields': {'a': {'type': 'text', 'label': 'A'}, 'b': {'type': "
     "'image_url'}, 'c': {'type': 'metadata'}, 'd': {'type': 'task_group_id'}}}",
     0, REQ, NULL, NULL},
    {"unknown schema member passes (no additionalProperties: false)", T_SCHEMA,
     "{'strict': true, 'fields': {'a': {'type': 'text', 'x': 1}}, 'comment': 'x'}", 0, REQ, NULL,
     NULL},
    {"schema not an object", T_SCHEMA, "[]", 1, REQ, "dataset.schema",
     "is an array; it must be an object"},
    {"strict missing", T_SCHEMA, "{'fields': {'a': {'type': 'text'}}}", 1, REQ,
     "dataset.schema.strict", "is missing"},
    {"strict not boolean", T_SCHEMA, "{'strict': 'yes', 'fields': {'a': {'type': 'text'}}}", 1, REQ,
     "dataset.schema.strict", "is a string; it must be true or false"},
    {"fields missing", T_SCHEMA, "{'strict': true}", 1, REQ, "dataset.schema.fields", "is missing"},
    {"fields not an object", T_SCHEMA, "{'strict': true, 'fields': ['a']}", 1, REQ,
     "dataset.schema.fields", "is an array; it must be an object"},
    {"fields empty", T_SCHEMA, "{'strict': true, 'fields': {}}", 1, REQ, "dataset.schema.fields",
     "is empty; define at least one field"},
    {"empty key", T_SCHEMA, "{'strict': true, 'fields': {'': {'type': 'text'}}}", 1, REQ,
     "dataset.schema.fields[\"\"]", "field key is empty; keys are 1 to 128 characters"},
    {"field not an object", T_SCHEMA, "{'strict': true, 'fields': {'a': 'text'}}", 1, REQ,
     "dataset.schema.fields.a", "is a string; it must be an object {type, label?}"},
    {"type missing", T_SCHEMA, "{'strict': true, 'fields': {'a': {'label': 'A'}}}", 1, REQ,
     "dataset.schema.fields.a.type", "is missing"},
    {"type unknown", T_SCHEMA, "{'strict': true, 'fields': {'a': {'type': 'number'}}}", 1, REQ,
     "dataset.schema.fields.a.type",
     "\"number\" is not a field type; use text, image_url, metadata or task_group_id"},
    {"type from newer docs", T_SCHEMA, "{'strict': true, 'fields': {'a': {'type': 'audio_url'}}}",
     1, REQ, "dataset.schema.fields.a.type", "not in this API version"},
    {"type not a string", T_SCHEMA, "{'strict': true, 'fields': {'a': {'type': 1}}}", 1, REQ,
     "dataset.schema.fields.a.type", "is a number; it must be a string"},
    {"label not a string", T_SCHEMA,
     "{'strict': true, 'fields': {'a': {'type': 'text', "
     "'label': 5}}}",
     1, REQ, "dataset.schema.fields.a.label", "is a number; it must be a string"},
    {"two task_group_id fields", T_SCHEMA,
     "{'strict': true, 'fields': {'g1': {'type': 'task_group_id'}, 'g2': {'type': "
     "'task_group_id'}}}",
     1, REQ, "dataset.schema.fields.g2.type", "second task_group_id field (the first is \"g1\")"},
    {"duplicate key", T_SCHEMA,
     "{'strict': true, 'fields': {'a': {'type': 'text'}, 'a': {'type': 'text'}}}", 1, REQ,
     "dataset.schema.fields.a", "appears more than once"},
    {"key needing brackets in the path", T_SCHEMA,
     "{'strict': true, 'fields': {'a.b c': {'type': 'nope'}}}", 1, REQ,
     "dataset.schema.fields[\"a.b c\"].type", "is not a field type"},
};

static void test_schema_rules(void **state)
{
    (void)state;
    run_cases(schema_cases, BD_ARRAY_LEN(schema_cases));
}

/* Builds {"strict": true, "fields": {...}} with n text fields, each with a label of
 * label_chars two-byte characters (none when 0). */
static cJSON *make_schema(size_t n, size_t label_chars)
{
    cJSON *s = cJSON_CreateObject();
    cJSON_AddTrueToObject(s, "strict");
    cJSON *fields = cJSON_AddObjectToObject(s, "fields");
    for (size_t i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "f%zu", i);
        cJSON *f = cJSON_AddObjectToObject(fields, key);
        cJSON_AddStringToObject(f, "type", "text");
        if (label_chars) {
            strbuf label;
            strbuf_init(&label);
            for (size_t k = 0; k < label_chars; k++)
                strbuf_puts(&label, "é");
            cJSON_AddStringToObject(f, "label", label.data);
            strbuf_free(&label);
        }
    }
    return s;
}

/* A key of exactly `chars` characters: "k" then chars-1 copies of unit. */
static cJSON *schema_with_key(size_t chars, const char *unit)
{
    strbuf key;
    strbuf_init(&key);
    strbuf_puts(&key, "k");
    for (size_t i = 1; i < chars; i++)
        strbuf_puts(&key, unit);
    cJSON *s = cJSON_CreateObject();
    cJSON_AddTrueToObject(s, "strict");
    cJSON *f = cJSON_AddObjectToObject(cJSON_AddObjectToObject(s, "fields"), key.data);
    cJSON_AddStringToObject(f, "type", "text");
    strbuf_free(&key);
    return s;
}

static size_t check_schema_count(cJSON *schema, const char **first_msg)
{
    static char msg[256];
    diag r = {0};
    rules_check_schema(schema, "s", &r);
    size_t n = r.count;
    msg[0] = '\0';
    if (n)
        strlcpy_bd(msg, r.entries[0].message, sizeof msg);
    *first_msg = msg;
    diag_free(&r);
    cJSON_Delete(schema);
    return n;
}

static void test_schema_limits(void **state)
{
    (void)state;
    const char *msg;
    /* 200 fields pass, 201 do not */
    assert_int_equal(check_schema_count(make_schema(200, 0), &msg), 0);
    assert_int_equal(check_schema_count(make_schema(201, 0), &msg), 1);
    assert_non_null(strstr(msg, "has 201 fields; a schema may have at most 200"));
    /* key length counts characters, not bytes: 128 two-byte characters pass */
    assert_int_equal(check_schema_count(schema_with_key(128, "é"), &msg), 0);
    assert_int_equal(check_schema_count(schema_with_key(129, "x"), &msg), 1);
    assert_non_null(strstr(msg, "field key is 129 characters long; keys are 1 to 128"));
    /* labels: 255 characters pass, 256 do not */
    assert_int_equal(check_schema_count(make_schema(1, 255), &msg), 0);
    assert_int_equal(check_schema_count(make_schema(1, 256), &msg), 1);
    assert_non_null(strstr(msg, "is 256 characters long; labels are at most 255"));
    /* NULL: a caller asking about a schema that is not there */
    assert_int_equal(check_schema_count(NULL, &msg), 1);
    assert_non_null(strstr(msg, "is missing"));
}

static void test_schema_issue_param(void **state)
{
    (void)state;
    cJSON *s = parse_q("{'strict': true, 'fields': {'session_id': {'type': 'group'}}}");
    diag r = {0};
    rules_check_schema(s, "dataset.schema", &r);
    assert_int_equal(r.count, 1);
    assert_string_equal(r.entries[0].path, "dataset.schema.fields.session_id.type");
    assert_string_equal(r.entries[0].param, "schema");
    assert_int_equal(r.entries[0].layout.page, -1);
    assert_int_equal(r.entries[0].layout.item, -1);
    assert_null(r.entries[0].item_type);
    assert_int_equal(diag_count_kind(&r, RULES_KIND_REQUEST), 1);
    assert_int_equal(diag_count_kind(&r, RULES_KIND_BATCH_ITEMS), 0);
    diag_free(&r);
    diag_free(&r); /* freeing twice is harmless: free leaves an empty report */
    diag_free(NULL);
    cJSON_Delete(s);
}

static void test_field_types(void **state)
{
    (void)state;
    assert_true(rules_field_type_known("text"));
    assert_true(rules_field_type_known("image_url"));
    assert_true(rules_field_type_known("metadata"));
    assert_true(rules_field_type_known("task_group_id"));
    assert_false(rules_field_type_known("audio_url"));
    assert_false(rules_field_type_known("Text"));
    assert_false(rules_field_type_known(NULL));
    assert_true(rules_field_type_displayable("text"));
    assert_true(rules_field_type_displayable("image_url"));
    assert_false(rules_field_type_displayable("metadata"));
    assert_false(rules_field_type_displayable("task_group_id"));
    assert_false(rules_field_type_displayable(NULL));
}

/* ---- task_details ---------------------------------------------------------------------- */

static const rcase task_cases[] = {
    {"all three", T_TASK, "{'task_name': 'n', 'task_introduction': '<p>i</p>', 'task_steps': 's'}",
     0, REQ, NULL, NULL},
    {"empty strings pass (no minLength in the OpenAPI)", T_TASK,
     "{'task_name': '', 'task_introduction': '', 'task_steps': ''}", 0, REQ, NULL, NULL},
    {"not an object", T_TASK, "'x'", 1, REQ, "batch.task_details",
     "is a string; it must be an object {task_name, task_introduction, task_steps}"},
    {"task_steps missing", T_TASK, "{'task_name': 'n', 'task_introduction': 'i'}", 1, REQ,
     "batch.task_details.task_steps", "is missing; it is required (a string)"},
    {"task_name not a string", T_TASK,
     "{'task_name': 5, 'task_introduction': 'i', 'task_steps': 's'}", 1, REQ,
     "batch.task_details.task_name", "is a number; it must be a string"},
    {"task_introduction null", T_TASK,
     "{'task_name': 'n', 'task_introduction': null, 'task_steps': 's'}", 1, REQ,
     "batch.task_details.task_introduction", "is null; it must be a string"},
};

static void test_task_details_rules(void **state)
{
    (void)state;
    run_cases(task_cases, BD_ARRAY_LEN(task_cases));
    diag r = {0};
    rules_check_task_details(NULL, "batch.task_details", &r);
    assert_int_equal(r.count, 1);
    assert_string_equal(r.entries[0].path, "batch.task_details");
    assert_string_equal(r.entries[0].param, "task_details");
    assert_non_null(strstr(r.entries[0].message, "is missing"));
    diag_free(&r);
}

/* ---- items ----------------------------------------------------------------------------- */

static const rcase item_cases[] = {
    /* dataset_field */
    {"dataset_field text", T_ITEM, "{'type': 'dataset_field', 'field': 'prompt'}", 0, REQ, NULL,
     NULL},
    {"dataset_field image_url", T_ITEM, "{'type': 'dataset_field', 'field': 'image'}", 0, REQ, NULL,
     NULL},
    {"dataset_field field missing", T_ITEM, "{'type': 'dataset_field'}", 1, REQ, ITEM_PATH ".field",
     "is missing"},
    {"dataset_field field not a string", T_ITEM, "{'type': 'dataset_field', 'field': 3}", 1, REQ,
     ITEM_PATH ".field", "is a number; it must be a string"},
    {"dataset_field unknown field", T_ITEM, "{'type': 'dataset_field', 'field': 'nope'}", 1, BAD,
     ITEM_PATH ".field",
     "dataset_field \"nope\" is not a field of the dataset's schema; fields that can be shown: "
     "\"prompt\", \"image\""},
    {"dataset_field name is quoted in messages", T_ITEM,
     "{'type': 'dataset_field', 'field': 'x\\'y'}", 1, BAD, ITEM_PATH ".field",
     "dataset_field \"x\\\"y\" is not a field of the dataset's schema"},
    {"dataset_field metadata", T_ITEM, "{'type': 'dataset_field', 'field': 'src'}", 1, BAD,
     ITEM_PATH ".field", "is a metadata field; only text and image_url fields can be shown"},
    {"dataset_field task_group_id", T_ITEM, "{'type': 'dataset_field', 'field': 'group'}", 1, BAD,
     ITEM_PATH ".field", "is a task_group_id field"},
    /* image */
    {"image https", T_ITEM,
     "{'type': 'image', 'url': 'https://example.com/a.png', 'alt_text': 'A', 'caption': 'c', "
     "'id': 'x'}",
     0, REQ, NULL, NULL},
    {"image http", T_ITEM, "{'type': 'image', 'url': 'http://example.com/a.png', 'alt_text': 'A'}",
     1, BAD, ITEM_PATH ".url", "url \"http://example.com/a.png\" is not an https URL"},
    {"image https without host", T_ITEM, "{'type': 'image', 'url': 'https:///a', 'alt_text': 'A'}",
     1, BAD, ITEM_PATH ".url", "is not an https URL"},
    {"image url not a URL", T_ITEM, "{'type': 'image', 'url': 'a picture', 'alt_text': 'A'}", 1,
     REQ, ITEM_PATH ".url", "\"a picture\" is not a URL"},
    {"image url missing", T_ITEM, "{'type': 'image', 'alt_text': 'A'}", 1, REQ, ITEM_PATH ".url",
     "is missing"},
    {"image alt_text missing", T_ITEM, "{'type': 'image', 'url': 'https://e.com/a.png'}", 1, REQ,
     ITEM_PATH ".alt_text", "is missing"},
    {"image caption not a string", T_ITEM,
     "{'type': 'image', 'url': 'https://e.com/a.png', 'alt_text': 'A', 'caption': 1}", 1, REQ,
     ITEM_PATH ".caption", "is a number; it must be a string"},
    {"item id not a string", T_ITEM,
     "{'type': 'image', 'url': 'https://e.com/a.png', 'alt_text': 'A', 'id': 7}", 1, REQ,
     ITEM_PATH ".id", "is a number; it must be a string"},
    /* rich_text */
    {"rich_text html default", T_ITEM, "{'type': 'rich_text', 'content': '<b>x</b>'}", 0, REQ, NULL,
     NULL},
    {"rich_text markdown", T_ITEM,
     "{'type': 'rich_text', 'content': '**x**', 'content_format': 'markdown'}", 0, REQ, NULL, NULL},
    {"rich_text content missing", T_ITEM, "{'type': 'rich_text'}", 1, REQ, ITEM_PATH ".content",
     "is missing"},
    {"rich_text bad format", T_ITEM,
     "{'type': 'rich_text', 'content': 'x', 'content_format': 'rtf'}", 1, REQ,
     ITEM_PATH ".content_format", "\"rtf\" is not allowed; use html or markdown"},
    /* free_text and the validation rule */
    {"free_text with rules", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'helper_text': 'h', 'placeholder_text_input': "
     "'p', 'validation': {'type': 'string', 'min': 0, 'max': 200}}",
     0, REQ, NULL, NULL},
    {"free_text number rule with negative bounds and nulls", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'number', 'min': -1.5, "
     "'max': null}}",
     0, REQ, NULL, NULL},
    {"free_text description missing", T_ITEM, "{'type': 'free_text'}", 1, REQ,
     ITEM_PATH ".description", "is missing"},
    {"free_text helper_text not a string", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'helper_text': 1}", 1, REQ,
     ITEM_PATH ".helper_text", "is a number"},
    {"validation not an object", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': 'x'}", 1, REQ,
     ITEM_PATH ".validation", "is a string; it must be an object"},
    {"validation type missing", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'min': 1}}", 1, REQ,
     ITEM_PATH ".validation.type", "is missing; it is required (number or string)"},
    {"validation type unknown", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'int'}}", 1, REQ,
     ITEM_PATH ".validation.type", "\"int\" is not allowed; use number or string"},
    {"validation min not a number", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'number', 'min': 'a'}}", 1,
     REQ, ITEM_PATH ".validation.min", "is a string; it must be a number or null"},
    {"validation string min fractional", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'string', 'min': 2.5}}", 1,
     BAD, ITEM_PATH ".validation.min", "validation.min 2.5 is not a character count"},
    {"validation string max negative", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'string', 'max': -1}}", 1,
     BAD, ITEM_PATH ".validation.max", "validation.max -1 is not a character count"},
    {"validation min above max", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'number', 'min': 5, "
     "'max': 2}}",
     1, BAD, ITEM_PATH ".validation.min", "validation.min 5 is greater than validation.max 2"},
    {"validation min equal max", T_ITEM,
     "{'type': 'free_text', 'description': 'd', 'validation': {'type': 'number', 'min': 2, "
     "'max': 2}}",
     0, REQ, NULL, NULL},
    /* free_text_with_unit */
    {"free_text_with_unit", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'default_unit': 'kg', 'unit_options': [{'label': 'Kilograms', 'value': 'kg', "
     "'validation': {'type': 'number', 'min': 0}}, {'label': 'Pounds', 'value': 'lb'}]}",
     0, REQ, NULL, NULL},
    {"default_unit matches a numeric value", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'prefix', "
     "'default_unit': '5', 'unit_options': [{'label': 'Five', 'value': 5}, {'label': 'Yes', "
     "'value': true}]}",
     0, REQ, NULL, NULL},
    {"default_unit not an option", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'default_unit': 'st', 'unit_options': [{'label': 'Kilograms', 'value': 'kg'}, {'label': "
     "'Pounds', 'value': 'lb'}]}",
     1, BAD, ITEM_PATH ".default_unit",
     "default_unit \"st\" matches no unit_options value; use one of \"kg\", \"lb\""},
    {"unit_options missing", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix'}", 1, REQ,
     ITEM_PATH ".unit_options", "is missing"},
    {"unit_options empty", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'unit_options': []}",
     1, BAD, ITEM_PATH ".unit_options", "unit_options is empty"},
    {"unit_position unknown", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'left', "
     "'unit_options': [{'label': 'kg', 'value': 'kg'}]}",
     1, REQ, ITEM_PATH ".unit_position", "\"left\" is not allowed; use prefix or suffix"},
    {"unit_position missing", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_options': [{'label': 'kg', "
     "'value': 'kg'}]}",
     1, REQ, ITEM_PATH ".unit_position", "is missing; it is required (prefix or suffix)"},
    {"unit label missing", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'unit_options': [{'value': 'kg'}]}",
     1, REQ, ITEM_PATH ".unit_options[0].label", "is missing"},
    {"unit value an object", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'unit_options': [{'label': 'kg', 'value': {}}]}",
     1, REQ, ITEM_PATH ".unit_options[0].value",
     "is an object; it must be a string, number or boolean"},
    {"unit validation min above max", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'unit_options': [{'label': 'kg', 'value': 'kg', 'validation': {'type': 'number', 'min': "
     "9, 'max': 1}}]}",
     1, BAD, ITEM_PATH ".unit_options[0].validation.min", "is greater than validation.max"},
    {"default_unit not a string", T_ITEM,
     "{'type': 'free_text_with_unit', 'description': 'd', 'unit_position': 'suffix', "
     "'default_unit': 1, 'unit_options': [{'label': 'kg', 'value': 'kg'}]}",
     1, REQ, ITEM_PATH ".default_unit", "is a number; it must be a string"},
    /* multiple_choice */
    {"multiple_choice single", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'options': [{'label': "
     "'A', 'value': 'a'}, {'label': 'B', 'value': 2}, {'label': 'C', 'value': false}]}",
     0, REQ, NULL, NULL},
    {"multiple_choice unlimited with exclusive", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': -1, 'disable_dropdown': "
     "true, 'options': [{'label': 'A', 'value': 'a'}, {'label': 'None', 'value': 'n', "
     "'exclusive': true}]}",
     0, REQ, NULL, NULL},
    {"multiple_choice limit equal to options", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 3, 'options': [{'label': "
     "'A', 'value': 'a'}, {'label': 'B', 'value': 'b'}, {'label': 'C', 'value': 'c'}]}",
     0, REQ, NULL, NULL},
    {"multiple_choice limit 2.0 is an integer", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 2.0, 'options': "
     "[{'label': 'A', 'value': 'a'}, {'label': 'B', 'value': 'b'}]}",
     0, REQ, NULL, NULL},
    {"answer_limit above options", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 4, 'options': [{'label': "
     "'A', 'value': 'a'}, {'label': 'B', 'value': 'b'}, {'label': 'C', 'value': 'c'}]}",
     1, BAD, ITEM_PATH ".answer_limit", "answer_limit 4 exceeds the 3 options; use 1, -1 or 2..3"},
    {"answer_limit zero", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 0, 'options': [{'label': "
     "'A', 'value': 'a'}, {'label': 'B', 'value': 'b'}]}",
     1, BAD, ITEM_PATH ".answer_limit", "answer_limit 0 is not allowed; use 1, -1 or 2"},
    {"answer_limit minus two", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': -2, 'options': [{'label': "
     "'A', 'value': 'a'}]}",
     1, BAD, ITEM_PATH ".answer_limit", "answer_limit -2 is not allowed; use 1 or -1"},
    {"answer_limit fractional", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1.5, 'options': [{'label': "
     "'A', 'value': 'a'}]}",
     1, REQ, ITEM_PATH ".answer_limit", "is 1.5; it must be a whole number"},
    {"answer_limit a string", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': '1', 'options': [{'label': "
     "'A', 'value': 'a'}]}",
     1, REQ, ITEM_PATH ".answer_limit", "is a string; it must be an integer"},
    {"answer_limit missing", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'options': [{'label': 'A', 'value': 'a'}]}",
     1, REQ, ITEM_PATH ".answer_limit", "is missing; it is required (an integer)"},
    {"options missing", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1}", 1, REQ,
     ITEM_PATH ".options", "is missing; it is required (an array)"},
    {"options empty", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': -1, 'options': []}", 1, BAD,
     ITEM_PATH ".options", "options is empty"},
    {"exclusive with answer_limit 1", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'options': [{'label': "
     "'A', 'value': 'a'}, {'label': 'None', 'value': 'n', 'exclusive': true}]}",
     1, BAD, ITEM_PATH ".options[1].exclusive",
     "option 1 is exclusive, but exclusive options are not allowed when answer_limit is 1"},
    {"all options exclusive", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': -1, 'options': [{'label': "
     "'A', 'value': 'a', 'exclusive': true}, {'label': 'B', 'value': 'b', 'exclusive': true}]}",
     1, BAD, ITEM_PATH ".options", "every option is exclusive"},
    {"exclusive false everywhere passes", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'options': [{'label': "
     "'A', 'value': 'a', 'exclusive': false}]}",
     0, REQ, NULL, NULL},
    {"exclusive not a boolean", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': -1, 'options': [{'label': "
     "'A', 'value': 'a', 'exclusive': 'yes'}]}",
     1, REQ, ITEM_PATH ".options[0].exclusive", "is a string; it must be true or false"},
    {"option label missing", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'options': [{'value': "
     "'a'}]}",
     1, REQ, ITEM_PATH ".options[0].label", "is missing"},
    {"option value null", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'options': [{'label': "
     "'A', 'value': null}]}",
     1, REQ, ITEM_PATH ".options[0].value", "is null; it must be a string, number or boolean"},
    {"option not an object", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'options': ['a']}", 1, REQ,
     ITEM_PATH ".options[0]", "is a string; it must be an object {label, value, exclusive?}"},
    {"disable_dropdown not a boolean", T_ITEM,
     "{'type': 'multiple_choice', 'description': 'd', 'answer_limit': 1, 'disable_dropdown': "
     "'no', 'options': [{'label': 'A', 'value': 'a'}]}",
     1, REQ, ITEM_PATH ".disable_dropdown", "is a string; it must be true or false"},
    {"multiple_choice description missing", T_ITEM,
     "{'type': 'multiple_choice', 'answer_limit': 1, 'options': [{'label': 'A', 'value': 'a'}]}", 1,
     REQ, ITEM_PATH ".description", "is missing"},
    /* multiple_choice_with_free_text */
    {"multiple_choice_with_free_text", T_ITEM,
     "{'type': 'multiple_choice_with_free_text', 'description': 'd', 'answer_limit': 2, "
     "'options': [{'label': 'A', 'value': 'a', 'heading': 'H'}, {'label': 'B', 'value': 'b', "
     "'heading': 'H', 'exclusive': true}]}",
     0, REQ, NULL, NULL},
    {"heading missing", T_ITEM,
     "{'type': 'multiple_choice_with_free_text', 'description': 'd', 'answer_limit': 1, "
     "'options': [{'label': 'A', 'value': 'a'}]}",
     1, REQ, ITEM_PATH ".options[0].heading", "is missing"},
    {"with_free_text answer_limit above options", T_ITEM,
     "{'type': 'multiple_choice_with_free_text', 'description': 'd', 'answer_limit': 2, "
     "'options': [{'label': 'A', 'value': 'a', 'heading': 'H'}]}",
     1, BAD, ITEM_PATH ".answer_limit", "answer_limit 2 exceeds the 1 option; use 1 or -1"},
    /* file_upload */
    {"file_upload minimal", T_ITEM, "{'type': 'file_upload', 'description': 'd'}", 0, REQ, NULL,
     NULL},
    {"file_upload full", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'helper_text': 'h', 'accepted_file_types': "
     "['.pdf', '.png'], 'max_file_size_mb': 2.5, 'min_file_count': 2, 'max_file_count': 2}",
     0, REQ, NULL, NULL},
    {"file type without dot", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'accepted_file_types': ['.png', 'pdf']}", 1, BAD,
     ITEM_PATH ".accepted_file_types[1]",
     "accepted_file_types entry \"pdf\" is not a file extension"},
    {"file type only a dot", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'accepted_file_types': ['.']}", 1, BAD,
     ITEM_PATH ".accepted_file_types[0]", "is not a file extension"},
    {"file type not a string", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'accepted_file_types': [1]}", 1, REQ,
     ITEM_PATH ".accepted_file_types[0]", "is a number; it must be a string"},
    {"file types not an array", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'accepted_file_types': '.pdf'}", 1, REQ,
     ITEM_PATH ".accepted_file_types", "is a string; it must be an array"},
    {"file types empty", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'accepted_file_types': []}", 1, BAD,
     ITEM_PATH ".accepted_file_types", "accepted_file_types is empty"},
    {"max_file_size_mb zero", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'max_file_size_mb': 0}", 1, BAD,
     ITEM_PATH ".max_file_size_mb", "max_file_size_mb 0 must be more than 0"},
    {"max_file_size_mb a string", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'max_file_size_mb': '25'}", 1, REQ,
     ITEM_PATH ".max_file_size_mb", "is a string; it must be a finite number"},
    {"min_file_count zero", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'min_file_count': 0}", 1, BAD,
     ITEM_PATH ".min_file_count", "min_file_count 0 must be 1 or more"},
    {"min_file_count fractional", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'min_file_count': 1.5}", 1, REQ,
     ITEM_PATH ".min_file_count", "it must be a whole number"},
    {"min above max", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'min_file_count': 3, 'max_file_count': 2}", 1,
     BAD, ITEM_PATH ".min_file_count",
     "min_file_count 3 is greater than max_file_count 2; the minimum must not exceed the maximum"},
    {"min above the default max", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'min_file_count': 12}", 1, BAD,
     ITEM_PATH ".min_file_count",
     "min_file_count 12 is greater than max_file_count 10 (the "
     "default)"},
    {"max below the default min", T_ITEM,
     "{'type': 'file_upload', 'description': 'd', 'max_file_count': 0}", 1, BAD,
     ITEM_PATH ".max_file_count",
     "min_file_count 1 (the default) is greater than max_file_count 0"},
    /* the item union */
    {"unknown item type", T_ITEM, "{'type': 'video_narration'}", 1, REQ, ITEM_PATH ".type",
     "\"video_narration\" is not an item type; use dataset_field, image, rich_text, free_text, "
     "free_text_with_unit, multiple_choice, multiple_choice_with_free_text or file_upload"},
    {"item type missing", T_ITEM, "{'field': 'prompt'}", 1, REQ, ITEM_PATH ".type", "is missing"},
    {"item not an object", T_ITEM, "'prompt'", 1, REQ, ITEM_PATH,
     "is a string; it must be an "
     "object"},
    {"unknown item member passes", T_ITEM, "{'type': 'rich_text', 'content': 'x', 'colour': 'red'}",
     0, REQ, NULL, NULL},
};

static void test_item_rules(void **state)
{
    (void)state;
    run_cases(item_cases, BD_ARRAY_LEN(item_cases));
}

/* ---- layout ---------------------------------------------------------------------------- */

#define ONE_ITEM "{'type': 'rich_text', 'content': 'x'}"

static const rcase layout_cases[] = {
    {"null batch_items", T_ITEMS, "null", 0, REQ, NULL, NULL},
    {"not an array", T_ITEMS, "{'rows': []}", 1, REQ, "batch.batch_items",
     "is an object; it must be an array of pages or null"},
    {"empty", T_ITEMS, "[]", 1, REQ, "batch.batch_items", "is empty; give at least one page"},
    {"page not an object", T_ITEMS, "[[]]", 1, REQ, "batch.batch_items[0]",
     "is an array; it must be an object {rows: [...]}"},
    {"rows missing", T_ITEMS, "[{}]", 1, REQ, "batch.batch_items[0].rows", "is missing"},
    {"rows empty", T_ITEMS, "[{'rows': []}]", 1, REQ, "batch.batch_items[0].rows",
     "is empty; give at least one row"},
    {"page id not a string", T_ITEMS,
     "[{'id': 1, 'rows': [{'columns': [{'items': [" ONE_ITEM "]}]}]}]", 1, REQ,
     "batch.batch_items[0].id", "is a number; it must be a string"},
    {"display_position intro and outro", T_ITEMS,
     "[{'display_position': 'intro', 'rows': [{'columns': [{'items': [" ONE_ITEM "]}]}]}, "
     "{'id': 'p2', 'display_position': 'outro', 'rows': [{'columns': [{'items': [" ONE_ITEM
     "]}]}]}]",
     0, REQ, NULL, NULL},
    {"display_position unknown", T_ITEMS,
     "[{'display_position': 'middle', 'rows': [{'columns': [{'items': [" ONE_ITEM "]}]}]}]", 1, REQ,
     "batch.batch_items[0].display_position", "\"middle\" is not allowed; use intro or outro"},
    {"two columns", T_ITEMS,
     "[{'rows': [{'id': 'r', 'columns': [{'id': 'c', 'items': [" ONE_ITEM "]}, {'items': [" ONE_ITEM
     "]}]}]}]",
     0, REQ, NULL, NULL},
    {"three columns", T_ITEMS,
     "[{'rows': [{'columns': [{'items': [" ONE_ITEM "]}, {'items': [" ONE_ITEM
     "]}, {'items': [" ONE_ITEM "]}]}]}]",
     1, REQ, "batch.batch_items[0].rows[0].columns",
     "has 3 columns; a row has 1 or 2 columns side by side"},
    {"no columns", T_ITEMS, "[{'rows': [{'columns': []}]}]", 1, REQ,
     "batch.batch_items[0].rows[0].columns", "has 0 columns"},
    {"columns missing", T_ITEMS, "[{'rows': [{}]}]", 1, REQ, "batch.batch_items[0].rows[0].columns",
     "is missing"},
    {"row not an object", T_ITEMS, "[{'rows': [1]}]", 1, REQ, "batch.batch_items[0].rows[0]",
     "is a number; it must be an object {columns: [...]}"},
    {"items empty", T_ITEMS, "[{'rows': [{'columns': [{'items': []}]}]}]", 1, REQ,
     "batch.batch_items[0].rows[0].columns[0].items", "is empty; give at least one item"},
    {"column not an object", T_ITEMS, "[{'rows': [{'columns': [null]}]}]", 1, REQ,
     "batch.batch_items[0].rows[0].columns[0]", "is null; it must be an object {items: [...]}"},
    {"same field twice on a page", T_ITEMS,
     "[{'rows': [{'columns': [{'items': [{'type': 'dataset_field', 'field': 'prompt'}]}]}, "
     "{'columns': [{'items': [" ONE_ITEM "]}, {'items': [" ONE_ITEM ", {'type': 'dataset_field', "
     "'field': 'prompt'}]}]}]}]",
     1, BAD, "batch.batch_items[0].rows[1].columns[1].items[1].field",
     "dataset_field \"prompt\" is already shown on page 0; a field may appear at most once per "
     "page"},
    {"same field on two pages", T_ITEMS,
     "[{'rows': [{'columns': [{'items': [{'type': 'dataset_field', 'field': 'prompt'}]}]}]}, "
     "{'rows': [{'columns': [{'items': [{'type': 'dataset_field', 'field': 'prompt'}]}]}]}]",
     0, REQ, NULL, NULL},
    {"dataset_field without a schema", T_ITEMS_NOSCHEMA,
     "[{'rows': [{'columns': [{'items': [" ONE_ITEM ", {'type': 'dataset_field', 'field': "
     "'prompt'}]}]}]}]",
     1, BAD, "batch.batch_items[0].rows[0].columns[0].items[1].field",
     "dataset_field \"prompt\" needs an attached V4 dataset with a schema"},
    {"no dataset_field needs no schema", T_ITEMS_NOSCHEMA,
     "[{'rows': [{'columns': [{'items': [" ONE_ITEM "]}]}]}]", 0, REQ, NULL, NULL},
};

static void test_layout_rules(void **state)
{
    (void)state;
    run_cases(layout_cases, BD_ARRAY_LEN(layout_cases));
}

/* Every dataset_field is an issue without a schema, and a schema without fields is none. */
static void test_dataset_field_needs_populated_schema(void **state)
{
    (void)state;
    cJSON *items = parse_q("[{'rows': [{'columns': [{'items': [{'type': 'dataset_field', "
                           "'field': 'a'}, {'type': 'dataset_field', 'field': 'b'}]}]}]}]");
    cJSON *empty = parse_q("{'strict': true, 'fields': {}}");
    diag r = {0};
    rules_check_batch_items(items, empty, "batch_items", &r);
    assert_int_equal(r.count, 2);
    assert_int_equal(diag_count_kind(&r, RULES_KIND_BATCH_ITEMS), 2);
    assert_string_equal(r.entries[0].field, "a");
    assert_string_equal(r.entries[1].field, "b");
    assert_non_null(strstr(r.entries[1].message, "needs an attached V4 dataset"));
    diag_free(&r);
    cJSON_Delete(empty);
    cJSON_Delete(items);
}

static void test_issue_location(void **state)
{
    (void)state;
    cJSON *schema = parse_q(SCHEMA);
    cJSON *items = parse_q(
        "[{'rows': [{'columns': [{'items': [" ONE_ITEM "]}]}]}, {'rows': [{'columns': [{'items': "
        "[" ONE_ITEM "]}]}, {'columns': [{'items': [" ONE_ITEM "]}, {'items': [" ONE_ITEM
        ", " ONE_ITEM ", {'type': 'dataset_field', 'field': 'src'}, {'type': 'multiple_choice', "
        "'description': 'd', 'answer_limit': 1}]}]}]}]");
    diag r = {0};
    rules_check_batch_items(items, schema, "batch.batch_items", &r);
    assert_int_equal(r.count, 2);
    const diag_entry *a = &r.entries[0];
    assert_int_equal(a->kind, RULES_KIND_BATCH_ITEMS);
    assert_int_equal(a->layout.page, 1);
    assert_int_equal(a->layout.row, 1);
    assert_int_equal(a->layout.column, 1);
    assert_int_equal(a->layout.item, 2);
    assert_string_equal(a->item_type, "dataset_field");
    assert_string_equal(a->field, "src");
    assert_string_equal(a->param, "batch_items");
    assert_string_equal(a->path, "batch.batch_items[1].rows[1].columns[1].items[2].field");
    const diag_entry *b = &r.entries[1];
    assert_int_equal(b->kind, RULES_KIND_REQUEST);
    assert_int_equal(b->layout.item, 3);
    assert_string_equal(b->item_type, "multiple_choice");
    assert_null(b->field);
    assert_string_equal(b->path, "batch.batch_items[1].rows[1].columns[1].items[3].options");
    diag_free(&r);

    /* a structural issue has the indices of the levels above it and -1 below */
    cJSON *rows = parse_q("[{'rows': ["
                          "{'columns': [{'items': [" ONE_ITEM "]}]}, "
                          "{'columns': []}]}]");
    rules_check_batch_items(rows, schema, "", &r);
    assert_int_equal(r.count, 1);
    assert_string_equal(r.entries[0].path, "[0].rows[1].columns");
    assert_int_equal(r.entries[0].layout.page, 0);
    assert_int_equal(r.entries[0].layout.row, 1);
    assert_int_equal(r.entries[0].layout.column, -1);
    assert_int_equal(r.entries[0].layout.item, -1);
    assert_null(r.entries[0].item_type);
    diag_free(&r);
    cJSON_Delete(rows);
    cJSON_Delete(items);
    cJSON_Delete(schema);
}

/* ---- request bodies -------------------------------------------------------------------- */

#define TASK "'task_details': {'task_name': 'n', 'task_introduction': 'i', 'task_steps': 's'}"

static const rcase body_cases[] = {
    {"dataset with schema", T_DATASET,
     "{'name': 'eval', 'workspace_id': '6278acb09062db3b35bcbeb0', 'schema': " SCHEMA "}", 0, REQ,
     NULL, NULL},
    {"dataset without schema (V3)", T_DATASET, "{'name': 'eval', 'workspace_id': 'w'}", 0, REQ,
     NULL, NULL},
    {"dataset body an array", T_DATASET, "[]", 1, REQ, "",
     "the request body is an array; it must be a JSON object"},
    {"dataset name missing", T_DATASET, "{'workspace_id': 'w'}", 1, REQ, "name", "is missing"},
    {"dataset name empty", T_DATASET, "{'name': '', 'workspace_id': 'w'}", 1, REQ, "name",
     "is empty; give a name"},
    {"dataset workspace_id a number", T_DATASET, "{'name': 'n', 'workspace_id': 5}", 1, REQ,
     "workspace_id", "is a number; it must be a string"},
    {"dataset schema null", T_DATASET, "{'name': 'n', 'workspace_id': 'w', 'schema': null}", 1, REQ,
     "schema", "is null; it must be an object"},
    {"dataset schema field wrong", T_DATASET,
     "{'name': 'n', 'workspace_id': 'w', 'schema': {'strict': true, 'fields': {'a': {'type': "
     "'x'}}}}",
     1, REQ, "schema.fields.a.type", "\"x\" is not a field type"},
    {"batch minimal", T_BATCH, "{'name': 'b', 'workspace_id': 'w', " TASK "}", 0, REQ, NULL, NULL},
    {"batch with everything", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'dataset_id': "
     "'0192a3b5-e8f9-7a0b-1c2d-3e4f5a6b7c8d', 'auto_sync_enabled': false, 'batch_items': [{'rows': "
     "[{'columns': [{'items': [{'type': 'dataset_field', 'field': 'prompt'}]}]}]}], 'extra': 1}",
     0, REQ, NULL, NULL},
    {"batch batch_items null", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'batch_items': null}", 0, REQ, NULL, NULL},
    {"batch name missing", T_BATCH, "{'workspace_id': 'w', " TASK "}", 1, REQ, "name",
     "is missing"},
    {"batch workspace_id missing", T_BATCH, "{'name': 'b', " TASK "}", 1, REQ, "workspace_id",
     "is missing"},
    {"batch task_details missing", T_BATCH, "{'name': 'b', 'workspace_id': 'w'}", 1, REQ,
     "task_details", "is missing"},
    {"batch task_details incomplete", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', 'task_details': {'task_name': 'n', 'task_steps': 's'}}", 1,
     REQ, "task_details.task_introduction", "is missing"},
    {"batch dataset_id not a uuid", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'dataset_id': '0192a3b5'}", 1, REQ, "dataset_id",
     "\"0192a3b5\" is not a UUID"},
    {"batch dataset_id a number", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'dataset_id': 5}", 1, REQ, "dataset_id",
     "is a number; it must be a string"},
    {"batch batch_items a string", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'batch_items': 'x'}", 1, REQ, "batch_items",
     "is a string; it must be an array of pages or null"},
    {"batch auto_sync_enabled a string", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'auto_sync_enabled': 'yes'}", 1, REQ,
     "auto_sync_enabled", "is a string; it must be true or false"},
    {"batch item issue path", T_BATCH,
     "{'name': 'b', 'workspace_id': 'w', " TASK ", 'batch_items': [{'rows': [{'columns': "
     "[{'items': [{'type': 'image', 'url': 'http://x/y.png', 'alt_text': 'a'}]}]}]}]}",
     1, BAD, "batch_items[0].rows[0].columns[0].items[0].url", "is not an https URL"},
    {"update empty", T_UPDATE, "{}", 0, REQ, NULL, NULL},
    {"update name and layout", T_UPDATE,
     "{'name': 'b2', 'batch_items': null, 'auto_sync_enabled': true}", 0, REQ, NULL, NULL},
    {"update task_details incomplete", T_UPDATE, "{'task_details': {'task_name': 'n'}}", 2, REQ,
     "task_details.task_introduction", "is missing"},
    {"update name empty", T_UPDATE, "{'name': ''}", 1, REQ, "name", "is empty"},
    {"setup empty", T_SETUP, "{}", 0, REQ, NULL, NULL},
    {"setup full", T_SETUP,
     "{'dataset_id': '0192A3B5-E8F9-7A0B-1C2D-3E4F5A6B7C8D', 'tasks_per_group': 3}", 0, REQ, NULL,
     NULL},
    {"setup tasks_per_group zero", T_SETUP, "{'tasks_per_group': 0}", 1, REQ, "tasks_per_group",
     "is 0; it must be 1 or more"},
    {"setup tasks_per_group a string", T_SETUP, "{'tasks_per_group': '3'}", 1, REQ,
     "tasks_per_group", "is a string; it must be an integer"},
    {"setup tasks_per_group fractional", T_SETUP, "{'tasks_per_group': 1.5}", 1, REQ,
     "tasks_per_group", "it must be a whole number"},
    {"setup dataset_id bad", T_SETUP, "{'dataset_id': 'zz92a3b5-e8f9-7a0b-1c2d-3e4f5a6b7c8d'}", 1,
     REQ, "dataset_id", "is not a UUID"},
    {"setup body a string", T_SETUP, "'x'", 1, REQ, "", "the request body is a string"},
};

static void test_body_rules(void **state)
{
    (void)state;
    run_cases(body_cases, BD_ARRAY_LEN(body_cases));
    diag r = {0};
    rules_check_setup(NULL, &r); /* no body: all defaults */
    assert_int_equal(r.count, 0);
    rules_check_dataset_create(NULL, &r);
    assert_int_equal(r.count, 1);
    assert_string_equal(r.entries[0].param, "non_field_errors");
    assert_non_null(strstr(r.entries[0].message, "the request body is missing"));
    diag_free(&r);
}

/* The pairwise example's batch and batchd(8)'s job.json example, as their schemas allow. */
static void test_seed_and_product_examples(void **state)
{
    (void)state;
    cJSON *seed_schema =
        parse_q("{'strict': false, 'fields': {'prompt': {'type': 'text'}, 'response_a': {'type': "
                "'text'}, 'response_b': {'type': 'text'}, 'session_id': {'type': "
                "'task_group_id'}}}");
    cJSON *seed_batch = parse_q(
        "{'name': 'Response evaluation batch', 'workspace_id': '6278acb09062db3b35bcbeb0', "
        "'dataset_id': '0192a3b5-e8f9-7a0b-1c2d-3e4f5a6b7c8d', 'task_details': {'task_name': "
        "'Evaluate AI Responses', 'task_introduction': '<p>Compare two AI responses and choose "
        "the better one.</p>', 'task_steps': '<ol><li>Read the prompt</li><li>Read both "
        "responses</li><li>Select the better response</li></ol>'}, 'batch_items': [{'rows': "
        "[{'columns': [{'items': [{'type': 'rich_text', 'content': '<strong>Prompt</strong>'}, "
        "{'type': 'dataset_field', 'field': 'prompt'}]}]}, {'columns': [{'items': [{'type': "
        "'rich_text', 'content': '<strong>Response A</strong>'}, {'type': 'dataset_field', "
        "'field': 'response_a'}]}, {'items': [{'type': 'rich_text', 'content': '<strong>Response "
        "B</strong>'}, {'type': 'dataset_field', 'field': 'response_b'}]}]}, {'columns': "
        "[{'items': [{'type': 'multiple_choice', 'description': 'Which response is more "
        "helpful?', 'answer_limit': 1, 'options': [{'label': 'Response A', 'value': 'a'}, "
        "{'label': 'Response B', 'value': 'b'}, {'label': 'Neither', 'value': "
        "'neither'}]}]}]}]}]}");
    cJSON *seed_setup = parse_q("{'tasks_per_group': 3}");
    cJSON *seed_dataset = cJSON_CreateObject();
    cJSON_AddStringToObject(seed_dataset, "name", "eval-2026-11-29");
    cJSON_AddStringToObject(seed_dataset, "workspace_id", "6278acb09062db3b35bcbeb0");
    cJSON_AddItemToObject(seed_dataset, "schema", cJSON_Duplicate(seed_schema, true));

    diag r = {0};
    rules_check_dataset_create(seed_dataset, &r);
    rules_check_batch_create(seed_batch, seed_schema, &r);
    rules_check_setup(seed_setup, &r);
    dump(&r);
    assert_int_equal(r.count, 0);
    /* the same batch without its dataset cannot show dataset fields: 3 issues, 422 */
    rules_check_batch_create(seed_batch, NULL, &r);
    assert_int_equal(r.count, 3);
    assert_int_equal(diag_count_kind(&r, RULES_KIND_BATCH_ITEMS), 3);
    diag_free(&r);

    /* batchd(8)'s job.json (JOB FILES AND TEMPLATES): its dataset and batch parts, checked with
     * batchd's prefixes */
    cJSON *job = parse_q(
        "{'dataset': {'name': 'eval-2026-11-29', 'schema': {'strict': true, 'fields': {'prompt': "
        "{'type': 'text'}, 'response_a': {'type': 'text'}, 'response_b': {'type': 'text'}, "
        "'session_id': {'type': 'task_group_id'}}}}, 'batch': {'name': 'Response evaluation "
        "batch', 'task_details': {'task_name': '...', 'task_introduction': '<p>...</p>', "
        "'task_steps': '<ol>...</ol>'}, 'batch_items': [{'rows': [{'columns': [{'items': "
        "[{'type': 'dataset_field', 'field': 'prompt'}]}]}]}], 'tasks_per_group': 3}}");
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(job, "dataset");
    const cJSON *batch = cJSON_GetObjectItemCaseSensitive(job, "batch");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(ds, "schema");
    rules_check_schema(schema, "dataset.schema", &r);
    rules_check_task_details(cJSON_GetObjectItemCaseSensitive(batch, "task_details"),
                             "batch.task_details", &r);
    rules_check_batch_items(cJSON_GetObjectItemCaseSensitive(batch, "batch_items"), schema,
                            "batch.batch_items", &r);
    dump(&r);
    assert_int_equal(r.count, 0);
    diag_free(&r);

    cJSON_Delete(job);
    cJSON_Delete(seed_dataset);
    cJSON_Delete(seed_setup);
    cJSON_Delete(seed_batch);
    cJSON_Delete(seed_schema);
}

/* ---- error shapes ---------------------------------------------------------------------- */

static void assert_json(const cJSON *got, const char *want_q)
{
    cJSON *want = parse_q(want_q);
    char *g = json_print(got);
    char *w = json_print(want);
    assert_string_equal(g, w);
    free(w);
    free(g);
    cJSON_Delete(want);
}

static void test_request_error_envelope(void **state)
{
    (void)state;
    cJSON *body = parse_q("{'workspace_id': 'w', 'schema': {'strict': true, 'fields': {'a': "
                          "{'type': 'x'}, 'b': {'type': 'text', 'label': 1}}}}");
    diag r = {0};
    rules_check_dataset_create(body, &r);
    int status = -1;
    cJSON *err = rules_api_error(&r, &status);
    assert_int_equal(status, 400);
    assert_json(err, "{'error': {'status': 400, 'error_code': 0, 'title': 'Bad Request', "
                     "'detail': {'name': ['is missing; it is required (a string)'], 'schema': "
                     "['schema.fields.a.type: \\'x\\' is not a field type; use text, image_url, "
                     "metadata or task_group_id', 'schema.fields.b.label: is a number; it must "
                     "be a string']}}}");
    cJSON_Delete(err);
    diag_free(&r);
    cJSON_Delete(body);
}

static void test_request_issues_win(void **state)
{
    (void)state;
    cJSON *body = parse_q("{'name': 'b', 'workspace_id': 'w', 'task_details': {'task_name': 'n', "
                          "'task_introduction': 'i', 'task_steps': 's'}, 'batch_items': "
                          "[{'rows': [{'columns': [{'items': [{'type': 'dataset_field', 'field': "
                          "'p'}, {'type': 'rich_text'}]}]}]}]}");
    diag r = {0};
    rules_check_batch_create(body, NULL, &r);
    assert_int_equal(r.count, 2);
    int status = 0;
    cJSON *err = rules_api_error(&r, &status);
    assert_int_equal(status, 400);
    assert_json(err, "{'error': {'status': 400, 'error_code': 0, 'title': 'Bad Request', "
                     "'detail': {'batch_items': ['batch_items[0].rows[0].columns[0].items[1]"
                     ".content: is missing; it is required (a string)']}}}");
    cJSON_Delete(err);
    diag_free(&r);
    cJSON_Delete(body);
}

static void test_batch_items_error_shape(void **state)
{
    (void)state;
    cJSON *body = parse_q(
        "{'name': 'b', 'workspace_id': 'w', 'task_details': {'task_name': 'n', "
        "'task_introduction': 'i', 'task_steps': 's'}, 'batch_items': [{'rows': [{'columns': "
        "[{'items': [{'type': 'dataset_field', 'field': 'p'}]}, {'items': [{'type': "
        "'multiple_choice', 'description': 'd', 'answer_limit': 3, 'options': [{'label': 'A', "
        "'value': 1}, {'label': 'B', 'value': 2}]}]}]}]}]}");
    diag r = {0};
    rules_check_batch_create(body, NULL, &r);
    int status = 0;
    cJSON *err = rules_api_error(&r, &status);
    assert_int_equal(status, 422);
    assert_json(err,
                "{'type': 'INVALID_BATCH_ITEMS', 'message': 'batch_items failed validation: 2 "
                "issues', 'issues': [{'page': 0, 'row': 0, 'column': 0, 'item': 0, 'type': "
                "'dataset_field', 'field': 'p', 'message': 'dataset_field \\'p\\' needs an "
                "attached V4 dataset with a schema; attach one (dataset_id) whose schema defines "
                "this field'}, {'page': 0, 'row': 0, 'column': 1, 'item': 0, 'type': "
                "'multiple_choice', 'message': 'answer_limit 3 exceeds the 2 options; use 1, -1 "
                "or 2'}]}");
    cJSON_Delete(err);
    diag_free(&r);
    cJSON_Delete(body);
}

static void test_empty_report_and_plain_envelope(void **state)
{
    (void)state;
    diag r = {0};
    int status = 7;
    assert_null(rules_api_error(&r, &status));
    assert_int_equal(status, 0);

    /* callers may add issues of their own, with any of the strings NULL */
    diag_add(&r, DIAG_ERROR, &(diag_where){.kind = RULES_KIND_REQUEST}, "%s %d", "own", 42);
    diag_add(&r, DIAG_ERROR,
             &(diag_where){.path = "name", .kind = RULES_KIND_REQUEST, .param = "name"}, "taken");
    cJSON *err = rules_api_error(&r, &status);
    assert_int_equal(status, 400);
    assert_json(err, "{'error': {'status': 400, 'error_code': 0, 'title': 'Bad Request', "
                     "'detail': {'non_field_errors': ['own 42'], 'name': ['taken']}}}");
    cJSON_Delete(err);
    diag_free(&r);

    cJSON *nf = rules_error_envelope(404, "Not Found", "No dataset 0192a3b5");
    assert_json(nf, "{'error': {'status': 404, 'error_code': 0, 'title': 'Not Found', 'detail': "
                    "'No dataset 0192a3b5'}}");
    cJSON_Delete(nf);
    cJSON *na = rules_error_envelope(405, "Method Not Allowed", NULL);
    assert_json(na, "{'error': {'status': 405, 'error_code': 0, 'title': 'Method Not Allowed', "
                    "'detail': 'Method Not Allowed'}}");
    cJSON_Delete(na);
}

/* Long values are shortened in messages and the report keeps growing past its first block. */
static void test_long_values_and_many_issues(void **state)
{
    (void)state;
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "type", "rich_text");
    strbuf fmt;
    strbuf_init(&fmt);
    for (int i = 0; i < 200; i++)
        strbuf_puts(&fmt, "ü");
    cJSON_AddStringToObject(item, "content", "x");
    cJSON_AddStringToObject(item, "content_format", fmt.data);
    cJSON *items = cJSON_CreateArray();
    for (int p = 0; p < 20; p++) {
        cJSON *page = cJSON_CreateObject();
        cJSON *row = cJSON_CreateObject();
        cJSON *col = cJSON_CreateObject();
        cJSON_AddItemToArray(cJSON_AddArrayToObject(col, "items"), cJSON_Duplicate(item, true));
        cJSON_AddItemToArray(cJSON_AddArrayToObject(row, "columns"), col);
        cJSON_AddItemToArray(cJSON_AddArrayToObject(page, "rows"), row);
        cJSON_AddItemToArray(items, page);
    }
    diag r = {0};
    rules_check_batch_items(items, NULL, "b", &r);
    assert_int_equal(r.count, 20);
    assert_string_equal(r.entries[19].path, "b[19].rows[0].columns[0].items[0].content_format");
    assert_true(strlen(r.entries[0].message) < 120);
    assert_non_null(strstr(r.entries[0].message, "...\" is not allowed; use html or markdown"));
    assert_true(utf8_valid(r.entries[0].message, strlen(r.entries[0].message)));
    diag_free(&r);
    cJSON_Delete(items);
    cJSON_Delete(item);
    strbuf_free(&fmt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_rules),
        cmocka_unit_test(test_schema_limits),
        cmocka_unit_test(test_schema_issue_param),
        cmocka_unit_test(test_field_types),
        cmocka_unit_test(test_task_details_rules),
        cmocka_unit_test(test_item_rules),
        cmocka_unit_test(test_layout_rules),
        cmocka_unit_test(test_dataset_field_needs_populated_schema),
        cmocka_unit_test(test_issue_location),
        cmocka_unit_test(test_body_rules),
        cmocka_unit_test(test_seed_and_product_examples),
        cmocka_unit_test(test_request_error_envelope),
        cmocka_unit_test(test_request_issues_win),
        cmocka_unit_test(test_batch_items_error_shape),
        cmocka_unit_test(test_empty_report_and_plain_envelope),
        cmocka_unit_test(test_long_values_and_many_issues),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
