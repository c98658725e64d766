/* intake: see include/batchd/intake.h. The records are read twice at most: the first pass
 * only validates (so a valid job costs no writes), and only in skip mode with rejected
 * records a second pass writes the cleaned file and rejected.jsonl. Each pass validates what
 * it reads, and the digest is taken of the bytes that pass produced for upload (the data
 * file in pass 1, the cleaned file in pass 2), since the producer still owns the data file
 * in active/ and may change it between passes. */
#include "batchd/intake.h"
#include "batchd/fsutil.h"
#include "batchd/manifest.h"
#include "batchd/records.h"
#include "batchd/util.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define INTAKE_DEFAULT_CHUNK (64 * 1024)
#define WRITE_BUF            (64 * 1024)

/* -errno, never 0 (a failed call that left errno 0 would read as success). */
static int neg_errno(void)
{
    return errno ? -errno : -EIO;
}

static void errno_text(int e, char *buf, size_t len)
{
    const char *s = strerror_r(e, buf, len);
    if (s != buf)
        strlcpy_bd(buf, s, len);
}

void intake_result_free(intake_result *r)
{
    if (!r)
        return;
    free(r->message);
    cJSON_Delete(r->errors);
    cJSON_Delete(r->job);
    free(r->data_path);
    free(r->upload_path);
    free(r->upload_name);
    memset(r, 0, sizeof *r);
}

static void set_failure(intake_result *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_failure(intake_result *r, const char *code, const char *fmt, ...)
{
    strbuf sb = {0};
    va_list ap;
    va_start(ap, fmt);
    strbuf_vprintf(&sb, fmt, ap);
    va_end(ap);
    free(r->message);
    r->message = strbuf_steal(&sb);
    r->code = code;
}

/* ---- the error list ----
 * A diag capped at INTAKE_MAX_ERRORS (util.h adds the final "... and N more"). Record
 * problems are written as {"line", "field", "message"} with field null for a whole record,
 * problems of the data file as {"path", "file", "message"} (intake.h). */

static void error_at_line(diag *el, uint64_t line, const char *field, const char *msg)
{
    const diag_where w = {
        .line = line, .field = field && *field ? field : NULL, .json = DIAG_JSON_FIELD_NULL};
    diag_add(el, DIAG_ERROR, &w, "%s", msg);
}

/* A problem with the data file as a whole (unreadable, empty, not a regular file): the
 * entry names the file and the job.json member that chose it, since there is no line. */
static void error_in_file(diag *el, const char *file, const char *msg)
{
    const diag_where w = {.file = file, .path = "dataset.file", .json = DIAG_JSON_PATH_FIRST};
    diag_add(el, DIAG_ERROR, &w, "%s", msg);
}

/* ---- buffered durable output ---- */

typedef struct outfile {
    char *path; /* final name */
    char *tmp;  /* written here, renamed at the end */
    int fd;
    char *buf;
    size_t len;
    int err;          /* first -errno */
    EVP_MD_CTX *md;   /* when set, every byte written is hashed */
    uint64_t written; /* bytes handed to outfile_write */
} outfile;

static int outfile_open(outfile *o, const char *dir, const char *name)
{
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->path = fsutil_join(dir, name);
    /* ".<name>.tmp", cut to fit when name is already near NAME_MAX. */
    char *dotted = xasprintf(".%s", name);
    char *tname = fsutil_fit_name(dotted, strlen(dotted), ".tmp");
    o->tmp = fsutil_join(dir, tname);
    free(tname);
    free(dotted);
    unlink(o->tmp); /* ours, left by a crash */
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (o->fd < 0)
        return o->err = -errno;
    o->buf = xmalloc(WRITE_BUF);
    return 0;
}

static void outfile_flush(outfile *o)
{
    size_t off = 0;
    while (o->err == 0 && off < o->len) {
        ssize_t n = write(o->fd, o->buf + off, o->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            o->err = -errno;
        else
            off += (size_t)n;
    }
    o->len = 0;
}

static void outfile_write(outfile *o, const void *data, size_t len)
{
    const char *p = data;
    if (o->md && len && EVP_DigestUpdate(o->md, data, len) != 1 && o->err == 0)
        o->err = -ENOMEM;
    o->written += len;
    while (len && o->err == 0) {
        size_t take = WRITE_BUF - o->len < len ? WRITE_BUF - o->len : len;
        memcpy(o->buf + o->len, p, take);
        o->len += take;
        p += take;
        len -= take;
        if (o->len == WRITE_BUF)
            outfile_flush(o);
    }
}

/* Flushes, fsyncs and renames into place (commit), or removes the temp file. */
static int outfile_close(outfile *o, bool commit)
{
    if (o->fd >= 0) {
        outfile_flush(o);
        if (commit && o->err == 0 && fsync(o->fd) < 0)
            o->err = -errno;
        if (close(o->fd) < 0 && o->err == 0)
            o->err = -errno;
        o->fd = -1;
        if (commit && o->err == 0 && rename(o->tmp, o->path) < 0)
            o->err = -errno;
        if (!commit || o->err < 0)
            unlink(o->tmp);
    }
    int r = o->err;
    free(o->path);
    free(o->tmp);
    free(o->buf);
    memset(o, 0, sizeof *o);
    o->fd = -1;
    return r;
}

/* Appends s as valid UTF-8: invalid bytes and NULs become U+FFFD, so rejected.jsonl stays
 * valid JSON text whatever the input was. */
static void utf8_sanitize(const char *s, size_t n, strbuf *out)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (c != 0 && l && i + l <= n && utf8_valid(s + i, l)) {
            strbuf_append(out, s + i, l);
            i += l;
        } else {
            strbuf_puts(out, "\xEF\xBF\xBD");
            i++;
        }
    }
}

