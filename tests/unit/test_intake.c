/* test-deps: manifest records rules fsutil config */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchd/config.h"
#include "batchd/fsutil.h"
#include "batchd/intake.h"
#include "batchd/util.h"

#include <dirent.h>
#include <openssl/evp.h>

static char root[64];
static config cfg;

static const char *tmpl =
    "{\"dataset\": {\"schema\": {\"strict\": true, \"fields\": {"
    "  \"prompt\": {\"type\": \"text\"}, \"img\": {\"type\": \"image_url\"}}}},"
    " \"batch\": {\"task_details\": {\"task_name\": \"Rate\", \"task_introduction\": "
    "\"<p>Intro</p>\", \"task_steps\": \"<ol><li>Read</li></ol>\"},"
    "  \"batch_items\": [{\"rows\": [{\"columns\": [{\"items\": ["
    "    {\"type\": \"dataset_field\", \"field\": \"prompt\"}]}]}]}]}}";

static const char *ok1 = "{\"prompt\": \"p1\", \"img\": \"https://x.example/1.png\"}\n";
static const char *ok2 = "{\"prompt\": \"p2\", \"img\": \"http://x.example/2.png\"}\n";

static char *path_in(const char *rel)
{
    return xasprintf("%s/%s", root, rel);
}

static void put_bytes(const char *rel, const void *data, size_t len)
{
    char *p = path_in(rel);
    char *slash = strrchr(p, '/');
    *slash = '\0';
    assert_int_equal(fsutil_mkdir_p(p, 0755), 0);
    *slash = '/';
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    free(p);
}

static void put(const char *rel, const char *text)
{
    put_bytes(rel, text, strlen(text));
}

static char *slurp(const char *rel)
{
    char *p = path_in(rel), *out = NULL;
    int r = fsutil_read_file(p, 64 << 20, true, &out, NULL);
    free(p);
    return r == 0 ? out : NULL;
}

static bool exists(const char *rel)
{
    char *p = path_in(rel);
    bool e = access(p, F_OK) == 0;
    free(p);
    return e;
}

static int setup(void **state)
{
    (void)state;
    strcpy(root, "/tmp/test_intake.XXXXXX");
    assert_non_null(mkdtemp(root));
    config_defaults(&cfg);
    free(cfg.job.template_path);
    cfg.job.template_path = path_in("templates/default.json");
    cfg.api.workspace_id = xstrdup("ws1");
    put("templates/default.json", tmpl);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    config_free(&cfg);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "chmod -R u+rwX %s; rm -rf %s", root, root);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static int check(const char *rel, intake_result *r)
{
    char *p = path_in(rel);
    int rc = intake_check(p, "job", &cfg, NULL, r);
    free(p);
    return rc;
}

/* Some error must carry line (0: any) and a message containing needle. */
static void expect_error(const intake_result *r, uint64_t line, const char *field,
                         const char *needle)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, r->errors)
    {
        const char *m = json_str(e, "message");
        const char *f = json_str(e, "field");
        if ((line == 0 || json_int64(e, "line", 0) == (int64_t)line) &&
            (!field || (f && !strcmp(f, field))) && m && strstr(m, needle))
            return;
    }
    char *s = json_print_pretty(r->errors);
    print_error("no error at line %llu with \"%s\" in:\n%s\n(message: %s)\n",
                (unsigned long long)line, needle, s, r->message ? r->message : "-");
    free(s);
    fail();
}

static void test_valid_job(void **state)
{
    (void)state;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "\n");
    strbuf_puts(&sb, ok2);
    put("j/data.jsonl", sb.data);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_null(r.code);
    assert_int_equal(r.records, 2);
    assert_int_equal(r.rejected, 0);
    assert_int_equal(r.bytes, sb.len);
    assert_string_equal(r.upload_name, "data.jsonl");
    assert_string_equal(r.upload_path, r.data_path);
    assert_non_null(strstr(r.data_path, "/j/data.jsonl"));
    assert_non_null(r.job);
    assert_int_equal(cJSON_GetArraySize(r.errors), 0);
    intake_result_free(&r);
    intake_result_free(&r);
    intake_result_free(NULL);
    strbuf_free(&sb);
}

