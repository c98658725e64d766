/* metrics: the registry and its text exposition format 0.0.4 (see include/batchd/metrics.h).
 * Series are kept in insertion order, so the output is stable for a given sequence of
 * events (the unit test compares it byte for byte). */
#include "batchd/metrics.h"

#include "batchd/util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct series {
    char *values[METRICS_MAX_LABELS];
    double value;     /* counter, gauge; a histogram's sum */
    uint64_t count;   /* histogram */
    uint64_t *counts; /* histogram: per bucket, not cumulative */
} series;

struct metrics_family {
    const char *name;
    const char *help;
    metrics_type type;
    const char *labels[METRICS_MAX_LABELS];
    size_t n_labels;
    double *buckets;
    size_t n_buckets;
    series *s;
    size_t n, cap;
    uint64_t dropped;
    metrics_family *next;
};

struct metrics_registry {
    metrics_family *first, *last;
};

metrics_registry *metrics_registry_new(void)
{
    return xcalloc(1, sizeof(metrics_registry));
}

static void series_clear(metrics_family *f, series *s)
{
    for (size_t i = 0; i < f->n_labels; i++)
        free(s->values[i]);
    free(s->counts);
}

void metrics_family_clear(metrics_family *f)
{
    for (size_t i = 0; i < f->n; i++)
        series_clear(f, &f->s[i]);
    f->n = 0;
}

void metrics_registry_free(metrics_registry *r)
{
    if (!r)
        return;
    metrics_family *f = r->first;
    while (f) {
        metrics_family *next = f->next;
        metrics_family_clear(f);
        free(f->s);
        free(f->buckets);
        free(f);
        f = next;
    }
    free(r);
}

metrics_family *metrics_family_add(metrics_registry *r, const char *name, metrics_type type,
                                   const char *help, const char *const *labels,
                                   const double *buckets, size_t n_buckets)
{
    metrics_family *f = xcalloc(1, sizeof *f);
    f->name = name;
    f->help = help;
    f->type = type;
    for (size_t i = 0; labels && labels[i] && i < METRICS_MAX_LABELS; i++)
        f->labels[f->n_labels++] = labels[i];
    if (type == METRICS_HISTOGRAM && n_buckets > 0) {
        f->buckets = xcalloc(n_buckets, sizeof(double));
        memcpy(f->buckets, buckets, n_buckets * sizeof(double));
        f->n_buckets = n_buckets;
    }
    if (r->last)
        r->last->next = f;
    else
        r->first = f;
    r->last = f;
    return f;
}

static series *series_get(metrics_family *f, const char *const *values)
{
    for (size_t i = 0; i < f->n; i++) {
        size_t k = 0;
        while (k < f->n_labels &&
               strcmp(f->s[i].values[k], values && values[k] ? values[k] : "") == 0)
            k++;
        if (k == f->n_labels)
            return &f->s[i];
    }
    if (f->n >= METRICS_MAX_SERIES) {
        f->dropped++;
        return NULL;
    }
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->s = xrealloc(f->s, f->cap * sizeof(series));
    }
    series *s = &f->s[f->n++];
    memset(s, 0, sizeof *s);
    for (size_t k = 0; k < f->n_labels; k++)
        s->values[k] = xstrdup(values && values[k] ? values[k] : "");
    if (f->type == METRICS_HISTOGRAM)
        s->counts = xcalloc(f->n_buckets + 1, sizeof(uint64_t));
    return s;
}

int metrics_touch(metrics_family *f, const char *const *values)
{
    return series_get(f, values) ? 0 : -ENOSPC;
}

int metrics_inc(metrics_family *f, const char *const *values, double by)
{
    if (f->type == METRICS_HISTOGRAM || isnan(by) || (f->type == METRICS_COUNTER && by < 0))
        return -EINVAL;
    series *s = series_get(f, values);
    if (!s)
        return -ENOSPC;
    s->value += by;
    return 0;
}

int metrics_set(metrics_family *f, const char *const *values, double v)
{
    if (f->type != METRICS_GAUGE)
        return -EINVAL;
    series *s = series_get(f, values);
    if (!s)
        return -ENOSPC;
    s->value = v;
    return 0;
}

int metrics_observe(metrics_family *f, const char *const *values, double v)
{
    if (f->type != METRICS_HISTOGRAM || isnan(v))
        return -EINVAL;
    series *s = series_get(f, values);
    if (!s)
        return -ENOSPC;
    size_t b = 0;
    while (b < f->n_buckets && v > f->buckets[b])
        b++;
    s->counts[b]++; /* b == n_buckets: only +Inf holds it */
    s->count++;
    s->value += v;
    return 0;
}

