/* backend: the daemon's backends of the runner (runner.h). Record writes and validations run
 * on libuv's thread pool; requests go through http.c; claims, finishes and reactivations call
 * spool.c on the loop and complete before they return; timers are libuv's. */
#include "batchd.h"

#include "batchd/fsutil.h"
#include "batchd/store.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The slowest upload rate tolerated before a PUT is given up as timed out (bytes/s). */
#define UPLOAD_MIN_RATE 65536

/* ---- store: one write on the pool per call ---- */

typedef struct write_req {
    uv_work_t work;
    char *dir;
    char id[32];
    char *text;
    int rc;
    runner_done_fn done;
    void *cookie;
} write_req;

static void write_work(uv_work_t *w)
{
    write_req *q = w->data;
    q->rc = store_write(q->dir, q->id, q->text);
}

static void write_after(uv_work_t *w, int status)
{
    write_req *q = w->data;
    int rc = status < 0 ? status : q->rc;
    free(q->text);
    free(q->dir);
    runner_done_fn done = q->done;
    void *cookie = q->cookie;
    free(q);
    done(cookie, rc);
}

static void store_write_async(void *ud, const job *j, runner_done_fn done, void *cookie)
{
    batchd *d = ud;
    write_req *q = xcalloc(1, sizeof *q);
    q->dir = xstrdup(d->cfg->c.state.dir);
    snprintf(q->id, sizeof q->id, "%s", j->id);
    q->text = store_encode(j);
    q->done = done;
    q->cookie = cookie;
    q->work.data = q;
    int rc = uv_queue_work(d->loop, &q->work, write_work, write_after);
    if (rc < 0)
        write_after(&q->work, rc); /* only with a broken loop: reported like a failed write */
}

static int store_write_now(void *ud, const job *j)
{
    batchd *d = ud;
    return store_save(d->cfg->c.state.dir, j);
}

static int store_load(void *ud, void (*each)(void *cud, job *j),
                      void (*bad)(void *cud, const char *file, const char *reason), void *cud)
{
    batchd *d = ud;
    return store_load_all(d->cfg->c.state.dir, each, bad, cud);
}

static int store_rm(void *ud, const char *job_id)
{
    batchd *d = ud;
    return store_remove(d->cfg->c.state.dir, job_id);
}

static const runner_store_ops store_ops = {
    .write = store_write_async,
    .write_now = store_write_now,
    .load = store_load,
    .remove = store_rm,
};

/* ---- HTTP ---- */

typedef struct http_req {
    batchd *d;
    http_transfer *xfer;
    unsigned token_gen; /* batchd.token_gen when the request was sent */
    runner_http_done_fn done;
    runner_progress_fn progress;
    void *cookie;
} http_req;

static job_net_error net_of(enum http_error e)
{
    switch (e) {
    case HTTP_OK:
        return JOB_NET_OK;
    case HTTP_ERR_TIMEOUT:
        return JOB_NET_TIMEOUT;
    case HTTP_ERR_FILE:
        return JOB_NET_FILE;
    case HTTP_ERR_CHANGED:
        return JOB_NET_CHANGED;
    case HTTP_ERR_TOO_LARGE:
        return JOB_NET_TOO_LARGE;
    default:
        return JOB_NET_FAILED;
    }
}

static void on_http_done(void *ud, const http_response *resp)
{
    http_req *q = ud;
    job_reply jr = {
        .net = net_of(resp->error),
        .status = resp->status,
        .body = resp->body,
        .body_len = resp->body_len,
        .retry_after = resp->retry_after,
        .error_text = resp->error_text,
        .secret = q->d->token,
    };
    runner_http_done_fn done = q->done;
    void *cookie = q->cookie;
    unsigned gen = q->token_gen;
    free(q);
    done(cookie, &jr, gen);
}

static void on_http_progress(void *ud, uint64_t sent, uint64_t total)
{
    (void)total;
    http_req *q = ud;
    q->progress(q->cookie, (int64_t)sent);
}

