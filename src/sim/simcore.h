/* simcore: the pure part of batchd-sim. It owns the simulated Prolific state (datasets,
 * imports, batches), routes API paths to endpoint names, answers requests as the API
 * does, derives import and batch lifecycles from the time passed in, computes import
 * results from uploaded bytes (streamed through records), decides injected faults with a
 * seeded RNG and keeps the request log. No sockets, no clocks: the server (main.c) reads
 * the time and serialises calls with one mutex; only simcore_upload_feed runs unlocked. */
#ifndef BATCHD_SIMCORE_H
#define BATCHD_SIMCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef enum simcore_endpoint {
    SIMCORE_EP_NONE = 0, /* not an API endpoint (unknown path) */
    SIMCORE_EP_CREATE_DATASET,
    SIMCORE_EP_GET_DATASET,
    SIMCORE_EP_UPLOAD_URL,
    SIMCORE_EP_UPLOAD, /* the presigned PUT */
    SIMCORE_EP_GET_IMPORT,
    SIMCORE_EP_CREATE_BATCH,
    SIMCORE_EP_LIST_BATCHES,
    SIMCORE_EP_GET_BATCH,
    SIMCORE_EP_BATCH_STATUS,
    SIMCORE_EP_SETUP,
    SIMCORE_EP_SYNC,          /* POST …/batches/{id}/sync */
    SIMCORE_EP_GET_SYNC,      /* GET …/batches/{id}/syncs/{sync_id} */
    SIMCORE_EP_EXPORT,        /* POST …/batches/{id}/export */
    SIMCORE_EP_LIST_EXPORTS,  /* GET …/batches/{id}/export */
    SIMCORE_EP_GET_EXPORT,    /* GET …/batches/{id}/export/{export_id} */
    SIMCORE_EP_DELETE_EXPORT, /* DELETE …/batches/{id}/export/{export_id} */
    SIMCORE_EP_DOWNLOAD,      /* the presigned GET of an export's ZIP */
    SIMCORE_EP_SIM_STATE,     /* /_sim/state: never faulted, no auth */
    SIMCORE_EP_SIM_REQUESTS,
    SIMCORE_EP_SIM_FAULTS,
    SIMCORE_EP_COUNT_,
} simcore_endpoint;

/* "create_dataset", ...; NULL for SIMCORE_EP_NONE. */
const char *simcore_endpoint_name(simcore_endpoint ep);
/* Returns 0, or -EINVAL for a name that is not one of the API endpoint names (create_dataset
 * through download). */
int simcore_endpoint_from_name(const char *name, simcore_endpoint *out);
/* True for the /_sim/ endpoints (no auth, no faults, not logged). */
bool simcore_endpoint_is_control(simcore_endpoint ep);

/* Where a request goes. status 0: routed; 404: unknown path; 405: known path, wrong
 * method (allow names the method that is allowed). endpoint is set for 405 too. */
typedef struct simcore_route {
    simcore_endpoint endpoint;
    int status;
    const char *allow;
    char id[64];   /* dataset_id or batch_id from the path */
    char sub[512]; /* import_id, upload filename, sync_id, export_id, or the file key */
} simcore_route;

/* path is the URL path without the query string (already percent-decoded). */
void simcore_route_request(const char *method, const char *path, simcore_route *out);

/* ---- faults ---------------------------------------------------------------------- */

typedef enum simcore_fault_kind {
    SIMCORE_FAULT_NONE = 0,
    SIMCORE_FAULT_500,
    SIMCORE_FAULT_502,
    SIMCORE_FAULT_503,
    SIMCORE_FAULT_5XX, /* one of 500, 502, 503 per hit */
    SIMCORE_FAULT_429,
    SIMCORE_FAULT_DROP,       /* close without a response, before acting */
    SIMCORE_FAULT_DROP_AFTER, /* act, then close without a response */
    SIMCORE_FAULT_SLOW,       /* act, then wait slow_ms before answering */
    /* Hostile replies (see simcore_hostile_response): an error of hostile_status whose
     * body or headers echo the request's headers the way a debugging proxy does. */
    SIMCORE_FAULT_ECHO,         /* one of the five echo variants below per hit (seeded) */
    SIMCORE_FAULT_ECHO_RAW,     /* text/plain: the request line and headers as received */
    SIMCORE_FAULT_ECHO_JSON,    /* JSON error: every echoed character as \uXXXX */
    SIMCORE_FAULT_ECHO_PCT,     /* JSON error: header values percent-encoded, every byte */
    SIMCORE_FAULT_ECHO_B64,     /* JSON error: header values in base64 */
    SIMCORE_FAULT_ECHO_HEADER,  /* JSON error; Authorization in X-Echo-Authorization */
    SIMCORE_FAULT_ECHO_429,     /* 429; Authorization in Retry-After and in the body */
    SIMCORE_FAULT_HUGE,         /* JSON error of huge_bytes (detail is most of it) */
    SIMCORE_FAULT_DEEP,         /* JSON error whose detail nests deep_levels arrays */
    SIMCORE_FAULT_BADUTF8,      /* JSON error: invalid UTF-8 and control characters */
    SIMCORE_FAULT_BADUTF8_TEXT, /* text/plain error: the same, raw, with a NUL byte */
    SIMCORE_FAULT_ODDID,        /* act, then answer with a hostile id (see odd_id) */
} simcore_fault_kind;

