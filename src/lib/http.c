/* http: see include/batchd/http.h.
 *
 * Life of a transfer: http_start copies the request onto the FIFO queue and arms the pump, a
 * 0 ms timer, so that done can never run inside http_start. The pump hands queued transfers to
 * curl while connection slots and (for rate_limited ones) tokens allow; when the bucket is
 * empty the pump timer is armed for exactly the wait, so an idle client has no timer running.
 * curl's socket and timer callbacks are wired to uv_poll and a uv_timer as in curl's
 * docs/examples/multi-uv.c, with its traps handled:
 *   - a 0 ms curl timeout becomes a 1 ms timer, never a call from inside the callback;
 *   - a uv_poll error status reaches curl as CURL_CSELECT_ERR;
 *   - per-socket state comes from curl_multi_assign; a socket is closed (closesocket callback)
 *     only once its uv_poll handle has been stopped and closed;
 *   - curl_multi_cleanup runs before the timers are closed, and memory is freed in close
 *     callbacks.
 * User callbacks may call back into this module. progress runs inside curl, where curl's own
 * functions may not be called, so cancel and close there only mark the transfer or client
 * and the real work happens once curl has returned (reap_cancelled, teardown). done always
 * runs outside curl, from deliver_completed. */
#include "batchd/http.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchd/log.h"
#include "batchd/ratelimit.h"
#include "batchd/urlcheck.h"
#include "batchd/util.h"

#define DEFAULT_TIMEOUT_MS   30000L
#define DEFAULT_CONNECTIONS  8
#define MAX_METHOD_LEN       16
#define FILE_ERROR_TEXT_SIZE 512

typedef struct transfer_list {
    http_transfer *head;
    http_transfer *tail;
    size_t len;
} transfer_list;

struct http_transfer {
    http_client *client;
    http_transfer *prev;
    http_transfer *next;
    transfer_list *list; /* queue, active or completed; NULL while done runs */

    char *url;
    struct curl_slist *headers;
    char *body; /* always allocated when has_body, so POSTFIELDS never sees NULL */
    size_t body_len;
    char *upload_path;
    uint64_t upload_size;
    uint64_t upload_pos;
    long timeout_ms;

    http_done_fn done;
    http_progress_fn progress;
    void *ud;
    uint64_t last_progress;

    CURL *easy;
    char *retry_after;
    char *content_type;
    strbuf received;
    http_response resp;

    int upload_fd;
    bool cancelled;  /* cancelled inside a curl callback; reaped once curl returns */
    bool delivering; /* done is running: the handle is about to be freed */
    bool has_body;
    bool file_failed;
    bool rate_limited;
    bool bucket_waiting;      /* held back for a token of the bucket since bucket_wait_from */
    int64_t bucket_wait_from; /* uv_now */
    bool fresh_connect;
    uint64_t upload_expect_size;
    EVP_MD_CTX *md; /* set when the upload is verified against want_sha256 */
    unsigned char want_sha256[32];
    bool changed; /* the upload file is not what was validated */
    bool too_large;
    bool download;    /* a 2xx body goes to download_fd (http_request.download) */
    bool url_refused; /* the download URL failed the transport rule: never connected */
    int download_fd;  /* the caller's; never closed here */
    uint64_t download_max;
    uint64_t download_pos; /* body bytes written to download_fd */
    char method[MAX_METHOD_LEN + 1];
    char errbuf[CURL_ERROR_SIZE];
    char file_error[FILE_ERROR_TEXT_SIZE];
};

/* One uv_poll per socket curl asks us to watch; found through curl_multi_assign. */
typedef struct http_sock {
    uv_poll_t poll;
    http_client *client;
    curl_socket_t fd;
    bool closing;  /* uv_close called */
    bool close_fd; /* curl asked to close the socket: do it in the close callback */
    struct http_sock *prev;
    struct http_sock *next;
} http_sock;

struct http_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer;
    uv_timer_t pump_timer;
    size_t open_handles; /* libuv handles not yet through their close callback */

    long timeout_ms;
    int max_connections;
    char *user_agent;
    bool max_connections_dirty; /* CURLMOPT not yet applied (configure ran inside curl) */
    ratelimit bucket;
    int64_t bucket_wait_ms; /* the waits of transfers for a token, summed (for the metrics) */

    transfer_list queue;
    transfer_list active;
    transfer_list completed;
    http_sock *socks; /* newest first */

    unsigned in_curl; /* > 0 while a curl function runs (and so maybe our callbacks) */
    bool reap_pending;
    bool slot_freed;
    bool closing;
    bool torn_down;
    void (*closed)(void *ud);
    void *closed_ud;
};

