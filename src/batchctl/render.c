/* render: how batchctl shows jobs to people. Alignment is computed on the visible text, so
 * colour sequences (added only when asked) never shift columns. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchctl.h"
#include "batchd/util.h"

struct ctl_table {
    size_t ncols;
    size_t nrows; /* including the header */
    char **text;  /* nrows * ncols */
    const char **color;
    size_t filled; /* cells in the current row */
};

ctl_table *ctl_table_new(size_t ncols, const char *const *headers)
{
    ctl_table *t = xcalloc(1, sizeof(*t));
    t->ncols = ncols;
    ctl_table_row(t);
    for (size_t i = 0; i < ncols; i++)
        ctl_table_cell(t, headers[i], NULL);
    return t;
}

void ctl_table_free(ctl_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->text[i]);
    free(t->text);
    free(t->color);
    free(t);
}

void ctl_table_row(ctl_table *t)
{
    t->nrows++;
    t->text = xrealloc(t->text, t->nrows * t->ncols * sizeof(*t->text));
    t->color = xrealloc(t->color, t->nrows * t->ncols * sizeof(*t->color));
    for (size_t i = 0; i < t->ncols; i++) {
        t->text[(t->nrows - 1) * t->ncols + i] = NULL;
        t->color[(t->nrows - 1) * t->ncols + i] = NULL;
    }
    t->filled = 0;
}

void ctl_table_cell(ctl_table *t, const char *text, const char *color)
{
    if (t->filled >= t->ncols)
        return;
    size_t at = (t->nrows - 1) * t->ncols + t->filled++;
    t->text[at] = xstrdup(text ? text : "");
    t->color[at] = color;
}

/* Display width: code points, so that UTF-8 names do not break alignment. */
static size_t width_of(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

void ctl_table_print(const ctl_table *t, FILE *out, bool color)
{
    size_t *w = xcalloc(t->ncols, sizeof(*w));
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->text[r * t->ncols + c];
            size_t cw = s ? width_of(s) : 0;
            if (cw > w[c])
                w[c] = cw;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->text[r * t->ncols + c];
            const char *col = r == 0 ? CTL_BOLD : t->color[r * t->ncols + c];
            if (!s)
                s = "";
            bool last = c + 1 == t->ncols;
            if (color && col)
                fprintf(out, "%s%s%s", col, s, CTL_RESET);
            else
                fputs(s, out);
            if (!last)
                fprintf(out, "%*s", (int)(w[c] - width_of(s) + 2), "");
        }
        fputc('\n', out);
    }
    free(w);
}

const char *ctl_state_color(const char *state)
{
    if (!state)
        return NULL;
    if (strcmp(state, "ready") == 0)
        return CTL_GREEN;
    if (strcmp(state, "failed") == 0)
        return CTL_RED;
    if (strcmp(state, "cancelled") == 0)
        return CTL_DIM;
    if (strcmp(state, "queued") == 0)
        return NULL;
    return CTL_BLUE;
}

bool ctl_job_finished(const cJSON *job)
{
    const char *dir = json_str(job, "dir");
    return ctl_state_finished(json_str(job, "state")) && !(dir && strncmp(dir, "active/", 7) == 0);
}

bool ctl_state_finished(const char *state)
{
    return state && (strcmp(state, "ready") == 0 || strcmp(state, "failed") == 0 ||
                     strcmp(state, "cancelled") == 0);
}

char *ctl_format_bytes(int64_t n, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < BD_ARRAY_LEN(units)) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%" PRId64 " B", n);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

