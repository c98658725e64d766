/* config: see include/batchd/config.h. The file is read whole (it is small), fed to inih
 * through our own line reader so that every handler call knows its line number, and every
 * value is checked where it is parsed so that each problem names its file:line. */
#include "batchd/config.h"
#include "batchd/fsutil.h"
#include "batchd/urlcheck.h"
#include "batchd/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX_FILE  (1024 * 1024)
#define CONFIG_MAX_TOKEN 4096

/* A problem at file (or a token source), with no line. */
static void file_problem(diag *d, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void file_problem(diag *d, const char *file, const char *fmt, ...)
{
    const diag_where w = {.file = file};
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, DIAG_ERROR, &w, fmt, ap);
    va_end(ap);
}

void config_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    c->api.url = xstrdup("https://api.prolific.com");
    c->api.timeout_ms = 30000;
    c->api.max_rate = 5;
    c->api.max_connections = 8;
    c->spool.dir = xstrdup("/var/spool/batchd");
    c->spool.rescan_interval_ms = 30000;
    c->state.dir = xstrdup("/var/lib/batchd");
    c->control.socket = xstrdup("/run/batchd/io.batchd");
    c->control.group = xstrdup("batchd");
    c->poll.initial_ms = 2000;
    c->poll.max_ms = 60000;
    c->poll.multiplier = 2;
    c->poll.import_timeout_ms = 3600000;
    c->poll.batch_timeout_ms = 6 * 3600000;
    c->job.template_path = xstrdup("/etc/batchd/templates/default.json");
    c->job.max_active = 64;
    c->job.invalid_records = CONFIG_INVALID_FAIL;
    c->job.max_record_bytes = 1024 * 1024;
    c->hooks.timeout_ms = 5 * 60000;
    c->hooks.retries = 3;
    c->hooks.max_parallel = 4;
    c->export.interval_ms = 0;
    c->export.window_ms = 14LL * 86400 * 1000;
    c->export.keep = 3;
    c->export.max_bytes = 0;
}

void config_free(config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->api.url);
    free(c->api.workspace_id);
    free(c->api.token_file);
    free(c->spool.dir);
    free(c->state.dir);
    free(c->control.socket);
    free(c->control.group);
    free(c->job.template_path);
    free(c->hooks.on_ready);
    free(c->hooks.on_failed);
    free(c->hooks.on_export);
    free(c->metrics.listen);
    memset(c, 0, sizeof *c);
}

const char *config_default_path(const char *explicit_path)
{
    if (explicit_path && *explicit_path)
        return explicit_path;
    const char *env = getenv("BATCHD_CONFIG");
    if (env && *env)
        return env;
    return CONFIG_DEFAULT_PATH;
}

/* ---- value parsers: each returns NULL when fine, else what is wrong ---- */

static const char *parse_duration_value(const char *v, int64_t *out)
{
    int64_t ms;
    if (duration_parse(v, &ms) < 0)
        return "not a duration: use seconds or a number with ms, s, m, h or d (\"30s\", "
               "\"500ms\", \"5m\")";
    if (ms <= 0)
        return "must be longer than 0";
    *out = ms;
    return NULL;
}

static const char *parse_int_value(const char *v, long lo, long hi, int *out, const char *range_msg)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end || errno)
        return "not a whole number";
    if (n < lo || n > hi)
        return range_msg;
    *out = (int)n;
    return NULL;
}

static const char *parse_double_value(const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || d != d)
        return "not a number";
    *out = d;
    return NULL;
}

/* "1048576", "512k", "1M", "1MiB" ... */
static const char *parse_size_value(const char *v, size_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*v))
        return "not a size: use bytes or a number with k or M (\"512k\", \"1M\")";
    unsigned long long n = strtoull(v, &end, 10);
    if (end == v || errno)
        return "not a size: use bytes or a number with k or M (\"512k\", \"1M\")";
    unsigned long long mult = 1;
    if (!*end || !strcmp(end, "B"))
        mult = 1;
    else if (!strcasecmp(end, "k") || !strcasecmp(end, "KiB") || !strcasecmp(end, "KB"))
        mult = 1024;
    else if (!strcasecmp(end, "M") || !strcasecmp(end, "MiB") || !strcasecmp(end, "MB"))
        mult = 1024 * 1024;
    else
        return "not a size: use bytes or a number with k or M (\"512k\", \"1M\")";
    if (n == 0)
        return "must be larger than 0";
    if (n > (1ULL << 30) / mult)
        return "too large: at most 1024M";
    *out = (size_t)(n * mult);
    return NULL;
}