/* ---- streaming the records ---- */

typedef struct pass_ctx {
    diag *errs;        /* pass 1: collect problems */
    outfile *cleaned;  /* pass 2: valid records */
    outfile *rejected; /* pass 2: rejected records */
    records_validator *v;
    bool header_written;
} pass_ctx;

static void write_rejected(outfile *o, const char *raw, size_t raw_len, const diag *errors)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "line", (double)errors->entries[0].line);
    cJSON *arr = cJSON_AddArrayToObject(j, "errors");
    for (size_t i = 0; i < errors->count; i++) {
        cJSON *e = cJSON_CreateObject();
        json_add_str_or_null(e, "field", errors->entries[i].field);
        cJSON_AddStringToObject(e, "message", errors->entries[i].message);
        cJSON_AddItemToArray(arr, e);
    }
    if (raw_len) {
        strbuf sb = {0};
        utf8_sanitize(raw, raw_len, &sb);
        cJSON_AddStringToObject(j, "record", sb.data);
        strbuf_free(&sb);
    } else {
        cJSON_AddNullToObject(j, "record"); /* an over-long record is never kept */
    }
    char *text = json_print(j);
    outfile_write(o, text, strlen(text));
    outfile_write(o, "\n", 1);
    free(text);
    cJSON_Delete(j);
}

static int on_record(void *ud, const char *raw, size_t raw_len, uint64_t record, const diag *errors)
{
    (void)record;
    pass_ctx *ctx = ud;
    if (ctx->errs) {
        for (size_t i = 0; i < errors->count; i++)
            error_at_line(ctx->errs, errors->entries[i].line, errors->entries[i].field,
                          errors->entries[i].message);
        return 0;
    }
    if (!ctx->cleaned || !ctx->rejected)
        return 0;
    if (!ctx->header_written) {
        size_t hlen = 0;
        const char *h = records_csv_header(ctx->v, &hlen);
        if (h) {
            outfile_write(ctx->cleaned, h, hlen);
            outfile_write(ctx->cleaned, "\n", 1);
        }
        ctx->header_written = true;
    }
    if (errors->count == 0) {
        outfile_write(ctx->cleaned, raw, raw_len);
        outfile_write(ctx->cleaned, "\n", 1);
    } else {
        write_rejected(ctx->rejected, raw, raw_len, errors);
    }
    return (ctx->cleaned->err || ctx->rejected->err) ? -EIO : 0;
}