static void sha256_hex_of(const char *path, char out[65])
{
    size_t len = 0;
    char *data = NULL;
    assert_int_equal(fsutil_read_file(path, 1 << 20, true, &data, &len), 0);
    unsigned char d[32];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(data, len, d, &n, EVP_sha256(), NULL), 1);
    for (unsigned int i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    free(data);
}

/* The digest is of exactly what will be uploaded: the data file as read, or the cleaned
 * file as written in skip mode. */
static void test_sha256_of_upload(void **state)
{
    (void)state;
    put("j/data.jsonl", ok1);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_null(r.code);
    char want[65];
    sha256_hex_of(r.upload_path, want);
    assert_string_equal(r.sha256, want);
    intake_result_free(&r);

    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "{\"prompt\": 7}\n");
    strbuf_puts(&sb, ok2);
    put("k/data.jsonl", sb.data);
    assert_int_equal(check("k", &r), 0);
    assert_null(r.code);
    assert_int_equal(r.rejected, 1);
    assert_non_null(strstr(r.upload_path, "data.cleaned.jsonl"));
    sha256_hex_of(r.upload_path, want);
    assert_string_equal(r.sha256, want);
    assert_int_equal(r.bytes, strlen(ok1) + strlen(ok2));
    intake_result_free(&r);

    /* not valid: no digest */
    put("x/data.jsonl", "{\"prompt\": 7}\n");
    assert_int_equal(check("x", &r), 0);
    assert_non_null(r.code);
    assert_string_equal(r.sha256, "");
    intake_result_free(&r);
    strbuf_free(&sb);
}

/* Data files named up to NAME_MAX, in any bytes: skip mode's cleaned file and its temporary
 * name are cut to fit, keep the extension, and two long names sharing a prefix still get
 * different cleaned names. */
static void test_skip_mode_long_names(void **state)
{
    (void)state;
    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    strbuf data = {0};
    strbuf_puts(&data, ok1);
    strbuf_puts(&data, "{\"prompt\": 7}\n");
    char *cleaned[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        /* 255 bytes: a stem with control characters and bytes that are not UTF-8 */
        char name[256];
        memset(name, 'n', 249);
        name[0] = '\x01';
        name[1] = (char)0xff;
        name[2] = (char)0xc3; /* a UTF-8 lead byte whose sequence is cut */
        name[248] = k ? 'b' : 'a';
        memcpy(name + 249, ".jsonl", 7);
        assert_int_equal(strlen(name), 255);
        char *rel = xasprintf("long%d/%s", k, name);
        put(rel, data.data);
        char *p = path_in(rel);
        intake_result r;
        assert_int_equal(intake_check(p, "long", &cfg, NULL, &r), 0);
        assert_null(r.code);
        assert_int_equal(r.rejected, 1);
        const char *base = fsutil_basename(r.upload_path);
        assert_true(strlen(base) <= NAME_MAX);
        assert_true(strcmp(base, name) != 0);
        assert_int_equal(strcmp(base + strlen(base) - 14, ".cleaned.jsonl"), 0);
        char want[65];
        sha256_hex_of(r.upload_path, want);
        assert_string_equal(r.sha256, want);
        cleaned[k] = xstrdup(base);
        /* no temporary file left behind */
        char *dir = path_in(k ? "long1" : "long0");
        DIR *dp = opendir(dir);
        assert_non_null(dp);
        const struct dirent *de;
        while ((de = readdir(dp)) != NULL)
            assert_false(strstr(de->d_name, ".tmp") != NULL);
        closedir(dp);
        free(dir);
        intake_result_free(&r);
        free(p);
        free(rel);
    }
    assert_string_not_equal(cleaned[0], cleaned[1]);
    free(cleaned[0]);
    free(cleaned[1]);
    strbuf_free(&data);
}

