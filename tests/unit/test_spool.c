/* test-deps: uv */
/* Unit tests of spool: real temporary spools under /tmp, every entry kind, name clashes,
 * odd names, 10,000 entries, crash recovery of interrupted claims, finishing, retrying and
 * the incoming/ watcher on a real libuv loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "batchd/fsutil.h"
#include "batchd/spool.h"
#include "batchd/util.h"
#include "fsync_count.h"

typedef struct fixture {
    char base[64]; /* the mkdtemp directory */
    char root[96]; /* base/spool */
    spool *s;
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = xcalloc(1, sizeof *f);
    strcpy(f->base, "/tmp/test_spool.XXXXXX");
    if (!mkdtemp(f->base)) {
        free(f);
        return -1;
    }
    snprintf(f->root, sizeof f->root, "%s/spool", f->base);
    f->s = spool_new(f->root);
    char *err = NULL;
    if (spool_init(f->s, &err) != 0) {
        fprintf(stderr, "spool_init: %s\n", err);
        free(err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    spool_free(f->s);
    nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static char *path_of(const fixture *f, const char *sub, const char *name)
{
    return xasprintf("%s/%s/%s", f->root, sub, name);
}

static char *path2_of(const fixture *f, const char *sub, const char *dir, const char *name)
{
    return xasprintf("%s/%s/%s/%s", f->root, sub, dir, name);
}

static void put_file(const char *path, const char *content)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(content, fp);
    assert_int_equal(fclose(fp), 0);
}

static void put_in(const fixture *f, const char *sub, const char *name, const char *content)
{
    char *p = path_of(f, sub, name);
    put_file(p, content);
    free(p);
}

static void mkdir_in(const fixture *f, const char *sub, const char *name)
{
    char *p = path_of(f, sub, name);
    assert_int_equal(mkdir(p, 0750), 0);
    free(p);
}

/* The st_mode of path without following it, or 0 when it does not exist. */
static mode_t lmode(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 ? st.st_mode : 0;
}

static mode_t lmode_in(const fixture *f, const char *sub, const char *name)
{
    char *p = path_of(f, sub, name);
    mode_t m = lmode(p);
    free(p);
    return m;
}

static mode_t lmode2_in(const fixture *f, const char *sub, const char *dir, const char *name)
{
    char *p = path2_of(f, sub, dir, name);
    mode_t m = lmode(p);
    free(p);
    return m;
}

/* Number of entries in <root>/<sub>, dot names included. */
static size_t count_in(const fixture *f, const char *sub)
{
    char *p = xasprintf("%s/%s", f->root, sub);
    uv_fs_t req;
    int n = uv_fs_scandir(NULL, &req, p, 0, NULL);
    uv_fs_req_cleanup(&req);
    free(p);
    assert_true(n >= 0);
    return (size_t)n;
}

static char *read_text(const char *path)
{
    char *text = NULL;
    assert_int_equal(fsutil_read_file(path, 1 << 20, true, &text, NULL), 0);
    return text;
}

/* Parses failed/<job>/error.json. */
static cJSON *error_json_of(const fixture *f, const char *job)
{
    char *p = path2_of(f, "failed", job, "error.json");
    char *text = read_text(p);
    free(p);
    assert_true(utf8_valid(text, strlen(text)));
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static void claim_ok(fixture *f, const char *entry, spool_claim_result *c)
{
    assert_int_equal(spool_claim(f->s, entry, NULL, c), 0);
}

/* ---- init and open ---- */

static void test_init_creates_dirs(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *sub;
        mode_t mode;
    } want[] = {
        {"tmp", 02770}, {"incoming", 02770}, {"active", 0750}, {"done", 0750}, {"failed", 0750}};
    for (size_t i = 0; i < BD_ARRAY_LEN(want); i++) {
        char *p = xasprintf("%s/%s", f->root, want[i].sub);
        assert_string_equal(spool_dir(f->s, want[i].sub), p);
        mode_t m = lmode(p);
        assert_true(S_ISDIR(m));
        assert_int_equal(m & 07777, want[i].mode);
        free(p);
    }
    assert_string_equal(spool_dir(f->s, NULL), f->root);
    assert_null(spool_dir(f->s, "elsewhere"));
    /* A second spool on the same tree: existing directories are fine. */
    spool *again = spool_new(f->root);
    char *err = NULL;
    assert_int_equal(spool_init(again, &err), 0);
    assert_null(err);
    spool_free(again);
    spool_free(NULL);
}

static void test_open_missing_and_symlinked(void **state)
{
    fixture *f = *state;
    char *root = xasprintf("%s/other", f->base);
    spool *s = spool_new(root);
    char *err = NULL;
    assert_int_equal(spool_open(s, false, &err), -ENOENT);
    assert_non_null(err);
    assert_non_null(strstr(err, root));
    free(err);
    /* Without spool_open nothing may be touched. */
    spool_claim_result c;
    assert_int_equal(spool_claim(s, "x.jsonl", NULL, &c), -EBADF);
    assert_int_equal(spool_open(s, true, &err), 0);
    spool_free(s);

    /* incoming/ replaced by a symlink is refused, with the place named. */
    char *inc = xasprintf("%s/incoming", root);
    char *moved = xasprintf("%s/incoming.real", root);
    assert_int_equal(rename(inc, moved), 0);
    assert_int_equal(symlink(moved, inc), 0);
    s = spool_new(root);
    assert_int_equal(spool_open(s, true, &err), -ELOOP);
    assert_non_null(strstr(err, inc));
    assert_non_null(strstr(err, "symlink"));
    free(err);
    spool_free(s);
    free(inc);
    free(moved);
    free(root);
}

/* ---- claiming each kind ---- */

static void test_claim_directory(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "incoming", "job one");
    put_in(f, "incoming", "job one/job.json", "{}");
    spool_claim_result c;
    claim_ok(f, "job one", &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_string_equal(c.job_name, "job one");
    char *want = path_of(f, "active", "job one");
    assert_string_equal(c.job_dir, want);
    free(want);
    assert_true(S_ISREG(lmode2_in(f, "active", "job one", "job.json")));
    assert_int_equal(count_in(f, "incoming"), 0);
    assert_int_equal(count_in(f, "active"), 1); /* no staging directory left behind */
    spool_claim_clear(&c);
    spool_claim_clear(NULL);
}

/* A failed job dropped again: its old error.json must survive the next finish. */
static void test_claim_directory_keeps_producer_results(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "incoming", "again");
    put_in(f, "incoming", "again/data.jsonl", "{}");
    put_in(f, "incoming", "again/error.json", "{\"old\": 1}");
    put_in(f, "incoming", "again/result.json", "{\"old\": 2}");
    put_in(f, "incoming", "again/error.json.orig", "{\"older\": 0}");
    /* What skip mode writes, dropped along (a done/ job copied back): kept, not overwritten. */
    put_in(f, "incoming", "again/rejected.jsonl", "{\"line\": 3}\n");
    put_in(f, "incoming", "again/data.cleaned.jsonl", "{}\n");
    spool_claim_result c;
    claim_ok(f, "again", &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    spool_claim_clear(&c);
    assert_int_equal(lmode2_in(f, "active", "again", "error.json"), 0);
    assert_int_equal(lmode2_in(f, "active", "again", "result.json"), 0);
    char *p = path2_of(f, "active", "again", "error.json.orig.2");
    char *text = read_text(p);
    assert_string_equal(text, "{\"old\": 1}");
    free(text);
    free(p);
    p = path2_of(f, "active", "again", "result.json.orig");
    text = read_text(p);
    assert_string_equal(text, "{\"old\": 2}");
    free(text);
    free(p);
    assert_int_equal(lmode2_in(f, "active", "again", "rejected.jsonl"), 0);
    assert_int_equal(lmode2_in(f, "active", "again", "data.cleaned.jsonl"), 0);
    assert_true(S_ISREG(lmode2_in(f, "active", "again", "rejected.jsonl.orig")));
    assert_true(S_ISREG(lmode2_in(f, "active", "again", "data.cleaned.jsonl.orig")));
    assert_int_equal(spool_finish(f->s, "again", false, "error.json", "{}", NULL), 0);
    assert_int_equal(count_in(f, "failed/again"), 7);
}

static void test_claim_data_files(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "eval.jsonl", "{\"prompt\":\"hi\"}\n");
    put_in(f, "incoming", "table.csv", "prompt\nhi\n");
    spool_claim_result c;
    claim_ok(f, "eval.jsonl", &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_string_equal(c.job_name, "eval");
    char *p = path2_of(f, "active", "eval", "eval.jsonl");
    char *text = read_text(p);
    assert_string_equal(text, "{\"prompt\":\"hi\"}\n");
    free(text);
    free(p);
    spool_claim_clear(&c);

    claim_ok(f, "table.csv", &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_string_equal(c.job_name, "table");
    assert_true(S_ISREG(lmode2_in(f, "active", "table", "table.csv")));
    spool_claim_clear(&c);
    assert_int_equal(count_in(f, "incoming"), 0);
    assert_int_equal(count_in(f, "active"), 2);
    assert_int_equal(count_in(f, "failed"), 0);
}

static void assert_rejected(fixture *f, const spool_claim_result *c, const char *job,
                            const char *code)
{
    assert_int_equal(c->kind, SPOOL_REJECTED);
    assert_string_equal(c->job_name, job);
    char *want = path_of(f, "failed", job);
    assert_string_equal(c->job_dir, want);
    free(want);
    assert_string_equal(c->code, code);
    assert_non_null(c->reason);
    assert_null(strchr(c->reason, '\n'));
    cJSON *j = error_json_of(f, job);
    assert_string_equal(json_str(j, "state"), "failed");
    assert_string_equal(json_str(j, "stage"), "queued");
    assert_string_equal(json_str(j, "code"), code);
    assert_string_equal(json_str(j, "message"), c->reason);
    assert_string_equal(json_str(j, "id"), c->job_id);
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(j, "errors")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "batch_id")));
    int64_t at;
    assert_int_equal(time_parse_rfc3339(json_str(j, "at"), &at), 0);
    cJSON_Delete(j);
}