typedef struct pass_out {
    records_stats stats;
    char *file_error;       /* malloc'd */
    char *file_error_field; /* malloc'd, NULL when the error is about no one field */
    uint64_t file_error_line;
} pass_out;

/* Opens the data file the way a job's files must be opened: never through a symlink, never
 * blocking on a FIFO, and only a regular file with some read bit set (root reads mode 000
 * files, but a person who chmod 000'd a file did not mean it to be sent). */
static int open_data(const char *path, const char *shown, intake_result *res, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        int e = -neg_errno();
        char eb[128];
        errno_text(e, eb, sizeof eb);
        if (e == ELOOP)
            set_failure(res, "invalid_job",
                        "%s is a symbolic link; batchd never follows links: copy the file in",
                        shown);
        else
            set_failure(res, "invalid_job", "%s cannot be read: %s", shown, eb);
        return -e;
    }
    if (fstat(fd, st) < 0) {
        int e = -neg_errno();
        close(fd);
        set_failure(res, "invalid_job", "%s cannot be examined", shown);
        return -e;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        set_failure(res, "invalid_job",
                    "%s is not a regular file (a FIFO, device or directory); only regular "
                    "files are read",
                    shown);
        return -EINVAL;
    }
    if ((st->st_mode & 0444) == 0) {
        close(fd);
        set_failure(res, "invalid_job",
                    "%s has no read permission (mode %04o); run chmod a+r on it if it is "
                    "meant to be sent",
                    shown, (unsigned)(st->st_mode & 07777));
        return -EACCES;
    }
    return fd;
}

/* Streams the file through a validator. ctx says what to do with each record. Returns 0,
 * -ECANCELED, or -errno on a read or write error. */
static int run_pass(int fd, const records_options *base, pass_ctx *ctx, size_t chunk,
                    const atomic_int *cancel, EVP_MD_CTX *md, pass_out *po)
{
    records_options o = *base;
    o.on_record = on_record;
    o.ud = ctx;
    records_validator *v = records_new(&o);
    if (!v)
        return -ENOMEM;
    ctx->v = v;
    if (lseek(fd, 0, SEEK_SET) < 0) {
        records_free(v);
        return -errno;
    }
    char *buf = xmalloc(chunk);
    int r = 0;
    for (;;) {
        if (cancel && atomic_load(cancel)) {
            r = -ECANCELED;
            break;
        }
        ssize_t n = read(fd, buf, chunk);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0) {
            r = records_finish(v);
            break;
        }
        if (md && EVP_DigestUpdate(md, buf, (size_t)n) != 1) {
            r = -ENOMEM;
            break;
        }
        r = records_feed(v, buf, (size_t)n);
        if (r != 0)
            break;
    }
    free(buf);
    records_get_stats(v, &po->stats);
    uint64_t line = 0;
    const char *fe = records_file_error(v, &line);
    po->file_error = fe ? xstrdup(fe) : NULL;
    const char *ff = records_file_error_field(v);
    po->file_error_field = ff ? xstrdup(ff) : NULL;
    po->file_error_line = line;
    records_free(v);
    ctx->v = NULL;
    return r > 0 ? -EIO : r;
}

/* Finishes md into 64 lower-case hex digits. 0 or -ENOMEM. */
static int digest_hex(EVP_MD_CTX *md, char out[65])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (EVP_DigestFinal_ex(md, d, &n) != 1 || n != 32)
        return -ENOMEM;
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    return 0;
}

static EVP_MD_CTX *digest_new(void)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        md = NULL;
    }
    return md;
}

/* The cleaned file's name: data.jsonl -> data.cleaned.jsonl; a stem too long for that is
 * cut (fsutil_fit_name), so a data file named up to NAME_MAX still gets one. */