/* ---- lists ---- */

static void list_push(transfer_list *l, http_transfer *t)
{
    t->prev = l->tail;
    t->next = NULL;
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
    l->len++;
    t->list = l;
}

static void list_remove(http_transfer *t)
{
    transfer_list *l = t->list;
    if (!l)
        return;
    if (t->prev)
        t->prev->next = t->next;
    else
        l->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        l->tail = t->prev;
    l->len--;
    t->prev = t->next = NULL;
    t->list = NULL;
}

/* Unlinks the head through l itself (not t->list), which the static analyzer can follow. */
static http_transfer *list_pop(transfer_list *l)
{
    http_transfer *t = l->head;
    if (!t)
        return NULL;
    l->head = t->next;
    if (l->head)
        l->head->prev = NULL;
    else
        l->tail = NULL;
    l->len--;
    t->prev = t->next = NULL;
    t->list = NULL;
    return t;
}

/* ---- transfers ---- */

static void transfer_free(http_transfer *t)
{
    if (!t)
        return;
    if (t->easy)
        curl_easy_cleanup(t->easy);
    /* The list holds copies of the caller's headers, the Authorization header among them. */
    for (struct curl_slist *h = t->headers; h; h = h->next)
        secret_wipe(h->data, strlen(h->data));
    curl_slist_free_all(t->headers);
    if (t->upload_fd >= 0)
        close(t->upload_fd);
    EVP_MD_CTX_free(t->md);
    free(t->url);
    free(t->body);
    free(t->upload_path);
    free(t->retry_after);
    free(t->content_type);
    strbuf_free(&t->received);
    free(t);
}

/* Removes an active transfer from curl; only ever called outside curl callbacks. */
static void detach_from_multi(http_client *c, http_transfer *t)
{
    if (t->easy && c->multi) {
        c->in_curl++;
        curl_multi_remove_handle(c->multi, t->easy);
        c->in_curl--;
    }
    if (t->list == &c->active)
        c->slot_freed = true;
    list_remove(t);
}

static bool method_valid(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > MAX_METHOD_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if (m[i] < 'A' || m[i] > 'Z')
            return false;
    return true;
}

/* A header with CR or LF would let a caller's value smuggle in a second header. */
static bool header_valid(const char *h)
{
    return strchr(h, ':') && !strpbrk(h, "\r\n");
}

/* True for a header named Authorization (any case, blanks before the colon). */
static bool header_is_authorization(const char *h)
{
    static const char name[] = "authorization";
    if (strncasecmp(h, name, sizeof name - 1) != 0)
        return false;
    const char *p = h + sizeof name - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == ':';
}

/* A download is a plain GET into the caller's fd, never with the API token. */
static bool download_valid(const http_request *req)
{
    if (req->download_fd < 0 || req->body || req->upload_path)
        return false;
    if (req->method && strcmp(req->method, "GET") != 0)
        return false;
    for (const char *const *h = req->headers; h && *h; h++)
        if (header_is_authorization(*h))
            return false;
    return true;
}

static bool request_valid(const http_request *req)
{
    if (req->download && !download_valid(req))
        return false;
    if (!req->url || !*req->url || strpbrk(req->url, "\r\n"))
        return false;
    if (req->method && !method_valid(req->method))
        return false;
    if (req->body_len > 0 && !req->body)
        return false;
    if (req->upload_path && (!*req->upload_path || req->body))
        return false;
    if (req->upload_sha256 && !req->upload_path)
        return false;
    for (const char *const *h = req->headers; h && *h; h++)
        if (!header_valid(*h))
            return false;
    return true;
}

static http_transfer *transfer_new(http_client *c, const http_request *req)
{
    http_transfer *t = xcalloc(1, sizeof *t);
    t->client = c;
    t->upload_fd = -1;
    strlcpy_bd(t->method, req->method ? req->method : (req->upload_path ? "PUT" : "GET"),
               sizeof t->method);
    t->url = xstrdup(req->url);
    t->has_body = req->body != NULL;
    if (t->has_body) {
        t->body = xmalloc(req->body_len + 1);
        memcpy(t->body, req->body, req->body_len);
        t->body[req->body_len] = '\0';
        t->body_len = req->body_len;
    }
    if (req->upload_path)
        t->upload_path = xstrdup(req->upload_path);
    t->timeout_ms = req->timeout_ms;
    t->rate_limited = req->rate_limited;
    t->fresh_connect = req->fresh_connect;
    t->upload_expect_size = req->upload_expect_size;
    t->download = req->download;
    t->download_fd = req->download ? req->download_fd : -1;
    t->download_max = req->download_max;
    if (req->upload_sha256) {
        memcpy(t->want_sha256, req->upload_sha256, sizeof t->want_sha256);
        t->md = EVP_MD_CTX_new();
        if (!t->md || EVP_DigestInit_ex(t->md, EVP_sha256(), NULL) != 1)
            abort(); /* out of memory, as xmalloc treats it */
    }
    return t;
}

