/* spool: see include/batchd/spool.h. Every operation works on directory fds opened once by
 * spool_open, with *at() calls and lstat semantics (AT_SYMLINK_NOFOLLOW), so nothing a
 * producer drops is ever followed or opened here. */
#include "batchd/spool.h"
#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/util.h"
#include "spool_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

enum { SUB_TMP, SUB_INCOMING, SUB_ACTIVE, SUB_DONE, SUB_FAILED, SUB_COUNT };

#define MASK(sub) (1u << (sub))
/* In a mask of directories whose fsync a claim leaves to its caller: the job directory the
 * claim made (a data file's, or a rejected entry's). */
#define MASK_JOB_DIR MASK(SUB_COUNT)

static const char *const sub_names[SUB_COUNT] = {"tmp", "incoming", "active", "done", "failed"};
/* Producers in the spool's group must be able to write tmp/ and rename into incoming/;
 * setgid so that their files belong to that group and stay readable by the daemon. */
static const mode_t sub_modes[SUB_COUNT] = {02770, 02770, 0750, 0750, 0750};

#define STAGE_PREFIX     ".claim-"
#define ERROR_JSON       "error.json"
#define ERROR_JSON_ENTRY "error.json.entry"
/* How many -N suffixes to try before giving up: far beyond any sane reuse of one name. */
#define MAX_SUFFIX 100000
/* result.json / error.json are small; anything bigger is not ours. */
#define MAX_JOB_FILE (4u << 20)
/* Entries of incoming/ remembered from one full scan (oldest first). A full scan reads and
 * stats every entry; with 10,000 waiting and one claimed per finished job, scanning afresh
 * each time costs O(n) system calls per claim. */
#define SCAN_CACHE_MAX 4096

/* The oldest entries of incoming/ as of the last full scan, oldest first: see
 * spool_scan_incoming. */
typedef struct dated_name {
    struct timespec mtime;
    char *name;
} dated_name;

struct spool {
    char *root;
    char *paths[SUB_COUNT];
    int rootfd;
    int fds[SUB_COUNT];
    dated_name *scan_cache;
    size_t scan_cached;
};

spool *spool_new(const char *dir)
{
    spool *s = xcalloc(1, sizeof *s);
    s->root = xstrdup(dir);
    for (int i = 0; i < SUB_COUNT; i++) {
        s->paths[i] = fsutil_join(dir, sub_names[i]);
        s->fds[i] = -1;
    }
    s->rootfd = -1;
    return s;
}

static void close_fds(spool *s)
{
    for (int i = 0; i < SUB_COUNT; i++) {
        if (s->fds[i] >= 0)
            close(s->fds[i]);
        s->fds[i] = -1;
    }
    if (s->rootfd >= 0)
        close(s->rootfd);
    s->rootfd = -1;
}

static void scan_cache_clear(spool *s)
{
    for (size_t i = 0; i < s->scan_cached; i++)
        /* scan_cache_take frees a gone entry's name and compacts its slot away; the
         * analyzer loses track of the compaction through the array index.
         * NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
        free(s->scan_cache[i].name);
    free(s->scan_cache);
    s->scan_cache = NULL;
    s->scan_cached = 0;
}

void spool_free(spool *s)
{
    if (!s)
        return;
    scan_cache_clear(s);
    close_fds(s);
    for (int i = 0; i < SUB_COUNT; i++)
        free(s->paths[i]);
    free(s->root);
    free(s);
}

const char *spool_dir(const spool *s, const char *sub)
{
    if (!sub || !*sub)
        return s->root;
    for (int i = 0; i < SUB_COUNT; i++)
        if (strcmp(sub, sub_names[i]) == 0)
            return s->paths[i];
    return NULL;
}

int spool_incoming_fd(const spool *s)
{
    return s->fds[SUB_INCOMING];
}

/* ---- names ---- */

char *spool_name_escape(const char *name)
{
    strbuf sb = {0};
    size_t len = strlen(name);
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)name[i];
        if (c == '\\') {
            strbuf_puts(&sb, "\\\\");
            i++;
        } else if (c == '\n') {
            strbuf_puts(&sb, "\\n");
            i++;
        } else if (c == '\t') {
            strbuf_puts(&sb, "\\t");
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            strbuf_printf(&sb, "\\x%02x", c);
            i++;
        } else if (c < 0x80) {
            strbuf_putc(&sb, (char)c);
            i++;
        } else {
            /* Copy a whole valid UTF-8 sequence, or escape the one bad byte. */
            size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
            if (n > 1 && i + n <= len && utf8_valid(name + i, n)) {
                strbuf_append(&sb, name + i, n);
                i += n;
            } else {
                strbuf_printf(&sb, "\\x%02x", c);
                i++;
            }
        }
    }
    return strbuf_steal(&sb);
}

/* A name we accept as an argument: one path component, not hidden, not too long. */
static bool name_arg_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    return len > 0 && len <= NAME_MAX && name[0] != '.' && !strchr(name, '/');
}

