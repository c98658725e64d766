/* util: small helpers every module shares: a growable string buffer, wall and monotonic
 * time in milliseconds, RFC 3339 formatting, time-sortable job ids, duration parsing and
 * cJSON accessors that never crash on a missing or mistyped member. Nothing here does I/O
 * beyond reading clocks and /dev/urandom. */
#ifndef BATCHD_UTIL_H
#define BATCHD_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define BD_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Growable NUL-terminated byte buffer. A zeroed struct is an empty buffer.
 * Allocation failure aborts: the daemon cannot do anything useful without memory. */
typedef struct strbuf {
    char *data;
    size_t len;
    size_t cap;
} strbuf;

void strbuf_init(strbuf *sb);
void strbuf_free(strbuf *sb);
void strbuf_reset(strbuf *sb);
void strbuf_append(strbuf *sb, const void *data, size_t len);
void strbuf_puts(strbuf *sb, const char *s);
void strbuf_putc(strbuf *sb, char c);
void strbuf_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void strbuf_vprintf(strbuf *sb, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Hands the buffer to the caller (never NULL) and leaves sb empty. */
char *strbuf_steal(strbuf *sb);

/* Allocation helpers that abort on failure. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* Milliseconds since the Unix epoch (CLOCK_REALTIME) and since an arbitrary point
 * (CLOCK_MONOTONIC). */
int64_t time_now_ms(void);
int64_t time_mono_ms(void);

/* Formats a wall-clock time in ms as "2026-11-29T08:32:45Z" (or with ".123" when
 * with_ms). buf must hold at least 32 bytes. Returns buf. */
char *time_format_rfc3339(int64_t ms, bool with_ms, char *buf, size_t len);
/* Parses RFC 3339 / ISO 8601 UTC times ("2026-11-29T08:32:45Z", optional fraction,
 * "+00:00" offsets). Returns 0 and sets *ms, or -EINVAL. */
int time_parse_rfc3339(const char *s, int64_t *ms);
/* Parses an HTTP-date (RFC 9110 IMF-fixdate, also RFC 850 and asctime forms).
 * Returns 0 and sets *ms, or -EINVAL. */
int time_parse_http_date(const char *s, int64_t *ms);

/* Parses a duration: plain seconds ("30", "1.5") or a number with a suffix
 * ms, s, m, h, d ("500ms", "30s", "5m", "2h"). Returns 0 and sets *ms, or -EINVAL. */
int duration_parse(const char *s, int64_t *ms);
/* Formats a duration for people: "850ms", "12s", "3m05s", "2h10m", "3d4h". */
char *duration_format(int64_t ms, char *buf, size_t len);

/* A job id: 26 characters of Crockford base32 (a ULID): 48 bits of milliseconds then 80
 * random bits, so ids sort by creation time. buf must hold 27 bytes. */
void id_new(int64_t now_ms, char buf[27]);
/* Fills buf with n random bytes from the kernel (getrandom). */
void random_bytes(void *buf, size_t n);
/* A random UUID (version 7: time-ordered) as 36 characters plus NUL. */
void uuid_v7(int64_t now_ms, char buf[37]);

/* cJSON accessors: NULL / default when missing or of another type. */
const char *json_str(const cJSON *obj, const char *key);
bool json_get_int64(const cJSON *obj, const char *key, int64_t *out);
int64_t json_int64(const cJSON *obj, const char *key, int64_t dflt);
bool json_bool(const cJSON *obj, const char *key, bool dflt);
/* Adds key: s, or key: null when s is NULL. */
void json_add_str_or_null(cJSON *obj, const char *key, const char *s);
/* Adds key: v, or key: null when v < 0. */
void json_add_int_or_null(cJSON *obj, const char *key, int64_t v);
/* The one JSON writer: every document batchd writes or sends goes through these. The output
 * is always valid UTF-8 (an invalid byte in a string or key becomes U+FFFD), has no raw
 * control character (DEL and C1 are \u-escaped too) and is one batchd's reader accepts
 * (containers nested deeper than cJSON parses are replaced by a string).
 * Prints compactly; the caller frees with free(). Never NULL (aborts on OOM). */
char *json_print(const cJSON *j);
/* Prints with indentation and a trailing newline; free() it. */
char *json_print_pretty(const cJSON *j);

/* diag: the one list of problems found in a configuration, a job's manifest, its records,
 * its intake check or an API request (rules.h). An entry has a severity, where it is (every
 * part optional: NULL or 0) and a message; lines[i] is entry i as one line,
 * "file:line: message", "file: message" or "message", the text every printer and log line
 * shows. A zeroed diag keeps every entry; with max > 0 it keeps the first max and only counts
 * the rest (dropped); with text_max > 0 a message is cut to text_max - 1 bytes, as snprintf
 * into a buffer of text_max bytes cuts it. */
typedef enum diag_severity { DIAG_ERROR = 0, DIAG_WARNING = 1 } diag_severity;

/* How diag_to_json writes an entry, for lists whose readers know another key order
 * (man/batchd.8.scd, error.json): the default is file, line, column, path, field, message. */
enum {
    DIAG_JSON_PATH_FIRST = 1 << 0, /* "path" before "file" */
    DIAG_JSON_FIELD_NULL = 1 << 1, /* "field": null when the entry has no field */
};

/* Where in a batch_items layout (rules.h): zero-based indices, -1 for the levels below it. */
typedef struct diag_layout {
    int page, row, column, item;
} diag_layout;

typedef struct diag_where {
    const char *file;  /* a file as shown to people */
    uint64_t line;     /* 1-based */
    int column;        /* 1-based */
    const char *path;  /* a JSON path ("dataset.file") */
    const char *field; /* a record's field, or a dataset field an API rule is about */
    int kind;          /* the reporting module's class of problem (rules_kind); 0 by default */
    const char *param; /* the API request member the problem belongs to (rules.h) */
    const diag_layout *layout; /* NULL: not in a layout (every index -1) */
    const char *item_type;     /* the layout item's "type" when known */
    unsigned json;             /* DIAG_JSON_* flags */
} diag_where;

typedef struct diag_entry {
    diag_severity severity;
    char *file;
    uint64_t line;
    int column;
    char *path;
    char *field;
    int kind;
    char *param;
    diag_layout layout;
    char *item_type;
    unsigned json;
    char *message;
} diag_entry;

typedef struct diag {
    char **lines;
    size_t count;
    diag_entry *entries;
    size_t max;
    size_t text_max;
    uint64_t dropped;
} diag;

/* w may be NULL (nowhere in particular); d may be NULL (the problem is not wanted). */
void diag_add(diag *d, diag_severity sev, const diag_where *w, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_vadd(diag *d, diag_severity sev, const diag_where *w, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
/* When entries were dropped: appends one more entry, past max, at w, saying
 * "... and N more<tail>", and clears dropped, for lists whose readers take only entries. */
void diag_add_more(diag *d, const diag_where *w, const char *tail);
/* How many entries are of that kind. */
size_t diag_count_kind(const diag *d, int kind);
/* "... and N more" when entries were dropped, else NULL; free(). */
char *diag_more_text(const diag *d);
/* Appends each entry to array as {file, line, column, path, field, message}, with only the
 * parts it has, in the order its DIAG_JSON_* flags ask, then {"message": "... and N more"}
 * when entries were dropped. */
void diag_to_json(const diag *d, cJSON *array);
/* Frees the entries and leaves d empty (max and text_max are kept). */
void diag_free(diag *d);

/* error.json (man/batchd.8.scd), built in one place for every writer of it. Strings that
 * are NULL become null; errors and api_error are copied (NULL: [] and null); state NULL is
 * "failed"; http_status <= 0 and at_ms <= 0 are null. Keys keep the man page's order. */
typedef struct error_doc {
    const char *job, *id, *state, *stage, *code, *message;
    const cJSON *errors;
    long http_status;
    const cJSON *api_error;
    const char *dataset_id, *batch_id;
    int64_t at_ms;
} error_doc;
cJSON *error_json_new(const error_doc *e);

/* Appends s[0..len) for a terminal or a log line: valid UTF-8 stays, every control
 * character (C0, DEL, C1) and every invalid byte is shown as \xNN. */
void strbuf_put_escaped(strbuf *sb, const char *s, size_t len);
/* The same as a malloc'd string ("" for NULL). */
char *text_escape(const char *s);

/* True when s is valid UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
bool utf8_valid(const char *s, size_t len);
/* Length of the valid UTF-8 sequence at s (n > 0 bytes left) and its code point; 0 when
 * invalid (overlong, surrogate, above U+10FFFF, cut short). */
size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

/* Percent-encodes everything but RFC 3986 unreserved characters, for a path segment or a
 * query value. malloc'd. */
char *url_escape(const char *s);

/* Secrets (the API token and anything holding it, like an Authorization header): wiped
 * with explicit_bzero, which the compiler may not drop as a dead store, before the memory
 * goes back. secret_free wipes strlen(*s) bytes, frees and sets *s to NULL; NULL is fine. */
void secret_wipe(void *p, size_t n);
void secret_free(char **s);

/* Copies src into dst (size n) always NUL-terminating; returns strlen(src). */
size_t strlcpy_bd(char *dst, const char *src, size_t n);

#endif
