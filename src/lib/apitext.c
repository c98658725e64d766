/* apitext: see include/batchd/apitext.h.
 *
 * Redaction works on decoded views of the text. Each view is a byte stream whose every byte
 * knows the span of the original text it came from: the raw text, then JSON escapes decoded,
 * then percent-escapes decoded, then JSON escapes again (for a percent-encoded backslash), and
 * finally line breaks (with the blanks of a folded line) dropped. Every form of the secret is
 * looked for in every view, and the original span of each match is replaced. A match in a
 * decoded view thus removes the escaped text it came from, whatever mix of escapes made it. */
#include "batchd/apitext.h"
#include "batchd/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The part of a huge text that is looked at: far more than is ever kept. */
#define SCAN_MAX (64u * 1024)
/* Base64 forms only for secrets this long: for shorter ones the forms are a few characters
 * that would match ordinary text. */
#define B64_MIN_SECRET 6

typedef struct view {
    unsigned char *b;
    size_t *s; /* source span [s, e) of each byte */
    size_t *e;
    size_t n;
} view;

static void view_init(view *v, size_t cap)
{
    v->b = xmalloc(cap + 1);
    v->s = xmalloc((cap + 1) * sizeof *v->s);
    v->e = xmalloc((cap + 1) * sizeof *v->e);
    v->n = 0;
}

static void view_free(view *v)
{
    free(v->b);
    free(v->s);
    free(v->e);
}

static void view_put(view *v, unsigned char c, size_t s, size_t e)
{
    v->b[v->n] = c;
    v->s[v->n] = s;
    v->e[v->n] = e;
    v->n++;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool hex4(const unsigned char *p, size_t avail, unsigned *out)
{
    if (avail < 4)
        return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return false;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return true;
}

static size_t utf8_put(unsigned char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* JSON string escapes decoded (\uXXXX with surrogate pairs, \/, \n ...). Never longer. */
static void layer_json(const view *in, view *out)
{
    out->n = 0;
    for (size_t i = 0; i < in->n;) {
        const unsigned char *b = in->b;
        if (b[i] != '\\' || i + 1 >= in->n) {
            view_put(out, b[i], in->s[i], in->e[i]);
            i++;
            continue;
        }
        unsigned char c = b[i + 1];
        unsigned u;
        if (c == 'u' && hex4(b + i + 2, in->n - i - 2, &u)) {
            size_t last = i + 5;
            uint32_t cp = u;
            unsigned lo;
            if (u >= 0xd800 && u <= 0xdbff && i + 11 < in->n + 0 && b[i + 6] == '\\' &&
                b[i + 7] == 'u' && hex4(b + i + 8, in->n - i - 8, &lo) && lo >= 0xdc00 &&
                lo <= 0xdfff) {
                cp = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                last = i + 11;
            }
            unsigned char o[4];
            size_t k = utf8_put(o, cp);
            for (size_t x = 0; x < k; x++)
                view_put(out, o[x], in->s[i], in->e[last]);
            i = last + 1;
            continue;
        }
        unsigned char d = 0;
        switch (c) {
        case '/':
        case '\\':
        case '"':
            d = c;
            break;
        case 'n':
            d = '\n';
            break;
        case 'r':
            d = '\r';
            break;
        case 't':
            d = '\t';
            break;
        case 'b':
            d = '\b';
            break;
        case 'f':
            d = '\f';
            break;
        default:
            break;
        }
        if (d) {
            view_put(out, d, in->s[i], in->e[i + 1]);
            i += 2;
        } else {
            view_put(out, b[i], in->s[i], in->e[i]);
            i++;
        }
    }
}

/* %XX decoded (either case). */
static void layer_pct(const view *in, view *out)
{
    out->n = 0;
    for (size_t i = 0; i < in->n;) {
        int h, l;
        if (in->b[i] == '%' && i + 2 < in->n && (h = hexval(in->b[i + 1])) >= 0 &&
            (l = hexval(in->b[i + 2])) >= 0) {
            view_put(out, (unsigned char)(h << 4 | l), in->s[i], in->e[i + 2]);
            i += 3;
        } else {
            view_put(out, in->b[i], in->s[i], in->e[i]);
            i++;
        }
    }
}

/* Line breaks dropped, and the blanks that start a folded line. */
static void layer_lines(const view *in, view *out)
{
    out->n = 0;
    bool after_break = false;
    for (size_t i = 0; i < in->n; i++) {
        unsigned char c = in->b[i];
        if (c == '\r' || c == '\n') {
            after_break = true;
            continue;
        }
        if (after_break && (c == ' ' || c == '\t'))
            continue;
        after_break = false;
        view_put(out, c, in->s[i], in->e[i]);
    }
}

/* ---- the forms of the secret ---- */

typedef struct forms {
    char *f[32];
    bool nocase[32];
    size_t n;
} forms;

static void forms_add(forms *fs, char *s, bool nocase)
{
    if (!s[0] || fs->n >= BD_ARRAY_LEN(fs->f)) {
        free(s);
        return;
    }
    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->f[i], s) == 0 && fs->nocase[i] == nocase) {
            free(s);
            return;
        }
    fs->nocase[fs->n] = nocase;
    fs->f[fs->n++] = s;
}

