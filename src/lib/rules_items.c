/* rules_items: the batch_items walk (pages -> rows -> columns -> items) and the rules of
 * each item type (OpenAPI BatchItemsItem and the API reference §10.1).
 *
 * Split of 400 and 422: what the OpenAPI schema says (object/array/string types, required
 * members, enums, uri format, the 1..2 columns and non-empty lists the descriptions state)
 * is a REQUEST issue; the rules it only states in prose and the API answers with
 * INVALID_BATCH_ITEMS (dataset_field against the schema, answer_limit against the options,
 * exclusive options, default_unit, file counts and sizes, validation bounds, https) are
 * BATCH_ITEMS issues located by page/row/column/item. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/rules.h"
#include "batchd/util.h"
#include "rules_internal.h"

#define RK_REQ   RULES_KIND_REQUEST
#define RK_ITEMS RULES_KIND_BATCH_ITEMS
/* How many schema keys an "unknown field" message lists before "...". */
#define KNOWN_FIELDS_SHOWN 10

static const char *const item_types[] = {"dataset_field",
                                         "image",
                                         "rich_text",
                                         "free_text",
                                         "free_text_with_unit",
                                         "multiple_choice",
                                         "multiple_choice_with_free_text",
                                         "file_upload",
                                         NULL};
static const char *const content_formats[] = {"html", "markdown", NULL};
static const char *const unit_positions[] = {"prefix", "suffix", NULL};
static const char *const rule_types[] = {"number", "string", NULL};
/* display_position is not in the 2026-08-01 OpenAPI (which would accept anything there as
 * an unnamed member); the CLI and the newer docs define it as intro|outro, and any other
 * value cannot work in production, so it is checked. */
static const char *const display_positions[] = {"intro", "outro", NULL};

/* dataset_field names already shown on the current page (pointers into the request). */
typedef struct page_fields {
    const char **names;
    size_t count, cap;
} page_fields;

static bool page_fields_has(const page_fields *pf, const char *name)
{
    for (size_t i = 0; i < pf->count; i++)
        if (strcmp(pf->names[i], name) == 0)
            return true;
    return false;
}

static void page_fields_add(page_fields *pf, const char *name)
{
    if (pf->count == pf->cap) {
        pf->cap = pf->cap ? pf->cap * 2 : 8;
        pf->names = xrealloc(pf->names, pf->cap * sizeof *pf->names);
    }
    pf->names[pf->count++] = name;
}

typedef struct walk {
    rules_ctx *c;
    const cJSON *fields; /* the schema's fields when populated, else NULL */
    page_fields seen;
} walk;

/* ---- small shared checks --------------------------------------------------------------- */

static void check_id(rules_ctx *c, const cJSON *obj)
{
    const char *id;
    (void)ropt_string(c, obj, "id", &id);
}

static void check_strings(rules_ctx *c, const cJSON *obj, const char *const *keys)
{
    for (size_t i = 0; keys[i]; i++) {
        const char *s;
        (void)ropt_string(c, obj, keys[i], &s);
    }
}

static bool require_enum(rules_ctx *c, const cJSON *obj, const char *key,
                         const char *const *allowed, const char **out)
{
    *out = NULL;
    if (!rget(obj, key)) {
        char *choices = rjoin_or(allowed);
        rctx_issue(c, RK_REQ, key, "is missing; it is required (%s)", choices);
        free(choices);
        return false;
    }
    return ropt_enum(c, obj, key, allowed, out);
}

static bool require_integer(rules_ctx *c, const cJSON *obj, const char *key, int64_t *out)
{
    bool present;
    if (!rget(obj, key)) {
        rctx_issue(c, RK_REQ, key, "is missing; it is required (an integer)");
        return false;
    }
    return ropt_integer(c, obj, key, out, &present) && present;
}

/* An option's or unit's `value`: string, number or boolean (required). */
static bool check_choice_value(rules_ctx *c, const cJSON *obj)
{
    const cJSON *v = rget(obj, "value");
    if (!v) {
        rctx_issue(c, RK_REQ, "value", "is missing; it is required (a string, number or boolean)");
        return false;
    }
    if (cJSON_IsString(v) || cJSON_IsBool(v) || (cJSON_IsNumber(v) && isfinite(v->valuedouble)))
        return true;
    rctx_issue(c, RK_REQ, "value", "is %s; it must be a string, number or boolean", rjson_kind(v));
    return false;
}