static void test_invalid_records_fail_mode(void **state)
{
    (void)state;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "{\"img\": \"https://x.example/1.png\"}\n");       /* 2: missing prompt */
    strbuf_puts(&sb, "{\"prompt\": \"p\", \"img\": \"ftp://nope\"}\n"); /* 3: bad url */
    strbuf_puts(&sb, "[1, 2]\n");                                       /* 4: array */
    strbuf_puts(&sb, "42\n");                                           /* 5: number */
    strbuf_puts(&sb, "{\"prompt\": 7, \"img\": \"https://a.b/c\", \"extra\": \"x\"}\n"); /* 6 */
    put("j/data.jsonl", sb.data);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    assert_string_equal(r.message, "5 records do not match the schema");
    expect_error(&r, 2, "prompt", "");
    expect_error(&r, 3, "img", "");
    expect_error(&r, 4, NULL, "");
    expect_error(&r, 5, NULL, "");
    expect_error(&r, 6, "prompt", "");
    expect_error(&r, 6, "extra", "");
    assert_non_null(r.job); /* the manifest itself was fine */
    assert_false(exists("j/rejected.jsonl"));
    intake_result_free(&r);
    strbuf_free(&sb);
}

static void test_skip_mode_writes_cleaned_and_rejected(void **state)
{
    (void)state;
    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "{\"prompt\": \"bad \xff\", \"img\": \"https://a.b/c\"}\n");
    strbuf_puts(&sb, ok2);
    put("j/data.jsonl", sb.data);
    char *p = path_in("j/data.jsonl");
    struct stat before;
    assert_int_equal(stat(p, &before), 0);

    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_null(r.code);
    assert_int_equal(r.records, 2);
    assert_int_equal(r.rejected, 1);
    assert_non_null(strstr(r.upload_path, "/j/data.cleaned.jsonl"));
    assert_string_equal(r.upload_name, "data.jsonl");
    expect_error(&r, 2, NULL, "");

    char *cleaned = slurp("j/data.cleaned.jsonl");
    strbuf want = {0};
    strbuf_puts(&want, ok1);
    strbuf_puts(&want, ok2);
    assert_string_equal(cleaned, want.data);
    assert_int_equal(r.bytes, want.len);

    char *rej = slurp("j/rejected.jsonl");
    cJSON *line = cJSON_Parse(rej);
    assert_non_null(line);
    assert_int_equal(json_int64(line, "line", 0), 2);
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(line, "errors")) >= 1);
    assert_non_null(strstr(json_str(line, "record"), "bad \xEF\xBF\xBD")); /* sanitized */

    /* the job's own file is untouched */
    char *orig = slurp("j/data.jsonl");
    assert_string_equal(orig, sb.data);
    struct stat after;
    assert_int_equal(stat(p, &after), 0);
    assert_int_equal(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
    assert_int_equal(before.st_ino, after.st_ino);

    /* and a second run (a restart) finds the data file, not our cleaned one */
    intake_result r2;
    assert_int_equal(check("j", &r2), 0);
    assert_null(r2.code);
    assert_string_equal(r2.upload_name, "data.jsonl");
    intake_result_free(&r2);

    cJSON_Delete(line);
    free(rej);
    free(cleaned);
    free(orig);
    free(p);
    strbuf_free(&want);
    strbuf_free(&sb);
    intake_result_free(&r);
}

static void test_skip_mode_csv_keeps_header(void **state)
{
    (void)state;
    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    put("j/d.csv",
        "prompt,img\r\n\"multi\nline\",https://a.b/1\r\nbad,notaurl\r\nok,https://a.b/2\r\n");
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_null(r.code);
    assert_int_equal(r.records, 2);
    assert_int_equal(r.rejected, 1);
    expect_error(&r, 4, "img", ""); /* the embedded newline moved it to line 4 */
    char *cleaned = slurp("j/d.cleaned.csv");
    assert_string_equal(cleaned, "prompt,img\n\"multi\nline\",https://a.b/1\nok,https://a.b/2\n");
    free(cleaned);
    intake_result_free(&r);
}

/* Skip mode reads the file twice (count, then write the cleaned file): a producer that
 * rewrites it in between must not get records uploaded that the counts do not describe. */
static void rewrite_all_invalid(void *ud)
{
    put(ud, "{\"prompt\": 7}\n{\"prompt\": 8}\n{\"prompt\": 9}\n");
}

