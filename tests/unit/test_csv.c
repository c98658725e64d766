/* Unit tests of csv, the field splitter shared by the records validator and batchd-sim. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/csv.h"
#include "batchd/util.h"

/* Splits rec and joins what csv_fields_next gives as "[raw]" or "q[raw]" (quoted), so one
 * string comparison shows every field, its bytes and its quoting. */
static void split(const char *rec, size_t len, strbuf *out)
{
    csv_fields it;
    csv_fields_init(&it, rec, len);
    const char *f;
    size_t flen;
    bool quoted;
    strbuf_reset(out);
    strbuf_append(out, "", 0);
    while (csv_fields_next(&it, &f, &flen, &quoted)) {
        strbuf_puts(out, quoted ? "q[" : "[");
        strbuf_append(out, f, flen);
        strbuf_putc(out, ']');
    }
    /* Exhausted stays exhausted. */
    assert_false(csv_fields_next(&it, &f, &flen, &quoted));
}

static void expect_split(const char *rec, const char *want)
{
    strbuf sb;
    strbuf_init(&sb);
    split(rec, strlen(rec), &sb);
    if (strcmp(sb.data, want) != 0)
        fail_msg("split of '%s': got %s, want %s", rec, sb.data, want);
    strbuf_free(&sb);
}

static void expect_field(const char *rec, size_t col, const char *want)
{
    strbuf sb;
    strbuf_init(&sb);
    assert_int_equal(csv_field(rec, strlen(rec), col, &sb), 0);
    assert_int_equal(sb.len, strlen(want));
    assert_memory_equal(sb.data, want, sb.len);
    strbuf_free(&sb);
}

static void test_plain_fields(void **state)
{
    (void)state;
    expect_split("a,b,c", "[a][b][c]");
    expect_split("one", "[one]");
    expect_split(" a , b ", "[ a ][ b ]"); /* spaces are data */
}

static void test_empty_fields(void **state)
{
    (void)state;
    expect_split("", "[]");
    expect_split(",", "[][]");
    expect_split("a,,b", "[a][][b]");
    expect_split("a,", "[a][]");
    expect_split(",a", "[][a]");
    expect_split("\"\",\"\"", "q[]q[]");
    expect_field("a,,b", 1, "");
    expect_field("a,\"\"", 1, "");
}

static void test_quoted_fields(void **state)
{
    (void)state;
    expect_split("\"a,b\",c", "q[a,b][c]");
    expect_split("x,\"multi\nline\"", "[x]q[multi\nline]");
    expect_field("\"a,b\",c", 0, "a,b");
    expect_field("x,\"multi\nline\"", 1, "multi\nline");
}

static void test_doubled_quotes(void **state)
{
    (void)state;
    /* The iterator leaves "" doubled (no copy); csv_unquote and csv_field undouble it. */
    expect_split("a,\"b,\"\"c\"\"\",,d", "[a]q[b,\"\"c\"\"][][d]");
    expect_field("a,\"b,\"\"c\"\"\",,d", 1, "b,\"c\"");
    expect_field("\"\"\"\"", 0, "\"");
    expect_field("\"x\"\"\"", 0, "x\"");
    strbuf sb;
    strbuf_init(&sb);
    csv_unquote("a\"\"b\"\"", 6, &sb);
    assert_string_equal(sb.data, "a\"b\"");
    csv_unquote("", 0, &sb); /* replaces, and is a string even when empty */
    assert_non_null(sb.data);
    assert_string_equal(sb.data, "");
    strbuf_free(&sb);
}

static void test_crlf(void **state)
{
    (void)state;
    /* A record comes without its terminator; a CR left in it is data, quoted or not. */
    expect_split("a,\"b\r\nc\",d", "[a]q[b\r\nc][d]");
    expect_field("a,\"b\r\nc\",d", 1, "b\r\nc");
    expect_split("a\r,b", "[a\r][b]");
    expect_split("a,b\r", "[a][b\r]");
}

static void test_malformed(void **state)
{
    (void)state;
    /* The validator rejects these records before splitting them; the splitter only has to
     * end within the record, in these documented ways. */
    expect_split("ab\"c,d", "[ab\"c][d]"); /* a quote inside an unquoted field is data */
    expect_split("a,b\"", "[a][b\"]");
    expect_split("a,\"bc,d", "[a]q[bc,d]"); /* an unterminated quote runs to the end */
    expect_split("\"", "q[]");
    expect_split("\"a\"\"", "q[a\"\"]"); /* "" at the end: still open */
    expect_split("\"ab\"cd,e", "q[ab]"); /* text after a closing quote ends it */
    expect_split("\"ab\" ,e", "q[ab]");
    expect_field("a,\"bc,d", 1, "bc,d");
}

static void test_field_and_column(void **state)
{
    (void)state;
    strbuf sb;
    strbuf_init(&sb);
    const char rec[] = "a,\"b\",c";
    assert_int_equal(csv_field(rec, strlen(rec), 3, &sb), -ENOENT);
    assert_int_equal(csv_field("", 0, 0, &sb), 0);
    assert_int_equal(sb.len, 0);
    assert_int_equal(csv_field("", 0, 1, &sb), -ENOENT);
    /* Only len bytes count: no NUL terminator needed. */
    assert_int_equal(csv_field("ab,cd", 4, 1, &sb), 0);
    assert_string_equal(sb.data, "c");
    strbuf_free(&sb);

    assert_int_equal(csv_column("x,y,\"z\"", 7, "z"), 2);
    assert_int_equal(csv_column("x,y", 3, "q"), -1);
    assert_int_equal(csv_column("x,y", 3, "x"), 0);
    assert_int_equal(csv_column("x,\"a,b\",a", 9, "a"), 2);
    assert_int_equal(csv_column("x,\"a,b\",a", 9, "a,b"), 1);
    assert_int_equal(csv_column("g,g", 3, "g"), 0); /* the first of duplicates */
    assert_int_equal(csv_column("x,,y", 4, ""), 1);
    assert_int_equal(csv_column("xy", 2, "x"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_fields),
        cmocka_unit_test(test_empty_fields),
        cmocka_unit_test(test_quoted_fields),
        cmocka_unit_test(test_doubled_quotes),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_field_and_column),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