static bool is_object_or_report(rules_ctx *c, const cJSON *v, const char *shape)
{
    if (cJSON_IsObject(v))
        return true;
    rctx_issue(c, RK_REQ, NULL, "is %s; it must be an object %s", rjson_kind(v), shape);
    return false;
}

/* ---- validation rule ------------------------------------------------------------------- */

static void check_string_bound(rules_ctx *c, const char *key, double v)
{
    int64_t n;
    if (!rdouble_is_integer(v, &n) || n < 0)
        rctx_issue(c, RK_ITEMS, key,
                   "validation.%s %g is not a character count; with type \"string\" it must be "
                   "a whole number, 0 or more",
                   key, v);
}

/* min/max: number or null. Returns whether a usable number is there. */
static bool rule_bound(rules_ctx *c, const cJSON *rule, const char *key, double *out)
{
    const cJSON *v = rget(rule, key);
    if (!v || cJSON_IsNull(v))
        return false;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        rctx_issue(c, RK_REQ, key, "is %s; it must be a number or null", rjson_kind(v));
        return false;
    }
    *out = v->valuedouble;
    return true;
}

static void check_validation(rules_ctx *c, const cJSON *obj)
{
    const cJSON *rule = rget(obj, "validation");
    if (!rule)
        return;
    size_t mark = rctx_push_key(c, "validation");
    if (!is_object_or_report(c, rule, "{type: number|string, min?, max?}"))
        goto done;
    const char *type;
    bool type_ok = require_enum(c, rule, "type", rule_types, &type);
    double lo = 0, hi = 0;
    bool has_lo = rule_bound(c, rule, "min", &lo);
    bool has_hi = rule_bound(c, rule, "max", &hi);
    if (type_ok && strcmp(type, "string") == 0) {
        if (has_lo)
            check_string_bound(c, "min", lo);
        if (has_hi)
            check_string_bound(c, "max", hi);
    }
    if (has_lo && has_hi && lo > hi)
        rctx_issue(c, RK_ITEMS, "min",
                   "validation.min %g is greater than validation.max %g; "
                   "min must be less than or equal to max",
                   lo, hi);
done:
    rctx_pop(c, mark);
}

/* ---- dataset_field --------------------------------------------------------------------- */

static char *known_fields(const cJSON *fields)
{
    strbuf sb;
    strbuf_init(&sb);
    size_t n = 0;
    for (const cJSON *f = fields->child; f; f = f->next) {
        if (!rules_field_type_displayable(json_str(f, "type")))
            continue;
        if (n == KNOWN_FIELDS_SHOWN) {
            strbuf_puts(&sb, ", ...");
            break;
        }
        char *shown = rshow_str(f->string);
        strbuf_printf(&sb, "%s%s", n++ ? ", " : "", shown);
        free(shown);
    }
    if (n == 0)
        strbuf_puts(&sb, "none");
    return strbuf_steal(&sb);
}

static void check_dataset_field(walk *w, const cJSON *item)
{
    rules_ctx *c = w->c;
    const char *name;
    if (!rreq_string(c, item, "field", &name))
        return;
    c->field = name;
    char *shown = rshow_str(name);
    if (!w->fields) {
        rctx_issue(c, RK_ITEMS, "field",
                   "dataset_field %s needs an attached V4 dataset with a schema; attach one "
                   "(dataset_id) whose schema defines this field",
                   shown);
    } else {
        const cJSON *desc = rget(w->fields, name);
        const char *type = json_str(desc, "type");
        if (!desc) {
            char *known = known_fields(w->fields);
            rctx_issue(c, RK_ITEMS, "field",
                       "dataset_field %s is not a field of the dataset's schema; fields that "
                       "can be shown: %s",
                       shown, known);
            free(known);
        } else if (!rules_field_type_displayable(type)) {
            rctx_issue(c, RK_ITEMS, "field",
                       "dataset_field %s is a %s field; only text and image_url fields can be "
                       "shown",
                       shown, rules_field_type_known(type) ? type : "mistyped");
        }
    }
    if (page_fields_has(&w->seen, name))
        rctx_issue(c, RK_ITEMS, "field",
                   "dataset_field %s is already shown on page %d; a field may appear at most "
                   "once per page",
                   shown, c->page);
    else
        page_fields_add(&w->seen, name);
    free(shown);
    c->field = NULL;
}

