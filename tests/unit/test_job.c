/* Unit tests of the job state machine: every transition, retry class, timeout and resume
 * case, driven with a fake clock and canned replies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdio.h>

#include <cmocka.h>

#include "batchd/apitext.h"
#include "batchd/job.h"
#include "batchd/util.h"

#define SHA256_HEX "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define T0         1764405165000LL /* 2025-11-29T08:32:45Z */
#define DATASET    "0192a3b5-e8f9-7a0b-1c2d-3e4f5a6b7c8d"
#define IMPORT     "01935c2d-1a2b-3c4d-5e6f-7a8b9c0d1e2f"
#define BATCH      "01935c2d-aaaa-4c4d-8e6f-7a8b9c0d1e2f"
#define WS         "6278acb09062db3b35bcbeb0"

typedef struct fixture {
    job *j;
    job_params p;
    int64_t now;
} fixture;

static const char *spec_json =
    "{\"workspace_id\":\"" WS "\",\"dataset\":{\"name\":\"ds\",\"file\":\"d.jsonl\","
    "\"schema\":{\"strict\":true,\"fields\":{\"prompt\":{\"type\":\"text\"}}}},"
    "\"batch\":{\"name\":\"b\",\"tasks_per_group\":3,\"task_details\":{\"task_name\":\"n\","
    "\"task_introduction\":\"i\",\"task_steps\":\"s\"},\"batch_items\":[{\"rows\":[{"
    "\"columns\":[{\"items\":[{\"type\":\"dataset_field\",\"field\":\"prompt\"}]}]}]}]}}";

static int setup(void **state)
{
    fixture *f = xcalloc(1, sizeof *f);
    job_params_default(&f->p);
    f->now = T0;
    f->j = job_new("01JDXYZ", "job-a", "job-a", f->now);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    job_free(f->j);
    free(f);
    return 0;
}

static job_action next(fixture *f)
{
    bool changed;
    return job_next(f->j, &f->p, f->now, 0x8000000000000000ULL, &changed);
}

static void validated(fixture *f)
{
    cJSON *spec = cJSON_Parse(spec_json);
    job_validation v = {.ok = true,
                        .spec = spec,
                        .upload_path = "/spool/active/job-a/d.jsonl",
                        .upload_name = "d.jsonl",
                        .records = 3,
                        .rejected = 0,
                        .sha256 = SHA256_HEX,
                        .bytes = 120};
    job_on_validated(f->j, &v, f->now);
    cJSON_Delete(spec);
}

static void reply(fixture *f, job_op op, long status, const char *body)
{
    job_reply r = {
        .net = JOB_NET_OK, .status = status, .body = body, .body_len = body ? strlen(body) : 0};
    job_mark_sent(f->j, op, f->now);
    job_on_reply(f->j, op, &r, &f->p, f->now, 0);
}

static void reply_ra(fixture *f, job_op op, long status, const char *retry_after, uint64_t rnd)
{
    job_reply r = {.net = JOB_NET_OK, .status = status, .retry_after = retry_after};
    job_mark_sent(f->j, op, f->now);
    job_on_reply(f->j, op, &r, &f->p, f->now, rnd);
}

static void net_error(fixture *f, job_op op, job_net_error e)
{
    job_reply r = {.net = e, .error_text = "boom"};
    job_mark_sent(f->j, op, f->now);
    job_on_reply(f->j, op, &r, &f->p, f->now, 0);
}

static void expect_send(fixture *f, job_op op)
{
    job_action a = next(f);
    assert_int_equal(a.kind, JOB_ACT_SEND);
    assert_string_equal(job_op_name(a.op), job_op_name(op));
}

/* Advances the fake clock to whatever the job waits for. */
static void wait_out(fixture *f)
{
    job_action a = next(f);
    if (a.kind == JOB_ACT_WAIT) {
        assert_true(a.until > f->now);
        f->now = a.until;
    }
}

static const char *upload_url_body(int64_t expires_ms)
{
    static char buf[512];
    char exp[40];
    snprintf(
        buf, sizeof buf,
        "{\"dataset_id\":\"" DATASET "\",\"upload_url\":\"http://127.0.0.1:1/_upload/k?sig=1\","
        "\"http_method\":\"PUT\",\"content_type\":\"application/x-ndjson\",\"expires_at\":\"%s\","
        "\"import_id\":\"" IMPORT "\"}",
        time_format_rfc3339(expires_ms, false, exp, sizeof exp));
    return buf;
}

/* Runs the job from its current state up to the given state along the happy path. */
static void drive_to(fixture *f, job_state target)
{
    while (f->j->state != target) {
        switch (f->j->state) {
        case JOB_QUEUED:
            assert_int_equal(next(f).kind, JOB_ACT_VALIDATE);
            assert_int_equal(f->j->state, JOB_VALIDATING);
            break;
        case JOB_VALIDATING:
            validated(f);
            break;
        case JOB_CREATING_DATASET:
            expect_send(f, JOB_OP_CREATE_DATASET);
            reply(f, JOB_OP_CREATE_DATASET, 201, "{\"id\":\"" DATASET "\"}");
            break;
        case JOB_UPLOADING:
            expect_send(f, JOB_OP_UPLOAD_URL);
            reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
            expect_send(f, JOB_OP_UPLOAD);
            reply(f, JOB_OP_UPLOAD, 200, "");
            break;
        case JOB_IMPORTING:
            wait_out(f);
            expect_send(f, JOB_OP_GET_IMPORT);
            reply(f, JOB_OP_GET_IMPORT, 200, "{\"status\":\"complete\",\"accepted_count\":3}");
            break;
        case JOB_CREATING_BATCH:
            expect_send(f, JOB_OP_CREATE_BATCH);
            reply(f, JOB_OP_CREATE_BATCH, 201,
                  "{\"id\":\"" BATCH "\",\"status\":\"UNINITIALISED\"}");
            break;
        case JOB_SETTING_UP:
            expect_send(f, JOB_OP_SETUP);
            reply(f, JOB_OP_SETUP, 202, "{}");
            assert_int_equal(f->j->state, JOB_PROCESSING);
            break;
        default:
            fail_msg("cannot drive from %s", job_state_name(f->j->state));
        }
    }
}

static void test_happy_path(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_PROCESSING);
    wait_out(f);
    expect_send(f, JOB_OP_BATCH_STATUS);
    reply(f, JOB_OP_BATCH_STATUS, 200, "{\"status\":\"PROCESSING\"}");
    assert_int_equal(next(f).kind, JOB_ACT_WAIT);
    wait_out(f);
    expect_send(f, JOB_OP_BATCH_STATUS);
    reply(f, JOB_OP_BATCH_STATUS, 200, "{\"status\":\"READY\"}");
    expect_send(f, JOB_OP_GET_BATCH);
    reply(f, JOB_OP_GET_BATCH, 200,
          "{\"id\":\"" BATCH "\",\"status\":\"READY\",\"total_task_count\":3,"
          "\"total_task_groups\":1}");
    assert_int_equal(next(f).kind, JOB_ACT_FINISH);
    assert_int_equal(f->j->state, JOB_READY);
    cJSON *res = job_result_json(f->j);
    assert_string_equal(json_str(res, "state"), "ready");
    assert_string_equal(json_str(res, "dataset_id"), DATASET);
    assert_string_equal(json_str(res, "import_id"), IMPORT);
    assert_string_equal(json_str(res, "batch_id"), BATCH);
    assert_string_equal(json_str(res, "batch_status"), "READY");
    assert_int_equal(json_int64(res, "total_task_count", -1), 3);
    assert_int_equal(json_int64(res, "total_task_groups", -1), 1);
    assert_int_equal(json_int64(res, "records", -1), 3);
    /* upload is not an API request: 1 create + 1 url + 1 poll + 1 create + 1 setup + 2 polls +
     * 1 get */
    assert_int_equal(json_int64(res, "api_requests", -1), 8);
    /* the digest of what was validated and uploaded (batchd(8), RESULTS: sha256) */
    assert_string_equal(json_str(res, "sha256"), SHA256_HEX);
    assert_int_equal(json_int64(res, "skipped_records", -1), 0); /* not in skip mode */
    assert_int_equal(cJSON_GetArraySize(res), 16); /* exactly the keys of batchd(8), RESULTS */
    cJSON_Delete(res);
}

/* The upload's own file errors fail the job (no retry can fix them); the same errors on
 * another call (none reads a file) are an unsent request and a failed connection. */
static void test_upload_file_errors_classified(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    expect_send(f, JOB_OP_UPLOAD_URL);
    net_error(f, JOB_OP_UPLOAD_URL, JOB_NET_FILE);
    assert_int_equal(f->j->state, JOB_UPLOADING);
    assert_int_equal(f->j->attempts, 1);
    wait_out(f);
    expect_send(f, JOB_OP_UPLOAD_URL);
    net_error(f, JOB_OP_UPLOAD_URL, JOB_NET_CHANGED);
    assert_int_equal(f->j->state, JOB_UPLOADING);
    wait_out(f);
    expect_send(f, JOB_OP_UPLOAD_URL);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    expect_send(f, JOB_OP_UPLOAD);
    net_error(f, JOB_OP_UPLOAD, JOB_NET_CHANGED);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "invalid_job");
    assert_non_null(strstr(f->j->error_message, "boom; it was not uploaded"));
    assert_non_null(strstr(f->j->error_message, f->j->id));
    /* a reply to a finished job changes nothing */
    net_error(f, JOB_OP_UPLOAD, JOB_NET_FILE);
    assert_non_null(strstr(f->j->error_message, "not uploaded"));
}

static void test_upload_file_unreadable(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    expect_send(f, JOB_OP_UPLOAD);
    net_error(f, JOB_OP_UPLOAD, JOB_NET_FILE);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_non_null(strstr(f->j->error_message, "must stay as validated"));
}

/* A side-effecting call whose intent could not be made durable is withdrawn. */
static void test_mark_sent_and_unsent(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    job_op saved = job_mark_sent(f->j, JOB_OP_CREATE_DATASET, f->now);
    assert_int_equal(saved, JOB_OP_NONE);
    assert_int_equal(f->j->pending_op, JOB_OP_CREATE_DATASET);
    job_unsent(f->j, saved);
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
    expect_send(f, JOB_OP_CREATE_DATASET); /* sent as new, no orphan note */
    const cJSON *last = cJSON_GetArrayItem(f->j->history, cJSON_GetArraySize(f->j->history) - 1);
    assert_null(strstr(json_str(last, "note"), "orphan"));
}