/* True for the kinds answered by simcore_hostile_response (every echo, huge, deep and
 * badutf8 kind); oddid acts and is applied by simcore_hostile_rewrite. */
bool simcore_fault_is_hostile(simcore_fault_kind k);

const char *simcore_fault_kind_name(simcore_fault_kind k);
int simcore_fault_kind_from_name(const char *name, simcore_fault_kind *out);

/* A rule hits either with a probability (one RNG draw per matching request) or, when
 * counted, on each of the next count matching requests (no draw; count goes down by one
 * per hit and a spent rule stays in the table with count 0). Zeroed is a probability rule. */
typedef struct simcore_fault_rule {
    simcore_fault_kind kind;
    double probability;        /* 0..1; unused when counted */
    bool counted;              /* count, not probability */
    int64_t count;             /* hits left (0..SIMCORE_MAX_FAULT_COUNT) when counted */
    simcore_endpoint endpoint; /* SIMCORE_EP_NONE: every API request */
    bool hold;                 /* the answer is also held like a slow one's */
} simcore_fault_rule;

#define SIMCORE_MAX_FAULT_COUNT 1000000000

#define SIMCORE_MAX_FAULT_RULES 64

typedef struct simcore_faults {
    simcore_fault_rule rules[SIMCORE_MAX_FAULT_RULES];
    size_t n_rules;
    int64_t retry_after_s; /* value of Retry-After on 429 */
    bool retry_after_date; /* send it as an HTTP-date instead of seconds */
    int64_t slow_ms;       /* delay of a "slow" fault */
    double batch_error;    /* probability that a setup ends in ERROR */
    int hostile_status;    /* status of echo, huge, deep and badutf8 replies (400) */
    int64_t huge_bytes;    /* size of a huge body (9 MiB: past batchd's 8 MiB cap) */
    int64_t deep_levels;   /* nesting of a deep body (100000) */
    /* The id an oddid reply gives: SIMCORE_ODD_ID_LIST picks one of the built-in hostile
     * ids per hit (seeded), STRING gives odd_id, NUMBER gives odd_id_number (a JSON
     * number where a string belongs). */
    enum { SIMCORE_ODD_ID_LIST = 0, SIMCORE_ODD_ID_STRING, SIMCORE_ODD_ID_NUMBER } odd_id_mode;
    char odd_id[256];
    double odd_id_number;
    /* POST …/export: SIMCORE_EXPORT_NEW (the newer docs: always 202 with an export_id, a
     * fresh job per POST unless one with the same filters is generating) or
     * SIMCORE_EXPORT_OLD (the 2026-08-01 spec: 202 generating, or 200 complete with the
     * url when the batch already has a finished export). */
    enum { SIMCORE_EXPORT_NEW = 0, SIMCORE_EXPORT_OLD } export_mode;
    int64_t export_pad; /* bytes of padding in every exported record (0: none) */
} simcore_faults;

#define SIMCORE_EXPORT_PAD_MAX (1LL << 30)

#define SIMCORE_HUGE_DEFAULT (9 * 1024 * 1024)
#define SIMCORE_HUGE_MAX     (256LL * 1024 * 1024)
#define SIMCORE_DEEP_DEFAULT 100000
#define SIMCORE_DEEP_MAX     10000000

/* Parses "KIND=PROB[@ENDPOINT]" ("429=0.1@create_batch", "drop=1", "echo-raw=1") or
 * "KIND=COUNTx[@ENDPOINT]" ("503=2x@create_batch": the next 2 matching requests). Returns 0
 * or -EINVAL and writes what is wrong to err. */
int simcore_fault_parse(const char *spec, simcore_fault_rule *out, char *err, size_t err_len);
/* Replaces the fault table from the JSON of POST /_sim/faults ({"faults": [{"kind",
 * "probability" | "count", "endpoint"}, ...],
 * "retry_after": n | "date", "slow_ms": n, "batch_error": p, "hostile_status": 400..599,
 * "huge_bytes": n, "deep_levels": n, "odd_id": "text" | number | null (null: the built-in
 * list), "export_mode": "new" | "old", "export_pad": n}; members left out keep their value,
 * "faults" replaces the whole table). Returns 0 or -EINVAL with err filled; on error nothing
 * changes. */
