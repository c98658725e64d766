/* batchd-sim: a strict, stateful local stand-in for the Prolific Task Builder API. This
 * file is the HTTP edge only (libmicrohttpd, one thread per connection, one mutex on the
 * state): simcore decides every answer, this file reads clocks, bodies and headers,
 * applies the injected faults' transport effects (drop, slow) and logs. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "batchd/log.h"
#include "batchd/util.h"
#include "simcore.h"

typedef struct sim_server {
    simcore *core;
    char *token;
    size_t max_body;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* broadcast on shutdown and on new faults: slow answers look again */
    bool stopping;
} sim_server;

/* Everything known about one request while its body arrives. */
typedef struct conn_ctx {
    bool started; /* begin_request ran (the URI callback made the context before) */
    int64_t t_ms;
    char *uri; /* the request target as sent: path and query, not decoded */
    char *method;
    char *path;
    simcore_route route;
    simcore_fault_decision fault;
    bool auth;
    bool logged;
    bool discard; /* read and drop the body (faulted or refused request) */
    bool too_large;
    strbuf body;
    simcore_upload *upload;
    simcore_response refusal; /* S3 refusal decided before the body was read */
} conn_ctx;

static sim_server g_server;

/* ---- options ---------------------------------------------------------------------- */

typedef struct sim_options {
    char *listen;
    const char *token;
    simcore_config cfg;
    bool have_seed;
    simcore_fault_rule rules[SIMCORE_MAX_FAULT_RULES];
    size_t n_rules;
    int64_t retry_after_s;
    bool retry_after_date;
    int64_t slow_ms;
    double batch_error;
    int hostile_status;
    int64_t huge_bytes;
    int64_t deep_levels;
    const char *odd_id;
    int64_t export_pad;
    size_t max_body;
    bool quiet;
    bool export_old;
} sim_options;

static void usage(FILE *f)
{
    fputs("Usage: batchd-sim [OPTION]...\n"
          "A local, stateful stand-in for the Prolific Task Builder API (for batchd tests).\n"
          "\n"
          "  --listen ADDR:PORT        where to listen (default 127.0.0.1:8080; port 0 picks\n"
          "                            a free port)\n"
          "  --token TOKEN             the accepted API token (default sim-token)\n"
          "  --seed N                  seed of the fault RNG (default: random)\n"
          "  --import-queued DUR       time an upload stays queued (default 200ms)\n"
          "  --import-processing DUR   time an import processes (default 500ms)\n"
          "  --batch-processing DUR    time from setup to READY (default 1s)\n"
          "  --upload-ttl DUR          lifetime of a presigned upload URL (default 15m)\n"
          "  --sync-queued DUR         time a batch sync stays queued (default 200ms)\n"
          "  --sync-processing DUR     time a batch sync processes (default 500ms)\n"
          "  --export-generating DUR   time an export job generates (default 1s)\n"
          "  --export-url-ttl DUR      lifetime of an export's download URL (default 1h)\n"
          "  --export-mode new|old     POST export: always 202 (new, default) or 200 with\n"
          "                            the url once the batch has a finished export (old)\n"
          "  --export-pad BYTES        padding in every exported record, to make big\n"
          "                            ZIPs (default 0)\n"
          "  --fault KIND=PROB[@EP]    inject a fault with probability PROB (0 to 1), or\n"
          "  --fault KIND=COUNTx[@EP]  into the next COUNT matching requests (503=2x);\n"
          "                            KIND: 500 502 503 5xx 429 drop drop-after slow,\n"
          "                            or a hostile reply: echo echo-raw echo-json\n"
          "                            echo-pct echo-b64 echo-header echo-429 huge deep\n"
          "                            badutf8 badutf8-text oddid;\n"
          "                            EP: create_dataset get_dataset upload_url upload\n"
          "                            get_import create_batch list_batches get_batch\n"
          "                            batch_status setup sync get_sync export\n"
          "                            list_exports get_export delete_export download\n"
          "                            (repeatable; first hit wins)\n"
          "  --retry-after SECS|date   Retry-After of a 429: seconds (default 1) or an HTTP-date\n"
          "  --slow DUR                delay of a slow fault (default 5s)\n"
          "  --batch-error PROB        probability that a setup ends in ERROR (default 0)\n"
          "  --hostile-status CODE     status of echo, huge, deep and badutf8 replies\n"
          "                            (400 to 599; default 400)\n"
          "  --huge-size BYTES         size of a huge reply (default 9437184: 9 MiB)\n"
          "  --deep-levels N           arrays nested in a deep reply (default 100000)\n"
          "  --odd-id ID               the id an oddid reply gives (default: one of the\n"
          "                            built-in hostile ids per hit, seeded)\n"
          "  --max-body BYTES          largest JSON request body (default 1048576)\n"
          "  --quiet                   no per-request log lines on stderr\n"
          "  -h, --help                print this help and exit\n"
          "  -V, --version             print the version and exit\n"
          "\n"
          "Durations: 500ms, 2s, 5m, 1h. Test hooks (no auth): GET /_sim/state,\n"
          "GET /_sim/requests?since=SEQ, GET|POST /_sim/faults.\n",
          f);
}