/* ---- content blocks -------------------------------------------------------------------- */

static bool uri_char_ok(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7f && !strchr("\"<>\\^`{|}", ch);
}

/* RFC 3986 in outline: scheme ":" then URI characters only. */
static bool looks_like_uri(const char *s)
{
    const char *p = s;
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        return false;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
           *p == '+' || *p == '-' || *p == '.')
        p++;
    if (*p != ':')
        return false;
    for (; *p; p++)
        if (!uri_char_ok((unsigned char)*p))
            return false;
    return true;
}

static bool is_https(const char *s)
{
    if (strncasecmp(s, "https://", 8) != 0)
        return false;
    char host = s[8];
    return host && host != '/' && host != '?' && host != '#';
}

static void check_image(walk *w, const cJSON *item)
{
    static const char *const optional[] = {"caption", NULL};
    rules_ctx *c = w->c;
    const char *url, *alt;
    if (rreq_string(c, item, "url", &url)) {
        char *shown = rjson_show(rget(item, "url"));
        if (!looks_like_uri(url))
            rctx_issue(c, RK_REQ, "url", "%s is not a URL; give an https:// image URL", shown);
        else if (!is_https(url))
            rctx_issue(c, RK_ITEMS, "url", "url %s is not an https URL; images must use https://",
                       shown);
        free(shown);
    }
    (void)rreq_string(c, item, "alt_text", &alt);
    check_strings(c, item, optional);
}

static void check_rich_text(walk *w, const cJSON *item)
{
    rules_ctx *c = w->c;
    const char *content, *format;
    (void)rreq_string(c, item, "content", &content);
    (void)ropt_enum(c, item, "content_format", content_formats, &format);
}

static void check_free_text(walk *w, const cJSON *item)
{
    static const char *const optional[] = {"helper_text", "placeholder_text_input", NULL};
    rules_ctx *c = w->c;
    const char *desc;
    (void)rreq_string(c, item, "description", &desc);
    check_strings(c, item, optional);
    check_validation(c, item);
}

/* ---- free_text_with_unit --------------------------------------------------------------- */

/* default_unit is a string while unit values may be numbers or booleans: compare by the
 * value's JSON text, so "5" matches 5 and "true" matches true. */
static bool unit_value_matches(const cJSON *value, const char *want)
{
    if (cJSON_IsString(value))
        return strcmp(value->valuestring, want) == 0;
    if (cJSON_IsBool(value))
        return strcmp(want, cJSON_IsTrue(value) ? "true" : "false") == 0;
    if (cJSON_IsNumber(value)) {
        char *end;
        double d = strtod(want, &end);
        return *want && !*end && end != want && d == value->valuedouble;
    }
    return false;
}

static char *unit_values(const cJSON *units)
{
    strbuf sb;
    strbuf_init(&sb);
    size_t n = 0;
    for (const cJSON *u = units->child; u; u = u->next) {
        const cJSON *v = rget(u, "value");
        if (!v)
            continue;
        if (n == KNOWN_FIELDS_SHOWN) {
            strbuf_puts(&sb, ", ...");
            break;
        }
        char *shown = rjson_show(v);
        strbuf_printf(&sb, "%s%s", n++ ? ", " : "", shown);
        free(shown);
    }
    return strbuf_steal(&sb);
}

static void check_unit_options(walk *w, const cJSON *units, const char *default_unit)
{
    rules_ctx *c = w->c;
    bool matched = false;
    size_t idx = 0;
    for (const cJSON *u = units->child; u; u = u->next, idx++) {
        size_t mark = rctx_push_key(c, "unit_options");
        rctx_push_index(c, idx);
        if (is_object_or_report(c, u, "{label, value, validation?}")) {
            const char *label;
            (void)rreq_string(c, u, "label", &label);
            if (check_choice_value(c, u) && default_unit &&
                unit_value_matches(rget(u, "value"), default_unit))
                matched = true;
            check_validation(c, u);
        }
        rctx_pop(c, mark);
    }
    if (idx == 0)
        rctx_issue(c, RK_ITEMS, "unit_options",
                   "unit_options is empty; give at least one unit to choose from");
    else if (default_unit && !matched) {
        char *values = unit_values(units);
        char *shown = rshow_str(default_unit);
        rctx_issue(c, RK_ITEMS, "default_unit",
                   "default_unit %s matches no unit_options value; use one of %s", shown, values);
        free(shown);
        free(values);
    }
}