/* [api] url under the one transport rule (urlcheck.h): https:// anywhere; http:// only to a
 * loopback host (batchd-sim), so that the token never crosses a network in clear text. No
 * user info (it would be logged with the URL and sent as Basic credentials next to the
 * token), and no query or fragment (API paths are appended). */
static const char *check_url(const char *v)
{
    switch (url_check(v, URL_CHECK_NO_QUERY)) {
    case URL_OK:
        return NULL;
    case URL_BAD_CHARS:
        return "contains white space or control characters";
    case URL_BAD_SCHEME:
        return "must start with https:// (http:// is allowed only to a loopback host such as "
               "127.0.0.1, [::1] or localhost, for batchd-sim)";
    case URL_NO_HOST:
        return "has no host";
    case URL_INVALID:
        return "is not a valid URL (write it as https://HOST[:PORT][/PATH])";
    case URL_USERINFO:
        return "has user info (USER@ or USER:PASSWORD@ before the host): credentials in a URL "
               "would be logged and sent with every request; remove them and put the API "
               "token in the file named by [api] token_file";
    case URL_QUERY:
        return "has a query (?...) or fragment (#...): batchd appends the API paths to this "
               "URL; give only https://HOST[:PORT][/PATH]";
    case URL_HTTP_REMOTE:
        return "http:// is allowed only to a loopback host (127.0.0.0/8, [::1], localhost, "
               "for batchd-sim); use https:// for anything else";
    case URL_NO_MEMORY:
        break;
    }
    return "cannot be parsed (out of memory)";
}

/* ---- the inih side ---- */

enum {
    SEC_API,
    SEC_SPOOL,
    SEC_STATE,
    SEC_CONTROL,
    SEC_POLL,
    SEC_JOB,
    SEC_HOOKS,
    SEC_METRICS,
    SEC_EXPORT,
    SEC_COUNT
};
static const char *const section_names[SEC_COUNT] = {"api", "spool", "state",   "control", "poll",
                                                     "job", "hooks", "metrics", "export"};

typedef struct parse_state {
    config *c;
    diag *dg;
    const char *path;
    const char *data; /* the whole file */
    size_t len, pos;
    int lineno; /* line the reader returned last */
    int errors;
    unsigned char seen[32]; /* which keys (index into keys[]) were given: duplicates */
} parse_state;

