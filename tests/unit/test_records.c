/* test-deps: util */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/records.h"
#include "batchd/util.h"
#include "records_internal.h"

/* ---- harness -------------------------------------------------------------------------- */

static const char *const SCHEMA_STRICT =
    "{\"strict\": true, \"fields\": {\"prompt\": {\"type\": \"text\"},"
    " \"image\": {\"type\": \"image_url\"}, \"group\": {\"type\": \"task_group_id\"}}}";
static const char *const SCHEMA_LOOSE =
    "{\"strict\": false, \"fields\": {\"prompt\": {\"type\": \"text\"},"
    " \"image\": {\"type\": \"image_url\"}, \"group\": {\"type\": \"task_group_id\"}}}";
static const char *const SCHEMA_TWO =
    "{\"strict\": true, \"fields\": {\"prompt\": {\"type\": \"text\"},"
    " \"image\": {\"type\": \"image_url\"}}}";
static const char *const SCHEMA_TEXT = "{\"strict\": true, \"fields\": {\"a\": {\"type\": "
                                       "\"text\"}, \"b\": {\"type\": \"text\"}}}";

/* One problem as the tests look at it: field "" for a whole-record problem. */
typedef struct rec_err {
    uint64_t line;
    uint64_t record;
    char field[RECORDS_FIELD_MAX];
    char message[RECORDS_MESSAGE_MAX];
} rec_err;

typedef struct rec_out {
    char *raw;
    size_t raw_len;
    size_t nerr;
    rec_err errs[RECORDS_MAX_ERRORS];
} rec_out;

typedef struct run {
    rec_out *recs;
    size_t n, cap;
    int stop_at; /* return 7 from the callback for this record index (-1: never) */
    records_stats st;
    char *file_error;
    char *file_error_field;
    uint64_t file_error_line;
    char *header;
    size_t header_len;
    int feed_rc, finish_rc;
    size_t max_cap;
} run;

static int collect(void *ud, const char *raw, size_t raw_len, uint64_t record, const diag *errors)
{
    run *r = ud;
    size_t n_errors = errors->count;
    assert_non_null(raw);
    assert_true(n_errors <= RECORDS_MAX_ERRORS);
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->recs = xrealloc(r->recs, r->cap * sizeof(*r->recs));
    }
    rec_out *o = &r->recs[r->n++];
    o->raw = xstrndup(raw, raw_len);
    o->raw_len = raw_len;
    o->nerr = n_errors;
    for (size_t i = 0; i < n_errors; i++) {
        const diag_entry *e = &errors->entries[i];
        o->errs[i].line = e->line;
        o->errs[i].record = record;
        assert_true(strlen(e->field ? e->field : "") < sizeof o->errs[i].field);
        assert_true(strlen(e->message) < sizeof o->errs[i].message);
        strlcpy_bd(o->errs[i].field, e->field ? e->field : "", sizeof o->errs[i].field);
        strlcpy_bd(o->errs[i].message, e->message, sizeof o->errs[i].message);
    }
    return (r->stop_at >= 0 && (size_t)r->stop_at == r->n - 1) ? 7 : 0;
}

static void run_free(run *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->recs[i].raw);
    free(r->recs);
    free(r->file_error);
    free(r->file_error_field);
    free(r->header);
    memset(r, 0, sizeof(*r));
}

static records_schema *schema_from(const char *json)
{
    cJSON *j = cJSON_Parse(json);
    assert_non_null(j);
    records_schema *s = records_schema_new(j);
    cJSON_Delete(j);
    return s;
}

/* chunking: 0 = one block, 1 = byte by byte, otherwise a seed for random chunk sizes. */
static void run_input_opts(run *r, const char *schema_json, records_format fmt, size_t max_record,
                           const char *data, size_t len, unsigned chunking, int stop_at)
{
    memset(r, 0, sizeof(*r));
    r->stop_at = stop_at;
    records_schema *s = schema_from(schema_json);
    assert_non_null(s);
    records_options o = {
        .format = fmt, .schema = s, .max_record = max_record, .on_record = collect, .ud = r};
    records_validator *v = records_new(&o);
    assert_non_null(v);
    size_t pos = 0;
    unsigned seed = chunking;
    while (pos < len && r->feed_rc == 0) {
        size_t n = len - pos;
        if (chunking == 1) {
            n = 1;
        } else if (chunking > 1) {
            seed = seed * 1103515245u + 12345u;
            size_t want = (seed >> 8) % 7 == 0 ? (seed >> 4) % 65536 : (seed >> 4) % 9;
            n = want + 1 < n ? want + 1 : n;
        }
        r->feed_rc = records_feed(v, data + pos, n);
        pos += n;
        size_t cap = records_buffer_capacity(v);
        if (cap > r->max_cap)
            r->max_cap = cap;
    }
    r->finish_rc = records_finish(v);
    records_get_stats(v, &r->st);
    const char *fe = records_file_error(v, &r->file_error_line);
    r->file_error = fe ? xstrdup(fe) : NULL;
    const char *ff = records_file_error_field(v);
    r->file_error_field = ff ? xstrdup(ff) : NULL;
    size_t hl;
    const char *h = records_csv_header(v, &hl);
    if (h) {
        r->header = xstrndup(h, hl);
        r->header_len = hl;
    }
    records_free(v);
    records_schema_free(s);
}

static void run_input(run *r, const char *schema_json, records_format fmt, const char *data,
                      unsigned chunking)
{
    run_input_opts(r, schema_json, fmt, 1024, data, strlen(data), chunking, -1);
}

/* Everything a run produced, as text, to compare runs. */
static char *run_summary(const run *r)
{
    strbuf sb;
    strbuf_init(&sb);
    strbuf_printf(&sb, "rc=%d/%d st=%llu/%llu/%llu lines=%llu bytes=%llu fe=%s@%llu hdr=%s\n",
                  r->feed_rc, r->finish_rc, (unsigned long long)r->st.records,
                  (unsigned long long)r->st.valid, (unsigned long long)r->st.invalid,
                  (unsigned long long)r->st.lines, (unsigned long long)r->st.bytes,
                  r->file_error ? r->file_error : "-", (unsigned long long)r->file_error_line,
                  r->header ? r->header : "-");
    for (size_t i = 0; i < r->n; i++) {
        const rec_out *o = &r->recs[i];
        strbuf_printf(&sb, "[%zu] %zu<", i, o->raw_len);
        strbuf_append(&sb, o->raw, o->raw_len);
        strbuf_puts(&sb, ">\n");
        for (size_t k = 0; k < o->nerr; k++)
            strbuf_printf(&sb, "  %llu/%llu %s: %s\n", (unsigned long long)o->errs[k].line,
                          (unsigned long long)o->errs[k].record, o->errs[k].field,
                          o->errs[k].message);
    }
    return strbuf_steal(&sb);
}

