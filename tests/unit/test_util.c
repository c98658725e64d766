/* Unit tests of util: durations, times, ids, UTF-8, the string buffer and error.json. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/util.h"

static void test_duration_parse(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(duration_parse("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(duration_parse("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(duration_parse("30", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(duration_parse("1.5", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(duration_parse("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(duration_parse("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(duration_parse("", &ms), -EINVAL);
    assert_int_equal(duration_parse("-1s", &ms), -EINVAL);
    assert_int_equal(duration_parse("5 fortnights", &ms), -EINVAL);
    assert_int_equal(duration_parse("abc", &ms), -EINVAL);
}

static void test_duration_format(void **state)
{
    (void)state;
    char buf[32];
    assert_string_equal(duration_format(850, buf, sizeof buf), "850ms");
    assert_string_equal(duration_format(12000, buf, sizeof buf), "12s");
    assert_string_equal(duration_format(185000, buf, sizeof buf), "3m05s");
    assert_string_equal(duration_format(7800000, buf, sizeof buf), "2h10m");
}

static void test_rfc3339_roundtrip(void **state)
{
    (void)state;
    char buf[40];
    int64_t ms;
    assert_int_equal(time_parse_rfc3339("2026-11-29T08:32:45Z", &ms), 0);
    assert_string_equal(time_format_rfc3339(ms, false, buf, sizeof buf), "2026-11-29T08:32:45Z");
    assert_int_equal(time_parse_rfc3339("2026-11-29T08:32:45.250Z", &ms), 0);
    assert_string_equal(time_format_rfc3339(ms, true, buf, sizeof buf), "2026-11-29T08:32:45.250Z");
    int64_t off;
    assert_int_equal(time_parse_rfc3339("2026-11-29T09:32:45+01:00", &off), 0);
    assert_int_equal(off, ms - 250);
    assert_int_equal(time_parse_rfc3339("yesterday", &ms), -EINVAL);
    assert_int_equal(time_parse_rfc3339("2026-11-29T08:32:45", &ms), -EINVAL);
}

static void test_http_date(void **state)
{
    (void)state;
    int64_t a, b, c, ref;
    assert_int_equal(time_parse_rfc3339("1994-11-06T08:49:37Z", &ref), 0);
    assert_int_equal(time_parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", &a), 0);
    assert_int_equal(time_parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", &b), 0);
    assert_int_equal(time_parse_http_date("Sun Nov  6 08:49:37 1994", &c), 0);
    assert_int_equal(a, ref);
    assert_int_equal(b, ref);
    assert_int_equal(c, ref);
    assert_int_equal(time_parse_http_date("120", &a), -EINVAL);
    assert_int_equal(time_parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT", &a), -EINVAL);
}

static void test_ids_sort_by_time(void **state)
{
    (void)state;
    char a[27], b[27], c[27];
    id_new(1000, a);
    id_new(1000, c);
    id_new(2000, b);
    assert_int_equal(strlen(a), 26);
    assert_true(strcmp(a, b) < 0);
    assert_string_not_equal(a, c);
    char u[37];
    uuid_v7(1000, u);
    assert_int_equal(strlen(u), 36);
    assert_int_equal(u[14], '7');
}

static void test_utf8(void **state)
{
    (void)state;
    assert_true(utf8_valid("plain", 5));
    assert_true(utf8_valid("caf\xc3\xa9", 5));
    assert_true(utf8_valid("\xf0\x9f\x98\x80", 4));
    assert_false(utf8_valid("\xc3", 1));             /* truncated */
    assert_false(utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    assert_false(utf8_valid("\xff", 1));
    assert_false(utf8_valid("ab\xe2\x82", 4)); /* truncated at end */
}

static void test_strbuf(void **state)
{
    (void)state;
    strbuf sb = {0};
    for (int i = 0; i < 1000; i++)
        strbuf_printf(&sb, "%d,", i);
    assert_int_equal(sb.len, strlen(sb.data));
    assert_memory_equal(sb.data, "0,1,2,", 6);
    char *s = strbuf_steal(&sb);
    assert_null(sb.data);
    free(s);
    char *e = strbuf_steal(&sb);
    assert_string_equal(e, "");
    free(e);
}

/* The JSON writer only ever emits valid UTF-8 without raw control characters. */
static void test_json_print_utf8(void **state)
{
    (void)state;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "k\xff",
                            "a\xc0\xaf"
                            "b\x7f"
                            "c\xc2\x85"
                            "d\x1b"
                            "e\xf0\x9f\x98\x80");
    char *s = json_print(o);
    assert_true(utf8_valid(s, strlen(s)));
    assert_string_equal(s, "{\"k\xef\xbf\xbd\":\"a\xef\xbf\xbd\xef\xbf\xbd"
                           "b\\u007fc\\u0085d\\u001be\xf0\x9f\x98\x80\"}");
    cJSON *back = cJSON_Parse(s);
    assert_non_null(back);
    cJSON_Delete(back);
    free(s);
    s = json_print_pretty(o);
    assert_true(utf8_valid(s, strlen(s)));
    assert_null(strchr(s, '\x7f'));
    free(s);
    cJSON_Delete(o);
}