static void perr(parse_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void perr(parse_state *st, const char *fmt, ...)
{
    const diag_where w = {.file = st->path, .line = (uint64_t)st->lineno};
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(st->dg, DIAG_ERROR, &w, fmt, ap);
    va_end(ap);
    st->errors++;
}

static bool section_known(const char *name, size_t len)
{
    for (int i = 0; i < SEC_COUNT; i++)
        if (strlen(section_names[i]) == len && !memcmp(section_names[i], name, len))
            return true;
    return false;
}

/* inih does not tell the handler about section headers, so they are checked here, where
 * the line number is known. */
static void check_section_header(parse_state *st, const char *line, size_t len)
{
    while (len && (*line == ' ' || *line == '\t')) {
        line++;
        len--;
    }
    if (!len || *line != '[')
        return;
    const char *close = memchr(line, ']', len);
    if (!close)
        return; /* inih reports the syntax error */
    const char *name = line + 1;
    size_t nlen = (size_t)(close - name);
    while (nlen && (*name == ' ' || *name == '\t')) {
        name++;
        nlen--;
    }
    while (nlen && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t'))
        nlen--;
    if (!section_known(name, nlen))
        perr(st,
             "unknown section [%.*s] (known: api, spool, state, control, poll, job, hooks, "
             "metrics, export)",
             (int)nlen, name);
}

/* fgets over the in-memory file, counting lines. Lines that do not fit inih's buffer are
 * cut and reported rather than silently split into two lines. */
static char *reader(char *str, int num, void *stream)
{
    parse_state *st = stream;
    if (st->pos >= st->len || num < 3)
        return NULL;
    st->lineno++;
    const char *start = st->data + st->pos;
    const char *nl = memchr(start, '\n', st->len - st->pos);
    size_t linelen = nl ? (size_t)(nl - start) + 1 : st->len - st->pos;
    st->pos += linelen;
    check_section_header(st, start, linelen);
    size_t room = (size_t)num - 2;
    if (linelen > room + 1) {
        perr(st, "line too long (at most %zu characters)", room - 1);
        memcpy(str, start, room);
        str[room] = '\n';
        str[room + 1] = '\0';
        return str;
    }
    memcpy(str, start, linelen);
    str[linelen] = '\0';
    return str;
}

/* inih strips ';' comments after values but not '#'; we strip both, when preceded by
 * white space, so "timeout = 30s   # one request" works as the documented example does. */
static char *strip_value(const char *value)
{
    char *v = xstrdup(value);
    for (char *p = v; *p; p++) {
        if ((*p == '#' || *p == ';') && p > v && (p[-1] == ' ' || p[-1] == '\t')) {
            *p = '\0';
            break;
        }
    }
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r'))
        v[--n] = '\0';
    return v;
}

static void set_str(char **dst, const char *v, bool empty_is_null)
{
    free(*dst);
    *dst = (empty_is_null && !*v) ? NULL : xstrdup(v);
}

typedef const char *(*key_fn)(config *c, const char *v);

#define DUR_KEY(fname, field)                                                                      \
    static const char *fname(config *c, const char *v)                                             \
    {                                                                                              \
        return parse_duration_value(v, &(field));                                                  \
    }
DUR_KEY(k_api_timeout, c->api.timeout_ms)
DUR_KEY(k_spool_rescan, c->spool.rescan_interval_ms)
DUR_KEY(k_poll_initial, c->poll.initial_ms)
DUR_KEY(k_poll_max, c->poll.max_ms)
DUR_KEY(k_poll_import, c->poll.import_timeout_ms)
DUR_KEY(k_poll_batch, c->poll.batch_timeout_ms)
DUR_KEY(k_hooks_timeout, c->hooks.timeout_ms)
DUR_KEY(k_export_window, c->export.window_ms)

/* [export] interval: 0 (the default) turns scheduled exports off. */
static const char *k_export_interval(config *c, const char *v)
{
    if (!strcmp(v, "0")) {
        c->export.interval_ms = 0;
        return NULL;
    }
    const char *e = parse_duration_value(v, &c->export.interval_ms);
    if (!e && c->export.interval_ms < 1000)
        return "must be 0 (off) or at least 1s";
    return e;
}

static const char *k_export_keep(config *c, const char *v)
{
    return parse_int_value(v, 0, 100000, &c->export.keep,
                           "must be between 0 (keep every ZIP) and 100000");
}

static const char *k_export_max_size(config *c, const char *v)
{
    if (!strcmp(v, "0")) {
        c->export.max_bytes = 0;
        return NULL;
    }
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*v))
        return "not a size: use bytes or a number with k, M or G (\"512M\", \"4G\"), or 0";
    unsigned long long n = strtoull(v, &end, 10);
    unsigned long long mult = !*end                   ? 1
                              : !strcasecmp(end, "k") ? 1ULL << 10
                              : !strcasecmp(end, "M") ? 1ULL << 20
                              : !strcasecmp(end, "G") ? 1ULL << 30
                                                      : 0;
    if (errno || !mult)
        return "not a size: use bytes or a number with k, M or G (\"512M\", \"4G\"), or 0";
    if (n > (1ULL << 50) / mult)
        return "too large: at most 1048576G";
    c->export.max_bytes = n * mult;
    return NULL;
}

static const char *k_api_url(config *c, const char *v)
{
    const char *e = check_url(v);
    if (!e)
        set_str(&c->api.url, v, false);
    return e;
}