static int parse_duration_opt(const char *name, const char *v, int64_t *out)
{
    if (duration_parse(v, out) < 0) {
        fprintf(stderr, "batchd-sim: --%s '%s': not a duration; use e.g. 500ms, 2s, 5m\n", name, v);
        return -EINVAL;
    }
    return 0;
}

static int parse_number_opt(const char *name, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || d < lo || d > hi) {
        fprintf(stderr, "batchd-sim: --%s '%s': must be a number from %g to %g\n", name, v, lo, hi);
        return -EINVAL;
    }
    *out = d;
    return 0;
}

enum {
    OPT_LISTEN = 256,
    OPT_TOKEN,
    OPT_SEED,
    OPT_IMPORT_QUEUED,
    OPT_IMPORT_PROCESSING,
    OPT_BATCH_PROCESSING,
    OPT_UPLOAD_TTL,
    OPT_SYNC_QUEUED,
    OPT_SYNC_PROCESSING,
    OPT_EXPORT_GENERATING,
    OPT_EXPORT_URL_TTL,
    OPT_EXPORT_MODE,
    OPT_EXPORT_PAD,
    OPT_FAULT,
    OPT_RETRY_AFTER,
    OPT_SLOW,
    OPT_BATCH_ERROR,
    OPT_HOSTILE_STATUS,
    OPT_HUGE_SIZE,
    OPT_DEEP_LEVELS,
    OPT_ODD_ID,
    OPT_MAX_BODY,
    OPT_QUIET,
    OPT_HELP,
    OPT_VERSION,
};

/* A whole number from lo to hi; a fraction fails (with parse_number_opt's message only
 * when it is also out of range). */
static int parse_whole_opt(const char *name, const char *v, double lo, double hi, int64_t *out)
{
    double d;
    if (parse_number_opt(name, v, lo, hi, &d) < 0 || d != (double)(int64_t)d)
        return -EINVAL;
    *out = (int64_t)d;
    return 0;
}