/* A tree nested deeper than cJSON parses is written so that it still parses. */
static void test_json_print_depth(void **state)
{
    (void)state;
    cJSON *root = cJSON_CreateObject();
    cJSON *at = root;
    for (int i = 0; i < CJSON_NESTING_LIMIT + 50; i++) {
        cJSON *n = cJSON_CreateArray();
        if (i == 0)
            cJSON_AddItemToObject(at, "deep", n);
        else
            cJSON_AddItemToArray(at, n);
        at = n;
    }
    cJSON_AddStringToObject(root, "after", "kept");
    char *s = json_print(root);
    cJSON *back = cJSON_Parse(s);
    assert_non_null(back);
    assert_string_equal(json_str(back, "after"), "kept");
    cJSON_Delete(back);
    free(s);
    cJSON_Delete(root);
}

static void test_escape_controls(void **state)
{
    (void)state;
    char *s = text_escape("a\x1b[1m\n\t\x7f\xc2\x9b\xff\xc3\xa9z");
    assert_string_equal(s, "a\\x1b[1m\\x0a\\x09\\x7f\\x9b\\xff\xc3\xa9z");
    free(s);
    s = text_escape(NULL);
    assert_string_equal(s, "");
    free(s);
}

/* error.json byte for byte: the compact print pins key order, nulls and defaults. */
static void test_error_json(void **state)
{
    (void)state;
    error_doc e = {.job = "a",
                   .id = "01J",
                   .stage = "queued",
                   .code = "unsupported_entry",
                   .message = "m",
                   .at_ms = 1795941166000LL};
    cJSON *o = error_json_new(&e);
    char *t = json_print(o);
    assert_string_equal(t,
                        "{\"job\":\"a\",\"id\":\"01J\",\"state\":\"failed\",\"stage\":"
                        "\"queued\",\"code\":\"unsupported_entry\",\"message\":\"m\","
                        "\"errors\":[],\"http_status\":null,\"api_error\":null,"
                        "\"dataset_id\":null,\"batch_id\":null,\"at\":\"2026-11-29T08:32:46Z\"}");
    free(t);
    cJSON_Delete(o);

    cJSON *errors = cJSON_Parse("[{\"line\":1}]"), *api = cJSON_Parse("{\"x\":1}");
    error_doc f = {.state = "cancelled",
                   .errors = errors,
                   .http_status = 422,
                   .api_error = api,
                   .dataset_id = "d",
                   .batch_id = "b"};
    o = error_json_new(&f);
    t = json_print(o);
    assert_string_equal(t, "{\"job\":null,\"id\":null,\"state\":\"cancelled\",\"stage\":null,"
                           "\"code\":null,\"message\":null,\"errors\":[{\"line\":1}],"
                           "\"http_status\":422,\"api_error\":{\"x\":1},\"dataset_id\":\"d\","
                           "\"batch_id\":\"b\",\"at\":null}");
    free(t);
    cJSON_Delete(o);
    cJSON_Delete(errors);
    cJSON_Delete(api);
}

static void test_secret(void **state)
{
    (void)state;
    char buf[8] = "abcdefg";
    secret_wipe(buf, 3);
    assert_memory_equal(buf, "\0\0\0defg", 8);
    char *s = xstrdup("token");
    secret_free(&s);
    assert_null(s);
    secret_free(&s); /* NULL is fine */
    secret_wipe(NULL, 4);
}

static void test_diag(void **state)
{
    (void)state;
    diag d = {0};
    diag_add(&d, DIAG_ERROR, &(diag_where){.file = "a.conf", .line = 3}, "bad %s", "key");
    diag_add(&d, DIAG_WARNING, &(diag_where){.file = "tok"}, "empty");
    diag_add(&d, DIAG_ERROR, NULL, "plain %d", 7);
    assert_int_equal(d.count, 3);
    assert_string_equal(d.lines[0], "a.conf:3: bad key");
    assert_string_equal(d.lines[1], "tok: empty");
    assert_string_equal(d.lines[2], "plain 7");
    assert_string_equal(d.entries[0].message, "bad key");
    assert_int_equal(d.entries[1].severity, DIAG_WARNING);
    assert_null(diag_more_text(&d));
    diag_free(&d);
    assert_int_equal(d.count, 0);

    diag b = {.max = 2};
    for (int i = 0; i < 5; i++)
        diag_add(&b, DIAG_ERROR, &(diag_where){.line = (uint64_t)i + 1, .field = "f"}, "e%d", i);
    assert_int_equal(b.count, 2);
    assert_string_equal(b.entries[1].field, "f");
    char *more = diag_more_text(&b);
    assert_string_equal(more, "... and 3 more");
    free(more);
    diag_free(&b);
    assert_int_equal(b.max, 2);
    diag_add(NULL, DIAG_ERROR, NULL, "nowhere");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_parse),
        cmocka_unit_test(test_duration_format),
        cmocka_unit_test(test_rfc3339_roundtrip),
        cmocka_unit_test(test_http_date),
        cmocka_unit_test(test_ids_sort_by_time),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_strbuf),
        cmocka_unit_test(test_json_print_utf8),
        cmocka_unit_test(test_json_print_depth),
        cmocka_unit_test(test_escape_controls),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_diag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