static int transfer_set_headers(http_transfer *t, const http_request *req)
{
    for (const char *const *h = req->headers; h && *h; h++) {
        struct curl_slist *n = curl_slist_append(t->headers, *h);
        if (!n)
            return -ENOMEM;
        t->headers = n;
    }
    /* No "Expect: 100-continue" round trip: S3 and the API answer directly. */
    if (t->has_body || t->upload_path) {
        struct curl_slist *n = curl_slist_append(t->headers, "Expect:");
        if (!n)
            return -ENOMEM;
        t->headers = n;
    }
    return 0;
}

/* ---- curl easy callbacks (run inside curl) ---- */

/* A 2xx whose declared length is over the cap fails before its first byte reaches the file
 * (a body without Content-Length is cut at the cap as it arrives). */
static bool declared_too_large(http_transfer *t)
{
    curl_off_t len = -1;
    if (t->download_max == 0 || t->download_pos > 0 ||
        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len) != CURLE_OK)
        return false;
    return len > 0 && (uint64_t)len > t->download_max;
}

/* A download's 2xx body, written through as it arrives: nothing of it is kept in memory. */
static size_t download_write(http_transfer *t, const char *ptr, size_t n)
{
    if (declared_too_large(t) || (t->download_max > 0 && n > t->download_max - t->download_pos)) {
        t->too_large = true;
        return 0;
    }
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(t->download_fd, ptr + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int err = w < 0 ? errno : ENOSPC;
            t->file_failed = true;
            snprintf(t->file_error, sizeof t->file_error, "download file: write failed: %s",
                     strerror(err));
            return 0;
        }
        done += (size_t)w;
        t->download_pos += (uint64_t)w;
    }
    return n;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    http_transfer *t = userdata;
    size_t n = size * nmemb;
    /* Cancelled inside a callback of this same curl call: the caller may already have closed
     * (and the pool reused) the download's fd, so nothing more is written anywhere. */
    if (t->cancelled)
        return 0;
    if (t->download) {
        long status = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        /* An error page (a refused or expired URL) is read as a body, never into the file. */
        if (status >= 200 && status < 300)
            return download_write(t, ptr, n);
    }
    if (t->received.len + n > HTTP_MAX_BODY) {
        t->too_large = true;
        return 0; /* anything but n aborts the transfer */
    }
    strbuf_append(&t->received, ptr, n);
    return n;
}

static void file_fail(http_transfer *t, const char *what, int err)
{
    t->file_failed = true;
    snprintf(t->file_error, sizeof t->file_error, "upload file %s: %s%s%s", t->upload_path, what,
             err ? ": " : "", err ? strerror(err) : "");
}

/* The upload file is not the one validated: the job must not go on with it. */
static void changed_fail(http_transfer *t, const char *how)
{
    t->file_failed = true;
    t->changed = true;
    snprintf(t->file_error, sizeof t->file_error,
             "the data file %s changed after it was validated (%s)", t->upload_path, how);
}

/* Called with the last bytes read but not yet handed to curl: the file must end here and its
 * digest must be the validated one. 0, or -1 after changed_fail. */
