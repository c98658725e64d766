/* simcore_fault: the fault table (parsed from --fault or POST /_sim/faults), the seeded
 * RNG, and the per-request fault decision. Rules are tried in table order, a probability
 * rule by a draw and a counted rule by its hits left; the first that hits wins, so a test
 * can reason about which fault it gets. */
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

static const char *const kind_names[] = {
    [SIMCORE_FAULT_NONE] = NULL,
    [SIMCORE_FAULT_500] = "500",
    [SIMCORE_FAULT_502] = "502",
    [SIMCORE_FAULT_503] = "503",
    [SIMCORE_FAULT_5XX] = "5xx",
    [SIMCORE_FAULT_429] = "429",
    [SIMCORE_FAULT_DROP] = "drop",
    [SIMCORE_FAULT_DROP_AFTER] = "drop-after",
    [SIMCORE_FAULT_SLOW] = "slow",
    [SIMCORE_FAULT_ECHO] = "echo",
    [SIMCORE_FAULT_ECHO_RAW] = "echo-raw",
    [SIMCORE_FAULT_ECHO_JSON] = "echo-json",
    [SIMCORE_FAULT_ECHO_PCT] = "echo-pct",
    [SIMCORE_FAULT_ECHO_B64] = "echo-b64",
    [SIMCORE_FAULT_ECHO_HEADER] = "echo-header",
    [SIMCORE_FAULT_ECHO_429] = "echo-429",
    [SIMCORE_FAULT_HUGE] = "huge",
    [SIMCORE_FAULT_DEEP] = "deep",
    [SIMCORE_FAULT_BADUTF8] = "badutf8",
    [SIMCORE_FAULT_BADUTF8_TEXT] = "badutf8-text",
    [SIMCORE_FAULT_ODDID] = "oddid",
};

bool simcore_fault_is_hostile(simcore_fault_kind k)
{
    return k >= SIMCORE_FAULT_ECHO && k <= SIMCORE_FAULT_BADUTF8_TEXT;
}

const char *simcore_fault_kind_name(simcore_fault_kind k)
{
    if ((int)k < 0 || (size_t)k >= BD_ARRAY_LEN(kind_names))
        return NULL;
    return kind_names[k];
}