static void forms_free(forms *fs)
{
    for (size_t i = 0; i < fs->n; i++)
        free(fs->f[i]);
    fs->n = 0;
}

/* The base64 characters that depend on the secret alone when it starts `off` bytes into a
 * group of three: whatever precedes or follows it, these appear in the encoding. */
static char *b64_core(const unsigned char *sec, size_t n, unsigned off, bool url)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char urlsafe[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *al = url ? urlsafe : std;
    size_t total = off + n;
    unsigned char *buf = xcalloc(total + 3, 1);
    memcpy(buf + off, sec, n);
    char *out = xmalloc(total / 3 * 4 + 8);
    size_t o = 0;
    /* Character k covers bits [6k, 6k+6) of the stream; it is the secret's alone when those
     * bits lie within bytes [off, off+n). */
    size_t first_bit = (size_t)off * 8, end_bit = total * 8;
    for (size_t k = 0; (k + 1) * 6 <= end_bit; k++) {
        size_t bit = k * 6;
        if (bit < first_bit)
            continue;
        unsigned v = 0;
        for (size_t x = 0; x < 6; x++) {
            size_t p = bit + x;
            v = v << 1 | ((buf[p / 8] >> (7 - p % 8)) & 1u);
        }
        out[o++] = al[v];
    }
    out[o] = '\0';
    free(buf);
    return out;
}

static bool is_hex_text(const char *s)
{
    for (; *s; s++)
        if (hexval((unsigned char)*s) < 0)
            return false;
    return true;
}