static void check_free_text_with_unit(walk *w, const cJSON *item)
{
    static const char *const optional[] = {"helper_text", "placeholder_text_input", NULL};
    rules_ctx *c = w->c;
    const char *desc, *position, *default_unit;
    const cJSON *units;
    (void)rreq_string(c, item, "description", &desc);
    check_strings(c, item, optional);
    (void)require_enum(c, item, "unit_position", unit_positions, &position);
    bool default_ok = ropt_string(c, item, "default_unit", &default_unit);
    if (rreq_array(c, item, "unit_options", &units))
        check_unit_options(w, units, default_ok ? default_unit : NULL);
}

/* ---- multiple choice ------------------------------------------------------------------- */

/* Checks one option; returns 1 when it is exclusive, 0 when not, -1 when unusable. */
static int check_option(rules_ctx *c, const cJSON *opt, bool with_heading)
{
    if (!is_object_or_report(c, opt,
                             with_heading ? "{label, value, heading, exclusive?}"
                                          : "{label, value, exclusive?}"))
        return -1;
    const char *s;
    bool ok = rreq_string(c, opt, "label", &s);
    ok = check_choice_value(c, opt) && ok;
    if (with_heading)
        ok = rreq_string(c, opt, "heading", &s) && ok;
    const cJSON *exclusive;
    if (!ropt_bool(c, opt, "exclusive", &exclusive) || !ok)
        return -1;
    return cJSON_IsTrue(exclusive) ? 1 : 0;
}

static void answer_limit_rule(rules_ctx *c, int64_t limit, size_t n)
{
    char allowed[64];
    if (n <= 1)
        snprintf(allowed, sizeof allowed, "1 or -1");
    else if (n == 2)
        snprintf(allowed, sizeof allowed, "1, -1 or 2");
    else
        snprintf(allowed, sizeof allowed, "1, -1 or 2..%zu", n);
    if (limit == 0 || limit < -1)
        rctx_issue(c, RK_ITEMS, "answer_limit",
                   "answer_limit %lld is not allowed; use %s (1: single choice, -1: no limit)",
                   (long long)limit, allowed);
    else if (limit > 0 && (uint64_t)limit > n)
        rctx_issue(c, RK_ITEMS, "answer_limit",
                   "answer_limit %lld exceeds the %zu option%s; use %s", (long long)limit, n,
                   n == 1 ? "" : "s", allowed);
}

static void check_options(walk *w, const cJSON *options, bool limit_ok, int64_t limit,
                          bool with_heading)
{
    rules_ctx *c = w->c;
    size_t n = 0, exclusive = 0, usable = 0;
    for (const cJSON *o = options->child; o; o = o->next, n++) {
        size_t mark = rctx_push_key(c, "options");
        rctx_push_index(c, n);
        int ex = check_option(c, o, with_heading);
        if (ex >= 0)
            usable++;
        if (ex == 1) {
            exclusive++;
            if (limit_ok && limit == 1)
                rctx_issue(c, RK_ITEMS, "exclusive",
                           "option %zu is exclusive, but exclusive options are not allowed when "
                           "answer_limit is 1; remove exclusive or allow more answers",
                           n);
        }
        rctx_pop(c, mark);
    }
    if (n == 0)
        rctx_issue(c, RK_ITEMS, "options", "options is empty; give at least one option");
    /* with no options only the value itself can be judged */
    if (limit_ok && (n > 0 || limit == 0 || limit < -1))
        answer_limit_rule(c, limit, n);
    if (exclusive > 0 && exclusive == usable && usable == n)
        rctx_issue(c, RK_ITEMS, "options",
                   "every option is exclusive; at least one option must be non-exclusive");
}

static void check_multiple_choice(walk *w, const cJSON *item, bool with_heading)
{
    static const char *const optional[] = {"helper_text", "placeholder_text_input", NULL};
    rules_ctx *c = w->c;
    const char *desc;
    const cJSON *dropdown, *options;
    int64_t limit = 0;
    (void)rreq_string(c, item, "description", &desc);
    check_strings(c, item, optional);
    (void)ropt_bool(c, item, "disable_dropdown", &dropdown);
    bool limit_ok = require_integer(c, item, "answer_limit", &limit);
    if (rreq_array(c, item, "options", &options))
        check_options(w, options, limit_ok, limit, with_heading);
}

