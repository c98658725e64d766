/* test-deps: util */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/apitext.h"
#include "batchd/util.h"

#define TOKEN    "s3cr3tT0kenAbcdefghij0123456789xyzQ"
#define HEXTOKEN "0a1b2c3d4e5f60718293a4b5c6d7e8f9"

static char *b64(const char *in, size_t n, bool url)
{
    const char *al = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                         : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = (const unsigned char *)in;
    char *o = malloc(n / 3 * 4 + 8);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        o[k++] = al[v >> 18 & 63];
        o[k++] = al[v >> 12 & 63];
        o[k++] = i + 1 < n ? al[v >> 6 & 63] : '=';
        o[k++] = i + 2 < n ? al[v & 63] : '=';
    }
    o[k] = '\0';
    return o;
}

static char *pct(const char *s, bool upper)
{
    strbuf sb = {0};
    for (; *s; s++)
        strbuf_printf(&sb, upper ? "%%%02X" : "%%%02x", (unsigned char)*s);
    return strbuf_steal(&sb);
}

static char *json_u(const char *s)
{
    strbuf sb = {0};
    for (; *s; s++)
        strbuf_printf(&sb, "\\u%04x", (unsigned char)*s);
    return strbuf_steal(&sb);
}

/* Cleans text and checks what every kept text must be. */
static char *cleaned(const char *text, size_t len, const char *secret)
{
    char *out = apitext_clean(text, len, secret);
    assert_true(utf8_valid(out, strlen(out)));
    assert_true(strlen(out) <= APITEXT_MAX);
    assert_null(strstr(out, secret));
    return out;
}

static void assert_redacted(const char *text, const char *secret)
{
    char *out = cleaned(text, strlen(text), secret);
    assert_non_null(strstr(out, APITEXT_REDACTED));
    free(out);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"ok caf\xc3\xa9", "ok caf\xc3\xa9"},
        {"a\xff"
         "b",
         "a\xef\xbf\xbd"
         "b"},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},                                 /* overlong */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                 /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"tab\tnl\n", "tab\tnl\n"}, /* C0 stays: JSON escapes it */
        {"del\x7f"
         "c1\xc2\x85",
         "del\xef\xbf\xbd"
         "c1\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        char *out = apitext_clean(cases[i].in, strlen(cases[i].in), NULL);
        assert_string_equal(out, cases[i].out);
        free(out);
    }
    char *out = apitext_clean("a\0b", 3, NULL); /* NUL */
    assert_string_equal(out, "a\xef\xbf\xbd"
                             "b");
    free(out);
}

static void test_cap(void **state)
{
    (void)state;
    size_t n = 8u << 20;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i += 2) {
        big[i] = '\xc3';
        big[i + 1] = '\xa9';
    }
    char *out = cleaned(big, n, TOKEN);
    assert_true(strlen(out) > APITEXT_MAX - 20);
    const char *mark = strstr(out, APITEXT_CUT);
    assert_non_null(mark);
    assert_int_equal(strlen(mark), strlen(APITEXT_CUT));
    free(out);
    free(big);
}