int simcore_fault_kind_from_name(const char *name, simcore_fault_kind *out)
{
    if (!name)
        return -EINVAL;
    for (size_t i = 1; i < BD_ARRAY_LEN(kind_names); i++) {
        if (strcmp(kind_names[i], name) == 0) {
            *out = (simcore_fault_kind)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int fail(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t err_len, const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

#define KINDS_HELP                                                                                 \
    "500, 502, 503, 5xx, 429, drop, drop-after, slow, echo, echo-raw, echo-json, echo-pct, "       \
    "echo-b64, echo-header, echo-429, huge, deep, badutf8, badutf8-text or oddid"
#define ENDPOINTS_HELP                                                                             \
    "create_dataset, get_dataset, upload_url, upload, get_import, create_batch, "                  \
    "list_batches, get_batch, batch_status, setup, sync, get_sync, export, list_exports, "         \
    "get_export, delete_export or download"

static int parse_probability(const char *s, double *out)
{
    /* Plain decimal only: strtod would also take "0x1" (hex 1), too easy to mistake for
     * a count. */
    if (!*s || s[strspn(s, "0123456789.eE+-")])
        return -EINVAL;
    char *end;
    errno = 0;
    double p = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(p) || p < 0 || p > 1)
        return -EINVAL;
    *out = p;
    return 0;
}

/* "COUNTx": decimal digits only (no sign, spaces or hex), then one 'x'. */
static int parse_count(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n < 2 || s[n - 1] != 'x' || strspn(s, "0123456789") != n - 1 || n - 1 > 10)
        return -EINVAL;
    long long c = strtoll(s, NULL, 10);
    if (c > SIMCORE_MAX_FAULT_COUNT)
        return -EINVAL;
    *out = c;
    return 0;
}

/* The part after '=': a probability, or a count when it ends in 'x'. */
static int parse_amount(const char *s, simcore_fault_rule *r)
{
    size_t n = strlen(s);
    if (n && s[n - 1] == 'x') {
        r->counted = true;
        return parse_count(s, &r->count);
    }
    return parse_probability(s, &r->probability);
}

int simcore_fault_parse(const char *spec, simcore_fault_rule *out, char *err, size_t err_len)
{
    if (!spec || !*spec)
        return fail(err, err_len,
                    "empty fault spec; use KIND=PROB[@ENDPOINT] or KIND=COUNTx[@ENDPOINT]");
    char *copy = xstrdup(spec);
    int rc = 0;
    char *eq = strchr(copy, '=');
    if (!eq) {
        rc = fail(err, err_len,
                  "fault '%s': missing '='; use KIND=PROB[@ENDPOINT] or KIND=COUNTx[@ENDPOINT]",
                  spec);
        goto done;
    }
    *eq = '\0';
    char *at = strchr(eq + 1, '@');
    if (at)
        *at = '\0';
    simcore_fault_rule r = {.endpoint = SIMCORE_EP_NONE};
    if (simcore_fault_kind_from_name(copy, &r.kind) < 0) {
        rc = fail(err, err_len, "fault '%s': unknown kind; use one of " KINDS_HELP, spec);
        goto done;
    }
    if (parse_amount(eq + 1, &r) < 0) {
        rc = fail(err, err_len,
                  "fault '%s': after '=' give a probability from 0 to 1 (0.1) or a count of "
                  "requests from 0 to %d followed by x (2x)",
                  spec, SIMCORE_MAX_FAULT_COUNT);
        goto done;
    }
    if (at && simcore_endpoint_from_name(at + 1, &r.endpoint) < 0) {
        rc = fail(err, err_len, "fault '%s': unknown endpoint; use one of " ENDPOINTS_HELP, spec);
        goto done;
    }
    *out = r;
done:
    free(copy);
    return rc;
}

static int rule_from_json(const cJSON *j, simcore_fault_rule *out, char *err, size_t err_len)
{
    if (!cJSON_IsObject(j))
        return fail(err, err_len, "faults[]: each entry must be an object");
    simcore_fault_rule r = {.endpoint = SIMCORE_EP_NONE};
    const char *kind = json_str(j, "kind");
    if (simcore_fault_kind_from_name(kind, &r.kind) < 0)
        return fail(err, err_len, "faults[].kind '%s': use one of " KINDS_HELP,
                    kind ? kind : "(missing)");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "probability");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "count");
    if ((p != NULL) == (c != NULL))
        return fail(err, err_len, "faults[] (kind '%s'): give either \"probability\" or \"count\"",
                    kind);
    if (c) {
        if (!cJSON_IsNumber(c) || !isfinite(c->valuedouble) || c->valuedouble < 0 ||
            c->valuedouble > SIMCORE_MAX_FAULT_COUNT || c->valuedouble != floor(c->valuedouble))
            return fail(err, err_len, "faults[].count must be a whole number from 0 to %d",
                        SIMCORE_MAX_FAULT_COUNT);
        r.counted = true;
        r.count = (int64_t)c->valuedouble;
    } else {
        if (!cJSON_IsNumber(p) || !isfinite(p->valuedouble) || p->valuedouble < 0 ||
            p->valuedouble > 1)
            return fail(err, err_len, "faults[].probability must be a number from 0 to 1");
        r.probability = p->valuedouble;
    }
    const cJSON *hold = cJSON_GetObjectItemCaseSensitive(j, "hold");
    if (hold && !cJSON_IsBool(hold))
        return fail(err, err_len, "faults[].hold must be true or false");
    r.hold = cJSON_IsTrue(hold);
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(j, "endpoint");
    if (ep && !cJSON_IsNull(ep)) {
        if (!cJSON_IsString(ep) || simcore_endpoint_from_name(ep->valuestring, &r.endpoint) < 0)
            return fail(err, err_len, "faults[].endpoint: use one of " ENDPOINTS_HELP);
    }
    *out = r;
    return 0;
}