static void test_skip_mode_file_changed_between_passes(void **state)
{
    (void)state;
    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "{\"prompt\": 7}\n");
    strbuf_puts(&sb, ok2);
    put("j/d.jsonl", sb.data);
    char *p = path_in("j");
    static char data_rel[] = "j/d.jsonl";
    intake_options o = {.between_passes = rewrite_all_invalid, .between_passes_ud = data_rel};
    intake_result r;
    assert_int_equal(intake_check_ex(p, "job", &cfg, NULL, &o, &r), -ESTALE);
    assert_string_equal(r.code, "invalid_job");
    assert_non_null(strstr(r.message, "changed while it was being validated"));
    assert_false(exists("j/d.cleaned.jsonl"));
    intake_result_free(&r);
    free(p);
    strbuf_free(&sb);
}

static void test_skip_mode_all_invalid_fails(void **state)
{
    (void)state;
    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    put("j/d.jsonl", "{\"x\": 1}\n{\"y\": 2}\n");
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    assert_string_equal(r.message, "none of the 2 records match the schema");
    assert_false(exists("j/rejected.jsonl"));
    assert_false(exists("j/d.cleaned.jsonl"));
    intake_result_free(&r);
}

static void test_dry_run_writes_nothing(void **state)
{
    (void)state;
    cfg.job.invalid_records = CONFIG_INVALID_SKIP;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "{}\n");
    put("j/d.jsonl", sb.data);
    char *p = path_in("j");
    intake_options o = {.dry_run = true, .chunk = 7};
    intake_result r;
    assert_int_equal(intake_check_ex(p, "job", &cfg, NULL, &o, &r), 0);
    assert_null(r.code);
    assert_int_equal(r.rejected, 1);
    assert_false(exists("j/rejected.jsonl"));
    assert_false(exists("j/d.cleaned.jsonl"));
    assert_string_equal(r.upload_path, r.data_path);
    intake_result_free(&r);
    free(p);
    strbuf_free(&sb);
}

/* The one error of a problem with the whole data file: the file and dataset.file. */
static void expect_file_error(const intake_result *r, const char *file, const char *needle)
{
    assert_int_equal(cJSON_GetArraySize(r->errors), 1);
    const cJSON *e = cJSON_GetArrayItem(r->errors, 0);
    assert_string_equal(json_str(e, "path"), "dataset.file");
    assert_string_equal(json_str(e, "file"), file);
    assert_non_null(strstr(json_str(e, "message"), needle));
}

static void test_empty_and_blank_files(void **state)
{
    (void)state;
    put("j/d.jsonl", "");
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    assert_non_null(strstr(r.message, "d.jsonl is empty"));
    expect_file_error(&r, "d.jsonl", "empty");
    intake_result_free(&r);
    put("j/d.jsonl", "\n\n  \n");
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    /* No line to name: the file is named instead (never "d.jsonl:0"). */
    assert_null(strstr(r.message, ":0"));
    assert_non_null(strstr(r.message, "d.jsonl: "));
    expect_file_error(&r, "d.jsonl", "no records");
    intake_result_free(&r);
}

static void test_ten_megabyte_line(void **state)
{
    (void)state;
    size_t n = 10 * 1024 * 1024;
    char *big = xmalloc(n + 64);
    memcpy(big, "{\"prompt\": \"", 12);
    memset(big + 12, 'a', n);
    memcpy(big + 12 + n, "\"}\n", 4);
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, big);
    strbuf_puts(&sb, ok2);
    put("j/d.jsonl", sb.data);
    free(big);
    strbuf_free(&sb);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    expect_error(&r, 2, NULL, "");
    assert_int_equal(cJSON_GetArraySize(r.errors), 1);
    intake_result_free(&r);
}

static void test_invalid_utf8_and_binary(void **state)
{
    (void)state;
    strbuf sb = {0};
    strbuf_puts(&sb, ok1);
    strbuf_puts(&sb, "{\"prompt\": \"\xc3\x28\", \"img\": \"https://a.b/c\"}\n");
    put("j/d.jsonl", sb.data);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    expect_error(&r, 2, NULL, "UTF-8");
    intake_result_free(&r);
    strbuf_free(&sb);

    unsigned char bin[4096];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 37 + 11);
    put_bytes("j/d.jsonl", bin, sizeof bin);
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    assert_true(cJSON_GetArraySize(r.errors) >= 1);
    intake_result_free(&r);
}