static int verify_end(http_transfer *t)
{
    char extra;
    ssize_t n;
    do {
        n = read(t->upload_fd, &extra, 1);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        changed_fail(t, "it grew");
        return -1;
    }
    unsigned char got[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(t->md, got, &len) != 1 || len != sizeof t->want_sha256 ||
        CRYPTO_memcmp(got, t->want_sha256, sizeof t->want_sha256) != 0) {
        changed_fail(t, "its SHA-256 differs");
        return -1;
    }
    /* A rewind after this point hashes from the start again. */
    EVP_DigestInit_ex(t->md, EVP_sha256(), NULL);
    return 0;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata)
{
    http_transfer *t = userdata;
    if (t->cancelled)
        return CURL_READFUNC_ABORT;
    size_t want = size * nitems;
    uint64_t left = t->upload_size - t->upload_pos;
    if (want > left)
        want = (size_t)left; /* a file that grew must not overrun Content-Length */
    if (want == 0) {
        /* An empty file has no last bytes to hold back: it is verified at its end. */
        if (t->md && t->upload_size == 0 && verify_end(t) < 0)
            return CURL_READFUNC_ABORT;
        return 0;
    }
    ssize_t n;
    do {
        n = read(t->upload_fd, buf, want);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        file_fail(t, "read failed", errno);
        return CURL_READFUNC_ABORT;
    }
    if (n == 0) {
        if (t->md)
            changed_fail(t, "it shrank");
        else
            file_fail(
                t, "shrank while it was being uploaded; write it completely before submitting", 0);
        return CURL_READFUNC_ABORT;
    }
    if (t->md) {
        /* Hash before handing over; the final bytes are held back until the whole file is
         * known to be what was validated, so a changed file never completes the PUT. */
        if (EVP_DigestUpdate(t->md, buf, (size_t)n) != 1) {
            file_fail(t, "cannot hash it", ENOMEM);
            return CURL_READFUNC_ABORT;
        }
        if (t->upload_pos + (uint64_t)n == t->upload_size && verify_end(t) < 0)
            return CURL_READFUNC_ABORT;
    }
    t->upload_pos += (uint64_t)n;
    return (size_t)n;
}

/* Re-hashes the first offset bytes after a rewind, so the digest again covers exactly what
 * curl has been given. 0 or -1. */
static int rehash_prefix(http_transfer *t, uint64_t offset)
{
    if (EVP_DigestInit_ex(t->md, EVP_sha256(), NULL) != 1)
        return -1;
    char buf[16384];
    uint64_t done = 0;
    while (done < offset) {
        size_t want = offset - done < sizeof buf ? (size_t)(offset - done) : sizeof buf;
        ssize_t n = pread(t->upload_fd, buf, want, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        if (EVP_DigestUpdate(t->md, buf, (size_t)n) != 1)
            return -1;
        done += (uint64_t)n;
    }
    return 0;
}

/* curl rewinds when it retries a request on a fresh connection after a reused one died. */
static int on_seek(void *userdata, curl_off_t offset, int origin)
{
    http_transfer *t = userdata;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > t->upload_size)
        return CURL_SEEKFUNC_CANTSEEK;
    if (t->md && rehash_prefix(t, (uint64_t)offset) < 0)
        return CURL_SEEKFUNC_FAIL;
    if (lseek(t->upload_fd, (off_t)offset, SEEK_SET) < 0)
        return CURL_SEEKFUNC_FAIL;
    t->upload_pos = (uint64_t)offset;
    return CURL_SEEKFUNC_OK;
}

static int on_xferinfo(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    http_transfer *t = userdata;
    (void)dltotal;
    (void)dlnow;
    if (t->cancelled)
        return 1;
    if (t->download) {
        (void)ultotal;
        (void)ulnow;
        if (t->progress && t->download_pos != t->last_progress) {
            t->last_progress = t->download_pos;
            t->progress(t->ud, t->download_pos, dltotal > 0 ? (uint64_t)dltotal : 0);
        }
        return t->cancelled ? 1 : 0;
    }
    if (t->progress && ulnow >= 0 && (uint64_t)ulnow != t->last_progress) {
        t->last_progress = (uint64_t)ulnow;
        uint64_t total = ultotal > 0 ? (uint64_t)ultotal : t->upload_size;
        t->progress(t->ud, (uint64_t)ulnow, total);
    }
    return t->cancelled ? 1 : 0; /* progress may have cancelled its own transfer */
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *address)
{
    (void)clientp;
    (void)purpose;
    int fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    return fd < 0 ? CURL_SOCKET_BAD : fd;
}

static void sock_close_poll(http_sock *s);

/* curl wants the socket closed. While a uv_poll still refers to it (stopped but not yet
 * through uv_close) the close waits for the poll's close callback, so the fd number cannot be
 * reused under a pending poll handle. The newest entry for this fd is the live one: older
 * entries with the same number are polls of the same open socket that curl removed earlier. */
static int on_close_socket(void *clientp, curl_socket_t fd)
{
    http_client *c = clientp;
    for (http_sock *s = c->socks; s; s = s->next) {
        if (s->fd == fd && !s->close_fd) {
            s->close_fd = true;
            sock_close_poll(s);
            return 0;
        }
    }
    return close(fd);
}

/* ---- easy handle setup ---- */