static void test_reject_other_regular_file(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "notes.txt", "hello");
    spool_claim_result c;
    assert_int_equal(spool_claim(f->s, "notes.txt", "01JDTESTID0000000000000000", &c), 0);
    assert_rejected(f, &c, "notes.txt", "unsupported_entry");
    assert_string_equal(c.job_id, "01JDTESTID0000000000000000");
    assert_non_null(strstr(c.reason, ".jsonl"));
    assert_true(S_ISREG(lmode2_in(f, "failed", "notes.txt", "notes.txt")));
    assert_int_equal(count_in(f, "active"), 0);
    assert_int_equal(count_in(f, "incoming"), 0);
    spool_claim_clear(&c);
}

static void test_reject_symlink_to_passwd(void **state)
{
    fixture *f = *state;
    struct stat before, after;
    assert_int_equal(stat("/etc/passwd", &before), 0);
    char *link = path_of(f, "incoming", "evil.jsonl");
    assert_int_equal(symlink("/etc/passwd", link), 0);
    free(link);
    spool_claim_result c;
    claim_ok(f, "evil.jsonl", &c);
    assert_rejected(f, &c, "evil", "unsupported_entry");
    assert_non_null(strstr(c.reason, "symbolic link"));
    /* The link itself moved, still a link to the same target; the target untouched. */
    char *moved = path2_of(f, "failed", "evil", "evil.jsonl");
    assert_true(S_ISLNK(lmode(moved)));
    char target[64] = {0};
    assert_int_equal(readlink(moved, target, sizeof target - 1), (ssize_t)strlen("/etc/passwd"));
    assert_string_equal(target, "/etc/passwd");
    free(moved);
    assert_int_equal(stat("/etc/passwd", &after), 0);
    assert_int_equal(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
    assert_int_equal(before.st_ino, after.st_ino);
    spool_claim_clear(&c);
}

/* A symlink to a FIFO and a FIFO itself: opening either would block for ever (no writer),
 * so returning at all proves nothing opened them. main() arms an alarm against a hang. */
static void test_reject_fifo_without_blocking(void **state)
{
    fixture *f = *state;
    char *fifo = path_of(f, "incoming", "pipe.jsonl");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    char *outside = xasprintf("%s/outside-fifo", f->base);
    assert_int_equal(mkfifo(outside, 0600), 0);
    char *link = path_of(f, "incoming", "to-fifo.csv");
    assert_int_equal(symlink(outside, link), 0);

    spool_claim_result c;
    claim_ok(f, "pipe.jsonl", &c);
    assert_rejected(f, &c, "pipe", "unsupported_entry");
    assert_non_null(strstr(c.reason, "FIFO"));
    assert_true(S_ISFIFO(lmode2_in(f, "failed", "pipe", "pipe.jsonl")));
    spool_claim_clear(&c);

    claim_ok(f, "to-fifo.csv", &c);
    assert_rejected(f, &c, "to-fifo", "unsupported_entry");
    assert_true(S_ISLNK(lmode2_in(f, "failed", "to-fifo", "to-fifo.csv")));
    assert_true(S_ISFIFO(lmode(outside)));
    spool_claim_clear(&c);
    free(fifo);
    free(outside);
    free(link);
}

static void test_reject_socket(void **state)
{
    fixture *f = *state;
    char *p = path_of(f, "incoming", "sock");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(p) < sizeof sa.sun_path);
    strcpy(sa.sun_path, p);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    spool_claim_result c;
    claim_ok(f, "sock", &c);
    assert_rejected(f, &c, "sock", "unsupported_entry");
    assert_non_null(strstr(c.reason, "socket"));
    assert_true(S_ISSOCK(lmode2_in(f, "failed", "sock", "sock")));
    spool_claim_clear(&c);
    close(fd);
    free(p);
}