static void test_csv_cases(void **state)
{
    (void)state;
    intake_result r;
    put("j/d.csv", "prompt,img\nfine,https://a.b/1\nshort\nlong,https://a.b/2,extra\n");
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    assert_string_equal(r.message, "2 records do not match the schema");
    expect_error(&r, 3, NULL, "");
    expect_error(&r, 4, NULL, "");
    intake_result_free(&r);

    put("j/d.csv", "\xEF\xBB\xBFprompt,img\n\"a \"\"quoted\"\"\nvalue\",https://a.b/1\n");
    assert_int_equal(check("j", &r), 0);
    assert_null(r.code); /* a BOM before a CSV header is tolerated */
    assert_int_equal(r.records, 1);
    intake_result_free(&r);

    put("j/d.csv", "prompt,colour\nx,y\n");
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_records");
    expect_error(&r, 1, NULL, "");
    intake_result_free(&r);
}

static void test_mode_000_refused(void **state)
{
    (void)state;
    put("j/d.jsonl", ok1);
    char *p = path_in("j/d.jsonl");
    assert_int_equal(chmod(p, 0), 0);
    intake_result r;
    assert_int_equal(check("j", &r), -EACCES);
    assert_string_equal(r.code, "invalid_job");
    assert_non_null(strstr(r.message, "read permission"));
    expect_file_error(&r, "d.jsonl", "read permission");
    intake_result_free(&r);
    free(p);
}

static void test_fifo_and_symlink_refused(void **state)
{
    (void)state;
    char *p = path_in("j");
    assert_int_equal(fsutil_mkdir_p(p, 0755), 0);
    char *fifo = path_in("j/d.jsonl");
    assert_int_equal(mkfifo(fifo, 0644), 0);
    put("j/job.json", "{\"dataset\": {\"file\": \"d.jsonl\"}}");
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_job");
    intake_result_free(&r);
    /* a bare path that is a symlink */
    put("real.jsonl", ok1);
    char *target = path_in("real.jsonl"), *link = path_in("link.jsonl");
    assert_int_equal(symlink(target, link), 0);
    assert_int_equal(check("link.jsonl", &r), 0);
    assert_string_equal(r.code, "invalid_job");
    assert_non_null(strstr(r.message, "symbolic link"));
    intake_result_free(&r);
    /* the real one, as a bare file */
    assert_int_equal(check("real.jsonl", &r), 0);
    assert_null(r.code);
    assert_int_equal(r.records, 1);
    intake_result_free(&r);
    free(p);
    free(fifo);
    free(target);
    free(link);
}

static void test_missing_path_and_bad_manifest(void **state)
{
    (void)state;
    intake_result r;
    assert_int_equal(check("nope", &r), -ENOENT);
    assert_string_equal(r.code, "invalid_job");
    intake_result_free(&r);
    put("j/d.jsonl", ok1);
    put("j/job.json", "{\"batch\": {\"tasks_per_group\": -1}}");
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_job");
    assert_null(r.job);
    assert_non_null(strstr(r.message, "batch.tasks_per_group"));
    assert_string_equal(json_str(cJSON_GetArrayItem(r.errors, 0), "path"), "batch.tasks_per_group");
    intake_result_free(&r);
}

static void test_error_cap(void **state)
{
    (void)state;
    strbuf sb = {0};
    for (int i = 0; i < 1500; i++)
        strbuf_puts(&sb, "{\"prompt\": \"x\"}\n");
    put("j/d.jsonl", sb.data);
    strbuf_free(&sb);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.message, "1500 records do not match the schema");
    assert_int_equal(cJSON_GetArraySize(r.errors), INTAKE_MAX_ERRORS + 1);
    const cJSON *last = cJSON_GetArrayItem(r.errors, INTAKE_MAX_ERRORS);
    assert_string_equal(json_str(last, "message"), "... and 500 more");
    intake_result_free(&r);
}