static int open_upload(http_transfer *t)
{
    /* The file sits in a directory its producer can still write to: never follow a link
     * swapped in, never block the loop opening a FIFO. */
    t->upload_fd = open(t->upload_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (t->upload_fd < 0) {
        int err = errno;
        file_fail(t, "cannot be opened", err);
        return -err;
    }
    struct stat st;
    if (fstat(t->upload_fd, &st) < 0) {
        int err = errno;
        file_fail(t, "cannot be read", err);
        return -err;
    }
    if (!S_ISREG(st.st_mode)) {
        file_fail(t, "is not a regular file", 0);
        return -EINVAL;
    }
    /* With a digest the size is always checked, an empty file's too. */
    if ((t->upload_expect_size > 0 || t->md) && (uint64_t)st.st_size != t->upload_expect_size) {
        if (t->md)
            changed_fail(t, (uint64_t)st.st_size < t->upload_expect_size ? "it shrank" : "it grew");
        else
            file_fail(t, "changed size since it was validated", 0);
        return -EINVAL;
    }
    t->upload_size = (uint64_t)st.st_size;
    return 0;
}

static CURLcode setup_common(http_client *c, http_transfer *t, CURL *e)
{
    CURLcode rc = CURLE_OK;
    long timeout = t->timeout_ms > 0 ? t->timeout_ms : c->timeout_ms;
    rc |= curl_easy_setopt(e, CURLOPT_URL, t->url);
    rc |= curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    rc |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    rc |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* A redirect could carry the Authorization header to another host: never follow. */
    rc |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    rc |= curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    rc |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    rc |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (t->fresh_connect)
        rc |= curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    if (c->user_agent)
        rc |= curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
    rc |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    rc |= curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    rc |= curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, c);
    rc |= curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    rc |= curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
    if (t->progress) {
        rc |= curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
        rc |= curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_xferinfo);
        rc |= curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
    }
    return rc;
}

static CURLcode setup_method(http_transfer *t, CURL *e)
{
    CURLcode rc = CURLE_OK;
    const char *m = t->method;
    if (t->upload_path) {
        rc |= curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        rc |= curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
        rc |= curl_easy_setopt(e, CURLOPT_READDATA, t);
        rc |= curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
        rc |= curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
        rc |= curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)t->upload_size);
        if (strcmp(m, "PUT") != 0)
            rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
    } else if (t->has_body || strcmp(m, "POST") == 0) {
        if (!t->body)
            t->body = xstrdup("");
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len);
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body);
        if (strcmp(m, "POST") != 0)
            rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
    } else if (strcmp(m, "GET") == 0) {
        rc |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "HEAD") == 0) {
        rc |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
    }
    return rc;
}

/* Builds the easy handle; on failure the reason is in t (file_error or errbuf). */
static int transfer_prepare(http_client *c, http_transfer *t)
{
    if (t->download) {
        url_verdict v = url_check(t->url, 0);
        if (v != URL_OK) {
            /* The URL is a bearer capability: the message names the rule, not the URL. */
            t->url_refused = true;
            snprintf(t->errbuf, sizeof t->errbuf, "download URL refused: it %s",
                     url_verdict_text(v));
            return -EINVAL;
        }
    }
    if (t->upload_path) {
        int r = open_upload(t);
        if (r < 0)
            return r;
    }
    t->easy = curl_easy_init();
    if (!t->easy) {
        strlcpy_bd(t->errbuf, "cannot create a curl handle", sizeof t->errbuf);
        return -ENOMEM;
    }
    if (setup_common(c, t, t->easy) != CURLE_OK || setup_method(t, t->easy) != CURLE_OK) {
        strlcpy_bd(t->errbuf, "cannot configure the curl handle", sizeof t->errbuf);
        return -EINVAL;
    }
    return 0;
}

/* ---- results ---- */

static enum http_error map_curl_error(const http_transfer *t, CURLcode code)
{
    if (t->url_refused)
        return HTTP_ERR_URL;
    if (t->changed)
        return HTTP_ERR_CHANGED;
    if (t->file_failed)
        return HTTP_ERR_FILE;
    if (t->too_large)
        return HTTP_ERR_TOO_LARGE;
    switch (code) {
    case CURLE_OK:
        return HTTP_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTP_ERR_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SEND_FAIL_REWIND:
    case CURLE_WEIRD_SERVER_REPLY:
        return HTTP_ERR_NETWORK;
    default:
        return HTTP_ERR_OTHER;
    }
}

static char *header_copy(CURL *e, const char *name)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(e, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h || !h->value)
        return NULL;
    return xstrdup(h->value);
}

