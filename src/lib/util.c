/* util: see include/batchd/util.h. */
#include "batchd/util.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

static void oom(void)
{
    fputs("batchd: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p)
        oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom();
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
    strbuf sb = {0};
    strbuf_vprintf(&sb, fmt, ap);
    return strbuf_steal(&sb);
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    return s;
}

void strbuf_init(strbuf *sb)
{
    memset(sb, 0, sizeof(*sb));
}

void strbuf_free(strbuf *sb)
{
    free(sb->data);
    memset(sb, 0, sizeof(*sb));
}

void strbuf_reset(strbuf *sb)
{
    sb->len = 0;
    if (sb->data)
        sb->data[0] = '\0';
}

static void strbuf_reserve(strbuf *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap)
        return;
    size_t cap = sb->cap ? sb->cap : 64;
    while (cap < sb->len + extra + 1)
        cap *= 2;
    sb->data = xrealloc(sb->data, cap);
    sb->cap = cap;
}

void strbuf_append(strbuf *sb, const void *data, size_t len)
{
    strbuf_reserve(sb, len);
    if (len)
        memcpy(sb->data + sb->len, data, len);
    sb->len += len;
    sb->data[sb->len] = '\0';
}

void strbuf_puts(strbuf *sb, const char *s)
{
    strbuf_append(sb, s, strlen(s));
}

void strbuf_putc(strbuf *sb, char c)
{
    strbuf_append(sb, &c, 1);
}

void strbuf_vprintf(strbuf *sb, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    strbuf_reserve(sb, (size_t)n);
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
    sb->len += (size_t)n;
}

void strbuf_printf(strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    strbuf_vprintf(sb, fmt, ap);
    va_end(ap);
}

char *strbuf_steal(strbuf *sb)
{
    char *p = sb->data ? sb->data : xstrdup("");
    memset(sb, 0, sizeof(*sb));
    return p;
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_now_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}

int64_t time_mono_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

char *time_format_rfc3339(int64_t ms, bool with_ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (with_ms)
        snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
    else
        snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

/* A tiny scanner for fixed date formats: sscanf cannot report overflow or trailing junk. */
static bool take_int(const char **p, int min_digits, int max_digits, int *out)
{
    int v = 0, n = 0;
    while (n < max_digits && **p >= '0' && **p <= '9') {
        v = v * 10 + (**p - '0');
        (*p)++;
        n++;
    }
    *out = v;
    return n >= min_digits;
}

static bool take_char(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

static bool take_word(const char **p, char *buf, size_t len)
{
    size_t n = 0;
    while (((**p >= 'A' && **p <= 'Z') || (**p >= 'a' && **p <= 'z')) && n + 1 < len)
        buf[n++] = *(*p)++;
    buf[n] = '\0';
    return n > 0;
}

static void skip_spaces(const char **p)
{
    while (**p == ' ')
        (*p)++;
}

static bool take_hms(const char **p, int *h, int *mi, int *sec)
{
    return take_int(p, 2, 2, h) && take_char(p, ':') && take_int(p, 2, 2, mi) &&
           take_char(p, ':') && take_int(p, 2, 2, sec);
}

static int64_t utc_ms(int y, int mo, int d, int h, int mi, int sec)
{
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    return (int64_t)timegm(&tm) * 1000;
}

static bool fields_valid(int mo, int d, int h, int mi, int sec)
{
    return mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h <= 23 && mi <= 59 && sec <= 60;
}

int time_parse_rfc3339(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, sec;
    const char *p = s;
    if (!s || !take_int(&p, 4, 4, &y) || !take_char(&p, '-') || !take_int(&p, 2, 2, &mo) ||
        !take_char(&p, '-') || !take_int(&p, 2, 2, &d) ||
        !(take_char(&p, 'T') || take_char(&p, 't')) || !take_hms(&p, &h, &mi, &sec) ||
        !fields_valid(mo, d, h, mi, sec))
        return -EINVAL;
    int64_t frac_ms = 0;
    if (take_char(&p, '.')) {
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        if (!digits)
            return -EINVAL;
        for (; digits < 3; digits++)
            frac_ms *= 10;
    }
    int64_t offset_s = 0;
    if (take_char(&p, 'Z') || take_char(&p, 'z')) {
        /* UTC */
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (!take_int(&p, 2, 2, &oh) || !take_char(&p, ':') || !take_int(&p, 2, 2, &om))
            return -EINVAL;
        offset_s = (int64_t)(oh * 3600 + om * 60) * sign;
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    *ms = utc_ms(y, mo, d, h, mi, sec) - offset_s * 1000 + frac_ms;
    return 0;
}

static int month_index(const char *m)
{
    static const char *const names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (int i = 0; i < 12; i++)
        if (strcasecmp(m, names[i]) == 0)
            return i + 1;
    return -1;
}

int time_parse_http_date(const char *s, int64_t *ms)
{
    char wk[16], mon[8], tz[8];
    int d, y, h, mi, sec;
    const char *p = s;
    if (!s || !take_word(&p, wk, sizeof wk))
        return -EINVAL;
    if (take_char(&p, ',')) {
        skip_spaces(&p);
        if (!take_int(&p, 1, 2, &d))
            return -EINVAL;
        if (take_char(&p, ' ')) {
            /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
            if (!take_word(&p, mon, sizeof mon) || !take_char(&p, ' ') || !take_int(&p, 4, 4, &y))
                return -EINVAL;
        } else if (take_char(&p, '-')) {
            /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT; two-digit years per RFC 9110. */
            if (!take_word(&p, mon, sizeof mon) || !take_char(&p, '-') || !take_int(&p, 2, 2, &y))
                return -EINVAL;
            y += y < 70 ? 2000 : 1900;
        } else {
            return -EINVAL;
        }
        if (!take_char(&p, ' ') || !take_hms(&p, &h, &mi, &sec) || !take_char(&p, ' ') ||
            !take_word(&p, tz, sizeof tz) || strcmp(tz, "GMT") != 0)
            return -EINVAL;
    } else {
        /* asctime: Sun Nov  6 08:49:37 1994 */
        skip_spaces(&p);
        if (!take_word(&p, mon, sizeof mon))
            return -EINVAL;
        skip_spaces(&p);
        if (!take_int(&p, 1, 2, &d) || !take_char(&p, ' ') || !take_hms(&p, &h, &mi, &sec) ||
            !take_char(&p, ' ') || !take_int(&p, 4, 4, &y))
            return -EINVAL;
    }
    skip_spaces(&p);
    int m = month_index(mon);
    if (*p || m < 0 || !fields_valid(m, d, h, mi, sec))
        return -EINVAL;
    *ms = utc_ms(y, m, d, h, mi, sec);
    return 0;
}

int duration_parse(const char *s, int64_t *ms)
{
    if (!s)
        return -EINVAL;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s || *s == '-' || *s == '+')
        return -EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -EINVAL;
    double mult = 1000;
    while (*end == ' ')
        end++;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return -EINVAL;
    double r = v * mult;
    if (r > 9.0e15)
        return -EINVAL;
    *ms = (int64_t)(r + 0.5);
    return 0;
}

char *duration_format(int64_t ms, char *buf, size_t len)
{
    if (ms < 0)
        ms = 0;
    int64_t s = ms / 1000;
    if (ms < 1000)
        snprintf(buf, len, "%" PRId64 "ms", ms);
    else if (s < 60)
        snprintf(buf, len, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, (s % 3600) / 60);
    else
        snprintf(buf, len, "%" PRId64 "d%" PRId64 "h", s / 86400, (s % 86400) / 3600);
    return buf;
}

void random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            abort();
        }
        p += r;
        n -= (size_t)r;
    }
}

