/* backend: the daemon's backends of the runner (runner.h). No disk wait on the loop: record
 * writes (one journal append for each batch: store.h), claims and finishes are group-committed
 * on libuv's thread pool (iobatch.h: what a loop turn asks for goes out in a few batches),
 * validations run there too; requests go through http.c; timers are libuv's. Left on the
 * loop: the scan of incoming/ and its count (directory reads), the operator's retry
 * (reactivate, with its fsyncs), loading and pruning records at start, and the last record
 * writes and the journal's checkpoint at stop. */
#include "batchd.h"
#include "iobatch.h"

#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/store.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The slowest upload rate tolerated before a PUT is given up as timed out (bytes/s). */
#define UPLOAD_MIN_RATE 65536

/* ---- the backend's own state ---- */

enum { LANE_WRITES, LANE_CHECKPOINT, LANE_SPOOL, LANE_MARKER, LANE_COUNT, LANES };

typedef struct spool_req spool_req;

struct backend {
    batchd *d;
    iobatch *io;
    /* A copy: the pool threads must not read a config that a reload may free (state.dir
     * itself needs a restart to change). */
    char *state_dir;
    store_journal *journal; /* every record write goes through it (store.h) */
    spool_req *claiming;    /* claims queued or on the pool: their entries are left out of scans */
};

static batchd *dof(void *ud)
{
    return ((backend *)ud)->d;
}

/* ---- store: the writes of one turn as one journal append on the pool (one fdatasync) ---- */

typedef struct write_req {
    char id[32];
    char *text;
    int rc;
    uint64_t closed; /* the first of a batch: a journal file it closed, to checkpoint */
    runner_done_fn done;
    void *cookie;
} write_req;

static void writes_run(void *ud, void **items, size_t n)
{
    const backend *bk = ud;
    store_item *si = xcalloc(n, sizeof *si);
    for (size_t i = 0; i < n; i++) {
        const write_req *q = items[i];
        si[i] = (store_item){.job_id = q->id, .text = q->text};
    }
    /* The runner has at most one write out per job, so no job is in a batch twice and no
     * later write of a job can be overtaken by an earlier one. */
    ((write_req *)items[0])->closed = store_journal_append(bk->journal, si, n);
    for (size_t i = 0; i < n; i++)
        ((write_req *)items[i])->rc = si[i].rc;
    free(si);
}

typedef struct checkpoint_req {
    uint64_t upto;
    int rc;
    char *err; /* a damaged file, from store_checkpoint */
} checkpoint_req;

/* A full journal file is brought into the record files in the background, one checkpoint at
 * a time and in order (store.h): its own lane of one. */
static void checkpoint_soon(backend *bk, uint64_t upto)
{
    checkpoint_req *q = xcalloc(1, sizeof *q);
    q->upto = upto;
    iobatch_add(bk->io, LANE_CHECKPOINT, q);
}

static void checkpoint_run(void *ud, void **items, size_t n)
{
    const backend *bk = ud;
    checkpoint_req *last = items[n - 1]; /* the newest file covers the older ones */
    last->rc = store_checkpoint(bk->state_dir, last->upto, &last->err);
}

static void log_checkpoint_failure(int rc, const char *damage)
{
    if (damage)
        log_error("cannot bring the job records up to date from the journal: %s is %s", damage,
                  STORE_DAMAGE_REASON);
    else
        log_error("cannot bring the job records up to date from the journal: %s; its files "
                  "are kept and replayed at the next start",
                  strerror(-rc));
}

static void checkpoint_after(void *ud, void **items, size_t n, int status)
{
    (void)ud;
    const checkpoint_req *last = items[n - 1];
    /* Stopping before it ran: the stop's own checkpoint (backend_gone) covers it. A failure
     * keeps the journal files, replayed at the next checkpoint or start. */
    if (status == 0 && last->rc < 0)
        log_checkpoint_failure(last->rc, last->err);
    for (size_t i = 0; i < n; i++) {
        free(((checkpoint_req *)items[i])->err);
        free(items[i]);
    }
}

static void writes_after(void *ud, void **items, size_t n, int status)
{
    backend *bk = ud;
    uint64_t closed = status < 0 ? 0 : ((write_req *)items[0])->closed;
    for (size_t i = 0; i < n; i++) {
        write_req *q = items[i];
        int rc = status < 0 ? status : q->rc;
        runner_done_fn done = q->done;
        void *cookie = q->cookie;
        free(q->text);
        free(q);
        done(cookie, rc); /* stopping, UV_ECANCELED: the runner writes it now (write_now) */
    }
    if (closed)
        checkpoint_soon(bk, closed);
}

