/* test-deps: fsutil rules config */
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
#include "batchd/manifest.h"
#include "batchd/util.h"

static char root[64];
static config cfg;

/* A valid template: two text fields, one metadata field, a task group field. */
static const char *base_template =
    "{\"dataset\": {\"schema\": {\"strict\": true, \"fields\": {"
    "  \"prompt\": {\"type\": \"text\"}, \"response\": {\"type\": \"text\"},"
    "  \"source\": {\"type\": \"metadata\"}}}},"
    " \"batch\": {\"task_details\": {\"task_name\": \"Rate\", \"task_introduction\": "
    "\"<p>Intro</p>\", \"task_steps\": \"<ol><li>Read</li></ol>\"},"
    "  \"batch_items\": [{\"rows\": [{\"columns\": [{\"items\": ["
    "    {\"type\": \"dataset_field\", \"field\": \"prompt\"},"
    "    {\"type\": \"multiple_choice\", \"description\": \"Good?\", \"answer_limit\": 1,"
    "     \"options\": [{\"label\": \"Yes\", \"value\": \"yes\"}, {\"label\": \"No\", \"value\": "
    "\"no\"}]}]}]}]}]}}";

static char *path_in(const char *rel)
{
    return xasprintf("%s/%s", root, rel);
}

static void put(const char *rel, const char *text)
{
    char *p = path_in(rel);
    char *slash = strrchr(p, '/');
    *slash = '\0';
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p);
    assert_int_equal(system(cmd), 0);
    *slash = '/';
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

static int setup(void **state)
{
    (void)state;
    strcpy(root, "/tmp/test_manifest.XXXXXX");
    assert_non_null(mkdtemp(root));
    config_defaults(&cfg);
    free(cfg.job.template_path);
    cfg.job.template_path = path_in("templates/default.json");
    cfg.api.workspace_id = xstrdup("6278acb09062db3b35bcbeb0");
    put("templates/default.json", base_template);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    config_free(&cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static int resolve(const char *job, cJSON **out, cJSON *errors)
{
    char *dir = path_in(job);
    diag d = {0};
    int r = manifest_resolve(dir, "myjob", &cfg, out, &d);
    if (errors)
        diag_to_json(&d, errors);
    diag_free(&d);
    free(dir);
    return r;
}

/* The error at index i must have path (or file, when path is NULL) and a message that
 * contains needle. Prints all errors on mismatch. */
static void expect_error(const cJSON *errors, const char *path, const char *needle)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, errors)
    {
        const char *p = json_str(e, "path");
        const char *m = json_str(e, "message");
        if ((!path || (p && !strcmp(p, path))) && m && strstr(m, needle))
            return;
    }
    char *s = json_print_pretty(errors);
    print_error("no error at %s with \"%s\" in:\n%s", path ? path : "(any)", needle, s);
    free(s);
    fail();
}

