/* libFuzzer harness for apitext, the sanitiser of everything the API sends back.
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iinclude \
 *     tests/fuzz/fuzz_apitext.c src/lib/apitext.c src/lib/util.c -lcjson -lm -o /tmp/fuzz_apitext
 *   /tmp/fuzz_apitext -max_total_time=60 -max_len=8192
 *
 * The input picks the secret (8 to 40 characters of a token's alphabet, or hex) and a text in
 * which a zero byte followed by a selector splices in one echo of the secret: raw, in another
 * case, percent-encoded, \u-escaped, base64 / base64url at any alignment (also of
 * "Token <secret>"), split over a line break. Checked beyond "no crash, no leak":
 *   - the cleaned text is valid UTF-8, at most APITEXT_MAX bytes, with no NUL, DEL or C1;
 *   - it holds none of those forms of the secret (also once line breaks are taken out), and
 *     apitext_has_secret finds none in it: cleaning is final;
 *   - apitext_body's value prints as valid UTF-8 JSON that parses and holds no raw secret. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "batchd/apitext.h"
#include "batchd/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char b64std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64(strbuf *sb, const char *in, size_t n, const char *al)
{
    const unsigned char *s = (const unsigned char *)in;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        char q[4] = {al[v >> 18 & 63], al[v >> 12 & 63], i + 1 < n ? al[v >> 6 & 63] : '=',
                     i + 2 < n ? al[v & 63] : '='};
        strbuf_append(sb, q, 4);
    }
}

/* The characters of base64(pad + secret) that depend on the secret alone. */
static char *b64_core(const char *secret, size_t n, unsigned off, const char *al)
{
    char buf[64] = {0};
    memcpy(buf + off, secret, n);
    strbuf full = {0};
    b64(&full, buf, off + n, al);
    size_t first = (off * 8 + 5) / 6, last = (off + n) * 8 / 6; /* [first, last) */
    char *core = xstrndup(full.data + first, last > first ? last - first : 0);
    strbuf_free(&full);
    return core;
}

static void echo(strbuf *sb, const char *secret, size_t n, unsigned sel, unsigned arg)
{
    switch (sel % 9) {
    case 0:
        strbuf_append(sb, secret, n);
        break;
    case 1: /* another case */
        for (size_t i = 0; i < n; i++) {
            char c = secret[i];
            strbuf_putc(sb, (char)(arg & 1 ? (c >= 'a' && c <= 'z' ? c - 32 : c)
                                           : (c >= 'A' && c <= 'Z' ? c + 32 : c)));
        }
        break;
    case 2:
        for (size_t i = 0; i < n; i++)
            strbuf_printf(sb, arg & 1 ? "%%%02X" : "%%%02x", (unsigned char)secret[i]);
        break;
    case 3:
        for (size_t i = 0; i < n; i++)
            strbuf_printf(sb, arg & 1 ? "\\u%04X" : "\\u%04x", (unsigned char)secret[i]);
        break;
    case 4:
    case 5: {
        char buf[80];
        static const char *const pre[] = {"", "x", "xy", "Token "};
        int m = snprintf(buf, sizeof buf, "%s%.*s", pre[arg % 4], (int)n, secret);
        strbuf tmp = {0};
        b64(&tmp, buf, (size_t)m, sel % 9 == 4 ? b64std : b64url);
        for (size_t i = 0; i < tmp.len; i++) /* JSON may escape the slash */
            strbuf_puts(sb, tmp.data[i] == '/' && (arg & 4) ? "\\/" : (char[]){tmp.data[i], 0});
        strbuf_free(&tmp);
        break;
    }
    case 6: { /* split over a line break */
        size_t at = arg % n;
        strbuf_append(sb, secret, at);
        strbuf_puts(sb, arg & 1 ? "\r\n " : "\n");
        strbuf_append(sb, secret + at, n - at);
        break;
    }
    case 7:
        strbuf_puts(sb, "Authorization: Token ");
        strbuf_append(sb, secret, n);
        break;
    default: /* a prefix of it: must not trip anything */
        strbuf_append(sb, secret, arg % n);
        break;
    }
}

static bool contains(const char *hay, const char *needle, bool nocase)
{
    if (!*needle)
        return false;
    return nocase ? strcasestr(hay, needle) != NULL : strstr(hay, needle) != NULL;
}

static void check_clean(const char *out, const char *secret, size_t n, bool hex)
{
    size_t len = strlen(out);
    if (!utf8_valid(out, len) || len > APITEXT_MAX)
        abort();
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c == 0x7f ||
            (c == 0xc2 && (unsigned char)out[i + 1] >= 0x80 && (unsigned char)out[i + 1] <= 0x9f))
            abort();
    }
    /* line breaks (and the blanks of a folded line) taken out */
    strbuf flat = {0};
    strbuf_append(&flat, "", 0);
    bool brk = false;
    for (size_t i = 0; i < len; i++) {
        char c = out[i];
        if (c == '\r' || c == '\n') {
            brk = true;
            continue;
        }
        if (brk && (c == ' ' || c == '\t'))
            continue;
        brk = false;
        strbuf_putc(&flat, c);
    }
    const char *views[2] = {out, flat.data};
    for (int v = 0; v < 2; v++) {
        if (contains(views[v], secret, hex))
            abort();
        strbuf sb = {0};
        strbuf_append(&sb, "", 0);
        for (size_t i = 0; i < n; i++)
            strbuf_printf(&sb, "%%%02x", (unsigned char)secret[i]);
        if (contains(views[v], sb.data, true))
            abort();
        strbuf_reset(&sb);
        for (size_t i = 0; i < n; i++)
            strbuf_printf(&sb, "\\u%04x", (unsigned char)secret[i]);
        if (contains(views[v], sb.data, true))
            abort();
        strbuf_free(&sb);
        for (unsigned off = 0; off < 3; off++)
            for (int url = 0; url < 2; url++) {
                char *core = b64_core(secret, n, off, url ? b64url : b64std);
                bool found = contains(views[v], core, false);
                free(core);
                if (found)
                    abort();
            }
    }
    strbuf_free(&flat);
    if (apitext_has_secret(out, len, secret))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const char tok[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    static const char hexal[] = "0123456789abcdef";
    bool hex = data[1] & 1;
    size_t n = 8 + data[0] % 33;
    if (size < 2 + n)
        return 0;
    char secret[48];
    for (size_t i = 0; i < n; i++)
        secret[i] = hex ? hexal[data[2 + i] % 16] : tok[data[2 + i] % 64];
    secret[n] = '\0';
    strbuf text = {0};
    strbuf_append(&text, "", 0);
    for (size_t i = 2 + n; i < size; i++) {
        if (data[i] == 0 && i + 2 < size) {
            echo(&text, secret, n, data[i + 1], data[i + 2]);
            i += 2;
        } else {
            strbuf_putc(&text, (char)data[i]);
        }
    }
    char *out = apitext_clean(text.data, text.len, secret);
    check_clean(out, secret, n, hex);
    free(out);

    cJSON *v = apitext_body(text.data, text.len, secret);
    if (v) {
        char *printed = json_print(v);
        if (!utf8_valid(printed, strlen(printed)) || contains(printed, secret, hex))
            abort();
        cJSON *back = cJSON_Parse(printed);
        if (!back)
            abort();
        cJSON_Delete(back);
        free(printed);
        cJSON_Delete(v);
    }
    strbuf_free(&text);
    return 0;
}