/* The first error of record i contains text (field checked too when not NULL). */
static void expect_error(const run *r, size_t i, const char *field, const char *text)
{
    assert_true(i < r->n);
    const rec_out *o = &r->recs[i];
    for (size_t k = 0; k < o->nerr; k++) {
        if (strstr(o->errs[k].message, text) && (!field || strcmp(o->errs[k].field, field) == 0))
            return;
    }
    char *sum = run_summary(r);
    print_error("record %zu has no error '%s' (field %s)\n%s", i, text, field ? field : "*", sum);
    free(sum);
    fail();
}

static void expect_valid(const run *r, size_t i)
{
    assert_true(i < r->n);
    if (r->recs[i].nerr != 0) {
        char *sum = run_summary(r);
        print_error("record %zu should be valid\n%s", i, sum);
        free(sum);
        fail();
    }
}

/* Runs data whole, byte by byte and in random chunks; all must agree. Leaves the whole
 * run in *r. */
static void run_all_ways(run *r, const char *schema, records_format fmt, const char *data,
                         size_t len, size_t max_record)
{
    run_input_opts(r, schema, fmt, max_record, data, len, 0, -1);
    char *want = run_summary(r);
    const unsigned ways[] = {1, 2, 3, 99, 12345};
    for (size_t w = 0; w < BD_ARRAY_LEN(ways); w++) {
        run other;
        run_input_opts(&other, schema, fmt, max_record, data, len, ways[w], -1);
        char *got = run_summary(&other);
        if (strcmp(want, got) != 0)
            print_error("chunking %u differs:\n--- whole\n%s--- chunked\n%s", ways[w], want, got);
        assert_string_equal(want, got);
        free(got);
        run_free(&other);
    }
    free(want);
}

/* ---- format and schema ---------------------------------------------------------------- */

static void test_format_from_name(void **state)
{
    (void)state;
    records_format f = RECORDS_CSV;
    assert_int_equal(records_format_from_name("data.jsonl", &f), 0);
    assert_int_equal(f, RECORDS_JSONL);
    assert_int_equal(records_format_from_name("/x.y/DATA.CSV", &f), 0);
    assert_int_equal(f, RECORDS_CSV);
    assert_int_equal(records_format_from_name("a.b.JsonL", &f), 0);
    assert_int_equal(f, RECORDS_JSONL);
    assert_int_equal(records_format_from_name("data.json", &f), -EINVAL);
    assert_int_equal(records_format_from_name("data.csv.gz", &f), -EINVAL);
    assert_int_equal(records_format_from_name("csv", &f), -EINVAL);
    assert_int_equal(records_format_from_name(".csv", &f), -EINVAL);
    assert_int_equal(records_format_from_name("dir.csv/data", &f), -EINVAL);
    assert_int_equal(records_format_from_name(NULL, &f), -EINVAL);
}

static void test_schema_new(void **state)
{
    (void)state;
    records_schema *s = schema_from(SCHEMA_STRICT);
    assert_non_null(s);
    records_schema_free(s);
    records_schema_free(NULL);
    const char *bad[] = {
        "[]",
        "{\"fields\": {\"a\": {\"type\": \"text\"}}}",
        "{\"strict\": 1, \"fields\": {\"a\": {\"type\": \"text\"}}}",
        "{\"strict\": true, \"fields\": {}}",
        "{\"strict\": true, \"fields\": []}",
        "{\"strict\": true, \"fields\": {\"a\": {\"type\": \"number\"}}}",
        "{\"strict\": true, \"fields\": {\"a\": \"text\"}}",
        "{\"strict\": true, \"fields\": {\"\": {\"type\": \"text\"}}}",
        "{\"strict\": true, \"fields\": {\"a\": {\"type\": \"text\"}, \"a\": {}}}",
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        records_schema *b = schema_from(bad[i]);
        if (b)
            print_error("accepted: %s\n", bad[i]);
        assert_null(b);
    }
    assert_null(records_schema_new(NULL));
    /* Keys up to 128 bytes, at most 200 fields. */
    strbuf sb;
    strbuf_init(&sb);
    strbuf_puts(&sb, "{\"strict\": false, \"fields\": {\"");
    for (int i = 0; i < 129; i++)
        strbuf_putc(&sb, 'k');
    strbuf_puts(&sb, "\": {\"type\": \"text\"}}}");
    assert_null(schema_from(sb.data));
    strbuf_reset(&sb);
    strbuf_puts(&sb, "{\"strict\": false, \"fields\": {");
    for (int i = 0; i < 201; i++)
        strbuf_printf(&sb, "%s\"f%d\": {\"type\": \"text\"}", i ? "," : "", i);
    strbuf_puts(&sb, "}}");
    assert_null(schema_from(sb.data));
    strbuf_free(&sb);
    records_options o = {.format = RECORDS_JSONL};
    assert_null(records_new(&o));
    assert_null(records_new(NULL));
}

/* ---- JSONL ---------------------------------------------------------------------------- */

static void test_jsonl_valid_blank_crlf(void **state)
{
    (void)state;
    const char *in =
        "{\"prompt\": \"hi\", \"image\": \"https://x.org/a.png\", \"group\": \"g\"}\r\n"
        "\n"
        "   \t\r\n"
        "{\"group\":\"g2\",\"prompt\":\"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00\","
        "\"image\":\"http://h:8080/p?q#f\"}\n"
        "  {\"prompt\": \"x\", \"image\": \"HTTPS://[::1]/x\", \"group\": \"\"}  ";
    run r;
    run_all_ways(&r, SCHEMA_STRICT, RECORDS_JSONL, in, strlen(in), 1024);
    assert_int_equal(r.st.records, 3);
    assert_int_equal(r.st.valid, 3);
    assert_int_equal(r.st.invalid, 0);
    assert_int_equal(r.st.lines, 5);
    assert_int_equal(r.st.bytes, strlen(in));
    assert_null(r.file_error);
    assert_null(r.header);
    assert_int_equal(r.n, 3);
    /* raw is exact, without the CRLF / LF */
    assert_string_equal(
        r.recs[0].raw,
        "{\"prompt\": \"hi\", \"image\": \"https://x.org/a.png\", \"group\": \"g\"}");
    assert_string_equal(r.recs[2].raw,
                        "  {\"prompt\": \"x\", \"image\": \"HTTPS://[::1]/x\", \"group\": \"\"}  ");
    run_free(&r);
}