static void test_dotfiles_ignored(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", ".partial.jsonl", "{}");
    put_in(f, "incoming", "real.jsonl", "{}");
    char **names;
    size_t n;
    assert_int_equal(spool_scan_incoming(f->s, 10, &names, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "real.jsonl");
    spool_names_free(names, n);
    spool_claim_result c;
    assert_int_equal(spool_claim(f->s, ".partial.jsonl", NULL, &c), -EINVAL);
    assert_int_equal(spool_claim(f->s, "../etc", NULL, &c), -EINVAL);
    assert_int_equal(spool_claim(f->s, "", NULL, &c), -EINVAL);
    assert_true(S_ISREG(lmode_in(f, "incoming", ".partial.jsonl")));
}

static void test_claim_gone(void **state)
{
    fixture *f = *state;
    spool_claim_result c;
    claim_ok(f, "never-there.jsonl", &c);
    assert_int_equal(c.kind, SPOOL_GONE);
    assert_null(c.job_name);
    assert_int_equal(count_in(f, "active"), 0); /* the staging directory is gone too */
    spool_claim_clear(&c);
}

static void test_entry_named_error_json(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "error.json", "{\"mine\": true}");
    spool_claim_result c;
    claim_ok(f, "error.json", &c);
    assert_rejected(f, &c, "error.json.entry", "unsupported_entry");
    char *p = path2_of(f, "failed", "error.json.entry", "error.json.entry");
    char *text = read_text(p);
    assert_string_equal(text, "{\"mine\": true}");
    free(text);
    free(p);
    spool_claim_clear(&c);
}

/* ---- scanning ---- */

static void set_mtime(const fixture *f, const char *name, time_t sec)
{
    char *p = path_of(f, "incoming", name);
    struct timespec ts[2] = {{.tv_sec = sec}, {.tv_sec = sec}};
    assert_int_equal(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
    free(p);
}

static void test_scan_oldest_first(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "c.jsonl", "{}");
    put_in(f, "incoming", "b.jsonl", "{}");
    put_in(f, "incoming", "a.jsonl", "{}");
    mkdir_in(f, "incoming", "d");
    set_mtime(f, "c.jsonl", 1000);
    set_mtime(f, "b.jsonl", 2000);
    set_mtime(f, "a.jsonl", 2000);
    set_mtime(f, "d", 500);
    char **names;
    size_t n;
    assert_int_equal(spool_scan_incoming(f->s, 10, &names, &n), 0);
    assert_int_equal(n, 4);
    assert_string_equal(names[0], "d");
    assert_string_equal(names[1], "c.jsonl");
    assert_string_equal(names[2], "a.jsonl"); /* same mtime: by name */
    assert_string_equal(names[3], "b.jsonl");
    spool_names_free(names, n);
    assert_int_equal(spool_scan_incoming(f->s, 2, &names, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[1], "c.jsonl");
    spool_names_free(names, n);
    assert_int_equal(spool_scan_incoming(f->s, 0, &names, &n), 0);
    assert_int_equal(n, 0);
    assert_null(names);
}

/* ---- names ---- */

static void test_suffixes(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "done", "rep");
    mkdir_in(f, "failed", "rep-2");
    mkdir_in(f, "active", "rep-3");
    put_in(f, "incoming", "rep.jsonl", "{}");
    spool_claim_result c;
    claim_ok(f, "rep.jsonl", &c);
    assert_string_equal(c.job_name, "rep-4");
    assert_true(S_ISREG(lmode2_in(f, "active", "rep-4", "rep.jsonl")));
    spool_claim_clear(&c);

    static const char *const where[] = {"done", "failed", "active"};
    for (size_t i = 0; i < BD_ARRAY_LEN(where); i++) {
        char *name = xasprintf("clash-%s", where[i]);
        char *want = xasprintf("%s-2", name);
        mkdir_in(f, where[i], name);
        mkdir_in(f, "incoming", name);
        claim_ok(f, name, &c);
        assert_int_equal(c.kind, SPOOL_CLAIMED);
        assert_string_equal(c.job_name, want);
        spool_claim_clear(&c);
        free(name);
        free(want);
    }
    /* A rejected entry is suffixed against the same directories. */
    mkdir_in(f, "failed", "odd");
    put_in(f, "incoming", "odd", "x");
    claim_ok(f, "odd", &c);
    assert_rejected(f, &c, "odd-2", "unsupported_entry");
    spool_claim_clear(&c);
}