void id_new(int64_t now_ms, char buf[27])
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    unsigned char bytes[16];
    uint64_t t = (uint64_t)now_ms;
    for (int i = 5; i >= 0; i--) {
        bytes[i] = (unsigned char)(t & 0xff);
        t >>= 8;
    }
    random_bytes(bytes + 6, 10);
    /* 128 bits -> 26 base32 digits, most significant first (the first digit holds 3 bits). */
    int bit = -2; /* 26*5 = 130 bits: two leading zero bits */
    for (int i = 0; i < 26; i++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++, bit++) {
            v <<= 1;
            if (bit >= 0)
                v |= (bytes[bit / 8] >> (7 - bit % 8)) & 1u;
        }
        buf[i] = alphabet[v];
    }
    buf[26] = '\0';
}

void uuid_v7(int64_t now_ms, char buf[37])
{
    unsigned char b[16];
    uint64_t t = (uint64_t)now_ms;
    for (int i = 5; i >= 0; i--) {
        b[i] = (unsigned char)(t & 0xff);
        t >>= 8;
    }
    random_bytes(b + 6, 10);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x70);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

const char *json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

bool json_get_int64(const cJSON *obj, const char *key, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (d != floor(d) || d < -9.0e15 || d > 9.0e15)
        return false;
    *out = (int64_t)d;
    return true;
}

int64_t json_int64(const cJSON *obj, const char *key, int64_t dflt)
{
    int64_t v;
    return json_get_int64(obj, key, &v) ? v : dflt;
}

bool json_bool(const cJSON *obj, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

void json_add_str_or_null(cJSON *obj, const char *key, const char *s)
{
    if (s)
        cJSON_AddStringToObject(obj, key, s);
    else
        cJSON_AddNullToObject(obj, key);
}

void json_add_int_or_null(cJSON *obj, const char *key, int64_t v)
{
    if (v >= 0)
        cJSON_AddNumberToObject(obj, key, (double)v);
    else
        cJSON_AddNullToObject(obj, key);
}

size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t k;
    uint32_t v;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 1;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 2;
        v = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 3;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (n <= k)
        return 0;
    for (size_t i = 1; i <= k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    if ((k == 2 && v < 0x800) || (k == 3 && v < 0x10000) || v > 0x10ffff ||
        (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return k + 1;
}

/* Whether a printed document needs json_repair: invalid UTF-8, DEL or a C1 control. */
static bool json_text_clean(const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x7f) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = utf8_next(s + i, n - i, &cp);
        if (k == 0 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f))
            return false;
        i += k;
    }
    return true;
}