/* Fills t->resp from the easy handle; strings point into t, which outlives the callback. */
static void transfer_finish(http_transfer *t, CURLcode code)
{
    http_response *r = &t->resp;
    r->error = map_curl_error(t, code);
    if (t->easy) {
        long status = 0;
        curl_off_t sent = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(t->easy, CURLINFO_SIZE_UPLOAD_T, &sent);
        r->status = status;
        r->bytes_sent = sent > 0 ? (uint64_t)sent : 0;
        if (status > 0) {
            t->retry_after = header_copy(t->easy, "Retry-After");
            t->content_type = header_copy(t->easy, "Content-Type");
        }
    }
    if (r->error == HTTP_OK)
        r->error_text = "";
    else if (r->error == HTTP_ERR_FILE || r->error == HTTP_ERR_CHANGED)
        r->error_text = t->file_error;
    else if (r->error == HTTP_ERR_TOO_LARGE && t->download && t->download_max > 0)
        r->error_text = "download larger than its size cap";
    else if (r->error == HTTP_ERR_TOO_LARGE)
        r->error_text = "response body larger than 8 MiB";
    else if (t->errbuf[0])
        r->error_text = t->errbuf;
    else
        r->error_text = curl_easy_strerror(code);
    r->body = t->received.data ? t->received.data : "";
    r->body_len = t->received.len;
    r->retry_after = t->retry_after;
    r->content_type = t->content_type;
    r->bytes_written = t->download_pos;
}

/* ---- the loop side ---- */

static void on_pump(uv_timer_t *timer);

static void schedule_pump(http_client *c, uint64_t delay_ms)
{
    if (c->closing)
        return;
    if (uv_is_active((uv_handle_t *)&c->pump_timer) &&
        uv_timer_get_due_in(&c->pump_timer) <= delay_ms)
        return;
    uv_timer_start(&c->pump_timer, on_pump, delay_ms, 0);
}

static void teardown(http_client *c);

/* Moves finished transfers from curl to the completed list (or frees cancelled ones). */
static void collect_finished(http_client *c)
{
    CURLMsg *msg;
    int left;
    while (c->multi && (msg = curl_multi_info_read(c->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *e = msg->easy_handle;
        CURLcode code = msg->data.result;
        http_transfer *t = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &t);
        detach_from_multi(c, t);
        if (t->cancelled) {
            transfer_free(t);
            continue;
        }
        transfer_finish(t, code);
        list_push(&c->completed, t);
    }
}

static void reap_cancelled(http_client *c)
{
    if (!c->reap_pending)
        return;
    c->reap_pending = false;
    http_transfer *next;
    for (http_transfer *t = c->active.head; t; t = next) {
        next = t->next;
        if (t->cancelled) {
            detach_from_multi(c, t);
            transfer_free(t);
        }
    }
}

/* Calls done for each completed transfer. A done callback may cancel others (they leave the
 * list) or close the client (then delivery stops: nothing more is reported). */
static void deliver_completed(http_client *c)
{
    http_transfer *t;
    while (!c->closing && (t = list_pop(&c->completed))) {
        t->delivering = true;
        t->done(t->ud, &t->resp);
        transfer_free(t);
    }
}

/* Runs after every return from curl and from the pump: the one place that turns curl's
 * results into callbacks and applies what callbacks asked for. */
static void settle(http_client *c)
{
    if (!c->torn_down) {
        collect_finished(c);
        reap_cancelled(c);
        deliver_completed(c);
    }
    if (c->closing && !c->torn_down) {
        teardown(c);
        return;
    }
    if (c->torn_down)
        return;
    if (c->slot_freed && c->queue.len > 0)
        schedule_pump(c, 0);
    c->slot_freed = false;
}

static void apply_max_connections(http_client *c)
{
    if (!c->max_connections_dirty || c->in_curl || !c->multi)
        return;
    curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)c->max_connections);
    c->max_connections_dirty = false;
}

static void transfer_launch(http_client *c, http_transfer *t)
{
    t->resp.started_ms = time_now_ms();
    if (transfer_prepare(c, t) < 0) {
        transfer_finish(t, CURLE_FAILED_INIT);
        list_push(&c->completed, t);
        return;
    }
    list_push(&c->active, t);
    c->in_curl++;
    CURLMcode mc = curl_multi_add_handle(c->multi, t->easy);
    c->in_curl--;
    if (mc != CURLM_OK) {
        list_remove(t);
        strlcpy_bd(t->errbuf, curl_multi_strerror(mc), sizeof t->errbuf);
        transfer_finish(t, CURLE_FAILED_INIT);
        list_push(&c->completed, t);
    }
}

/* Starts queued transfers in FIFO order while slots allow. A rate_limited transfer without a
 * token stays queued (and so do the rate_limited ones behind it); unlimited ones behind it
 * (uploads to the presigned URL) may still start. */
