// clang-format off
/* Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude -Isrc/lib tests/fuzz/fuzz_rules.c src/lib/rules.c src/lib/rules_items.c src/lib/util.c -lcjson -lm -o fuzz_rules
 *
 * libFuzzer harness of rules: the input is parsed as JSON and run through every check,
 * as a whole body and through its "schema" and "batch_items" members, then turned into
 * the API's error body. Besides memory errors it aborts when a report breaks the
 * module's promises: every issue has a path and a message, every BATCH_ITEMS issue is
 * located at an item with its type, and a report with issues always yields a body. */
// clang-format on
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "batchd/rules.h"
#include "batchd/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_report(const diag *r)
{
    for (size_t i = 0; i < r->count; i++) {
        const diag_entry *is = &r->entries[i];
        if (!is->path || !is->message || !*is->message)
            abort();
        if (is->kind == RULES_KIND_BATCH_ITEMS &&
            (is->layout.page < 0 || is->layout.row < 0 || is->layout.column < 0 ||
             is->layout.item < 0 || !is->item_type))
            abort();
        if (is->kind != RULES_KIND_REQUEST && is->kind != RULES_KIND_BATCH_ITEMS)
            abort();
    }
    int status = -1;
    cJSON *err = rules_api_error(r, &status);
    if ((r->count == 0) != (err == NULL))
        abort();
    if (err) {
        if (status != 400 && status != 422)
            abort();
        char *text = json_print(err);
        free(text);
        cJSON_Delete(err);
    } else if (status != 0) {
        abort();
    }
}

static void run(void (*check)(const cJSON *, diag *), const cJSON *j)
{
    diag r = {0};
    check(j, &r);
    check_report(&r);
    diag_free(&r);
}

static void dataset_create(const cJSON *j, diag *r)
{
    rules_check_dataset_create(j, r);
}

static void batch_create(const cJSON *j, diag *r)
{
    rules_check_batch_create(j, cJSON_GetObjectItemCaseSensitive(j, "schema"), r);
}

static void batch_update(const cJSON *j, diag *r)
{
    rules_check_batch_update(j, cJSON_GetObjectItemCaseSensitive(j, "schema"), r);
}

static void setup(const cJSON *j, diag *r)
{
    rules_check_setup(j, r);
}

static void schema(const cJSON *j, diag *r)
{
    rules_check_schema(j, "dataset.schema", r);
    rules_check_schema(cJSON_GetObjectItemCaseSensitive(j, "schema"), "", r);
}

static void task_details(const cJSON *j, diag *r)
{
    rules_check_task_details(j, "batch.task_details", r);
}

static void batch_items(const cJSON *j, diag *r)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "schema");
    rules_check_batch_items(j, NULL, "batch.batch_items", r);
    rules_check_batch_items(cJSON_GetObjectItemCaseSensitive(j, "batch_items"), s, "", r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    if (!j)
        return 0;
    run(dataset_create, j);
    run(batch_create, j);
    run(batch_update, j);
    run(setup, j);
    run(schema, j);
    run(task_details, j);
    run(batch_items, j);
    cJSON_Delete(j);

    char *detail = xstrndup((const char *)data, size);
    cJSON *env = rules_error_envelope(404, "Not Found", detail);
    char *text = json_print(env);
    free(text);
    cJSON_Delete(env);
    free(detail);
    return 0;
}