static void test_token_forms(void **state)
{
    (void)state;
    const char *t = TOKEN;
    char *text;
    text = xasprintf("echo: %s!", t);
    assert_redacted(text, t);
    free(text);
    text = xasprintf("Authorization: Token %s", t);
    assert_redacted(text, t);
    free(text);
    for (int up = 0; up < 2; up++) {
        char *p = pct(t, up);
        text = xasprintf("url=%s&x=1", p);
        char *out = cleaned(text, strlen(text), t);
        assert_null(strstr(out, p));
        free(out);
        free(text);
        free(p);
    }
    char *u = json_u(t);
    text = xasprintf("{\"h\":\"%s\"}", u);
    char *out = cleaned(text, strlen(text), t);
    assert_null(strstr(out, u));
    free(out);
    free(text);
    free(u);
    /* split over a line break, and a folded header line */
    text = xasprintf("%.10s\r\n%s", t, t + 10);
    out = cleaned(text, strlen(text), t);
    assert_null(strstr(out, t + 10));
    free(out);
    free(text);
    text = xasprintf("%.7s\r\n\t%s", t, t + 7);
    out = cleaned(text, strlen(text), t);
    assert_null(strstr(out, t + 7));
    free(out);
    free(text);
    /* base64 and base64url of the token and of "Token <token>" at every alignment, raw and
     * with JSON's \/ */
    const char *prefixes[] = {"", "x", "xy", "Token ", "Basic: Token "};
    for (size_t pi = 0; pi < BD_ARRAY_LEN(prefixes); pi++)
        for (int url = 0; url < 2; url++) {
            char *plain = xasprintf("%s%s", prefixes[pi], t);
            char *enc = b64(plain, strlen(plain), url);
            text = xasprintf("seen: %s end", enc);
            out = cleaned(text, strlen(text), t);
            assert_null(strstr(out, enc));
            assert_non_null(strstr(out, APITEXT_REDACTED));
            free(out);
            free(text);
            strbuf sb = {0};
            for (const char *c = enc; *c; c++)
                strbuf_puts(&sb, *c == '/' ? "\\/" : (char[]){*c, 0});
            text = xasprintf("{\"seen\":\"%s\"}", sb.data);
            out = cleaned(text, strlen(text), t);
            assert_null(strstr(out, sb.data));
            free(out);
            free(text);
            strbuf_free(&sb);
            free(enc);
            free(plain);
        }
}

static void test_hex_token_case(void **state)
{
    (void)state;
    char up[64];
    strlcpy_bd(up, HEXTOKEN, sizeof up);
    for (char *c = up; *c; c++)
        if (*c >= 'a' && *c <= 'f')
            *c = (char)(*c - 32);
    char *text = xasprintf("token %s here", up);
    char *out = cleaned(text, strlen(text), HEXTOKEN);
    assert_null(strstr(out, up));
    free(out);
    free(text);
    char *enc = b64(up, strlen(up), false);
    text = xasprintf("b64 %s", enc);
    out = cleaned(text, strlen(text), HEXTOKEN);
    assert_null(strstr(out, enc));
    free(out);
    free(text);
    free(enc);
}

static void test_body_json(void **state)
{
    (void)state;
    char *u = json_u(TOKEN);
    char *body = xasprintf("{\"detail\":\"bad token %s\",\"%s\":[\"x\\/%s\"]}", u, u, TOKEN);
    cJSON *v = apitext_body(body, strlen(body), TOKEN);
    assert_true(cJSON_IsObject(v));
    char *text = json_print(v);
    assert_null(strstr(text, TOKEN));
    assert_non_null(strstr(text, "bad token " APITEXT_REDACTED));
    free(text);
    cJSON_Delete(v);
    free(body);
    free(u);

    /* too deep: kept as (capped) text */
    strbuf sb = {0};
    for (int i = 0; i < 100000; i++)
        strbuf_putc(&sb, '[');
    v = apitext_body(sb.data, sb.len, TOKEN);
    assert_true(cJSON_IsString(v));
    assert_true(strlen(v->valuestring) <= APITEXT_MAX);
    cJSON_Delete(v);
    strbuf_free(&sb);

    /* 17 levels: just beyond the limit */
    for (int i = 0; i < 17; i++)
        strbuf_putc(&sb, '[');
    for (int i = 0; i < 17; i++)
        strbuf_putc(&sb, ']');
    v = apitext_body(sb.data, sb.len, NULL);
    assert_true(cJSON_IsString(v));
    cJSON_Delete(v);
    strbuf_free(&sb);

    /* invalid UTF-8 inside JSON strings and keys */
    const char bad[] = "{\"k\xff\":\"v\xc0\xaf\"}";
    v = apitext_body(bad, sizeof bad - 1, NULL);
    assert_true(cJSON_IsObject(v));
    text = json_print(v);
    assert_true(utf8_valid(text, strlen(text)));
    assert_string_equal(text, "{\"k\xef\xbf\xbd\":\"v\xef\xbf\xbd\xef\xbf\xbd\"}");
    free(text);
    cJSON_Delete(v);

    assert_null(apitext_body(NULL, 0, NULL));
    assert_null(apitext_body("", 0, NULL));
}