static void test_suffix_on_longest_name(void **state)
{
    fixture *f = *state;
    /* 254 bytes of which the last two form "é": the suffix must not split it. */
    char name[256];
    memset(name, 'x', 252);
    strcpy(name + 252, "\xc3\xa9");
    mkdir_in(f, "done", name);
    mkdir_in(f, "incoming", name);
    spool_claim_result c;
    claim_ok(f, name, &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_int_equal(strlen(c.job_name), 254);
    assert_true(utf8_valid(c.job_name, strlen(c.job_name)));
    assert_string_equal(c.job_name + 252, "-2");
    spool_claim_clear(&c);
}

/* A 255-byte name that is not UTF-8 at all (every byte a continuation byte) keeps all but
 * what the suffix needs, rather than being cut to nothing: names stay unique and
 * recognisable. */
static void test_suffix_on_name_not_utf8(void **state)
{
    fixture *f = *state;
    char name[256];
    memset(name, 0x80, 255);
    name[255] = '\0';
    mkdir_in(f, "failed", name);
    mkdir_in(f, "incoming", name);
    spool_claim_result c;
    claim_ok(f, name, &c);
    assert_int_equal(c.kind, SPOOL_REJECTED); /* not UTF-8 */
    const char *base = fsutil_basename(c.job_dir);
    assert_true(strlen(base) >= 250 && strlen(base) <= NAME_MAX);
    assert_int_equal(strcmp(base + strlen(base) - 2, "-2"), 0);
    assert_int_equal((unsigned char)base[0], 0x80);
    spool_claim_clear(&c);
}

static void test_unicode_and_spaces_kept(void **state)
{
    fixture *f = *state;
    const char *name = "Eval run 3 \xc3\xbc \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80.jsonl";
    put_in(f, "incoming", name, "{}");
    spool_claim_result c;
    claim_ok(f, name, &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_string_equal(c.job_name,
                        "Eval run 3 \xc3\xbc \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
    assert_true(S_ISREG(lmode2_in(f, "active", c.job_name, name)));
    spool_claim_clear(&c);
}

/* Spreadsheet exports say ".CSV": the extension's case does not matter (as in a job
 * directory and for batchctl submit); the file keeps its name. */
static void test_extension_any_case(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "Export.CSV", "prompt\n");
    put_in(f, "incoming", "Data.JsonL", "{}");
    spool_claim_result c;
    claim_ok(f, "Export.CSV", &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_string_equal(c.job_name, "Export");
    assert_true(S_ISREG(lmode2_in(f, "active", "Export", "Export.CSV")));
    spool_claim_clear(&c);
    claim_ok(f, "Data.JsonL", &c);
    assert_int_equal(c.kind, SPOOL_CLAIMED);
    assert_string_equal(c.job_name, "Data");
    spool_claim_clear(&c);
}

static void test_newline_name_rejected(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "bad\nname.jsonl", "{}");
    spool_claim_result c;
    claim_ok(f, "bad\nname.jsonl", &c);
    assert_rejected(f, &c, "bad\nname", "invalid_job");
    assert_non_null(strstr(c.reason, "bad\\nname.jsonl")); /* escaped, one log line */
    assert_non_null(strstr(c.reason, "control characters"));
    cJSON *j = error_json_of(f, "bad\nname");
    assert_string_equal(json_str(j, "job"), "bad\nname");
    cJSON_Delete(j);
    assert_true(S_ISREG(lmode2_in(f, "failed", "bad\nname", "bad\nname.jsonl")));
    spool_claim_clear(&c);

    /* A directory with a tab in its name, too. */
    mkdir_in(f, "incoming", "tab\there");
    claim_ok(f, "tab\there", &c);
    assert_rejected(f, &c, "tab\there", "invalid_job");
    assert_true(S_ISDIR(lmode2_in(f, "failed", "tab\there", "tab\there")));
    spool_claim_clear(&c);
}

static void test_invalid_utf8_name_rejected(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "caf\xe9.csv", "a\n1\n");
    spool_claim_result c;
    claim_ok(f, "caf\xe9.csv", &c);
    assert_int_equal(c.kind, SPOOL_REJECTED);
    /* The name as error.json gives it (valid UTF-8, for job records and the control
     * socket); the directory keeps the producer's bytes. */
    assert_string_equal(c.job_name, "caf\\xe9");
    char *want = path_of(f, "failed", "caf\xe9");
    assert_string_equal(c.job_dir, want);
    free(want);
    assert_string_equal(c.code, "invalid_job");
    cJSON *j = error_json_of(f, "caf\xe9"); /* checks the file is valid UTF-8 */
    assert_string_equal(json_str(j, "job"), "caf\\xe9");
    assert_string_equal(json_str(j, "message"), c.reason);
    cJSON_Delete(j);
    spool_claim_clear(&c);
}

static void test_name_escape(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"plain name", "plain name"},
        {"a\nb\tc", "a\\nb\\tc"},
        {"back\\slash", "back\\\\slash"},
        {"bell\a\x7f", "bell\\x07\\x7f"},
        {"\xc3\xbc\xe2\x82\xac", "\xc3\xbc\xe2\x82\xac"},
        {"bad\xff\xc3", "bad\\xff\\xc3"},
        {"\xed\xa0\x80", "\\xed\\xa0\\x80"}, /* a surrogate is not UTF-8 */
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        char *e = spool_name_escape(cases[i].in);
        assert_string_equal(e, cases[i].out);
        free(e);
    }
}

/* ---- many entries ---- */

#define MANY 10000

/* The scan cache: an entry listed but not claimed is listed again, a claimed one never,
 * and an entry that arrives while the cache is served shows up once the cache runs low. */
