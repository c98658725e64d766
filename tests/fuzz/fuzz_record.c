/* libFuzzer harness for the job record reader: what store_load_all does with a record file
 * (parse, job_from_record), then the round trip a record must survive.
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iinclude \
 *     tests/fuzz/fuzz_record.c src/lib/job.c src/lib/apitext.c src/lib/util.c -lcjson -lm \
 *     -o /tmp/fuzz_record
 *   /tmp/fuzz_record -max_total_time=60 -max_len=8192
 *
 * Checked beyond "no crash, no leak": a record the reader accepts is written back (through the
 * one JSON writer) as valid UTF-8 that the reader accepts again, and that second reading
 * writes the very same text (job_to_record -> writer -> parse -> job_from_record is a fixed
 * point); its public form, result.json and error.json print as valid UTF-8 JSON that parses. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "batchd/job.h"
#include "batchd/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *write_record(const job *j)
{
    cJSON *rec = job_to_record(j);
    char *text = json_print(rec);
    cJSON_Delete(rec);
    if (!utf8_valid(text, strlen(text)))
        abort();
    return text;
}

static void check_doc(cJSON *doc)
{
    char *text = json_print_pretty(doc);
    cJSON_Delete(doc);
    if (!utf8_valid(text, strlen(text)))
        abort();
    cJSON *back = cJSON_Parse(text);
    if (!back)
        abort();
    cJSON_Delete(back);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *rec = cJSON_ParseWithLength((const char *)data, size);
    const char *why = NULL;
    job *j = rec ? job_from_record(rec, &why) : NULL;
    cJSON_Delete(rec);
    if (!j)
        return 0;
    char *text = write_record(j);
    cJSON *parsed = cJSON_Parse(text);
    if (!parsed)
        abort();
    job *j2 = job_from_record(parsed, &why);
    cJSON_Delete(parsed);
    if (!j2)
        abort();
    char *text2 = write_record(j2);
    if (strcmp(text, text2) != 0)
        abort();
    check_doc(job_to_public(j2, true));
    check_doc(job_result_json(j2));
    check_doc(job_error_json(j2));
    free(text);
    free(text2);
    job_free(j);
    job_free(j2);
    return 0;
}
