/* records_json: the strict JSON checker behind JSONL validation. Iterative (an explicit
 * bit stack of at most RJ_MAX_DEPTH levels), no allocation except the caller's scratch
 * buffer for escaped keys, and every error carries the byte where the line breaks. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "records_internal.h"

typedef struct rj {
    const unsigned char *s;
    size_t len;
    size_t pos;
    rj_error *err;
} rj;

static int rj_fail(rj *j, size_t pos, const char *msg)
{
    j->err->pos = pos;
    snprintf(j->err->msg, sizeof(j->err->msg), "%s", msg);
    return -EINVAL;
}

static void rj_ws(rj *j)
{
    while (j->pos < j->len) {
        unsigned char c = j->s[j->pos];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            return;
        j->pos++;
    }
}

static int rj_hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -EINVAL;
    }
    *out = v;
    return 0;
}

/* Checks a \uXXXX escape at j->pos (the backslash); advances past it (and past the low
 * half of a surrogate pair). */
static int rj_unicode_escape(rj *j)
{
    size_t at = j->pos;
    unsigned cp;
    if (j->len - at < 6 || rj_hex4(j->s + at + 2, &cp) < 0)
        return rj_fail(j, at, "malformed \\u escape: it needs four hex digits");
    if (cp == 0)
        return rj_fail(j, at, "escaped NUL character (\\u0000) in a string; remove it");
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return rj_fail(j, at,
                       "lone low surrogate escape (\\udc00-\\udfff); encode the "
                       "character as UTF-8 or as a surrogate pair");
    j->pos = at + 6;
    if (cp < 0xd800 || cp > 0xdbff)
        return 0;
    unsigned lo;
    if (j->len - j->pos < 6 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u' ||
        rj_hex4(j->s + j->pos + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
        return rj_fail(j, at,
                       "high surrogate escape not followed by a low surrogate; encode "
                       "the character as UTF-8 or as a surrogate pair");
    j->pos += 6;
    return 0;
}

/* Checks the string starting at j->pos (its opening quote). On success j->pos is past the
 * closing quote, *body and *body_len the content and *escaped whether it holds escapes. */
static int rj_string(rj *j, const char **body, size_t *body_len, bool *escaped)
{
    size_t start = j->pos++;
    *escaped = false;
    for (;;) {
        /* Fast path: plain bytes. */
        while (j->pos < j->len) {
            unsigned char c = j->s[j->pos];
            if (c < 0x20 || c == '"' || c == '\\')
                break;
            j->pos++;
        }
        if (j->pos >= j->len)
            return rj_fail(j, start, "unterminated string: the closing quote is missing");
        unsigned char c = j->s[j->pos];
        if (c == '"') {
            *body = (const char *)j->s + start + 1;
            *body_len = j->pos - start - 1;
            j->pos++;
            return 0;
        }
        if (c < 0x20) {
            char msg[128];
            snprintf(msg, sizeof(msg),
                     "raw control character 0x%02x inside a string; escape it (\\n, \\t, "
                     "\\u00XX)",
                     c);
            return rj_fail(j, j->pos, msg);
        }
        /* A backslash. */
        *escaped = true;
        if (j->pos + 1 >= j->len)
            return rj_fail(j, j->pos, "unterminated string: the closing quote is missing");
        unsigned char e = j->s[j->pos + 1];
        if (e == 'u') {
            int rc = rj_unicode_escape(j);
            if (rc < 0)
                return rc;
        } else if (strchr("\"\\/bfnrt", e) != NULL && e != '\0') {
            j->pos += 2;
        } else {
            return rj_fail(j, j->pos,
                           "invalid escape in a string; valid ones are \\\" \\\\ \\/ \\b \\f "
                           "\\n \\r \\t \\uXXXX");
        }
    }
}

static bool rj_digit(const rj *j)
{
    return j->pos < j->len && j->s[j->pos] >= '0' && j->s[j->pos] <= '9';
}

static int rj_number(rj *j)
{
    size_t start = j->pos;
    if (j->s[j->pos] == '-')
        j->pos++;
    if (!rj_digit(j))
        return rj_fail(j, start, "malformed number");
    if (j->s[j->pos] == '0') {
        j->pos++;
        if (rj_digit(j))
            return rj_fail(j, start, "malformed number: leading zeros are not allowed");
    } else {
        while (rj_digit(j))
            j->pos++;
    }
    if (j->pos < j->len && j->s[j->pos] == '.') {
        j->pos++;
        if (!rj_digit(j))
            return rj_fail(j, start, "malformed number: digits must follow the decimal point");
        while (rj_digit(j))
            j->pos++;
    }
    if (j->pos < j->len && (j->s[j->pos] == 'e' || j->s[j->pos] == 'E')) {
        j->pos++;
        if (j->pos < j->len && (j->s[j->pos] == '+' || j->s[j->pos] == '-'))
            j->pos++;
        if (!rj_digit(j))
            return rj_fail(j, start, "malformed number: digits must follow the exponent");
        while (rj_digit(j))
            j->pos++;
    }
    return 0;
}

static int rj_literal(rj *j, const char *word)
{
    size_t n = strlen(word);
    if (j->len - j->pos < n || memcmp(j->s + j->pos, word, n) != 0)
        return rj_fail(j, j->pos,
                       "unexpected character: expected a JSON value (a string in "
                       "double quotes, a number, true, false, null, [ or {)");
    j->pos += n;
    return 0;
}

/* A key, its colon and the whitespace around them, inside an object. */
static int rj_key(rj *j, const char **key, size_t *key_len, bool *escaped)
{
    rj_ws(j);
    if (j->pos >= j->len || j->s[j->pos] != '"')
        return rj_fail(j, j->pos, "expected a key in double quotes");
    int rc = rj_string(j, key, key_len, escaped);
    if (rc < 0)
        return rc;
    rj_ws(j);
    if (j->pos >= j->len || j->s[j->pos] != ':')
        return rj_fail(j, j->pos, "expected ':' after a key");
    j->pos++;
    return 0;
}

/* After a value inside a container: ',' (then a key in an object), or the closing
 * bracket. *closed tells that the container ended. */
static int rj_after_value(rj *j, bool in_object, bool *closed)
{
    rj_ws(j);
    if (j->pos >= j->len)
        return rj_fail(j, j->pos,
                       in_object ? "unexpected end of line: expected ',' or '}'"
                                 : "unexpected end of line: expected ',' or ']'");
    unsigned char c = j->s[j->pos];
    if (c == (in_object ? '}' : ']')) {
        j->pos++;
        *closed = true;
        return 0;
    }
    if (c != ',')
        return rj_fail(j, j->pos,
                       in_object ? "expected ',' or '}' after a value"
                                 : "expected ',' or ']' after a value");
    j->pos++;
    *closed = false;
    if (in_object) {
        const char *k;
        size_t kl;
        bool esc;
        return rj_key(j, &k, &kl, &esc);
    }
    return 0;
}

/* Opens a container at j->pos. Returns 1 when it is empty (already closed). */
static int rj_open(rj *j, bool object)
{
    j->pos++;
    rj_ws(j);
    if (j->pos < j->len && j->s[j->pos] == (object ? '}' : ']')) {
        j->pos++;
        return 1;
    }
    if (object) {
        const char *k;
        size_t kl;
        bool esc;
        return rj_key(j, &k, &kl, &esc);
    }
    return 0;
}

/* One scalar value at j->pos (not a container). */
static int rj_scalar(rj *j, unsigned char c)
{
    const char *b;
    size_t bl;
    bool esc;
    switch (c) {
    case '"':
        return rj_string(j, &b, &bl, &esc);
    case 't':
        return rj_literal(j, "true");
    case 'f':
        return rj_literal(j, "false");
    case 'n':
        return rj_literal(j, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return rj_number(j);
        return rj_fail(j, j->pos,
                       "unexpected character: expected a JSON value (a string in "
                       "double quotes, a number, true, false, null, [ or {)");
    }
}

/* Skips one complete value of any shape without recursion. */
static int rj_skip_value(rj *j)
{
    uint64_t is_object = 0; /* bit d: container at depth d+1 is an object */
    unsigned depth = 0;
    for (;;) {
        rj_ws(j);
        if (j->pos >= j->len)
            return rj_fail(j, j->pos, "unexpected end of line: expected a value");
        unsigned char c = j->s[j->pos];
        int rc;
        if (c == '{' || c == '[') {
            if (depth >= RJ_MAX_DEPTH)
                return rj_fail(j, j->pos, "JSON nested deeper than 64 levels");
            bool obj = c == '{';
            rc = rj_open(j, obj);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                is_object = obj ? (is_object | (UINT64_C(1) << depth))
                                : (is_object & ~(UINT64_C(1) << depth));
                depth++;
                continue; /* expect the first value */
            }
        } else {
            rc = rj_scalar(j, c);
            if (rc < 0)
                return rc;
        }
        /* A value is complete: close as many containers as end here. */
        for (;;) {
            if (depth == 0)
                return 0;
            bool closed;
            rc = rj_after_value(j, (is_object >> (depth - 1)) & 1, &closed);
            if (rc < 0)
                return rc;
            if (!closed)
                break;
            depth--;
        }
    }
}

static rj_type rj_type_of(unsigned char c)
{
    switch (c) {
    case '"':
        return RJ_STRING;
    case '{':
        return RJ_OBJECT;
    case '[':
        return RJ_ARRAY;
    case 't':
        return RJ_TRUE;
    case 'f':
        return RJ_FALSE;
    case 'n':
        return RJ_NULL;
    default:
        return RJ_NUMBER;
    }
}

const char *rj_type_name(rj_type t)
{
    switch (t) {
    case RJ_STRING:
        return "a string";
    case RJ_NUMBER:
        return "a number";
    case RJ_OBJECT:
        return "an object";
    case RJ_ARRAY:
        return "an array";
    case RJ_TRUE:
    case RJ_FALSE:
        return "a boolean";
    case RJ_NULL:
        return "null";
    }
    return "a value";
}

static int rj_not_object(rj *j, unsigned char c)
{
    char msg[160];
    bool value = c == '"' || c == '[' || c == '{' || c == 't' || c == 'f' || c == 'n' || c == '-' ||
                 (c >= '0' && c <= '9');
    if (!value)
        return rj_fail(j, j->pos, "malformed JSON: expected '{' to start the record's object");
    snprintf(msg, sizeof(msg),
             "the line is %s, not a JSON object; write one object per line, like "
             "{\"key\": \"value\"}",
             rj_type_name(rj_type_of(c)));
    return rj_fail(j, j->pos, msg);
}

int rj_parse_object(const char *s, size_t len, strbuf *key_buf, rj_member_fn fn, void *ud,
                    rj_error *err)
{
    rj j = {.s = (const unsigned char *)s, .len = len, .pos = 0, .err = err};
    rj_ws(&j);
    if (j.pos >= j.len)
        return rj_fail(&j, j.pos, "the line is empty");
    if (j.s[j.pos] != '{')
        return rj_not_object(&j, j.s[j.pos]);
    j.pos++;
    rj_ws(&j);
    if (j.pos < j.len && j.s[j.pos] == '}') {
        j.pos++;
    } else {
        for (;;) {
            const char *key, *val = NULL;
            size_t key_len, val_len = 0;
            bool key_esc, val_esc = false;
            int rc = rj_key(&j, &key, &key_len, &key_esc);
            if (rc < 0)
                return rc;
            rj_ws(&j);
            if (j.pos >= j.len)
                return rj_fail(&j, j.pos, "unexpected end of line: expected a value");
            rj_type t = rj_type_of(j.s[j.pos]);
            if (t == RJ_STRING)
                rc = rj_string(&j, &val, &val_len, &val_esc);
            else
                rc = rj_skip_value(&j);
            if (rc < 0)
                return rc;
            if (key_esc) {
                rj_decode_string(key, key_len, key_buf);
                key = key_buf->data;
                key_len = key_buf->len;
            }
            fn(ud, key, key_len, t, val, val_len, val_esc);
            rj_ws(&j);
            if (j.pos < j.len && j.s[j.pos] == '}') {
                j.pos++;
                break;
            }
            if (j.pos >= j.len)
                return rj_fail(&j, j.pos, "unexpected end of line: expected ',' or '}'");
            if (j.s[j.pos] != ',')
                return rj_fail(&j, j.pos, "expected ',' or '}' after a value");
            j.pos++;
        }
    }
    rj_ws(&j);
    if (j.pos < j.len)
        return rj_fail(&j, j.pos,
                       "unexpected text after the JSON object; put exactly one object per line");
    return 0;
}

static void rj_put_utf8(strbuf *out, unsigned cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xc0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xe0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (char)(0xf0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    strbuf_append(out, b, n);
}

void rj_decode_string(const char *s, size_t len, strbuf *out)
{
    const unsigned char *p = (const unsigned char *)s;
    strbuf_reset(out);
    strbuf_append(out, "", 0); /* data is never NULL, even for "" */
    size_t i = 0;
    while (i < len) {
        const unsigned char *bs = memchr(p + i, '\\', len - i);
        size_t plain = bs ? (size_t)(bs - (p + i)) : len - i;
        strbuf_append(out, p + i, plain);
        i += plain;
        if (i + 1 >= len) /* no escape (validated input always has two bytes left) */
            break;
        unsigned char e = p[i + 1];
        unsigned cp = 0;
        switch (e) {
        case 'b':
            cp = '\b';
            break;
        case 'f':
            cp = '\f';
            break;
        case 'n':
            cp = '\n';
            break;
        case 'r':
            cp = '\r';
            break;
        case 't':
            cp = '\t';
            break;
        case 'u':
            if (len - i < 6 || rj_hex4(p + i + 2, &cp) < 0)
                return;
            i += 4;
            if (cp >= 0xd800 && cp <= 0xdbff && len - i >= 8 && p[i + 2] == '\\' &&
                p[i + 3] == 'u') {
                unsigned lo;
                if (rj_hex4(p + i + 4, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    i += 6;
                }
            }
            break;
        default: /* " \ / */
            cp = e;
            break;
        }
        rj_put_utf8(out, cp);
        i += 2;
    }
}

bool rj_utf8_scan(const char *str, size_t len, size_t *bad_off, bool *is_nul)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII runs are the common case. */
        while (i < len && s[i] >= 0x01 && s[i] < 0x80)
            i++;
        if (i >= len)
            break;
        unsigned char c = s[i];
        *bad_off = i;
        *is_nul = c == 0;
        if (c == 0)
            return false;
        size_t n;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            else if (c == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            else if (c == 0xf4)
                hi = 0x8f; /* above U+10FFFF */
        } else {
            return false;
        }
        if (len - i <= n)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += n + 1;
    }
    return true;
}