/* The options that shape injected faults and hostile replies. */
static int apply_fault_option(sim_options *o, int c, const char *arg)
{
    char err[512];
    int64_t n;
    switch (c) {
    case OPT_FAULT:
        if (o->n_rules == SIMCORE_MAX_FAULT_RULES) {
            fputs("batchd-sim: too many --fault options (at most 64)\n", stderr);
            return -EINVAL;
        }
        if (simcore_fault_parse(arg, &o->rules[o->n_rules], err, sizeof err) < 0) {
            fprintf(stderr, "batchd-sim: --fault: %s\n", err);
            return -EINVAL;
        }
        o->n_rules++;
        return 0;
    case OPT_RETRY_AFTER:
        if (strcmp(arg, "date") == 0) {
            o->retry_after_date = true;
            return 0;
        }
        if (parse_whole_opt("retry-after", arg, 0, 86400, &o->retry_after_s) < 0) {
            fputs("batchd-sim: --retry-after: whole seconds or 'date'\n", stderr);
            return -EINVAL;
        }
        return 0;
    case OPT_SLOW:
        return parse_duration_opt("slow", arg, &o->slow_ms);
    case OPT_BATCH_ERROR:
        return parse_number_opt("batch-error", arg, 0, 1, &o->batch_error);
    case OPT_HOSTILE_STATUS:
        if (parse_whole_opt("hostile-status", arg, 400, 599, &n) < 0)
            return -EINVAL;
        o->hostile_status = (int)n;
        return 0;
    case OPT_HUGE_SIZE:
        return parse_whole_opt("huge-size", arg, 0, (double)SIMCORE_HUGE_MAX, &o->huge_bytes);
    case OPT_DEEP_LEVELS:
        return parse_whole_opt("deep-levels", arg, 1, SIMCORE_DEEP_MAX, &o->deep_levels);
    case OPT_EXPORT_MODE:
        if (strcmp(arg, "new") != 0 && strcmp(arg, "old") != 0) {
            fputs("batchd-sim: --export-mode: 'new' or 'old'\n", stderr);
            return -EINVAL;
        }
        o->export_old = strcmp(arg, "old") == 0;
        return 0;
    case OPT_EXPORT_PAD:
        return parse_whole_opt("export-pad", arg, 0, (double)SIMCORE_EXPORT_PAD_MAX,
                               &o->export_pad);
    case OPT_ODD_ID:
        if (strlen(arg) >= sizeof((simcore_faults *)0)->odd_id) {
            fputs("batchd-sim: --odd-id: at most 255 bytes\n", stderr);
            return -EINVAL;
        }
        o->odd_id = arg;
        return 0;
    default:
        return -EINVAL;
    }
}

static int apply_option(sim_options *o, int c, const char *arg)
{
    double d;
    switch (c) {
    case OPT_LISTEN:
        free(o->listen);
        o->listen = xstrdup(arg);
        return 0;
    case OPT_TOKEN:
        if (!*arg || strpbrk(arg, " \t\r\n")) {
            fputs("batchd-sim: --token: must be non-empty without spaces\n", stderr);
            return -EINVAL;
        }
        o->token = arg;
        return 0;
    case OPT_SEED:
        if (parse_number_opt("seed", arg, 0, 9.0e15, &d) < 0)
            return -EINVAL;
        o->cfg.seed = (uint64_t)d;
        o->have_seed = true;
        return 0;
    case OPT_IMPORT_QUEUED:
        return parse_duration_opt("import-queued", arg, &o->cfg.import_queued_ms);
    case OPT_IMPORT_PROCESSING:
        return parse_duration_opt("import-processing", arg, &o->cfg.import_processing_ms);
    case OPT_BATCH_PROCESSING:
        return parse_duration_opt("batch-processing", arg, &o->cfg.batch_processing_ms);
    case OPT_UPLOAD_TTL:
        return parse_duration_opt("upload-ttl", arg, &o->cfg.upload_ttl_ms);
    case OPT_SYNC_QUEUED:
        return parse_duration_opt("sync-queued", arg, &o->cfg.sync_queued_ms);
    case OPT_SYNC_PROCESSING:
        return parse_duration_opt("sync-processing", arg, &o->cfg.sync_processing_ms);
    case OPT_EXPORT_GENERATING:
        return parse_duration_opt("export-generating", arg, &o->cfg.export_generating_ms);
    case OPT_EXPORT_URL_TTL:
        if (parse_duration_opt("export-url-ttl", arg, &o->cfg.export_url_ttl_ms) < 0)
            return -EINVAL;
        if (o->cfg.export_url_ttl_ms < 1000 || o->cfg.export_url_ttl_ms > 604800000) {
            /* S3's bounds of X-Amz-Expires: 1 s to 7 days. */
            fputs("batchd-sim: --export-url-ttl: from 1s to 7 days\n", stderr);
            return -EINVAL;
        }
        return 0;
    case OPT_MAX_BODY:
        if (parse_number_opt("max-body", arg, 1, 1073741824.0, &d) < 0)
            return -EINVAL;
        o->max_body = (size_t)d;
        return 0;
    case OPT_QUIET:
        o->quiet = true;
        return 0;
    default:
        return apply_fault_option(o, c, arg);
    }
}