static void test_scan_cache(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "e%d.jsonl", i);
        put_in(f, "incoming", name, "{}");
        set_mtime(f, name, 1000 + i);
    }
    char **names;
    size_t n;
    assert_int_equal(spool_scan_incoming(f->s, 2, &names, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "e0.jsonl");
    spool_names_free(names, n);
    /* Not claimed: the same two again. */
    assert_int_equal(spool_scan_incoming(f->s, 2, &names, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "e0.jsonl");
    assert_string_equal(names[1], "e1.jsonl");
    spool_claim_result c;
    claim_ok(f, names[0], &c);
    spool_claim_clear(&c);
    spool_names_free(names, n);
    /* A newer arrival while three older ones are cached: served after them. */
    put_in(f, "incoming", "late.jsonl", "{}");
    set_mtime(f, "late.jsonl", 5000);
    assert_int_equal(spool_scan_incoming(f->s, 3, &names, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(names[0], "e1.jsonl");
    assert_string_equal(names[2], "e3.jsonl");
    spool_names_free(names, n);
    /* Asking for more than the cache holds scans afresh and finds it. */
    assert_int_equal(spool_scan_incoming(f->s, 10, &names, &n), 0);
    assert_int_equal(n, 5);
    assert_string_equal(names[0], "e1.jsonl");
    assert_string_equal(names[4], "late.jsonl");
    spool_names_free(names, n);
    /* Removed by its producer behind the cache's back: never listed. */
    char *p = path_of(f, "incoming", "e2.jsonl");
    assert_int_equal(unlink(p), 0);
    free(p);
    assert_int_equal(spool_scan_incoming(f->s, 2, &names, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "e1.jsonl");
    assert_string_equal(names[1], "e3.jsonl");
    spool_names_free(names, n);
}

/* Stuck entries: remembered without limit, logged once then at most every relog period,
 * retried when due (earliest first), forgotten once claimed. Fake clock. */
static void test_stuck_set(void **state)
{
    (void)state;
    spool_stuck *st = spool_stuck_new();
    enum { N = 5000 };
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "stuck-%d", i);
        assert_true(spool_stuck_failed(st, name, 1000 + i, 60000, 3600000)); /* first: log */
    }
    assert_int_equal(spool_stuck_count(st), N);
    assert_true(spool_stuck_has(st, "stuck-0") && spool_stuck_has(st, "stuck-4999"));
    assert_false(spool_stuck_has(st, "stuck-5000"));
    /* Failing again within the hour: not logged again. */
    assert_false(spool_stuck_failed(st, "stuck-0", 70000, 60000, 3600000));
    assert_int_equal(spool_stuck_count(st), N);
    char *due[8];
    /* Nothing due before a minute has passed. */
    assert_int_equal(spool_stuck_due(st, 60999, 8, due), 0);
    /* stuck-0 was retried at 70000 and went to the back; stuck-1.. come first. */
    size_t n = spool_stuck_due(st, 61002, 8, due);
    assert_int_equal(n, 2);
    assert_string_equal(due[0], "stuck-1");
    assert_string_equal(due[1], "stuck-2");
    for (size_t i = 0; i < n; i++)
        free(due[i]);
    /* An hour later a failure is logged again. */
    assert_true(spool_stuck_failed(st, "stuck-0", 70000 + 3600000, 60000, 3600000));
    spool_stuck_forget(st, "stuck-1");
    spool_stuck_forget(st, "not-there");
    assert_int_equal(spool_stuck_count(st), N - 1);
    assert_false(spool_stuck_has(st, "stuck-1"));
    n = spool_stuck_due(st, 61002, 8, due);
    assert_int_equal(n, 1);
    assert_string_equal(due[0], "stuck-2");
    free(due[0]);
    spool_stuck_free(st);
    spool_stuck_free(NULL);
}

/* The scan leaves skipped entries out without counting them, also from the cache. */
static void test_scan_skips_stuck(void **state)
{
    fixture *f = *state;
    spool_stuck *st = spool_stuck_new();
    for (int i = 0; i < 400; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%03d", i);
        char *p = path_of(f, "incoming", name);
        assert_int_equal(mkdir(p, 0755), 0);
        free(p);
        set_mtime(f, name, 1000 + i);
        spool_stuck_failed(st, name, 0, 60000, 3600000);
    }
    put_in(f, "incoming", "good.jsonl", "{}");
    set_mtime(f, "good.jsonl", 9000);
    char **names;
    size_t n;
    assert_int_equal(spool_scan_incoming_ex(f->s, 1, spool_stuck_skip, st, &names, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "good.jsonl");
    spool_names_free(names, n);
    /* An entry cached before it got stuck is dropped from the cache's answers. */
    put_in(f, "incoming", "later.jsonl", "{}");
    set_mtime(f, "later.jsonl", 9500);
    assert_int_equal(spool_scan_incoming_ex(f->s, 2, spool_stuck_skip, st, &names, &n), 0);
    assert_int_equal(n, 2);
    spool_names_free(names, n);
    spool_stuck_failed(st, "good.jsonl", 0, 60000, 3600000);
    assert_int_equal(spool_scan_incoming_ex(f->s, 1, spool_stuck_skip, st, &names, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "later.jsonl");
    spool_names_free(names, n);
    spool_stuck_free(st);
}

static void test_ten_thousand_entries(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < MANY; i++) {
        char name[32];
        snprintf(name, sizeof name, "job-%05d.jsonl", i);
        put_in(f, "incoming", name, name);
    }
    unsigned char *seen = xcalloc(MANY, 1);
    size_t claimed = 0, scans = 0;
    for (;;) {
        char **names;
        size_t n;
        assert_int_equal(spool_scan_incoming(f->s, 64, &names, &n), 0);
        if (n == 0)
            break;
        assert_true(n <= 64);
        scans++;
        for (size_t i = 0; i < n; i++) {
            spool_claim_result c;
            claim_ok(f, names[i], &c);
            assert_int_equal(c.kind, SPOOL_CLAIMED);
            long idx = strtol(c.job_name + 4, NULL, 10);
            assert_true(idx >= 0 && idx < MANY);
            assert_int_equal(seen[idx], 0); /* never claimed twice */
            seen[idx] = 1;
            claimed++;
            spool_claim_clear(&c);
        }
        spool_names_free(names, n);
        assert_true(scans <= MANY / 64 + 1);
    }
    assert_int_equal(claimed, MANY);
    assert_int_equal(count_in(f, "incoming"), 0);
    assert_int_equal(count_in(f, "active"), MANY); /* no staging leftovers */
    char **active;
    size_t na;
    assert_int_equal(spool_list_active(f->s, &active, &na), 0);
    assert_int_equal(na, MANY);
    for (size_t i = 0; i < na; i++) {
        char *file = xasprintf("%s.jsonl", active[i]);
        assert_true(S_ISREG(lmode2_in(f, "active", active[i], file)));
        free(file);
    }
    spool_names_free(active, na);
    free(seen);
}

/* ---- crash recovery ---- */

static int reinit(fixture *f)
{
    spool_free(f->s);
    f->s = spool_new(f->root);
    char *err = NULL;
    int r = spool_init(f->s, &err);
    if (r < 0)
        fprintf(stderr, "spool_init: %s\n", err);
    free(err);
    return r;
}

static void test_recover_interrupted_claims(void **state)
{
    fixture *f = *state;
    /* Crash right after the data file was renamed into staging. */
    mkdir_in(f, "active", ".claim-01AAAAAAAAAAAAAAAAAAAAAAAA");
    put_in(f, "active", ".claim-01AAAAAAAAAAAAAAAAAAAAAAAA/crashed.jsonl", "{\"n\":1}\n");
    /* Crash right after the staging directory was made. */
    mkdir_in(f, "active", ".claim-01BBBBBBBBBBBBBBBBBBBBBBBB");
    /* A directory entry staged, and the name taken meanwhile in done/. */
    mkdir_in(f, "active", ".claim-01CCCCCCCCCCCCCCCCCCCCCCCC");
    mkdir_in(f, "active", ".claim-01CCCCCCCCCCCCCCCCCCCCCCCC/dirjob");
    put_in(f, "active", ".claim-01CCCCCCCCCCCCCCCCCCCCCCCC/dirjob/job.json", "{}");
    mkdir_in(f, "done", "dirjob");
    /* A rejection interrupted while error.json was being written. */
    mkdir_in(f, "active", ".claim-01DDDDDDDDDDDDDDDDDDDDDDDD");
    char *link = path_of(f, "active", ".claim-01DDDDDDDDDDDDDDDDDDDDDDDD/link.jsonl");
    assert_int_equal(symlink("/etc/passwd", link), 0);
    free(link);
    put_in(f, "active", ".claim-01DDDDDDDDDDDDDDDDDDDDDDDD/.error.json.abc123.tmp", "{\"jo");
    /* The same entry already in incoming must not be touched. */
    put_in(f, "incoming", "waiting.jsonl", "{}");
    /* A staging directory that cannot be finished (two entries) is left for a person and
     * does not keep the others from being finished, nor the spool from starting. */
    mkdir_in(f, "active", ".claim-01EEEEEEEEEEEEEEEEEEEEEEEE");
    put_in(f, "active", ".claim-01EEEEEEEEEEEEEEEEEEEEEEEE/one.jsonl", "{}");
    put_in(f, "active", ".claim-01EEEEEEEEEEEEEEEEEEEEEEEE/two.jsonl", "{}");

    assert_int_equal(reinit(f), 0);
    assert_int_equal(count_in(f, "active/.claim-01EEEEEEEEEEEEEEEEEEEEEEEE"), 2);

    char *p = path2_of(f, "active", "crashed", "crashed.jsonl");
    char *text = read_text(p);
    assert_string_equal(text, "{\"n\":1}\n");
    free(text);
    free(p);
    assert_true(S_ISREG(lmode2_in(f, "active", "dirjob-2", "job.json")));
    assert_true(S_ISLNK(lmode2_in(f, "failed", "link", "link.jsonl")));
    assert_int_equal(count_in(f, "failed/link"), 2); /* link.jsonl and error.json only */
    cJSON *j = error_json_of(f, "link");
    assert_string_equal(json_str(j, "code"), "unsupported_entry");
    assert_string_equal(json_str(j, "job"), "link");
    assert_int_equal(strlen(json_str(j, "id")), 26);
    cJSON_Delete(j);
    /* The two claimed jobs remain in active/, and only the staging directory that could not
     * be finished. */
    assert_int_equal(count_in(f, "active"), 3);
    assert_true(S_ISREG(lmode_in(f, "incoming", "waiting.jsonl")));
}

/* ---- finishing, retrying, listing ---- */

static void test_finish_to_done_and_failed(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "active", "j");
    put_in(f, "active", "j/j.jsonl", "{}");
    char *final = NULL;
    assert_int_equal(spool_finish(f->s, "j", true, "result.json", "{\"id\":\"A\"}", &final), 0);
    char *want = path_of(f, "done", "j");
    assert_string_equal(final, want);
    free(want);
    free(final);
    char *p = path2_of(f, "done", "j", "result.json");
    char *text = read_text(p);
    assert_string_equal(text, "{\"id\":\"A\"}");
    free(text);
    free(p);
    assert_true(S_ISREG(lmode2_in(f, "done", "j", "j.jsonl")));

    /* A later job of the same name: done/j is taken, so done/j-2. */
    mkdir_in(f, "active", "j");
    assert_int_equal(spool_finish(f->s, "j", true, "result.json", "{\"id\":\"B\"}", &final), 0);
    want = path_of(f, "done", "j-2");
    assert_string_equal(final, want);
    free(final);
    /* Called again after the move (crash before the caller recorded it): same answer. */
    assert_int_equal(spool_finish(f->s, "j", true, "result.json", "{\"id\":\"B\"}", &final), 0);
    assert_string_equal(final, want);
    free(final);
    free(want);
    assert_int_equal(spool_finish(f->s, "j", true, "result.json", "{\"id\":\"C\"}", &final),
                     -ENOENT);
    assert_null(final);

    mkdir_in(f, "active", "k");
    assert_int_equal(spool_finish(f->s, "k", false, "error.json", "{\"id\":\"K\"}", NULL), 0);
    assert_true(S_ISREG(lmode2_in(f, "failed", "k", "error.json")));
    assert_int_equal(count_in(f, "active"), 0);
    assert_int_equal(spool_finish(f->s, "k", false, "error.json", "{\"id\":\"K\"}", NULL), 0);
    assert_int_equal(spool_finish(f->s, "nope", false, "error.json", "{}", NULL), -ENOENT);
    assert_int_equal(spool_finish(f->s, "k", false, "../x", "{}", NULL), -EINVAL);
    assert_int_equal(spool_finish(f->s, "a/b", false, "error.json", "{}", NULL), -EINVAL);
}

/* ---- batches ---- */

static size_t fsyncs_of(const fixture *f, const char *sub)
{
    char *p = xasprintf("%s/%s", f->root, sub);
    size_t n = fsync_count_of(p);
    free(p);
    return n;
}

static void test_claim_batch(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "incoming", "dirjob");
    put_in(f, "incoming", "dirjob/job.json", "{}");
    mkdir_in(f, "incoming", "dirjob2");
    put_in(f, "incoming", "a.jsonl", "{}\n");
    put_in(f, "incoming", "b.csv", "x\n");
    char *link = path_of(f, "incoming", "link.jsonl");
    assert_int_equal(symlink("/etc/passwd", link), 0);
    free(link);
    spool_claim_item items[] = {
        {.entry = "dirjob"},  {.entry = "a.jsonl"}, {.entry = "gone.jsonl"},
        {.entry = "b.csv"},   {.entry = "a/b"},     {.entry = "link.jsonl", .job_id = "01LINK"},
        {.entry = "dirjob2"},
    };
    size_t n = BD_ARRAY_LEN(items);
    fsync_count_start();
    spool_claim_batch(f->s, items, n);
    fsync_count_stop();

    /* Each shared directory is fsynced once for the whole batch. */
    assert_int_equal(fsyncs_of(f, "incoming"), 1);
    assert_int_equal(fsyncs_of(f, "active"), 1);
    assert_int_equal(fsyncs_of(f, "failed"), 1);
    assert_int_equal(fsyncs_of(f, "done"), 0);
    /* Besides: each data file's new job directory, and the rejected entry's error.json and
     * its directory. */
    assert_int_equal(fsyncs_of(f, "active/a"), 1);
    assert_int_equal(fsyncs_of(f, "active/b"), 1);

    const char *want_name[] = {"dirjob", "a", NULL, "b", NULL, "link", "dirjob2"};
    const spool_claim_kind want_kind[] = {SPOOL_CLAIMED, SPOOL_CLAIMED, SPOOL_GONE,
                                          SPOOL_CLAIMED, SPOOL_GONE,    SPOOL_REJECTED,
                                          SPOOL_CLAIMED};
    for (size_t i = 0; i < n; i++) {
        if (i == 4) {
            assert_int_equal(items[i].rc, -EINVAL);
        } else {
            assert_int_equal(items[i].rc, 0);
            assert_int_equal(items[i].res.kind, want_kind[i]);
        }
        assert_string_equal(items[i].stage, "");
        if (want_name[i])
            assert_string_equal(items[i].res.job_name, want_name[i]);
        else
            assert_null(items[i].res.job_name);
        spool_claim_clear(&items[i].res);
    }
    assert_true(S_ISREG(lmode2_in(f, "active", "dirjob", "job.json")));
    assert_true(S_ISDIR(lmode_in(f, "active", "dirjob2")));
    assert_true(S_ISREG(lmode2_in(f, "active", "a", "a.jsonl")));
    assert_true(S_ISREG(lmode2_in(f, "active", "b", "b.csv")));
    assert_true(S_ISLNK(lmode2_in(f, "failed", "link", "link.jsonl")));
    cJSON *j = error_json_of(f, "link");
    assert_string_equal(json_str(j, "id"), "01LINK");
    cJSON_Delete(j);
    /* Nothing left in incoming/ and no staging directory in active/. */
    assert_int_equal(count_in(f, "incoming"), 0);
    assert_int_equal(count_in(f, "active"), 4);
}

/* A hundred data files cost one fsync of incoming/ and of active/, against one each per
 * entry when claimed one by one. */
static void test_claim_batch_hundred(void **state)
{
    fixture *f = *state;
    enum { N = 100 };
    spool_claim_item items[N];
    memset(items, 0, sizeof items);
    char names[N][32];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "e%03d.jsonl", i);
        put_in(f, "incoming", names[i], "{}\n");
        items[i].entry = names[i];
    }
    fsync_count_start();
    spool_claim_batch(f->s, items, N);
    fsync_count_stop();
    assert_int_equal(fsyncs_of(f, "incoming"), 1);
    assert_int_equal(fsyncs_of(f, "active"), 1);
    assert_int_equal(fsync_count_all(), N + 2); /* + one per new job directory */
    for (int i = 0; i < N; i++) {
        assert_int_equal(items[i].rc, 0);
        assert_int_equal(items[i].res.kind, SPOOL_CLAIMED);
        spool_claim_clear(&items[i].res);
    }
    assert_int_equal(count_in(f, "active"), N);
    assert_int_equal(count_in(f, "incoming"), 0);

    /* The single-entry call is a batch of one: the same fsyncs for its one entry. */
    put_in(f, "incoming", "one.jsonl", "{}\n");
    spool_claim_result c;
    fsync_count_start();
    claim_ok(f, "one.jsonl", &c);
    fsync_count_stop();
    assert_int_equal(fsyncs_of(f, "incoming"), 1);
    assert_int_equal(fsyncs_of(f, "active"), 1);
    assert_int_equal(fsync_count_all(), 3);
    spool_claim_clear(&c);
}