static void test_requests_built(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    job_request rq;
    assert_int_equal(job_build_request(f->j, JOB_OP_CREATE_DATASET, &rq), 0);
    assert_string_equal(rq.method, "POST");
    assert_string_equal(rq.path, "/api/v1/data-collection/datasets");
    cJSON *b = cJSON_Parse(rq.body);
    assert_string_equal(json_str(b, "name"), "ds");
    assert_string_equal(json_str(b, "workspace_id"), WS);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(b, "schema"), "strict")));
    cJSON_Delete(b);
    job_request_clear(&rq);
    /* A request whose inputs are missing is refused, not sent. */
    assert_int_equal(job_build_request(f->j, JOB_OP_CREATE_BATCH, &rq), -EINVAL);

    drive_to(f, JOB_SETTING_UP);
    assert_int_equal(job_build_request(f->j, JOB_OP_SETUP, &rq), 0);
    assert_string_equal(rq.path, "/api/v1/data-collection/batches/" BATCH "/setup");
    b = cJSON_Parse(rq.body);
    assert_int_equal(json_int64(b, "tasks_per_group", 0), 3);
    cJSON_Delete(b);
    job_request_clear(&rq);
    assert_int_equal(job_build_request(f->j, JOB_OP_FIND_BATCH, &rq), 0);
    assert_string_equal(rq.path, "/api/v1/data-collection/batches?workspace_id=" WS);
    job_request_clear(&rq);
    assert_int_equal(job_build_request(f->j, JOB_OP_CREATE_BATCH, &rq), 0);
    b = cJSON_Parse(rq.body);
    assert_string_equal(json_str(b, "dataset_id"), DATASET);
    assert_non_null(cJSON_GetObjectItem(b, "batch_items"));
    assert_non_null(cJSON_GetObjectItem(b, "task_details"));
    assert_null(cJSON_GetObjectItem(b, "tasks_per_group"));
    cJSON_Delete(b);
    job_request_clear(&rq);
}

static void test_setup_body_with_group_field(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_SETTING_UP);
    cJSON *fields = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(f->j->spec, "dataset"), "schema"), "fields");
    cJSON *g = cJSON_CreateObject();
    cJSON_AddStringToObject(g, "type", "task_group_id");
    cJSON_AddItemToObject(fields, "session_id", g);
    job_request rq;
    assert_int_equal(job_build_request(f->j, JOB_OP_SETUP, &rq), 0);
    assert_string_equal(rq.body, "{}");
    job_request_clear(&rq);
}

static void test_upload_name_escaped(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    free(f->j->upload_name);
    f->j->upload_name = xstrdup("my data/ä.jsonl");
    job_request rq;
    assert_int_equal(job_build_request(f->j, JOB_OP_UPLOAD_URL, &rq), 0);
    assert_string_equal(rq.path, "/api/v1/data-collection/datasets/" DATASET
                                 "/upload-url/my%20data%2F%C3%A4.jsonl");
    job_request_clear(&rq);
}

static void test_error_json_has_exactly_the_product_keys(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_PROCESSING);
    wait_out(f);
    reply(f, JOB_OP_BATCH_STATUS, 200, "{\"status\":\"ERROR\"}");
    cJSON *e = job_error_json(f->j);
    static const char *const keys[] = {"job",       "id",         "state",    "stage",
                                       "code",      "message",    "errors",   "http_status",
                                       "api_error", "dataset_id", "batch_id", "at"};
    assert_int_equal(cJSON_GetArraySize(e), BD_ARRAY_LEN(keys));
    for (size_t i = 0; i < BD_ARRAY_LEN(keys); i++)
        assert_non_null(cJSON_GetObjectItem(e, keys[i]));
    cJSON_Delete(e);
}

static void test_invalid_job_fails(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_VALIDATING);
    cJSON *errs = cJSON_Parse("[{\"line\":17,\"field\":\"prompt\",\"message\":\"missing\"}]");
    job_validation v = {.ok = false,
                        .code = "invalid_records",
                        .message = "1 record does not match the schema",
                        .errors = errs};
    job_on_validated(f->j, &v, f->now);
    cJSON_Delete(errs);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_int_equal(next(f).kind, JOB_ACT_FINISH);
    cJSON *e = job_error_json(f->j);
    assert_string_equal(json_str(e, "stage"), "validating");
    assert_string_equal(json_str(e, "code"), "invalid_records");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(e, "http_status")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(e, "api_error")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(e, "dataset_id")));
    assert_int_equal(json_int64(cJSON_GetArrayItem(cJSON_GetObjectItem(e, "errors"), 0), "line", 0),
                     17);
    cJSON_Delete(e);
}

static void test_retry_classes(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    static const long retryable[] = {500, 502, 503, 504, 408, 429};
    for (size_t i = 0; i < BD_ARRAY_LEN(retryable); i++) {
        int before = f->j->attempts;
        reply(f, JOB_OP_CREATE_DATASET, retryable[i], "{}");
        assert_int_equal(f->j->state, JOB_CREATING_DATASET);
        assert_int_equal(f->j->attempts, before + 1);
        assert_true(f->j->retry_at > f->now);
        assert_non_null(f->j->last_error);
        job_action a = next(f);
        assert_int_equal(a.kind, JOB_ACT_WAIT);
        f->now = a.until;
        expect_send(f, JOB_OP_CREATE_DATASET);
    }
    net_error(f, JOB_OP_CREATE_DATASET, JOB_NET_TIMEOUT);
    assert_int_equal(f->j->state, JOB_CREATING_DATASET);
    wait_out(f);
    net_error(f, JOB_OP_CREATE_DATASET, JOB_NET_FAILED);
    assert_int_equal(f->j->state, JOB_CREATING_DATASET);
    wait_out(f);
    reply(f, JOB_OP_CREATE_DATASET, 201, "{\"id\":\"" DATASET "\"}");
    assert_int_equal(f->j->state, JOB_UPLOADING);
    assert_int_equal(f->j->attempts, 0);
    assert_null(f->j->last_error);
}

static void test_4xx_fails_with_api_error(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    reply(f, JOB_OP_CREATE_DATASET, 400,
          "{\"error\":{\"status\":400,\"error_code\":0,\"title\":\"Bad Request\","
          "\"detail\":{\"schema\":[\"bad\"]}}}");
    assert_int_equal(f->j->state, JOB_FAILED);
    cJSON *e = job_error_json(f->j);
    assert_string_equal(json_str(e, "code"), "api_rejected");
    assert_string_equal(json_str(e, "stage"), "creating_dataset");
    assert_int_equal(json_int64(e, "http_status", 0), 400);
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "api_error"), "error"));
    cJSON_Delete(e);
}

static void test_422_issues_in_error(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_BATCH);
    job_mark_sent(f->j, JOB_OP_CREATE_BATCH, f->now);
    reply(f, JOB_OP_CREATE_BATCH, 422,
          "{\"type\":\"INVALID_BATCH_ITEMS\",\"message\":\"bad items\",\"issues\":[{\"page\":0,"
          "\"row\":1,\"column\":0,\"item\":2,\"type\":\"multiple_choice\",\"message\":\"x\"}]}");
    assert_int_equal(f->j->state, JOB_FAILED);
    cJSON *e = job_error_json(f->j);
    cJSON *issue = cJSON_GetArrayItem(cJSON_GetObjectItem(e, "errors"), 0);
    assert_string_equal(json_str(issue, "path"),
                        "batch.batch_items[0].rows[1].columns[0].items[2]");
    assert_string_equal(json_str(issue, "type"), "multiple_choice");
    assert_string_equal(json_str(e, "dataset_id"), DATASET);
    assert_int_equal(json_int64(e, "http_status", 0), 422);
    cJSON_Delete(e);
    /* A 4xx is definitive: a retry creates the batch without first looking for one. */
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
}

static void test_retry_after_seconds(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    /* rnd 0: the jitter alone would be 0 ms; Retry-After must still be honoured. */
    reply_ra(f, JOB_OP_CREATE_DATASET, 429, "7", 0);
    assert_int_equal(f->j->retry_at, f->now + 7000);
    assert_non_null(strstr(f->j->last_error, "Retry-After"));
    /* A 429 was refused before acting: no unknown outcome to resolve. */
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
}

static void test_retry_after_bounded_and_jittered(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    /* Jitter goes on top of the server's time, never below it. */
    reply_ra(f, JOB_OP_CREATE_DATASET, 429, "2", UINT64_MAX);
    assert_true(f->j->retry_at >= f->now + 2000);
    assert_true(f->j->retry_at <= f->now + 2000 + f->p.retry_base_ms);
    f->now = f->j->retry_at;
    /* An absurd Retry-After neither overflows nor parks the job for years. */
    reply_ra(f, JOB_OP_CREATE_DATASET, 429, "9223372036854769", 0);
    assert_int_equal(f->j->retry_at, f->now + JOB_RETRY_AFTER_MAX_MS);
    /* The wait survives a restart. */
    int64_t at = f->j->retry_at;
    cJSON *rec = job_to_record(f->j);
    const char *err = NULL;
    job *back = job_from_record(rec, &err);
    cJSON_Delete(rec);
    job_recovered(back, f->now);
    assert_int_equal(back->retry_at, at);
    /* the digest the upload is checked against survives a restart too */
    assert_non_null(back->upload_sha256);
    assert_string_equal(back->upload_sha256, SHA256_HEX);
    job_free(back);
}

/* A job's export travels in its record (strictly read: a bad one is dropped with a note, the
 * job itself is fine) and shows as Job.export (null without one). */
static void test_export_in_record_and_public(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    cJSON *pub = job_to_public(f->j, false);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(pub, "export")));
    cJSON_Delete(pub);
    f->j->export = export_new(f->now);
    f->j->export->state = EXPORT_GENERATING;
    f->j->export->export_id = strdup("exp-1");
    cJSON *rec = job_to_record(f->j);
    const char *err = NULL;
    job *back = job_from_record(rec, &err);
    assert_non_null(back);
    assert_non_null(back->export);
    assert_int_equal(back->export->state, EXPORT_GENERATING);
    assert_string_equal(back->export->export_id, "exp-1");
    pub = job_to_public(back, false);
    const cJSON *pe = cJSON_GetObjectItemCaseSensitive(pub, "export");
    assert_string_equal(json_str(pe, "state"), "generating");
    assert_string_equal(json_str(pe, "export_id"), "exp-1");
    cJSON_Delete(pub);
    job_free(back);
    /* An export_id that is not an id: the export is dropped, the job is kept and says why. */
    cJSON *ex = cJSON_GetObjectItemCaseSensitive(rec, "export");
    cJSON_ReplaceItemInObjectCaseSensitive(ex, "export_id", cJSON_CreateString("../../x"));
    back = job_from_record(rec, &err);
    cJSON_Delete(rec);
    assert_non_null(back);
    assert_null(back->export);
    const cJSON *last = cJSON_GetArrayItem(back->history, cJSON_GetArraySize(back->history) - 1);
    assert_non_null(strstr(json_str(last, "note"), "export could not be read back"));
    assert_non_null(strstr(json_str(last, "note"), "export_id"));
    job_free(back);
}

