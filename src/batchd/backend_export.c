/* backend_export: the daemon's export backend of the runner (runner.h, runner_export_ops).
 * API calls go through http.c with the token; a download goes, without it, into the job's
 * done/NAME/exports/.download.zip.tmp, and a 2xx body is then made durable and checked on the
 * thread pool: fsync, the ZIP's end record (zipcheck), a free name (export_dest_name),
 * renameat2(RENAME_NOREPLACE) and an fsync of the directory. Every path is opened below done/
 * with O_NOFOLLOW, one component at a time: a job's directory holds what its producer put
 * there, and an exports symlink planted in it must not send a download elsewhere. Nothing
 * here touches the disk on the loop. */
#include "batchd.h"

#include "batchd/export.h"
#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/util.h"
#include "batchd/zipcheck.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A presigned URL is valid for an hour: a download still running then is cut and retried. */
#define DOWNLOAD_TIMEOUT_MS (3600L * 1000)

typedef struct export_req {
    batchd *d;
    export_op op;
    http_transfer *xfer;
    unsigned token_gen;
    runner_export_done_fn done;
    void *cookie;
    /* a download */
    char *url;
    char *job_path; /* done/NAME */
    int dirfd;      /* done/NAME/exports */
    int fd;         /* the temporary file */
    bool placed;    /* renamed to its ZIP name */
    bool on_pool;
    bool cancelled; /* while on the pool: freed by its after callback */
    uv_work_t work;
    int rc;              /* a pool step's -errno */
    const char *why;     /* its reason (static) */
    const char *zip_why; /* zipcheck's reason (static) */
    char name[EXPORT_NAME_MAX];
    long status;
} export_req;

static void req_free(export_req *q)
{
    /* A download that did not end in place leaves no temporary file behind: a failed one may
     * be gigabytes. An unlink without an fsync: at worst the next start removes it. */
    if (q->fd >= 0 && q->dirfd >= 0 && !q->placed)
        (void)unlinkat(q->dirfd, EXPORT_TMP_NAME, 0);
    if (q->fd >= 0)
        close(q->fd);
    if (q->dirfd >= 0)
        close(q->dirfd);
    free(q->url);
    free(q->job_path);
    free(q);
}

static export_net net_of(enum http_error e)
{
    switch (e) {
    case HTTP_OK:
        return EXPORT_NET_OK;
    case HTTP_ERR_TIMEOUT:
        return EXPORT_NET_TIMEOUT;
    case HTTP_ERR_FILE:
        return EXPORT_NET_FILE;
    case HTTP_ERR_TOO_LARGE:
        return EXPORT_NET_TOO_LARGE;
    case HTTP_ERR_URL:
        return EXPORT_NET_URL;
    default:
        return EXPORT_NET_FAILED;
    }
}

/* The request is freed (its temporary file gone) before the runner hears of it, because the
 * runner may start the next download at once and that one's O_EXCL open must find no file.
 * So whatever the reply borrows from the request is copied first. */
static void deliver(export_req *q, const export_reply *r)
{
    runner_export_done_fn done = q->done;
    void *cookie = q->cookie;
    unsigned gen = q->token_gen;
    export_reply out = *r;
    char path[sizeof q->name];
    if (r->path) {
        snprintf(path, sizeof path, "%s", r->path);
        out.path = path;
    }
    req_free(q);
    done(cookie, &out, gen);
}

static void on_http_done(void *ud, const http_response *resp);

/* ---- the pool steps of a download ---- */