static void test_cancel(void **state)
{
    (void)state;
    put("j/d.jsonl", ok1);
    char *p = path_in("j");
    atomic_int cancel = 1;
    intake_result r;
    assert_int_equal(intake_check(p, "job", &cfg, &cancel, &r), -ECANCELED);
    assert_string_equal(r.code, "cancelled");
    intake_result_free(&r);
    free(p);
}

static void test_error_json_shape(void **state)
{
    (void)state;
    put("j/d.jsonl", "{\"img\": \"https://a.b/c\"}\n");
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    error_doc doc = {.job = "job",
                     .id = "01JABC",
                     .stage = "validating",
                     .code = r.code,
                     .message = r.message,
                     .errors = r.errors,
                     .at_ms = 1795941166000LL};
    cJSON *e = error_json_new(&doc);
    const char *order[] = {"job",       "id",         "state",    "stage",
                           "code",      "message",    "errors",   "http_status",
                           "api_error", "dataset_id", "batch_id", "at"};
    const cJSON *c = e->child;
    for (size_t i = 0; i < BD_ARRAY_LEN(order); i++, c = c->next) {
        assert_non_null(c);
        assert_string_equal(c->string, order[i]);
    }
    assert_null(c);
    assert_string_equal(json_str(e, "state"), "failed");
    assert_string_equal(json_str(e, "code"), "invalid_records");
    assert_string_equal(json_str(e, "message"), "1 record does not match the schema");
    assert_string_equal(json_str(e, "at"), "2026-11-29T08:32:46Z");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(e, "http_status")));
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(e, "errors"), 0);
    assert_int_equal(json_int64(first, "line", 0), 1);
    assert_string_equal(json_str(first, "field"), "prompt");
    cJSON_Delete(e);
    intake_result_free(&r);
}

static void test_check_config(void **state)
{
    (void)state;
    put("token", "secret-token\n");
    char *tok = path_in("token"), *conf = path_in("b.conf");
    chmod(tok, 0600);
    char *text = xasprintf("[api]\ntoken_file = %s\nworkspace_id = ws1\n[spool]\ndir = %s\n"
                           "[state]\ndir = %s\n[control]\ngroup =\n[job]\ntemplate = %s\n",
                           tok, root, root, cfg.job.template_path);
    put("b.conf", text);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    assert_int_equal(intake_check_config(conf, out), 0);
    fclose(out);
    assert_non_null(strstr(buf, "configuration OK"));
    assert_null(strstr(buf, "secret-token"));
    free(buf);

    /* Without [api] workspace_id, the template must name one: every bare file needs it. */
    char *nows = xasprintf("[api]\ntoken_file = %s\n[spool]\ndir = %s\n[state]\ndir = %s\n"
                           "[control]\ngroup =\n[job]\ntemplate = %s\n",
                           tok, root, root, cfg.job.template_path);
    char *conf2 = path_in("nows.conf");
    put("nows.conf", nows);
    out = open_memstream(&buf, &len);
    assert_int_equal(intake_check_config(conf2, out), 78);
    fclose(out);
    assert_non_null(strstr(buf, "[api] workspace_id is not set"));
    assert_non_null(strstr(buf, "add workspace_id = ID under [api]"));
    assert_null(strstr(buf, "configuration OK"));
    free(buf);
    put("templates/ws.json", "{\"template\": \"default\", \"workspace_id\": \"ws9\"}");
    free(nows);
    nows = xasprintf("[api]\ntoken_file = %s\n[spool]\ndir = %s\n[state]\ndir = %s\n"
                     "[control]\ngroup =\n[job]\ntemplate = %s/templates/ws.json\n",
                     tok, root, root, root);
    put("nows.conf", nows);
    out = open_memstream(&buf, &len);
    assert_int_equal(intake_check_config(conf2, out), 0);
    fclose(out);
    assert_non_null(strstr(buf, "configuration OK"));
    free(buf);
    free(nows);
    free(conf2);

    put("templates/default.json", "{\"batch\": {\"nope\": 1}}");
    out = open_memstream(&buf, &len);
    assert_int_equal(intake_check_config(conf, out), 78);
    fclose(out);
    assert_non_null(strstr(buf, "batch.nope: unknown member"));
    free(buf);

    put("b.conf", "[api]\nwat = 1\n");
    out = open_memstream(&buf, &len);
    assert_int_equal(intake_check_config(conf, out), 78);
    fclose(out);
    assert_non_null(strstr(buf, "b.conf:2: unknown key 'wat'"));
    free(buf);
    free(text);
    free(tok);
    free(conf);
}

