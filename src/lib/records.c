/* records: the streaming validator. Bytes arrive in chunks of any size; a small state
 * machine finds record boundaries (a line for JSONL, an RFC 4180 record for CSV, whose
 * quoted fields may span lines), keeps at most max_record + 1 bytes of the current record,
 * and checks each complete record against the schema. A record that grows past the limit
 * is only scanned for its end, never kept, so memory is bounded whatever the input. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/csv.h"
#include "batchd/records.h"
#include "batchd/util.h"
#include "records_internal.h"

#define RECORDS_DEFAULT_MAX_RECORD ((size_t)1 << 20)
/* Problems listed in one header file error. */
#define RECORDS_MAX_HEADER_PROBLEMS 8
#define SCHEMA_MAX_FIELDS           200
#define SCHEMA_MAX_KEY              128

static const unsigned char utf8_bom[3] = {0xef, 0xbb, 0xbf};

/* ---- format ------------------------------------------------------------------------- */

int records_format_from_name(const char *filename, records_format *out)
{
    if (!filename || !out)
        return -EINVAL;
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base) /* no extension, or a bare ".csv" with no name */
        return -EINVAL;
    if (strcasecmp(dot, ".jsonl") == 0) {
        *out = RECORDS_JSONL;
        return 0;
    }
    if (strcasecmp(dot, ".csv") == 0) {
        *out = RECORDS_CSV;
        return 0;
    }
    return -EINVAL;
}

/* ---- schema ------------------------------------------------------------------------- */

typedef enum field_kind {
    FIELD_TEXT = 0,
    FIELD_URL, /* image_url, audio_url, video_url: must be an http(s) URL */
    FIELD_OTHER,
} field_kind;

typedef struct schema_field {
    char *key;
    size_t len;
    field_kind kind;
    char *type;
} schema_field;

struct records_schema {
    bool strict;
    size_t n;
    schema_field *fields; /* in the schema's order (reports follow it) */
    size_t *by_key;       /* indexes into fields, sorted by key bytes */
};

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0)
        return c;
    return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

/* Index of key in s->fields, or -1. */
static long schema_find(const records_schema *s, const char *key, size_t len)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const schema_field *f = &s->fields[s->by_key[mid]];
        int c = key_cmp(key, len, f->key, f->len);
        if (c == 0)
            return (long)s->by_key[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

static int field_kind_of(const char *type, field_kind *out)
{
    static const struct {
        const char *name;
        field_kind kind;
    } types[] = {
        {"text", FIELD_TEXT},     {"image_url", FIELD_URL},  {"audio_url", FIELD_URL},
        {"video_url", FIELD_URL}, {"metadata", FIELD_OTHER}, {"task_group_id", FIELD_OTHER},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(types); i++) {
        if (strcmp(type, types[i].name) == 0) {
            *out = types[i].kind;
            return 0;
        }
    }
    return -EINVAL;
}

/* Insertion sort: at most 200 keys, once per schema. */
static void schema_sort(records_schema *s)
{
    for (size_t i = 0; i < s->n; i++)
        s->by_key[i] = i;
    for (size_t i = 1; i < s->n; i++) {
        size_t x = s->by_key[i];
        size_t k = i;
        while (k > 0) {
            const schema_field *p = &s->fields[s->by_key[k - 1]];
            if (key_cmp(p->key, p->len, s->fields[x].key, s->fields[x].len) <= 0)
                break;
            s->by_key[k] = s->by_key[k - 1];
            k--;
        }
        s->by_key[k] = x;
    }
}

records_schema *records_schema_new(const cJSON *schema)
{
    if (!cJSON_IsObject(schema))
        return NULL;
    const cJSON *strict = cJSON_GetObjectItemCaseSensitive(schema, "strict");
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(schema, "fields");
    if (!cJSON_IsBool(strict) || !cJSON_IsObject(fields))
        return NULL;
    int n = cJSON_GetArraySize(fields);
    if (n <= 0 || n > SCHEMA_MAX_FIELDS)
        return NULL;
    records_schema *s = xcalloc(1, sizeof(*s));
    s->strict = cJSON_IsTrue(strict);
    s->fields = xcalloc((size_t)n, sizeof(*s->fields));
    s->by_key = xcalloc((size_t)n, sizeof(*s->by_key));
    const cJSON *f;
    cJSON_ArrayForEach(f, fields)
    {
        const char *type = json_str(f, "type");
        field_kind kind;
        if (!f->string || !type || field_kind_of(type, &kind) < 0)
            goto fail;
        size_t len = strlen(f->string);
        if (len == 0 || len > SCHEMA_MAX_KEY || !utf8_valid(f->string, len))
            goto fail;
        schema_field *sf = &s->fields[s->n++];
        sf->key = xstrdup(f->string);
        sf->len = len;
        sf->kind = kind;
        sf->type = xstrdup(type);
    }
    schema_sort(s);
    for (size_t i = 1; i < s->n; i++) {
        const schema_field *a = &s->fields[s->by_key[i - 1]];
        const schema_field *b = &s->fields[s->by_key[i]];
        if (key_cmp(a->key, a->len, b->key, b->len) == 0)
            goto fail; /* a duplicated key in the JSON object */
    }
    return s;
fail:
    records_schema_free(s);
    return NULL;
}

void records_schema_free(records_schema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->fields[i].key);
        free(s->fields[i].type);
    }
    free(s->fields);
    free(s->by_key);
    free(s);
}