static void test_retry_after_date(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    f->now = T0; /* 2025-11-29T08:32:45Z */
    reply_ra(f, JOB_OP_CREATE_DATASET, 503, "Sat, 29 Nov 2025 08:33:05 GMT", 0);
    assert_int_equal(f->j->retry_at, T0 + 20000);
}

static void test_jitter_bounds(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    reply_ra(f, JOB_OP_CREATE_DATASET, 503, NULL, 0);
    assert_true(f->j->retry_at - f->now >= 1);
    assert_true(f->j->retry_at - f->now <= f->p.retry_base_ms);
    f->now = f->j->retry_at;
    /* 2^9 s is past the 5 min cap: attempt 10 is capped, well inside the retry bound. */
    for (int i = 0; i < 12; i++) {
        reply_ra(f, JOB_OP_CREATE_DATASET, 503, NULL, UINT64_MAX);
        int64_t d = f->j->retry_at - f->now;
        assert_true(d >= 1);
        assert_true(d <= f->p.retry_cap_ms);
        f->now = f->j->retry_at;
    }
    /* After many attempts with the top random value, the delay reaches the cap. */
    reply_ra(f, JOB_OP_CREATE_DATASET, 503, NULL, UINT64_MAX);
    assert_true(f->j->retry_at - f->now >= f->p.retry_cap_ms * 99 / 100);
}

static void test_import_timeout(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_IMPORTING);
    int64_t start = f->now;
    while (f->j->state == JOB_IMPORTING) {
        job_action a = next(f);
        if (a.kind == JOB_ACT_WAIT) {
            f->now = a.until;
            continue;
        }
        if (a.kind != JOB_ACT_SEND)
            break;
        reply(f, JOB_OP_GET_IMPORT, 200, "{\"status\":\"processing\"}");
        /* Polls back off, up to the configured maximum (with ±10% jitter). */
        assert_true(f->j->poll_at - f->now <= f->p.poll_max_ms * 11 / 10);
    }
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "timeout");
    assert_true(f->now - start >= f->p.import_timeout_ms);
    assert_true(f->now - start <= f->p.import_timeout_ms + f->p.poll_max_ms * 11 / 10);
}

static void test_batch_timeout(void **state)
{
    fixture *f = *state;
    f->p.batch_timeout_ms = 600000;
    drive_to(f, JOB_PROCESSING);
    int64_t start = f->now;
    int polls = 0;
    while (f->j->state == JOB_PROCESSING) {
        job_action a = next(f);
        if (a.kind == JOB_ACT_WAIT) {
            f->now = a.until;
            continue;
        }
        reply(f, JOB_OP_BATCH_STATUS, 200, "{\"status\":\"PROCESSING\"}");
        polls++;
    }
    assert_string_equal(f->j->error_code, "timeout");
    assert_string_equal(job_state_name(f->j->failed_stage), "processing");
    assert_true(f->now - start >= 600000);
    /* 2s, 4s, 8s, ... capped at 60s: about 14 polls in 10 minutes, not hundreds. */
    assert_true(polls >= 8 && polls <= 20);
}

static void test_import_outcomes(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_IMPORTING);
    wait_out(f);
    reply(f, JOB_OP_GET_IMPORT, 200,
          "{\"status\":\"partial\",\"accepted_count\":2,\"rejected_count\":1,\"errors\":[{"
          "\"record_index\":1,\"field\":\"prompt\",\"reason\":\"missing\"}]}");
    assert_string_equal(f->j->error_code, "import_partial");
    cJSON *e = job_error_json(f->j);
    assert_non_null(strstr(json_str(e, "message"), "2 records accepted, 1 rejected"));
    cJSON *d = cJSON_GetArrayItem(cJSON_GetObjectItem(e, "errors"), 0);
    assert_int_equal(json_int64(d, "record_index", -1), 1);
    assert_string_equal(json_str(d, "field"), "prompt");
    cJSON_Delete(e);
}

static void test_import_failed_and_pending_schema(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_IMPORTING);
    wait_out(f);
    reply(f, JOB_OP_GET_IMPORT, 200, "{\"status\":\"failed\",\"reason\":\"unparsable\"}");
    assert_string_equal(f->j->error_code, "import_failed");
    assert_non_null(strstr(f->j->error_message, "unparsable"));
    /* Retry uploads again with a fresh import. */
    assert_int_equal(job_retry(f->j, f->now), 0);
    assert_null(f->j->import_id);
    assert_false(f->j->uploaded);
    assert_int_equal(next(f).kind, JOB_ACT_VALIDATE);
    validated(f);
    expect_send(f, JOB_OP_UPLOAD_URL); /* the dataset exists: no second dataset */
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    reply(f, JOB_OP_UPLOAD, 200, "");
    wait_out(f);
    reply(f, JOB_OP_GET_IMPORT, 200, "{\"status\":\"pending_schema\"}");
    assert_string_equal(f->j->error_code, "import_failed");
}

static void test_batch_error(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_PROCESSING);
    wait_out(f);
    reply(f, JOB_OP_BATCH_STATUS, 200, "{\"status\":\"ERROR\"}");
    assert_string_equal(f->j->error_code, "batch_error");
    cJSON *e = job_error_json(f->j);
    assert_string_equal(json_str(e, "batch_id"), BATCH);
    assert_string_equal(json_str(e, "dataset_id"), DATASET);
    cJSON_Delete(e);
}

/* ---- resume cases ---- */

static job *restart(fixture *f)
{
    cJSON *rec = job_to_record(f->j);
    char *text = json_print(rec);
    cJSON_Delete(rec);
    cJSON *back = cJSON_Parse(text);
    free(text);
    const char *err = NULL;
    job *j = job_from_record(back, &err);
    cJSON_Delete(back);
    assert_non_null(j);
    job_free(f->j);
    f->j = j;
    job_recovered(j, f->now);
    return j;
}

static void test_record_roundtrip(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_PROCESSING);
    /* The printed form (store_encode's, without copies of the spec and history) is the
     * record's, byte for byte, with error details and an API error too. */
    cJSON_Delete(f->j->error_details);
    cJSON_Delete(f->j->api_error);
    f->j->error_details = cJSON_Parse("[{\"line\":3,\"message\":\"bad\"}]");
    f->j->api_error = cJSON_Parse("{\"status\":502,\"body\":\"x\"}");
    cJSON *r0 = job_to_record(f->j);
    char *want = json_print(r0);
    char *got = job_record_print(f->j);
    assert_string_equal(got, want);
    assert_non_null(strstr(got, "\"spec\":{"));
    assert_non_null(strstr(got, "\"history\":[{"));
    free(got);
    free(want);
    cJSON_Delete(r0);
    cJSON_Delete(f->j->error_details);
    cJSON_Delete(f->j->api_error);
    f->j->error_details = NULL;
    f->j->api_error = NULL;
    cJSON *r1 = job_to_record(f->j);
    restart(f);
    cJSON *r2 = job_to_record(f->j);
    /* Identical except for the history line the recovery added. */
    cJSON_DeleteItemFromObject(r1, "history");
    cJSON_DeleteItemFromObject(r2, "history");
    cJSON_DeleteItemFromObject(r1, "updated_at");
    cJSON_DeleteItemFromObject(r2, "updated_at");
    assert_true(cJSON_Compare(r1, r2, 1));
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    const char *err = NULL;
    cJSON *bad = cJSON_Parse("{\"id\":\"x\"}");
    assert_null(job_from_record(bad, &err));
    assert_non_null(err);
    cJSON_Delete(bad);
}

static void test_resume_create_dataset_unknown(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    expect_send(f, JOB_OP_CREATE_DATASET);
    job_mark_sent(f->j, JOB_OP_CREATE_DATASET, f->now); /* intent persisted, then crash */
    restart(f);
    expect_send(f, JOB_OP_CREATE_DATASET);
    cJSON *last = cJSON_GetArrayItem(f->j->history, cJSON_GetArraySize(f->j->history) - 1);
    assert_non_null(strstr(json_str(last, "note"), "orphan"));
}

static void test_resume_upload_unknown_unexpired(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    job_mark_sent(f->j, JOB_OP_UPLOAD, f->now);
    restart(f);
    expect_send(f, JOB_OP_CHECK_UPLOAD);
    reply(f, JOB_OP_CHECK_UPLOAD, 200, "{\"status\":\"uninitialised\"}");
    expect_send(f, JOB_OP_UPLOAD); /* same URL, PUT again */
    assert_non_null(f->j->upload_url);
}

static void test_resume_upload_unknown_expired(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 60000));
    job_mark_sent(f->j, JOB_OP_UPLOAD, f->now);
    f->now += 120000;
    restart(f);
    expect_send(f, JOB_OP_CHECK_UPLOAD);
    reply(f, JOB_OP_CHECK_UPLOAD, 200, "{\"status\":\"uninitialised\"}");
    expect_send(f, JOB_OP_UPLOAD_URL);
}

static void test_resume_upload_landed(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    net_error(f, JOB_OP_UPLOAD, JOB_NET_TIMEOUT); /* outcome unknown, no restart */
    wait_out(f);
    expect_send(f, JOB_OP_CHECK_UPLOAD);
    reply(f, JOB_OP_CHECK_UPLOAD, 200, "{\"status\":\"queued\"}");
    assert_int_equal(f->j->state, JOB_IMPORTING);
    assert_true(f->j->uploaded);
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT);
}

static void test_upload_403_new_url(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    reply(f, JOB_OP_UPLOAD, 403, "<Error><Code>AccessDenied</Code></Error>");
    assert_int_equal(f->j->state, JOB_UPLOADING);
    /* A refused URL is retried with backoff, not at once. */
    assert_true(f->j->retry_at > f->now);
    assert_int_equal(f->j->attempts, 1);
    wait_out(f);
    expect_send(f, JOB_OP_UPLOAD_URL);
    for (int i = 0; i < 5; i++) {
        reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
        reply(f, JOB_OP_UPLOAD, 403, "");
        wait_out(f);
    }
    assert_int_equal(f->j->state, JOB_FAILED);
}

/* Replies with the largest jitter: every delay is its upper bound. */
static bool reply_max(fixture *f, job_op op, long status, const char *body)
{
    job_reply r = {
        .net = JOB_NET_OK, .status = status, .body = body, .body_len = body ? strlen(body) : 0};
    job_mark_sent(f->j, op, f->now);
    return job_on_reply(f->j, op, &r, &f->p, f->now, UINT64_MAX);
}