/* Urgent or not, a write is one more entry in the next append: the fdatasync of a batch
 * costs the same for one record or two hundred, so nothing gains by waiting apart. */
static void store_write_async(void *ud, const job *j, bool urgent, runner_done_fn done,
                              void *cookie)
{
    (void)urgent;
    backend *bk = ud;
    write_req *q = xcalloc(1, sizeof *q);
    snprintf(q->id, sizeof q->id, "%s", j->id);
    q->text = store_encode(j);
    q->done = done;
    q->cookie = cookie;
    iobatch_add(bk->io, LANE_WRITES, q);
}

/* At stop, on the loop: through the journal too, since a record file written beside it
 * could be taken back by an older entry at the next start. */
static int store_write_now(void *ud, const job *j)
{
    backend *bk = ud;
    char *text = store_encode(j);
    store_item it = {.job_id = j->id, .text = text};
    uint64_t closed = store_journal_append(bk->journal, &it, 1);
    if (closed)
        checkpoint_soon(bk, closed);
    free(text);
    return it.rc;
}

static int store_load(void *ud, void (*each)(void *cud, job *j),
                      void (*bad)(void *cud, const char *file, const char *reason), void *cud)
{
    backend *bk = ud;
    return store_load_all(bk->state_dir, each, bad, cud);
}

static int store_rm(void *ud, const char *job_id)
{
    backend *bk = ud;
    return store_remove(bk->state_dir, job_id);
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
        .secret = batchd_token_of(q->d, q->token_gen),
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

static http_transfer *send_api(batchd *d, const runner_request *rr, http_req *q)
{
    /* A create or setup must never be re-sent behind our back (see http.h). */
    return batchd_api_start(d, rr->rq->method, rr->rq->path, rr->rq->body,
                            job_op_has_side_effect(rr->op), on_http_done, q);
}

static void *http_send(void *ud, const runner_request *rr, runner_http_done_fn done,
                       runner_progress_fn progress, void *cookie)
{
    batchd *d = dof(ud);
    http_req *q = xcalloc(1, sizeof *q);
    *q = (http_req){
        .d = d, .token_gen = d->token_gen, .done = done, .progress = progress, .cookie = cookie};
    http_request req = {.method = rr->rq->method,
                        .body = rr->rq->body,
                        .body_len = rr->rq->body ? strlen(rr->rq->body) : 0};
    q->xfer = rr->op == JOB_OP_UPLOAD ? send_upload(d, rr, &req, q) : send_api(d, rr, q);
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

/* ---- spool: claims and finishes of one turn as one batch on the pool ----
 * Claims and finishes share one lane: the spool runs one batch at a time (spool.h), and a
 * claim picking a free name in active/ while a finish picks one in done/ could race. */

struct spool_req {
    bool claim;
    void *cookie;
    int rc;
    /* a claim */
    runner_claim_done_fn claim_done;
    char *entry;
    char job_id[27];
    spool_claim_result res;
    char stage[SPOOL_STAGE_MAX];
    spool_req *prev, *next; /* in backend.claiming */
    /* a finish */
    runner_finish_done_fn finish_done;
    char *dir;
    bool ok;
    char *file_name;
    char *body;
    char *final_dir;
};

static void run_claims(spool *sp, void **items, size_t n, size_t count)
{
    spool_claim_item *ci = xcalloc(count, sizeof *ci);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const spool_req *q = items[i];
        if (q->claim)
            ci[k++] =
                (spool_claim_item){.entry = q->entry, .job_id = q->job_id[0] ? q->job_id : NULL};
    }
    spool_claim_batch(sp, ci, count);
    k = 0;
    for (size_t i = 0; i < n; i++) {
        spool_req *q = items[i];
        if (!q->claim)
            continue;
        q->rc = ci[k].rc;
        q->res = ci[k].res;
        memcpy(q->stage, ci[k].stage, sizeof q->stage);
        k++;
    }
    free(ci);
}

static void run_finishes(spool *sp, void **items, size_t n, size_t count)
{
    spool_finish_item *fi = xcalloc(count, sizeof *fi);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const spool_req *q = items[i];
        if (!q->claim)
            fi[k++] = (spool_finish_item){
                .job_name = q->dir, .ok = q->ok, .file_name = q->file_name, .body = q->body};
    }
    spool_finish_batch(sp, fi, count);
    k = 0;
    for (size_t i = 0; i < n; i++) {
        spool_req *q = items[i];
        if (q->claim)
            continue;
        q->rc = fi[k].rc;
        q->final_dir = fi[k].final_dir;
        k++;
    }
    free(fi);
}