static void test_bare_data_uses_configured_template_and_defaults(void **state)
{
    (void)state;
    put("j/data.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), 0);
    assert_int_equal(cJSON_GetArraySize(errors), 0);
    assert_string_equal(json_str(job, "workspace_id"), "6278acb09062db3b35bcbeb0");
    const cJSON *ds = cJSON_GetObjectItem(job, "dataset"), *b = cJSON_GetObjectItem(job, "batch");
    assert_string_equal(json_str(ds, "name"), "myjob");
    assert_string_equal(json_str(ds, "file"), "data.jsonl");
    assert_string_equal(json_str(b, "name"), "myjob");
    assert_int_equal(json_int64(b, "tasks_per_group", 0), 1);
    assert_null(cJSON_GetObjectItem(job, "template"));
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

static void test_merge_field_by_field(void **state)
{
    (void)state;
    put("templates/child.json", "{\"template\": \"default\", \"batch\": {\"name\": \"from child\","
                                " \"tasks_per_group\": 4}}");
    put("j/job.json", "{\"template\": \"child\", \"workspace_id\": \"abc\","
                      " \"dataset\": {\"name\": \"ds\"}, \"batch\": {\"tasks_per_group\": 3}}");
    put("j/x.csv", "prompt,response,source\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), 0);
    assert_string_equal(json_str(job, "workspace_id"), "abc");
    const cJSON *ds = cJSON_GetObjectItem(job, "dataset"), *b = cJSON_GetObjectItem(job, "batch");
    /* one level down: job's dataset.name replaces, template's dataset.schema stays */
    assert_string_equal(json_str(ds, "name"), "ds");
    assert_non_null(cJSON_GetObjectItem(ds, "schema"));
    assert_string_equal(json_str(b, "name"), "from child");
    assert_int_equal(json_int64(b, "tasks_per_group", 0), 3);
    assert_non_null(cJSON_GetObjectItem(b, "task_details"));
    assert_string_equal(json_str(ds, "file"), "x.csv");
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

static void test_malformed_job_json_has_line_and_column(void **state)
{
    (void)state;
    put("j/job.json", "{\n  \"dataset\": {\n    \"name\": \"x\",\n  }\n}\n");
    put("j/d.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    assert_null(job);
    const cJSON *e = cJSON_GetArrayItem(errors, 0);
    assert_string_equal(json_str(e, "file"), "job.json");
    assert_int_equal(json_int64(e, "line", 0), 4);
    assert_true(json_int64(e, "column", 0) >= 1);
    assert_non_null(strstr(json_str(e, "message"), "malformed JSON"));
    cJSON_Delete(errors);
}

static void test_job_json_not_object_or_bad_utf8(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "[1, 2]");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, NULL, "must be a JSON object");
    cJSON_Delete(errors);
    put("j/job.json", "{\n\"batch\": {\"name\": \"caf\xe9\"}}\n");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    assert_int_equal(json_int64(cJSON_GetArrayItem(errors, 0), "line", 0), 2);
    expect_error(errors, NULL, "not valid UTF-8");
    cJSON_Delete(errors);
}

static void test_unknown_keys_reported_with_path(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"colour\": 1, \"dataset\": {\"fields\": {}},"
                      " \"batch\": {\"name\": \"n\", \"nme\": 2}}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "colour", "unknown member");
    expect_error(errors, "dataset.fields", "unknown member");
    expect_error(errors, "batch.nme", "unknown member");
    assert_int_equal(cJSON_GetArraySize(errors), 3);
    cJSON_Delete(errors);
}

static void test_unknown_template(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"template\": \"nosuch\"}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "template", "unknown template \"nosuch\"");
    expect_error(errors, "template", "templates/nosuch.json does not exist");
    cJSON_Delete(errors);
}

static void test_template_cycle_and_depth(void **state)
{
    (void)state;
    put("templates/a.json", "{\"template\": \"b\"}");
    put("templates/b.json", "{\"template\": \"a.json\"}");
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"template\": \"a\"}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "template", "template cycle");
    cJSON_Delete(errors);

    /* t0 -> t1 -> ... -> t9: deeper than 8 */
    for (int i = 0; i < 10; i++) {
        char name[32], text[64];
        snprintf(name, sizeof name, "templates/t%d.json", i);
        snprintf(text, sizeof text, "{\"template\": \"t%d\"}", i + 1);
        put(name, text);
    }
    put("j/job.json", "{\"template\": \"t0\"}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "template", "deeper than 8");
    cJSON_Delete(errors);
}

/* A template named by job.json (or by a template) is a name in the templates directory:
 * never a path, never a way to read another file (batchd(8), JOB FILES AND TEMPLATES). */
static void test_template_only_by_name(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/own/t.json", base_template);
    put("secret.json", base_template);
    char *abs_secret = path_in("secret.json");
    char *abs_ref = xasprintf("{\"template\": \"%s\"}", abs_secret);
    static const struct {
        const char *job_json;
        const char *says;
    } refused[] = {
        {"{\"template\": \"./own/t.json\"}", "is a path"},
        {"{\"template\": \"../secret\"}", "is a path"},
        {"{\"template\": \"..\"}", "starts with '.'"},
        {"{\"template\": \".hidden\"}", "starts with '.'"},
        {"{\"template\": \"\"}", "is empty"},
        {"{\"template\": \"a\\nb\"}", "control characters"},
    };
    for (size_t i = 0; i <= BD_ARRAY_LEN(refused); i++) {
        put("j/job.json", i < BD_ARRAY_LEN(refused) ? refused[i].job_json : abs_ref);
        cJSON *errors = cJSON_CreateArray(), *job = NULL;
        assert_int_equal(resolve("j", &job, errors), -EINVAL);
        expect_error(errors, "template", i < BD_ARRAY_LEN(refused) ? refused[i].says : "is a path");
        /* says what to do */
        expect_error(errors, "template", "name a template in");
        cJSON_Delete(errors);
    }
    /* A link in the templates directory that leads out of it. */
    char *target = path_in("secret.json");
    char *link = path_in("templates/escape.json");
    assert_int_equal(symlink(target, link), 0);
    put("j/job.json", "{\"template\": \"escape\"}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "template", "outside the templates directory");
    cJSON_Delete(errors);
    /* A chain follows the same rule: a template naming a path is refused too. */
    char *chain = xasprintf("{\"template\": \"%s\"}", abs_secret);
    put("templates/chained.json", chain);
    put("j/job.json", "{\"template\": \"chained\"}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "template", "is a path");
    cJSON_Delete(errors);
    /* A name resolves in the templates directory. */
    put("templates/mine.json", base_template);
    put("j/job.json", "{\"template\": \"mine\"}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), 0);
    cJSON_Delete(job);
    cJSON_Delete(errors);
    free(chain);
    free(target);
    free(link);
    free(abs_ref);
    free(abs_secret);
}

static void test_schema_rule_broken(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"dataset\": {\"schema\": {\"strict\": true, \"fields\": {"
                      "\"prompt\": {\"type\": \"text\"}, \"g1\": {\"type\": \"task_group_id\"},"
                      "\"g2\": {\"type\": \"task_group_id\"}, \"w\": {\"type\": \"wat\"}}}}}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    bool two_groups = false, bad_type = false;
    const cJSON *e;
    cJSON_ArrayForEach(e, errors)
    {
        const char *p = json_str(e, "path");
        if (p && !strncmp(p, "dataset.schema", 14) &&
            strstr(json_str(e, "message"), "task_group_id"))
            two_groups = true;
        if (p && !strcmp(p, "dataset.schema.fields.w.type"))
            bad_type = true;
    }
    assert_true(two_groups);
    assert_true(bad_type);
    cJSON_Delete(errors);
}

static void test_dataset_field_naming_metadata(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"batch\": {\"batch_items\": [{\"rows\": [{\"columns\": [{\"items\": ["
                      "{\"type\": \"dataset_field\", \"field\": \"prompt\"},"
                      "{\"type\": \"dataset_field\", \"field\": \"source\"}]}]}]}]}}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    const cJSON *e = cJSON_GetArrayItem(errors, 0);
    assert_non_null(e);
    assert_non_null(
        strstr(json_str(e, "path"), "batch.batch_items[0].rows[0].columns[0].items[1]"));
    assert_non_null(strstr(json_str(e, "message"), "metadata"));
    assert_int_equal(cJSON_GetArraySize(errors), 1);
    cJSON_Delete(errors);
}

static void test_answer_limit_path(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"batch\": {\"batch_items\": [{\"rows\": [{\"columns\": [{\"items\": ["
                      "{\"type\": \"multiple_choice\", \"description\": \"Q\", \"answer_limit\": 0,"
                      " \"options\": [{\"label\": \"A\", \"value\": \"a\"}]}]}]}]}]}}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "batch.batch_items[0].rows[0].columns[0].items[0].answer_limit", "");
    cJSON_Delete(errors);
}

static void test_two_data_files_no_job_json(void **state)
{
    (void)state;
    put("j/a.jsonl", "{}\n");
    put("j/b.csv", "x\n");
    put("j/.hidden.jsonl", "{}\n");
    put("j/rejected.jsonl", "{}\n");
    put("j/a.cleaned.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "2 data files (a.jsonl, b.csv)");
    cJSON_Delete(errors);
    /* naming one settles it */
    put("j/job.json", "{\"dataset\": {\"file\": \"b.csv\"}}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), 0);
    assert_string_equal(json_str(cJSON_GetObjectItem(job, "dataset"), "file"), "b.csv");
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

static void test_no_data_file(void **state)
{
    (void)state;
    put("j/readme.txt", "hi\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "no data file");
    cJSON_Delete(errors);
}

/* A FIFO named like a data file is named in the error (not "no data file"), found or named
 * in job.json, and never opened (opening would block this test). */
static void test_fifo_data_file(void **state)
{
    (void)state;
    put("j/readme.txt", "\n");
    char *fifo = path_in("j/d.jsonl");
    assert_int_equal(mkfifo(fifo, 0644), 0);
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "\"d.jsonl\" is a FIFO (named pipe), not a regular file");
    cJSON_Delete(errors);
    put("j/job.json", "{\"dataset\": {\"file\": \"d.jsonl\"}}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "is a FIFO");
    cJSON_Delete(errors);
    free(fifo);
}

/* A lone data file with a name batchd writes itself is reported as such (not "no data
 * file"); next to the user's data file such names are ignored. */
static void test_own_name_as_only_data(void **state)
{
    (void)state;
    put("j/rejected.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "\"rejected.jsonl\" is a name batchd writes itself");
    cJSON_Delete(errors);
    put("j/d.jsonl", "{}\n");
    put("j/d.cleaned.jsonl", "{}\n");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), 0);
    assert_string_equal(json_str(cJSON_GetObjectItem(job, "dataset"), "file"), "d.jsonl");
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

static void test_symlinked_data_file_and_job_json(void **state)
{
    (void)state;
    put("elsewhere.jsonl", "{}\n");
    put("j/readme.txt", "\n");
    char *target = path_in("elsewhere.jsonl"), *link = path_in("j/d.jsonl");
    assert_int_equal(symlink(target, link), 0);
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "symbolic link");
    cJSON_Delete(errors);
    /* named explicitly: still refused */
    put("j/job.json", "{\"dataset\": {\"file\": \"d.jsonl\"}}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.file", "symbolic link");
    cJSON_Delete(errors);
    /* job.json itself a symlink */
    char *jj = path_in("j/job.json"), *other = path_in("other.json");
    put("other.json", "{}");
    unlink(jj);
    assert_int_equal(symlink(other, jj), 0);
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, NULL, "symbolic link");
    cJSON_Delete(errors);
    free(target);
    free(link);
    free(jj);
    free(other);
}

static void test_bad_file_names(void **state)
{
    (void)state;
    const char *bad[] = {"../x.jsonl", "sub/x.jsonl", "..", "x.txt", "rejected.jsonl"};
    put("j/x.jsonl", "{}\n");
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        char text[128];
        snprintf(text, sizeof text, "{\"dataset\": {\"file\": \"%s\"}}", bad[i]);
        put("j/job.json", text);
        cJSON *errors = cJSON_CreateArray(), *job = NULL;
        assert_int_equal(resolve("j", &job, errors), -EINVAL);
        assert_string_equal(json_str(cJSON_GetArrayItem(errors, 0), "path"), "dataset.file");
        cJSON_Delete(errors);
    }
}

static void test_missing_workspace_and_null_template(void **state)
{
    (void)state;
    free(cfg.api.workspace_id);
    cfg.api.workspace_id = NULL;
    put("j/d.jsonl", "{}\n");
    put("j/job.json", "{\"template\": null, \"batch\": {\"tasks_per_group\": 0}}");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "workspace_id", "required");
    expect_error(errors, "dataset.schema", "required");
    expect_error(errors, "batch.task_details", "required");
    expect_error(errors, "batch.batch_items", "required");
    expect_error(errors, "batch.tasks_per_group", ">= 1");
    cJSON_Delete(errors);
}

static void test_missing_configured_template_hint(void **state)
{
    (void)state;
    free(cfg.job.template_path);
    cfg.job.template_path = path_in("templates/absent.json");
    put("j/d.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.schema", "absent.json does not exist");
    cJSON_Delete(errors);
}

static void test_bare_file_and_check_template(void **state)
{
    (void)state;
    put("loose/prompts.jsonl", "{}\n");
    put("loose/job.json", "{not even json"); /* ignored for a bare file */
    char *p = path_in("loose/prompts.jsonl");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    diag d = {0};
    assert_int_equal(manifest_resolve_bare(p, "prompts", &cfg, &job, &d), 0);
    assert_string_equal(json_str(cJSON_GetObjectItem(job, "dataset"), "file"), "prompts.jsonl");
    cJSON_Delete(job);
    assert_int_equal(manifest_check_template(cfg.job.template_path, &cfg, &d), 0);
    put("templates/broken.json", "{\"batch\": {\"task_details\": {\"task_name\": \"\"}}}");
    assert_int_equal(manifest_check_template("broken", &cfg, &d), -EINVAL);
    diag_to_json(&d, errors);
    diag_free(&d);
    expect_error(errors, "batch.task_details.task_steps", "missing");
    cJSON_Delete(errors);
    free(p);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(manifest_is_data_name("a.jsonl"));
    assert_true(manifest_is_data_name("A.CSV"));
    assert_false(manifest_is_data_name(".a.jsonl"));
    assert_false(manifest_is_data_name("a.cleaned.jsonl"));
    assert_false(manifest_is_data_name("rejected.jsonl"));
    assert_false(manifest_is_data_name("a.json"));
    char *p = manifest_template_path("pairwise", &cfg);
    assert_non_null(strstr(p, "/templates/pairwise.json"));
    free(p);
    p = manifest_template_path("pairwise.json", &cfg);
    assert_non_null(strstr(p, "/templates/pairwise.json"));
    free(p);
    assert_null(manifest_template_path("/abs/t.json", &cfg));
    assert_null(manifest_template_path("rel/t.json", &cfg));
    assert_null(manifest_template_path("..", &cfg));
    assert_null(manifest_template_path(".x", &cfg));
    assert_null(manifest_template_path("", &cfg));
    assert_null(manifest_template_path(NULL, &cfg));
    assert_null(manifest_template_path("a\nb", &cfg));
}

/* One bad append_to form: resolve fails with an issue at path holding needle, in job.json. */
static void expect_bad_append(const char *append_to, const char *path, const char *needle)
{
    char *text = xasprintf("{\"append_to\": %s}", append_to);
    put("j/job.json", text);
    free(text);
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    assert_null(job);
    expect_error(errors, path, needle);
    assert_string_equal(json_str(cJSON_GetArrayItem(errors, 0), "file"), "job.json");
    cJSON_Delete(errors);
}

static void test_append_to_bad_forms(void **state)
{
    (void)state;
    put("j/d.jsonl", "{}\n");
    expect_bad_append("\"\"", "append_to", "must not be empty");
    expect_bad_append("\"a\\u0001b\"", "append_to", "control characters");
    char *long_ref = xmalloc(MANIFEST_APPEND_REF_MAX + 4);
    memset(long_ref, 'x', MANIFEST_APPEND_REF_MAX + 3);
    long_ref[0] = '"';
    long_ref[MANIFEST_APPEND_REF_MAX + 2] = '"';
    long_ref[MANIFEST_APPEND_REF_MAX + 3] = '\0';
    expect_bad_append(long_ref, "append_to", "longer than 255");
    free(long_ref);
    expect_bad_append("12", "append_to", "must be a job's name or id");
    expect_bad_append("true", "append_to", "must be a job's name or id");
    expect_bad_append("[\"a\"]", "append_to", "must be a job's name or id");
    expect_bad_append("{}", "append_to.batch_id", "required");
    expect_bad_append("{\"batch_id\": \"b1\"}", "append_to.dataset_id", "required");
    expect_bad_append("{\"dataset_id\": \"d1\"}", "append_to.batch_id", "required");
    expect_bad_append("{\"batch_id\": 5, \"dataset_id\": \"d1\"}", "append_to.batch_id",
                      "must be a string");
    expect_bad_append("{\"batch_id\": \"\", \"dataset_id\": \"d1\"}", "append_to.batch_id",
                      "1 to 128");
    expect_bad_append("{\"batch_id\": \"b/../x\", \"dataset_id\": \"d1\"}", "append_to.batch_id",
                      "letters, digits");
    expect_bad_append("{\"batch_id\": \"b1\", \"dataset_id\": \"d 1\"}", "append_to.dataset_id",
                      "letters, digits");
    expect_bad_append("{\"batch_id\": \"b1\", \"dataset_id\": \"d1\", \"x\": 1}", "append_to.x",
                      "unknown member");
    char *long_id = xmalloc(MANIFEST_APPEND_ID_MAX + 2);
    memset(long_id, 'a', MANIFEST_APPEND_ID_MAX + 1);
    long_id[MANIFEST_APPEND_ID_MAX + 1] = '\0';
    char *obj = xasprintf("{\"batch_id\": \"%s\", \"dataset_id\": \"d1\"}", long_id);
    expect_bad_append(obj, "append_to.batch_id", "1 to 128");
    free(obj);
    free(long_id);
}

static void test_append_to_in_template_is_checked_there(void **state)
{
    (void)state;
    put("templates/grow.json", "{\"append_to\": {\"batch_id\": \"b1\"}}");
    put("j/job.json", "{\"template\": \"grow\"}");
    put("j/d.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "append_to.dataset_id", "required");
    assert_non_null(strstr(json_str(cJSON_GetArrayItem(errors, 0), "file"), "grow.json"));
    cJSON_Delete(errors);
}

static void test_append_to_by_name(void **state)
{
    (void)state;
    /* No workspace, no batch members needed; the batch section and the job's own schema
     * are dropped (the target's schema applies). */
    free(cfg.api.workspace_id);
    cfg.api.workspace_id = NULL;
    put("j/job.json", "{\"template\": null, \"append_to\": \"evals\", \"batch\": {\"name\": \"x\"},"
                      " \"dataset\": {\"schema\": {\"fields\": {}}}}");
    put("j/d.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), 0);
    assert_int_equal(cJSON_GetArraySize(errors), 0);
    assert_string_equal(json_str(job, "append_to"), "evals");
    assert_null(cJSON_GetObjectItem(job, "batch"));
    const cJSON *ds = cJSON_GetObjectItem(job, "dataset");
    assert_null(cJSON_GetObjectItem(ds, "schema"));
    assert_string_equal(json_str(ds, "file"), "d.jsonl");
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

static void test_append_to_ids_needs_schema(void **state)
{
    (void)state;
    put("j/job.json", "{\"template\": null, \"append_to\": {\"batch_id\": \"b-1\", \"dataset_id\":"
                      " \"d_1\"}}");
    put("j/d.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), -EINVAL);
    expect_error(errors, "dataset.schema", "required with append_to");
    assert_int_equal(cJSON_GetArraySize(errors), 1);
    cJSON_Delete(errors);
    /* With the template's schema (and batch, ignored) it resolves. */
    put("j/job.json", "{\"append_to\": {\"batch_id\": \"b-1\", \"dataset_id\": \"d_1\"}}");
    errors = cJSON_CreateArray();
    assert_int_equal(resolve("j", &job, errors), 0);
    const cJSON *at = cJSON_GetObjectItem(job, "append_to");
    assert_string_equal(json_str(at, "batch_id"), "b-1");
    assert_string_equal(json_str(at, "dataset_id"), "d_1");
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(job, "dataset"), "schema"));
    assert_null(cJSON_GetObjectItem(job, "batch"));
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

static void test_append_to_null_opts_out_of_template(void **state)
{
    (void)state;
    put("templates/grow.json", "{\"template\": \"default\", \"append_to\": \"evals\"}");
    put("j/job.json", "{\"template\": \"grow\", \"append_to\": null}");
    put("j/d.jsonl", "{}\n");
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    assert_int_equal(resolve("j", &job, errors), 0);
    assert_null(cJSON_GetObjectItem(job, "append_to"));
    assert_non_null(cJSON_GetObjectItem(job, "batch"));
    cJSON_Delete(job);
    cJSON_Delete(errors);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_bare_data_uses_configured_template_and_defaults),
        T(test_merge_field_by_field),
        T(test_malformed_job_json_has_line_and_column),
        T(test_job_json_not_object_or_bad_utf8),
        T(test_unknown_keys_reported_with_path),
        T(test_unknown_template),
        T(test_template_cycle_and_depth),
        T(test_template_only_by_name),
        T(test_schema_rule_broken),
        T(test_dataset_field_naming_metadata),
        T(test_answer_limit_path),
        T(test_two_data_files_no_job_json),
        T(test_no_data_file),
        T(test_fifo_data_file),
        T(test_own_name_as_only_data),
        T(test_symlinked_data_file_and_job_json),
        T(test_bad_file_names),
        T(test_missing_workspace_and_null_template),
        T(test_missing_configured_template_hint),
        T(test_bare_file_and_check_template),
        T(test_names),
        T(test_append_to_bad_forms),
        T(test_append_to_in_template_is_checked_there),
        T(test_append_to_by_name),
        T(test_append_to_ids_needs_schema),
        T(test_append_to_null_opts_out_of_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