static const char *last_history_note(const job *j)
{
    const cJSON *last = cJSON_GetArrayItem(j->history, cJSON_GetArraySize(j->history) - 1);
    return json_str(last, "note");
}

/* The storm of issue 9: an upload URL answering 500 every time. The check of the unknown
 * outcome between two PUTs must not reset the count: attempts and delays grow (up to the
 * cap), the notes count true attempts, and the job fails at the bound with the last status. */
static void test_upload_500_forever_backs_off_and_fails(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    expect_send(f, JOB_OP_UPLOAD_URL);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 86400000LL * 7));
    int64_t prev_delay = 0, start = f->now;
    int puts = 0;
    for (;;) {
        expect_send(f, JOB_OP_UPLOAD);
        puts++;
        reply_max(f, JOB_OP_UPLOAD, 500, "{\"error\":\"store down\"}");
        if (f->j->state == JOB_FAILED)
            break;
        assert_int_equal(f->j->attempts, puts);
        char want[64];
        snprintf(want, sizeof want, "attempt %d of %d failed", puts, JOB_RETRY_ATTEMPTS_MAX);
        assert_non_null(strstr(last_history_note(f->j), want));
        int64_t delay = f->j->retry_at - f->now;
        assert_true(delay >= prev_delay);
        assert_true(delay <= f->p.retry_cap_ms);
        prev_delay = delay;
        f->now = f->j->retry_at;
        expect_send(f, JOB_OP_CHECK_UPLOAD);
        reply_max(f, JOB_OP_CHECK_UPLOAD, 200, "{\"status\":\"uninitialised\"}");
        assert_int_equal(f->j->attempts, puts); /* the check is not progress */
    }
    assert_int_equal(puts, JOB_RETRY_ATTEMPTS_MAX);
    assert_int_equal(prev_delay, f->p.retry_cap_ms);
    /* Half an hour to an hour of trying with the defaults (here every wait at its bound). */
    assert_true(f->now - start >= 30LL * 60000 && f->now - start <= 90LL * 60000);
    cJSON *e = job_error_json(f->j);
    assert_string_equal(json_str(e, "code"), "api_rejected");
    assert_string_equal(json_str(e, "stage"), "uploading");
    assert_int_equal(json_int64(e, "http_status", 0), 500);
    assert_non_null(strstr(json_str(e, "message"), "gave up after 20 attempts"));
    assert_non_null(strstr(json_str(e, "message"), "HTTP 500"));
    assert_string_equal(json_str(cJSON_GetObjectItem(e, "api_error"), "error"), "store down");
    cJSON_Delete(e);
    /* A retry of the job gets the whole bound again: one more 500 does not fail it. */
    assert_int_equal(job_retry(f->j, f->now), 0);
    validated(f);
    expect_send(f, JOB_OP_CHECK_UPLOAD);
    reply(f, JOB_OP_CHECK_UPLOAD, 500, "");
    assert_int_equal(f->j->state, JOB_UPLOADING);
    assert_int_equal(f->j->attempts, 1);
}

/* A create answering 500 every time, with the "outcome unknown" lookups in between. */
static void test_create_batch_500_forever_fails(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_BATCH);
    int creates = 0;
    for (;;) {
        expect_send(f, JOB_OP_CREATE_BATCH);
        creates++;
        reply(f, JOB_OP_CREATE_BATCH, 503, "upstream");
        if (f->j->state == JOB_FAILED)
            break;
        assert_int_equal(f->j->attempts, creates);
        wait_out(f);
        expect_send(f, JOB_OP_FIND_BATCH);
        reply(f, JOB_OP_FIND_BATCH, 200, "{\"results\":[],\"meta\":{\"count\":0}}");
        assert_int_equal(f->j->attempts, creates);
    }
    assert_int_equal(creates, JOB_RETRY_ATTEMPTS_MAX);
    assert_int_equal(f->j->http_status, 503);
    /* Its outcome is unknown: a retry of the job looks for the batch before creating. */
    assert_int_equal(f->j->pending_op, JOB_OP_CREATE_BATCH);
    assert_non_null(strstr(f->j->error_message, "create_batch"));
}

/* Network errors and timeouts are bounded too, and fail as timeout with the error text. */
static void test_network_errors_bounded(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_PROCESSING);
    for (int i = 0; i < JOB_RETRY_ATTEMPTS_MAX && f->j->state == JOB_PROCESSING; i++) {
        wait_out(f);
        expect_send(f, JOB_OP_BATCH_STATUS);
        net_error(f, JOB_OP_BATCH_STATUS, i % 2 ? JOB_NET_TIMEOUT : JOB_NET_FAILED);
    }
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "timeout");
    assert_non_null(strstr(f->j->error_message, "boom"));
}

/* A success of the step itself is progress: the count starts over. A Retry-After is still
 * honoured at any attempt. */
static void test_progress_resets_and_retry_after_still_honoured(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    for (int i = 0; i < 5; i++) {
        reply(f, JOB_OP_CREATE_DATASET, 500, "{}");
        wait_out(f);
    }
    reply_ra(f, JOB_OP_CREATE_DATASET, 429, "7", 0);
    assert_int_equal(f->j->retry_at, f->now + 7000);
    assert_int_equal(f->j->attempts, 6);
    f->now = f->j->retry_at;
    reply(f, JOB_OP_CREATE_DATASET, 201, "{\"id\":\"" DATASET "\"}");
    assert_int_equal(f->j->attempts, 0);
    assert_null(f->j->last_error);
}

/* A reply too large to read: for a create its effect is unknown and is checked first; never
 * "nothing was changed". A read is asked again, and both are bounded. */
static void test_reply_too_large(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_BATCH);
    expect_send(f, JOB_OP_CREATE_BATCH);
    job_mark_sent(f->j, JOB_OP_CREATE_BATCH, f->now);
    job_reply big = {
        .net = JOB_NET_TOO_LARGE, .status = 201, .error_text = "response body larger than 8 MiB"};
    assert_false(job_on_reply(f->j, JOB_OP_CREATE_BATCH, &big, &f->p, f->now, 0));
    assert_int_equal(f->j->state, JOB_CREATING_BATCH);
    assert_int_equal(f->j->pending_op, JOB_OP_CREATE_BATCH);
    assert_non_null(strstr(f->j->last_error, "too large"));
    assert_null(strstr(last_history_note(f->j), "it was a read"));
    wait_out(f);
    expect_send(f, JOB_OP_FIND_BATCH);
    for (int i = 1; i < JOB_RETRY_ATTEMPTS_MAX; i++) {
        job_mark_sent(f->j, JOB_OP_FIND_BATCH, f->now);
        job_on_reply(f->j, JOB_OP_FIND_BATCH, &big, &f->p, f->now, 0);
        if (f->j->state == JOB_FAILED)
            break;
        wait_out(f);
        expect_send(f, JOB_OP_FIND_BATCH);
    }
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_non_null(strstr(f->j->error_message, "too large to read"));
    assert_null(strstr(f->j->error_message, "nothing was changed"));
    assert_int_equal(f->j->pending_op, JOB_OP_CREATE_BATCH);
}

/* A 4xx whose body is too large to read is still a definitive answer: the job fails with
 * its status (a 401 still holds), and nothing of the cut-off body is kept. */
static void test_4xx_too_large_fails_by_status(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    expect_send(f, JOB_OP_CREATE_DATASET);
    job_mark_sent(f->j, JOB_OP_CREATE_DATASET, f->now);
    job_reply big401 = {.net = JOB_NET_TOO_LARGE, .status = 401, .body = "x", .body_len = 1};
    assert_true(job_on_reply(f->j, JOB_OP_CREATE_DATASET, &big401, &f->p, f->now, 0));
    assert_int_equal(f->j->state, JOB_CREATING_DATASET);
    expect_send(f, JOB_OP_CREATE_DATASET);
    job_mark_sent(f->j, JOB_OP_CREATE_DATASET, f->now);
    job_reply big = {.net = JOB_NET_TOO_LARGE, .status = 400, .body = "{\"a\":", .body_len = 5};
    assert_false(job_on_reply(f->j, JOB_OP_CREATE_DATASET, &big, &f->p, f->now, 0));
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "api_rejected");
    assert_int_equal(f->j->http_status, 400);
    assert_null(f->j->api_error);
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
}

/* HTTP 401: the token is wrong for every job. The job stays, its call is made again, nothing
 * counts as a failed attempt, and the caller is told. A 403 still fails the job. */
static void test_401_holds_not_fails(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    expect_send(f, JOB_OP_CREATE_DATASET);
    for (int i = 0; i < JOB_RETRY_ATTEMPTS_MAX * 2; i++) {
        assert_true(reply_max(f, JOB_OP_CREATE_DATASET, 401, "{\"detail\":\"bad token\"}"));
        assert_int_equal(f->j->state, JOB_CREATING_DATASET);
        assert_int_equal(f->j->attempts, 0);
        assert_int_equal(f->j->retry_at, 0);
        /* A 401 did not act: no unknown outcome is left to check. */
        assert_int_equal(f->j->pending_op, JOB_OP_NONE);
        assert_non_null(strstr(f->j->last_error, "401"));
        expect_send(f, JOB_OP_CREATE_DATASET);
    }
    reply(f, JOB_OP_CREATE_DATASET, 201, "{\"id\":\"" DATASET "\"}");
    assert_int_equal(f->j->state, JOB_UPLOADING);
    assert_null(f->j->last_error);
    /* A 401 to the check of an unknown upload keeps the upload's unknown outcome. */
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    net_error(f, JOB_OP_UPLOAD, JOB_NET_TIMEOUT);
    wait_out(f);
    expect_send(f, JOB_OP_CHECK_UPLOAD);
    assert_true(reply_max(f, JOB_OP_CHECK_UPLOAD, 401, ""));
    assert_int_equal(f->j->pending_op, JOB_OP_UPLOAD);
    expect_send(f, JOB_OP_CHECK_UPLOAD);
    /* The presigned PUT carries no token: its 401 is a refused URL, not a token problem. */
    reply(f, JOB_OP_CHECK_UPLOAD, 200, "{\"status\":\"uninitialised\"}");
    expect_send(f, JOB_OP_UPLOAD);
    assert_false(reply_max(f, JOB_OP_UPLOAD, 401, ""));
    assert_null(f->j->upload_url);
    /* A 403 to an API call fails only this job. */
    wait_out(f);
    expect_send(f, JOB_OP_UPLOAD_URL);
    assert_false(reply_max(f, JOB_OP_UPLOAD_URL, 403, "{\"detail\":\"no access\"}"));
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_int_equal(f->j->http_status, 403);
}

static void test_expiring_url_not_used(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 10000)); /* inside the margin */
    expect_send(f, JOB_OP_UPLOAD_URL);
}