static void test_jsonl_not_an_object(void **state)
{
    (void)state;
    const char *in = "[1, 2]\n42\n\"text\"\ntrue\nnull\n-1.5e3\n[[[[[[\n{\"prompt\": [1]}\n";
    run r;
    run_all_ways(&r, SCHEMA_LOOSE, RECORDS_JSONL, in, strlen(in), 1024);
    assert_int_equal(r.st.records, 8);
    assert_int_equal(r.st.invalid, 8);
    expect_error(&r, 0, "", "the line is an array, not a JSON object");
    expect_error(&r, 1, "", "the line is a number, not a JSON object");
    expect_error(&r, 2, "", "the line is a string");
    expect_error(&r, 3, "", "the line is a boolean");
    expect_error(&r, 4, "", "the line is null");
    expect_error(&r, 5, "", "a number");
    expect_error(&r, 6, "", "an array");
    expect_error(&r, 7, "prompt", "must be a string, not an array");
    assert_int_equal(r.recs[0].errs[0].line, 1);
    assert_int_equal(r.recs[7].errs[0].line, 8);
    assert_int_equal(r.recs[7].errs[0].record, 7);
    run_free(&r);
}

static void test_jsonl_malformed(void **state)
{
    (void)state;
    const char *lines[][2] = {
        {"{\"prompt\": \"a\",}", "malformed JSON at byte 16: expected a key"},
        {"{\"prompt\" \"a\"}", "malformed JSON at byte 11: expected ':'"},
        {"{\"prompt\": \"a\"} x", "malformed JSON at byte 17: unexpected text after"},
        {"{\"prompt\": \"a\"}{}", "unexpected text after the JSON object"},
        {"{\"prompt\": \"a", "malformed JSON at byte 12: unterminated string"},
        {"{\"prompt\": \"a\"", "expected ',' or '}'"},
        {"{'prompt': 'a'}", "expected a key in double quotes"},
        {"{\"prompt\": \"a\\x\"}", "invalid escape"},
        {"{\"prompt\": \"a\tb\"}", "raw control character 0x09"},
        {"{\"prompt\": \"\\u0000\"}", "escaped NUL character"},
        {"{\"prompt\": \"\\udc00\"}", "lone low surrogate"},
        {"{\"prompt\": \"\\ud800x\"}", "high surrogate"},
        {"{\"prompt\": \"\\u12g4\"}", "four hex digits"},
        {"{\"x\": 01}", "leading zeros"},
        {"{\"x\": 1.}", "digits must follow the decimal point"},
        {"{\"x\": 1e}", "digits must follow the exponent"},
        {"{\"x\": tru}", "expected a JSON value"},
        {"{\"x\": [1 2]}", "expected ',' or ']'"},
        {"{\"x\": {\"a\" 1}}", "expected ':'"},
        {"{\"x\": NaN}", "expected a JSON value"},
        {"{", "expected a key"},
        {"\xef\xbb\xbf{}", "expected '{'"}, /* a BOM in the middle of the file */
    };
    strbuf in;
    strbuf_init(&in);
    strbuf_puts(&in, "{\"prompt\": \"ok\"}\n");
    for (size_t i = 0; i < BD_ARRAY_LEN(lines); i++) {
        strbuf_puts(&in, lines[i][0]);
        strbuf_putc(&in, '\n');
    }
    run r;
    run_all_ways(&r, SCHEMA_LOOSE, RECORDS_JSONL, in.data, in.len, 1024);
    expect_valid(&r, 0);
    assert_int_equal(r.st.records, BD_ARRAY_LEN(lines) + 1);
    assert_int_equal(r.st.invalid, BD_ARRAY_LEN(lines));
    for (size_t i = 0; i < BD_ARRAY_LEN(lines); i++) {
        expect_error(&r, i + 1, "", lines[i][1]);
        assert_int_equal(r.recs[i + 1].nerr, 1); /* only the syntax error */
    }
    run_free(&r);
    strbuf_free(&in);
}

static void test_jsonl_values_and_keys(void **state)
{
    (void)state;
    const char *in =
        "{\"prompt\": 1, \"image\": null, \"group\": true}\n"
        "{\"prompt\": {\"a\": \"b\"}, \"image\": \"https://x/\", \"group\": \"g\"}\n"
        "{\"prompt\": \"p\", \"image\": \"https://x/\", \"group\": \"g\", \"foo\": 1}\n"
        "{\"prompt\": \"p\"}\n"
        "{\"prompt\": \"p\", \"prompt\": \"q\", \"image\": \"https://x/\", "
        "\"group\": \"g\"}\n"
        "{\"pr\\u006fmpt\": \"p\", \"image\": \"https:\\/\\/x\\/\", \"group\": \"g\"}\n"
        "{}\n";
    run r;
    run_all_ways(&r, SCHEMA_STRICT, RECORDS_JSONL, in, strlen(in), 1024);
    assert_int_equal(r.st.records, 7);
    expect_error(&r, 0, "prompt", "must be a string, not a number");
    expect_error(&r, 0, "image", "must be a string, not null");
    expect_error(&r, 0, "group", "must be a string, not a boolean");
    expect_error(&r, 1, "prompt", "must be a string, not an object");
    expect_error(&r, 2, "foo", "key 'foo' is not in the schema");
    assert_int_equal(r.recs[2].nerr, 1);
    expect_error(&r, 3, "image", "missing (schema is strict)");
    expect_error(&r, 3, "group", "missing (schema is strict)");
    assert_int_equal(r.recs[3].nerr, 2);
    expect_error(&r, 4, "prompt", "appears more than once");
    expect_valid(&r, 5); /* escapes in keys and values are decoded */
    assert_int_equal(r.recs[6].nerr, 3);
    assert_int_equal(r.st.valid, 1);
    run_free(&r);

    /* Not strict: missing fields are fine, the rest still applies. */
    run_input(&r, SCHEMA_LOOSE, RECORDS_JSONL, "{\"prompt\": \"p\"}\n{}\n{\"foo\": \"x\"}\n", 0);
    expect_valid(&r, 0);
    expect_valid(&r, 1);
    expect_error(&r, 2, "foo", "not in the schema");
    run_free(&r);
}

