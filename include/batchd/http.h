/* http: the daemon's only HTTP client. It drives libcurl's multi interface from the libuv
 * loop (nothing blocks the loop, never curl_easy_perform), owns the connection pool, the
 * FIFO queue behind max_connections and the shared token bucket for API requests. It never
 * logs headers: the API token only ever travels in the Authorization header the caller adds. */
#ifndef BATCHD_HTTP_H
#define BATCHD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Responses larger than this fail with HTTP_ERR_TOO_LARGE. */
#define HTTP_MAX_BODY (8u * 1024u * 1024u)

typedef struct http_client http_client;
typedef struct http_transfer http_transfer;

typedef struct http_client_options {
    long timeout_ms;     /* default per-request timeout (whole transfer), e.g. 30000 */
    int max_connections; /* transfers at once; the rest queue in FIFO order */
    double max_rate; /* requests/second for rate_limited requests (token bucket); <=0: unlimited */
    double burst;    /* bucket size; <=0 means max(1, max_rate) */
    const char *user_agent; /* e.g. "batchd/0.1.0" */
} http_client_options;

typedef struct http_request {
    const char *method; /* "GET", "POST", "PUT" */
    const char *url;
    const char *const *headers; /* NULL-terminated "Name: value" list, copied; may be NULL */
    const char *body;           /* copied; may be NULL */
    size_t body_len;
    const char *upload_path; /* when set: stream this file as the body (PUT), fixed memory */
    long timeout_ms;         /* 0: the client default; uploads may want a longer one */
    bool rate_limited;       /* takes a token from the shared bucket before starting */
    /* Never over a reused connection. libcurl silently re-sends a request whose reused
     * connection closed before any reply ("connection died, retrying a fresh connect"),
     * which for a non-idempotent call (create, setup) acts twice. On a fresh connection it
     * reports the failure instead, and the caller decides. */
    bool fresh_connect;
    /* When non-zero, the upload file must have exactly this size (what was validated); a
     * file changed since is refused with HTTP_ERR_FILE rather than sent. */
    uint64_t upload_expect_size;
    /* When non-NULL (32 bytes, with upload_expect_size set): the SHA-256 of exactly the
     * upload_expect_size bytes that were validated. Every byte is hashed as it is read, and
     * the last ones are handed to curl only once the whole file (and not one byte more)
     * matches; otherwise the transfer is aborted, so the PUT never completes, and fails
     * with HTTP_ERR_CHANGED. A rewind (curl re-sending on a fresh connection) re-hashes. */
    const unsigned char *upload_sha256;
    /* A download (GET of a presigned URL, e.g. an export's ZIP): a 2xx body is written to
     * download_fd as it arrives, so memory stays flat whatever its size, and is not in the
     * response; the body of any other status is read into the response as usual. The URL
     * must pass the transport rule of urlcheck.h (https, or http to a loopback host), else
     * the transfer fails with HTTP_ERR_URL before any connection. http_start refuses a
     * download with an Authorization header: a presigned URL carries its own signature and
     * the API token goes nowhere but API calls. */
    bool download;
    int download_fd;       /* open for writing, written at its offset; never closed here */
    uint64_t download_max; /* 0: no cap; a longer body fails with HTTP_ERR_TOO_LARGE */
} http_request;

enum http_error {
    HTTP_OK = 0,
    HTTP_ERR_TIMEOUT,
    HTTP_ERR_NETWORK,
    HTTP_ERR_FILE,
    HTTP_ERR_TOO_LARGE,
    HTTP_ERR_OTHER,
    HTTP_ERR_CHANGED, /* the upload file is not what was validated (upload_sha256) */
    HTTP_ERR_URL      /* a download URL refused by the transport rule: nothing was sent */
};

typedef struct http_response {
    long status;            /* HTTP status, 0 when there was no response */
    enum http_error error;  /* HTTP_OK when an HTTP response arrived (whatever its status) */
    const char *error_text; /* curl's message when error != HTTP_OK, else "" */
    const char *body;       /* NUL-terminated, never NULL; capped (HTTP_ERR_TOO_LARGE past 8 MiB) */
    size_t body_len;
    const char *retry_after;  /* Retry-After header value or NULL */
    const char *content_type; /* or NULL */
    uint64_t bytes_sent;      /* request body bytes sent */
    int64_t started_ms;       /* wall clock when the request left the queue (after rate limiting) */
    uint64_t bytes_written;   /* download: body bytes written to download_fd */
} http_response;              /* valid only during the callback */

typedef void (*http_done_fn)(void *ud, const http_response *resp);
/* Upload: bytes sent and the total. Download: bytes written to download_fd so far and the
 * announced length (0 when unknown). */
typedef void (*http_progress_fn)(void *ud, uint64_t sent, uint64_t total);

http_client *http_client_new(uv_loop_t *loop, const http_client_options *opts);
/* Applies new options at run time (reload): rate, burst, timeouts, max_connections. */
void http_client_configure(http_client *c, const http_client_options *opts);
/* Seconds that rate_limited transfers waited for a token of the bucket, summed since start. */
double http_client_rate_wait_seconds(const http_client *c);
/* Starts (or queues) a request. done is called exactly once, later, from the loop — never from
 * inside http_start — unless the transfer is cancelled first. progress may be NULL. Returns NULL
 * only on invalid arguments. The transfer handle is invalid once done has returned. */
http_transfer *http_start(http_client *c, const http_request *req, http_done_fn done,
                          http_progress_fn progress, void *ud);
/* Abandons a transfer: done is not called; safe from inside any callback of another transfer. */
void http_cancel(http_transfer *t);
size_t http_client_active(const http_client *c); /* transfers started and not finished */
size_t http_client_queued(const http_client *c); /* waiting for a token or a connection slot */
/* Cancels everything and closes all handles; closed(ud) is called once every libuv handle is
 * closed, after which the client is freed. */
void http_client_close(http_client *c, void (*closed)(void *ud), void *ud);

/* A short English name of an error ("timeout", "network error" ...), for messages. */
const char *http_error_name(enum http_error e);

#endif