static void test_resume_batch_create_found(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_BATCH);
    job_mark_sent(f->j, JOB_OP_CREATE_BATCH, f->now);
    restart(f);
    expect_send(f, JOB_OP_FIND_BATCH);
    reply(f, JOB_OP_FIND_BATCH, 200,
          "{\"results\":[{\"id\":\"other\",\"datasets\":[{\"id\":\"x\"}],\"status\":\"READY\"},"
          "{\"id\":\"" BATCH "\",\"datasets\":[{\"id\":\"" DATASET "\"}],"
          "\"status\":\"UNINITIALISED\"}],\"meta\":{\"count\":2}}");
    assert_string_equal(f->j->batch_id, BATCH);
    expect_send(f, JOB_OP_SETUP); /* not a second create */
}

static void test_resume_batch_create_not_found(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_BATCH);
    net_error(f, JOB_OP_CREATE_BATCH, JOB_NET_FAILED);
    wait_out(f);
    expect_send(f, JOB_OP_FIND_BATCH);
    reply(f, JOB_OP_FIND_BATCH, 200, "{\"results\":[],\"meta\":{\"count\":0}}");
    expect_send(f, JOB_OP_CREATE_BATCH);
}

static void test_resume_batch_found_already_set_up(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_BATCH);
    job_mark_sent(f->j, JOB_OP_CREATE_BATCH, f->now);
    restart(f);
    reply(f, JOB_OP_FIND_BATCH, 200,
          "{\"results\":[{\"id\":\"" BATCH "\",\"datasets\":[{\"id\":\"" DATASET "\"}],"
          "\"status\":\"PROCESSING\"}]}");
    job_action a = next(f);
    assert_int_equal(f->j->state, JOB_PROCESSING);
    assert_true(a.kind == JOB_ACT_WAIT || (a.kind == JOB_ACT_SEND && a.op == JOB_OP_BATCH_STATUS));
}

static void test_resume_setup_unknown(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_SETTING_UP);
    job_mark_sent(f->j, JOB_OP_SETUP, f->now);
    restart(f);
    expect_send(f, JOB_OP_CHECK_SETUP);
    reply(f, JOB_OP_CHECK_SETUP, 200, "{\"status\":\"UNINITIALISED\"}");
    expect_send(f, JOB_OP_SETUP);
    net_error(f, JOB_OP_SETUP, JOB_NET_TIMEOUT);
    wait_out(f);
    expect_send(f, JOB_OP_CHECK_SETUP);
    reply(f, JOB_OP_CHECK_SETUP, 200, "{\"status\":\"PROCESSING\"}");
    assert_int_equal(f->j->state, JOB_SETTING_UP);
    next(f);
    assert_int_equal(f->j->state, JOB_PROCESSING);
}

static void test_resume_upload_url_unknown(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_UPLOADING);
    job_mark_sent(f->j, JOB_OP_UPLOAD_URL, f->now);
    restart(f);
    expect_send(f, JOB_OP_UPLOAD_URL);
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
}

static void test_resume_validating(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_VALIDATING);
    restart(f);
    assert_int_equal(next(f).kind, JOB_ACT_VALIDATE);
}

static void test_cancel_and_retry(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_IMPORTING);
    assert_int_equal(job_cancel(f->j, f->now), 0);
    assert_int_equal(f->j->state, JOB_CANCELLED);
    assert_int_equal(job_cancel(f->j, f->now), -EINVAL);
    cJSON *e = job_error_json(f->j);
    assert_string_equal(json_str(e, "code"), "cancelled");
    assert_string_equal(json_str(e, "stage"), "importing");
    cJSON_Delete(e);
    assert_int_equal(job_retry(f->j, f->now), 0);
    assert_int_equal(f->j->state, JOB_VALIDATING);
    assert_null(f->j->error_code);
    validated(f);
    /* The upload had landed: the job goes straight back to polling the import. */
    next(f);
    assert_int_equal(f->j->state, JOB_IMPORTING);
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT);
}

static void test_retry_refused_when_not_failed(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_CREATING_DATASET);
    assert_int_equal(job_retry(f->j, f->now), -EINVAL);
}

static void test_public_job_fields(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_IMPORTING);
    cJSON *p = job_to_public(f->j, true);
    static const char *const keys[] = {"id",
                                       "name",
                                       "state",
                                       "dataset_id",
                                       "import_id",
                                       "batch_id",
                                       "records",
                                       "bytes_total",
                                       "bytes_sent",
                                       "import_status",
                                       "accepted_count",
                                       "rejected_count",
                                       "batch_status",
                                       "total_task_count",
                                       "attempts",
                                       "retry_at",
                                       "last_error",
                                       "created_at",
                                       "updated_at",
                                       "history"};
    for (size_t i = 0; i < BD_ARRAY_LEN(keys); i++)
        assert_non_null(cJSON_GetObjectItem(p, keys[i]));
    assert_null(cJSON_GetObjectItem(p, "upload_url")); /* a capability: never shown */
    assert_string_equal(json_str(p, "state"), "importing");
    cJSON_Delete(p);
}

/* ---- hostile API text (batchd(8), HOSTILE AND ACCIDENTAL INPUT) ---- */

#define SECRET "tok3nAbCdEfGhIjKlMnOpQrStUvWxYz0123456"

static char *b64_of(const char *in, bool url)
{
    const char *al = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                         : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = (const unsigned char *)in;
    size_t n = strlen(in);
    strbuf sb = {0};
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        char q[4] = {al[v >> 18 & 63], al[v >> 12 & 63], i + 1 < n ? al[v >> 6 & 63] : '=',
                     i + 2 < n ? al[v & 63] : '='};
        strbuf_append(&sb, q, 4);
    }
    return strbuf_steal(&sb);
}

/* The six echoes of the token the tests put in bodies, and look for afterwards. */
static char *echoes[6];

static void make_echoes(void)
{
    strbuf u = {0}, pc = {0};
    for (const char *c = SECRET; *c; c++) {
        strbuf_printf(&u, "\\u%04x", (unsigned char)*c);
        strbuf_printf(&pc, "%%%02X", (unsigned char)*c);
    }
    echoes[0] = xstrdup(SECRET);
    echoes[1] = strbuf_steal(&u);
    echoes[2] = strbuf_steal(&pc);
    echoes[3] = b64_of("x" SECRET, false);
    echoes[4] = b64_of("Token " SECRET, true);
    echoes[5] = xasprintf("%.12s\r\n %s", SECRET, &SECRET[12]);
}

static void free_echoes(void)
{
    for (size_t i = 0; i < BD_ARRAY_LEN(echoes); i++) {
        free(echoes[i]);
        echoes[i] = NULL;
    }
}

/* What must hold of every text batchd keeps from the API. */
static void assert_clean_text(const char *text, size_t max)
{
    assert_true(utf8_valid(text, strlen(text)));
    assert_true(strlen(text) <= max);
    assert_null(strstr(text, SECRET));
    assert_false(apitext_has_secret(text, strlen(text), SECRET));
    /* the token's own encodings, as a proxy would echo them */
    char *plain_b64 = b64_of(SECRET, false), *tok_b64 = b64_of("Token " SECRET, false);
    assert_null(strstr(text, plain_b64));
    assert_null(strstr(text, tok_b64));
    free(plain_b64);
    free(tok_b64);
    assert_null(strstr(text, echoes[2]));
    assert_null(strstr(text, echoes[3]));
    assert_null(strstr(text, echoes[4]));
}

/* error.json, the record (and its round trip), last_error and the notes. */
static void assert_job_clean(const job *j)
{
    cJSON *ej = job_error_json(j);
    char *text = json_print_pretty(ej);
    cJSON_Delete(ej);
    assert_clean_text(text, 64 * 1024);
    free(text);

    cJSON *rec = job_to_record(j);
    text = json_print(rec);
    cJSON_Delete(rec);
    assert_clean_text(text, 1u << 20);
    cJSON *back = cJSON_Parse(text);
    assert_non_null(back);
    const char *err = NULL;
    job *j2 = job_from_record(back, &err);
    assert_non_null(j2);
    cJSON_Delete(back);
    cJSON *rec2 = job_to_record(j2);
    char *text2 = json_print(rec2);
    assert_string_equal(text, text2);
    free(text2);
    cJSON_Delete(rec2);
    job_free(j2);
    free(text);

    if (j->last_error)
        assert_clean_text(j->last_error, APITEXT_MAX);
    const cJSON *h;
    cJSON_ArrayForEach(h, j->history)
    {
        assert_clean_text(json_str(h, "note"), APITEXT_MAX);
    }
    cJSON *pub = job_to_public(j, true);
    text = json_print(pub);
    cJSON_Delete(pub);
    assert_clean_text(text, 1u << 20);
    free(text);
}

static void reply_secret(fixture *f, job_op op, long status, const char *body, size_t len,
                         const char *retry_after, const char *error_text)
{
    job_reply r = {.net = error_text ? JOB_NET_FAILED : JOB_NET_OK,
                   .status = status,
                   .body = body,
                   .body_len = len,
                   .retry_after = retry_after,
                   .error_text = error_text,
                   .secret = SECRET};
    job_mark_sent(f->j, op, f->now);
    job_on_reply(f->j, op, &r, &f->p, f->now, 0);
}

/* A body with every echo, invalid UTF-8 and control characters. */
static char *hostile_text(void)
{
    strbuf sb = {0};
    for (size_t i = 0; i < BD_ARRAY_LEN(echoes); i++)
        strbuf_printf(&sb, "echo %zu: %s \xff\xc0\xaf\xed\xa0\x80\x1b[2J\x7f; ", i, echoes[i]);
    return strbuf_steal(&sb);
}

static void test_hostile_huge_body(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_CREATING_DATASET);
    char *head = hostile_text();
    size_t n = 8u << 20;
    char *body = xmalloc(n + 1);
    memset(body, 'A', n);
    body[n] = '\0';
    memcpy(body, head, strlen(head));
    memcpy(body + n - strlen(head), head, strlen(head));
    free(head);
    reply_secret(f, JOB_OP_CREATE_DATASET, 422, body, n, NULL, NULL);
    free(body);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "api_rejected");
    assert_true(cJSON_IsString(f->j->api_error));
    assert_true(strlen(f->j->api_error->valuestring) <= APITEXT_MAX);
    assert_non_null(strstr(f->j->api_error->valuestring, APITEXT_REDACTED));
    assert_job_clean(f->j);
    free_echoes();
}