/* Returns 0 to run, 1 to exit 0 (help, version), -1 for a usage error. */
static int parse_options(int argc, char **argv, sim_options *o)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"seed", required_argument, NULL, OPT_SEED},
        {"import-queued", required_argument, NULL, OPT_IMPORT_QUEUED},
        {"import-processing", required_argument, NULL, OPT_IMPORT_PROCESSING},
        {"batch-processing", required_argument, NULL, OPT_BATCH_PROCESSING},
        {"upload-ttl", required_argument, NULL, OPT_UPLOAD_TTL},
        {"sync-queued", required_argument, NULL, OPT_SYNC_QUEUED},
        {"sync-processing", required_argument, NULL, OPT_SYNC_PROCESSING},
        {"export-generating", required_argument, NULL, OPT_EXPORT_GENERATING},
        {"export-url-ttl", required_argument, NULL, OPT_EXPORT_URL_TTL},
        {"export-mode", required_argument, NULL, OPT_EXPORT_MODE},
        {"export-pad", required_argument, NULL, OPT_EXPORT_PAD},
        {"fault", required_argument, NULL, OPT_FAULT},
        {"retry-after", required_argument, NULL, OPT_RETRY_AFTER},
        {"slow", required_argument, NULL, OPT_SLOW},
        {"batch-error", required_argument, NULL, OPT_BATCH_ERROR},
        {"hostile-status", required_argument, NULL, OPT_HOSTILE_STATUS},
        {"huge-size", required_argument, NULL, OPT_HUGE_SIZE},
        {"deep-levels", required_argument, NULL, OPT_DEEP_LEVELS},
        {"odd-id", required_argument, NULL, OPT_ODD_ID},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
        if (c == OPT_HELP || c == 'h') {
            usage(stdout);
            return 1;
        }
        if (c == OPT_VERSION || c == 'V') {
            printf("batchd-sim %s\n", BATCHD_VERSION);
            return 1;
        }
        if (c == '?' || apply_option(o, c, optarg) < 0) {
            fputs("Try 'batchd-sim --help'.\n", stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "batchd-sim: unexpected argument '%s'\nTry 'batchd-sim --help'.\n",
                argv[optind]);
        return -1;
    }
    return 0;
}

/* ---- listening -------------------------------------------------------------------- */

/* Splits "ADDR:PORT" or "[V6]:PORT" and resolves it. */
static int resolve_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len, char *host,
                          size_t host_len)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1])
        return -EINVAL;
    size_t n = (size_t)(colon - spec);
    const char *h = spec;
    if (spec[0] == '[' && colon[-1] == ']') {
        h = spec + 1;
        n -= 2;
    }
    if (n == 0 || n >= host_len)
        return -EINVAL;
    memcpy(host, h, n);
    host[n] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai)
        return -EINVAL;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* ---- answering -------------------------------------------------------------------- */

static const char *query_lookup(void *ud, const char *key)
{
    return MHD_lookup_connection_value((struct MHD_Connection *)ud, MHD_GET_ARGUMENT_KIND, key);
}

static void log_request(sim_server *s, conn_ctx *c, int status)
{
    if (c->logged || simcore_endpoint_is_control(c->route.endpoint))
        return;
    c->logged = true;
    simcore_log_entry e = {.t_ms = c->t_ms,
                           .method = c->method,
                           .path = c->path,
                           .endpoint = c->route.endpoint,
                           .status = status,
                           .auth = c->auth,
                           .fault = c->fault.kind,
                           .retry_after_ms = c->fault.retry_after_ms,
                           .uri = c->uri};
    pthread_mutex_lock(&s->lock);
    uint64_t seq = simcore_log_request(s->core, &e);
    pthread_mutex_unlock(&s->lock);
    const char *fault = simcore_fault_kind_name(c->fault.kind);
    log_info("#%llu %s %s -> %d%s%s (%lldms)", (unsigned long long)seq, c->method, c->path, status,
             fault ? " fault=" : "", fault ? fault : "", (long long)(time_now_ms() - c->t_ms));
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    int64_t n = simcore_stream_read(cls, pos, buf, max);
    if (n < 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    simcore_stream_free(cls);
}

/* A buffered body, or a streamed one (r->stream, prepared; handed to the response). */
static struct MHD_Response *make_response(simcore_response *r)
{
    if (r->stream) {
        simcore_stream *st = r->stream;
        r->stream = NULL;
        struct MHD_Response *resp = MHD_create_response_from_callback(
            simcore_stream_size(st), 64 * 1024, stream_reader, st, stream_free);
        if (!resp)
            simcore_stream_free(st);
        return resp;
    }
    static char empty[1];
    char *body = r->body ? r->body : empty;
    size_t len = r->body && r->body_len ? r->body_len : strlen(body);
    return MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_COPY);
}