static const char *k_api_workspace(config *c, const char *v)
{
    for (const char *p = v; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return "not a workspace id (letters and digits, e.g. 6278acb09062db3b35bcbeb0)";
    set_str(&c->api.workspace_id, v, true);
    return NULL;
}

static const char *k_api_token_file(config *c, const char *v)
{
    set_str(&c->api.token_file, v, true);
    return NULL;
}

static const char *k_api_max_rate(config *c, const char *v)
{
    double d;
    const char *e = parse_double_value(v, &d);
    if (e)
        return e;
    if (!(d > 0) || d > 10000)
        return "must be more than 0 and at most 10000 (requests per second)";
    c->api.max_rate = d;
    return NULL;
}

static const char *k_api_max_conn(config *c, const char *v)
{
    return parse_int_value(v, 1, 256, &c->api.max_connections, "must be between 1 and 256");
}

static const char *k_dir(char **dst, const char *v)
{
    if (!*v)
        return "must not be empty";
    set_str(dst, v, false);
    return NULL;
}

static const char *k_spool_dir(config *c, const char *v)
{
    return k_dir(&c->spool.dir, v);
}
static const char *k_state_dir(config *c, const char *v)
{
    return k_dir(&c->state.dir, v);
}
static const char *k_control_socket(config *c, const char *v)
{
    if (strlen(v) >= 108)
        return "too long for a Unix socket path (at most 107 bytes)";
    return k_dir(&c->control.socket, v);
}
static const char *k_control_group(config *c, const char *v)
{
    set_str(&c->control.group, v, true);
    return NULL;
}

static const char *k_poll_mult(config *c, const char *v)
{
    double d;
    const char *e = parse_double_value(v, &d);
    if (e)
        return e;
    if (!(d >= 1) || d > 100)
        return "must be at least 1 and at most 100";
    c->poll.multiplier = d;
    return NULL;
}

static const char *k_job_template(config *c, const char *v)
{
    set_str(&c->job.template_path, v, true);
    return NULL;
}

static const char *k_job_max_active(config *c, const char *v)
{
    return parse_int_value(v, 1, 100000, &c->job.max_active, "must be between 1 and 100000");
}

static const char *k_job_invalid(config *c, const char *v)
{
    if (!strcmp(v, "fail"))
        c->job.invalid_records = CONFIG_INVALID_FAIL;
    else if (!strcmp(v, "skip"))
        c->job.invalid_records = CONFIG_INVALID_SKIP;
    else
        return "must be fail or skip";
    return NULL;
}

static const char *k_job_max_record(config *c, const char *v)
{
    return parse_size_value(v, &c->job.max_record_bytes);
}

/* A hook is run without a shell, so it must be a path, and an absolute one: the daemon's
 * working directory is not the operator's. */
static const char *k_hook(char **dst, const char *v)
{
    if (!*v)
        return "must not be empty (leave the key out for no hook)";
    if (v[0] != '/')
        return "must be an absolute path (hooks run without a shell, e.g. "
               "/usr/local/lib/batchd/on-ready)";
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return "contains control characters";
    set_str(dst, v, false);
    return NULL;
}

static const char *k_hooks_ready(config *c, const char *v)
{
    return k_hook(&c->hooks.on_ready, v);
}

static const char *k_hooks_failed(config *c, const char *v)
{
    return k_hook(&c->hooks.on_failed, v);
}

static const char *k_hooks_export(config *c, const char *v)
{
    return k_hook(&c->hooks.on_export, v);
}

static const char *k_hooks_retries(config *c, const char *v)
{
    return parse_int_value(v, 0, 100, &c->hooks.retries, "must be between 0 and 100");
}

static const char *k_hooks_parallel(config *c, const char *v)
{
    return parse_int_value(v, 1, 256, &c->hooks.max_parallel, "must be between 1 and 256");
}

const char *config_parse_listen(const char *v, struct sockaddr_storage *addr, unsigned *len)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v || !colon[1])
        return "must be ADDRESS:PORT, e.g. 127.0.0.1:9465 or [::1]:9465";
    char host[64];
    size_t hlen = (size_t)(colon - v);
    bool v6 = v[0] == '[';
    if (v6 && (hlen < 3 || v[hlen - 1] != ']'))
        return "an IPv6 address goes in brackets, e.g. [::1]:9465";
    if (v6) {
        v++;
        hlen -= 2;
    }
    if (hlen >= sizeof host)
        return "the address is too long: give a numeric IPv4 or IPv6 address";
    memcpy(host, v, hlen);
    host[hlen] = '\0';
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (*end || errno || port < 1 || port > 65535 || !isdigit((unsigned char)colon[1]))
        return "the port must be a number from 1 to 65535";
    memset(addr, 0, sizeof *addr);
    if (!v6) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return "not a numeric IPv4 address (write an IPv6 address as [::1]:9465)";
        *len = sizeof *in;
        return NULL;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
        return "not a numeric IPv6 address";
    *len = sizeof *in6;
    return NULL;
}