/* done/NAME/exports, created when missing, never through a symlink. */
static int open_exports_dir(const char *job_path)
{
    int jfd = open(job_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (jfd < 0)
        return -errno;
    if (mkdirat(jfd, EXPORT_DIR, 0750) < 0 && errno != EEXIST) {
        int e = -errno;
        close(jfd);
        return e;
    }
    int dfd = openat(jfd, EXPORT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = dfd < 0 ? -errno : 0;
    close(jfd);
    return dfd < 0 ? e : dfd;
}

static void open_work(uv_work_t *w)
{
    export_req *q = w->data;
    q->dirfd = open_exports_dir(q->job_path);
    if (q->dirfd < 0) {
        q->rc = q->dirfd;
        q->why = "cannot open the exports directory";
        return;
    }
    /* Each attempt starts from a new, empty regular file: a download is never resumed, and
     * whatever is at the name (a FIFO or a hard link a producer put in its job, which a write
     * on the loop would block on or change) is removed first, never opened. Read too: its end
     * record is checked through the same descriptor. */
    if (unlinkat(q->dirfd, EXPORT_TMP_NAME, 0) < 0 && errno != ENOENT) {
        q->rc = -errno;
        q->why = "cannot remove what is at the temporary download file's name";
        return;
    }
    q->fd = openat(q->dirfd, EXPORT_TMP_NAME,
                   O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0640);
    if (q->fd < 0) {
        q->rc = -errno;
        q->why = "cannot create the temporary download file";
    }
}

static bool name_taken(void *ud, const char *name)
{
    const export_req *q = ud;
    const char *base = strrchr(name, '/');
    struct stat sb;
    return fstatat(q->dirfd, base ? base + 1 : name, &sb, AT_SYMLINK_NOFOLLOW) == 0 ||
           errno != ENOENT;
}

static int place_zip(export_req *q)
{
    for (int tries = 0; tries < 10; tries++) {
        int64_t now = time_now_ms();
        if (export_dest_name(now, name_taken, q, q->name, sizeof q->name) < 0) {
            q->why = "no free name for the ZIP in the exports directory";
            return -EEXIST;
        }
        const char *base = strrchr(q->name, '/');
        if (renameat2(q->dirfd, EXPORT_TMP_NAME, q->dirfd, base ? base + 1 : q->name,
                      RENAME_NOREPLACE) == 0)
            return 0;
        if (errno != EEXIST) {
            q->why = "cannot rename the download into place";
            return -errno;
        }
    }
    q->why = "no free name for the ZIP in the exports directory";
    return -EEXIST;
}

/* Takes back a ZIP this request renamed into place, for a download that is not reported as
 * done: left there, it would be a second copy that no record, prune or hook knows of. */
static void unplace(export_req *q)
{
    if (!q->placed)
        return;
    const char *base = strrchr(q->name, '/');
    (void)unlinkat(q->dirfd, base ? base + 1 : q->name, 0);
    q->placed = false;
}

static void finish_work(uv_work_t *w)
{
    export_req *q = w->data;
    if (fsync(q->fd) < 0) {
        q->rc = -errno;
        q->why = "cannot fsync the download";
        return;
    }
    zipcheck_info info;
    const char *why = NULL;
    int rc = zipcheck_fd(q->fd, &info, &why);
    if (rc == -EINVAL) {
        q->zip_why = why ? why : "not a ZIP file";
        return;
    }
    if (rc < 0) {
        q->rc = rc;
        q->why = why ? why : "cannot read the download back";
        return;
    }
    q->rc = place_zip(q);
    q->placed = q->rc == 0;
    if (q->rc == 0 && fsync(q->dirfd) < 0) {
        q->rc = -errno;
        q->why = "cannot fsync the exports directory";
        unplace(q); /* the download is retried as a failure */
    }
}

static void file_failed(export_req *q, long status)
{
    char text[256];
    snprintf(text, sizeof text, "%s: %s", q->why ? q->why : "download file", strerror(-q->rc));
    export_reply r = {.net = EXPORT_NET_FILE, .status = status, .error_text = text};
    deliver(q, &r);
}

/* After a pool step: false when the request is over (cancelled and freed, or its file work
 * failed and that was delivered). */
static bool pool_step_ok(export_req *q, int status, long file_status)
{
    q->on_pool = false;
    if (q->cancelled || status < 0) {
        /* Stopped while the ZIP was put in place: its record still says downloading, so the
         * next start downloads it again. */
        unplace(q);
        req_free(q);
        return false;
    }
    if (q->rc < 0) {
        file_failed(q, file_status);
        return false;
    }
    return true;
}

static void finish_after(uv_work_t *w, int status)
{
    export_req *q = w->data;
    if (!pool_step_ok(q, status, q->status))
        return;
    export_reply r = {.net = EXPORT_NET_OK,
                      .status = q->status,
                      .zip_error = q->zip_why,
                      .path = q->zip_why ? NULL : q->name};
    deliver(q, &r);
}

static void open_after(uv_work_t *w, int status)
{
    export_req *q = w->data;
    if (!pool_step_ok(q, status, 0))
        return;
    /* No header at all: the URL carries its own signature, and http_start refuses an
     * Authorization header on a download anyway. */
    http_request req = {.method = "GET",
                        .url = q->url,
                        .timeout_ms = DOWNLOAD_TIMEOUT_MS,
                        .download = true,
                        .download_fd = q->fd,
                        .download_max = q->d->cfg->c.export.max_bytes};
    q->xfer = http_start(q->d->http, &req, on_http_done, NULL, q);
    if (!q->xfer) {
        export_reply r = {.net = EXPORT_NET_NOT_SENT, .error_text = "the download cannot start"};
        deliver(q, &r);
    }
}

/* 0, or the libuv error when the work cannot be queued (nothing then happens). */
static int on_pool(export_req *q, uv_work_cb work, uv_after_work_cb after)
{
    q->work.data = q;
    q->on_pool = true;
    int rc = uv_queue_work(q->d->loop, &q->work, work, after);
    if (rc < 0)
        q->on_pool = false;
    return rc;
}

/* ---- replies ---- */

static void on_http_done(void *ud, const http_response *resp)
{
    export_req *q = ud;
    q->xfer = NULL;
    if (q->op == EXPORT_OP_DOWNLOAD && resp->error == HTTP_OK && resp->status >= 200 &&
        resp->status < 300) {
        q->status = resp->status;
        int rc = on_pool(q, finish_work, finish_after);
        if (rc < 0) {
            q->rc = rc;
            q->why = "cannot queue the file work";
            file_failed(q, resp->status);
        }
        return;
    }
    export_reply r = {
        .net = net_of(resp->error),
        .status = resp->status,
        .body = resp->body,
        .body_len = resp->body_len,
        .retry_after = resp->retry_after,
        .error_text = resp->error_text,
        .secret = batchd_token_of(q->d, q->token_gen),
    };
    deliver(q, &r);
}

/* ---- the ops ---- */

static void *export_send(void *ud, const runner_export_request *rr, runner_export_done_fn done,
                         void *cookie)
{
    batchd *d = ud;
    export_req *q = xcalloc(1, sizeof *q);
    *q = (export_req){.d = d,
                      .op = rr->op,
                      .token_gen = d->token_gen,
                      .done = done,
                      .cookie = cookie,
                      .dirfd = -1,
                      .fd = -1};
    if (rr->op == EXPORT_OP_DOWNLOAD) {
        q->url = xstrdup(rr->path);
        q->job_path = fsutil_join(spool_dir(d->sp, "done"), rr->job_dir);
        if (on_pool(q, open_work, open_after) < 0) {
            req_free(q);
            return NULL;
        }
        return q;
    }
    /* A POST makes an export job at the API: never re-sent behind our back (http.h). */
    q->xfer = batchd_api_start(d, rr->method, rr->path, NULL, rr->op == EXPORT_OP_REQUEST,
                               on_http_done, q);
    if (!q->xfer) {
        req_free(q);
        return NULL;
    }
    return q;
}

static void export_cancel(void *ud, void *handle)
{
    (void)ud;
    export_req *q = handle;
    if (q->on_pool) {
        q->cancelled = true; /* its after callback frees it */
        return;
    }
    if (q->xfer)
        http_cancel(q->xfer);
    req_free(q);
}

static void prune_dir(int dfd, unsigned keep, const char *protect)
{
    DIR *dir = fdopendir(dup(dfd));
    if (!dir)
        return;
    char **names = NULL;
    size_t n = 0, cap = 0;
    const struct dirent *de;
    while ((de = readdir(dir))) {
        if (!export_name_parse(de->d_name, NULL, NULL))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            names = xrealloc(names, cap * sizeof *names);
        }
        names[n++] = xstrdup(de->d_name);
    }
    closedir(dir);
    if (n == 0)
        return;
    size_t *out = xcalloc(n, sizeof *out);
    size_t k = export_prune((const char *const *)names, n, keep, protect, out);
    for (size_t i = 0; i < k; i++)
        if (unlinkat(dfd, names[out[i]], 0) < 0 && errno != ENOENT)
            log_warn("cannot remove an old export %s: %s", names[out[i]], strerror(errno));
    if (k > 0)
        fsync(dfd);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(out);
}

/* done/NAME/exports of a job, or -errno (none yet is -ENOENT). */
static int open_existing_exports(const char *job_path)
{
    int jfd = open(job_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (jfd < 0)
        return -errno;
    int dfd = openat(jfd, EXPORT_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = dfd < 0 ? -errno : 0;
    close(jfd);
    return dfd < 0 ? e : dfd;
}

typedef struct export_prune_req {
    uv_work_t work;
    char *job_path;
    unsigned keep;
    char protect[EXPORT_NAME_MAX];
} export_prune_req;

static void prune_work(uv_work_t *w)
{
    export_prune_req *f = w->data;
    int dfd = open_existing_exports(f->job_path);
    if (dfd < 0)
        return;
    prune_dir(dfd, f->keep, f->protect[0] ? f->protect : NULL);
    close(dfd);
}

static void prune_after(uv_work_t *w, int status)
{
    (void)status;
    export_prune_req *f = w->data;
    free(f->job_path);
    free(f);
}

/* Fire and forget, on the pool. */
static void export_prune_op(void *ud, const char *job_dir, unsigned keep, const char *protect)
{
    batchd *d = ud;
    export_prune_req *f = xcalloc(1, sizeof *f);
    f->work.data = f;
    f->job_path = fsutil_join(spool_dir(d->sp, "done"), job_dir);
    f->keep = keep;
    if (protect)
        snprintf(f->protect, sizeof f->protect, "%s", protect);
    if (uv_queue_work(d->loop, &f->work, prune_work, prune_after) < 0)
        prune_after(&f->work, 0);
}

/* The newest regular file of dfd that export_dest_name could have made and that changed
 * (written, renamed) at or after since_ms; "exports/NAME.zip" malloc'd, or NULL. A ZIP is
 * renamed into place only after its fsync and check, so one found here is whole. */
static char *placed_since(int dfd, int64_t since_ms)
{
    int fd = dup(dfd);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (!dir) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char best[EXPORT_NAME_MAX] = "";
    int64_t best_ms = 0;
    /* A time still to come was not made by a download (the clock was set back since?); 1 s
     * of slack for the coarse clock of file times. */
    int64_t until_ms = time_now_ms() + 1000;
    const struct dirent *de;
    while ((de = readdir(dir))) {
        struct stat st;
        if (!export_name_parse(de->d_name, NULL, NULL) ||
            fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        /* The change time, not the modification time: utimensat cannot set it, and the
         * download's writes and rename move it past the request. */
        int64_t ctime_ms = (int64_t)st.st_ctim.tv_sec * 1000 + st.st_ctim.tv_nsec / 1000000;
        size_t len = strlen(de->d_name);
        if (len < sizeof best && ctime_ms >= since_ms && ctime_ms <= until_ms &&
            (!best[0] || ctime_ms > best_ms)) {
            memcpy(best, de->d_name, len + 1);
            best_ms = ctime_ms;
        }
    }
    closedir(dir);
    return best[0] ? xasprintf("%s/%s", EXPORT_DIR, best) : NULL;
}

/* At start, on the loop (as the loading of the records): one unlink, done before any download
 * of this job can open the same name, and a look for a ZIP that was placed but not recorded. */
static char *export_clean(void *ud, const char *job_dir, int64_t since_ms)
{
    batchd *d = ud;
    char *job_path = fsutil_join(spool_dir(d->sp, "done"), job_dir);
    int dfd = open_existing_exports(job_path);
    free(job_path);
    if (dfd < 0)
        return NULL;
    if (unlinkat(dfd, EXPORT_TMP_NAME, 0) == 0) {
        log_info("removed an unfinished export download in done/%s/%s", job_dir, EXPORT_DIR);
        fsync(dfd);
    }
    char *zip = since_ms > 0 ? placed_since(dfd, since_ms) : NULL;
    close(dfd);
    return zip;
}

const runner_export_ops backend_export_ops = {
    .send = export_send,
    .cancel = export_cancel,
    .prune = export_prune_op,
    .clean = export_clean,
};
