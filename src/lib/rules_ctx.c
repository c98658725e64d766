/* rules_ctx: what rules.c and rules_items.c both build on: the checking context
 * and its JSON path, the JSON helpers and the typed member checks (rules_internal.h). Kept
 * apart so that the two checkers depend on this file and never on each other. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/rules.h"
#include "batchd/util.h"
#include "rules_internal.h"

#define RULES_SHOW_MAX 60

const char *const rules_field_types[] = {"text", "image_url", "metadata", "task_group_id", NULL};

/* ---- context and paths ----------------------------------------------------------------- */

void rctx_init(rules_ctx *c, diag *r, const char *prefix, const char *param)
{
    c->r = r;
    strbuf_init(&c->path);
    strbuf_puts(&c->path, prefix ? prefix : "");
    c->param = param;
    c->page = c->row = c->column = c->item = -1;
    c->item_type = NULL;
    c->field = NULL;
}

void rctx_fini(rules_ctx *c)
{
    strbuf_free(&c->path);
}

/* Keys that read unambiguously after a dot; anything else goes in brackets, JSON-quoted. */
static bool key_is_plain(const char *key)
{
    if (!*key)
        return false;
    for (const char *p = key; *p; p++) {
        char ch = *p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

static void append_key(strbuf *sb, const char *key)
{
    if (key_is_plain(key)) {
        if (sb->len)
            strbuf_putc(sb, '.');
        strbuf_puts(sb, key);
        return;
    }
    cJSON *s = cJSON_CreateString(key);
    char *q = s ? json_print(s) : NULL;
    strbuf_putc(sb, '[');
    strbuf_puts(sb, q ? q : "\"?\"");
    strbuf_putc(sb, ']');
    free(q);
    cJSON_Delete(s);
}

size_t rctx_push_key(rules_ctx *c, const char *key)
{
    size_t mark = c->path.len;
    append_key(&c->path, key);
    return mark;
}

size_t rctx_push_index(rules_ctx *c, size_t index)
{
    size_t mark = c->path.len;
    strbuf_printf(&c->path, "[%zu]", index);
    return mark;
}

void rctx_pop(rules_ctx *c, size_t mark)
{
    c->path.len = mark;
    if (c->path.data)
        c->path.data[mark] = '\0';
}

void rctx_issue(rules_ctx *c, rules_kind kind, const char *member, const char *fmt, ...)
{
    size_t mark = c->path.len;
    if (member)
        append_key(&c->path, member);
    const diag_layout layout = {c->page, c->row, c->column, c->item};
    const diag_where w = {.path = c->path.data ? c->path.data : "",
                          .field = c->field,
                          .kind = (int)kind,
                          .param = c->param,
                          .layout = &layout,
                          .item_type = c->item_type};
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(c->r, DIAG_ERROR, &w, fmt, ap);
    va_end(ap);
    rctx_pop(c, mark);
}

/* ---- JSON helpers ---------------------------------------------------------------------- */

const cJSON *rget(const cJSON *obj, const char *key)
{
    if (!cJSON_IsObject(obj))
        return NULL;
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

const char *rjson_kind(const cJSON *v)
{
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsBool(v))
        return "true or false";
    if (cJSON_IsNull(v))
        return "null";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    return "missing";
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

char *rjson_show(const cJSON *v)
{
    if (cJSON_IsArray(v) || cJSON_IsObject(v))
        return xstrdup(rjson_kind(v));
    if (!v)
        return xstrdup("nothing");
    char *text = json_print(v);
    if (!text)
        return xstrdup("?");
    size_t len = strlen(text);
    if (len <= RULES_SHOW_MAX)
        return text;
    size_t cut = utf8_cut(text, len, RULES_SHOW_MAX);
    /* a cut inside an escape sequence would look odd but stays printable */
    char *out = xasprintf("%.*s...%s", (int)cut, text, cJSON_IsString(v) ? "\"" : "");
    free(text);
    return out;
}

char *rshow_str(const char *s)
{
    cJSON *tmp = cJSON_CreateString(s ? s : "");
    char *out = rjson_show(tmp);
    cJSON_Delete(tmp);
    return out;
}

bool rdouble_is_integer(double d, int64_t *out)
{
    /* 2^63 itself does not fit in int64_t */
    if (!isfinite(d) || d != trunc(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
        return false;
    if (out)
        *out = (int64_t)d;
    return true;
}

bool rjson_is_integer(const cJSON *v, int64_t *out)
{
    return cJSON_IsNumber(v) && rdouble_is_integer(v->valuedouble, out);
}

long rutf8_chars(const char *s)
{
    size_t len = strlen(s);
    if (!utf8_valid(s, len))
        return -1;
    long n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    return n;
}

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

bool ruuid_valid(const char *s)
{
    static const size_t dash_at[] = {8, 13, 18, 23};
    if (strlen(s) != 36)
        return false;
    size_t d = 0;
    for (size_t i = 0; i < 36; i++) {
        if (d < BD_ARRAY_LEN(dash_at) && i == dash_at[d]) {
            if (s[i] != '-')
                return false;
            d++;
        } else if (!is_hex(s[i])) {
            return false;
        }
    }
    return true;
}

char *rjoin_or(const char *const *list)
{
    strbuf sb;
    strbuf_init(&sb);
    size_t n = 0;
    while (list[n])
        n++;
    for (size_t i = 0; i < n; i++) {
        if (i)
            strbuf_puts(&sb, i + 1 == n ? " or " : ", ");
        strbuf_puts(&sb, list[i]);
    }
    return strbuf_steal(&sb);
}

/* ---- typed member checks --------------------------------------------------------------- */

void rwrong_type(rules_ctx *c, const char *key, const cJSON *v, const char *want)
{
    rctx_issue(c, RULES_KIND_REQUEST, key, "is %s; it must be %s", rjson_kind(v), want);
}

void rmissing(rules_ctx *c, const char *key, const char *want)
{
    rctx_issue(c, RULES_KIND_REQUEST, key, "is missing; it is required (%s)", want);
}

bool rreq_string(rules_ctx *c, const cJSON *obj, const char *key, const char **out)
{
    *out = NULL;
    const cJSON *v = rget(obj, key);
    if (!v) {
        rmissing(c, key, "a string");
        return false;
    }
    if (!cJSON_IsString(v)) {
        rwrong_type(c, key, v, "a string");
        return false;
    }
    *out = v->valuestring;
    return true;
}

bool ropt_string(rules_ctx *c, const cJSON *obj, const char *key, const char **out)
{
    *out = NULL;
    const cJSON *v = rget(obj, key);
    if (!v)
        return true;
    if (!cJSON_IsString(v)) {
        rwrong_type(c, key, v, "a string");
        return false;
    }
    *out = v->valuestring;
    return true;
}

bool ropt_bool(rules_ctx *c, const cJSON *obj, const char *key, const cJSON **out)
{
    *out = NULL;
    const cJSON *v = rget(obj, key);
    if (!v)
        return true;
    if (!cJSON_IsBool(v)) {
        rwrong_type(c, key, v, "true or false");
        return false;
    }
    *out = v;
    return true;
}

bool ropt_integer(rules_ctx *c, const cJSON *obj, const char *key, int64_t *out, bool *present)
{
    *present = false;
    *out = 0;
    const cJSON *v = rget(obj, key);
    if (!v)
        return true;
    if (!rjson_is_integer(v, out)) {
        if (cJSON_IsNumber(v)) {
            char *shown = rjson_show(v);
            rctx_issue(c, RULES_KIND_REQUEST, key, "is %s; it must be a whole number", shown);
            free(shown);
        } else {
            rwrong_type(c, key, v, "an integer");
        }
        return false;
    }
    *present = true;
    return true;
}

bool ropt_number(rules_ctx *c, const cJSON *obj, const char *key, double *out, bool *present)
{
    *present = false;
    *out = 0;
    const cJSON *v = rget(obj, key);
    if (!v)
        return true;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        rwrong_type(c, key, v, "a finite number");
        return false;
    }
    *out = v->valuedouble;
    *present = true;
    return true;
}

bool rreq_array(rules_ctx *c, const cJSON *obj, const char *key, const cJSON **out)
{
    *out = NULL;
    const cJSON *v = rget(obj, key);
    if (!v) {
        rmissing(c, key, "an array");
        return false;
    }
    if (!cJSON_IsArray(v)) {
        rwrong_type(c, key, v, "an array");
        return false;
    }
    *out = v;
    return true;
}

bool ropt_array(rules_ctx *c, const cJSON *obj, const char *key, const cJSON **out)
{
    *out = NULL;
    const cJSON *v = rget(obj, key);
    if (!v)
        return true;
    if (!cJSON_IsArray(v)) {
        rwrong_type(c, key, v, "an array");
        return false;
    }
    *out = v;
    return true;
}

bool rin_list(const char *s, const char *const *list)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

bool ropt_enum(rules_ctx *c, const cJSON *obj, const char *key, const char *const *allowed,
               const char **out)
{
    const char *s;
    *out = NULL;
    if (!ropt_string(c, obj, key, &s))
        return false;
    if (!s)
        return true;
    if (!rin_list(s, allowed)) {
        char *shown = rjson_show(rget(obj, key));
        char *choices = rjoin_or(allowed);
        rctx_issue(c, RULES_KIND_REQUEST, key, "%s is not allowed; use %s", shown, choices);
        free(choices);
        free(shown);
        return false;
    }
    *out = s;
    return true;
}

/* ---- field types ----------------------------------------------------------------------- */

bool rules_field_type_known(const char *type)
{
    return type && rin_list(type, rules_field_types);
}

bool rules_field_type_displayable(const char *type)
{
    return type && (strcmp(type, "text") == 0 || strcmp(type, "image_url") == 0);
}