/* ---- file_upload ----------------------------------------------------------------------- */

static void check_file_types(rules_ctx *c, const cJSON *types)
{
    size_t idx = 0;
    for (const cJSON *t = types->child; t; t = t->next, idx++) {
        size_t mark = rctx_push_key(c, "accepted_file_types");
        rctx_push_index(c, idx);
        if (!cJSON_IsString(t)) {
            rctx_issue(c, RK_REQ, NULL, "is %s; it must be a string like \".jpg\"", rjson_kind(t));
        } else if (t->valuestring[0] != '.' || t->valuestring[1] == '\0') {
            char *shown = rjson_show(t);
            rctx_issue(c, RK_ITEMS, NULL,
                       "accepted_file_types entry %s is not a file extension; write it with a "
                       "leading dot, like \".pdf\"",
                       shown);
            free(shown);
        }
        rctx_pop(c, mark);
    }
    if (idx == 0)
        rctx_issue(c, RK_ITEMS, "accepted_file_types",
                   "accepted_file_types is empty; list at least one extension or leave it out "
                   "for the default "
                   "(.jpg .jpeg .png .heic .heif)");
}

static void check_file_counts(rules_ctx *c, const cJSON *item)
{
    int64_t lo = 1, hi = 10; /* the API's defaults */
    bool has_lo, has_hi;
    bool lo_ok = ropt_integer(c, item, "min_file_count", &lo, &has_lo);
    bool hi_ok = ropt_integer(c, item, "max_file_count", &hi, &has_hi);
    if (!has_lo)
        lo = 1;
    if (!has_hi)
        hi = 10;
    if (lo_ok && has_lo && lo < 1)
        rctx_issue(c, RK_ITEMS, "min_file_count", "min_file_count %lld must be 1 or more",
                   (long long)lo);
    else if (lo_ok && hi_ok && (has_lo || has_hi) && lo > hi)
        rctx_issue(c, RK_ITEMS, has_lo ? "min_file_count" : "max_file_count",
                   "min_file_count %lld%s is greater than max_file_count %lld%s; the minimum "
                   "must not exceed the maximum",
                   (long long)lo, has_lo ? "" : " (the default)", (long long)hi,
                   has_hi ? "" : " (the default)");
}

static void check_file_upload(walk *w, const cJSON *item)
{
    static const char *const optional[] = {"helper_text", NULL};
    rules_ctx *c = w->c;
    const char *desc;
    const cJSON *types;
    double size;
    bool has_size;
    (void)rreq_string(c, item, "description", &desc);
    check_strings(c, item, optional);
    if (ropt_array(c, item, "accepted_file_types", &types) && types)
        check_file_types(c, types);
    if (ropt_number(c, item, "max_file_size_mb", &size, &has_size) && has_size && !(size > 0))
        rctx_issue(c, RK_ITEMS, "max_file_size_mb", "max_file_size_mb %g must be more than 0",
                   size);
    check_file_counts(c, item);
}

/* ---- the walk -------------------------------------------------------------------------- */

static void check_item(walk *w, const cJSON *item)
{
    rules_ctx *c = w->c;
    if (!is_object_or_report(c, item, "with a \"type\""))
        return;
    const char *type;
    if (!rreq_string(c, item, "type", &type))
        return;
    c->item_type = type;
    if (strcmp(type, "dataset_field") == 0) {
        check_dataset_field(w, item); /* the OpenAPI declares no id on this variant */
        return;
    }
    if (strcmp(type, "multiple_choice") == 0 || strcmp(type, "multiple_choice_with_free_text") == 0)
        check_multiple_choice(w, item, strcmp(type, "multiple_choice") != 0);
    else if (strcmp(type, "image") == 0)
        check_image(w, item);
    else if (strcmp(type, "rich_text") == 0)
        check_rich_text(w, item);
    else if (strcmp(type, "free_text") == 0)
        check_free_text(w, item);
    else if (strcmp(type, "free_text_with_unit") == 0)
        check_free_text_with_unit(w, item);
    else if (strcmp(type, "file_upload") == 0)
        check_file_upload(w, item);
    else {
        char *shown = rjson_show(rget(item, "type"));
        char *choices = rjoin_or(item_types);
        rctx_issue(c, RK_REQ, "type", "%s is not an item type; use %s", shown, choices);
        free(choices);
        free(shown);
        return;
    }
    check_id(c, item);
}