static void forms_of(const char *secret, forms *fs)
{
    fs->n = 0;
    if (!secret || !*secret)
        return;
    size_t n = strlen(secret);
    bool hex = is_hex_text(secret);
    forms_add(fs, xstrdup(secret), hex);
    /* Every character escaped, as text: a backslash before it can make a JSON decoder read
     * it otherwise, but it is still the token to whoever reads the text. */
    strbuf u = {0}, pc = {0};
    for (size_t i = 0; i < n; i++) {
        strbuf_printf(&u, "\\u%04x", (unsigned char)secret[i]);
        strbuf_printf(&pc, "%%%02x", (unsigned char)secret[i]);
    }
    forms_add(fs, strbuf_steal(&u), true);
    forms_add(fs, strbuf_steal(&pc), true);
    if (n < B64_MIN_SECRET)
        return;
    /* The secret as given and, for a hex token, in either case: the base64 of each. */
    char *variants[3] = {xstrdup(secret), NULL, NULL};
    if (hex) {
        variants[1] = xstrdup(secret);
        variants[2] = xstrdup(secret);
        for (size_t i = 0; i < n; i++) {
            variants[1][i] =
                (char)(variants[1][i] >= 'A' && variants[1][i] <= 'F' ? variants[1][i] + 32
                                                                      : variants[1][i]);
            variants[2][i] =
                (char)(variants[2][i] >= 'a' && variants[2][i] <= 'f' ? variants[2][i] - 32
                                                                      : variants[2][i]);
        }
    }
    for (size_t v = 0; v < 3; v++) {
        if (!variants[v])
            continue;
        for (unsigned off = 0; off < 3; off++)
            for (int url = 0; url < 2; url++)
                forms_add(fs, b64_core((const unsigned char *)variants[v], n, off, url), false);
        free(variants[v]);
    }
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* Marks the source spans of every form found in the view. */
static void find_forms(const view *v, const forms *fs, unsigned char *mark, unsigned char *tmp)
{
    for (size_t i = 0; i < v->n; i++)
        tmp[i] = lower(v->b[i]);
    for (size_t k = 0; k < fs->n; k++) {
        const char *f = fs->f[k];
        size_t m = strlen(f);
        if (m > v->n)
            continue;
        char *needle = xstrdup(f);
        const unsigned char *hay = v->b;
        if (fs->nocase[k]) {
            for (size_t i = 0; i < m; i++)
                needle[i] = (char)lower((unsigned char)needle[i]);
            hay = tmp;
        }
        size_t at = 0;
        while (at + m <= v->n) {
            const unsigned char *p = memmem(hay + at, v->n - at, needle, m);
            if (!p)
                break;
            size_t i = (size_t)(p - hay);
            for (size_t x = v->s[i]; x < v->e[i + m - 1]; x++)
                mark[x] = 1;
            at = i + 1;
        }
        free(needle);
    }
}

/* mark[i] = 1 for every byte of s[0..n) that is part of an echo of the secret. */
static unsigned char *redaction_marks(const char *s, size_t n, const char *secret)
{
    unsigned char *mark = xcalloc(n + 1, 1);
    forms fs;
    forms_of(secret, &fs);
    if (fs.n == 0 || n == 0) {
        forms_free(&fs);
        return mark;
    }
    /* Decodings compose in any order a proxy might have applied them, and one decoding can
     * break an echo another leaves whole ("%b4" in "…%b4805\r\n461" is a percent escape),
     * so the forms are looked for in each of these views, and in each with line breaks
     * taken out. */
    view raw, json1, pct0, pct1, json2, flat;
    view_init(&raw, n);
    view_init(&json1, n);
    view_init(&pct0, n);
    view_init(&pct1, n);
    view_init(&json2, n);
    view_init(&flat, n);
    unsigned char *tmp = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        view_put(&raw, (unsigned char)s[i], i, i + 1);
    layer_json(&raw, &json1);
    layer_pct(&raw, &pct0);
    layer_pct(&json1, &pct1);
    layer_json(&pct1, &json2);
    const view *views[] = {&raw, &json1, &pct0, &pct1, &json2};
    for (size_t k = 0; k < BD_ARRAY_LEN(views); k++) {
        find_forms(views[k], &fs, mark, tmp);
        layer_lines(views[k], &flat);
        find_forms(&flat, &fs, mark, tmp);
    }
    free(tmp);
    view_free(&raw);
    view_free(&json1);
    view_free(&pct0);
    view_free(&pct1);
    view_free(&json2);
    view_free(&flat);
    forms_free(&fs);
    return mark;
}

static bool apitext_control(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f);
}

/* Room for one output character: 4 bytes of UTF-8, or "\xNN" and its terminator. */
#define PIECE_CAP 8

/* What the character at u[0..avail) becomes: itself, U+FFFD, or \xNN (escape). The text
 * goes into piece, its length into *plen; returns how many bytes of u it stands for. */
static size_t clean_piece(const unsigned char *u, size_t avail, bool escape, char piece[PIECE_CAP],
                          size_t *plen)
{
    static const char fffd[] = "\xef\xbf\xbd";
    uint32_t cp = 0;
    size_t k = utf8_next(u, avail, &cp);
    if (k == 0) {
        /* snprintf, not memcpy: piece stays a terminated string */
        *plen = escape ? (size_t)snprintf(piece, PIECE_CAP, "\\x%02x", u[0])
                       : (size_t)snprintf(piece, PIECE_CAP, "%s", fffd);
        return 1;
    }
    if (apitext_control(cp) && (escape || cp == 0 || cp >= 0x7f)) {
        *plen = escape ? (size_t)snprintf(piece, PIECE_CAP, "\\x%02x", (unsigned)cp)
                       : (size_t)snprintf(piece, PIECE_CAP, "%s", fffd);
        return k;
    }
    memcpy(piece, u, k);
    *plen = k;
    return k;
}