static void test_jsonl_image_urls(void **state)
{
    (void)state;
    const char *good[] = {"http://x.org",
                          "https://x.org/a.png?x=1#y",
                          "HTTP://user:pw@host:443/",
                          "https://[2001:db8::1]:8443/i",
                          "https://b\303\274cher.de/x",
                          "https://h/p%20q"};
    const char *bad[][2] = {
        {"ftp://x.org/a.png", "does not start with http:// or https://"},
        {"/relative/a.png", "does not start with http://"},
        {"https://", "has no host"},
        {"https:///path", "has no host"},
        {"https://:80/x", "has no host"},
        {"https://x.org/a b.png", "space or control character"},
        {"https://x.org:99999/", "port"},
        {"https://x.org:http/", "port"},
        {"https://[::1/", "IPv6"},
        {"https://ex ample.org", "space"},
        {"https://ex<ample.org", "host contains"},
        {"", "does not start with"},
    };
    strbuf in;
    strbuf_init(&in);
    for (size_t i = 0; i < BD_ARRAY_LEN(good); i++)
        strbuf_printf(&in, "{\"image\": \"%s\"}\n", good[i]);
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++)
        strbuf_printf(&in, "{\"image\": \"%s\"}\n", bad[i][0]);
    run r;
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_JSONL, 1024, in.data, in.len, 0, -1);
    for (size_t i = 0; i < BD_ARRAY_LEN(good); i++)
        expect_valid(&r, i);
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        expect_error(&r, BD_ARRAY_LEN(good) + i, "image", bad[i][1]);
        expect_error(&r, BD_ARRAY_LEN(good) + i, "image",
                     "image_url value must be an absolute http:// or https:// URL");
    }
    run_free(&r);
    strbuf_free(&in);
}

static void test_jsonl_invalid_utf8_and_nul(void **state)
{
    (void)state;
    static const char in[] = "{\"prompt\": \"ok\"}\n"
                             "{\"prompt\": \"\xff\"}\n"             /* not UTF-8 at all */
                             "{\"prompt\": \"\xc0\x80\"}\n"         /* overlong NUL */
                             "{\"prompt\": \"\xed\xa0\x80\"}\n"     /* a surrogate */
                             "{\"prompt\": \"\xf4\x90\x80\x80\"}\n" /* above U+10FFFF */
                             "{\"prompt\": \"\xe2\x82\"}\n"         /* truncated */
                             "{\"prompt\": \"a\0b\"}\n"
                             "{\"prompt\": \"\xe2\x82\xac\"}";
    run r;
    run_all_ways(&r, SCHEMA_LOOSE, RECORDS_JSONL, in, sizeof(in) - 1, 1024);
    assert_int_equal(r.st.records, 8);
    expect_valid(&r, 0);
    expect_error(&r, 1, "", "invalid UTF-8 at byte 13");
    expect_error(&r, 2, "", "invalid UTF-8 at byte 13");
    expect_error(&r, 3, "", "invalid UTF-8 at byte 13");
    expect_error(&r, 4, "", "invalid UTF-8 at byte 13");
    expect_error(&r, 5, "", "invalid UTF-8 at byte 13");
    expect_error(&r, 6, "", "NUL byte at byte 14");
    expect_error(&r, 6, "", "binary file");
    expect_valid(&r, 7);
    run_free(&r);
}

static void test_binary_file(void **state)
{
    (void)state;
    /* Random bytes, as from an image renamed to .jsonl: every record invalid, nothing
     * crashes, and long runs without a newline are not buffered. */
    size_t len = 300000;
    char *data = xmalloc(len);
    uint32_t x = 0x12345678;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data[i] = (char)(x & 0xff);
    }
    for (int fmt = 0; fmt < 2; fmt++) {
        run r;
        run_input_opts(&r, SCHEMA_LOOSE, (records_format)fmt, 4096, data, len, 3, -1);
        if (fmt == RECORDS_JSONL) {
            assert_true(r.st.records > 100);
            assert_int_equal(r.st.valid, 0);
            assert_int_equal(r.st.invalid, r.st.records);
            bool saw_binary = false;
            for (size_t i = 0; i < r.n; i++)
                saw_binary |= strstr(r.recs[i].errs[0].message, "binary file") != NULL;
            assert_true(saw_binary);
        } else {
            assert_non_null(r.file_error); /* the header is garbage */
            assert_non_null(strstr(r.file_error, "CSV header"));
            assert_int_equal(r.n, 0);
        }
        assert_int_equal(r.st.bytes, len);
        assert_true(r.max_cap <= 4097);
        run_free(&r);
    }
    free(data);
}

static void test_deep_nesting(void **state)
{
    (void)state;
    strbuf in;
    strbuf_init(&in);
    /* A line that is a deep array, and an object whose member is deeply nested. */
    for (int i = 0; i < 200000; i++)
        strbuf_putc(&in, '[');
    strbuf_putc(&in, '\n');
    strbuf_puts(&in, "{\"prompt\": ");
    for (int i = 0; i < 200000; i++)
        strbuf_putc(&in, '[');
    for (int i = 0; i < 200000; i++)
        strbuf_putc(&in, ']');
    strbuf_puts(&in, "}\n{\"other\": ");
    for (int i = 0; i < 32; i++) /* 64 levels in the value, then one more */
        strbuf_puts(&in, "{\"a\":[");
    strbuf_puts(&in, "[1]");
    for (int i = 0; i < 32; i++)
        strbuf_puts(&in, "]}");
    strbuf_puts(&in, "}\n{\"other\": ");
    for (int i = 0; i < 31; i++) /* 62 levels, then 63 and 64 */
        strbuf_puts(&in, "{\"a\":[");
    strbuf_puts(&in, "{\"b\": [1]}, {}, [], \"s\", -0.5E+2, true, false, null");
    for (int i = 0; i < 31; i++)
        strbuf_puts(&in, "]}");
    strbuf_puts(&in, "}\n");
    run r;
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_JSONL, 1 << 20, in.data, in.len, 0, -1);
    assert_int_equal(r.st.records, 4);
    expect_error(&r, 0, "", "the line is an array");
    expect_error(&r, 1, "", "nested deeper than 64 levels");
    expect_error(&r, 2, "", "nested deeper than 64 levels");
    /* 64 levels is allowed: only the unknown key is reported. */
    expect_error(&r, 3, "other", "not in the schema");
    assert_int_equal(r.recs[3].nerr, 1);
    run_free(&r);
    strbuf_free(&in);
}