/* append_to NAME: without the target's schema intake stops after the manifest
 * (needs_target, no record read); with it the records are checked against that schema,
 * which becomes the job's dataset.schema. */
static void test_append_by_name_needs_target_schema(void **state)
{
    (void)state;
    put("j/job.json", "{\"append_to\": \"evals\"}");
    put("j/data.jsonl", "{\"question\": \"q1\"}\n");
    intake_result r;
    char *p = path_in("j");
    assert_int_equal(intake_check(p, "job", &cfg, NULL, &r), 0);
    assert_string_equal(r.code, "needs_target");
    assert_non_null(strstr(r.message, "evals"));
    assert_int_equal(r.records, 0);
    assert_string_equal(r.sha256, "");
    assert_non_null(r.job);
    intake_result_free(&r);
    /* The template's schema (prompt, img) is not what counts: the target's is. */
    cJSON *schema =
        cJSON_Parse("{\"strict\": false, \"fields\": {\"question\": {\"type\": \"text\"}}}");
    intake_options o = {.target_schema = schema};
    assert_int_equal(intake_check_ex(p, "job", &cfg, NULL, &o, &r), 0);
    assert_null(r.code);
    assert_int_equal(r.records, 1);
    assert_non_null(cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(r.job, "dataset"), "schema"),
                            "fields"),
        "question"));
    intake_result_free(&r);
    /* A record the target's schema does not allow: invalid_records. */
    cJSON_Delete(schema);
    schema = cJSON_Parse("{\"strict\": true, \"fields\": {\"prompt\": {\"type\": \"text\"}}}");
    o.target_schema = schema;
    assert_int_equal(intake_check_ex(p, "job", &cfg, NULL, &o, &r), 0);
    assert_string_equal(r.code, "invalid_records");
    intake_result_free(&r);
    cJSON_Delete(schema);
    free(p);
}

/* append_to with ids: the job's own (here the template's) schema applies; a bad form is
 * invalid_job with the path. */
static void test_append_by_ids_and_bad_form(void **state)
{
    (void)state;
    put("j/job.json", "{\"append_to\": {\"batch_id\": \"b1\", \"dataset_id\": \"d1\"}}");
    put("j/data.jsonl", ok1);
    intake_result r;
    assert_int_equal(check("j", &r), 0);
    assert_null(r.code);
    assert_int_equal(r.records, 1);
    assert_string_equal(json_str(cJSON_GetObjectItem(r.job, "append_to"), "batch_id"), "b1");
    intake_result_free(&r);
    put("j/job.json", "{\"append_to\": {\"batch_id\": \"b1\"}}");
    assert_int_equal(check("j", &r), 0);
    assert_string_equal(r.code, "invalid_job");
    assert_non_null(strstr(r.message, "append_to.dataset_id"));
    intake_result_free(&r);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_valid_job),
        T(test_invalid_records_fail_mode),
        T(test_sha256_of_upload),
        T(test_skip_mode_long_names),
        T(test_skip_mode_writes_cleaned_and_rejected),
        T(test_skip_mode_csv_keeps_header),
        T(test_skip_mode_all_invalid_fails),
        T(test_skip_mode_file_changed_between_passes),
        T(test_dry_run_writes_nothing),
        T(test_empty_and_blank_files),
        T(test_ten_megabyte_line),
        T(test_invalid_utf8_and_binary),
        T(test_csv_cases),
        T(test_mode_000_refused),
        T(test_fifo_and_symlink_refused),
        T(test_missing_path_and_bad_manifest),
        T(test_error_cap),
        T(test_cancel),
        T(test_error_json_shape),
        T(test_check_config),
        T(test_append_by_name_needs_target_schema),
        T(test_append_by_ids_and_bad_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