static void spool_run(void *ud, void **items, size_t n)
{
    backend *bk = ud;
    size_t claims = 0;
    for (size_t i = 0; i < n; i++)
        claims += ((const spool_req *)items[i])->claim;
    /* Finishes first: they free the job slots that the runner waits on. */
    if (claims < n)
        run_finishes(bk->d->sp, items, n, n - claims);
    if (claims > 0)
        run_claims(bk->d->sp, items, n, claims);
}

static void claim_end(backend *bk, spool_req *q, int rc, bool more_follow)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        bk->claiming = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (rc < 0 && q->stage[0]) {
        /* What spool_claim logs: the batch itself logs nothing (it runs on the pool). */
        char *display = spool_name_escape(q->entry);
        log_error("spool: claiming incoming/%s failed: %s; if it is not in its final place, "
                  "it is kept in %s/%s and the claim is finished on the next start",
                  display, strerror(-rc), spool_dir(bk->d->sp, "active"), q->stage);
        free(display);
    }
    const spool_claim_result *c = &q->res;
    runner_claim out = {
        .kind = c->kind == SPOOL_REJECTED ? RUNNER_REJECTED
                : c->kind == SPOOL_GONE   ? RUNNER_GONE
                                          : RUNNER_CLAIMED,
        .job_dir = c->job_dir,
        .job_name = c->job_name,
        .job_id = c->job_id,
        .code = c->code,
        .reason = c->reason,
        .more_follow = more_follow,
    };
    q->claim_done(q->cookie, rc, &out);
    spool_claim_clear(&q->res);
    free(q->entry);
}

static void spool_after(void *ud, void **items, size_t n, int status)
{
    backend *bk = ud;
    size_t last_claim = 0;
    for (size_t i = 0; i < n; i++)
        if (((const spool_req *)items[i])->claim)
            last_claim = i;
    for (size_t i = 0; i < n; i++) {
        spool_req *q = items[i];
        int rc = status < 0 ? status : q->rc;
        if (q->claim) {
            claim_end(bk, q, rc, i < last_claim);
        } else {
            q->finish_done(q->cookie, rc, rc < 0 ? NULL : q->final_dir);
            free(q->final_dir);
            free(q->dir);
            free(q->file_name);
            free(q->body);
        }
        free(q);
    }
}

/* ---- the operator's pause marker: <state>/paused (batchd(8), PAUSE) ----
 * One lane with one batch in flight, so a Pause and a Resume in quick succession reach the
 * disk in the order they were made; within a batch only the last one counts. */

typedef struct marker_req {
    bool present;
    int rc;
} marker_req;

static int marker_apply(const char *state_dir, bool present)
{
    char *path = fsutil_join(state_dir, BATCHD_PAUSE_MARKER);
    int rc = 0;
    if (present) {
        static const char text[] = "paused by an operator (batchctl pause); batchctl resume "
                                   "lifts it\n";
        rc = fsutil_write_atomic(path, text, sizeof text - 1, 0600);
    } else if (unlink(path) == 0) {
        rc = fsutil_fsync_parent(path);
    } else if (errno != ENOENT) {
        rc = -errno;
    }
    free(path);
    return rc;
}

static void marker_run(void *ud, void **items, size_t n)
{
    const backend *bk = ud;
    const marker_req *last = items[n - 1];
    int rc = marker_apply(bk->state_dir, last->present);
    for (size_t i = 0; i < n; i++)
        ((marker_req *)items[i])->rc = rc;
}

static void marker_log(const marker_req *q, int rc)
{
    if (rc < 0)
        log_error("cannot %s the pause marker %s in the state directory: %s; the pause %s",
                  q->present ? "write" : "remove", BATCHD_PAUSE_MARKER, strerror(-rc),
                  q->present ? "holds until this batchd stops, but not across a restart"
                             : "is lifted now, but a restart pauses again until it is removed");
}

static void marker_after(void *ud, void **items, size_t n, int status)
{
    const backend *bk = ud;
    marker_req *last = items[n - 1];
    /* Stopping before it reached the pool: a Pause must still survive the restart. */
    int rc = status < 0 ? marker_apply(bk->state_dir, last->present) : last->rc;
    marker_log(last, rc);
    for (size_t i = 0; i < n; i++)
        free(items[i]);
}

void backend_pause_marker(batchd *d, bool present)
{
    backend *bk = d->backend;
    if (!bk)
        return;
    marker_req *q = xcalloc(1, sizeof *q);
    q->present = present;
    iobatch_add(bk->io, LANE_MARKER, q);
}