/* ---- URLs --------------------------------------------------------------------------- */

static bool host_byte_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '%' || c == '~' || c >= 0x80;
}

static const char *url_port_problem(const char *p, size_t n)
{
    if (n == 0 || n > 5)
        return "its port is not a number from 1 to 65535";
    unsigned long port = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return "its port is not a number from 1 to 65535";
        port = port * 10 + (unsigned long)(p[i] - '0');
    }
    if (port == 0 || port > 65535)
        return "its port is not a number from 1 to 65535";
    return NULL;
}

/* The length of s's "http://" or "https://" (any case), or 0 for any other start. */
static size_t url_scheme_len(const char *s, size_t n)
{
    if (n >= 7 && strncasecmp(s, "http://", 7) == 0)
        return 7;
    if (n >= 8 && strncasecmp(s, "https://", 8) == 0)
        return 8;
    return 0;
}

static bool has_space_or_control(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

/* The authority after the scheme (up to the path, query or fragment), without any
 * "user:password@" part: host[:port]. */
static const char *url_host_port(const char *s, size_t n, size_t off, size_t *len)
{
    size_t end = off;
    while (end < n && s[end] != '/' && s[end] != '?' && s[end] != '#')
        end++;
    const char *auth = s + off;
    size_t alen = end - off;
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@')
            at = auth + i;
    if (at) {
        alen -= (size_t)(at + 1 - auth);
        auth = at + 1;
    }
    *len = alen;
    return auth;
}

/* "[v6]" or "[v6]:port" (auth starts with '['). */
static const char *url_ipv6_problem(const char *auth, size_t alen)
{
    const char *close = memchr(auth, ']', alen);
    if (!close || close == auth + 1)
        return "its IPv6 host is malformed";
    for (const char *p = auth + 1; p < close; p++)
        if (!(host_byte_ok((unsigned char)*p) || *p == ':'))
            return "its IPv6 host is malformed";
    size_t rest = alen - (size_t)(close + 1 - auth);
    if (rest == 0)
        return NULL;
    if (close[1] != ':')
        return "its host is malformed";
    return url_port_problem(close + 2, rest - 1);
}

/* "host" or "host:port", host a name or an IPv4 address. */
static const char *url_name_problem(const char *auth, size_t alen)
{
    const char *colon = memchr(auth, ':', alen);
    size_t hlen = colon ? (size_t)(colon - auth) : alen;
    if (hlen == 0)
        return "it has no host";
    for (size_t i = 0; i < hlen; i++)
        if (!host_byte_ok((unsigned char)auth[i]))
            return "its host contains characters a host name cannot have";
    if (colon)
        return url_port_problem(colon + 1, alen - hlen - 1);
    return NULL;
}

/* Why s is not an absolute http(s) URL with a host, or NULL when it is one. */
static const char *url_problem(const char *s, size_t n)
{
    size_t off = url_scheme_len(s, n);
    if (off == 0)
        return "it does not start with http:// or https://";
    if (has_space_or_control(s, n))
        return "it contains a space or control character (percent-encode it)";
    size_t alen;
    const char *auth = url_host_port(s, n, off, &alen);
    if (alen == 0)
        return "it has no host";
    if (auth[0] == '[') /* IPv6 literal */
        return url_ipv6_problem(auth, alen);
    return url_name_problem(auth, alen);
}

/* ---- validator state ---------------------------------------------------------------- */

typedef enum csv_state {
    CSV_FIELD_START = 0,
    CSV_UNQUOTED,
    CSV_QUOTED,
    CSV_QUOTE_END, /* a quote inside a quoted field: the end, or the first of "" */
} csv_state;

typedef enum csv_bad {
    CSV_OK = 0,
    CSV_BAD_QUOTE,       /* a quote inside an unquoted field */
    CSV_BAD_AFTER_QUOTE, /* text after a closing quote */
    CSV_BAD_CR,          /* a CR not followed by LF */
} csv_bad;

/* Fields grouped by purpose, not by size: there is one validator per file.
 * NOLINTNEXTLINE(clang-analyzer-optin.performance.Padding) */
struct records_validator {
    records_format format;
    const records_schema *schema;
    size_t max_record;
    records_record_cb on_record;
    void *ud;

    /* The current record: at most max_record + 1 bytes are kept (the +1 leaves room for
     * the CR of a CRLF). rec_bytes counts every byte, kept or not. */
    char *buf;
    size_t len, cap;
    uint64_t rec_bytes;
    bool in_record;
    bool overlong;
    bool rec_nul; /* an overlong record contained a NUL byte */
    char rec_last;
    uint64_t rec_line;

    uint64_t newlines;
    bool mid_line; /* bytes after the last LF */

    unsigned char bom[3];
    size_t bom_len;
    bool bom_done;

    csv_state csv;
    bool csv_cr;
    csv_bad bad;
    uint64_t bad_off;
    uint64_t quote_line;
    bool header_done;
    char *header;
    size_t header_len;
    size_t ncols;
    size_t *col_field; /* header column -> schema field */

    strbuf key_buf, val_buf;
    uint32_t *seen; /* seen[i] == gen: field i occurs in the current record */
    uint32_t gen;
    diag errs; /* the current record's problems; empty (nothing allocated) while it is valid */

    records_stats st;
    char *file_error;
    uint64_t file_error_line;
    char file_error_field[RECORDS_FIELD_MAX]; /* the header column a header error is about, or "" */
    bool halted; /* after a file error: bytes are counted, not validated */
    bool finished;
    int rc;
};

records_validator *records_new(const records_options *opts)
{
    if (!opts || !opts->schema || (opts->format != RECORDS_JSONL && opts->format != RECORDS_CSV))
        return NULL;
    records_validator *v = xcalloc(1, sizeof(*v));
    v->format = opts->format;
    v->schema = opts->schema;
    v->max_record = opts->max_record ? opts->max_record : RECORDS_DEFAULT_MAX_RECORD;
    v->on_record = opts->on_record;
    v->ud = opts->ud;
    v->seen = xcalloc(v->schema->n, sizeof(*v->seen));
    v->col_field = xcalloc(v->schema->n, sizeof(*v->col_field));
    strbuf_init(&v->key_buf);
    strbuf_init(&v->val_buf);
    /* The last place is kept for the summary of the rest (emit). */
    v->errs.max = RECORDS_MAX_ERRORS - 1;
    v->errs.text_max = RECORDS_MESSAGE_MAX;
    return v;
}

void records_free(records_validator *v)
{
    if (!v)
        return;
    free(v->buf);
    free(v->header);
    free(v->col_field);
    free(v->seen);
    free(v->file_error);
    diag_free(&v->errs);
    strbuf_free(&v->key_buf);
    strbuf_free(&v->val_buf);
    free(v);
}

void records_get_stats(const records_validator *v, records_stats *out)
{
    *out = v->st;
    out->lines = v->newlines + (v->mid_line ? 1 : 0);
}

size_t records_buffer_capacity(const records_validator *v)
{
    return v->cap;
}

const char *records_file_error_field(const records_validator *v)
{
    return v && v->file_error && v->file_error_field[0] ? v->file_error_field : NULL;
}

const char *records_file_error(const records_validator *v, uint64_t *line)
{
    if (line)
        *line = v->file_error ? v->file_error_line : 0;
    return v->file_error;
}

const char *records_csv_header(const records_validator *v, size_t *len)
{
    if (v->format != RECORDS_CSV || !v->header_done) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = v->header_len;
    return v->header;
}

/* ---- errors ------------------------------------------------------------------------- */

/* Copies at most cap-1 bytes of s, cut at a UTF-8 character boundary. */
static void copy_cut(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* A key as quoted in a message: short, no control characters. */
static void key_for_message(char out[52], const char *key, size_t len)
{
    bool cut = len > 40;
    copy_cut(out, 41, key, len);
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (cut)
        strcat(out, "...");
}

static void rec_error(records_validator *v, const char *field, size_t field_len, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));

static void rec_error(records_validator *v, const char *field, size_t field_len, const char *fmt,
                      ...)
{
    char cut[RECORDS_FIELD_MAX];
    copy_cut(cut, sizeof cut, field ? field : "", field ? field_len : 0);
    const diag_where w = {.line = v->rec_line, .field = cut[0] ? cut : NULL};
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(&v->errs, DIAG_ERROR, &w, fmt, ap);
    va_end(ap);
}

static void set_file_error(records_validator *v, uint64_t line, const char *msg)
{
    if (v->file_error)
        return;
    v->file_error = xstrdup(msg);
    v->file_error_line = line;
    v->halted = true;
}

/* Passes the finished record to the callback and resets the per-record problems. */
static int emit(records_validator *v, const char *raw, size_t raw_len)
{
    /* The list keeps its last place free for this summary. */
    diag_add_more(&v->errs, &(diag_where){.line = v->rec_line}, " problems in this record");
    if (v->errs.count == 0)
        v->st.valid++;
    else
        v->st.invalid++;
    int rc = 0;
    if (v->on_record)
        rc = v->on_record(v->ud, raw ? raw : "", raw_len, v->st.records, &v->errs);
    v->st.records++;
    if (v->errs.count)
        diag_free(&v->errs);
    if (rc != 0)
        v->rc = rc;
    return rc;
}

/* ---- record buffer ------------------------------------------------------------------ */

static void start_record(records_validator *v)
{
    v->in_record = true;
    v->rec_line = v->newlines + 1;
    v->len = 0;
    v->rec_bytes = 0;
    v->overlong = false;
    v->rec_nul = false;
    v->rec_last = '\0';
    v->csv = CSV_FIELD_START;
    v->csv_cr = false;
    v->bad = CSV_OK;
    v->bad_off = 0;
}

static void rec_append(records_validator *v, const char *p, size_t n)
{
    if (n == 0)
        return;
    v->rec_bytes += n;
    v->rec_last = p[n - 1];
    if (!v->overlong && v->len + n > v->max_record + 1) {
        v->overlong = true;
        v->rec_nul = memchr(v->buf ? v->buf : "", 0, v->len) != NULL;
        v->len = 0;
    }
    if (v->overlong) {
        if (!v->rec_nul && memchr(p, 0, n))
            v->rec_nul = true;
        return;
    }
    if (v->len + n > v->cap) {
        size_t cap = v->cap ? v->cap : 4096;
        while (cap < v->len + n)
            cap *= 2;
        if (cap > v->max_record + 1)
            cap = v->max_record + 1;
        v->buf = xrealloc(v->buf, cap);
        v->cap = cap;
    }
    memcpy(v->buf + v->len, p, n);
    v->len += n;
}

static void count_newlines(records_validator *v, const char *p, size_t n)
{
    const char *end = p + n;
    const char *q = p;
    while (q < end && (q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
        v->newlines++;
        q++;
    }
}

/* Problems with the bytes themselves; true when the record may be parsed further. */
static bool check_text(records_validator *v, const char *raw, size_t len, const char *what)
{
    size_t bad;
    bool nul;
    if (rj_utf8_scan(raw, len, &bad, &nul))
        return true;
    if (nul)
        rec_error(v, NULL, 0,
                  "NUL byte at byte %zu of the %s: this looks like a binary file, not UTF-8 "
                  "text",
                  bad + 1, what);
    else
        rec_error(v, NULL, 0, "invalid UTF-8 at byte %zu of the %s; save the file as UTF-8",
                  bad + 1, what);
    return false;
}

static void overlong_error(records_validator *v, const char *what)
{
    if (v->rec_nul)
        rec_error(v, NULL, 0,
                  "%s is longer than %zu bytes and contains NUL bytes: this looks like a "
                  "binary file, not %s text",
                  what, v->max_record, v->format == RECORDS_CSV ? "CSV" : "JSONL");
    else
        rec_error(v, NULL, 0, "%s is longer than %zu bytes; shorten the record or raise the limit",
                  what, v->max_record);
}

/* A value of schema field idx: checks what its type requires. */
static void check_value(records_validator *v, size_t idx, const char *val, size_t len, bool escaped)
{
    const schema_field *f = &v->schema->fields[idx];
    if (f->kind != FIELD_URL)
        return;
    if (escaped) {
        rj_decode_string(val, len, &v->val_buf);
        val = v->val_buf.data;
        len = v->val_buf.len;
    }
    const char *why = url_problem(val, len);
    if (why)
        rec_error(v, f->key, f->len,
                  "%s value must be an absolute http:// or https:// URL with a host, but %s",
                  f->type, why);
}

static void next_generation(records_validator *v)
{
    if (++v->gen == 0) {
        memset(v->seen, 0, v->schema->n * sizeof(*v->seen));
        v->gen = 1;
    }
}

static void check_strict(records_validator *v)
{
    if (!v->schema->strict)
        return;
    for (size_t i = 0; i < v->schema->n; i++)
        if (v->seen[i] != v->gen)
            rec_error(v, v->schema->fields[i].key, v->schema->fields[i].len,
                      "missing (schema is strict)");
}

/* ---- JSONL -------------------------------------------------------------------------- */

static void jsonl_member(void *ud, const char *key, size_t key_len, rj_type type, const char *val,
                         size_t val_len, bool val_escaped)
{
    records_validator *v = ud;
    char shown[52];
    long idx = schema_find(v->schema, key, key_len);
    if (idx < 0) {
        key_for_message(shown, key, key_len);
        rec_error(v, key, key_len,
                  "key '%s' is not in the schema; remove it or add it to the dataset schema",
                  shown);
        return;
    }
    if (v->seen[idx] == v->gen) {
        key_for_message(shown, key, key_len);
        rec_error(v, key, key_len, "key '%s' appears more than once; keep only one", shown);
        return;
    }
    v->seen[idx] = v->gen;
    if (type != RJ_STRING) {
        rec_error(v, key, key_len, "must be a string, not %s; put the value in double quotes",
                  rj_type_name(type));
        return;
    }
    check_value(v, (size_t)idx, val, val_len, val_escaped);
}

static bool jsonl_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

static void jsonl_check(records_validator *v, const char *raw, size_t len)
{
    if (!check_text(v, raw, len, "line"))
        return;
    next_generation(v);
    rj_error err;
    if (rj_parse_object(raw, len, &v->key_buf, jsonl_member, v, &err) < 0) {
        /* Member problems before a syntax error are noise: the line must be fixed first. */
        diag_free(&v->errs);
        rec_error(v, NULL, 0, "malformed JSON at byte %zu: %s", err.pos + 1, err.msg);
        return;
    }
    check_strict(v);
}

/* The line in the buffer has ended (at LF or at the end of the input). */
static int jsonl_line_end(records_validator *v)
{
    v->in_record = false;
    uint64_t raw_len = v->rec_bytes;
    if (raw_len > 0 && v->rec_last == '\r')
        raw_len--;
    if (v->overlong || raw_len > v->max_record) {
        overlong_error(v, "line");
        return emit(v, NULL, 0);
    }
    if (jsonl_blank(v->buf, (size_t)raw_len))
        return 0;
    jsonl_check(v, v->buf, (size_t)raw_len);
    return emit(v, v->buf, (size_t)raw_len);
}

static int jsonl_feed(records_validator *v, const char *p, size_t n)
{
    while (n > 0) {
        if (!v->in_record)
            start_record(v);
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) : n;
        rec_append(v, p, seg);
        if (!nl)
            return 0;
        v->newlines++;
        int rc = jsonl_line_end(v);
        if (rc != 0)
            return rc;
        p += seg + 1;
        n -= seg + 1;
    }
    return 0;
}

/* ---- CSV ---------------------------------------------------------------------------- */

static const char *csv_bad_text(csv_bad bad)
{
    switch (bad) {
    case CSV_BAD_QUOTE:
        return "a quote inside an unquoted field; enclose the field in quotes and double "
               "the quote (\"\")";
    case CSV_BAD_AFTER_QUOTE:
        return "text after a closing quote; double a quote inside a quoted field (\"\")";
    case CSV_BAD_CR:
        return "a carriage return (CR) not followed by a line feed; use LF or CRLF line "
               "endings";
    case CSV_OK:
        break;
    }
    return "malformed";
}

static void header_problem(strbuf *sb, size_t *count, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void header_problem(strbuf *sb, size_t *count, const char *fmt, ...)
{
    if (++*count > RECORDS_MAX_HEADER_PROBLEMS)
        return;
    if (sb->len > 0)
        strbuf_puts(sb, "; ");
    va_list ap;
    va_start(ap, fmt);
    strbuf_vprintf(sb, fmt, ap);
    va_end(ap);
}

static void header_columns(records_validator *v, const char *raw, size_t len, strbuf *problems,
                           size_t *count)
{
    const records_schema *s = v->schema;
    csv_fields it;
    csv_fields_init(&it, raw, len);
    const char *f;
    size_t flen;
    bool quoted;
    size_t col = 0;
    char shown[52];
    next_generation(v);
    while (csv_fields_next(&it, &f, &flen, &quoted)) {
        col++;
        if (quoted) {
            csv_unquote(f, flen, &v->key_buf);
            f = v->key_buf.data;
            flen = v->key_buf.len;
        }
        key_for_message(shown, f, flen);
        long idx = schema_find(s, f, flen);
        if (flen > 0 && !v->file_error_field[0] && (idx < 0 || v->seen[idx] == v->gen))
            copy_cut(v->file_error_field, sizeof v->file_error_field, f, flen);
        if (flen == 0)
            header_problem(problems, count, "column %zu has an empty name", col);
        else if (idx < 0)
            header_problem(problems, count, "column %zu '%s' is not in the schema", col, shown);
        else if (v->seen[idx] == v->gen)
            header_problem(problems, count, "column %zu '%s' is a duplicate", col, shown);
        else if (col <= s->n)
            v->col_field[col - 1] = (size_t)idx;
        if (idx >= 0)
            v->seen[idx] = v->gen;
    }
    v->ncols = col;
    if (!s->strict)
        return;
    for (size_t i = 0; i < s->n; i++) {
        if (v->seen[i] != v->gen) {
            key_for_message(shown, s->fields[i].key, s->fields[i].len);
            if (!v->file_error_field[0])
                copy_cut(v->file_error_field, sizeof v->file_error_field, s->fields[i].key,
                         s->fields[i].len);
            header_problem(problems, count, "column '%s' is missing (schema is strict)", shown);
        }
    }
}

/* The first non-blank record is the header; its problems make the whole file unusable. */
static void csv_header(records_validator *v, size_t raw_len)
{
    strbuf problems;
    strbuf_init(&problems);
    size_t count = 0;
    size_t bad;
    bool nul;
    if (v->overlong || raw_len > v->max_record) {
        header_problem(&problems, &count, "it is longer than %zu bytes", v->max_record);
    } else if (!rj_utf8_scan(v->buf, raw_len, &bad, &nul)) {
        header_problem(&problems, &count,
                       nul ? "NUL byte at byte %zu (is this a binary file?)"
                           : "invalid UTF-8 at byte %zu (save the file as UTF-8)",
                       bad + 1);
    } else if (v->bad != CSV_OK) {
        header_problem(&problems, &count, "malformed CSV at byte %llu: %s",
                       (unsigned long long)v->bad_off + 1, csv_bad_text(v->bad));
    } else if (v->csv == CSV_QUOTED) {
        header_problem(&problems, &count, "a quoted name is never closed");
    } else {
        header_columns(v, v->buf, raw_len, &problems, &count);
    }
    if (count > 0) {
        strbuf msg;
        strbuf_init(&msg);
        strbuf_printf(&msg, "CSV header: %s", problems.data);
        if (count > RECORDS_MAX_HEADER_PROBLEMS)
            strbuf_printf(&msg, "; and %zu more problems", count - RECORDS_MAX_HEADER_PROBLEMS);
        strbuf_puts(&msg, "; the first row must name schema fields, each once");
        set_file_error(v, v->rec_line, msg.data);
        strbuf_free(&msg);
    } else {
        v->header = xstrndup(v->buf, raw_len);
        v->header_len = raw_len;
        v->header_done = true;
    }
    strbuf_free(&problems);
}

static void csv_check_row(records_validator *v, const char *raw, size_t len)
{
    if (!check_text(v, raw, len, "record"))
        return;
    if (v->bad != CSV_OK) {
        rec_error(v, NULL, 0, "malformed CSV at byte %llu of the record: %s",
                  (unsigned long long)v->bad_off + 1, csv_bad_text(v->bad));
        return;
    }
    csv_fields it;
    csv_fields_init(&it, raw, len);
    const char *f;
    size_t flen;
    bool quoted;
    size_t n = 0;
    while (csv_fields_next(&it, &f, &flen, &quoted))
        n++;
    if (n != v->ncols) {
        rec_error(v, NULL, 0,
                  "row has %zu field%s, header has %zu; quote fields that contain commas", n,
                  n == 1 ? "" : "s", v->ncols);
        return;
    }
    csv_fields_init(&it, raw, len);
    for (size_t col = 0; csv_fields_next(&it, &f, &flen, &quoted); col++) {
        size_t idx = v->col_field[col];
        /* With a non-strict schema an empty cell is an absent value. */
        if (flen == 0 && !v->schema->strict)
            continue;
        if (quoted && memchr(f, '"', flen)) {
            csv_unquote(f, flen, &v->val_buf);
            f = v->val_buf.data;
            flen = v->val_buf.len;
        }
        check_value(v, idx, f, flen, false);
    }
}

/* The record in the buffer has ended; raw_len excludes its terminator. */
static int csv_record_end(records_validator *v, uint64_t raw_len)
{
    v->in_record = false;
    bool too_long = v->overlong || raw_len > v->max_record;
    if (!too_long && raw_len == 0 && v->csv != CSV_QUOTED)
        return 0; /* a blank line */
    if (!v->header_done) {
        csv_header(v, (size_t)raw_len);
        return 0;
    }
    bool unterminated = v->csv == CSV_QUOTED;
    if (unterminated)
        rec_error(v, NULL, 0,
                  "unterminated quoted field: the quote opened on line %llu is never closed; "
                  "close it with \"",
                  (unsigned long long)v->quote_line);
    if (too_long) {
        overlong_error(v, "record");
        return emit(v, NULL, 0);
    }
    if (!unterminated)
        csv_check_row(v, v->buf, (size_t)raw_len);
    return emit(v, v->buf, (size_t)raw_len);
}

static void csv_mark_bad(records_validator *v, csv_bad bad, uint64_t off)
{
    if (v->bad == CSV_OK) {
        v->bad = bad;
        v->bad_off = off;
    }
}

/* One byte outside a quoted field. Returns true when it ends the record (LF). */
static bool csv_plain_byte(records_validator *v, unsigned char c, uint64_t off)
{
    switch (c) {
    case ',':
        v->csv = CSV_FIELD_START;
        return false;
    case '\n':
        return true;
    case '\r':
        v->csv_cr = true;
        return false;
    case '"':
        csv_mark_bad(v, CSV_BAD_QUOTE, off);
        v->csv = CSV_UNQUOTED;
        return false;
    default:
        v->csv = CSV_UNQUOTED;
        return false;
    }
}

static int csv_feed(records_validator *v, const char *p, size_t n)
{
    size_t seg = 0; /* p[seg..i) belongs to the current record, not yet appended */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!v->in_record) {
            start_record(v);
            seg = i;
        }
        uint64_t off = v->rec_bytes + (i - seg);
        bool end = false;
        if (v->csv_cr) {
            v->csv_cr = false;
            if (c != '\n') {
                csv_mark_bad(v, CSV_BAD_CR, off - 1);
                v->csv = CSV_UNQUOTED;
            }
        }
        switch (v->csv) {
        case CSV_FIELD_START:
            if (c == '"') {
                v->csv = CSV_QUOTED;
                v->quote_line = v->newlines + 1;
            } else {
                end = csv_plain_byte(v, c, off);
            }
            break;
        case CSV_UNQUOTED:
            end = csv_plain_byte(v, c, off);
            break;
        case CSV_QUOTED:
            if (c == '"')
                v->csv = CSV_QUOTE_END;
            else if (c == '\n')
                v->newlines++;
            break;
        case CSV_QUOTE_END:
            if (c == '"') {
                v->csv = CSV_QUOTED;
            } else if (c == ',' || c == '\n' || c == '\r') {
                end = csv_plain_byte(v, c, off);
            } else {
                csv_mark_bad(v, CSV_BAD_AFTER_QUOTE, off);
                v->csv = CSV_UNQUOTED;
            }
            break;
        }
        if (!end)
            continue;
        rec_append(v, p + seg, i - seg);
        seg = i + 1;
        v->newlines++;
        uint64_t raw_len = v->rec_bytes;
        if (raw_len > 0 && v->rec_last == '\r')
            raw_len--;
        int rc = csv_record_end(v, raw_len);
        if (rc != 0)
            return rc;
        if (v->halted) {
            count_newlines(v, p + seg, n - seg);
            return 0;
        }
    }
    if (v->in_record)
        rec_append(v, p + seg, n - seg);
    return 0;
}