/* A batch that finds the spool unopened fails every item and leaves the entries alone. */
static void test_claim_batch_unopened(void **state)
{
    fixture *f = *state;
    put_in(f, "incoming", "a.jsonl", "{}\n");
    spool *s = spool_new(f->root);
    spool_claim_item it = {.entry = "a.jsonl"};
    spool_claim_batch(s, &it, 1);
    assert_int_equal(it.rc, -EBADF);
    assert_string_equal(it.stage, "");
    spool_free(s);
    assert_true(S_ISREG(lmode_in(f, "incoming", "a.jsonl")));
    spool_claim_batch(f->s, NULL, 0); /* an empty batch does nothing */
}

static void test_finish_batch(void **state)
{
    fixture *f = *state;
    const char *jobs[] = {"j1", "j2", "j3"};
    for (size_t i = 0; i < BD_ARRAY_LEN(jobs); i++)
        mkdir_in(f, "active", jobs[i]);
    mkdir_in(f, "done", "j1"); /* taken: j1 becomes done/j1-2 */
    /* Finished before a crash: found where it went, nothing moves. */
    mkdir_in(f, "done", "old");
    put_in(f, "done", "old/result.json", "{\"id\":\"OLD\"}");
    spool_finish_item items[] = {
        {.job_name = "j1", .ok = true, .file_name = "result.json", .body = "{\"id\":\"1\"}"},
        {.job_name = "j2", .ok = false, .file_name = "error.json", .body = "{\"id\":\"2\"}"},
        {.job_name = "j3", .ok = true, .file_name = "result.json", .body = "{\"id\":\"3\"}"},
        {.job_name = "old", .ok = true, .file_name = "result.json", .body = "{\"id\":\"OLD\"}"},
        {.job_name = "nope", .ok = true, .file_name = "result.json", .body = "{}"},
        {.job_name = "j3", .ok = true, .file_name = "../x", .body = "{}"},
    };
    size_t n = BD_ARRAY_LEN(items);
    fsync_count_start();
    spool_finish_batch(f->s, items, n);
    fsync_count_stop();
    assert_int_equal(fsyncs_of(f, "done"), 1);
    assert_int_equal(fsyncs_of(f, "failed"), 1);
    assert_int_equal(fsyncs_of(f, "active"), 1);
    /* Per job: its file, and its directory before the move. */
    assert_int_equal(fsyncs_of(f, "done/j1-2"), 1);
    assert_int_equal(fsyncs_of(f, "done/j1-2/result.json"), 1);
    assert_int_equal(fsync_count_all(), 3 + 2 * 3);

    const char *want[] = {"done/j1-2", "failed/j2", "done/j3", "done/old", NULL, NULL};
    const int want_rc[] = {0, 0, 0, 0, -ENOENT, -EINVAL};
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(items[i].rc, want_rc[i]);
        if (want[i]) {
            char *p = xasprintf("%s/%s", f->root, want[i]);
            assert_string_equal(items[i].final_dir, p);
            free(p);
        } else {
            assert_null(items[i].final_dir);
        }
        free(items[i].final_dir);
    }
    char *p = path2_of(f, "failed", "j2", "error.json");
    char *text = read_text(p);
    assert_string_equal(text, "{\"id\":\"2\"}");
    free(text);
    free(p);
    assert_int_equal(count_in(f, "active"), 0);
}