/* A secret that starts with a letter an escape prints (t, n, u0001...) must not be spelled by
 * the printed JSON of a string that holds a control character just before the rest of it. */
static void test_escape_spells_secret(void **state)
{
    (void)state;
    static const struct {
        const char *secret, *body;
    } cases[] = {
        /* a JSON body: the string decodes to a tab and the secret's tail */
        {"tAltzljyl0t0vrlut4mTh5", "{\"detail\":\"x\\tAltzljyl0t0vrlut4mTh5\"}"},
        /* the same as a key */
        {"tAltzljyl0t0vrlut4mTh5", "{\"\\tAltzljyl0t0vrlut4mTh5\":1}"},
        /* U+0001 prints as \u0001 */
        {"u0001abcdefghijk", "[\"\\u0001abcdefghijk\"]"},
        /* not JSON: a raw newline byte before the tail, kept as text */
        {"nSecretTailToken42", "oops \nSecretTailToken42 <"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *v = apitext_body(cases[i].body, strlen(cases[i].body), cases[i].secret);
        assert_non_null(v);
        char *text = json_print(v);
        assert_false(apitext_has_secret(text, strlen(text), cases[i].secret));
        assert_non_null(strstr(text, APITEXT_REDACTED));
        free(text);
        cJSON_Delete(v);
    }
}

/* A note appended to a message keeps the whole within the cap, the note whole. */
static void test_with_suffix(void **state)
{
    (void)state;
    char *small = apitext_with_suffix("failed", " (3 more)");
    assert_string_equal(small, "failed (3 more)");
    free(small);
    char *base = xmalloc(APITEXT_MAX + 1);
    memset(base, 'a', APITEXT_MAX - 2);
    memcpy(base + APITEXT_MAX - 2, "\xc3\xa9", 3); /* ends with a two-byte character */
    const char *suffix = " (200 more record errors not listed)";
    char *m = apitext_with_suffix(base, suffix);
    assert_true(strlen(m) <= APITEXT_MAX);
    assert_true(utf8_valid(m, strlen(m)));
    assert_non_null(strstr(m, APITEXT_CUT));
    assert_string_equal(m + strlen(m) - strlen(suffix), suffix);
    free(m);
    free(base);
}

static void test_ids(void **state)
{
    (void)state;
    assert_true(apitext_id_ok("01HZY3-abc_DEF"));
    char long_id[130];
    memset(long_id, 'a', 128);
    long_id[128] = '\0';
    assert_true(apitext_id_ok(long_id));
    long_id[128] = 'a';
    long_id[129] = '\0';
    assert_false(apitext_id_ok(long_id));
    static const char *const bad[] = {"",    "..",  "a/b", "%2e%2e",      "a?b",
                                      "a#b", "a b", "a.b", "caf\xc3\xa9", "a\nb"};
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++)
        assert_false(apitext_id_ok(bad[i]));
    assert_false(apitext_id_ok(NULL));
}

static void test_display(void **state)
{
    (void)state;
    char *s = apitext_display("a\x1b[31mb\xff\n", 100, NULL);
    assert_string_equal(s, "a\\x1b[31mb\\xff\\x0a");
    free(s);
    s = apitext_display("x" TOKEN, 100, TOKEN);
    assert_string_equal(s, "x" APITEXT_REDACTED);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_token_forms),
        cmocka_unit_test(test_hex_token_case),
        cmocka_unit_test(test_body_json),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_display),
        cmocka_unit_test(test_with_suffix),
        cmocka_unit_test(test_escape_spells_secret),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