static int csv_finish(records_validator *v)
{
    if (!v->in_record)
        return 0;
    uint64_t raw_len = v->rec_bytes;
    if (v->csv_cr && raw_len > 0) /* a CR at the very end terminates the record */
        raw_len--;
    return csv_record_end(v, raw_len);
}

/* ---- feeding ------------------------------------------------------------------------ */

static int feed_data(records_validator *v, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    v->mid_line = p[n - 1] != '\n';
    if (v->halted) {
        count_newlines(v, p, n);
        return 0;
    }
    return v->format == RECORDS_CSV ? csv_feed(v, p, n) : jsonl_feed(v, p, n);
}

/* A byte-order mark: CSV (Excel) files may start with one and it is dropped; in JSONL it
 * is a file error, because a JSON text must not begin with one (RFC 8259 section 8.1) and
 * silently stripping it would upload a file the API may reject. */
static void bom_found(records_validator *v)
{
    v->mid_line = true;
    if (v->format == RECORDS_JSONL)
        set_file_error(v, 1,
                       "the file starts with a UTF-8 byte-order mark (BOM), which JSONL does "
                       "not allow; save the file as UTF-8 without BOM");
}

int records_feed(records_validator *v, const void *data, size_t len)
{
    if (!v || v->finished || (!data && len > 0))
        return -EINVAL;
    if (v->rc != 0)
        return v->rc;
    const char *p = data;
    v->st.bytes += len;
    if (!v->bom_done) {
        while (len > 0 && v->bom_len < 3 && (unsigned char)*p == utf8_bom[v->bom_len]) {
            v->bom[v->bom_len++] = (unsigned char)*p;
            p++;
            len--;
        }
        if (v->bom_len == 3) {
            v->bom_done = true;
            bom_found(v);
        } else if (len > 0) {
            /* Not a BOM: what was held back is ordinary data. */
            v->bom_done = true;
            int rc = feed_data(v, (const char *)v->bom, v->bom_len);
            if (rc != 0)
                return rc;
        } else {
            return 0; /* still a possible BOM prefix */
        }
    }
    return feed_data(v, p, len);
}

int records_finish(records_validator *v)
{
    if (!v)
        return -EINVAL;
    if (v->finished || v->rc != 0)
        return v->rc;
    v->finished = true;
    if (!v->bom_done) {
        v->bom_done = true;
        int rc = feed_data(v, (const char *)v->bom, v->bom_len);
        if (rc != 0)
            return rc;
    }
    if (v->halted)
        return 0;
    int rc = 0;
    if (v->format == RECORDS_CSV)
        rc = csv_finish(v);
    else if (v->in_record)
        rc = jsonl_line_end(v);
    if (rc != 0)
        return rc;
    if (!v->file_error && v->st.records == 0)
        set_file_error(v, 0,
                       v->format == RECORDS_CSV && v->header_done
                           ? "file is empty: no records (only the header row); add data rows"
                           : "file is empty: no records; add at least one record");
    return 0;
}