/* 64 hex digits into 32 bytes; -EINVAL for anything else (NULL included). */
static int hex_to_sha256(const char *hex, unsigned char out[32])
{
    if (!hex || strlen(hex) != 64)
        return -EINVAL;
    for (size_t i = 0; i < 32; i++) {
        unsigned v = 0;
        for (size_t k = 0; k < 2; k++) {
            char c = hex[2 * i + k];
            unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                         : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                                : 16u;
            if (d > 15)
                return -EINVAL;
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return 0;
}

static http_transfer *send_upload(batchd *d, const runner_request *rr, http_request *req,
                                  http_req *q)
{
    unsigned char digest[32];
    /* The presigned URL carries its own signature: never the API token. */
    char *ctype =
        xasprintf("Content-Type: %s",
                  rr->upload_content_type ? rr->upload_content_type : "application/octet-stream");
    const char *headers[2] = {ctype, NULL};
    req->url = rr->rq->path;
    req->headers = headers;
    req->upload_path = rr->upload_path;
    req->upload_expect_size = (uint64_t)rr->upload_size;
    /* Records written before digests existed upload with the size check only. */
    if (hex_to_sha256(rr->upload_sha256, digest) == 0)
        req->upload_sha256 = digest;
    req->timeout_ms = (long)(d->cfg->c.api.timeout_ms + rr->upload_size * 1000 / UPLOAD_MIN_RATE);
    req->rate_limited = false;
    http_transfer *t = http_start(d->http, req, on_http_done, on_http_progress, q);
    free(ctype);
    return t;
}

static http_transfer *send_api(batchd *d, const runner_request *rr, http_request *req, http_req *q)
{
    char *url = xasprintf("%s%s", d->api_url, rr->rq->path);
    char *auth = xasprintf("Authorization: Token %s", d->token);
    const char *headers[4] = {auth, "Accept: application/json", NULL, NULL};
    if (rr->rq->body)
        headers[2] = "Content-Type: application/json";
    req->url = url;
    req->headers = headers;
    req->rate_limited = true;
    /* A create or setup must never be re-sent behind our back (see http.h). */
    req->fresh_connect = job_op_has_side_effect(rr->op);
    http_transfer *t = http_start(d->http, req, on_http_done, NULL, q);
    explicit_bzero(auth, strlen(auth));
    free(auth);
    free(url);
    return t;
}

static void *http_send(void *ud, const runner_request *rr, runner_http_done_fn done,
                       runner_progress_fn progress, void *cookie)
{
    batchd *d = ud;
    http_req *q = xcalloc(1, sizeof *q);
    *q = (http_req){
        .d = d, .token_gen = d->token_gen, .done = done, .progress = progress, .cookie = cookie};
    http_request req = {.method = rr->rq->method,
                        .body = rr->rq->body,
                        .body_len = rr->rq->body ? strlen(rr->rq->body) : 0};
    q->xfer = rr->op == JOB_OP_UPLOAD ? send_upload(d, rr, &req, q) : send_api(d, rr, &req, q);
    if (!q->xfer) {
        free(q);
        return NULL;
    }
    return q;
}

static void http_cancel_req(void *ud, void *handle)
{
    (void)ud;
    http_req *q = handle;
    http_cancel(q->xfer);
    free(q);
}

static const runner_http_ops http_ops = {
    .send = http_send,
    .cancel = http_cancel_req,
};

/* ---- spool: on the loop, done before returning ---- */

static int spool_scan(void *ud, size_t max, bool (*skip)(void *sud, const char *name), void *sud,
                      char ***names, size_t *n)
{
    batchd *d = ud;
    return spool_scan_incoming_ex(d->sp, max, skip, sud, names, n);
}

static void spool_claim_one(void *ud, const char *entry, const char *job_id,
                            runner_claim_done_fn done, void *cookie)
{
    batchd *d = ud;
    spool_claim_result c;
    memset(&c, 0, sizeof c);
    int rc = spool_claim(d->sp, entry, job_id, &c);
    runner_claim rc_out = {
        .kind = c.kind == SPOOL_REJECTED ? RUNNER_REJECTED
                : c.kind == SPOOL_GONE   ? RUNNER_GONE
                                         : RUNNER_CLAIMED,
        .job_dir = c.job_dir,
        .job_name = c.job_name,
        .job_id = c.job_id,
        .code = c.code,
        .reason = c.reason,
    };
    done(cookie, rc, &rc_out);
    spool_claim_clear(&c);
}

static void spool_finish_one(void *ud, const char *dir, bool ok, const char *file_name,
                             const char *body, runner_finish_done_fn done, void *cookie)
{
    batchd *d = ud;
    char *final_dir = NULL;
    int rc = spool_finish(d->sp, dir, ok, file_name, body, &final_dir);
    done(cookie, rc, final_dir);
    free(final_dir);
}

static int spool_active(void *ud, char ***names, size_t *n)
{
    batchd *d = ud;
    return spool_list_active(d->sp, names, n);
}

static bool spool_active_exists(void *ud, const char *dir)
{
    batchd *d = ud;
    char *path = fsutil_join(spool_dir(d->sp, "active"), dir);
    bool present = access(path, F_OK) == 0;
    free(path);
    return present;
}

static int spool_reactivate_one(void *ud, const char *failed_name, char **active_name)
{
    batchd *d = ud;
    return spool_reactivate(d->sp, failed_name, active_name);
}

static const runner_spool_ops spool_ops = {
    .scan = spool_scan,
    .claim = spool_claim_one,
    .finish = spool_finish_one,
    .list_active = spool_active,
    .active_exists = spool_active_exists,
    .reactivate = spool_reactivate_one,
};

/* ---- validation on the pool ---- */

typedef struct validation {
    uv_work_t work;
    char *dir;
    char *name;
    cfgref *cfg;
    atomic_int cancel; /* set on the loop, polled by the validating thread */
    intake_result ires;
    int rc;
    runner_validated_fn done;
    void *cookie;
} validation;

static void validate_work(uv_work_t *w)
{
    validation *v = w->data;
    v->rc = intake_check(v->dir, v->name, &v->cfg->c, &v->cancel, &v->ires);
}

static void validate_after(uv_work_t *w, int status)
{
    validation *v = w->data;
    const intake_result *r = &v->ires;
    job_validation jv = {
        .ok = r->code == NULL,
        .code = r->code,
        .message = r->message,
        .errors = r->errors,
        .spec = r->job,
        .upload_path = r->upload_path,
        .upload_name = r->upload_name,
        .sha256 = r->sha256,
        .records = (int64_t)r->records,
        .rejected = (int64_t)r->rejected,
        .bytes = (int64_t)r->bytes,
    };
    bool ran = status == 0 && v->rc != -ECANCELED;
    v->done(v->cookie, ran ? &jv : NULL);
    intake_result_free(&v->ires);
    cfgref_put(v->cfg);
    free(v->dir);
    free(v->name);
    free(v);
}

static int validate_start(void *ud, const job *j, runner_validated_fn done, void *cookie,
                          void **handle)
{
    batchd *d = ud;
    validation *v = xcalloc(1, sizeof *v);
    v->dir = fsutil_join(spool_dir(d->sp, "active"), j->dir);
    v->name = xstrdup(j->name);
    v->cfg = cfgref_get(d->cfg);
    atomic_store(&v->cancel, 0);
    v->done = done;
    v->cookie = cookie;
    v->work.data = v;
    int rc = uv_queue_work(d->loop, &v->work, validate_work, validate_after);
    if (rc < 0) {
        cfgref_put(v->cfg);
        free(v->dir);
        free(v->name);
        free(v);
        return rc;
    }
    *handle = v;
    return 0;
}

static void validate_cancel(void *ud, void *handle)
{
    (void)ud;
    validation *v = handle;
    atomic_store(&v->cancel, 1);
}

static const runner_validate_ops validate_ops = {
    .start = validate_start,
    .cancel = validate_cancel,
};

/* ---- clock and timers ---- */

typedef struct btimer {
    uv_timer_t t;
    runner_timer_fn fn;
    void *arg;
} btimer;

static int64_t clock_now(void *ud)
{
    (void)ud;
    return time_now_ms();
}

static int64_t clock_mono(void *ud)
{
    (void)ud;
    return time_mono_ms();
}

static void on_btimer(uv_timer_t *t)
{
    btimer *b = t->data;
    b->fn(b->arg);
}

static void *timer_new(void *ud, runner_timer_fn fn, void *arg)
{
    batchd *d = ud;
    btimer *b = xcalloc(1, sizeof *b);
    b->fn = fn;
    b->arg = arg;
    uv_timer_init(d->loop, &b->t);
    b->t.data = b;
    return b;
}

static void timer_arm(void *ud, void *timer, int64_t delay_ms)
{
    (void)ud;
    btimer *b = timer;
    uv_timer_start(&b->t, on_btimer, (uint64_t)delay_ms, 0);
}

static void timer_stop(void *ud, void *timer)
{
    (void)ud;
    btimer *b = timer;
    uv_timer_stop(&b->t);
}

static void free_btimer(uv_handle_t *h)
{
    free(h->data);
}

static void timer_free(void *ud, void *timer)
{
    (void)ud;
    btimer *b = timer;
    uv_close((uv_handle_t *)&b->t, free_btimer);
}

static const runner_clock_ops clock_ops = {
    .now_ms = clock_now,
    .mono_ms = clock_mono,
    .timer_new = timer_new,
    .timer_arm = timer_arm,
    .timer_stop = timer_stop,
    .timer_free = timer_free,
};

runner *backend_runner_new(batchd *d, const runner_hooks *hooks)
{
    runner_backend be = {
        .store = &store_ops,
        .http = &http_ops,
        .spool = &spool_ops,
        .validate = &validate_ops,
        .clock = &clock_ops,
        .ud = d,
    };
    uint64_t seed = 0;
    random_bytes(&seed, sizeof seed);
    runner_options o = {
        .state_dir = d->cfg->c.state.dir,
        .incoming_dir = spool_dir(d->sp, "incoming"),
        .seed = seed,
    };
    runner *rn = runner_new(&be, hooks, &o);
    runner_configure(rn, &d->params, (size_t)d->cfg->c.job.max_active);
    return rn;
}