static void pump(http_client *c)
{
    apply_max_connections(c);
    int64_t wait_ms = 0;
    http_transfer *next;
    for (http_transfer *t = c->queue.head; t; t = next) {
        next = t->next;
        if (c->active.len >= (size_t)c->max_connections)
            break;
        if (t->rate_limited) {
            int64_t now = (int64_t)uv_now(c->loop);
            if (wait_ms <= 0)
                wait_ms = ratelimit_take(&c->bucket, now);
            if (wait_ms > 0) {
                if (!t->bucket_waiting)
                    t->bucket_wait_from = now;
                t->bucket_waiting = true;
                continue;
            }
            if (t->bucket_waiting)
                c->bucket_wait_ms += now - t->bucket_wait_from;
            t->bucket_waiting = false;
        }
        list_remove(t);
        transfer_launch(c, t);
    }
    /* With every slot busy the next finished transfer pumps again; no timer needed. */
    if (wait_ms > 0 && c->active.len < (size_t)c->max_connections)
        schedule_pump(c, (uint64_t)wait_ms);
}

static void on_pump(uv_timer_t *timer)
{
    http_client *c = timer->data;
    pump(c);
    settle(c);
}

static void curl_action(http_client *c, curl_socket_t fd, int flags)
{
    int running = 0;
    c->in_curl++;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    c->in_curl--;
    settle(c);
}

static void on_curl_timeout(uv_timer_t *timer)
{
    http_client *c = timer->data;
    curl_action(c, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION: never act from in here; 0 becomes 1 ms so curl runs from the loop. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    http_client *c = userp;
    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&c->curl_timer);
    else
        uv_timer_start(&c->curl_timer, on_curl_timeout, timeout_ms == 0 ? 1 : (uint64_t)timeout_ms,
                       0);
    return 0;
}

static void on_poll(uv_poll_t *handle, int status, int events)
{
    http_sock *s = handle->data;
    http_client *c = s->client;
    int flags = 0;
    if (s->closing || c->torn_down)
        return;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_action(c, s->fd, flags);
}

static void maybe_finished(http_client *c);

static void on_sock_closed(uv_handle_t *handle)
{
    http_sock *s = handle->data;
    http_client *c = s->client;
    if (s->close_fd)
        close(s->fd);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
    c->open_handles--;
    maybe_finished(c);
}

static void sock_close_poll(http_sock *s)
{
    if (s->closing)
        return;
    s->closing = true;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static http_sock *sock_new(http_client *c, curl_socket_t fd)
{
    http_sock *s = xcalloc(1, sizeof *s);
    if (uv_poll_init_socket(c->loop, &s->poll, fd) < 0) {
        free(s);
        return NULL;
    }
    s->poll.data = s;
    s->client = c;
    s->fd = fd;
    s->next = c->socks;
    if (c->socks)
        c->socks->prev = s;
    c->socks = s;
    c->open_handles++;
    return s;
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching one socket. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    http_client *c = userp;
    http_sock *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_close_poll(s);
            curl_multi_assign(c->multi, fd, NULL);
        }
        return 0;
    }
    if (s && s->closing)
        s = NULL; /* defensive: a poll already on its way out is never reused */
    if (!s) {
        s = sock_new(c, fd);
        if (!s) {
            log_error("http: cannot watch socket %d", (int)fd);
            return -1;
        }
        curl_multi_assign(c->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    if (uv_poll_start(&s->poll, events, on_poll) < 0)
        return -1;
    return 0;
}

/* ---- client ---- */

static void apply_options(http_client *c, const http_client_options *opts)
{
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->max_connections = opts->max_connections > 0 ? opts->max_connections : DEFAULT_CONNECTIONS;
    c->max_connections_dirty = true;
    free(c->user_agent);
    c->user_agent = opts->user_agent ? xstrdup(opts->user_agent) : NULL;
}

http_client *http_client_new(uv_loop_t *loop, const http_client_options *opts)
{
    static const http_client_options defaults = {0};
    if (!loop)
        return NULL;
    if (!opts)
        opts = &defaults;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    http_client *c = xcalloc(1, sizeof *c);
    c->loop = loop;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        curl_global_cleanup();
        return NULL;
    }
    apply_options(c, opts);
    ratelimit_init(&c->bucket, opts->max_rate, opts->burst, (int64_t)uv_now(loop));
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    apply_max_connections(c);
    uv_timer_init(loop, &c->curl_timer);
    uv_timer_init(loop, &c->pump_timer);
    c->curl_timer.data = c;
    c->pump_timer.data = c;
    c->open_handles = 2;
    return c;
}