bool backend_pause_marker_present(const batchd *d)
{
    char *path = fsutil_join(d->cfg->c.state.dir, BATCHD_PAUSE_MARKER);
    bool present = access(path, F_OK) == 0;
    free(path);
    return present;
}

/* ---- counting incoming/ for GetInfo's backlog: one directory read on the pool ----
 * Its own lane, so that a count of a large backlog never holds up the claims. */

typedef struct count_req {
    spool_stuck *skip; /* the runner's stuck entries and the claims out when it was asked */
    size_t n;
    int rc;
    runner_count_done_fn done;
    void *cookie;
} count_req;

static void count_run(void *ud, void **items, size_t n)
{
    const backend *bk = ud;
    for (size_t i = 0; i < n; i++) {
        count_req *q = items[i];
        q->rc = spool_count_incoming(bk->d->sp, spool_stuck_skip, q->skip, &q->n);
    }
}

static void count_after(void *ud, void **items, size_t n, int status)
{
    (void)ud;
    for (size_t i = 0; i < n; i++) {
        count_req *q = items[i];
        q->done(q->cookie, status < 0 ? status : q->rc, q->n);
        spool_stuck_free(q->skip);
        free(q);
    }
}

/* Record writes go one journal append at a time: what arrives during one joins the next
 * (group commit), and a journal file takes appends in order. Checkpoints go one at a time,
 * in order (store.h). main.c sizes the pool at 12 threads or more: one for each lane, four
 * for the runner's validations, the rest for exports and hooks. The spool's batches go one at
 * a time (spool.h). */
static const iobatch_lane_ops lane_ops[LANES] = {
    [LANE_WRITES] = {.run = writes_run, .after = writes_after, .max_flight = 1},
    [LANE_CHECKPOINT] = {.run = checkpoint_run, .after = checkpoint_after, .max_flight = 1},
    [LANE_SPOOL] = {.run = spool_run, .after = spool_after, .max_flight = 1},
    [LANE_MARKER] = {.run = marker_run, .after = marker_after, .max_flight = 1},
    [LANE_COUNT] = {.run = count_run, .after = count_after, .max_flight = 1},
};

typedef struct scan_skip {
    const backend *bk;
    bool (*skip)(void *sud, const char *name);
    void *sud;
} scan_skip;

/* An entry whose claim is queued or running is still in incoming/: listing it again would
 * claim it twice. A linear walk: there are at most job.max_active claims out. */
static bool skip_claiming(void *ud, const char *name)
{
    const scan_skip *s = ud;
    for (const spool_req *q = s->bk->claiming; q; q = q->next)
        if (strcmp(q->entry, name) == 0)
            return true;
    return s->skip && s->skip(s->sud, name);
}

static int spool_scan(void *ud, size_t max, bool (*skip)(void *sud, const char *name), void *sud,
                      char ***names, size_t *n)
{
    backend *bk = ud;
    scan_skip s = {.bk = bk, .skip = skip, .sud = sud};
    return spool_scan_incoming_ex(bk->d->sp, max, skip_claiming, &s, names, n);
}

static void spool_count(void *ud, spool_stuck *skip, runner_count_done_fn done, void *cookie)
{
    backend *bk = ud;
    /* An entry whose claim is queued or running is still in incoming/, but no longer waits. */
    for (const spool_req *q = bk->claiming; q; q = q->next)
        spool_stuck_failed(skip, q->entry, 0, 0, 0);
    count_req *q = xcalloc(1, sizeof *q);
    q->skip = skip;
    q->done = done;
    q->cookie = cookie;
    iobatch_add(bk->io, LANE_COUNT, q);
}

static void spool_claim_async(void *ud, const char *entry, const char *job_id,
                              runner_claim_done_fn done, void *cookie)
{
    backend *bk = ud;
    spool_req *q = xcalloc(1, sizeof *q);
    q->claim = true;
    q->entry = xstrdup(entry);
    snprintf(q->job_id, sizeof q->job_id, "%s", job_id ? job_id : "");
    q->claim_done = done;
    q->cookie = cookie;
    q->next = bk->claiming;
    if (q->next)
        q->next->prev = q;
    bk->claiming = q;
    iobatch_add(bk->io, LANE_SPOOL, q);
}