static char *cleaned_name(const char *data_name)
{
    const char *dot = strrchr(data_name, '.');
    size_t stem = dot ? (size_t)(dot - data_name) : strlen(data_name);
    char *tail = xasprintf(".cleaned%s", dot ? dot : "");
    char *name = fsutil_fit_name(data_name, stem, tail);
    free(tail);
    return name;
}

static int write_skip_files(int fd, const char *dir, const records_options *ro, size_t chunk,
                            const atomic_int *cancel, intake_result *res)
{
    outfile cleaned, rejected;
    uint64_t written = 0;
    char *cname = cleaned_name(res->upload_name);
    int r = outfile_open(&cleaned, dir, cname);
    int r2 = outfile_open(&rejected, dir, INTAKE_REJECTED_NAME);
    EVP_MD_CTX *md = digest_new();
    if (!md && r == 0)
        r = -ENOMEM;
    if (r == 0 && r2 == 0) {
        /* What is uploaded is the cleaned file exactly as written here. */
        cleaned.md = md;
        pass_ctx ctx = {.cleaned = &cleaned, .rejected = &rejected};
        pass_out po = {0};
        r = run_pass(fd, ro, &ctx, chunk, cancel, NULL, &po);
        /* The second pass re-reads a file its producer still owns: what it wrote must be
         * what the first pass counted, or the cleaned file holds records nobody checked
         * the counts of (or none at all). */
        if (r == 0 &&
            (po.file_error || po.stats.valid != res->records || po.stats.invalid != res->rejected))
            r = -ESTALE;
        free(po.file_error);
        free(po.file_error_field);
        if (r == 0)
            r = digest_hex(md, res->sha256);
        written = cleaned.written;
    } else {
        r = r < 0 ? r : r2;
    }
    EVP_MD_CTX_free(md);
    int c1 = outfile_close(&cleaned, r == 0);
    int c2 = outfile_close(&rejected, r == 0);
    if (r == 0)
        r = c1 < 0 ? c1 : c2;
    if (r == 0)
        r = fsutil_fsync_dir(dir);
    if (r == 0) {
        free(res->upload_path);
        res->upload_path = fsutil_join(dir, cname);
        /* What was written and hashed, not what a stat sees later: the directory is the
         * producer's, and the upload checks the file against both. */
        res->bytes = written;
    } else if (r == -ESTALE) {
        set_failure(res, "invalid_job",
                    "the data file changed while it was being validated (its valid records "
                    "were counted again and differ); nothing was uploaded: write the data "
                    "completely before submitting, then run batchctl retry");
    } else if (r != -ECANCELED) {
        char eb[128];
        errno_text(-r, eb, sizeof eb);
        set_failure(res, "invalid_records", "cannot write %s or %s in %s: %s", cname,
                    INTAKE_REJECTED_NAME, dir, eb);
    }
    free(cname);
    return r;
}

/* errors holds the manifest's problems only (it is empty before manifest_resolve). */
static void manifest_failure(intake_result *res, const diag *errors)
{
    uint64_t n = errors->count + errors->dropped;
    const diag_entry *first = errors->count ? &errors->entries[0] : NULL;
    const char *where = first ? first->path : NULL;
    if (!where && first)
        where = first->file;
    const char *msg = first ? first->message : NULL;
    if (n <= 1)
        set_failure(res, "invalid_job", "%s%s%s", where ? where : "", where ? ": " : "",
                    msg ? msg : "the job is invalid");
    else
        set_failure(res, "invalid_job", "%llu problems in the job's manifest; the first: %s%s%s",
                    (unsigned long long)n, where ? where : "", where ? ": " : "", msg ? msg : "");
}

/* An append job naming a job: its records are checked against the target's schema, which
 * only the caller can know (intake knows no other job). Without it the check stops here
 * with "needs_target"; with it, the schema becomes the resolved job's dataset.schema, so
 * that the job's spec says what its records were checked against. */