static void test_hostile_deep_body(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_CREATING_DATASET);
    strbuf sb = {0};
    for (int i = 0; i < 100000; i++)
        strbuf_putc(&sb, '[');
    strbuf_printf(&sb, "\"%s\"", echoes[1]);
    for (int i = 0; i < 100000; i++)
        strbuf_putc(&sb, ']');
    reply_secret(f, JOB_OP_CREATE_DATASET, 400, sb.data, sb.len, NULL, NULL);
    strbuf_free(&sb);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_true(cJSON_IsString(f->j->api_error));
    assert_job_clean(f->j);

    /* 999 deep parses for cJSON, but the record holding it would not */
    fixture g = {.now = T0};
    job_params_default(&g.p);
    g.j = job_new("01JDXYZ2", "job-b", "job-b", g.now);
    drive_to(&g, JOB_CREATING_DATASET);
    for (int i = 0; i < 999; i++)
        strbuf_putc(&sb, '[');
    for (int i = 0; i < 999; i++)
        strbuf_putc(&sb, ']');
    reply_secret(&g, JOB_OP_CREATE_DATASET, 400, sb.data, sb.len, NULL, NULL);
    strbuf_free(&sb);
    assert_int_equal(g.j->state, JOB_FAILED);
    assert_job_clean(g.j);
    job_free(g.j);
    free_echoes();
}

static void test_hostile_json_body(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_CREATING_DATASET);
    char *t = hostile_text();
    cJSON *b = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(b, "error");
    cJSON_AddStringToObject(err, "detail", t);
    cJSON_AddStringToObject(b, SECRET, echoes[5]);
    char *body = cJSON_PrintUnformatted(b); /* raw bytes, as an API would send them */
    cJSON_Delete(b);
    free(t);
    reply_secret(f, JOB_OP_CREATE_DATASET, 400, body, strlen(body), NULL, NULL);
    free(body);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_true(cJSON_IsObject(f->j->api_error));
    assert_non_null(strstr(f->j->error_message, APITEXT_REDACTED));
    assert_job_clean(f->j);
    free_echoes();
}

static void test_hostile_retry_texts(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_CREATING_DATASET);
    char *t = hostile_text();
    reply_secret(f, JOB_OP_CREATE_DATASET, 0, NULL, 0, NULL, t);
    assert_int_equal(f->j->state, JOB_CREATING_DATASET);
    assert_non_null(f->j->last_error);
    assert_job_clean(f->j);
    wait_out(f);
    char *ra = xasprintf("1 %s", SECRET);
    reply_secret(f, JOB_OP_FIND_BATCH, 503, t, strlen(t), ra, NULL);
    free(ra);
    assert_job_clean(f->j);
    free(t);
    free_echoes();
}

/* A step that keeps failing gives up with the last reply as api_error: a 5xx body that
 * echoes the token is cleaned on that path too. */
static void test_hostile_body_on_give_up(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_CREATING_DATASET);
    char *t = hostile_text();
    for (int i = 0; i < JOB_RETRY_ATTEMPTS_MAX && f->j->state != JOB_FAILED; i++) {
        reply_secret(f, JOB_OP_CREATE_DATASET, 500, t, strlen(t), NULL, NULL);
        f->j->pending_op = JOB_OP_NONE; /* as if each unknown outcome had been resolved */
        wait_out(f);
    }
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_non_null(f->j->api_error);
    assert_job_clean(f->j);
    free(t);
    free_echoes();
}

static void test_hostile_import_errors(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_IMPORTING);
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT);
    char *t = hostile_text();
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "status", "failed");
    cJSON_AddStringToObject(b, "reason", t);
    cJSON *errs = cJSON_AddArrayToObject(b, "errors");
    for (int i = 0; i < 5000; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "record_index", i);
        cJSON_AddStringToObject(e, "field", echoes[i % 6]);
        cJSON_AddStringToObject(e, "reason", t);
        cJSON_AddItemToArray(errs, e);
    }
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    free(t);
    reply_secret(f, JOB_OP_GET_IMPORT, 200, body, strlen(body), NULL, NULL);
    free(body);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "import_failed");
    cJSON *ej = job_error_json(f->j);
    assert_non_null(strstr(json_str(ej, "message"), "more record errors not listed"));
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(ej, "errors")) > 0);
    cJSON_Delete(ej);
    assert_job_clean(f->j);
    free_echoes();
}

static void test_hostile_batch_status(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_PROCESSING);
    wait_out(f);
    expect_send(f, JOB_OP_BATCH_STATUS);
    char *body = xasprintf("{\"status\":\"ERROR\",\"message\":\"%s\"}", echoes[1]);
    reply_secret(f, JOB_OP_BATCH_STATUS, 200, body, strlen(body), NULL, NULL);
    free(body);
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_job_clean(f->j);
    free_echoes();
}

/* Names are bytes: a record keeps them exactly, and stays valid UTF-8. */
static void test_record_keeps_byte_names(void **state)
{
    (void)state;
    job *j = job_new("01JDNAME", "n\xff\x1b[31m", "n\xff\x1b[31m-2", T0);
    free(j->upload_path);
    j->upload_path = xstrdup("/spool/active/n\xff/d\xc0.jsonl");
    cJSON *rec = job_to_record(j);
    char *text = json_print(rec);
    cJSON_Delete(rec);
    assert_true(utf8_valid(text, strlen(text)));
    cJSON *back = cJSON_Parse(text);
    free(text);
    const char *err = NULL;
    job *j2 = job_from_record(back, &err);
    cJSON_Delete(back);
    assert_non_null(j2);
    assert_string_equal(j2->name, j->name);
    assert_string_equal(j2->dir, j->dir);
    assert_string_equal(j2->upload_path, j->upload_path);
    job_free(j2);
    job_free(j);
}

/* Ids from the API never reach a URL path unless they are plain. */
static void test_bad_ids_fail_the_job(void **state)
{
    (void)state;
    static const char *const bad[] = {"..",  "a/../b", "%2e%2e",      "x?y=1",  "x#f",
                                      "a b", "",       "caf\xc3\xa9", "\x1b[2J"};
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        for (int which = 0; which < 4; which++) {
            fixture g = {.now = T0};
            job_params_default(&g.p);
            g.j = job_new("01JDID", "job-id", "job-id", g.now);
            cJSON *b = cJSON_CreateObject();
            job_op op;
            if (which == 0) {
                drive_to(&g, JOB_CREATING_DATASET);
                op = JOB_OP_CREATE_DATASET;
                cJSON_AddStringToObject(b, "id", bad[i]);
            } else if (which == 1) {
                drive_to(&g, JOB_UPLOADING);
                op = JOB_OP_UPLOAD_URL;
                cJSON_AddStringToObject(b, "upload_url", "http://127.0.0.1:1/u");
                cJSON_AddStringToObject(b, "import_id", bad[i]);
            } else if (which == 2) {
                drive_to(&g, JOB_CREATING_BATCH);
                op = JOB_OP_CREATE_BATCH;
                cJSON_AddStringToObject(b, "id", bad[i]);
            } else {
                drive_to(&g, JOB_CREATING_BATCH);
                g.j->pending_op = JOB_OP_CREATE_BATCH; /* outcome unknown: look it up */
                op = JOB_OP_FIND_BATCH;
                cJSON *res = cJSON_AddArrayToObject(b, "results");
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "id", bad[i]);
                cJSON_AddStringToObject(e, "dataset_id", DATASET);
                cJSON_AddItemToArray(res, e);
            }
            expect_send(&g, op);
            char *body = cJSON_PrintUnformatted(b);
            cJSON_Delete(b);
            reply(&g, op, which == 3 ? 200 : 201, body);
            free(body);
            assert_int_equal(g.j->state, JOB_FAILED);
            assert_string_equal(g.j->error_code, "api_rejected");
            assert_non_null(strstr(g.j->error_message, "cannot be used in a URL"));
            /* it names what exists */
            if (which > 0)
                assert_non_null(strstr(g.j->error_message, "dataset " DATASET));
            /* nothing of it reached the record's ids */
            assert_true(g.j->dataset_id == NULL || strcmp(g.j->dataset_id, DATASET) == 0);
            assert_true(g.j->import_id == NULL || strcmp(g.j->import_id, IMPORT) == 0);
            assert_null(g.j->batch_id);
            /* and the message shows it escaped */
            assert_null(strchr(g.j->error_message, '\x1b'));
            assert_true(utf8_valid(g.j->error_message, strlen(g.j->error_message)));
            job_free(g.j);
        }
        /* a record from before the check: no request is built from it */
        job *old = job_new("01JDOLD", "old", "old", T0);
        old->batch_id = xstrdup(bad[i]);
        job_request rq;
        assert_int_equal(job_build_request(old, JOB_OP_BATCH_STATUS, &rq), -EINVAL);
        job_free(old);
    }
}

/* A step that keeps failing on the network gives up with the transport's text, which the
 * network controls: cleaned there too. */
static void test_hostile_error_text_on_give_up(void **state)
{
    fixture *f = *state;
    make_echoes();
    drive_to(f, JOB_CREATING_DATASET);
    char *t = hostile_text();
    for (int i = 0; i < JOB_RETRY_ATTEMPTS_MAX && f->j->state != JOB_FAILED; i++) {
        reply_secret(f, JOB_OP_CREATE_DATASET, 0, NULL, 0, NULL, t);
        f->j->pending_op = JOB_OP_NONE; /* as if each unknown outcome had been resolved */
        wait_out(f);
    }
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_job_clean(f->j);
    free(t);
    free_echoes();
}

/* An id that is not a string (a number such as 12345, an object) fails the job with a
 * message that shows what was sent, for each reply that creates a resource. */
static void test_non_string_ids_named(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"id\": 12345}",
        "{\"upload_url\": \"http://127.0.0.1:1/u\", \"import_id\": 12345}",
        "{\"id\": 12345}",
    };
    static const job_state states[] = {JOB_CREATING_DATASET, JOB_UPLOADING, JOB_CREATING_BATCH};
    static const job_op ops[] = {JOB_OP_CREATE_DATASET, JOB_OP_UPLOAD_URL, JOB_OP_CREATE_BATCH};
    for (size_t i = 0; i < BD_ARRAY_LEN(bodies); i++) {
        fixture g = {.now = T0};
        job_params_default(&g.p);
        g.j = job_new("01JDNUM", "job-num", "job-num", g.now);
        drive_to(&g, states[i]);
        expect_send(&g, ops[i]);
        reply(&g, ops[i], 201, bodies[i]);
        assert_int_equal(g.j->state, JOB_FAILED);
        assert_string_equal(g.j->error_code, "api_rejected");
        assert_non_null(strstr(g.j->error_message, "12345 is not a string"));
        job_free(g.j);
    }
}