/* Walks one list member of a layout level ("rows", "columns", "items"): required, an
 * array, and with at least `min` (and, when max > 0, at most `max`) entries. */
static const cJSON *level_list(rules_ctx *c, const cJSON *obj, const char *key, size_t min,
                               size_t max, const char *what)
{
    const cJSON *list;
    if (!rreq_array(c, obj, key, &list))
        return NULL;
    size_t n = (size_t)cJSON_GetArraySize(list);
    if (n < min || (max && n > max)) {
        if (max)
            rctx_issue(c, RK_REQ, key, "has %zu %s; a row has %zu or %zu columns side by side", n,
                       what, min, max);
        else
            rctx_issue(c, RK_REQ, key, "is empty; give at least one %s", what);
    }
    return list;
}

static void check_column(walk *w, const cJSON *column)
{
    rules_ctx *c = w->c;
    if (!is_object_or_report(c, column, "{items: [...]}"))
        return;
    check_id(c, column);
    const cJSON *items = level_list(c, column, "items", 1, 0, "item");
    size_t idx = 0;
    for (const cJSON *it = items ? items->child : NULL; it; it = it->next, idx++) {
        size_t mark = rctx_push_key(c, "items");
        rctx_push_index(c, idx);
        c->item = (int)idx;
        check_item(w, it);
        c->item = -1;
        c->item_type = NULL;
        rctx_pop(c, mark);
    }
}

static void check_row(walk *w, const cJSON *row)
{
    rules_ctx *c = w->c;
    if (!is_object_or_report(c, row, "{columns: [...]}"))
        return;
    check_id(c, row);
    const cJSON *columns = level_list(c, row, "columns", 1, 2, "columns");
    size_t idx = 0;
    for (const cJSON *col = columns ? columns->child : NULL; col; col = col->next, idx++) {
        size_t mark = rctx_push_key(c, "columns");
        rctx_push_index(c, idx);
        c->column = (int)idx;
        check_column(w, col);
        c->column = -1;
        rctx_pop(c, mark);
    }
}

static void check_page(walk *w, const cJSON *page)
{
    rules_ctx *c = w->c;
    if (!is_object_or_report(c, page, "{rows: [...]}"))
        return;
    check_id(c, page);
    const char *position;
    (void)ropt_enum(c, page, "display_position", display_positions, &position);
    const cJSON *rows = level_list(c, page, "rows", 1, 0, "row");
    w->seen.count = 0;
    size_t idx = 0;
    for (const cJSON *row = rows ? rows->child : NULL; row; row = row->next, idx++) {
        size_t mark = rctx_push_key(c, "rows");
        rctx_push_index(c, idx);
        c->row = (int)idx;
        check_row(w, row);
        c->row = -1;
        rctx_pop(c, mark);
    }
}

/* The schema's fields when it can back dataset_field items: an object with fields. */
static const cJSON *populated_fields(const cJSON *schema)
{
    const cJSON *fields = rget(schema, "fields");
    return cJSON_IsObject(fields) && fields->child ? fields : NULL;
}

void rules_items_walk(rules_ctx *c, const cJSON *batch_items, const cJSON *schema)
{
    if (!batch_items || cJSON_IsNull(batch_items))
        return; /* the OpenAPI allows null: no layout */
    if (!cJSON_IsArray(batch_items)) {
        rctx_issue(c, RK_REQ, NULL, "is %s; it must be an array of pages or null",
                   rjson_kind(batch_items));
        return;
    }
    if (!batch_items->child) {
        rctx_issue(c, RK_REQ, NULL, "is empty; give at least one page, or leave batch_items out");
        return;
    }
    walk w = {.c = c, .fields = populated_fields(schema), .seen = {0}};
    size_t idx = 0;
    for (const cJSON *page = batch_items->child; page; page = page->next, idx++) {
        size_t mark = rctx_push_index(c, idx);
        c->page = (int)idx;
        check_page(&w, page);
        c->page = -1;
        rctx_pop(c, mark);
    }
    free(w.seen.names);
}

void rules_check_batch_items(const cJSON *batch_items, const cJSON *schema, const char *prefix,
                             diag *r)
{
    rules_ctx c;
    rctx_init(&c, r, prefix, "batch_items");
    rules_items_walk(&c, batch_items, schema);
    rctx_fini(&c);
}