static void test_max_record(void **state)
{
    (void)state;
    /* max 20: a 20-byte line passes (also with CRLF), 21 bytes do not. */
    const char *in = "{\"prompt\": \"123456\"}\n"   /* 20 bytes */
                     "{\"prompt\": \"123456\"}\r\n" /* 20 + CR */
                     "{\"prompt\": \"1234567\"}\n"  /* 21 bytes */
                     "{\"prompt\": \"1\"}";
    run r;
    run_all_ways(&r, SCHEMA_LOOSE, RECORDS_JSONL, in, strlen(in), 20);
    assert_int_equal(r.st.records, 4);
    expect_valid(&r, 0);
    expect_valid(&r, 1);
    expect_error(&r, 2, "", "line is longer than 20 bytes");
    assert_int_equal(r.recs[2].raw_len, 0);
    expect_valid(&r, 3);
    run_free(&r);
}

static void test_ten_mb_single_line(void **state)
{
    (void)state;
    strbuf in;
    strbuf_init(&in);
    strbuf_puts(&in, "{\"prompt\": \"");
    char *xs = xmalloc(1 << 20);
    memset(xs, 'x', 1 << 20);
    for (int i = 0; i < 10; i++)
        strbuf_append(&in, xs, 1 << 20);
    free(xs);
    strbuf_puts(&in, "\"}\n{\"prompt\": \"after\"}\n");
    run r;
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_JSONL, 1 << 20, in.data, in.len, 777, -1);
    assert_int_equal(r.st.records, 2);
    expect_error(&r, 0, "", "line is longer than 1048576 bytes");
    expect_valid(&r, 1);
    assert_true(r.max_cap <= (1u << 20) + 1); /* memory bounded by max_record */
    assert_int_equal(r.st.lines, 2);
    run_free(&r);
    strbuf_free(&in);
}

static void test_empty_files(void **state)
{
    (void)state;
    /* In CSV a line of spaces is a field, so only truly empty lines are blank there. */
    const char *empties[] = {"", "\n", "\r\n\n", "\n  \n\t\r\n"};
    for (size_t i = 0; i < BD_ARRAY_LEN(empties); i++) {
        for (int fmt = 0; fmt < (i < 3 ? 2 : 1); fmt++) {
            run r;
            run_input(&r, SCHEMA_LOOSE, (records_format)fmt, empties[i], 1);
            assert_non_null(r.file_error);
            assert_non_null(strstr(r.file_error, "file is empty: no records"));
            assert_int_equal(r.file_error_line, 0);
            assert_int_equal(r.n, 0);
            run_free(&r);
        }
    }
    run r;
    run_input(&r, SCHEMA_LOOSE, RECORDS_CSV, "prompt,image\r\n\r\n", 0);
    assert_non_null(r.file_error);
    assert_non_null(strstr(r.file_error, "file is empty: no records (only the header row)"));
    assert_string_equal(r.header, "prompt,image");
    run_free(&r);
    /* A non-empty file has no file error. */
    run_input(&r, SCHEMA_LOOSE, RECORDS_JSONL, "{}", 0);
    assert_null(r.file_error);
    assert_int_equal(r.st.lines, 1);
    run_free(&r);
}

static void test_jsonl_bom(void **state)
{
    (void)state;
    run r;
    static const char bom[] = "\xef\xbb\xbf{\"prompt\": \"a\"}\n{}\n";
    run_all_ways(&r, SCHEMA_LOOSE, RECORDS_JSONL, bom, sizeof(bom) - 1, 1024);
    assert_non_null(r.file_error);
    assert_non_null(strstr(r.file_error, "byte-order mark"));
    assert_int_equal(r.file_error_line, 1);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.st.lines, 2);
    assert_int_equal(r.st.bytes, sizeof(bom) - 1);
    run_free(&r);
    /* Bytes that only start like a BOM are data. */
    run_all_ways(&r, SCHEMA_LOOSE, RECORDS_JSONL, "\xef\xbb", 2, 1024);
    assert_null(r.file_error);
    expect_error(&r, 0, "", "invalid UTF-8 at byte 1");
    run_free(&r);
}

static void test_error_cap_and_positions(void **state)
{
    (void)state;
    strbuf in;
    strbuf_init(&in);
    strbuf_puts(&in, "\n\n{\"prompt\": \"ok\"}\n\n{");
    for (int i = 0; i < 40; i++)
        strbuf_printf(&in, "%s\"k%d\": 1", i ? ", " : "", i);
    strbuf_puts(&in, "}\n");
    run r;
    run_input_opts(&r, SCHEMA_STRICT, RECORDS_JSONL, 4096, in.data, in.len, 0, -1);
    assert_int_equal(r.st.records, 2);
    expect_error(&r, 0, "image", "missing (schema is strict)");
    assert_int_equal(r.recs[0].errs[0].line, 3);
    assert_int_equal(r.recs[0].errs[0].record, 0);
    assert_int_equal(r.recs[1].nerr, RECORDS_MAX_ERRORS);
    assert_int_equal(r.recs[1].errs[0].line, 5);
    assert_int_equal(r.recs[1].errs[0].record, 1);
    assert_string_equal(r.recs[1].errs[0].field, "k0");
    /* 40 unknown keys + 3 missing = 43; 15 shown, 28 summarised */
    assert_string_equal(r.recs[1].errs[RECORDS_MAX_ERRORS - 1].message,
                        "... and 28 more problems in this record");
    run_free(&r);
    strbuf_free(&in);

    /* A long unknown key is cut in the field and in the message. */
    strbuf_init(&in);
    strbuf_puts(&in, "{\"");
    for (int i = 0; i < 300; i++)
        strbuf_puts(&in, "\xc3\xa9");
    strbuf_puts(&in, "\\n\": \"x\"}");
    run_input(&r, SCHEMA_LOOSE, RECORDS_JSONL, in.data, 0);
    assert_int_equal(r.recs[0].nerr, 1);
    assert_true(strlen(r.recs[0].errs[0].field) <= 131);
    assert_true(utf8_valid(r.recs[0].errs[0].field, strlen(r.recs[0].errs[0].field)));
    assert_true(utf8_valid(r.recs[0].errs[0].message, strlen(r.recs[0].errs[0].message)));
    assert_non_null(strstr(r.recs[0].errs[0].message, "...' is not in the schema"));
    run_free(&r);
    strbuf_free(&in);
}