/* cJSON copies string bytes as they are. Bytes >= 0x7f only occur inside strings and keys
 * (everything structural is printable ASCII), so the printed text is repaired in place of the
 * tree: an invalid byte becomes U+FFFD, and DEL and C1 controls, which JSON allows raw, are
 * escaped so that no control character leaves batchd raw. */
static char *json_repair(const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    strbuf sb = {0};
    for (size_t i = 0; i < n;) {
        uint32_t cp = 0;
        size_t k = s[i] < 0x7f ? 1 : utf8_next(s + i, n - i, &cp);
        if (k == 0) {
            strbuf_puts(&sb, "\xef\xbf\xbd");
            i++;
        } else if (s[i] >= 0x7f && (cp == 0x7f || (cp >= 0x80 && cp <= 0x9f))) {
            strbuf_printf(&sb, "\\u%04x", (unsigned)cp);
            i += k;
        } else {
            strbuf_append(&sb, s + i, k);
            i += k;
        }
    }
    return strbuf_steal(&sb);
}

/* The nesting depth of v (containers), counting no further than limit + 1. */
static int json_depth(const cJSON *v, int limit)
{
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v))
        return 0;
    if (limit <= 0)
        return 1;
    int max = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        int d = json_depth(e, limit - 1);
        if (d > max)
            max = d;
    }
    return max + 1;
}

/* Replaces containers nested deeper than cJSON's parser accepts by a string saying so: a
 * document batchd writes must be one it can read back. */
static void json_prune(cJSON *v, int room)
{
    cJSON *e = v ? v->child : NULL;
    while (e) {
        cJSON *next = e->next;
        if (cJSON_IsArray(e) || cJSON_IsObject(e)) {
            if (room <= 1)
                cJSON_ReplaceItemViaPointer(v, e, cJSON_CreateString("[nested too deep]"));
            else
                json_prune(e, room - 1);
        }
        e = next;
    }
}

static char *json_emit(const cJSON *j, bool pretty)
{
    cJSON *copy = NULL;
    if (json_depth(j, CJSON_NESTING_LIMIT) > CJSON_NESTING_LIMIT - 1) {
        copy = cJSON_Duplicate(j, 1);
        if (!copy)
            oom();
        json_prune(copy, CJSON_NESTING_LIMIT - 2);
        j = copy;
    }
    char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    cJSON_Delete(copy);
    if (!s)
        oom();
    char *r;
    if (json_text_clean(s)) {
        r = xstrdup(s);
    } else {
        r = json_repair(s);
    }
    cJSON_free(s);
    return r;
}

char *json_print(const cJSON *j)
{
    return json_emit(j, false);
}

char *json_print_pretty(const cJSON *j)
{
    char *s = json_emit(j, true);
    size_t n = strlen(s);
    s = xrealloc(s, n + 2);
    s[n] = '\n';
    s[n + 1] = '\0';
    return s;
}

void strbuf_put_escaped(strbuf *sb, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0;
        size_t k = utf8_next(s + i, len - i, &cp);
        if (k == 0) {
            strbuf_printf(sb, "\\x%02x", s[i]);
            i++;
        } else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f)) {
            strbuf_printf(sb, "\\x%02x", (unsigned)cp);
            i += k;
        } else {
            strbuf_append(sb, s + i, k);
            i += k;
        }
    }
}

char *text_escape(const char *s)
{
    strbuf sb = {0};
    strbuf_append(&sb, "", 0);
    if (s)
        strbuf_put_escaped(&sb, s, strlen(s));
    return strbuf_steal(&sb);
}

bool utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n) /* the sequence would run past the end */
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

size_t strlcpy_bd(char *dst, const char *src, size_t n)
{
    size_t l = strlen(src);
    if (n) {
        size_t c = l < n - 1 ? l : n - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return l;
}

char *url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    strbuf sb = {0};
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            strbuf_putc(&sb, (char)*p);
        } else {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            strbuf_append(&sb, esc, 3);
        }
    }
    return strbuf_steal(&sb);
}

#if defined(__SANITIZE_THREAD__)
/* ThreadSanitizer's suppressions, built in: a file named in TSAN_OPTIONS would have to be
 * readable by every uid a test runs a program as, and a checkout may be private. libuv closes
 * descriptors with syscall(SYS_close), which TSan does not intercept (google/sanitizers issue
 * 1376), so a descriptor number libuv closed and the kernel then gave to a thread-pool open
 * looks like a race between libuv's last use and its new owner. Only reports with a frame in
 * libuv (not built with TSan) are left out; none within batchd's code alone. */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:libuv.so.1\n";
}
#endif

void secret_wipe(void *p, size_t n)
{
    if (p && n)
        explicit_bzero(p, n);
}

void secret_free(char **s)
{
    if (!*s)
        return;
    secret_wipe(*s, strlen(*s));
    free(*s);
    *s = NULL;
}