static int take_target_schema(intake_result *res, const intake_options *opts)
{
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(res->job, "append_to");
    if (!cJSON_IsString(at))
        return 0;
    const cJSON *schema = opts ? opts->target_schema : NULL;
    if (!schema) {
        set_failure(res, "needs_target",
                    "append_to: %s is a job's name or id; its dataset.schema is needed to check "
                    "the records (batchd resolves it)",
                    at->valuestring);
        return -EAGAIN;
    }
    cJSON *ds = cJSON_GetObjectItemCaseSensitive(res->job, "dataset");
    if (!cJSON_IsObject(ds))
        ds = cJSON_AddObjectToObject(res->job, "dataset");
    cJSON_DeleteItemFromObjectCaseSensitive(ds, "schema");
    cJSON_AddItemToObject(ds, "schema", cJSON_Duplicate(schema, true));
    return 0;
}

/* Everything after the manifest: the data file and its records. */
/* The check found records to upload: the file as read when all are valid (with its
 * SHA-256), else, in skip mode, the cleaned file and rejected.jsonl (write_skip_files). */
static int accept_records(int fd, const char *dir, const records_options *ro, size_t chunk,
                          const atomic_int *cancel, const intake_options *opts, EVP_MD_CTX *md,
                          const records_stats *s, intake_result *res)
{
    int r = 0;
    res->records = s->valid;
    res->rejected = s->invalid;
    if (s->invalid == 0) {
        /* The bytes read and hashed (the file may have changed size since fstat). */
        res->bytes = s->bytes;
        r = digest_hex(md, res->sha256);
    } else if (!(opts && opts->dry_run)) {
        if (opts && opts->between_passes)
            opts->between_passes(opts->between_passes_ud);
        r = write_skip_files(fd, dir, ro, chunk, cancel, res);
    }
    if (r == -ENOMEM)
        set_failure(res, "invalid_job", "cannot compute the SHA-256 of %s: out of memory",
                    res->upload_name);
    if (r == -ECANCELED)
        set_failure(res, "cancelled", "cancelled while validating %s", res->upload_name);
    return r;
}

static int check_data(const char *dir, const config *cfg, const atomic_int *cancel,
                      const intake_options *opts, diag *el, intake_result *res)
{
    const char *shown = res->upload_name;
    struct stat st;
    memset(&st, 0, sizeof st);
    int fd = open_data(res->data_path, shown, res, &st);
    if (fd < 0) {
        error_in_file(el, shown, res->message);
        return fd;
    }
    if (st.st_size == 0) {
        close(fd);
        set_failure(res, "invalid_records", "%s is empty: it must hold at least one record", shown);
        error_in_file(el, shown, res->message);
        return 0;
    }
    records_format fmt;
    records_format_from_name(shown, &fmt);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(res->job, "dataset"), "schema");
    records_schema *rs = records_schema_new(schema);
    if (!rs) {
        close(fd);
        set_failure(res, "invalid_job", "dataset.schema cannot be used for validation");
        return 0;
    }
    size_t chunk = opts && opts->chunk ? opts->chunk : INTAKE_DEFAULT_CHUNK;
    records_options ro = {.format = fmt, .schema = rs, .max_record = cfg->job.max_record_bytes};
    pass_ctx ctx = {.errs = el};
    pass_out po = {0};
    EVP_MD_CTX *md = digest_new();
    int r = md ? run_pass(fd, &ro, &ctx, chunk, cancel, md, &po) : -ENOMEM;
    /* A file error at line 0 concerns the whole file (no records at all): no line to name. */
    if (po.file_error && po.file_error_line > 0)
        error_at_line(el, po.file_error_line, po.file_error_field, po.file_error);
    else if (po.file_error)
        error_in_file(el, shown, po.file_error);
    const records_stats *s = &po.stats;
    bool skip = cfg->job.invalid_records == CONFIG_INVALID_SKIP;
    /* The counts of a pass that read the whole file, whatever the verdict: batchctl validate
     * reports them for an invalid file too (intake_check keeps them for invalid_records). */
    if (r == 0 && !po.file_error) {
        res->records = s->valid;
        res->rejected = s->invalid;
    }
    res->bytes = (uint64_t)st.st_size;
    if (r == -ECANCELED) {
        set_failure(res, "cancelled", "cancelled while validating %s", shown);
    } else if (r < 0) {
        char eb[128];
        errno_text(-r, eb, sizeof eb);
        set_failure(res, "invalid_job", "%s cannot be read: %s", shown, eb);
        error_in_file(el, shown, res->message);
    } else if (po.file_error && po.file_error_line > 0) {
        set_failure(res, "invalid_records", "%s:%llu: %s", shown,
                    (unsigned long long)po.file_error_line, po.file_error);
    } else if (po.file_error) {
        set_failure(res, "invalid_records", "%s: %s", shown, po.file_error);
    } else if (s->records == 0) {
        set_failure(res, "invalid_records", "%s holds no records (only blank lines)", shown);
    } else if (s->invalid > 0 && (!skip || s->valid == 0)) {
        if (skip)
            set_failure(res, "invalid_records", "none of the %llu records match the schema",
                        (unsigned long long)s->records);
        else
            set_failure(res, "invalid_records", "%llu record%s not match the schema",
                        (unsigned long long)s->invalid, s->invalid == 1 ? " does" : "s do");
    } else {
        r = accept_records(fd, dir, &ro, chunk, cancel, opts, md, s, res);
    }
    free(po.file_error);
    free(po.file_error_field);
    EVP_MD_CTX_free(md);
    records_schema_free(rs);
    close(fd);
    return r;
}