static void test_callback_stops(void **state)
{
    (void)state;
    const char *in = "{}\n{}\n{}\n{}\n";
    run r;
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_JSONL, 1024, in, strlen(in), 1, 1);
    assert_int_equal(r.feed_rc, 7);
    assert_int_equal(r.finish_rc, 7);
    assert_int_equal(r.n, 2);
    run_free(&r);

    /* Stopping on the last record without a terminator comes from finish. */
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_JSONL, 1024, "{}\n{}", 5, 0, 1);
    assert_int_equal(r.feed_rc, 0);
    assert_int_equal(r.finish_rc, 7);
    run_free(&r);

    /* Feeding after finish is a caller bug. */
    records_schema *s = schema_from(SCHEMA_LOOSE);
    records_options o = {.format = RECORDS_JSONL, .schema = s};
    records_validator *v = records_new(&o);
    assert_int_equal(records_feed(v, "{}\n", 3), 0);
    assert_int_equal(records_finish(v), 0);
    assert_int_equal(records_finish(v), 0);
    assert_int_equal(records_feed(v, "{}\n", 3), -EINVAL);
    records_stats st;
    records_get_stats(v, &st);
    assert_int_equal(st.valid, 1);
    records_free(v);
    records_free(NULL);
    records_schema_free(s);
}

/* ---- CSV ------------------------------------------------------------------------------ */

static void test_csv_valid(void **state)
{
    (void)state;
    const char *in = "\xef\xbb\xbfprompt,\"image\",group\r\n"
                     "hello,https://x.org/a.png,g1\r\n"
                     "\"multi\r\nline, with \"\"quotes\"\"\",\"https://x.org/\"\"q\"\"\",g1\r\n"
                     "\r\n"
                     "caf\xc3\xa9,http://y/,\"\"\n"
                     "last,http://z/,g2";
    run r;
    run_all_ways(&r, SCHEMA_STRICT, RECORDS_CSV, in, strlen(in), 1024);
    assert_null(r.file_error);
    assert_string_equal(r.header, "prompt,\"image\",group");
    assert_int_equal(r.st.records, 4);
    assert_int_equal(r.st.valid, 4);
    assert_int_equal(r.st.lines, 7);
    assert_string_equal(r.recs[0].raw, "hello,https://x.org/a.png,g1");
    assert_string_equal(r.recs[1].raw, "\"multi\r\nline, with \"\"quotes\"\"\",\"https://"
                                       "x.org/\"\"q\"\"\",g1");
    assert_string_equal(r.recs[3].raw, "last,http://z/,g2");
    run_free(&r);
}

static void test_csv_header_errors(void **state)
{
    (void)state;
    /* header, message, the column the error names (field) or "" */
    const char *cases[][3] = {
        {"prompt,,image,group\n", "column 2 has an empty name", ""},
        {"prompt,image,group,prompt\n", "column 4 'prompt' is a duplicate", "prompt"},
        {"prompt,image,group,foo\n", "column 4 'foo' is not in the schema", "foo"},
        {"prompt,image\n", "column 'group' is missing (schema is strict)", "group"},
        {"prompt,im\"age,group\n", "malformed CSV at byte 10", ""},
        {"\"prompt,image,group\n", "never closed", ""},
        {"prompt,\xff,group\n", "invalid UTF-8 at byte 8", ""},
        {" prompt,image,group\n", "column 1 ' prompt' is not in the schema", " prompt"},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        strbuf in;
        strbuf_init(&in);
        strbuf_printf(&in, "\n%sa,https://x/,g\n", cases[i][0]);
        run r;
        run_all_ways(&r, SCHEMA_STRICT, RECORDS_CSV, in.data, in.len, 1024);
        if (!r.file_error || !strstr(r.file_error, cases[i][1]))
            print_error("case %zu: %s\n", i, r.file_error ? r.file_error : "(none)");
        assert_non_null(r.file_error);
        assert_non_null(strstr(r.file_error, cases[i][1]));
        assert_non_null(strstr(r.file_error, "CSV header: "));
        assert_int_equal(r.file_error_line, 2);
        if (cases[i][2][0])
            assert_string_equal(r.file_error_field, cases[i][2]);
        else
            assert_null(r.file_error_field);
        assert_int_equal(r.n, 0);
        assert_null(r.header);
        assert_int_equal(r.st.lines, 3);
        run_free(&r);
        strbuf_free(&in);
    }
    /* Several problems in one message; a non-strict schema allows a subset. */
    run r;
    run_input(&r, SCHEMA_STRICT, RECORDS_CSV, "x,y\n1,2\n", 0);
    assert_non_null(strstr(r.file_error, "column 1 'x' is not in the schema; column 2 'y'"));
    assert_non_null(strstr(r.file_error, "'prompt' is missing"));
    run_free(&r);
    run_input(&r, SCHEMA_LOOSE, RECORDS_CSV, "image\nhttps://x/\n", 0);
    assert_null(r.file_error);
    expect_valid(&r, 0);
    run_free(&r);
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_CSV, 8, "prompt,image\nabc,https://x/\n", 26, 0, -1);
    assert_non_null(strstr(r.file_error, "longer than 8 bytes"));
    run_free(&r);
}