double http_client_rate_wait_seconds(const http_client *c)
{
    return (double)c->bucket_wait_ms / 1000.0;
}

void http_client_configure(http_client *c, const http_client_options *opts)
{
    if (!c || !opts || c->closing)
        return;
    apply_options(c, opts);
    ratelimit_set_rate(&c->bucket, opts->max_rate, opts->burst, (int64_t)uv_now(c->loop));
    apply_max_connections(c);
    /* More slots or a faster rate may let queued transfers start now. */
    if (c->queue.len > 0) {
        uv_timer_stop(&c->pump_timer);
        schedule_pump(c, 0);
    }
}

http_transfer *http_start(http_client *c, const http_request *req, http_done_fn done,
                          http_progress_fn progress, void *ud)
{
    if (!c || !req || !done || c->closing || !request_valid(req))
        return NULL;
    http_transfer *t = transfer_new(c, req);
    if (transfer_set_headers(t, req) < 0) {
        transfer_free(t);
        return NULL;
    }
    t->done = done;
    t->progress = progress;
    t->ud = ud;
    list_push(&c->queue, t);
    schedule_pump(c, 0);
    return t;
}

void http_cancel(http_transfer *t)
{
    if (!t || t->delivering || t->cancelled)
        return;
    http_client *c = t->client;
    if (t->list != &c->active) {
        list_remove(t); /* queued or completed but not yet delivered */
        transfer_free(t);
        return;
    }
    if (c->in_curl) {
        /* curl functions may not be called from its callbacks: reap when curl returns. */
        t->cancelled = true;
        t->done = NULL;
        t->progress = NULL;
        c->reap_pending = true;
        return;
    }
    detach_from_multi(c, t);
    transfer_free(t);
    if (c->queue.len > 0)
        schedule_pump(c, 0);
}

size_t http_client_active(const http_client *c)
{
    return c ? c->active.len : 0;
}

size_t http_client_queued(const http_client *c)
{
    return c ? c->queue.len : 0;
}

static void free_list(transfer_list *l)
{
    http_transfer *t;
    while ((t = list_pop(l)))
        transfer_free(t);
}

static void on_timer_closed(uv_handle_t *handle)
{
    http_client *c = handle->data;
    c->open_handles--;
    maybe_finished(c);
}

/* Frees every transfer, cleans up curl (which calls on_curl_socket and on_close_socket for its
 * remaining sockets, so the client must still be whole), then closes the timers and any poll
 * curl left. The client itself is freed when the last close callback has run. */
static void teardown(http_client *c)
{
    c->torn_down = true;
    free_list(&c->queue);
    free_list(&c->completed);
    http_transfer *t;
    while ((t = list_pop(&c->active))) {
        detach_from_multi(c, t);
        transfer_free(t);
    }
    c->in_curl++;
    curl_multi_cleanup(c->multi);
    c->in_curl--;
    c->multi = NULL;
    for (http_sock *s = c->socks; s; s = s->next)
        sock_close_poll(s);
    uv_timer_stop(&c->curl_timer);
    uv_timer_stop(&c->pump_timer);
    uv_close((uv_handle_t *)&c->curl_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->pump_timer, on_timer_closed);
}

static void maybe_finished(http_client *c)
{
    if (!c->torn_down || c->open_handles > 0)
        return;
    void (*closed)(void *) = c->closed;
    void *ud = c->closed_ud;
    free(c->user_agent);
    free(c);
    curl_global_cleanup();
    if (closed)
        closed(ud);
}

void http_client_close(http_client *c, void (*closed)(void *ud), void *ud)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    c->closed = closed;
    c->closed_ud = ud;
    if (c->in_curl) {
        /* Inside a progress callback: mark everything, tear down once curl returns. */
        for (http_transfer *t = c->active.head; t; t = t->next)
            t->cancelled = true;
        return;
    }
    teardown(c);
}

const char *http_error_name(enum http_error e)
{
    switch (e) {
    case HTTP_OK:
        return "ok";
    case HTTP_ERR_TIMEOUT:
        return "timeout";
    case HTTP_ERR_NETWORK:
        return "network error";
    case HTTP_ERR_FILE:
        return "file error";
    case HTTP_ERR_URL:
        return "URL refused";
    case HTTP_ERR_TOO_LARGE:
        return "response too large";
    case HTTP_ERR_CHANGED:
        return "upload file changed";
    case HTTP_ERR_OTHER:
        break;
    }
    return "HTTP client error";
}