/* error.json stays within 64 KiB, and says how many errors it leaves out. */
static void test_error_json_capped(void **state)
{
    fixture *f = *state;
    drive_to(f, JOB_VALIDATING);
    cJSON *errs = cJSON_CreateArray();
    for (int i = 0; i < 10000; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "line", i + 1);
        cJSON_AddStringToObject(e, "field", "prompt");
        cJSON_AddStringToObject(e, "message",
                                "missing (schema is strict), and a long text besides");
        cJSON_AddItemToArray(errs, e);
    }
    job_validation v = {.ok = false,
                        .code = "invalid_records",
                        .message = "10000 records do not match the schema",
                        .errors = errs};
    job_on_validated(f->j, &v, f->now);
    cJSON_Delete(errs);
    cJSON *ej = job_error_json(f->j);
    char *text = json_print_pretty(ej);
    assert_true(strlen(text) <= 64 * 1024);
    assert_non_null(strstr(json_str(ej, "message"), "more errors not listed"));
    int kept = cJSON_GetArraySize(cJSON_GetObjectItem(ej, "errors"));
    assert_true(kept > 100 && kept < 10000);
    free(text);
    cJSON_Delete(ej);
}

/* ---- append jobs ---- */

#define TARGET_ID "01JDTARGET"
#define SYNC      "01936a00-1111-7222-8333-944455556666"

/* Validation of an append job: the caller has resolved the target (a job, or ids). */
static void append_validated(fixture *f, bool by_job, const char *dataset)
{
    cJSON *spec = cJSON_Parse(spec_json);
    job_validation v = {.ok = true,
                        .spec = spec,
                        .upload_path = "/spool/active/job-a/d.jsonl",
                        .upload_name = "d.jsonl",
                        .records = 3,
                        .sha256 = SHA256_HEX,
                        .bytes = 120,
                        .append = true,
                        .append_job_id = by_job ? TARGET_ID : NULL,
                        .append_job_name = by_job ? "standing" : NULL,
                        .dataset_id = dataset,
                        .batch_id = BATCH};
    job_on_validated(f->j, &v, f->now);
    cJSON_Delete(spec);
}

static const char *sync_body(const char *status)
{
    static char buf[512];
    snprintf(buf, sizeof buf,
             "{\"batch_id\":\"" BATCH "\",\"dataset_id\":\"" DATASET "\",\"sync_id\":\"" SYNC
             "\",\"created_at\":\"2026-09-01T12:00:00Z\",\"updated_at\":\"2026-09-01T12:00:00Z\","
             "\"status\":\"%s\"%s}",
             status,
             strcmp(status, "complete") == 0
                 ? ",\"tasks_created\":5,\"datapoints_processed\":5,\"groups_created\":1,"
                   "\"groups_expanded\":1"
             : strcmp(status, "failed") == 0 ? ",\"reason\":\"batch must be in READY status\""
                                             : "");
    return buf;
}

/* From queued to syncing along the happy path: no dataset or batch is created. */
static void append_to_syncing(fixture *f, bool by_job)
{
    assert_int_equal(next(f).kind, JOB_ACT_VALIDATE);
    append_validated(f, by_job, DATASET);
    assert_int_equal(f->j->state, JOB_UPLOADING);
    assert_true(f->j->append.on);
    expect_send(f, JOB_OP_UPLOAD_URL);
    job_request rq;
    assert_int_equal(job_build_request(f->j, JOB_OP_UPLOAD_URL, &rq), 0);
    assert_string_equal(rq.path, "/api/v1/data-collection/datasets/" DATASET "/upload-url/d.jsonl");
    job_request_clear(&rq);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    expect_send(f, JOB_OP_UPLOAD);
    reply(f, JOB_OP_UPLOAD, 200, "");
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT);
    reply(f, JOB_OP_GET_IMPORT, 200, "{\"status\":\"complete\",\"accepted_count\":3}");
    assert_int_equal(f->j->state, JOB_SYNCING);
}

static void test_append_happy_path(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    assert_true(job_op_has_side_effect(JOB_OP_SYNC));
    job_request rq;
    assert_int_equal(job_build_request(f->j, JOB_OP_SYNC, &rq), 0);
    assert_string_equal(rq.method, "POST");
    assert_string_equal(rq.path, "/api/v1/data-collection/batches/" BATCH "/sync");
    assert_null(rq.body);
    job_request_clear(&rq);
    reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
    assert_string_equal(f->j->append.sync_id, SYNC);
    /* polled on the [poll] schedule */
    job_action a = next(f);
    assert_int_equal(a.kind, JOB_ACT_WAIT);
    assert_true(a.until > f->now);
    wait_out(f);
    expect_send(f, JOB_OP_GET_SYNC);
    assert_int_equal(job_build_request(f->j, JOB_OP_GET_SYNC, &rq), 0);
    assert_string_equal(rq.method, "GET");
    assert_string_equal(rq.path, "/api/v1/data-collection/batches/" BATCH "/syncs/" SYNC);
    job_request_clear(&rq);
    reply(f, JOB_OP_GET_SYNC, 200, sync_body("processing"));
    wait_out(f);
    expect_send(f, JOB_OP_GET_SYNC);
    reply(f, JOB_OP_GET_SYNC, 200, sync_body("complete"));
    /* the batch's totals after the sync */
    expect_send(f, JOB_OP_GET_BATCH);
    reply(f, JOB_OP_GET_BATCH, 200,
          "{\"id\":\"" BATCH "\",\"status\":\"READY\",\"total_task_count\":8,"
          "\"total_task_groups\":3}");
    assert_int_equal(next(f).kind, JOB_ACT_FINISH);
    assert_int_equal(f->j->state, JOB_READY);

    cJSON *res = job_result_json(f->j);
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(res, "append_to");
    assert_string_equal(json_str(to, "job"), "standing");
    assert_string_equal(json_str(to, "id"), TARGET_ID);
    assert_string_equal(json_str(res, "dataset_id"), DATASET);
    assert_string_equal(json_str(res, "batch_id"), BATCH);
    assert_string_equal(json_str(res, "import_id"), IMPORT);
    assert_string_equal(json_str(res, "sync_id"), SYNC);
    assert_int_equal(json_int64(res, "records", -1), 3);
    assert_int_equal(json_int64(res, "tasks_created", -1), 5);
    assert_int_equal(json_int64(res, "datapoints_processed", -1), 5);
    assert_int_equal(json_int64(res, "groups_created", -1), 1);
    assert_int_equal(json_int64(res, "groups_expanded", -1), 1);
    assert_int_equal(json_int64(res, "total_task_count", -1), 8);
    assert_int_equal(json_int64(res, "total_task_groups", -1), 3);
    cJSON_Delete(res);

    cJSON *pub = job_to_public(f->j, false);
    to = cJSON_GetObjectItemCaseSensitive(pub, "append_to");
    assert_string_equal(json_str(to, "job"), "standing");
    assert_string_equal(json_str(to, "sync_status"), "complete");
    cJSON_Delete(pub);
}

static void test_append_by_ids(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, false);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 200, sync_body("complete")); /* a POST answered already complete */
    expect_send(f, JOB_OP_GET_BATCH);
    reply(f, JOB_OP_GET_BATCH, 200, "{\"status\":\"READY\",\"total_task_count\":8}");
    assert_int_equal(next(f).kind, JOB_ACT_FINISH);
    cJSON *res = job_result_json(f->j);
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(res, "append_to");
    assert_null(json_str(to, "job"));
    assert_string_equal(json_str(to, "batch_id"), BATCH);
    assert_string_equal(json_str(to, "dataset_id"), DATASET);
    cJSON_Delete(res);
    cJSON *pub = job_to_public(f->j, false);
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(pub, "append_to")));
    cJSON_Delete(pub);
    /* a job that makes its own batch names no target */
    job *own = job_new("01JDOWN", "own", "own", f->now);
    pub = job_to_public(own, false);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(pub, "append_to")));
    cJSON_Delete(pub);
    res = job_result_json(own);
    assert_null(cJSON_GetObjectItemCaseSensitive(res, "append_to"));
    cJSON_Delete(res);
    job_free(own);
}

/* A failed sync fails the job with sync_failed and the API's reason; a retry keeps the
 * import (it completed) and requests a new sync. */
static void test_append_sync_failed_then_retried(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    wait_out(f);
    expect_send(f, JOB_OP_GET_SYNC);
    reply(f, JOB_OP_GET_SYNC, 200, sync_body("failed"));
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "sync_failed");
    assert_non_null(strstr(f->j->error_message, "batch must be in READY status"));
    cJSON *e = job_error_json(f->j);
    assert_string_equal(json_str(e, "stage"), "syncing");
    cJSON_Delete(e);

    assert_int_equal(job_retry(f->j, f->now), 0);
    assert_null(f->j->append.sync_id);
    append_validated(f, true, DATASET);
    assert_int_equal(f->j->state, JOB_UPLOADING);
    assert_string_equal(f->j->import_id, IMPORT); /* kept: it completed */
    /* uploaded already: straight to the import's status, then a new sync */
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT);
    reply(f, JOB_OP_GET_IMPORT, 200, "{\"status\":\"complete\",\"accepted_count\":3}");
    assert_int_equal(f->j->state, JOB_SYNCING);
    expect_send(f, JOB_OP_SYNC);
}

/* A sync refused outright, in the flat form {message, detail}. */
static void test_append_sync_refused(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 400, "{\"message\":\"batch is not READY\",\"detail\":\"status SETUP\"}");
    assert_int_equal(f->j->state, JOB_FAILED);
    assert_string_equal(f->j->error_code, "sync_failed");
    assert_non_null(strstr(f->j->error_message, "batch is not READY"));
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
}

/* A lost reply, then a crash: the sync is requested again (it takes only what is left). */
static void test_append_sync_unknown_requested_again(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    net_error(f, JOB_OP_SYNC, JOB_NET_TIMEOUT);
    assert_int_equal(f->j->pending_op, JOB_OP_SYNC);
    assert_int_equal(f->j->state, JOB_SYNCING);
    restart(f);
    assert_int_equal(f->j->pending_op, JOB_OP_SYNC);
    wait_out(f);
    expect_send(f, JOB_OP_SYNC);
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
    reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    /* a crash while polling: the known sync is polled again */
    restart(f);
    assert_int_equal(f->j->state, JOB_SYNCING);
    assert_string_equal(f->j->append.sync_id, SYNC);
    expect_send(f, JOB_OP_GET_SYNC);
}