static bool has_control_char(const char *name)
{
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

/* Length of name without a ".jsonl" / ".csv" extension in any case (as manifest and
 * records accept them inside a job directory: spreadsheet exports write ".CSV"), or 0 when
 * it has neither (or nothing before it). */
static size_t data_stem_len(const char *name)
{
    static const char *const exts[] = {".jsonl", ".csv"};
    size_t len = strlen(name);
    for (size_t i = 0; i < BD_ARRAY_LEN(exts); i++) {
        size_t el = strlen(exts[i]);
        if (len > el && strcasecmp(name + len - el, exts[i]) == 0)
            return len - el;
    }
    return 0;
}

/* base, or base with "-N" for n >= 2, cut at a UTF-8 boundary so it fits in NAME_MAX. */
static char *suffixed_name(const char *base, unsigned n)
{
    if (n < 2)
        return xstrdup(base);
    char suffix[16];
    int sl = snprintf(suffix, sizeof suffix, "-%u", n);
    size_t keep = strlen(base);
    if (keep + (size_t)sl > NAME_MAX) {
        keep = NAME_MAX - (size_t)sl;
        /* Not inside a UTF-8 character; at most three steps, so a name of bytes that are
         * not UTF-8 (all continuation bytes) keeps its length instead of shrinking to "". */
        for (int i = 0; i < 3 && keep > 0 && ((unsigned char)base[keep] & 0xc0) == 0x80; i++)
            keep--;
    }
    return xasprintf("%.*s%s", (int)keep, base, suffix);
}

/* 1 when name exists in directory fd (without following it), 0 when not, or -errno. */
static int exists_at(int fd, const char *name)
{
    struct stat st;
    if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return 1;
    return errno == ENOENT ? 0 : -errno;
}

/* The first of base, base-2, base-3 ... that exists in none of the directories in mask. */
static int pick_free_name(const spool *s, const char *base, unsigned mask, char **out)
{
    for (unsigned n = 1; n <= MAX_SUFFIX; n++) {
        char *cand = suffixed_name(base, n);
        int taken = 0;
        for (int i = 0; i < SUB_COUNT && taken == 0; i++)
            if (mask & MASK(i))
                taken = exists_at(s->fds[i], cand);
        if (taken == 0) {
            *out = cand;
            return 0;
        }
        free(cand);
        if (taken < 0)
            return taken;
    }
    return -EEXIST;
}

/* ---- small I/O helpers ---- */

/* How many temp files a batch keeps open at once between begin and commit (fsutil.h). */
#define SPOOL_OPEN_MAX 64

static int fsync_fd(int fd)
{
    return fsync(fd) < 0 ? -errno : 0;
}

/* Moves (from_fd, from) to to_fd under base or the first free suffixed name (free in the
 * directories of mask, which must include to_fd's). RENAME_NOREPLACE makes a clash with a
 * concurrent creator a retry, never an overwrite. */
static int move_to_free_name(const spool *s, int from_fd, const char *from, int to_fd,
                             const char *base, unsigned mask, char **final_name)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        char *name = NULL;
        int r = pick_free_name(s, base, mask, &name);
        if (r < 0)
            return r;
        if (renameat2(from_fd, from, to_fd, name, RENAME_NOREPLACE) == 0) {
            *final_name = name;
            return 0;
        }
        r = -errno;
        free(name);
        if (r != -EEXIST)
            return r;
    }
    return -EEXIST;
}

typedef struct name_list {
    char **names;
    size_t count;
    size_t cap;
} name_list;

static void name_list_add(name_list *l, const char *name)
{
    if (l->count == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->names = xrealloc(l->names, l->cap * sizeof *l->names);
    }
    l->names[l->count++] = xstrdup(name);
}

