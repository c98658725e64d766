/* libFuzzer harness for the records validator (JSONL and CSV).
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iinclude -Isrc/lib \
 *     tests/fuzz/fuzz_records.c src/lib/records.c src/lib/records_json.c src/lib/csv.c \
 *     src/lib/util.c -lcjson -lm -o /tmp/fuzz_records
 *   mkdir -p /tmp/fuzz_records_corpus && /tmp/fuzz_records -max_total_time=60 \
 *     -max_len=4096 /tmp/fuzz_records_corpus
 *
 * The first byte picks the format, the schema's strictness, max_record and the chunking;
 * the rest is the file. Checked beyond "no crash, no leak":
 *   - feeding the input in one block and in odd chunks gives identical results;
 *   - a JSONL record reported valid is, for cJSON too, an object whose members are all
 *     strings named in the schema, each once;
 *   - raw records are never longer than max_record and counts add up. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "batchd/records.h"
#include "batchd/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const schema_keys[] = {"prompt", "image", "g"};

typedef struct fuzz_run {
    records_format fmt;
    size_t max_record;
    uint64_t digest;
    uint64_t n;
} fuzz_run;

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

static bool key_in_schema(const char *k)
{
    for (size_t i = 0; i < BD_ARRAY_LEN(schema_keys); i++)
        if (strcmp(k, schema_keys[i]) == 0)
            return true;
    return false;
}

static void check_valid_json(const char *raw, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(raw, len);
    assert(j && cJSON_IsObject(j));
    const cJSON *m;
    cJSON_ArrayForEach(m, j)
    {
        assert(cJSON_IsString(m));
        assert(key_in_schema(m->string));
        int seen = 0;
        const cJSON *o;
        cJSON_ArrayForEach(o, j) seen += strcmp(o->string, m->string) == 0;
        assert(seen == 1);
    }
    cJSON_Delete(j);
}

static int on_record(void *ud, const char *raw, size_t raw_len, uint64_t record, const diag *errors)
{
    fuzz_run *r = ud;
    assert(raw != NULL);
    assert(raw_len <= r->max_record);
    assert(errors->count <= RECORDS_MAX_ERRORS);
    assert(record == r->n);
    r->digest = mix(r->digest, raw, raw_len);
    for (size_t i = 0; i < errors->count; i++) {
        const diag_entry *e = &errors->entries[i];
        const char *field = e->field ? e->field : "";
        assert(strlen(field) < RECORDS_FIELD_MAX);
        assert(strlen(e->message) < RECORDS_MESSAGE_MAX);
        r->digest = mix(r->digest, &e->line, sizeof(e->line));
        r->digest = mix(r->digest, field, strlen(field));
        r->digest = mix(r->digest, e->message, strlen(e->message));
    }
    if (errors->count == 0 && r->fmt == RECORDS_JSONL)
        check_valid_json(raw, raw_len);
    r->n++;
    return 0;
}

static void run_once(const records_schema *s, fuzz_run *r, const uint8_t *data, size_t size,
                     size_t chunk, records_stats *st)
{
    records_options o = {.format = r->fmt,
                         .schema = s,
                         .max_record = r->max_record,
                         .on_record = on_record,
                         .ud = r};
    records_validator *v = records_new(&o);
    assert(v);
    size_t pos = 0;
    while (pos < size) {
        size_t n = size - pos < chunk ? size - pos : chunk;
        assert(records_feed(v, data + pos, n) == 0);
        pos += n;
        chunk = chunk % 7 + 1; /* vary the chunk size as we go */
    }
    assert(records_finish(v) == 0);
    records_get_stats(v, st);
    assert(st->records == r->n);
    assert(st->valid + st->invalid == st->records);
    assert(st->bytes == size);
    uint64_t line;
    const char *fe = records_file_error(v, &line);
    if (fe)
        r->digest = mix(r->digest, fe, strlen(fe));
    size_t hl;
    const char *h = records_csv_header(v, &hl);
    if (h)
        r->digest = mix(r->digest, h, hl);
    records_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    char schema_json[256];
    snprintf(schema_json, sizeof(schema_json),
             "{\"strict\": %s, \"fields\": {\"prompt\": {\"type\": \"text\"}, \"image\": "
             "{\"type\": \"image_url\"}, \"g\": {\"type\": \"task_group_id\"}}}",
             (ctl & 2) ? "true" : "false");
    cJSON *sj = cJSON_Parse(schema_json);
    records_schema *s = records_schema_new(sj);
    assert(s);
    fuzz_run whole = {.fmt = (ctl & 1) ? RECORDS_CSV : RECORDS_JSONL,
                      .max_record = (ctl & 4) ? 16 : 4096,
                      .digest = 0xcbf29ce484222325ULL};
    fuzz_run chunked = whole;
    records_stats a, b;
    run_once(s, &whole, data, size, size ? size : 1, &a);
    run_once(s, &chunked, data, size, (size_t)(ctl >> 3) % 7 + 1, &b);
    assert(whole.digest == chunked.digest);
    assert(memcmp(&a, &b, sizeof(a)) == 0);
    records_schema_free(s);
    cJSON_Delete(sj);
    return 0;
}