/* A sync the API no longer knows (404) is requested anew, within the retry bound. */
static void test_append_sync_vanished(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    f->p.retry_attempts_max = 3;
    for (int i = 0; i < 2; i++) {
        wait_out(f);
        expect_send(f, JOB_OP_GET_SYNC);
        reply(f, JOB_OP_GET_SYNC, 404, "{\"error\":{\"detail\":\"sync job not found\"}}");
        assert_null(f->j->append.sync_id);
        assert_int_equal(f->j->state, JOB_SYNCING);
        wait_out(f);
        expect_send(f, JOB_OP_SYNC);
        reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    }
    wait_out(f);
    expect_send(f, JOB_OP_GET_SYNC);
    reply(f, JOB_OP_GET_SYNC, 404, "{}");
    assert_int_equal(f->j->state, JOB_FAILED); /* the third failed attempt of the step */

    /* Seen, then lost, again and again: each poll that sees it is progress, so the renewals
     * are bounded on their own. */
    job_free(f->j);
    f->j = job_new("01JDXYZ", "job-a", "job-a", f->now);
    append_to_syncing(f, true);
    int renewals = 0;
    while (f->j->state == JOB_SYNCING) {
        wait_out(f);
        expect_send(f, JOB_OP_SYNC);
        reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
        wait_out(f);
        expect_send(f, JOB_OP_GET_SYNC);
        reply(f, JOB_OP_GET_SYNC, 200, sync_body("processing"));
        wait_out(f);
        expect_send(f, JOB_OP_GET_SYNC);
        reply(f, JOB_OP_GET_SYNC, 404, "{}");
        assert_true(++renewals <= 6);
    }
    assert_int_equal(renewals, 6); /* five renewed, the sixth loss fails the job */
    assert_string_equal(f->j->error_code, "api_rejected");
}

static void test_append_sync_timeout_and_bad_replies(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    f->now += f->p.batch_timeout_ms;
    assert_int_equal(next(f).kind, JOB_ACT_FINISH);
    assert_string_equal(f->j->error_code, "timeout");
    assert_non_null(strstr(f->j->error_message, "sync"));

    /* an unknown status, and a sync id that cannot go into a URL */
    static const char *const bad[] = {
        "{\"sync_id\":\"" SYNC "\",\"status\":\"exploded\"}",
        "{\"sync_id\":\"../../datasets\",\"status\":\"queued\"}",
        "{\"status\":\"queued\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        job_free(f->j);
        f->j = job_new("01JDXYZ", "job-a", "job-a", f->now);
        append_to_syncing(f, true);
        expect_send(f, JOB_OP_SYNC);
        reply(f, JOB_OP_SYNC, 202, bad[i]);
        assert_int_equal(f->j->state, JOB_FAILED);
        assert_string_equal(f->j->error_code, "api_rejected");
    }
}

/* The append part of the record survives a restart; a record that is not an append job's
 * drops an intent to sync that nothing would resolve. */
static void test_append_record(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 202, sync_body("processing"));
    cJSON *r1 = job_to_record(f->j);
    restart(f);
    cJSON *r2 = job_to_record(f->j);
    cJSON_DeleteItemFromObject(r1, "history");
    cJSON_DeleteItemFromObject(r2, "history");
    cJSON_DeleteItemFromObject(r1, "updated_at");
    cJSON_DeleteItemFromObject(r2, "updated_at");
    assert_true(cJSON_Compare(r1, r2, 1));
    assert_string_equal(f->j->append.target_job_name, "standing");
    assert_string_equal(f->j->append.sync_status, "processing");
    cJSON_Delete(r2);

    /* syncing, but not an append job: no batchd writes that */
    cJSON_DeleteItemFromObject(r1, "append");
    const char *err = NULL;
    assert_null(job_from_record(r1, &err));
    assert_non_null(strstr(err, "syncing"));
    cJSON_ReplaceItemInObject(r1, "state", cJSON_CreateString("importing"));
    cJSON_ReplaceItemInObject(r1, "pending_op", cJSON_CreateString("sync"));
    job *j = job_from_record(r1, &err);
    assert_non_null(j);
    assert_false(j->append.on);
    assert_int_equal(j->pending_op, JOB_OP_NONE);
    job_free(j);
    cJSON_Delete(r1);
}

/* A retry whose target has changed starts the upload over in the new dataset, even when the
 * outcome of the last upload was unknown; another batch on the same dataset keeps the import
 * but not the sync. */
static void test_append_target_changed(void **state)
{
    fixture *f = *state;
    assert_int_equal(next(f).kind, JOB_ACT_VALIDATE);
    append_validated(f, true, DATASET);
    expect_send(f, JOB_OP_UPLOAD_URL);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    expect_send(f, JOB_OP_UPLOAD);
    net_error(f, JOB_OP_UPLOAD, JOB_NET_TIMEOUT);
    assert_int_equal(f->j->pending_op, JOB_OP_UPLOAD);
    job_cancel(f->j, f->now);
    assert_int_equal(job_retry(f->j, f->now), 0);
    append_validated(f, true, "0192a3b5-0000-7a0b-1c2d-000000000000");
    assert_null(f->j->import_id);
    assert_false(f->j->uploaded);
    assert_int_equal(f->j->pending_op, JOB_OP_NONE);
    expect_send(f, JOB_OP_UPLOAD_URL);

    job_free(f->j);
    f->j = job_new("01JDXYZ", "job-a", "job-a", f->now);
    append_to_syncing(f, true);
    expect_send(f, JOB_OP_SYNC);
    reply(f, JOB_OP_SYNC, 202, sync_body("queued"));
    job_cancel(f->j, f->now);
    assert_int_equal(job_retry(f->j, f->now), 0);
    cJSON *spec = cJSON_Parse(spec_json);
    job_validation v = {.ok = true,
                        .spec = spec,
                        .upload_path = "/spool/active/job-a/d.jsonl",
                        .upload_name = "d.jsonl",
                        .records = 3,
                        .sha256 = SHA256_HEX,
                        .bytes = 120,
                        .append = true,
                        .append_job_id = TARGET_ID,
                        .append_job_name = "standing",
                        .dataset_id = DATASET,
                        .batch_id = "01935c2d-bbbb-4c4d-8e6f-7a8b9c0d1e2f"};
    job_on_validated(f->j, &v, f->now);
    cJSON_Delete(spec);
    assert_string_equal(f->j->import_id, IMPORT);
    assert_null(f->j->append.sync_id);
    assert_string_equal(f->j->batch_id, "01935c2d-bbbb-4c4d-8e6f-7a8b9c0d1e2f");
}

/* An append job whose job.json no longer appends starts over as a job of its own: it does
 * not upload into, or sync, the batch it was appending to. */
static void test_append_no_longer(void **state)
{
    fixture *f = *state;
    append_to_syncing(f, true);
    job_cancel(f->j, f->now);
    assert_int_equal(job_retry(f->j, f->now), 0);
    validated(f);
    assert_false(f->j->append.on);
    assert_null(f->j->dataset_id);
    assert_null(f->j->batch_id);
    assert_null(f->j->import_id);
    expect_send(f, JOB_OP_CREATE_DATASET);
}

/* A partial import into a live dataset is not uploaded again on a retry (its accepted records
 * would go in twice): the retry syncs what it accepted. */
static void test_append_partial_import_retried(void **state)
{
    fixture *f = *state;
    assert_int_equal(next(f).kind, JOB_ACT_VALIDATE);
    append_validated(f, true, DATASET);
    expect_send(f, JOB_OP_UPLOAD_URL);
    reply(f, JOB_OP_UPLOAD_URL, 201, upload_url_body(f->now + 900000));
    expect_send(f, JOB_OP_UPLOAD);
    reply(f, JOB_OP_UPLOAD, 200, "");
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT);
    const char *partial = "{\"status\":\"partial\",\"accepted_count\":2,\"rejected_count\":1}";
    reply(f, JOB_OP_GET_IMPORT, 200, partial);
    assert_string_equal(f->j->error_code, "import_partial");
    assert_int_equal(job_retry(f->j, f->now), 0);
    assert_true(f->j->append.partial_accepted);
    append_validated(f, true, DATASET);
    assert_string_equal(f->j->import_id, IMPORT);
    wait_out(f);
    expect_send(f, JOB_OP_GET_IMPORT); /* never UPLOAD_URL or UPLOAD */
    reply(f, JOB_OP_GET_IMPORT, 200, partial);
    assert_int_equal(f->j->state, JOB_SYNCING);
    expect_send(f, JOB_OP_SYNC);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_happy_path),
        T(test_upload_file_errors_classified),
        T(test_upload_file_unreadable),
        T(test_mark_sent_and_unsent),
        T(test_requests_built),
        T(test_setup_body_with_group_field),
        T(test_upload_name_escaped),
        T(test_invalid_job_fails),
        T(test_error_json_has_exactly_the_product_keys),
        T(test_retry_classes),
        T(test_4xx_fails_with_api_error),
        T(test_422_issues_in_error),
        T(test_retry_after_seconds),
        T(test_export_in_record_and_public),
        T(test_retry_after_date),
        T(test_retry_after_bounded_and_jittered),
        T(test_jitter_bounds),
        T(test_import_timeout),
        T(test_batch_timeout),
        T(test_import_outcomes),
        T(test_import_failed_and_pending_schema),
        T(test_batch_error),
        T(test_record_roundtrip),
        T(test_resume_create_dataset_unknown),
        T(test_resume_upload_unknown_unexpired),
        T(test_resume_upload_unknown_expired),
        T(test_resume_upload_landed),
        T(test_upload_403_new_url),
        T(test_upload_500_forever_backs_off_and_fails),
        T(test_create_batch_500_forever_fails),
        T(test_network_errors_bounded),
        T(test_progress_resets_and_retry_after_still_honoured),
        T(test_reply_too_large),
        T(test_401_holds_not_fails),
        T(test_expiring_url_not_used),
        T(test_resume_batch_create_found),
        T(test_resume_batch_create_not_found),
        T(test_resume_batch_found_already_set_up),
        T(test_resume_setup_unknown),
        T(test_resume_upload_url_unknown),
        T(test_resume_validating),
        T(test_cancel_and_retry),
        T(test_retry_refused_when_not_failed),
        T(test_public_job_fields),
        T(test_hostile_huge_body),
        T(test_hostile_deep_body),
        T(test_hostile_json_body),
        T(test_hostile_retry_texts),
        T(test_hostile_body_on_give_up),
        T(test_non_string_ids_named),
        T(test_hostile_error_text_on_give_up),
        T(test_4xx_too_large_fails_by_status),
        T(test_hostile_import_errors),
        T(test_hostile_batch_status),
        T(test_record_keeps_byte_names),
        T(test_bad_ids_fail_the_job),
        T(test_error_json_capped),
        T(test_append_happy_path),
        T(test_append_by_ids),
        T(test_append_sync_failed_then_retried),
        T(test_append_sync_refused),
        T(test_append_sync_unknown_requested_again),
        T(test_append_sync_vanished),
        T(test_append_sync_timeout_and_bad_replies),
        T(test_append_record),
        T(test_append_target_changed),
        T(test_append_no_longer),
        T(test_append_partial_import_retried),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