/* The common core: redact, make valid UTF-8, and either keep C0 controls (escape_controls
 * false: the text goes into JSON) or show every control as \xNN; cut at max bytes. */
static char *clean(const char *s, size_t len, const char *secret, size_t max, bool escape)
{
    bool cut = false;
    size_t n = len;
    if (n > SCAN_MAX) {
        /* Only the start is kept anyway. Stop short of the scanned end by the longest form
         * of the secret, so that an echo cut by the scan is not kept half. */
        size_t margin = secret ? strlen(secret) * 8 + 64 : 0;
        n = SCAN_MAX - (margin < SCAN_MAX / 2 ? margin : SCAN_MAX / 2);
        cut = true;
    }
    unsigned char *mark = redaction_marks(s, len > SCAN_MAX ? SCAN_MAX : len, secret);
    size_t mark_cut = sizeof APITEXT_CUT - 1;
    size_t limit = max > mark_cut ? max - mark_cut : 0;
    strbuf sb = {0};
    strbuf_append(&sb, "", 0);
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        char piece[PIECE_CAP];
        if (mark[i]) {
            size_t e = i;
            while (e < (len > SCAN_MAX ? SCAN_MAX : len) && mark[e])
                e++;
            if (sb.len + sizeof APITEXT_REDACTED - 1 > limit) {
                cut = true;
                break;
            }
            strbuf_puts(&sb, APITEXT_REDACTED);
            i = e;
            continue;
        }
        size_t plen;
        size_t adv = clean_piece(u + i, n - i, escape, piece, &plen);
        if (sb.len + plen > limit) {
            cut = true;
            break;
        }
        strbuf_append(&sb, piece, plen);
        i += adv;
    }
    free(mark);
    if (cut)
        strbuf_puts(&sb, APITEXT_CUT);
    return strbuf_steal(&sb);
}

/* The text goes into JSON, and printing it there escapes a control character as letters and
 * digits (a tab as \t, U+0001 as \u0001). Those can join the text around them into the secret
 * although the text holds no copy of it. Then the printed form is cleaned instead: it has no
 * control characters left, and its backslashes print as \\, which joins nothing. */
char *apitext_clean(const char *s, size_t len, const char *secret)
{
    char *out = clean(s ? s : "", s ? len : 0, secret, APITEXT_MAX, false);
    if (!secret || !*secret)
        return out;
    cJSON *probe = cJSON_CreateString(out);
    if (!probe)
        abort(); /* cJSON failed to allocate */
    char *text = json_print(probe);
    cJSON_Delete(probe);
    size_t tl = strlen(text);
    if (apitext_has_secret(text, tl, secret)) {
        free(out);
        out = clean(text + 1, tl - 2, secret, APITEXT_MAX, false); /* without the quotes */
    }
    free(text);
    return out;
}

char *apitext_clean_str(const char *s, const char *secret)
{
    return s ? apitext_clean(s, strlen(s), secret) : NULL;
}

char *apitext_display(const char *s, size_t max, const char *secret)
{
    return clean(s ? s : "", s ? strlen(s) : 0, secret, max, true);
}

bool apitext_has_secret(const char *s, size_t len, const char *secret)
{
    if (len > SCAN_MAX)
        len = SCAN_MAX;
    unsigned char *mark = redaction_marks(s, len, secret);
    bool found = false;
    for (size_t i = 0; i < len && !found; i++)
        found = mark[i];
    free(mark);
    return found;
}