static int number_member(const cJSON *j, const char *key, double lo, double hi, bool *present,
                         double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    *present = v != NULL;
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return -EINVAL;
    *out = v->valuedouble;
    return 0;
}

/* The "faults" array, when given, replaces next's rules. */
static int rules_member(const cJSON *j, simcore_faults *next, char *err, size_t err_len)
{
    const cJSON *rules = cJSON_GetObjectItemCaseSensitive(j, "faults");
    if (!rules)
        return 0;
    if (!cJSON_IsArray(rules))
        return fail(err, err_len, "faults must be an array");
    if ((size_t)cJSON_GetArraySize(rules) > SIMCORE_MAX_FAULT_RULES)
        return fail(err, err_len, "faults: at most %d rules", SIMCORE_MAX_FAULT_RULES);
    next->n_rules = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, rules)
    {
        if (rule_from_json(it, &next->rules[next->n_rules], err, err_len) < 0)
            return -EINVAL;
        next->n_rules++;
    }
    return 0;
}

static int retry_after_member(const cJSON *j, simcore_faults *next, char *err, size_t err_len)
{
    const cJSON *ra = cJSON_GetObjectItemCaseSensitive(j, "retry_after");
    if (cJSON_IsString(ra) && strcmp(ra->valuestring, "date") == 0) {
        next->retry_after_date = true;
    } else if (ra) {
        if (!cJSON_IsNumber(ra) || ra->valuedouble < 0 || ra->valuedouble > 86400 ||
            ra->valuedouble != floor(ra->valuedouble))
            return fail(err, err_len, "retry_after must be whole seconds (0..86400) or \"date\"");
        next->retry_after_s = (int64_t)ra->valuedouble;
        next->retry_after_date = json_bool(j, "retry_after_date", false);
    }
    return 0;
}

/* slow_ms, batch_error, hostile_status, huge_bytes and deep_levels. */
static int number_members(const cJSON *j, simcore_faults *next, char *err, size_t err_len)
{
    bool present;
    double v = 0;
    if (number_member(j, "slow_ms", 0, 3600000, &present, &v) < 0)
        return fail(err, err_len, "slow_ms must be milliseconds from 0 to 3600000");
    if (present)
        next->slow_ms = (int64_t)v;
    if (number_member(j, "batch_error", 0, 1, &present, &v) < 0)
        return fail(err, err_len, "batch_error must be a probability from 0 to 1");
    if (present)
        next->batch_error = v;
    if (number_member(j, "hostile_status", 400, 599, &present, &v) < 0 ||
        (present && v != floor(v)))
        return fail(err, err_len, "hostile_status must be an HTTP status from 400 to 599");
    if (present)
        next->hostile_status = (int)v;
    if (number_member(j, "huge_bytes", 0, (double)SIMCORE_HUGE_MAX, &present, &v) < 0 ||
        (present && v != floor(v)))
        return fail(err, err_len, "huge_bytes must be a whole number of bytes from 0 to %lld",
                    (long long)SIMCORE_HUGE_MAX);
    if (present)
        next->huge_bytes = (int64_t)v;
    if (number_member(j, "deep_levels", 1, SIMCORE_DEEP_MAX, &present, &v) < 0 ||
        (present && v != floor(v)))
        return fail(err, err_len, "deep_levels must be a whole number from 1 to %d",
                    SIMCORE_DEEP_MAX);
    if (present)
        next->deep_levels = (int64_t)v;
    return 0;
}

/* export_mode ("new" | "old") and export_pad (bytes). */
static int export_members(const cJSON *j, simcore_faults *next, char *err, size_t err_len)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "export_mode");
    if (m) {
        if (!cJSON_IsString(m) ||
            (strcmp(m->valuestring, "new") != 0 && strcmp(m->valuestring, "old") != 0))
            return fail(err, err_len, "export_mode must be \"new\" or \"old\"");
        next->export_mode =
            strcmp(m->valuestring, "old") == 0 ? SIMCORE_EXPORT_OLD : SIMCORE_EXPORT_NEW;
    }
    bool present;
    double v = 0;
    if (number_member(j, "export_pad", 0, (double)SIMCORE_EXPORT_PAD_MAX, &present, &v) < 0 ||
        (present && v != floor(v)))
        return fail(err, err_len, "export_pad must be a whole number of bytes from 0 to %lld",
                    (long long)SIMCORE_EXPORT_PAD_MAX);
    if (present)
        next->export_pad = (int64_t)v;
    return 0;
}