static const char *k_metrics_listen(config *c, const char *v)
{
    free(c->metrics.listen);
    c->metrics.listen = NULL;
    if (!*v)
        return NULL; /* empty: off */
    struct sockaddr_storage ss;
    unsigned len;
    const char *e = config_parse_listen(v, &ss, &len);
    if (!e)
        c->metrics.listen = xstrdup(v);
    return e;
}

static const struct key_def {
    int section;
    const char *name;
    key_fn fn;
} keys[] = {
    {SEC_API, "url", k_api_url},
    {SEC_API, "workspace_id", k_api_workspace},
    {SEC_API, "token_file", k_api_token_file},
    {SEC_API, "timeout", k_api_timeout},
    {SEC_API, "max_rate", k_api_max_rate},
    {SEC_API, "max_connections", k_api_max_conn},
    {SEC_SPOOL, "dir", k_spool_dir},
    {SEC_SPOOL, "rescan_interval", k_spool_rescan},
    {SEC_STATE, "dir", k_state_dir},
    {SEC_CONTROL, "socket", k_control_socket},
    {SEC_CONTROL, "group", k_control_group},
    {SEC_POLL, "initial", k_poll_initial},
    {SEC_POLL, "max", k_poll_max},
    {SEC_POLL, "multiplier", k_poll_mult},
    {SEC_POLL, "import_timeout", k_poll_import},
    {SEC_POLL, "batch_timeout", k_poll_batch},
    {SEC_JOB, "template", k_job_template},
    {SEC_JOB, "max_active", k_job_max_active},
    {SEC_JOB, "invalid_records", k_job_invalid},
    {SEC_JOB, "max_record_size", k_job_max_record},
    {SEC_HOOKS, "on_ready", k_hooks_ready},
    {SEC_HOOKS, "on_failed", k_hooks_failed},
    {SEC_HOOKS, "on_export", k_hooks_export},
    {SEC_HOOKS, "hook_timeout", k_hooks_timeout},
    {SEC_HOOKS, "hook_retries", k_hooks_retries},
    {SEC_HOOKS, "hook_max_parallel", k_hooks_parallel},
    {SEC_METRICS, "listen", k_metrics_listen},
    {SEC_EXPORT, "interval", k_export_interval},
    {SEC_EXPORT, "window", k_export_window},
    {SEC_EXPORT, "keep", k_export_keep},
    {SEC_EXPORT, "max_size", k_export_max_size},
};

_Static_assert(BD_ARRAY_LEN(keys) <= 32, "parse_state.seen is too small");

static void known_keys(int sec, strbuf *sb)
{
    const char *sep = "";
    for (size_t i = 0; i < BD_ARRAY_LEN(keys); i++) {
        if (keys[i].section != sec)
            continue;
        strbuf_printf(sb, "%s%s", sep, keys[i].name);
        sep = ", ";
    }
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    parse_state *st = user;
    int sec = -1;
    for (int i = 0; i < SEC_COUNT; i++)
        if (!strcmp(section, section_names[i]))
            sec = i;
    if (sec < 0) {
        /* Unknown sections are reported once, at their header line, by the reader. */
        if (!*section)
            perr(st,
                 "'%s' is outside any section: put it under [api], [spool], [state], "
                 "[control], [poll], [job], [hooks], [metrics] or [export]",
                 name);
        return 1;
    }
    size_t k;
    for (k = 0; k < BD_ARRAY_LEN(keys); k++)
        if (keys[k].section == sec && !strcmp(keys[k].name, name))
            break;
    if (k == BD_ARRAY_LEN(keys)) {
        strbuf known = {0};
        known_keys(sec, &known);
        perr(st, "unknown key '%s' in [%s] (known: %s)", name, section, known.data);
        strbuf_free(&known);
        return 1;
    }
    if (st->seen[k]) {
        perr(st,
             "[%s] %s given twice (an indented line continues the previous value; "
             "remove the indentation or the second one)",
             section, name);
        return 1;
    }
    st->seen[k] = 1;
    char *v = strip_value(value);
    const char *err = keys[k].fn(st->c, v);
    /* Where each hook was set: config_check_hooks reports its problems there. */
    if (!err && keys[k].fn == k_hooks_ready)
        st->c->hooks.on_ready_line = st->lineno;
    else if (!err && keys[k].fn == k_hooks_failed)
        st->c->hooks.on_failed_line = st->lineno;
    else if (!err && keys[k].fn == k_hooks_export)
        st->c->hooks.on_export_line = st->lineno;
    if (err && keys[k].fn == k_api_url && strchr(v, '@'))
        perr(st, "[%s] %s (not shown: it may hold a password): %s", section, name, err);
    else if (err)
        perr(st, "[%s] %s = %s: %s", section, name, v, err);
    free(v);
    return 1;
}