static void spool_finish_async(void *ud, const char *dir, bool ok, const char *file_name,
                               const char *body, runner_finish_done_fn done, void *cookie)
{
    backend *bk = ud;
    spool_req *q = xcalloc(1, sizeof *q);
    q->dir = xstrdup(dir);
    q->ok = ok;
    q->file_name = xstrdup(file_name);
    q->body = xstrdup(body);
    q->finish_done = done;
    q->cookie = cookie;
    iobatch_add(bk->io, LANE_SPOOL, q);
}

static int spool_active(void *ud, char ***names, size_t *n)
{
    batchd *d = dof(ud);
    return spool_list_active(d->sp, names, n);
}

static bool spool_active_exists(void *ud, const char *dir)
{
    batchd *d = dof(ud);
    char *path = fsutil_join(spool_dir(d->sp, "active"), dir);
    bool present = access(path, F_OK) == 0;
    free(path);
    return present;
}

static int spool_reactivate_one(void *ud, const char *failed_name, char **active_name)
{
    batchd *d = dof(ud);
    return spool_reactivate(d->sp, failed_name, active_name);
}

static const runner_spool_ops spool_ops = {
    .scan = spool_scan,
    .claim = spool_claim_async,
    .finish = spool_finish_async,
    .list_active = spool_active,
    .active_exists = spool_active_exists,
    .reactivate = spool_reactivate_one,
    .count = spool_count,
};

/* ---- validation on the pool ---- */

typedef struct validation {
    uv_work_t work;
    char *dir;
    char *name;
    cfgref *cfg;
    atomic_int cancel;    /* set on the loop, polled by the validating thread */
    cJSON *target_schema; /* an append by name: the target's, copied for the pool */
    intake_result ires;
    int rc;
    runner_validated_fn done;
    void *cookie;
} validation;

static void validate_work(uv_work_t *w)
{
    validation *v = w->data;
    intake_options o = {.target_schema = v->target_schema};
    v->rc = intake_check_ex(v->dir, v->name, &v->cfg->c, &v->cancel, &o, &v->ires);
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
    cJSON_Delete(v->target_schema);
    cfgref_put(v->cfg);
    free(v->dir);
    free(v->name);
    free(v);
}

static int validate_start(void *ud, const job *j, const cJSON *target_schema,
                          runner_validated_fn done, void *cookie, void **handle)
{
    batchd *d = dof(ud);
    validation *v = xcalloc(1, sizeof *v);
    v->target_schema = target_schema ? cJSON_Duplicate(target_schema, true) : NULL;
    v->dir = fsutil_join(spool_dir(d->sp, "active"), j->dir);
    v->name = xstrdup(j->name);
    v->cfg = cfgref_get(d->cfg);
    atomic_store(&v->cancel, 0);
    v->done = done;
    v->cookie = cookie;
    v->work.data = v;
    int rc = uv_queue_work(d->loop, &v->work, validate_work, validate_after);
    if (rc < 0) {
        cJSON_Delete(v->target_schema);
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
    batchd *d = dof(ud);
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

static void backend_gone(void *ud)
{
    backend *bk = ud;
    /* Every batch has ended: the record files are brought up to date, so that they are what
     * a person reads while batchd is stopped (the next start would do it otherwise). */
    store_journal_free(bk->journal);
    char *damage = NULL;
    int rc = store_checkpoint(bk->state_dir, UINT64_MAX, &damage);
    if (rc < 0)
        log_checkpoint_failure(rc, damage);
    free(damage);
    free(bk->state_dir);
    free(bk);
}

runner *backend_runner_new(batchd *d, const runner_hooks *hooks)
{
    backend *bk = xcalloc(1, sizeof *bk);
    bk->d = d;
    bk->state_dir = xstrdup(d->cfg->c.state.dir);
    bk->journal = store_journal_new(bk->state_dir, 0);
    bk->io = iobatch_new(d->loop, LANES, lane_ops, bk, backend_gone);
    d->backend = bk;
    runner_backend be = {
        .store = &store_ops,
        .http = &http_ops,
        .spool = &spool_ops,
        .validate = &validate_ops,
        .clock = &clock_ops,
        .exports = &backend_export_ops,
        .ud = bk,
        .export_ud = d,
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
    runner_export_config x = batchd_export_config(d);
    runner_configure_export(rn, &x);
    return rn;
}

void backend_stop(batchd *d)
{
    backend *bk = d->backend;
    if (!bk)
        return;
    d->backend = NULL;
    /* Requests not yet on the pool come back cancelled: a record write is then written now
     * by the runner (write_now), a claim leaves its entry in incoming/, a finish is done
     * again on the next start (the record says the job ended). Batches on the pool end
     * normally; the loop runs until they have, and bk goes with the iobatch. */
    iobatch_stop(bk->io);
}