static int odd_id_member(const cJSON *j, simcore_faults *next, char *err, size_t err_len)
{
    const cJSON *odd = cJSON_GetObjectItemCaseSensitive(j, "odd_id");
    if (cJSON_IsNull(odd)) {
        next->odd_id_mode = SIMCORE_ODD_ID_LIST;
        next->odd_id[0] = '\0';
    } else if (cJSON_IsString(odd)) {
        if (strlen(odd->valuestring) >= sizeof next->odd_id)
            return fail(err, err_len, "odd_id: at most %zu bytes", sizeof next->odd_id - 1);
        next->odd_id_mode = SIMCORE_ODD_ID_STRING;
        strlcpy_bd(next->odd_id, odd->valuestring, sizeof next->odd_id);
    } else if (cJSON_IsNumber(odd) && isfinite(odd->valuedouble)) {
        next->odd_id_mode = SIMCORE_ODD_ID_NUMBER;
        next->odd_id_number = odd->valuedouble;
    } else if (odd) {
        return fail(err, err_len, "odd_id must be a string, a number or null");
    }
    return 0;
}

int simcore_faults_from_json(simcore_faults *f, const cJSON *j, char *err, size_t err_len)
{
    if (!cJSON_IsObject(j))
        return fail(err, err_len, "the body must be a JSON object");
    /* All or nothing: the members go into a copy that replaces *f only when all are good. */
    simcore_faults next = *f;
    if (rules_member(j, &next, err, err_len) < 0 ||
        retry_after_member(j, &next, err, err_len) < 0 ||
        number_members(j, &next, err, err_len) < 0 || odd_id_member(j, &next, err, err_len) < 0 ||
        export_members(j, &next, err, err_len) < 0)
        return -EINVAL;
    *f = next;
    return 0;
}

cJSON *simcore_faults_to_json(const simcore_faults *f)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(j, "faults");
    for (size_t i = 0; i < f->n_rules; i++) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "kind", simcore_fault_kind_name(f->rules[i].kind));
        if (f->rules[i].counted)
            cJSON_AddNumberToObject(r, "count", (double)f->rules[i].count);
        else
            cJSON_AddNumberToObject(r, "probability", f->rules[i].probability);
        json_add_str_or_null(r, "endpoint", simcore_endpoint_name(f->rules[i].endpoint));
        if (f->rules[i].hold)
            cJSON_AddTrueToObject(r, "hold");
        cJSON_AddItemToArray(arr, r);
    }
    cJSON_AddNumberToObject(j, "retry_after", (double)f->retry_after_s);
    cJSON_AddBoolToObject(j, "retry_after_date", f->retry_after_date);
    cJSON_AddNumberToObject(j, "slow_ms", (double)f->slow_ms);
    cJSON_AddNumberToObject(j, "batch_error", f->batch_error);
    cJSON_AddNumberToObject(j, "hostile_status", f->hostile_status);
    cJSON_AddNumberToObject(j, "huge_bytes", (double)f->huge_bytes);
    cJSON_AddNumberToObject(j, "deep_levels", (double)f->deep_levels);
    cJSON_AddStringToObject(j, "export_mode", f->export_mode == SIMCORE_EXPORT_OLD ? "old" : "new");
    cJSON_AddNumberToObject(j, "export_pad", (double)f->export_pad);
    if (f->odd_id_mode == SIMCORE_ODD_ID_STRING)
        cJSON_AddStringToObject(j, "odd_id", f->odd_id);
    else if (f->odd_id_mode == SIMCORE_ODD_ID_NUMBER)
        cJSON_AddNumberToObject(j, "odd_id", f->odd_id_number);
    else
        cJSON_AddNullToObject(j, "odd_id");
    return j;
}