static enum MHD_Result send_response(struct MHD_Connection *conn, simcore_response *r,
                                     const char *retry_after)
{
    struct MHD_Response *resp = make_response(r);
    if (!resp)
        return MHD_NO;
    if (r->content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    if (r->allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->etag[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, r->etag);
    if (r->retry_after)
        retry_after = r->retry_after;
    if (retry_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    if (r->echo_header)
        MHD_add_response_header(resp, "X-Echo-Authorization", r->echo_header);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

#define MAX_ECHO_HEADERS 64

typedef struct header_list {
    simcore_header h[MAX_ECHO_HEADERS];
    size_t n;
} header_list;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    header_list *l = cls;
    if (l->n < MAX_ECHO_HEADERS)
        l->h[l->n++] = (simcore_header){key, value};
    return MHD_YES;
}

/* A hostile reply: simcore builds it from the request as received. */
static void hostile_response(sim_server *s, struct MHD_Connection *conn, conn_ctx *c,
                             simcore_response *r)
{
    header_list hl = {.n = 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, &hl);
    simcore_request req = {
        .method = c->method,
        .path = c->path,
        .uri = c->uri,
        .authorization =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .headers = hl.h,
        .n_headers = hl.n,
        .now_ms = time_now_ms(),
    };
    pthread_mutex_lock(&s->lock);
    simcore_hostile_response(s->core, &c->fault, &req, r);
    pthread_mutex_unlock(&s->lock);
}

static void fault_response(sim_server *s, struct MHD_Connection *conn, conn_ctx *c,
                           simcore_response *r, char *retry_after, size_t ra_len)
{
    memset(r, 0, sizeof *r);
    if (simcore_fault_is_hostile(c->fault.kind)) {
        hostile_response(s, conn, c, r);
        return;
    }
    const char *detail = c->fault.status == 429 ? "Request was throttled (simulated)."
                                                : "Simulated server error; retry later.";
    if (c->route.endpoint == SIMCORE_EP_UPLOAD || c->route.endpoint == SIMCORE_EP_DOWNLOAD) {
        r->status = c->fault.status;
        r->content_type = "application/xml";
        r->body = xasprintf("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
                            "<Message>%s</Message></Error>",
                            c->fault.status == 503   ? "SlowDown"
                            : c->fault.status == 429 ? "TooManyRequests"
                                                     : "InternalError",
                            detail);
    } else {
        simcore_response_error(r, c->fault.status, detail);
    }
    if (c->fault.status != 429)
        return;
    pthread_mutex_lock(&s->lock);
    simcore_faults f = *simcore_get_faults(s->core);
    pthread_mutex_unlock(&s->lock);
    if (f.retry_after_date) {
        time_t t = (time_t)((time_now_ms() + 999) / 1000 + f.retry_after_s);
        struct tm tm;
        gmtime_r(&t, &tm);
        static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        snprintf(retry_after, ra_len, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
    } else {
        snprintf(retry_after, ra_len, "%lld", (long long)f.retry_after_s);
    }
    c->fault.retry_after_ms = f.retry_after_s * 1000;
}

/* Performs the request (the fault, if any, did not stop it). */
static void act(sim_server *s, struct MHD_Connection *conn, conn_ctx *c, simcore_response *r)
{
    int64_t now = time_now_ms();
    if (c->upload) {
        pthread_mutex_lock(&s->lock);
        simcore_upload_finish(s->core, c->upload, now, r);
        pthread_mutex_unlock(&s->lock);
        c->upload = NULL;
        return;
    }
    simcore_request req = {
        .method = c->method,
        .path = c->path,
        .authorization =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .content_type =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
        .query = query_lookup,
        .query_ud = conn,
        .body = c->body.data,
        .body_len = c->body.len,
        .now_ms = now,
    };
    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    pthread_mutex_lock(&s->lock);
    bool gives_url = c->route.endpoint == SIMCORE_EP_UPLOAD_URL ||
                     c->route.endpoint == SIMCORE_EP_EXPORT ||
                     c->route.endpoint == SIMCORE_EP_GET_EXPORT;
    if (gives_url && host && *host && !strpbrk(host, "/?#\"<> \t")) {
        /* Hand out URLs the client can reach the way it reached us. */
        char *base = xasprintf("http://%s", host);
        simcore_set_base_url(s->core, base);
        free(base);
    }
    simcore_handle(s->core, s->token, &req, r);
    simcore_hostile_rewrite(s->core, &c->fault, c->route.endpoint, r);
    if (c->route.endpoint == SIMCORE_EP_SIM_FAULTS)
        pthread_cond_broadcast(&s->wake); /* slow answers held now use the new delay */
    pthread_mutex_unlock(&s->lock);
}

/* Holds a slow answer for the slow fault's delay, counted from now, or less when the server
 * stops. The delay is read again whenever POST /_sim/faults changes the faults (act() wakes
 * every waiter), so a test can hold an answer as long as it needs and release it at the
 * moment it chooses by setting slow_ms to 0. */
static void slow_wait(sim_server *s)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        int64_t ms = simcore_get_faults(s->core)->slow_ms;
        struct timespec ts = start;
        ts.tv_sec += (time_t)(ms / 1000);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_cond_timedwait(&s->wake, &s->lock, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Reads a download's ZIP once for its CRCs and sizes: outside the lock (it is pure and
 * may take seconds for a big one). */
static void prepare_stream(simcore_response *r)
{
    if (!r->stream || simcore_stream_prepare(r->stream) == 0)
        return;
    simcore_response_free(r);
    memset(r, 0, sizeof *r);
    r->status = 500;
    r->content_type = "application/xml";
    r->body = xstrdup("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError"
                      "</Code><Message>The export is too large for a ZIP without ZIP64."
                      "</Message></Error>");
}

static enum MHD_Result finish_request(sim_server *s, struct MHD_Connection *conn, conn_ctx *c)
{
    simcore_fault_kind k = c->fault.kind;
    if (k == SIMCORE_FAULT_DROP) {
        log_request(s, c, 0);
        return MHD_NO;
    }
    simcore_response r;
    char retry_after[64] = "";
    if (c->fault.status) {
        fault_response(s, conn, c, &r, retry_after, sizeof retry_after);
    } else if (c->refusal.status) {
        r = c->refusal;
        c->refusal = (simcore_response){0};
    } else {
        act(s, conn, c, &r);
        prepare_stream(&r);
    }
    if (k == SIMCORE_FAULT_DROP_AFTER) {
        simcore_response_free(&r);
        log_request(s, c, 0);
        return MHD_NO;
    }
    if (c->fault.hold) {
        /* Logged before the hold, so that a test can see the answer is made and held. */
        log_request(s, c, r.status);
        slow_wait(s);
    } else {
        if (k == SIMCORE_FAULT_SLOW)
            slow_wait(s);
        log_request(s, c, r.status);
    }
    enum MHD_Result rc = send_response(conn, &r, retry_after[0] ? retry_after : NULL);
    simcore_response_free(&r);
    return rc;
}

static enum MHD_Result answer_now(sim_server *s, struct MHD_Connection *conn, conn_ctx *c,
                                  int status, const char *detail)
{
    simcore_response r;
    memset(&r, 0, sizeof r);
    simcore_response_error(&r, status, detail);
    log_request(s, c, status);
    enum MHD_Result rc = send_response(conn, &r, NULL);
    simcore_response_free(&r);
    return rc;
}

/* Called by libmicrohttpd with the request target as sent, before it is decoded: the
 * context made here is the request's *con_cls (freed by on_completed). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls;
    (void)conn;
    conn_ctx *c = xcalloc(1, sizeof *c);
    c->uri = xstrdup(uri ? uri : "");
    return c;
}

static conn_ctx *begin_request(sim_server *s, struct MHD_Connection *conn, conn_ctx *c,
                               const char *url, const char *method)
{
    if (!c)
        c = xcalloc(1, sizeof *c);
    c->started = true;
    c->t_ms = time_now_ms();
    c->method = xstrdup(method);
    c->path = xstrdup(url);
    strbuf_init(&c->body);
    simcore_route_request(method, url, &c->route);
    c->auth =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION) != NULL;
    c->fault.retry_after_ms = -1;
    pthread_mutex_lock(&s->lock);
    simcore_fault_decide(s->core, c->route.endpoint, c->t_ms, &c->fault);
    pthread_mutex_unlock(&s->lock);
    if (c->fault.kind != SIMCORE_FAULT_NONE && c->fault.kind != SIMCORE_FAULT_SLOW &&
        c->fault.kind != SIMCORE_FAULT_DROP_AFTER && c->fault.kind != SIMCORE_FAULT_ODDID)
        c->discard = true;
    if (!c->discard && c->route.status == 0 && c->route.endpoint == SIMCORE_EP_UPLOAD) {
        simcore_request req = {
            .method = method,
            .path = url,
            .authorization =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
            .content_type =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
            .query = query_lookup,
            .query_ud = conn,
            .now_ms = c->t_ms,
        };
        pthread_mutex_lock(&s->lock);
        int rc = simcore_upload_begin(s->core, c->route.sub, &req, &c->upload, &c->refusal);
        pthread_mutex_unlock(&s->lock);
        if (rc < 0)
            c->discard = true;
    }
    return c;
}

static bool body_too_large(const sim_server *s, struct MHD_Connection *conn, const conn_ctx *c)
{
    if (c->route.endpoint == SIMCORE_EP_UPLOAD && c->route.status == 0)
        return false; /* uploads stream; any size */
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return cl && strtoull(cl, NULL, 10) > s->max_body;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    sim_server *s = cls;
    conn_ctx *c = *con_cls;
    if (!c || !c->started) {
        c = begin_request(s, conn, c, url, method);
        *con_cls = c;
        if ((!c->fault.kind || c->fault.kind == SIMCORE_FAULT_ODDID) &&
            body_too_large(s, conn, c)) {
            c->too_large = true;
            return answer_now(s, conn, c, 413,
                              "Request body too large: the limit is set by batchd-sim "
                              "--max-body.");
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (c->too_large || c->discard)
            return MHD_YES;
        if (c->upload) {
            simcore_upload_feed(c->upload, upload_data, n);
            return MHD_YES;
        }
        if (c->body.len + n > s->max_body) {
            c->too_large = true;
            strbuf_free(&c->body);
            return answer_now(s, conn, c, 413,
                              "Request body too large: the limit is set by batchd-sim "
                              "--max-body.");
        }
        strbuf_append(&c->body, upload_data, n);
        return MHD_YES;
    }
    if (c->too_large)
        return MHD_YES; /* the 413 is already queued */
    return finish_request(s, conn, c);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    (void)toe;
    sim_server *s = cls;
    conn_ctx *c = *con_cls;
    if (!c)
        return;
    if (c->started)
        log_request(s, c, 0); /* the client went away before an answer */
    simcore_upload_free(c->upload);
    simcore_response_free(&c->refusal);
    strbuf_free(&c->body);
    free(c->uri);
    free(c->method);
    free(c->path);
    free(c);
    *con_cls = NULL;
}

/* libmicrohttpd's own messages (a dropped connection, a client gone mid-upload) are
 * expected in fault tests: debug level, so --quiet and normal runs stay readable. */
static void mhd_logger(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    buf[strcspn(buf, "\n")] = '\0';
    log_debug("microhttpd: %s", buf);
}

/* ---- main ------------------------------------------------------------------------- */

static int listen_port(struct MHD_Daemon *d)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
    if (!info)
        return -1;
    struct sockaddr_storage ss = {0};
    socklen_t len = sizeof ss;
    if (getsockname(info->listen_fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* The faults set on the command line; the rest keep simcore's defaults. */
static void apply_fault_options(simcore_faults *f, const sim_options *o)
{
    memcpy(f->rules, o->rules, o->n_rules * sizeof o->rules[0]);
    f->n_rules = o->n_rules;
    f->retry_after_s = o->retry_after_s;
    f->retry_after_date = o->retry_after_date;
    f->slow_ms = o->slow_ms;
    f->batch_error = o->batch_error;
    if (o->hostile_status)
        f->hostile_status = o->hostile_status;
    if (o->huge_bytes >= 0)
        f->huge_bytes = o->huge_bytes;
    if (o->deep_levels)
        f->deep_levels = o->deep_levels;
    f->export_mode = o->export_old ? SIMCORE_EXPORT_OLD : SIMCORE_EXPORT_NEW;
    f->export_pad = o->export_pad;
    if (o->odd_id) {
        f->odd_id_mode = SIMCORE_ODD_ID_STRING;
        strlcpy_bd(f->odd_id, o->odd_id, sizeof f->odd_id);
    }
}

static void server_init(sim_server *s, sim_options *o)
{
    s->token = xstrdup(o->token);
    s->max_body = o->max_body;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    /* Slow answers wait with deadlines on the monotonic clock (the wall clock may jump). */
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (!o->have_seed)
        random_bytes(&o->cfg.seed, sizeof o->cfg.seed);
    s->core = simcore_new(&o->cfg);
    apply_fault_options(simcore_get_faults(s->core), o);
}

static void server_free(sim_server *s)
{
    simcore_free(s->core);
    free(s->token);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
}

static struct MHD_Daemon *start_daemon(sim_server *s, const struct sockaddr_storage *ss)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ss->ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                            (const struct sockaddr *)ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                            s, MHD_OPTION_URI_LOG_CALLBACK, on_uri, s, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_logger, NULL, MHD_OPTION_CONNECTION_LIMIT, (unsigned)4000,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
}

/* Tells simcore its base URL (upload URLs point at it) and prints it: tests read the
 * "listening on" line to learn the port. */
static void announce(sim_server *s, const char *host, bool v6, int port)
{
    char *base = xasprintf("http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    pthread_mutex_lock(&s->lock);
    simcore_set_base_url(s->core, base);
    pthread_mutex_unlock(&s->lock);
    printf("listening on %s\n", base);
    fflush(stdout);
    free(base);
}

/* Waits for SIGTERM or SIGINT (blocked in every thread by main), then wakes the slow
 * answers so that the daemon's threads can end. */
static void wait_for_stop(sim_server *s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    sigwait(&set, &sig);
    log_info("signal %d: stopping", sig);
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

static int run(sim_options *o)
{
    struct sockaddr_storage ss = {0};
    socklen_t sslen;
    char host[256];
    if (resolve_listen(o->listen, &ss, &sslen, host, sizeof host) < 0) {
        fprintf(stderr, "batchd-sim: --listen '%s': expected ADDR:PORT such as 127.0.0.1:8080\n",
                o->listen);
        return 64;
    }
    sim_server *s = &g_server;
    server_init(s, o);
    struct MHD_Daemon *d = start_daemon(s, &ss);
    int port = d ? listen_port(d) : -1;
    if (!d || port < 0) {
        fprintf(stderr, "batchd-sim: cannot listen on %s: %s; pick another address or port\n",
                o->listen, strerror(errno));
        if (d)
            MHD_stop_daemon(d);
        server_free(s);
        return 69;
    }
    announce(s, host, ss.ss_family == AF_INET6, port);
    wait_for_stop(s);
    MHD_stop_daemon(d);
    server_free(s);
    return 0;
}

int main(int argc, char **argv)
{
    sim_options o = {
        .listen = xstrdup("127.0.0.1:8080"),
        .token = "sim-token",
        .cfg = {.import_queued_ms = 200,
                .import_processing_ms = 500,
                .batch_processing_ms = 1000,
                .upload_ttl_ms = 15 * 60 * 1000,
                .sync_queued_ms = 200,
                .sync_processing_ms = 500,
                .export_generating_ms = 1000,
                .export_url_ttl_ms = 3600 * 1000},
        .retry_after_s = 1,
        .slow_ms = 5000,
        .huge_bytes = -1,
        .max_body = 1024 * 1024,
    };
    int rc = parse_options(argc, argv, &o);
    if (rc != 0) {
        free(o.listen);
        return rc > 0 ? 0 : 64;
    }
    log_init("batchd-sim", o.quiet ? LOG_LVL_WARNING : LOG_LVL_INFO);
    /* Block the stop signals in every thread; main waits for them with sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = run(&o);
    free(o.listen);
    return rc;
}