int simcore_faults_from_json(simcore_faults *f, const cJSON *j, char *err, size_t err_len);
/* The form simcore_faults_from_json takes; a counted rule shows the hits it has left. */
cJSON *simcore_faults_to_json(const simcore_faults *f);

typedef struct simcore_fault_decision {
    simcore_fault_kind kind; /* 5xx resolved to 500/502/503 */
    int status;              /* HTTP status to answer for 5xx/429, else 0 */
    int64_t retry_after_ms;  /* for 429, else -1 */
    unsigned variant;        /* oddid: index into the built-in hostile ids */
    bool hold;               /* held like a slow answer before it is sent */
} simcore_fault_decision;

/* ---- the simulator ------------------------------------------------------------- */

typedef struct simcore_config {
    int64_t import_queued_ms;
    int64_t import_processing_ms;
    int64_t batch_processing_ms;
    int64_t upload_ttl_ms;
    int64_t sync_queued_ms;       /* a sync waits this long before processing */
    int64_t sync_processing_ms;   /* and processes this long */
    int64_t export_generating_ms; /* an export generates this long */
    int64_t export_url_ttl_ms;    /* lifetime of an export's presigned URL (0: 1 h) */
    uint64_t seed;
    size_t max_errors;    /* import errors[] cap (0: 100) */
    size_t max_record;    /* longest record in an upload (0: 1 MiB) */
    size_t max_log;       /* request log entries kept (0: 100000) */
    const char *base_url; /* "http://127.0.0.1:8080", for upload URLs */
} simcore_config;

typedef struct simcore simcore;

/* Copies the config; the faults start empty (retry_after 1 s, slow 5 s). */
simcore *simcore_new(const simcore_config *cfg);
void simcore_free(simcore *sim);
/* Changes the URL the presigned upload URLs start with (after the port is known). */
void simcore_set_base_url(simcore *sim, const char *base_url);
simcore_faults *simcore_get_faults(simcore *sim);

/* Decides the fault for one request to endpoint ep (control endpoints never fault): the
 * first matching rule in table order that hits wins; a counted rule that hits is used up
 * by one. */
void simcore_fault_decide(simcore *sim, simcore_endpoint ep, int64_t now_ms,
                          simcore_fault_decision *out);

typedef struct simcore_header {
    const char *name, *value;
} simcore_header;

/* One request, as the server saw it. */
typedef struct simcore_request {
    const char *method;
    const char *path;          /* without query */
    const char *authorization; /* header value or NULL */
    const char *content_type;  /* header value or NULL */
    /* Query argument lookup (NULL when absent). */
    const char *(*query)(void *ud, const char *key);
    void *query_ud;
    const char *body; /* NUL-terminated copy of the body (may be NULL when body_len 0) */
    size_t body_len;
    int64_t now_ms;
    /* Every request header in arrival order and the request target as sent (path and
     * query, not decoded), for the echo replies; may be NULL/0. */
    const simcore_header *headers;
    size_t n_headers;
    const char *uri;
} simcore_request;

typedef struct simcore_response {
    int status;
    char *body;               /* owned; NULL for an empty body */
    size_t body_len;          /* 0: strlen(body) (a hostile body may hold NUL bytes) */
    char *retry_after;        /* owned; a Retry-After value simcore chose, or NULL */
    char *echo_header;        /* owned; value of X-Echo-Authorization, or NULL */
    const char *content_type; /* static string or NULL */
    const char *allow;        /* for 405 */
    char etag[48];            /* for a successful upload */
    /* A streamed body (an export's ZIP) instead of body: owned; see simcore_stream_*. */
    struct simcore_stream *stream;
} simcore_response;

void simcore_response_free(simcore_response *resp);
/* Fills resp (zeroed first: free it before, if it holds anything) with the API's Error
 * envelope. */
void simcore_response_error(simcore_response *resp, int status, const char *detail);

/* Answers every API and /_sim request except the presigned PUT (see simcore_upload_*).
 * token is the accepted API token. Checks in the API's order: route (404), auth (401),
 * method (405), Content-Type (415), JSON (400), then the endpoint's own rules. */
void simcore_handle(simcore *sim, const char *token, const simcore_request *req,
                    simcore_response *resp);

/* ---- hostile replies ------------------------------------------------------------ */

/* Fills resp with the hostile reply of decision d (simcore_fault_is_hostile(d->kind)) to
 * req: d->status, and the body and headers of the kind. On the upload endpoint too. */
void simcore_hostile_response(const simcore *sim, const simcore_fault_decision *d,
                              const simcore_request *req, simcore_response *resp);