/* splitmix64: tiny, fast and good enough; what matters is that a seed reproduces a run. */
uint64_t sim_rand64(simcore *sim)
{
    uint64_t z = (sim->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sim_rand01(simcore *sim)
{
    return (double)(sim_rand64(sim) >> 11) * (1.0 / 9007199254740992.0);
}

static bool gives_id(simcore_endpoint ep)
{
    return ep == SIMCORE_EP_CREATE_DATASET || ep == SIMCORE_EP_UPLOAD_URL ||
           ep == SIMCORE_EP_CREATE_BATCH || ep == SIMCORE_EP_LIST_BATCHES ||
           ep == SIMCORE_EP_SYNC || ep == SIMCORE_EP_EXPORT;
}

void simcore_fault_decide(simcore *sim, simcore_endpoint ep, int64_t now_ms,
                          simcore_fault_decision *out)
{
    (void)now_ms;
    *out = (simcore_fault_decision){.kind = SIMCORE_FAULT_NONE, .retry_after_ms = -1};
    if (simcore_endpoint_is_control(ep))
        return;
    simcore_faults *f = &sim->faults;
    for (size_t i = 0; i < f->n_rules; i++) {
        simcore_fault_rule *r = &f->rules[i];
        if (r->endpoint != SIMCORE_EP_NONE && r->endpoint != ep)
            continue;
        /* An odd id needs a reply that gives one: other endpoints do not use the rule up. */
        if (r->kind == SIMCORE_FAULT_ODDID && !gives_id(ep))
            continue;
        if (r->counted) {
            /* No draw: a count hits exactly the next N matching requests, whatever the
             * seed (a 5xx still draws which of its statuses to answer). */
            if (r->count <= 0)
                continue;
            r->count--;
        } else {
            /* Always draw, even for p = 0 or 1, so one seed gives one sequence whatever
             * the probabilities are. */
            double x = sim_rand01(sim);
            if (x >= r->probability)
                continue;
        }
        out->kind = r->kind;
        out->hold = r->hold;
        switch (r->kind) {
        case SIMCORE_FAULT_500:
            out->status = 500;
            break;
        case SIMCORE_FAULT_502:
            out->status = 502;
            break;
        case SIMCORE_FAULT_503:
            out->status = 503;
            break;
        case SIMCORE_FAULT_5XX: {
            static const int codes[3] = {500, 502, 503};
            int s = codes[sim_rand64(sim) % 3];
            out->kind =
                s == 500 ? SIMCORE_FAULT_500 : (s == 502 ? SIMCORE_FAULT_502 : SIMCORE_FAULT_503);
            out->status = s;
            break;
        }
        case SIMCORE_FAULT_429:
        case SIMCORE_FAULT_ECHO_429:
            out->status = 429;
            out->retry_after_ms = f->retry_after_s * 1000;
            break;
        case SIMCORE_FAULT_ECHO:
            /* Resolved here, like 5xx, so the request log names the variant sent. */
            out->kind = (simcore_fault_kind)(SIMCORE_FAULT_ECHO_RAW + (int)(sim_rand64(sim) % 5));
            out->status = f->hostile_status;
            break;
        case SIMCORE_FAULT_ECHO_RAW:
        case SIMCORE_FAULT_ECHO_JSON:
        case SIMCORE_FAULT_ECHO_PCT:
        case SIMCORE_FAULT_ECHO_B64:
        case SIMCORE_FAULT_ECHO_HEADER:
        case SIMCORE_FAULT_HUGE:
        case SIMCORE_FAULT_DEEP:
        case SIMCORE_FAULT_BADUTF8:
        case SIMCORE_FAULT_BADUTF8_TEXT:
            out->status = f->hostile_status;
            break;
        case SIMCORE_FAULT_ODDID:
            if (f->odd_id_mode == SIMCORE_ODD_ID_LIST)
                out->variant = (unsigned)(sim_rand64(sim) % simcore_odd_id_count());
            break;
        default:
            break;
        }
        return;
    }
}