/* ---- rendering ---- */

/* The shortest decimal that reads back as v (Prometheus parses values with Go's ParseFloat). */
static void put_number(strbuf *sb, double v)
{
    if (isnan(v)) {
        strbuf_puts(sb, "NaN");
        return;
    }
    if (isinf(v)) {
        strbuf_puts(sb, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    char buf[40];
    if (v == floor(v) && fabs(v) < 1e15) {
        /* Integers as integers: "120", not "1.2e+02". */
        snprintf(buf, sizeof buf, "%.0f", v);
        strbuf_puts(sb, buf);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    strbuf_puts(sb, buf);
}

/* A label value: \\, \" and \n escaped; invalid UTF-8 becomes U+FFFD, since the format is
 * UTF-8 and a scraper rejects the whole page for one bad byte. */
static void put_label_value(strbuf *sb, const char *v)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t n = strlen(v);
    while (n > 0) {
        uint32_t cp;
        size_t len = utf8_next(p, n, &cp);
        if (len == 0) {
            strbuf_puts(sb, "\xEF\xBF\xBD");
            p++;
            n--;
            continue;
        }
        if (*p == '\\')
            strbuf_puts(sb, "\\\\");
        else if (*p == '"')
            strbuf_puts(sb, "\\\"");
        else if (*p == '\n')
            strbuf_puts(sb, "\\n");
        else
            strbuf_append(sb, p, len);
        p += len;
        n -= len;
    }
}

/* HELP text: \\ and \n escaped (the format's rule for docstrings). */
static void put_help(strbuf *sb, const char *h)
{
    for (; *h; h++) {
        if (*h == '\\')
            strbuf_puts(sb, "\\\\");
        else if (*h == '\n')
            strbuf_puts(sb, "\\n");
        else
            strbuf_putc(sb, *h);
    }
}

/* {a="x",b="y"} plus an extra le label for buckets; nothing for no labels. */
static void put_labels(strbuf *sb, const metrics_family *f, const series *s, const char *le)
{
    if (f->n_labels == 0 && !le)
        return;
    strbuf_putc(sb, '{');
    for (size_t k = 0; k < f->n_labels; k++) {
        strbuf_printf(sb, "%s%s=\"", k ? "," : "", f->labels[k]);
        put_label_value(sb, s->values[k]);
        strbuf_putc(sb, '"');
    }
    if (le)
        strbuf_printf(sb, "%sle=\"%s\"", f->n_labels ? "," : "", le);
    strbuf_putc(sb, '}');
}

static void put_sample(strbuf *sb, const metrics_family *f, const series *s, const char *suffix,
                       const char *le, double v)
{
    strbuf_printf(sb, "%s%s", f->name, suffix);
    put_labels(sb, f, s, le);
    strbuf_putc(sb, ' ');
    put_number(sb, v);
    strbuf_putc(sb, '\n');
}

static void put_histogram(strbuf *sb, const metrics_family *f, const series *s)
{
    uint64_t cum = 0;
    for (size_t b = 0; b <= f->n_buckets; b++) {
        cum += s->counts[b];
        strbuf le;
        strbuf_init(&le);
        if (b < f->n_buckets)
            put_number(&le, f->buckets[b]);
        else
            strbuf_puts(&le, "+Inf");
        put_sample(sb, f, s, "_bucket", le.data, (double)cum);
        strbuf_free(&le);
    }
    put_sample(sb, f, s, "_sum", NULL, s->value);
    put_sample(sb, f, s, "_count", NULL, (double)s->count);
}

static const char *type_name(metrics_type t)
{
    return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

char *metrics_registry_render(const metrics_registry *r)
{
    strbuf sb;
    strbuf_init(&sb);
    for (const metrics_family *f = r->first; f; f = f->next) {
        strbuf_printf(&sb, "# HELP %s ", f->name);
        put_help(&sb, f->help);
        strbuf_printf(&sb, "\n# TYPE %s %s\n", f->name, type_name(f->type));
        for (size_t i = 0; i < f->n; i++) {
            if (f->type == METRICS_HISTOGRAM)
                put_histogram(&sb, f, &f->s[i]);
            else
                put_sample(&sb, f, &f->s[i], "", NULL, f->s[i].value);
        }
    }
    return strbuf_steal(&sb);
}