/* Checks that span several keys. */
static void check_whole(const config *c, diag *dg, const char *path, int *errors)
{
    if (c->poll.initial_ms > c->poll.max_ms) {
        file_problem(dg, path, "[poll] initial must not be longer than [poll] max");
        (*errors)++;
    }
}

static void errno_text(int e, char *buf, size_t len)
{
    /* GNU strerror_r returns a pointer that may or may not be buf. */
    const char *s = strerror_r(e, buf, len);
    if (s != buf)
        strlcpy_bd(buf, s, len);
}

int config_load(const char *path, config *c, diag *dg)
{
    config_defaults(c);
    c->path = xstrdup(path);
    char *data = NULL;
    size_t len = 0;
    int r = fsutil_read_file(path, CONFIG_MAX_FILE, false, &data, &len);
    if (r < 0) {
        char eb[128];
        errno_text(-r, eb, sizeof eb);
        if (r == -EFBIG)
            file_problem(dg, path, "too large for a configuration file (at most 1 MiB)");
        else if (r == -EISDIR || r == -EINVAL)
            file_problem(dg, path, "not a regular file");
        else
            file_problem(dg, path, "cannot read: %s", eb);
        return r;
    }
    if (!utf8_valid(data, len)) {
        file_problem(dg, path, "not valid UTF-8 text");
        free(data);
        return -EINVAL;
    }
    parse_state st = {.c = c, .dg = dg, .path = path, .data = data, .len = len};
    int pr = ini_parse_stream(reader, &st, handler, &st);
    if (pr > 0 && st.errors == 0) {
        st.lineno = pr;
        perr(&st, "syntax error: expected [section], key = value, or a # comment");
    } else if (pr < 0) {
        file_problem(dg, path, "cannot parse (out of memory)");
        st.errors++;
    }
    free(data);
    check_whole(c, dg, path, &st.errors);
    return st.errors ? -EINVAL : 0;
}

static int check_hook(const config *c, const char *key, const char *path, int line, diag *dg)
{
    if (!path)
        return 0;
    const diag_where w = {.file = c->path, .line = (uint64_t)(line > 0 ? line : 0)};
    struct stat sb;
    if (stat(path, &sb) < 0) {
        diag_add(dg, DIAG_ERROR, &w, "[hooks] %s = %s: %s", key, path, strerror(errno));
        return 1;
    }
    if (!S_ISREG(sb.st_mode)) {
        diag_add(dg, DIAG_ERROR, &w, "[hooks] %s = %s: not a regular file", key, path);
        return 1;
    }
    if (access(path, X_OK) < 0) {
        diag_add(dg, DIAG_ERROR, &w,
                 "[hooks] %s = %s: not executable by batchd's user (%s); run chmod +x on it", key,
                 path, strerror(errno));
        return 1;
    }
    return 0;
}

int config_check_hooks(const config *c, diag *dg)
{
    return check_hook(c, "on_ready", c->hooks.on_ready, c->hooks.on_ready_line, dg) +
           check_hook(c, "on_failed", c->hooks.on_failed, c->hooks.on_failed_line, dg) +
           check_hook(c, "on_export", c->hooks.on_export, c->hooks.on_export_line, dg);
}

/* ---- the token ---- */

/* Reads a token file, refusing group/other access. Returns 0, -ENOENT/-EACCES (try the
 * next source), or another -errno with a message in diag. */