/* ---- a finish batch's two phases, seen from fsync ---- */

enum { FIN_N = 70 }; /* more than spool.c opens at once, so two rounds of begin/commit */

static size_t fin_file_fsyncs;  /* regular files fsynced so far */
static size_t fin_dir_fsyncs;   /* directories fsynced so far */
static const char *fin_fail_at; /* the job whose file fsync fails with EIO; NULL: none */

/* Every file is fsynced before any directory (job directories after all the renames,
 * done/ and active/ after the moves), so the first fsync's commit can carry the others. */
static int fin_hook(int fd)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    if (S_ISDIR(st.st_mode)) {
        fin_dir_fsyncs++;
        assert_int_equal(fin_file_fsyncs, FIN_N);
        return 0;
    }
    assert_int_equal(fin_dir_fsyncs, 0);
    ++fin_file_fsyncs;
    return fin_fail_at && fsync_fd_path_has(fd, fin_fail_at) ? EIO : 0;
}

/* Each job's result.json and its directory are fsynced once, done/ and active/ once for the
 * batch; the job whose file cannot be made durable fails alone and stays in active/, with no
 * result.json and no temp file, and every other job moves. */
static void test_finish_batch_phases(void **state)
{
    fixture *f = *state;
    char names[FIN_N][16];
    spool_finish_item items[FIN_N];
    for (size_t i = 0; i < FIN_N; i++) {
        snprintf(names[i], sizeof names[i], "f%03zu", i);
        mkdir_in(f, "active", names[i]);
        items[i] = (spool_finish_item){
            .job_name = names[i], .ok = true, .file_name = "result.json", .body = "{}"};
    }
    fin_file_fsyncs = fin_dir_fsyncs = 0;
    /* The last file: a failed temp file's inode is freed and may come back as a later file's,
     * which fsync_count_of would count twice. */
    fin_fail_at = names[FIN_N - 1];
    fsync_count_hook = fin_hook;
    fsync_count_start();
    spool_finish_batch(f->s, items, FIN_N);
    fsync_count_stop();
    fsync_count_hook = NULL;
    assert_int_equal(fsyncs_of(f, "done"), 1);
    assert_int_equal(fsyncs_of(f, "active"), 1);
    /* The failed one's directory is not fsynced: its file never got its name. */
    assert_int_equal(fsync_count_all(), FIN_N + (FIN_N - 1) + 2);
    for (size_t i = 0; i < FIN_N; i++) {
        if (i == FIN_N - 1) {
            assert_int_equal(items[i].rc, -EIO);
            assert_null(items[i].final_dir);
            assert_true(S_ISDIR(lmode_in(f, "active", names[i])));
            char *sub = xasprintf("active/%s", names[i]);
            assert_int_equal(count_in(f, sub), 0);
            free(sub);
            continue;
        }
        assert_int_equal(items[i].rc, 0);
        char *file = xasprintf("done/%s/result.json", names[i]);
        char *dir = xasprintf("done/%s", names[i]);
        assert_int_equal(fsyncs_of(f, file), 1);
        assert_int_equal(fsyncs_of(f, dir), 1);
        free(dir);
        free(file);
        free(items[i].final_dir);
    }
    assert_int_equal(count_in(f, "active"), 1);
}