static void test_csv_rows(void **state)
{
    (void)state;
    const char *in = "prompt,image,group\n"
                     "a,https://x/,g\n"              /* 0 valid */
                     "a,https://x/\n"                /* 1 ragged: 2 fields */
                     "a,https://x/,g,extra\n"        /* 2 ragged: 4 fields */
                     "a,not a url,g\n"               /* 3 bad url */
                     "a\"b,https://x/,g\n"           /* 4 quote in unquoted */
                     "\"a\"b,https://x/,g\n"         /* 5 text after quote */
                     "a\rb,https://x/,g\n"           /* 6 stray CR */
                     "\xc3\x28,https://x/,g\n"       /* 7 invalid UTF-8 */
                     "\"x\ny\",https://x/,g\n"       /* 8 valid, two lines */
                     ",https://x/,g\n"               /* 9 strict: empty is present */
                     "a,,g\n"                        /* 10 strict: empty url is bad */
                     "\"unterminated,https://x/,g\n" /* 11 runs to EOF */
                     "b,https://x/,g\n";
    run r;
    run_all_ways(&r, SCHEMA_STRICT, RECORDS_CSV, in, strlen(in), 1024);
    assert_int_equal(r.st.records, 12);
    expect_valid(&r, 0);
    expect_error(&r, 1, "", "row has 2 fields, header has 3");
    expect_error(&r, 2, "", "row has 4 fields, header has 3");
    expect_error(&r, 3, "image", "does not start with http");
    expect_error(&r, 4, "", "malformed CSV at byte 2 of the record: a quote inside an unquoted");
    expect_error(&r, 5, "", "malformed CSV at byte 4 of the record: text after a closing quote");
    expect_error(&r, 6, "", "malformed CSV at byte 2 of the record: a carriage return");
    expect_error(&r, 7, "", "invalid UTF-8 at byte 1 of the record");
    expect_valid(&r, 8);
    assert_string_equal(r.recs[8].raw, "\"x\ny\",https://x/,g");
    expect_valid(&r, 9);
    expect_error(&r, 10, "image", "does not start with http");
    expect_error(&r, 11, "", "unterminated quoted field: the quote opened on line 14");
    assert_int_equal(r.recs[11].errs[0].line, 14);
    assert_int_equal(r.recs[11].errs[0].record, 11);
    assert_int_equal(r.recs[10].errs[0].line, 13);
    assert_int_equal(r.recs[10].errs[0].record, 10);
    assert_int_equal(r.st.lines, 15);
    run_free(&r);

    /* Not strict: an empty cell is an absent value, even for image_url. */
    run_input(&r, SCHEMA_LOOSE, RECORDS_CSV, "prompt,image\na,\n,\"\"\n", 0);
    assert_int_equal(r.st.valid, 2);
    run_free(&r);

    /* NUL in a CSV row, and an overlong row spanning lines. */
    static const char nul[] = "prompt\na\0b\n\"xxxxxxxxxx\nyyyyyyyyyy\"\nok";
    run_input_opts(&r, SCHEMA_LOOSE, RECORDS_CSV, 16, nul, sizeof(nul) - 1, 1, -1);
    assert_int_equal(r.st.records, 3);
    expect_error(&r, 0, "", "NUL byte at byte 2 of the record");
    expect_error(&r, 1, "", "record is longer than 16 bytes");
    assert_int_equal(r.recs[1].errs[0].line, 3);
    expect_valid(&r, 2);
    assert_int_equal(r.recs[2].nerr, 0);
    run_free(&r);
}

/* ---- cleaned files -------------------------------------------------------------------- */

typedef struct cleaner {
    strbuf out;
    size_t kept;
} cleaner;

static int clean_cb(void *ud, const char *raw, size_t raw_len, uint64_t record, const diag *errors)
{
    (void)record;
    cleaner *c = ud;
    if (errors->count == 0) {
        strbuf_append(&c->out, raw, raw_len);
        strbuf_putc(&c->out, '\n');
        c->kept++;
    }
    return 0;
}

static void check_cleaned(const char *schema_json, records_format fmt, const char *in,
                          size_t expect_kept)
{
    records_schema *s = schema_from(schema_json);
    cleaner c = {0};
    strbuf_init(&c.out);
    records_options o = {
        .format = fmt, .schema = s, .max_record = 64, .on_record = clean_cb, .ud = &c};
    records_validator *v = records_new(&o);
    assert_int_equal(records_feed(v, in, strlen(in)), 0);
    assert_int_equal(records_finish(v), 0);
    size_t hl;
    const char *h = records_csv_header(v, &hl);
    strbuf file;
    strbuf_init(&file);
    if (h) {
        strbuf_append(&file, h, hl);
        strbuf_putc(&file, '\n');
    }
    strbuf_append(&file, c.out.data, c.out.len);
    records_free(v);
    assert_int_equal(c.kept, expect_kept);

    run r;
    run_all_ways(&r, schema_json, fmt, file.data, file.len, 64);
    assert_null(r.file_error);
    assert_int_equal(r.st.records, expect_kept);
    assert_int_equal(r.st.valid, expect_kept);
    run_free(&r);
    strbuf_free(&file);
    strbuf_free(&c.out);
    records_schema_free(s);
}

static void test_cleaned_file_is_valid(void **state)
{
    (void)state;
    check_cleaned(SCHEMA_TEXT, RECORDS_JSONL,
                  "{\"a\": \"1\", \"b\": \"2\"}\r\n[]\n{\"a\": \"x\"}\n\n"
                  "{\"b\":\"\\n\",\"a\":\"\"}\n{\"a\": \"" /* too long: */
                  "0123456789012345678901234567890123456789012345678901234567890\"}",
                  2);
    check_cleaned(SCHEMA_TEXT, RECORDS_CSV,
                  "\xef\xbb\xbf\"a\",b\r\n1,2\r\n1\r\n\"multi\nline\",\"q\"\"\"\r\nx,\"open\n", 2);
}

/* ---- large input, random chunks ------------------------------------------------------- */