/* After an oddid request acted: replaces the id the client goes on with in a 2xx reply
 * of ep (create_dataset and create_batch "id", upload_url "import_id", list_batches
 * "results[].id", sync "sync_id", export "export_id") with the hostile id of d. The sim's own state
 * keeps its real ids. */
void simcore_hostile_rewrite(const simcore *sim, const simcore_fault_decision *d,
                             simcore_endpoint ep, simcore_response *resp);
/* The built-in hostile ids; *is_number is set for the one given as a JSON number. */
size_t simcore_odd_id_count(void);
const char *simcore_odd_id(size_t i, bool *is_number);

/* ---- uploads ------------------------------------------------------------------- */

typedef struct simcore_upload simcore_upload;

/* Checks a presigned PUT like S3 does (no Authorization header, the Content-Type the URL
 * was issued for, not expired, known key, right signature). On success returns 0 and
 * *out; else returns -EACCES/-EINVAL with resp filled (S3 XML error). file_key is
 * route.sub; the query gives X-Amz-Signature. */
int simcore_upload_begin(simcore *sim, const char *file_key, const simcore_request *req,
                         simcore_upload **out, simcore_response *resp);
/* Feeds upload bytes; needs no lock (touches only the upload). Memory stays flat. */
void simcore_upload_feed(simcore_upload *u, const void *data, size_t len);
/* Ends the upload: computes the import's result and moves it to queued. Fills resp
 * (200, empty body, ETag). Frees u. */
void simcore_upload_finish(simcore *sim, simcore_upload *u, int64_t now_ms, simcore_response *resp);
/* Abandons an upload (connection lost): the import stays uninitialised. NULL is a no-op. */
void simcore_upload_free(simcore_upload *u);

/* ---- downloads ----------------------------------------------------------------- */

/* An export's ZIP as a byte stream made on the fly from a snapshot of the batch: the
 * server never holds the archive. simcore_handle answers a download with resp->stream set;
 * the server calls simcore_stream_prepare outside its lock (it reads the whole stream
 * once for the CRCs and sizes), then simcore_stream_read with increasing offsets. */
typedef struct simcore_stream simcore_stream;

/* Computes the entries' CRC-32 and sizes. Returns 0, or -EFBIG when the ZIP would need
 * ZIP64 (4 GiB or more). */
int simcore_stream_prepare(simcore_stream *s);
/* Total bytes of the ZIP (after prepare). */
uint64_t simcore_stream_size(const simcore_stream *s);
/* Copies up to max bytes from offset pos, which must be where the last read ended.
 * Returns the count, 0 at the end, or -EINVAL for an offset out of sequence. */
int64_t simcore_stream_read(simcore_stream *s, uint64_t pos, char *buf, size_t max);
void simcore_stream_free(simcore_stream *s);

/* CRC-32 (ISO-HDLC, as ZIP uses): crc is 0 to start, or the value so far to continue. */
uint32_t simcore_crc32(uint32_t crc, const void *data, size_t len);

/* ---- observation --------------------------------------------------------------- */

typedef struct simcore_log_entry {
    int64_t t_ms; /* arrival, epoch ms */
    const char *method;
    const char *path;
    simcore_endpoint endpoint;
    int status; /* 0: dropped */
    bool auth;  /* an Authorization header was present */
    simcore_fault_kind fault;
    int64_t retry_after_ms; /* -1: none */
    const char *uri;        /* the request target as sent (not decoded), or NULL */
} simcore_log_entry;

/* Appends to the request log (oldest entries beyond max_log are forgotten); returns the
 * entry's seq (1, 2, ...). */
uint64_t simcore_log_request(simcore *sim, const simcore_log_entry *e);
/* [{"seq", "t_ms", "method", "path", "uri", "endpoint", "status", "auth", "fault",
 *   "retry_after_ms"}] with seq > since ("uri": the target as sent, or null). */
cJSON *simcore_requests_json(const simcore *sim, uint64_t since);
/* {"datasets": [Dataset with imports], "batches": [Batch with "syncs": [SyncJob] and
 *  "exports": [export job]], "requests": [...], "faults": {...}} as of now_ms. */
cJSON *simcore_state_json(simcore *sim, int64_t now_ms);

/* For tests and the import JSON: an import's status at now_ms ("uninitialised", ...),
 * NULL for an unknown id. */
const char *simcore_import_status(const simcore *sim, const char *import_id, int64_t now_ms);
/* A batch's status at now_ms ("UNINITIALISED", ...), NULL for an unknown id. */
const char *simcore_batch_status(const simcore *sim, const char *batch_id, int64_t now_ms);
/* A sync's status at now_ms ("queued", ...), NULL for an unknown batch or sync. */
const char *simcore_sync_status(simcore *sim, const char *batch_id, const char *sync_id,
                                int64_t now_ms);

#endif
