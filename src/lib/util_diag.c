/* util_diag: the one list of problems (util.h, diag). Each entry keeps its parts (where,
 * severity, message) for callers that build JSON from them, and its one-line rendering for
 * callers that print or log it, so every printer shows the same text. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/util.h"

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static char *render(const diag_entry *e)
{
    if (e->file && e->line > 0)
        return xasprintf("%s:%llu: %s", e->file, (unsigned long long)e->line, e->message);
    if (e->file)
        return xasprintf("%s: %s", e->file, e->message);
    return xstrdup(e->message);
}

/* Appends an entry whatever max says; its message is taken over. */
static void push(diag *d, diag_severity sev, const diag_where *w, char *message)
{
    static const diag_where nowhere;
    static const diag_layout no_layout = {-1, -1, -1, -1};
    if (!w)
        w = &nowhere;
    d->entries = xrealloc(d->entries, (d->count + 1) * sizeof *d->entries);
    d->lines = xrealloc(d->lines, (d->count + 1) * sizeof *d->lines);
    diag_entry *e = &d->entries[d->count];
    e->severity = sev;
    e->file = dup_or_null(w->file);
    e->line = w->line;
    e->column = w->column;
    e->path = dup_or_null(w->path);
    e->field = dup_or_null(w->field);
    e->kind = w->kind;
    e->param = dup_or_null(w->param);
    e->layout = w->layout ? *w->layout : no_layout;
    e->item_type = dup_or_null(w->item_type);
    e->json = w->json;
    if (d->text_max && strlen(message) >= d->text_max)
        message[d->text_max - 1] = '\0';
    e->message = message;
    d->lines[d->count] = render(e);
    d->count++;
}

void diag_vadd(diag *d, diag_severity sev, const diag_where *w, const char *fmt, va_list ap)
{
    if (!d)
        return;
    if (d->max && d->count >= d->max) {
        d->dropped++;
        return;
    }
    push(d, sev, w, xvasprintf(fmt, ap));
}

void diag_add(diag *d, diag_severity sev, const diag_where *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, sev, w, fmt, ap);
    va_end(ap);
}

void diag_add_more(diag *d, const diag_where *w, const char *tail)
{
    if (!d || !d->dropped)
        return;
    push(d, DIAG_ERROR, w,
         xasprintf("... and %llu more%s", (unsigned long long)d->dropped, tail ? tail : ""));
    d->dropped = 0;
}

size_t diag_count_kind(const diag *d, int kind)
{
    size_t n = 0;
    for (size_t i = 0; d && i < d->count; i++)
        if (d->entries[i].kind == kind)
            n++;
    return n;
}

char *diag_more_text(const diag *d)
{
    if (!d->dropped)
        return NULL;
    return xasprintf("... and %llu more", (unsigned long long)d->dropped);
}

static cJSON *entry_json(const diag_entry *e)
{
    bool path_first = (e->json & DIAG_JSON_PATH_FIRST) != 0;
    cJSON *o = cJSON_CreateObject();
    if (e->path && path_first)
        cJSON_AddStringToObject(o, "path", e->path);
    if (e->file)
        cJSON_AddStringToObject(o, "file", e->file);
    if (e->line > 0)
        cJSON_AddNumberToObject(o, "line", (double)e->line);
    if (e->column > 0)
        cJSON_AddNumberToObject(o, "column", e->column);
    if (e->path && !path_first)
        cJSON_AddStringToObject(o, "path", e->path);
    if (e->field)
        cJSON_AddStringToObject(o, "field", e->field);
    else if (e->json & DIAG_JSON_FIELD_NULL)
        cJSON_AddNullToObject(o, "field");
    cJSON_AddStringToObject(o, "message", e->message);
    return o;
}

void diag_to_json(const diag *d, cJSON *array)
{
    for (size_t i = 0; i < d->count; i++) {
        cJSON_AddItemToArray(array, entry_json(&d->entries[i]));
    }
    char *more = diag_more_text(d);
    if (more) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "message", more);
        cJSON_AddItemToArray(array, o);
        free(more);
    }
}

void diag_free(diag *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->count; i++) {
        diag_entry *e = &d->entries[i];
        free(e->file);
        free(e->path);
        free(e->field);
        free(e->param);
        free(e->item_type);
        free(e->message);
        free(d->lines[i]);
    }
    free(d->entries);
    free(d->lines);
    size_t max = d->max;
    size_t text_max = d->text_max;
    memset(d, 0, sizeof *d);
    d->max = max;
    d->text_max = text_max;
}