/* Builds a block of records with known counts; repeated, it makes a large file. */
static void build_block(records_format fmt, strbuf *sb, size_t *valid, size_t *invalid,
                        size_t *lines)
{
    strbuf_reset(sb);
    *valid = *invalid = *lines = 0;
    for (int i = 0; i < 400; i++) {
        int kind = i % 8;
        if (fmt == RECORDS_JSONL) {
            switch (kind) {
            case 0:
                strbuf_printf(sb,
                              "{\"prompt\": \"r%d caf\xc3\xa9 \xf0\x9f\x98\x80\", "
                              "\"image\": \"https://img.example/%d.png\"}\r\n",
                              i, i);
                break;
            case 1:
                strbuf_printf(sb, "{\"prompt\": \"tab\\t%d \\\"q\\\"\", \"group\": \"g\"}\n", i);
                break;
            case 2:
                strbuf_puts(sb, "[1,2,3]\n");
                break;
            case 3:
                strbuf_printf(sb, "{\"prompt\": %d}\n", i);
                break;
            case 4:
                strbuf_puts(sb, "\n  \n");
                (*lines)++;
                break;
            case 5:
                strbuf_puts(sb, "{\"prompt\": \"\xe2\x82\xac\xe2\x82\"}\n");
                break;
            case 6:
                strbuf_printf(sb, "{\"image\": \"nope%d\"}\n", i);
                break;
            default:
                strbuf_printf(sb, "{\"group\": \"%d\", \"prompt\": \"%0*d\"}\n", i, 200, i);
                break;
            }
            if (kind != 4) {
                if (kind == 0 || kind == 1 || kind == 7)
                    (*valid)++;
                else
                    (*invalid)++;
            }
            (*lines)++;
        } else {
            switch (kind) {
            case 0:
                strbuf_printf(sb, "\"r%d, caf\xc3\xa9\r\n\xf0\x9f\x98\x80\",https://i/%d\r\n", i,
                              i);
                (*lines)++;
                break;
            case 1:
                strbuf_printf(sb, "\"say \"\"%d\"\"\",\n", i);
                break;
            case 2:
                strbuf_puts(sb, "a,b,c\n");
                break;
            case 3:
                strbuf_puts(sb, "x\"y,http://h/\n");
                break;
            case 4:
                strbuf_puts(sb, "\r\n");
                break;
            case 5:
                strbuf_puts(sb, "\xe2\x82,http://h/\n");
                break;
            case 6:
                strbuf_puts(sb, "z,ftp://h/\n");
                break;
            default:
                strbuf_printf(sb, "%0*d,http://h:%d/\n", 150, i, i + 1);
                break;
            }
            if (kind != 4) {
                if (kind == 0 || kind == 1 || kind == 7)
                    (*valid)++;
                else
                    (*invalid)++;
            }
            (*lines)++;
        }
    }
}

static void test_fifty_mb_random_chunks(void **state)
{
    (void)state;
    for (int fmt = 0; fmt < 2; fmt++) {
        strbuf block;
        strbuf_init(&block);
        size_t bv, bi, bl;
        build_block((records_format)fmt, &block, &bv, &bi, &bl);
        size_t reps = (50u << 20) / block.len + 1;
        strbuf file;
        strbuf_init(&file);
        if (fmt == RECORDS_CSV)
            strbuf_puts(&file, "prompt,image\r\n");
        for (size_t k = 0; k < reps; k++)
            strbuf_append(&file, block.data, block.len);
        const char *data = file.data;
        size_t total = file.len;

        records_schema *s = schema_from(SCHEMA_LOOSE);
        records_options o = {.format = (records_format)fmt, .schema = s, .max_record = 1024};
        records_validator *v = records_new(&o);
        uint32_t x = 0x9e3779b9u + (uint32_t)fmt;
        size_t pos = 0;
        while (pos < total) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            /* Mostly small and odd sizes, so boundaries fall inside UTF-8 sequences, CRLFs
             * and quotes; sometimes large ones. */
            size_t n = (x & 0xf) == 0 ? (x >> 8) % 262144 + 1 : (x >> 8) % 97 + 1;
            if (n > total - pos)
                n = total - pos;
            assert_int_equal(records_feed(v, data + pos, n), 0);
            pos += n;
        }
        assert_int_equal(records_finish(v), 0);
        records_stats st;
        records_get_stats(v, &st);
        assert_null(records_file_error(v, NULL));
        assert_int_equal(st.bytes, total);
        assert_int_equal(st.valid, reps * bv);
        assert_int_equal(st.invalid, reps * bi);
        assert_int_equal(st.records, reps * (bv + bi));
        assert_int_equal(st.lines, reps * bl + (fmt == RECORDS_CSV ? 1 : 0));
        assert_true(records_buffer_capacity(v) <= 1025);
        records_free(v);
        records_schema_free(s);
        strbuf_free(&file);
        strbuf_free(&block);
    }
}

/* ---- mixed input: chunking never changes the outcome ----------------------------------- */

static void test_chunk_independence(void **state)
{
    (void)state;
    static const char jsonl[] =
        "{\"prompt\": \"\xe2\x82\xac\xf0\x9f\x98\x80\", \"image\": \"https://x/\"}\r\n"
        "\r\n{\"prompt\": \"a\\\"b\\\\\", \"foo\": [1, {\"x\": null}]}\r\n"
        "{\"prompt\": \"\xe2\x82\"}\n{\"prompt\": \"\\ud83d\\ude00\"}\r"
        "\n{\"prompt\" : \"x\" , \"image\" : \"http://[::1]:80\" }\n\x00\n{";
    run r;
    run_all_ways(&r, SCHEMA_STRICT, RECORDS_JSONL, jsonl, sizeof(jsonl) - 1, 48);
    assert_int_equal(r.st.records, 7);
    run_free(&r);
    static const char csv[] = "\xef\xbb\xbfprompt,image\r\n\"a\r\n\"\"b\"\",\",http://x/\r\n"
                              "\xe2\x82\xac,\"http://y/\"\r\r\n\"\",\"\"\r\n\"x\"y,\n"
                              "\"long long long long long long long\",http://z/\n\"open";
    run_all_ways(&r, SCHEMA_TWO, RECORDS_CSV, csv, sizeof(csv) - 1, 32);
    assert_int_equal(r.st.records, 6);
    assert_string_equal(r.header, "prompt,image");
    run_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_from_name),
        cmocka_unit_test(test_schema_new),
        cmocka_unit_test(test_jsonl_valid_blank_crlf),
        cmocka_unit_test(test_jsonl_not_an_object),
        cmocka_unit_test(test_jsonl_malformed),
        cmocka_unit_test(test_jsonl_values_and_keys),
        cmocka_unit_test(test_jsonl_image_urls),
        cmocka_unit_test(test_jsonl_invalid_utf8_and_nul),
        cmocka_unit_test(test_binary_file),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_max_record),
        cmocka_unit_test(test_ten_mb_single_line),
        cmocka_unit_test(test_empty_files),
        cmocka_unit_test(test_jsonl_bom),
        cmocka_unit_test(test_error_cap_and_positions),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_csv_valid),
        cmocka_unit_test(test_csv_header_errors),
        cmocka_unit_test(test_csv_rows),
        cmocka_unit_test(test_cleaned_file_is_valid),
        cmocka_unit_test(test_fifty_mb_random_chunks),
        cmocka_unit_test(test_chunk_independence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