bool apitext_id_ok(const char *id)
{
    if (!id)
        return false;
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        if (n >= APITEXT_ID_MAX || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                     (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return n > 0;
}

/* ---- JSON ---- */

/* A cleaned copy, or NULL beyond the depth or node limits. */
static cJSON *copy_clean(const cJSON *v, const char *secret, int depth, size_t *nodes)
{
    if (depth > APITEXT_JSON_MAX_DEPTH || ++*nodes > APITEXT_JSON_MAX_NODES)
        return NULL;
    cJSON *c = NULL;
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        c = cJSON_IsArray(v) ? cJSON_CreateArray() : cJSON_CreateObject();
        const cJSON *e;
        cJSON_ArrayForEach(e, v)
        {
            cJSON *ce = copy_clean(e, secret, depth + 1, nodes);
            if (!ce) {
                cJSON_Delete(c);
                return NULL;
            }
            if (cJSON_IsObject(v)) {
                char *k = apitext_clean_str(e->string ? e->string : "", secret);
                cJSON_AddItemToObject(c, k, ce);
                free(k);
            } else {
                cJSON_AddItemToArray(c, ce);
            }
        }
    } else if (cJSON_IsString(v)) {
        char *s = apitext_clean_str(v->valuestring ? v->valuestring : "", secret);
        c = cJSON_CreateString(s);
        free(s);
    } else if (cJSON_IsNumber(v)) {
        c = cJSON_CreateNumber(v->valuedouble);
        /* A token of digits can come back as a number. */
        if (c && secret && *secret) {
            char *text = json_print(c);
            if (apitext_has_secret(text, strlen(text), secret)) {
                cJSON_Delete(c);
                c = cJSON_CreateString(APITEXT_REDACTED);
            }
            free(text);
        }
    } else if (cJSON_IsBool(v)) {
        c = cJSON_CreateBool(cJSON_IsTrue(v));
    } else {
        c = cJSON_CreateNull();
    }
    if (!c)
        abort(); /* cJSON failed to allocate */
    return c;
}

static cJSON *within_output_limit(cJSON *c)
{
    char *text = json_print(c);
    bool ok = strlen(text) <= APITEXT_JSON_MAX_OUTPUT;
    free(text);
    if (ok)
        return c;
    cJSON_Delete(c);
    return NULL;
}

static cJSON *as_text(const char *s, size_t len, const char *secret)
{
    char *t = apitext_clean(s, len, secret);
    cJSON *c = cJSON_CreateString(t);
    free(t);
    return c;
}

cJSON *apitext_json(const cJSON *v, const char *secret)
{
    if (!v)
        return NULL;
    size_t nodes = 0;
    cJSON *c = copy_clean(v, secret, 1, &nodes);
    if (c)
        c = within_output_limit(c);
    if (c)
        return c;
    char *text = json_print(v);
    c = as_text(text, strlen(text), secret);
    free(text);
    return c;
}

/* The depth of the JSON text's nesting, looking no deeper than limit + 1. */
static int text_depth(const char *s, size_t len, int limit)
{
    int d = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++d > max)
                max = d;
            if (max > limit)
                return max;
        } else if (c == ']' || c == '}') {
            d--;
        }
    }
    return max;
}

cJSON *apitext_body(const char *body, size_t len, const char *secret)
{
    if (!body || !len)
        return NULL;
    if (len <= APITEXT_JSON_MAX_INPUT &&
        text_depth(body, len, APITEXT_JSON_MAX_DEPTH) <= APITEXT_JSON_MAX_DEPTH) {
        cJSON *parsed = cJSON_ParseWithLength(body, len);
        if (parsed) {
            size_t nodes = 0;
            cJSON *c = copy_clean(parsed, secret, 1, &nodes);
            cJSON_Delete(parsed);
            if (c)
                c = within_output_limit(c);
            if (c)
                return c;
        }
    }
    return as_text(body, len, secret);
}

char *apitext_with_suffix(const char *base, const char *suffix)
{
    char *b = apitext_clean_str(base ? base : "", NULL);
    size_t bl = strlen(b), sl = strlen(suffix);
    size_t room = APITEXT_MAX > sl ? APITEXT_MAX - sl : 0;
    if (bl > room) {
        size_t mark = sizeof APITEXT_CUT - 1;
        size_t k = room > mark ? room - mark : 0;
        while (k > 0 && ((unsigned char)b[k] & 0xC0) == 0x80)
            k--; /* never inside a character */
        b[k] = '\0';
        char *cut = xasprintf("%s%s", b, k < room ? APITEXT_CUT : "");
        free(b);
        b = cut;
    }
    char *out = xasprintf("%s%s", b, suffix);
    free(b);
    return out;
}