int intake_check_ex(const char *job_dir, const char *job_name, const config *cfg,
                    const atomic_int *cancel, const intake_options *opts, intake_result *out)
{
    memset(out, 0, sizeof *out);
    diag el = {.max = INTAKE_MAX_ERRORS};
    struct stat st;
    int r = 0;
    char *dir = NULL;
    if (lstat(job_dir, &st) < 0) {
        r = -errno;
        char eb[128];
        errno_text(-r, eb, sizeof eb);
        set_failure(out, "invalid_job", "%s: %s", job_dir, eb);
        goto done;
    }
    if (S_ISLNK(st.st_mode) || (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))) {
        set_failure(out, "invalid_job",
                    "%s is not a regular file or directory (symbolic links, FIFOs and devices "
                    "are never followed)",
                    job_dir);
        goto done;
    }
    bool bare = S_ISREG(st.st_mode);
    int mr = bare ? manifest_resolve_bare(job_dir, job_name, cfg, &out->job, &el)
                  : manifest_resolve(job_dir, job_name, cfg, &out->job, &el);
    if (mr < 0) {
        manifest_failure(out, &el);
        goto done;
    }
    /* A resolved manifest's list is not the job's (the old per-call list was dropped too). */
    diag_free(&el);
    if (take_target_schema(out, opts) < 0)
        goto done;
    const char *file = json_str(cJSON_GetObjectItemCaseSensitive(out->job, "dataset"), "file");
    if (bare) {
        const char *slash = strrchr(job_dir, '/');
        dir = slash ? xstrndup(job_dir, (size_t)(slash - job_dir)) : xstrdup(".");
        if (!*dir) {
            free(dir);
            dir = xstrdup("/");
        }
        out->data_path = xstrdup(job_dir);
    } else {
        dir = xstrdup(job_dir);
        out->data_path = fsutil_join(job_dir, file);
    }
    out->upload_name = xstrdup(file);
    out->upload_path = xstrdup(out->data_path);
    r = check_data(dir, cfg, cancel, opts, &el, out);
done:
    out->errors = cJSON_CreateArray();
    diag_to_json(&el, out->errors);
    diag_free(&el);
    free(dir);
    if (out->code)
        out->sha256[0] = '\0';
    if (out->code && strcmp(out->code, "invalid_records") != 0) {
        out->records = 0;
        out->rejected = 0;
    }
    return r;
}