static int read_token_file(const char *path, char **out, diag *dg)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        file_problem(dg, path, "the API token file is not a regular file");
        return -EINVAL;
    }
    if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
        close(fd);
        file_problem(dg, path,
                     "the API token file is accessible by group or others (mode %04o); "
                     "refusing it: run chmod 600 %s",
                     (unsigned)(sb.st_mode & 07777), path);
        return -EPERM;
    }
    char *buf = xmalloc(CONFIG_MAX_TOKEN + 1);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, CONFIG_MAX_TOKEN + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = -errno;
            char eb[128];
            errno_text(-e, eb, sizeof eb);
            close(fd);
            secret_wipe(buf, CONFIG_MAX_TOKEN + 1);
            free(buf);
            file_problem(dg, path, "cannot read the API token file: %s", eb);
            return e;
        }
        if (n == 0 || (len += (size_t)n) > CONFIG_MAX_TOKEN)
            break;
    }
    close(fd);
    if (len > CONFIG_MAX_TOKEN) {
        secret_wipe(buf, CONFIG_MAX_TOKEN + 1);
        free(buf);
        file_problem(dg, path, "the API token file is too large (at most %d bytes)",
                     CONFIG_MAX_TOKEN);
        return -EINVAL;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* Trims white space in place; refuses control characters inside (they would end up in an
 * HTTP header). Never quotes the token. */
static int clean_token(char *t, const char *where, diag *dg)
{
    size_t n = strlen(t);
    while (n && isspace((unsigned char)t[n - 1]))
        t[--n] = '\0';
    size_t skip = strspn(t, " \t\r\n\v\f");
    memmove(t, t + skip, n - skip + 1);
    /* The move leaves the token's last skip bytes behind its new end, where the strlen that
     * secret_free wipes would not reach. */
    secret_wipe(t + n - skip + 1, skip);
    if (!*t) {
        file_problem(dg, where, "the API token is empty");
        return -EINVAL;
    }
    for (const char *p = t; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            file_problem(dg, where,
                         "the API token contains a control character (a line break?); it "
                         "must be a single line");
            return -EINVAL;
        }
    }
    return 0;
}

static int token_from_file(const char *path, const char *label, char **token, const char **source,
                           diag *dg)
{
    char *t = NULL;
    int r = read_token_file(path, &t, dg);
    if (r < 0 || !t)
        return r < 0 ? r : -EIO;
    r = clean_token(t, path, dg);
    if (r < 0) {
        secret_free(&t);
        return r;
    }
    *token = t;
    *source = label;
    return 0;
}

int config_load_token(const config *c, char **token, const char **source, diag *dg)
{
    *token = NULL;
    *source = NULL;
    strbuf tried = {0};
    if (c->api.token_file) {
        int r = token_from_file(c->api.token_file, "token_file", token, source, dg);
        if (r == 0 || (r != -ENOENT && r != -EACCES)) {
            strbuf_free(&tried);
            return r;
        }
        strbuf_printf(&tried, "%s (%s)", c->api.token_file,
                      r == -ENOENT ? "does not exist" : "permission denied");
    }
    const char *cred = getenv("CREDENTIALS_DIRECTORY");
    if (cred && *cred) {
        char *p = xasprintf("%s/api-token", cred);
        int r = token_from_file(p, "credential api-token", token, source, dg);
        if (r == 0 || (r != -ENOENT && r != -EACCES)) {
            free(p);
            strbuf_free(&tried);
            return r;
        }
        strbuf_printf(&tried, "%s%s (%s)", tried.len ? ", " : "", p,
                      r == -ENOENT ? "does not exist" : "permission denied");
        free(p);
    } else {
        strbuf_printf(&tried, "%s$CREDENTIALS_DIRECTORY (not set)", tried.len ? ", " : "");
    }
    const char *env = getenv("BATCHD_API_TOKEN");
    if (env) {
        char *t = xstrdup(env);
        int r = clean_token(t, "$BATCHD_API_TOKEN", dg);
        if (r < 0) {
            secret_free(&t);
            strbuf_free(&tried);
            return r;
        }
        *token = t;
        *source = "environment BATCHD_API_TOKEN";
        strbuf_free(&tried);
        return 0;
    }
    diag_add(dg, DIAG_ERROR, NULL,
             "no API token: tried %s, $BATCHD_API_TOKEN (not set); set [api] token_file "
             "(mode 600), LoadCredential=api-token:... or BATCHD_API_TOKEN",
             tried.data ? tried.data : "");
    strbuf_free(&tried);
    return -ENOENT;
}