static void test_reactivate(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "failed", "r");
    put_in(f, "failed", "r/r.jsonl", "{}");
    put_in(f, "failed", "r/error.json", "{\"attempt\":1}");
    char *name = NULL;
    assert_int_equal(spool_reactivate(f->s, "r", &name), 0);
    assert_string_equal(name, "r");
    free(name);
    assert_true(S_ISREG(lmode2_in(f, "active", "r", "error.json.1")));
    assert_int_equal(lmode2_in(f, "active", "r", "error.json"), 0);
    assert_true(S_ISREG(lmode2_in(f, "active", "r", "r.jsonl")));

    /* Fails again, and meanwhile another job named r is active: r-2, error.json.2. */
    assert_int_equal(spool_finish(f->s, "r", false, "error.json", "{\"attempt\":2}", NULL), 0);
    mkdir_in(f, "active", "r");
    assert_int_equal(spool_reactivate(f->s, "r", &name), 0);
    assert_string_equal(name, "r-2");
    char *p = path2_of(f, "active", "r-2", "error.json.2");
    char *text = read_text(p);
    assert_string_equal(text, "{\"attempt\":2}");
    free(text);
    free(p);
    assert_true(S_ISREG(lmode2_in(f, "active", "r-2", "error.json.1")));
    free(name);
    assert_int_equal(spool_reactivate(f->s, "r", &name), -ENOENT);
    assert_null(name);
    assert_int_equal(spool_reactivate(f->s, ".hidden", &name), -EINVAL);
}

static void test_list_active(void **state)
{
    fixture *f = *state;
    mkdir_in(f, "active", "b");
    mkdir_in(f, "active", "a");
    mkdir_in(f, "active", ".claim-01XXXXXXXXXXXXXXXXXXXXXXXX");
    put_in(f, "active", "stray-file", "x");
    char **names;
    size_t n;
    assert_int_equal(spool_list_active(f->s, &names, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "a");
    assert_string_equal(names[1], "b");
    spool_names_free(names, n);
}

/* ---- watching ---- */

typedef struct watch_ctx {
    fixture *f;
    uv_loop_t *loop;
    uv_loop_t loop_storage;
    spool_watch *w;
    uv_timer_t deadline;
    int calls;
    int want_calls;
    bool renamed;
    bool timed_out;
    int64_t renamed_at; /* monotonic ms */
    int64_t latency_ms;
} watch_ctx;

static void on_deadline(uv_timer_t *t)
{
    watch_ctx *ctx = t->data;
    ctx->timed_out = true;
    uv_stop(ctx->loop);
}

static void on_changed_rename(void *ud)
{
    watch_ctx *ctx = ud;
    ctx->calls++;
    if (!ctx->renamed) {
        /* The start call came: now a producer renames a finished file into incoming/. */
        char *from = path_of(ctx->f, "tmp", "dropped.jsonl");
        char *to = path_of(ctx->f, "incoming", "dropped.jsonl");
        put_file(from, "{}\n");
        assert_int_equal(rename(from, to), 0);
        free(from);
        free(to);
        ctx->renamed = true;
        ctx->renamed_at = time_mono_ms();
        return;
    }
    ctx->latency_ms = time_mono_ms() - ctx->renamed_at;
    uv_stop(ctx->loop);
}

static void on_changed_count(void *ud)
{
    watch_ctx *ctx = ud;
    if (++ctx->calls >= ctx->want_calls)
        uv_stop(ctx->loop);
}

static void run_watch(watch_ctx *ctx, int64_t rescan_ms, void (*cb)(void *))
{
    uv_loop_t *loop = &ctx->loop_storage;
    assert_int_equal(uv_loop_init(loop), 0);
    ctx->loop = loop;
    uv_timer_init(loop, &ctx->deadline);
    ctx->deadline.data = ctx;
    uv_timer_start(&ctx->deadline, on_deadline, 10000, 0);
    ctx->w = spool_watch_start(ctx->f->s, loop, rescan_ms, cb, ctx);
    assert_non_null(ctx->w);
    uv_run(loop, UV_RUN_DEFAULT);
    spool_watch_stop(ctx->w);
    spool_watch_stop(NULL);
    uv_close((uv_handle_t *)&ctx->deadline, NULL);
    uv_run(loop, UV_RUN_DEFAULT); /* runs the close callbacks, which free the watch */
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_watch_fires_on_rename(void **state)
{
    watch_ctx ctx = {.f = *state};
    /* A rescan interval far beyond the deadline: only the event can make the second call. */
    run_watch(&ctx, 3600 * 1000, on_changed_rename);
    assert_false(ctx.timed_out);
    assert_true(ctx.renamed);
    /* The second call came before the deadline, with the rescan an hour away: the event
     * made it. How fast is not asserted (a busy machine under valgrind decides that). */
    assert_int_equal(ctx.calls, 2);
}

static void test_watch_rescans_periodically(void **state)
{
    watch_ctx ctx = {.f = *state, .want_calls = 4};
    run_watch(&ctx, 20, on_changed_count); /* start call + 3 rescans, nothing in the spool */
    assert_false(ctx.timed_out);
    assert_int_equal(ctx.calls, 4);
}

static void on_changed_reinterval(void *ud)
{
    watch_ctx *ctx = ud;
    ctx->calls++;
    if (ctx->calls == 1)
        spool_watch_set_interval(ctx->w, 10); /* from an hour down to 10 ms */
    else if (ctx->calls >= 3)
        uv_stop(ctx->loop);
}

static void test_watch_set_interval(void **state)
{
    watch_ctx ctx = {.f = *state};
    run_watch(&ctx, 3600 * 1000, on_changed_reinterval);
    assert_false(ctx.timed_out);
    assert_int_equal(ctx.calls, 3);
}

int main(void)
{
    /* A test that blocks (e.g. on a FIFO) must fail, not hang the suite. */
    alarm(240);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_creates_dirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_missing_and_symlinked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_directory_keeps_producer_results, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_data_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_other_regular_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_symlink_to_passwd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_fifo_without_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotfiles_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_named_error_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_oldest_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suffixes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suffix_on_longest_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_suffix_on_name_not_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unicode_and_spaces_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extension_any_case, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newline_name_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_utf8_name_rejected, setup, teardown),
        cmocka_unit_test(test_name_escape),
        cmocka_unit_test_setup_teardown(test_scan_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ten_thousand_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recover_interrupted_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_to_done_and_failed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_batch_hundred, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_batch_unopened, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_batch_phases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reactivate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_active, setup, teardown),
        cmocka_unit_test(test_stuck_set),
        cmocka_unit_test_setup_teardown(test_scan_skips_stuck, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_fires_on_rename, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_rescans_periodically, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_set_interval, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