int64_t ctl_since(const cJSON *job, const char *key, int64_t now_ms)
{
    const char *s = json_str(job, key);
    int64_t t;
    if (!s || time_parse_rfc3339(s, &t) < 0)
        return -1;
    return now_ms - t;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static size_t common_prefix(const char *a, const char *b)
{
    size_t n = 0;
    while (a[n] && a[n] == b[n])
        n++;
    return n;
}

size_t ctl_short_id_len(const cJSON *jobs)
{
    /* Sorted, the longest prefix any id shares is the longest shared with a neighbour. */
    size_t n = (size_t)cJSON_GetArraySize(jobs), k = 0, len = CTL_SHORT_ID_MIN;
    const char **ids = xcalloc(n + 1, sizeof(*ids));
    const cJSON *j;
    cJSON_ArrayForEach(j, jobs)
    {
        if (json_str(j, "id"))
            ids[k++] = json_str(j, "id");
    }
    qsort(ids, k, sizeof(*ids), cmp_str);
    for (size_t i = 1; i < k; i++) {
        size_t c = common_prefix(ids[i - 1], ids[i]);
        if (c + 1 > len)
            len = c + 1;
    }
    free(ids);
    return len;
}

const char *ctl_short_id(const char *id, size_t len, char *buf, size_t buflen)
{
    if (!id)
        return "-";
    snprintf(buf, buflen, "%.*s", (int)len, id);
    return buf;
}

/* An append job's sync, as the Job object says: its status, or "requested" before one. */
static const char *sync_status(const cJSON *job)
{
    const char *st = json_str(cJSON_GetObjectItemCaseSensitive(job, "append_to"), "sync_status");
    return st ? st : "requested";
}

static const char *or_q(const char *s)
{
    return s ? s : "?";
}

char *ctl_append_text(const cJSON *job, bool with_sync, char *buf, size_t len)
{
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(job, "append_to");
    buf[0] = '\0';
    if (!cJSON_IsObject(at))
        return buf;
    const char *id = json_str(at, "id");
    int n;
    if (id)
        n = snprintf(buf, len, "job %s (%s)", or_q(json_str(at, "job")), id);
    else
        n = snprintf(buf, len, "batch %s (dataset %s)", or_q(json_str(at, "batch_id")),
                     or_q(json_str(at, "dataset_id")));
    const char *sid = json_str(at, "sync_id");
    if (with_sync && sid && n >= 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, ", sync %s %s", sid, sync_status(job));
    return buf;
}

char *ctl_progress_text(const cJSON *job, char *buf, size_t len)
{
    const char *state = json_str(job, "state");
    int64_t total = json_int64(job, "bytes_total", -1);
    int64_t sent = json_int64(job, "bytes_sent", -1);
    int64_t records = json_int64(job, "records", -1);
    int64_t tasks = json_int64(job, "total_task_count", -1);
    const char *imp = json_str(job, "import_status");
    const char *bst = json_str(job, "batch_status");
    char a[32], b[32];
    buf[0] = '\0';
    if (!state)
        return buf;
    if (strcmp(state, "uploading") == 0 && total > 0 && sent >= 0)
        snprintf(buf, len, "upload %d%% %s/%s", (int)(sent * 100 / total),
                 ctl_format_bytes(sent, a, sizeof(a)), ctl_format_bytes(total, b, sizeof(b)));
    else if (strcmp(state, "uploading") == 0 && total > 0)
        snprintf(buf, len, "upload of %s", ctl_format_bytes(total, a, sizeof(a)));
    else if (strcmp(state, "importing") == 0)
        snprintf(buf, len, "import %s", imp ? imp : "started");
    else if ((strcmp(state, "setting_up") == 0 || strcmp(state, "processing") == 0) && bst)
        snprintf(buf, len, "batch %s", bst);
    else if (strcmp(state, "syncing") == 0)
        snprintf(buf, len, "sync %s", sync_status(job));
    else if (strcmp(state, "ready") == 0 && tasks >= 0)
        snprintf(buf, len, "%" PRId64 " tasks", tasks);
    else if (records >= 0)
        snprintf(buf, len, "%" PRId64 " records", records);
    return buf;
}

double ctl_progress_fraction(const cJSON *job)
{
    static const struct {
        const char *state;
        double at;
    } steps[] = {{"queued", 0.0},      {"validating", 0.02}, {"creating_dataset", 0.05},
                 {"uploading", 0.05},  {"importing", 0.5},   {"creating_batch", 0.7},
                 {"setting_up", 0.75}, {"processing", 0.85}, {"syncing", 0.85},
                 {"ready", 1.0},       {"failed", 0.0},      {"cancelled", 0.0}};
    const char *state = json_str(job, "state");
    double f = 0;
    for (size_t i = 0; state && i < BD_ARRAY_LEN(steps); i++)
        if (strcmp(steps[i].state, state) == 0)
            f = steps[i].at;
    if (state && strcmp(state, "uploading") == 0) {
        int64_t total = json_int64(job, "bytes_total", -1);
        int64_t sent = json_int64(job, "bytes_sent", -1);
        if (total > 0 && sent >= 0)
            f += 0.45 * (double)(sent > total ? total : sent) / (double)total;
    } else if (state && strcmp(state, "importing") == 0) {
        const char *imp = json_str(job, "import_status");
        if (imp && strcasecmp(imp, "PROCESSING") == 0)
            f = 0.6;
        else if (imp && strcasecmp(imp, "IMPORTED") == 0)
            f = 0.68;
    }
    return f;
}

char *ctl_problem_text(const cJSON *job, int64_t now_ms, char *buf, size_t len)
{
    const char *last = json_str(job, "last_error");
    const char *code = json_str(job, "error_code");
    const char *msg = json_str(job, "error_message");
    int64_t until = -ctl_since(job, "retry_at", now_ms);
    buf[0] = '\0';
    char d[32];
    if (json_str(job, "retry_at"))
        snprintf(buf, len, "retry in %s%s%s", duration_format(until > 0 ? until : 0, d, sizeof(d)),
                 last ? ": " : "", last ? last : "");
    else if (code || msg)
        snprintf(buf, len, "%s%s%s", code ? code : "", code && msg ? ": " : "", msg ? msg : "");
    else if (last)
        snprintf(buf, len, "%s", last);
    return buf;
}

char *ctl_progress_bar(double fraction, int width, char *buf, size_t len)
{
    if (width < 3 || len < (size_t)width + 1) {
        buf[0] = '\0';
        return buf;
    }
    if (fraction < 0)
        fraction = 0;
    if (fraction > 1)
        fraction = 1;
    int inner = width - 2;
    int full = (int)(fraction * inner + 0.5);
    buf[0] = '[';
    for (int i = 0; i < inner; i++)
        buf[1 + i] = i < full ? '=' : (i == full ? '>' : ' ');
    if (full >= inner)
        buf[inner] = '=';
    buf[width - 1] = ']';
    buf[width] = '\0';
    return buf;
}

/* ---- text from outside ---- */

static void defang(cJSON *v)
{
    for (; v; v = v->next) {
        if (v->string && !(v->type & cJSON_StringIsConst)) {
            char *e = text_escape(v->string);
            if (strcmp(e, v->string) != 0) {
                char *k = cJSON_malloc(strlen(e) + 1);
                if (!k)
                    abort();
                strcpy(k, e);
                cJSON_free(v->string);
                v->string = k;
            }
            free(e);
        }
        if (cJSON_IsString(v) && v->valuestring) {
            char *e = text_escape(v->valuestring);
            if (strcmp(e, v->valuestring) != 0) {
                char *n = cJSON_malloc(strlen(e) + 1);
                if (!n)
                    abort();
                strcpy(n, e);
                cJSON_free(v->valuestring);
                v->valuestring = n;
            }
            free(e);
        }
        if (v->child)
            defang(v->child);
    }
}

void ctl_defang_reply(const ctl_ctx *x, vlclient_reply *r)
{
    if (x->json || !r->msg)
        return;
    defang(r->msg->child);
    if (r->error)
        r->error = json_str(r->msg, "error");
}

const char *ctl_esc(const char *s)
{
    /* A few at once for one printf; batchctl is short-lived and prints little. */
    static char *ring[8];
    static unsigned at;
    at = (at + 1) % BD_ARRAY_LEN(ring);
    free(ring[at]);
    ring[at] = text_escape(s);
    return ring[at];
}