void spool_names_free(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

/* Reads the names in directory fd (without "." and ".."), keeping those keep() accepts.
 * Opens "." afresh so the directory offset of fd is never shared. */
static int list_dir(int fd, bool (*keep)(int fd, const char *name, void *ctx), void *ctx,
                    name_list *out)
{
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = -errno;
        close(dfd);
        return e;
    }
    int r = 0;
    for (;;) {
        errno = 0;
        const struct dirent *de = readdir(d);
        if (!de) {
            r = errno ? -errno : 0;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (keep(fd, de->d_name, ctx))
            name_list_add(out, de->d_name);
    }
    closedir(d);
    return r;
}

/* ---- opening ---- */

static int open_sub(spool *s, int i, bool create, dev_t dev, char **err)
{
    if (create) {
        if (mkdirat(s->rootfd, sub_names[i], sub_modes[i]) == 0) {
            /* mkdir applies the umask; the protocol needs the exact mode (and setgid). */
            if (fchmodat(s->rootfd, sub_names[i], sub_modes[i], 0) < 0)
                log_warn("spool: cannot set mode %o on %s: %s", (unsigned)sub_modes[i], s->paths[i],
                         strerror(errno));
        } else if (errno != EEXIST) {
            int e = errno;
            *err = xasprintf("cannot create spool directory %s: %s; check that the daemon's "
                             "user may write %s",
                             s->paths[i], strerror(e), s->root);
            return -e;
        }
    }
    int fd = openat(s->rootfd, sub_names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        struct stat lst;
        /* O_NOFOLLOW|O_DIRECTORY reports a symlink as ENOTDIR or ELOOP: tell them apart. */
        if ((e == ENOTDIR || e == ELOOP) &&
            fstatat(s->rootfd, sub_names[i], &lst, AT_SYMLINK_NOFOLLOW) == 0)
            e = S_ISLNK(lst.st_mode) ? ELOOP : ENOTDIR;
        const char *hint = e == ENOENT    ? "it is missing; start batchd once to create it"
                           : e == ELOOP   ? "it is a symlink; make it a real directory on the "
                                            "spool's file system"
                           : e == ENOTDIR ? "it is not a directory; move it away"
                                          : "check its owner and permissions";
        *err = xasprintf("spool directory %s: %s; %s", s->paths[i], strerror(e), hint);
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != dev) {
        close(fd);
        *err = xasprintf("spool directory %s is on another file system than %s; renames between "
                         "them would fail: keep all of tmp/ incoming/ active/ done/ failed/ on "
                         "one file system",
                         s->paths[i], s->root);
        return -EXDEV;
    }
    s->fds[i] = fd;
    return 0;
}

int spool_open(spool *s, bool create, char **err)
{
    *err = NULL;
    if (s->rootfd >= 0)
        return 0;
    if (create) {
        int r = fsutil_mkdir_p(s->root, 0750);
        if (r < 0) {
            *err = xasprintf("cannot create spool directory %s: %s; create it or fix [spool] dir",
                             s->root, strerror(-r));
            return r;
        }
    }
    s->rootfd = open(s->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->rootfd < 0) {
        int e = errno;
        *err = xasprintf("cannot open spool directory %s: %s; create it or fix [spool] dir",
                         s->root, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(s->rootfd, &st) < 0) {
        int e = errno;
        *err = xasprintf("cannot stat spool directory %s: %s", s->root, strerror(e));
        close_fds(s);
        return -e;
    }
    for (int i = 0; i < SUB_COUNT; i++) {
        int r = open_sub(s, i, create, st.st_dev, err);
        if (r < 0) {
            close_fds(s);
            return r;
        }
    }
    return 0;
}

/* ---- error.json ---- */

static char *error_json_body(const char *job_name, const char *id, const char *code,
                             const char *message, int64_t now_ms)
{
    /* JSON text must be UTF-8; cJSON escapes control characters itself. */
    char *esc = utf8_valid(job_name, strlen(job_name)) ? NULL : spool_name_escape(job_name);
    error_doc e = {.job = esc ? esc : job_name,
                   .id = id,
                   .stage = "queued",
                   .code = code,
                   .message = message,
                   .at_ms = now_ms};
    cJSON *j = error_json_new(&e);
    free(esc);
    char *body = json_print_pretty(j);
    cJSON_Delete(j);
    return body;
}

/* ---- claiming ---- */

typedef enum entry_kind { ENTRY_DIR, ENTRY_DATA, ENTRY_REJECT } entry_kind;

/* Decides what a staged entry is from its lstat alone. For ENTRY_REJECT, *code and *reason
 * (malloc'd) say why; display is the escaped name as the producer dropped it. */
static entry_kind classify(const struct stat *st, const char *name, const char *display,
                           const char **code, char **reason)
{
    if (has_control_char(name) || !utf8_valid(name, strlen(name))) {
        *code = "invalid_job";
        *reason = xasprintf("incoming/%s: the name has control characters (such as a newline) or "
                            "is not valid UTF-8; rename it using printable characters and submit "
                            "it again",
                            display);
        return ENTRY_REJECT;
    }
    if (S_ISDIR(st->st_mode))
        return ENTRY_DIR;
    if (S_ISREG(st->st_mode) && data_stem_len(name) > 0)
        return ENTRY_DATA;
    *code = "unsupported_entry";
    if (S_ISREG(st->st_mode))
        *reason = xasprintf("incoming/%s is a regular file but not a data file; name it NAME.jsonl "
                            "or NAME.csv, or put it into a job directory with job.json",
                            display);
    else if (S_ISLNK(st->st_mode))
        *reason = xasprintf("incoming/%s is a symbolic link, which batchd never follows; write "
                            "the data itself into tmp/ and rename it into incoming/",
                            display);
    else
        *reason = xasprintf("incoming/%s is a %s, not a regular file or directory; drop a "
                            "NAME.jsonl or NAME.csv file or a job directory instead",
                            display,
                            S_ISFIFO(st->st_mode)   ? "FIFO (named pipe)"
                            : S_ISSOCK(st->st_mode) ? "socket"
                            : S_ISCHR(st->st_mode)  ? "character device"
                            : S_ISBLK(st->st_mode)  ? "block device"
                                                    : "special file");
    return ENTRY_REJECT;
}

/* The job name an entry gives: a directory keeps its name, anything else loses a .jsonl or
 * .csv extension. */
static char *job_base_name(const struct stat *st, const char *name)
{
    size_t stem = S_ISDIR(st->st_mode) ? 0 : data_stem_len(name);
    return stem ? xstrndup(name, stem) : xstrdup(name);
}

/* What a staging directory holds: the producer's entry (at most one) and maybe our
 * error.json. Dot names are our temporary files (entries never start with '.'). */
typedef struct staged {
    char *entry;
    bool has_error_json;
    size_t others;
} staged;

static bool keep_all(int fd, const char *name, void *ctx)
{
    (void)fd;
    (void)ctx;
    (void)name;
    return true;
}

static int read_staged(int stagefd, staged *st)
{
    memset(st, 0, sizeof *st);
    name_list l = {0};
    int r = list_dir(stagefd, keep_all, NULL, &l);
    for (size_t i = 0; r == 0 && i < l.count; i++) {
        const char *n = l.names[i];
        if (n[0] == '.')
            (void)unlinkat(stagefd, n, 0); /* a temp file of an interrupted error.json write */
        else if (strcmp(n, ERROR_JSON) == 0)
            st->has_error_json = true;
        else if (!st->entry)
            st->entry = xstrdup(n);
        else
            st->others++;
    }
    spool_names_free(l.names, l.count);
    return r;
}

static int place_rejected(spool *s, const char *stage, int stagefd, const char *base,
                          const char *job_id, const char *code, const char *reason,
                          spool_claim_result *out, unsigned *dirty)
{
    char *name = NULL;
    int r = pick_free_name(s, base, MASK(SUB_ACTIVE) | MASK(SUB_DONE) | MASK(SUB_FAILED), &name);
    if (r < 0)
        return r;
    char idbuf[27];
    if (!job_id) {
        id_new(time_now_ms(), idbuf);
        job_id = idbuf;
    }
    char *body = error_json_body(name, job_id, code, reason, time_now_ms());
    char *stage_path = fsutil_join(s->paths[SUB_ACTIVE], stage);
    char *path = fsutil_join(stage_path, ERROR_JSON);
    r = fsutil_write_replace(path, body, strlen(body), 0640);
    free(path);
    free(stage_path);
    free(body);
    /* error.json's name: the stage's one fsync (fsutil_write_atomic would add a second). */
    if (r == 0)
        r = fsync_fd(stagefd);
    if (r < 0) {
        free(name);
        return r;
    }
    /* Another name could only appear meanwhile through a concurrent claimer; then the
     * error.json names the wrong job, so write it again under the new name. */
    if (renameat2(s->fds[SUB_ACTIVE], stage, s->fds[SUB_FAILED], name, RENAME_NOREPLACE) < 0) {
        r = -errno;
        free(name);
        return r == -EEXIST ? -EAGAIN : r;
    }
    out->kind = SPOOL_REJECTED;
    out->job_dir = fsutil_join(s->paths[SUB_FAILED], name);
    /* The job's name travels in JSON (job records, the control socket): a name that is not
     * UTF-8 goes as error.json shows it, escaped; the directory keeps the bytes. */
    if (utf8_valid(name, strlen(name))) {
        out->job_name = name;
    } else {
        out->job_name = spool_name_escape(name);
        free(name);
    }
    out->job_id = xstrdup(job_id);
    out->reason = xstrdup(reason);
    out->code = code;
    /* The job directory (the former stage) was fsynced above, with error.json in it. */
    *dirty |= MASK(SUB_FAILED) | MASK(SUB_ACTIVE);
    return 0;
}

/* Renames <dirfd>/<file> to the first free <file>.orig, <file>.orig.2 ... when it exists. */
static int set_aside(int dirfd, const char *file)
{
    if (exists_at(dirfd, file) != 1)
        return 0;
    for (unsigned n = 1; n <= MAX_SUFFIX; n++) {
        char *aside = n == 1 ? xasprintf("%s.orig", file) : xasprintf("%s.orig.%u", file, n);
        int r = renameat2(dirfd, file, dirfd, aside, RENAME_NOREPLACE) < 0 ? -errno : 0;
        free(aside);
        if (r != -EEXIST)
            return r == 0 ? fsync_fd(dirfd) : r;
    }
    return -EEXIST;
}

/* batchd writes result.json / error.json into a job directory when the job ends; files of
 * those names that the producer dropped (say, a failed job dropped again) are kept under
 * another name instead of being overwritten. Repeating this after a crash is harmless. */
static int keep_producer_results(int stagefd, const char *entry)
{
    int fd = openat(stagefd, entry, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = set_aside(fd, "result.json");
    if (r == 0)
        r = set_aside(fd, ERROR_JSON);
    /* In skip mode batchd writes rejected.jsonl and <data>.cleaned.<ext> too. */
    if (r == 0)
        r = set_aside(fd, "rejected.jsonl");
    DIR *d = r == 0 ? fdopendir(dup(fd)) : NULL;
    if (d) {
        struct dirent *e;
        char **names = NULL;
        size_t n = 0;
        while ((e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if ((len > 14 && strcmp(e->d_name + len - 14, ".cleaned.jsonl") == 0) ||
                (len > 12 && strcmp(e->d_name + len - 12, ".cleaned.csv") == 0)) {
                names = xrealloc(names, (n + 1) * sizeof *names);
                names[n++] = xstrdup(e->d_name);
            }
        }
        closedir(d);
        for (size_t i = 0; i < n; i++) {
            if (r == 0)
                r = set_aside(fd, names[i]);
            free(names[i]);
        }
        free(names);
    }
    close(fd);
    return r;
}

static int place_claimed(spool *s, const char *stage, int stagefd, const char *entry,
                         entry_kind kind, const char *base, spool_claim_result *out,
                         unsigned *dirty)
{
    unsigned mask = MASK(SUB_ACTIVE) | MASK(SUB_DONE) | MASK(SUB_FAILED);
    char *name = NULL;
    int r;
    if (kind == ENTRY_DIR) {
        r = keep_producer_results(stagefd, entry);
        if (r < 0)
            return r;
        r = move_to_free_name(s, stagefd, entry, s->fds[SUB_ACTIVE], base, mask, &name);
        /* The empty staging directory is ours; when this rmdir fails (or a crash comes
         * first), spool_init removes it on the next start. */
        if (r == 0)
            (void)unlinkat(s->fds[SUB_ACTIVE], stage, AT_REMOVEDIR);
    } else {
        /* The staging directory, holding the data file, becomes the job directory: the
         * file's name in it is made durable by fsyncing it (MASK_JOB_DIR). */
        r = move_to_free_name(s, s->fds[SUB_ACTIVE], stage, s->fds[SUB_ACTIVE], base, mask, &name);
        *dirty |= MASK_JOB_DIR;
    }
    if (r < 0)
        return r;
    out->kind = SPOOL_CLAIMED;
    out->job_name = name;
    out->job_dir = fsutil_join(s->paths[SUB_ACTIVE], name);
    *dirty |= MASK(SUB_ACTIVE);
    return 0;
}

/* Moves what staging directory active/<stage> holds to its final place. Shared by
 * spool_claim_batch and the recovery in spool_init, so an interrupted claim resumes exactly.
 * Leaves the fsyncs of the directories it changed to the caller: it adds them to *dirty
 * (MASK(SUB_...) and MASK_JOB_DIR for out->job_dir). */
static int finish_staged(spool *s, const char *stage, const char *job_id, spool_claim_result *out,
                         unsigned *dirty)
{
    int stagefd =
        openat(s->fds[SUB_ACTIVE], stage, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (stagefd < 0)
        return -errno;
    staged st;
    int r = read_staged(stagefd, &st);
    if (r == 0 && st.others > 0)
        r = -ENOTEMPTY; /* only recovery meets this; spool_recover says what to do */
    if (r == 0 && !st.entry) {
        /* Interrupted before the entry arrived (or after a directory left): only our own
         * files are here. */
        if (st.has_error_json)
            (void)unlinkat(stagefd, ERROR_JSON, 0);
        out->kind = SPOOL_GONE;
        r = unlinkat(s->fds[SUB_ACTIVE], stage, AT_REMOVEDIR) < 0 ? -errno : 0;
        *dirty |= MASK(SUB_ACTIVE);
    } else if (r == 0) {
        struct stat lst;
        if (fstatat(stagefd, st.entry, &lst, AT_SYMLINK_NOFOLLOW) < 0) {
            r = -errno;
        } else {
            char *display = spool_name_escape(st.entry);
            const char *code = NULL;
            char *reason = NULL;
            entry_kind kind = classify(&lst, st.entry, display, &code, &reason);
            char *base = job_base_name(&lst, st.entry);
            if (kind == ENTRY_REJECT) {
                for (int attempt = 0; attempt < 8; attempt++) {
                    r = place_rejected(s, stage, stagefd, base, job_id, code, reason, out, dirty);
                    if (r != -EAGAIN)
                        break;
                }
            } else {
                r = place_claimed(s, stage, stagefd, st.entry, kind, base, out, dirty);
            }
            free(base);
            free(reason);
            free(display);
        }
    }
    close(stagefd);
    free(st.entry);
    return r;
}

/* Creates an empty, uniquely named staging directory active/.claim-<id>. */
static int make_stage(spool *s, char stage[SPOOL_STAGE_MAX])
{
    for (int attempt = 0; attempt < 8; attempt++) {
        char id[27];
        id_new(time_now_ms(), id);
        snprintf(stage, SPOOL_STAGE_MAX, STAGE_PREFIX "%s", id);
        if (mkdirat(s->fds[SUB_ACTIVE], stage, 0750) == 0)
            return 0;
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

/* Moves incoming/<entry> into a fresh staging directory active/<stage>. 0 when staged, 1
 * when the entry is gone (nothing left behind), or -errno (nothing left behind). No fsync:
 * see spool_claim_batch. */
static int stage_entry(spool *s, const char *entry, char stage[SPOOL_STAGE_MAX])
{
    int r = make_stage(s, stage);
    if (r < 0)
        return r;
    /* An entry named error.json would collide with the error.json written beside a rejected
     * entry, so it gets its own name right away (and keeps it as its job name). */
    const char *staged_name = strcmp(entry, ERROR_JSON) == 0 ? ERROR_JSON_ENTRY : entry;
    char *to = xasprintf("%s/%s", stage, staged_name);
    r = renameat(s->fds[SUB_INCOMING], entry, s->fds[SUB_ACTIVE], to) < 0 ? -errno : 0;
    free(to);
    if (r < 0) {
        (void)unlinkat(s->fds[SUB_ACTIVE], stage, AT_REMOVEDIR);
        stage[0] = '\0';
    }
    return r == -ENOENT ? 1 : r;
}

/* fsyncs the job directory a claim made (MASK_JOB_DIR): its one name is the entry's. */
static int sync_job_dir(const char *job_dir)
{
    return job_dir ? fsutil_fsync_dir(job_dir) : 0;
}

/* Fails every item that left incoming/ with r: its claim is not durable. */
static void fail_staged(spool_claim_item *items, size_t n, int r)
{
    for (size_t i = 0; i < n; i++) {
        if (items[i].stage[0] && items[i].rc == 0) {
            spool_claim_clear(&items[i].res);
            items[i].rc = r;
        }
    }
}

/* The destinations of a claim batch, fsynced before incoming/. */
static const int claim_dest_dirs[] = {SUB_FAILED, SUB_ACTIVE};

typedef struct claim_sync {
    spool *s;
    spool_claim_item *items;
    const unsigned *job_dirty;
    size_t n;
    unsigned dirty;
    _Atomic int dest_rc; /* the first failed fsync of failed/ or active/ */
} claim_sync;

/* Index i < n: item i's job directory; then the destination directories. */
static void claim_sync_one(void *ctx, size_t i)
{
    claim_sync *cs = ctx;
    if (i < cs->n) {
        spool_claim_item *it = &cs->items[i];
        if (it->rc == 0 && (cs->job_dirty[i] & MASK_JOB_DIR))
            it->rc = sync_job_dir(it->res.job_dir);
        return;
    }
    int sub = claim_dest_dirs[i - cs->n];
    int r = (cs->dirty & MASK(sub)) ? fsync_fd(cs->s->fds[sub]) : 0;
    int none = 0;
    if (r < 0)
        atomic_compare_exchange_strong(&cs->dest_rc, &none, r);
}

void spool_claim_batch(spool *s, spool_claim_item *items, size_t n)
{
    unsigned dirty = 0;
    for (size_t i = 0; i < n; i++) {
        spool_claim_item *it = &items[i];
        memset(&it->res, 0, sizeof it->res);
        it->stage[0] = '\0';
        it->rc = !name_arg_ok(it->entry) ? -EINVAL : s->rootfd < 0 ? -EBADF : 0;
        if (it->rc == 0)
            it->rc = stage_entry(s, it->entry, it->stage);
        if (it->rc == 1) {
            it->rc = 0;
            it->res.kind = SPOOL_GONE;
        }
    }
    unsigned *job_dirty = xcalloc(n ? n : 1, sizeof *job_dirty);
    for (size_t i = 0; i < n; i++) {
        spool_claim_item *it = &items[i];
        if (!it->stage[0])
            continue;
        job_dirty[i] = MASK(SUB_INCOMING) | MASK(SUB_ACTIVE);
        it->rc = finish_staged(s, it->stage, it->job_id, &it->res, &job_dirty[i]);
        dirty |= job_dirty[i];
    }
    /* After all the renames, so that the first fsync commits them all (on a journalling
     * file system). The destinations (each job directory, failed/, active/) do not depend on
     * each other and are fsynced at once (each still costs the disk a cache flush, which
     * concurrent fsyncs share); incoming/ only after all of them: see spool.h. */
    claim_sync cs = {.s = s, .items = items, .job_dirty = job_dirty, .n = n, .dirty = dirty};
    fsutil_parallel(n + BD_ARRAY_LEN(claim_dest_dirs), claim_sync_one, &cs);
    free(job_dirty);
    int r = cs.dest_rc;
    if (r == 0 && (dirty & MASK(SUB_INCOMING)))
        r = fsync_fd(s->fds[SUB_INCOMING]);
    if (r < 0)
        fail_staged(items, n, r);
    for (size_t i = 0; i < n; i++)
        if (items[i].rc < 0)
            spool_claim_clear(&items[i].res);
    for (size_t i = 0; i < n; i++)
        if (items[i].rc == 0)
            items[i].stage[0] = '\0';
}

int spool_claim(spool *s, const char *entry, const char *job_id, spool_claim_result *out)
{
    spool_claim_item it = {.entry = entry, .job_id = job_id};
    spool_claim_batch(s, &it, 1);
    *out = it.res;
    if (it.rc < 0 && it.stage[0]) {
        char *display = spool_name_escape(entry);
        log_error("spool: claiming incoming/%s failed: %s; if it is not in its final place, "
                  "it is kept in %s/%s and the claim is finished on the next start",
                  display, strerror(-it.rc), s->paths[SUB_ACTIVE], it.stage);
        free(display);
    }
    return it.rc;
}

void spool_claim_clear(spool_claim_result *c)
{
    if (!c)
        return;
    free(c->job_name);
    free(c->job_dir);
    free(c->job_id);
    free(c->reason);
    memset(c, 0, sizeof *c);
}

/* ---- recovery ---- */

static bool keep_stage(int fd, const char *name, void *ctx)
{
    (void)ctx;
    struct stat st;
    return strncmp(name, STAGE_PREFIX, strlen(STAGE_PREFIX)) == 0 &&
           fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

static void log_recovered(const char *stage, const spool_claim_result *c)
{
    if (c->kind == SPOOL_GONE || !c->job_name) {
        log_info("spool: removed empty staging directory %s of an interrupted claim", stage);
        return;
    }
    char *display = spool_name_escape(c->job_name);
    log_notice("spool: finished an interrupted claim: %s is now %s", stage, display);
    free(display);
}

static int spool_recover(spool *s, char **err)
{
    name_list l = {0};
    int r = list_dir(s->fds[SUB_ACTIVE], keep_stage, NULL, &l);
    if (r < 0) {
        *err = xasprintf("cannot read %s: %s", s->paths[SUB_ACTIVE], strerror(-r));
        return r;
    }
    for (size_t i = 0; i < l.count; i++) {
        spool_claim_result c;
        memset(&c, 0, sizeof c);
        unsigned dirty = 0;
        int fr = finish_staged(s, l.names[i], NULL, &c, &dirty);
        if (fr == 0 && (dirty & MASK_JOB_DIR))
            fr = sync_job_dir(c.job_dir);
        for (int k = SUB_FAILED; fr == 0 && k >= SUB_INCOMING; k--)
            if (dirty & MASK(k))
                fr = fsync_fd(s->fds[k]);
        /* One entry that cannot be finished must not keep every other job from running:
         * say where it is and go on. */
        if (fr < 0)
            log_error("cannot finish the interrupted claim in %s/%s: %s; it is left there: "
                      "move its entry back into %s by hand",
                      s->paths[SUB_ACTIVE], l.names[i],
                      fr == -ENOTEMPTY ? "it holds more than one entry" : strerror(-fr),
                      s->paths[SUB_INCOMING]);
        else
            log_recovered(l.names[i], &c);
        spool_claim_clear(&c);
    }
    spool_names_free(l.names, l.count);
    (void)err;
    return 0;
}

int spool_init(spool *s, char **err)
{
    int r = spool_open(s, true, err);
    return r < 0 ? r : spool_recover(s, err);
}

/* ---- listing ---- */

static int cmp_dated(const void *a, const void *b)
{
    const dated_name *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec)
        return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct scan_skip {
    bool (*fn)(void *ud, const char *name);
    void *ud;
} scan_skip;

static bool skipped(const scan_skip *k, const char *name)
{
    return k && k->fn && k->fn(k->ud, name);
}

static bool keep_visible(int fd, const char *name, void *ctx)
{
    (void)fd;
    return name[0] != '.' && !skipped(ctx, name);
}

/* Reads all of incoming/ and keeps the SCAN_CACHE_MAX oldest entries in the cache. */
static int scan_cache_fill(spool *s, scan_skip *k)
{
    scan_cache_clear(s);
    name_list l = {0};
    int r = list_dir(s->fds[SUB_INCOMING], keep_visible, k, &l);
    if (r < 0) {
        spool_names_free(l.names, l.count);
        return r;
    }
    dated_name *dn = xcalloc(l.count ? l.count : 1, sizeof *dn);
    size_t n = 0;
    for (size_t i = 0; i < l.count; i++) {
        struct stat st;
        /* Gone meanwhile (claimed, or taken back by its producer): not claimable. */
        if (fstatat(s->fds[SUB_INCOMING], l.names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
            free(l.names[i]);
            continue;
        }
        dn[n].mtime = st.st_mtim;
        dn[n++].name = l.names[i];
    }
    free(l.names);
    qsort(dn, n, sizeof *dn, cmp_dated);
    for (size_t i = SCAN_CACHE_MAX; i < n; i++)
        free(dn[i].name);
    s->scan_cache = dn;
    s->scan_cached = n < SCAN_CACHE_MAX ? n : SCAN_CACHE_MAX;
    return 0;
}

/* Copies up to max cached entries that still exist into out, dropping from the cache those
 * that are gone (claimed since). Returns how many were copied. */
static size_t scan_cache_take(spool *s, size_t max, const scan_skip *k, char **out)
{
    size_t got = 0, kept = 0, i = 0;
    for (; i < s->scan_cached && got < max; i++) {
        dated_name *e = &s->scan_cache[i];
        struct stat st;
        /* Skipped since it was cached (a claim of it failed): drop it like a gone one. */
        if (skipped(k, e->name) ||
            fstatat(s->fds[SUB_INCOMING], e->name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            free(e->name);
            e->name = NULL; /* its slot is overwritten or cut off below */
            continue;
        }
        out[got++] = xstrdup(e->name);
        s->scan_cache[kept++] = *e;
    }
    /* Close the gaps the gone entries left; the unexamined tail moves up behind. */
    if (kept < i && i < s->scan_cached)
        memmove(&s->scan_cache[kept], &s->scan_cache[i],
                (s->scan_cached - i) * sizeof *s->scan_cache);
    s->scan_cached -= i - kept;
    return got;
}

int spool_scan_incoming(spool *s, size_t max, char ***names, size_t *count)
{
    return spool_scan_incoming_ex(s, max, NULL, NULL, names, count);
}

int spool_scan_incoming_ex(spool *s, size_t max, bool (*skip)(void *ud, const char *name), void *ud,
                           char ***names, size_t *count)
{
    scan_skip k = {.fn = skip, .ud = ud};
    *names = NULL;
    *count = 0;
    if (s->rootfd < 0)
        return -EBADF;
    if (max == 0) /* no free slot: the daemon may ask often, reading 10,000 names is waste */
        return 0;
    char **out = xcalloc(max, sizeof *out);
    /* The cache answers while it still holds max live entries: they are older than what
     * arrived since, as long as producers write a file just before renaming it (one renamed
     * in with an old mtime waits until the cache runs low). Otherwise scan afresh, which
     * also picks up everything that arrived since. */
    size_t got = scan_cache_take(s, max, &k, out);
    if (got < max) {
        spool_names_free(out, got);
        out = xcalloc(max, sizeof *out);
        int r = scan_cache_fill(s, &k);
        if (r < 0) {
            free(out);
            return r;
        }
        got = scan_cache_take(s, max, &k, out);
    }
    if (got == 0) {
        free(out);
        out = NULL;
    }
    *names = out;
    *count = got;
    return 0;
}

typedef struct count_ctx {
    scan_skip k;
    size_t n;
} count_ctx;

static bool count_visible(int fd, const char *name, void *ctx)
{
    count_ctx *c = ctx;
    if (keep_visible(fd, name, &c->k))
        c->n++;
    return false; /* counted, never listed */
}

int spool_count_incoming(spool *s, bool (*skip)(void *ud, const char *name), void *ud,
                         size_t *count)
{
    *count = 0;
    if (s->rootfd < 0)
        return -EBADF;
    count_ctx c = {.k = {.fn = skip, .ud = ud}};
    name_list l = {0};
    int r = list_dir(s->fds[SUB_INCOMING], count_visible, &c, &l);
    if (r < 0)
        return r;
    *count = c.n;
    return 0;
}

static bool keep_job_dir(int fd, const char *name, void *ctx)
{
    (void)ctx;
    struct stat st;
    return name[0] != '.' && fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
           S_ISDIR(st.st_mode);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int spool_list_active(spool *s, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    if (s->rootfd < 0)
        return -EBADF;
    name_list l = {0};
    int r = list_dir(s->fds[SUB_ACTIVE], keep_job_dir, NULL, &l);
    if (r < 0) {
        spool_names_free(l.names, l.count);
        return r;
    }
    if (l.count)
        qsort(l.names, l.count, sizeof *l.names, cmp_str);
    *names = l.names;
    *count = l.count;
    return 0;
}

/* ---- finishing and retrying ---- */

/* The "id" member of a JSON text, malloc'd, or NULL. */
static char *json_id_of(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    const char *id = json_str(j, "id");
    char *out = id ? xstrdup(id) : NULL;
    cJSON_Delete(j);
    return out;
}

/* 1 when <dir>/<file_name> exists and, if id is given, has that "id"; else 0. */
static int finished_here(const char *dir, const char *file_name, const char *id)
{
    char *path = fsutil_join(dir, file_name);
    char *text = NULL;
    int r = fsutil_read_file(path, MAX_JOB_FILE, true, &text, NULL);
    free(path);
    if (r < 0)
        return 0;
    char *have = id ? json_id_of(text) : NULL;
    int match = !id || (have && strcmp(have, id) == 0);
    free(have);
    free(text);
    return match;
}

/* After an interrupted spool_finish: finds the directory in dest that already holds this
 * job's file_name, looking at job_name, job_name-2, ... while they exist. */
static int find_finished(spool *s, int dest, const char *job_name, const char *file_name,
                         const char *body, char **final_dir)
{
    char *id = json_id_of(body);
    int r = -ENOENT;
    for (unsigned n = 1; n <= MAX_SUFFIX && r == -ENOENT; n++) {
        char *cand = suffixed_name(job_name, n);
        if (exists_at(s->fds[dest], cand) != 1) {
            free(cand);
            break;
        }
        char *dir = fsutil_join(s->paths[dest], cand);
        free(cand);
        if (finished_here(dir, file_name, id)) {
            r = 0;
            if (final_dir)
                *final_dir = dir;
            else
                free(dir);
        } else {
            free(dir);
        }
        /* Without an id only the unsuffixed name can be told apart from an older job. */
        if (!id)
            break;
    }
    free(id);
    return r;
}

/* Checks the item and begins the write of its file into active/<job_name>/ (w). 0 when
 * begun, 1 when the job was already moved (rc and final_dir then say where), or -errno. */
static int finish_begin(spool *s, spool_finish_item *it, fsutil_write *w)
{
    if (!name_arg_ok(it->job_name) || !name_arg_ok(it->file_name) || !it->body)
        return -EINVAL;
    if (s->rootfd < 0)
        return -EBADF;
    struct stat st;
    if (fstatat(s->fds[SUB_ACTIVE], it->job_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno != ENOENT)
            return -errno;
        int dest = it->ok ? SUB_DONE : SUB_FAILED;
        it->rc = find_finished(s, dest, it->job_name, it->file_name, it->body, &it->final_dir);
        return 1;
    }
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    char *job_dir = fsutil_join(s->paths[SUB_ACTIVE], it->job_name);
    char *path = fsutil_join(job_dir, it->file_name);
    int r = fsutil_write_begin(w, path, it->body, strlen(it->body), 0640);
    free(path);
    free(job_dir);
    return r;
}

typedef struct finish_sync {
    fsutil_write *w;
    const bool *written;
} finish_sync;

static void finish_sync_one(void *ctx, size_t i)
{
    const finish_sync *fx = ctx;
    if (fx->written[i])
        (void)fsutil_write_sync(&fx->w[i]);
}

typedef struct finish_dirs {
    const spool *s;
    spool_finish_item *items;
    const bool *written;
} finish_dirs;

/* The job directory's fsync makes its new file's name durable. */
static void finish_dir_one(void *ctx, size_t i)
{
    const finish_dirs *fd = ctx;
    spool_finish_item *it = &fd->items[i];
    if (!fd->written[i] || it->rc < 0)
        return;
    char *job_dir = fsutil_join(fd->s->paths[SUB_ACTIVE], it->job_name);
    it->rc = fsutil_fsync_dir(job_dir);
    free(job_dir);
}

/* Writes the items' files into their job directories (content and name durable), or sets
 * rc/final_dir for the jobs that were already moved. In phases per SPOOL_OPEN_MAX items
 * (every write begun, then every one synced, then each committed) and with the fsyncs of the job
 * directories after all the renames, so that their journal commits overlap. */
static void finish_write_all(spool *s, spool_finish_item *items, size_t n, bool *written)
{
    fsutil_write w[SPOOL_OPEN_MAX];
    for (size_t base = 0; base < n; base += SPOOL_OPEN_MAX) {
        size_t m = n - base < SPOOL_OPEN_MAX ? n - base : SPOOL_OPEN_MAX;
        for (size_t i = 0; i < m; i++) {
            spool_finish_item *it = &items[base + i];
            it->final_dir = NULL;
            it->rc = 0;
            w[i] = (fsutil_write){.fd = -1};
            int r = finish_begin(s, it, &w[i]);
            if (r != 1)
                it->rc = r;
            written[base + i] = r == 0;
        }
        /* Every sync before any rename (fsutil.h), all at once; a failed sync fails its
         * commit. */
        finish_sync fx = {.w = w, .written = written + base};
        fsutil_parallel(m, finish_sync_one, &fx);
        for (size_t i = 0; i < m; i++)
            if (written[base + i])
                items[base + i].rc = fsutil_write_commit(&w[i]);
    }
    finish_dirs fd = {.s = s, .items = items, .written = written};
    fsutil_parallel(n, finish_dir_one, &fd);
}

void spool_finish_batch(spool *s, spool_finish_item *items, size_t n)
{
    bool *written = xcalloc(n ? n : 1, sizeof *written);
    finish_write_all(s, items, n, written);
    free(written);
    bool *moved = xcalloc(n ? n : 1, sizeof *moved);
    unsigned dirty = 0;
    for (size_t i = 0; i < n; i++) {
        spool_finish_item *it = &items[i];
        if (it->rc < 0 || it->final_dir)
            continue;
        int dest = it->ok ? SUB_DONE : SUB_FAILED;
        char *name = NULL;
        it->rc = move_to_free_name(s, s->fds[SUB_ACTIVE], it->job_name, s->fds[dest], it->job_name,
                                   MASK(dest), &name);
        if (it->rc == 0) {
            it->final_dir = fsutil_join(s->paths[dest], name);
            moved[i] = true;
            dirty |= MASK(dest) | MASK(SUB_ACTIVE);
        }
        free(name);
    }
    /* Destinations before active/, as a claim does (spool.h): never lost. */
    static const int order[] = {SUB_DONE, SUB_FAILED, SUB_ACTIVE};
    int r = 0;
    for (size_t k = 0; r == 0 && k < BD_ARRAY_LEN(order); k++)
        r = (dirty & MASK(order[k])) ? fsync_fd(s->fds[order[k]]) : 0;
    for (size_t i = 0; r < 0 && i < n; i++) {
        if (moved[i]) {
            items[i].rc = r;
            free(items[i].final_dir);
            items[i].final_dir = NULL;
        }
    }
    free(moved);
}

int spool_finish(spool *s, const char *job_name, bool ok, const char *file_name, const char *body,
                 char **final_dir)
{
    spool_finish_item it = {.job_name = job_name, .ok = ok, .file_name = file_name, .body = body};
    spool_finish_batch(s, &it, 1);
    if (final_dir)
        *final_dir = it.final_dir;
    else
        free(it.final_dir);
    return it.rc;
}

/* Renames error.json in the job directory to the first free error.json.N. */
static int keep_old_error(int jobfd)
{
    if (exists_at(jobfd, ERROR_JSON) != 1)
        return 0;
    for (unsigned n = 1; n <= MAX_SUFFIX; n++) {
        char old[32];
        snprintf(old, sizeof old, ERROR_JSON ".%u", n);
        if (renameat2(jobfd, ERROR_JSON, jobfd, old, RENAME_NOREPLACE) == 0)
            return fsync_fd(jobfd);
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

int spool_reactivate(spool *s, const char *failed_name, char **active_name)
{
    *active_name = NULL;
    if (!name_arg_ok(failed_name))
        return -EINVAL;
    if (s->rootfd < 0)
        return -EBADF;
    int jobfd =
        openat(s->fds[SUB_FAILED], failed_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (jobfd < 0)
        return errno == ELOOP ? -ENOTDIR : -errno;
    int r = keep_old_error(jobfd);
    close(jobfd);
    if (r < 0)
        return r;
    char *name = NULL;
    r = move_to_free_name(s, s->fds[SUB_FAILED], failed_name, s->fds[SUB_ACTIVE], failed_name,
                          MASK(SUB_ACTIVE) | MASK(SUB_DONE), &name);
    if (r < 0)
        return r;
    r = fsync_fd(s->fds[SUB_ACTIVE]);
    if (r == 0)
        r = fsync_fd(s->fds[SUB_FAILED]);
    if (r < 0) {
        free(name);
        return r;
    }
    *active_name = name;
    return 0;
}