int intake_check(const char *job_dir, const char *job_name, const config *cfg,
                 const atomic_int *cancel, intake_result *out)
{
    return intake_check_ex(job_dir, job_name, cfg, cancel, NULL, out);
}

/* ---- batchd --check-config ---- */

static int check_dir(const char *what, const char *path, FILE *out)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0; /* batchd creates it at start */
        char eb[128];
        errno_text(errno, eb, sizeof eb);
        fprintf(out, "%s %s: %s\n", what, path, eb);
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(out, "%s %s: exists and is not a directory\n", what, path);
        return 1;
    }
    return 0;
}

static int check_group(const char *group, FILE *out)
{
    if (!group)
        return 0;
    struct group gr, *res = NULL;
    char buf[16384];
    int e = getgrnam_r(group, &gr, buf, sizeof buf, &res);
    if (e == 0 && !res) {
        /* Not fatal: batchd then serves only root and its own user (control.c warns too). */
        fprintf(out,
                "warning: [control] group %s: no such group; only root and batchd's own user "
                "can use the control socket (create the group, or set group =)\n",
                group);
    }
    return 0;
}

static void print_manifest_errors(const diag *errors, FILE *out)
{
    for (size_t i = 0; i < errors->count; i++) {
        const diag_entry *e = &errors->entries[i];
        fprintf(out, "%s", e->file ? e->file : "template");
        if (e->line > 0)
            fprintf(out, ":%llu", (unsigned long long)e->line);
        if (e->path)
            fprintf(out, ": %s", e->path);
        fprintf(out, ": %s\n", e->message);
    }
}

/* Every bare data file dropped into incoming/ takes its workspace from [api] workspace_id or
 * the configured template; with neither, each one would fail as invalid_job. */
static int check_workspace(const char *path, const config *c, FILE *out)
{
    if (c->api.workspace_id)
        return 0;
    char *ws = c->job.template_path ? manifest_template_workspace(c->job.template_path, c) : NULL;
    if (ws) {
        free(ws);
        return 0;
    }
    fprintf(out,
            "%s: [api] workspace_id is not set and [job] template %s sets no \"workspace_id\": "
            "every data file dropped on its own into incoming/ would fail (only job directories "
            "whose job.json names a workspace_id could run); add workspace_id = ID under [api] "
            "in %s, or \"workspace_id\" to the template\n",
            path, c->job.template_path ? c->job.template_path : "(none)", path);
    return 1;
}

int intake_check_config(const char *path, FILE *out)
{
    config c;
    diag d = {0};
    int problems = 0;
    if (config_load(path, &c, &d) < 0)
        problems += (int)(d.count ? d.count : 1);
    for (size_t i = 0; i < d.count; i++)
        fprintf(out, "%s\n", d.lines[i]);
    diag_free(&d);
    if (problems == 0) {
        char *token = NULL;
        const char *source = NULL;
        if (config_load_token(&c, &token, &source, &d) < 0)
            problems++;
        for (size_t i = 0; i < d.count; i++)
            fprintf(out, "%s\n", d.lines[i]);
        diag_free(&d);
        secret_free(&token);
        problems += check_dir("[spool] dir", c.spool.dir, out);
        problems += check_dir("[state] dir", c.state.dir, out);
        problems += check_group(c.control.group, out);
        problems += config_check_hooks(&c, &d);
        for (size_t i = 0; i < d.count; i++)
            fprintf(out, "%s\n", d.lines[i]);
        diag_free(&d);
        if (c.job.template_path) {
            if (manifest_check_template(c.job.template_path, &c, &d) < 0) {
                if (d.count == 0)
                    fprintf(out, "[job] template %s: cannot be used\n", c.job.template_path);
                problems += d.count ? (int)d.count : 1;
            }
            print_manifest_errors(&d, out);
            diag_free(&d);
        }
        problems += check_workspace(path, &c, out);
        if (problems == 0)
            fprintf(out, "%s: configuration OK (API token from %s)\n", path, source ? source : "?");
    }
    config_free(&c);
    return problems ? 78 : 0;
}
