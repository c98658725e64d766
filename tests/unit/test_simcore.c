/* Unit tests of simcore: routing, faults, the import and batch lifecycles and the API's
 * answers, driven with a fake clock and no sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

#define TOKEN "t0ken"
#define WS    "6278acb09062db3b35bcbeb0"
#define API   "/api/v1/data-collection"
#define T0    1800000000000LL

static const char *SCHEMA_TG =
    "{\"name\":\"ds\",\"workspace_id\":\"" WS "\",\"schema\":{\"strict\":true,\"fields\":{"
    "\"prompt\":{\"type\":\"text\"},\"response_a\":{\"type\":\"text\"},"
    "\"response_b\":{\"type\":\"text\"},\"session_id\":{\"type\":\"task_group_id\"}}}}";
static const char *SCHEMA_PLAIN =
    "{\"name\":\"ds2\",\"workspace_id\":\"" WS "\",\"schema\":{\"strict\":true,\"fields\":{"
    "\"prompt\":{\"type\":\"text\"},\"answer\":{\"type\":\"text\"}}}}";

typedef struct query_kv {
    const char *k, *v;
} query_kv;

static const char *lookup(void *ud, const char *key)
{
    for (const query_kv *q = ud; q && q->k; q++)
        if (strcmp(q->k, key) == 0)
            return q->v;
    return NULL;
}

static simcore *new_sim(void)
{
    simcore_config cfg = {.import_queued_ms = 200,
                          .import_processing_ms = 500,
                          .batch_processing_ms = 1000,
                          .upload_ttl_ms = 60000,
                          .sync_queued_ms = 100,
                          .sync_processing_ms = 300,
                          .export_generating_ms = 1000,
                          .seed = 42,
                          .base_url = "http://127.0.0.1:9"};
    return simcore_new(&cfg);
}

/* Calls the handler; returns the parsed body (caller frees) and sets *status. */
static cJSON *call_full(simcore *sim, const char *method, const char *path, const char *auth,
                        const char *ctype, const char *body, query_kv *q, int64_t now, int *status,
                        simcore_response *out)
{
    simcore_request req = {.method = method,
                           .path = path,
                           .authorization = auth,
                           .content_type = ctype,
                           .query = lookup,
                           .query_ud = q,
                           .body = body,
                           .body_len = body ? strlen(body) : 0,
                           .now_ms = now};
    simcore_response resp;
    simcore_handle(sim, TOKEN, &req, &resp);
    *status = resp.status;
    cJSON *j = resp.body ? cJSON_Parse(resp.body) : NULL;
    if (out)
        *out = resp;
    else
        simcore_response_free(&resp);
    return j;
}

static cJSON *call(simcore *sim, const char *method, const char *path, const char *body,
                   int64_t now, int *status)
{
    return call_full(sim, method, path, "Token " TOKEN, body ? "application/json" : NULL, body,
                     NULL, now, status, NULL);
}

static char *create_dataset(simcore *sim, const char *body)
{
    int st;
    cJSON *j = call(sim, "POST", API "/datasets", body, T0, &st);
    assert_int_equal(st, 201);
    char *id = xstrdup(json_str(j, "id"));
    cJSON_Delete(j);
    return id;
}

typedef struct upload_info {
    char import_id[64];
    char file_key[512];
    char signature[64];
    char content_type[64];
} upload_info;

static void get_upload_url(simcore *sim, const char *ds, const char *filename, int64_t now,
                           upload_info *u)
{
    char *path = xasprintf(API "/datasets/%s/upload-url/%s", ds, filename);
    int st;
    cJSON *j = call(sim, "GET", path, NULL, now, &st);
    free(path);
    assert_int_equal(st, 201);
    strlcpy_bd(u->import_id, json_str(j, "import_id"), sizeof u->import_id);
    strlcpy_bd(u->file_key, json_str(j, "file_key"), sizeof u->file_key);
    strlcpy_bd(u->content_type, json_str(j, "content_type"), sizeof u->content_type);
    const char *url = json_str(j, "upload_url");
    assert_non_null(strstr(url, "http://127.0.0.1:9/_upload/"));
    const char *sig = strstr(url, "X-Amz-Signature=");
    assert_non_null(sig);
    strlcpy_bd(u->signature, sig + 16, sizeof u->signature);
    assert_string_equal(json_str(j, "http_method"), "PUT");
    cJSON_Delete(j);
}

static int put(simcore *sim, const upload_info *u, const char *auth, const char *ctype,
               const char *sig, const char *data, int64_t now, simcore_response *resp_out)
{
    query_kv q[] = {{"X-Amz-Signature", sig}, {NULL, NULL}};
    simcore_request req = {.method = "PUT",
                           .authorization = auth,
                           .content_type = ctype,
                           .query = lookup,
                           .query_ud = q,
                           .now_ms = now};
    simcore_upload *up = NULL;
    simcore_response resp;
    if (simcore_upload_begin(sim, u->file_key, &req, &up, &resp) < 0) {
        int st = resp.status;
        if (resp_out)
            *resp_out = resp;
        else
            simcore_response_free(&resp);
        return st;
    }
    /* Feed in small pieces, as a network would. */
    size_t len = strlen(data);
    for (size_t i = 0; i < len; i += 7)
        simcore_upload_feed(up, data + i, len - i < 7 ? len - i : 7);
    simcore_upload_finish(sim, up, now, &resp);
    int st = resp.status;
    if (resp_out)
        *resp_out = resp;
    else
        simcore_response_free(&resp);
    return st;
}

static const char *SEED_JSONL =
    "{\"prompt\": \"Explain gravity\", \"response_a\": \"...\", \"response_b\": \"...\", "
    "\"session_id\": \"session_001\"}\n"
    "{\"prompt\": \"What is AI?\", \"response_a\": \"...\", \"response_b\": \"...\", "
    "\"session_id\": \"session_001\"}\n"
    "{\"prompt\": \"Describe photosynthesis\", \"response_a\": \"...\", \"response_b\": "
    "\"...\", \"session_id\": \"session_002\"}\n";

static cJSON *get_import(simcore *sim, const char *ds, const char *imp, int64_t now)
{
    char *path = xasprintf(API "/datasets/%s/imports/%s", ds, imp);
    int st;
    cJSON *j = call(sim, "GET", path, NULL, now, &st);
    free(path);
    assert_int_equal(st, 200);
    return j;
}

#define BATCH_FMT                                                                                  \
    "{\"name\":\"b\",\"workspace_id\":\"%s\",\"dataset_id\":\"%s\",\"task_details\":{"             \
    "\"task_name\":\"Rate\",\"task_introduction\":\"<p>i</p>\",\"task_steps\":\"<ol></ol>\"},"     \
    "\"batch_items\":[{\"rows\":[{\"columns\":[{\"items\":[{\"type\":\"dataset_field\","           \
    "\"field\":\"%s\"},{\"type\":\"multiple_choice\",\"description\":\"Better?\","                 \
    "\"answer_limit\":1,\"options\":[{\"label\":\"A\",\"value\":\"a\"},{\"label\":\"B\","          \
    "\"value\":\"b\"}]}]}]}]}]}"

static char *create_batch(simcore *sim, const char *ds, const char *field, int expect)
{
    char *body = xasprintf(BATCH_FMT, WS, ds, field);
    int st;
    cJSON *j = call(sim, "POST", API "/batches", body, T0, &st);
    free(body);
    assert_int_equal(st, expect);
    char *id = expect == 201 ? xstrdup(json_str(j, "id")) : NULL;
    cJSON_Delete(j);
    return id;
}

/* ---- routing ---------------------------------------------------------------------- */

static void test_route(void **state)
{
    (void)state;
    simcore_route r;
    simcore_route_request("POST", API "/datasets", &r);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.endpoint, SIMCORE_EP_CREATE_DATASET);
    simcore_route_request("GET", API "/datasets/abc/upload-url/x.jsonl", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_UPLOAD_URL);
    assert_string_equal(r.id, "abc");
    assert_string_equal(r.sub, "x.jsonl");
    simcore_route_request("GET", API "/datasets/abc/imports/def", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_GET_IMPORT);
    assert_string_equal(r.sub, "def");
    simcore_route_request("GET", API "/batches", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_LIST_BATCHES);
    simcore_route_request("GET", API "/batches/", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_LIST_BATCHES);
    assert_int_equal(r.status, 0);
    simcore_route_request("POST", API "/batches", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_CREATE_BATCH);
    simcore_route_request("DELETE", API "/batches", &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "GET, POST");
    simcore_route_request("GET", API "/batches/b1/status", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_BATCH_STATUS);
    simcore_route_request("GET", API "/batches/b1/setup", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_SETUP);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "POST");
    simcore_route_request("PUT", "/_upload/a/b/c.jsonl", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_UPLOAD);
    assert_string_equal(r.sub, "a/b/c.jsonl");
    simcore_route_request("GET", API "/datasets/abc/nothing", &r);
    assert_int_equal(r.status, 404);
    simcore_route_request("GET", API "/datasetsx", &r);
    assert_int_equal(r.status, 404);
    simcore_route_request("GET", "/api/v1/studies", &r);
    assert_int_equal(r.status, 404);
    simcore_route_request("GET", API "/datasets//imports/x", &r);
    assert_int_equal(r.status, 404);
    simcore_route_request("GET", "/_sim/state", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_SIM_STATE);
    assert_true(simcore_endpoint_is_control(r.endpoint));
    simcore_endpoint ep;
    assert_int_equal(simcore_endpoint_from_name("create_batch", &ep), 0);
    assert_int_equal(ep, SIMCORE_EP_CREATE_BATCH);
    assert_int_equal(simcore_endpoint_from_name("_sim_state", &ep), -EINVAL);
}

/* ---- faults ----------------------------------------------------------------------- */

static void test_fault_parse(void **state)
{
    (void)state;
    simcore_fault_rule r;
    char err[256];
    assert_int_equal(simcore_fault_parse("429=0.25@create_batch", &r, err, sizeof err), 0);
    assert_int_equal(r.kind, SIMCORE_FAULT_429);
    assert_true(r.probability == 0.25);
    assert_int_equal(r.endpoint, SIMCORE_EP_CREATE_BATCH);
    assert_int_equal(simcore_fault_parse("drop-after=1", &r, err, sizeof err), 0);
    assert_int_equal(r.kind, SIMCORE_FAULT_DROP_AFTER);
    assert_int_equal(r.endpoint, SIMCORE_EP_NONE);
    assert_int_equal(simcore_fault_parse("404=1", &r, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "unknown kind"));
    assert_int_equal(simcore_fault_parse("500=1.5", &r, err, sizeof err), -EINVAL);
    assert_int_equal(simcore_fault_parse("500", &r, err, sizeof err), -EINVAL);
    assert_int_equal(simcore_fault_parse("500=0.1@nowhere", &r, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "unknown endpoint"));
}

static void test_fault_decide_seeded(void **state)
{
    (void)state;
    simcore *a = new_sim(), *b = new_sim();
    char err[128];
    simcore_fault_rule r;
    assert_int_equal(simcore_fault_parse("5xx=0.5", &r, err, sizeof err), 0);
    simcore_get_faults(a)->rules[0] = r;
    simcore_get_faults(a)->n_rules = 1;
    simcore_get_faults(b)->rules[0] = r;
    simcore_get_faults(b)->n_rules = 1;
    int hits = 0;
    for (int i = 0; i < 400; i++) {
        simcore_fault_decision da, db;
        simcore_fault_decide(a, SIMCORE_EP_GET_BATCH, T0, &da);
        simcore_fault_decide(b, SIMCORE_EP_GET_BATCH, T0, &db);
        assert_int_equal(da.kind, db.kind); /* same seed, same sequence */
        assert_int_equal(da.status, db.status);
        if (da.kind != SIMCORE_FAULT_NONE) {
            hits++;
            assert_true(da.status == 500 || da.status == 502 || da.status == 503);
        }
        /* Control endpoints are never faulted. */
        simcore_fault_decide(a, SIMCORE_EP_SIM_STATE, T0, &da);
        assert_int_equal(da.kind, SIMCORE_FAULT_NONE);
        simcore_fault_decide(b, SIMCORE_EP_SIM_STATE, T0, &db);
    }
    assert_true(hits > 120 && hits < 280);
    simcore_free(a);
    simcore_free(b);
}

static void test_fault_endpoint_and_json(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    cJSON *j = cJSON_Parse("{\"faults\":[{\"kind\":\"429\",\"probability\":1,"
                           "\"endpoint\":\"create_batch\"}],\"retry_after\":3,"
                           "\"slow_ms\":250,\"batch_error\":0.5}");
    char err[256];
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err), 0);
    cJSON_Delete(j);
    simcore_fault_decision d;
    simcore_fault_decide(sim, SIMCORE_EP_CREATE_BATCH, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_429);
    assert_int_equal(d.status, 429);
    assert_int_equal(d.retry_after_ms, 3000);
    assert_false(d.hold);
    simcore_fault_decide(sim, SIMCORE_EP_GET_BATCH, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_NONE);
    assert_int_equal(simcore_get_faults(sim)->slow_ms, 250);
    /* "hold" holds any kind's answer; it must be a boolean, and it reads back. */
    j = cJSON_Parse("{\"faults\":[{\"kind\":\"echo-raw\",\"probability\":1,\"hold\":1}]}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err),
                     -EINVAL);
    assert_non_null(strstr(err, "hold"));
    cJSON_Delete(j);
    j = cJSON_Parse("{\"faults\":[{\"kind\":\"echo-raw\",\"probability\":1,\"hold\":true,"
                    "\"endpoint\":\"create_batch\"},{\"kind\":\"429\",\"probability\":1,"
                    "\"endpoint\":\"create_batch\"}]}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err), 0);
    cJSON_Delete(j);
    simcore_fault_decide(sim, SIMCORE_EP_CREATE_BATCH, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_ECHO_RAW);
    assert_true(d.hold);
    j = simcore_faults_to_json(simcore_get_faults(sim));
    const cJSON *rules = cJSON_GetObjectItemCaseSensitive(j, "faults");
    assert_true(
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rules, 0), "hold")));
    assert_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rules, 1), "hold"));
    cJSON_Delete(j);
    /* A bad table changes nothing. */
    j = cJSON_Parse("{\"faults\":[{\"kind\":\"teapot\",\"probability\":1}],\"slow_ms\":1}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err),
                     -EINVAL);
    cJSON_Delete(j);
    assert_int_equal(simcore_get_faults(sim)->n_rules, 2);
    assert_int_equal(simcore_get_faults(sim)->slow_ms, 250);
    j = cJSON_Parse("{\"retry_after\":\"date\"}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err), 0);
    cJSON_Delete(j);
    assert_true(simcore_get_faults(sim)->retry_after_date);
    simcore_free(sim);
}

static void test_fault_parse_count(void **state)
{
    (void)state;
    simcore_fault_rule r;
    char err[256];
    assert_int_equal(simcore_fault_parse("503=2x@create_batch", &r, err, sizeof err), 0);
    assert_int_equal(r.kind, SIMCORE_FAULT_503);
    assert_true(r.counted);
    assert_int_equal(r.count, 2);
    assert_int_equal(r.endpoint, SIMCORE_EP_CREATE_BATCH);
    assert_int_equal(simcore_fault_parse("drop=1000000000x", &r, err, sizeof err), 0);
    assert_true(r.counted);
    assert_int_equal(r.count, 1000000000);
    assert_int_equal(r.endpoint, SIMCORE_EP_NONE);
    assert_int_equal(simcore_fault_parse("slow=0x", &r, err, sizeof err), 0);
    assert_true(r.counted);
    assert_int_equal(r.count, 0);
    /* A probability is not a count. */
    assert_int_equal(simcore_fault_parse("500=1", &r, err, sizeof err), 0);
    assert_false(r.counted);
    assert_true(r.probability == 1.0);
    static const char *const bad[] = {"503=x",   "503=-1x",          "503=2.5x", "503=2xx",
                                      "503=+2x", "503=1000000001x",  "503= 2x",  "503=0x1",
                                      "503=2X",  "503=99999999999x", "503=2x@"};
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        if (simcore_fault_parse(bad[i], &r, err, sizeof err) != -EINVAL)
            fail_msg("'%s' was accepted", bad[i]);
        assert_true(err[0] != '\0');
    }
    assert_int_equal(simcore_fault_parse("503=-1x", &r, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "count"));
}

static void set_rules(simcore *sim, const char *const *specs)
{
    char err[256];
    simcore_faults *f = simcore_get_faults(sim);
    f->n_rules = 0;
    for (size_t i = 0; specs[i]; i++) {
        if (simcore_fault_parse(specs[i], &f->rules[f->n_rules], err, sizeof err) < 0)
            fail_msg("%s", err);
        f->n_rules++;
    }
}

static simcore_fault_kind decide_kind(simcore *sim, simcore_endpoint ep)
{
    simcore_fault_decision d;
    simcore_fault_decide(sim, ep, T0, &d);
    return d.kind;
}

static void test_fault_count_decide(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    /* The next 2 create_batch get a 503; the next 1 request of any endpoint a 429. */
    static const char *const rules[] = {"503=2x@create_batch", "429=1x", NULL};
    set_rules(sim, rules);
    uint64_t rng = sim->rng;
    assert_int_equal(decide_kind(sim, SIMCORE_EP_SIM_STATE), SIMCORE_FAULT_NONE);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_GET_BATCH), SIMCORE_FAULT_429);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_GET_BATCH), SIMCORE_FAULT_NONE);
    simcore_fault_decision d;
    for (int i = 0; i < 2; i++) {
        simcore_fault_decide(sim, SIMCORE_EP_CREATE_BATCH, T0, &d);
        assert_int_equal(d.kind, SIMCORE_FAULT_503);
        assert_int_equal(d.status, 503);
    }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_NONE);
        assert_int_equal(decide_kind(sim, SIMCORE_EP_GET_BATCH), SIMCORE_FAULT_NONE);
    }
    /* Spent rules stay in the table with nothing left; no draw was made. */
    assert_int_equal(simcore_get_faults(sim)->n_rules, 2);
    assert_int_equal(simcore_get_faults(sim)->rules[0].count, 0);
    assert_int_equal(simcore_get_faults(sim)->rules[1].count, 0);
    assert_true(sim->rng == rng);

    /* Table order: a rule before a counted one that always hits keeps the count unused. */
    static const char *const prob_first[] = {"500=1@create_batch", "503=2x@create_batch", NULL};
    set_rules(sim, prob_first);
    for (int i = 0; i < 3; i++)
        assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_500);
    assert_int_equal(simcore_get_faults(sim)->rules[1].count, 2);
    /* ...and a counted rule first wins until it is spent, then the next rule decides. */
    static const char *const count_first[] = {"503=2x@create_batch", "500=1@create_batch", NULL};
    set_rules(sim, count_first);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_503);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_503);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_500);
    /* A counted 429 carries Retry-After like a drawn one. */
    static const char *const throttle[] = {"429=1x", NULL};
    set_rules(sim, throttle);
    simcore_fault_decide(sim, SIMCORE_EP_SETUP, T0, &d);
    assert_int_equal(d.status, 429);
    assert_int_equal(d.retry_after_ms, 1000);
    simcore_free(sim);
}

static void test_fault_count_json(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char err[256];
    cJSON *j = cJSON_Parse("{\"faults\":[{\"kind\":\"503\",\"count\":2,\"endpoint\":"
                           "\"create_batch\"},{\"kind\":\"drop\",\"probability\":0}]}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err), 0);
    cJSON_Delete(j);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_503);
    /* GET /_sim/faults shows what is left, without a probability. */
    int st;
    j = call_full(sim, "GET", "/_sim/faults", NULL, NULL, NULL, NULL, T0, &st, NULL);
    assert_int_equal(st, 200);
    const cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "faults"), 0);
    assert_string_equal(json_str(r0, "kind"), "503");
    assert_int_equal(json_int64(r0, "count", -1), 1);
    assert_null(cJSON_GetObjectItemCaseSensitive(r0, "probability"));
    assert_string_equal(json_str(r0, "endpoint"), "create_batch");
    const cJSON *r1 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "faults"), 1);
    assert_null(cJSON_GetObjectItemCaseSensitive(r1, "count"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(r1, "probability"));
    /* ...in the form POST takes: posting it back keeps the one hit left. */
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err), 0);
    cJSON_Delete(j);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_503);
    assert_int_equal(decide_kind(sim, SIMCORE_EP_CREATE_BATCH), SIMCORE_FAULT_NONE);
    /* /_sim/state carries the same. */
    j = simcore_state_json(sim, T0);
    r0 = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "faults"), "faults"),
        0);
    assert_int_equal(json_int64(r0, "count", -1), 0);
    cJSON_Delete(j);
    /* Refusals name the problem and change nothing. */
    static const char *const bad[] = {
        "{\"faults\":[{\"kind\":\"503\",\"count\":2,\"probability\":1}]}",
        "{\"faults\":[{\"kind\":\"503\"}]}",
        "{\"faults\":[{\"kind\":\"503\",\"count\":1.5}]}",
        "{\"faults\":[{\"kind\":\"503\",\"count\":-1}]}",
        "{\"faults\":[{\"kind\":\"503\",\"count\":\"2\"}]}",
        "{\"faults\":[{\"kind\":\"503\",\"count\":1e12}]}",
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        j = cJSON_Parse(bad[i]);
        assert_non_null(j);
        err[0] = '\0';
        if (simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err) != -EINVAL)
            fail_msg("accepted %s", bad[i]);
        cJSON_Delete(j);
        assert_true(strstr(err, "count") || strstr(err, "probability"));
        assert_int_equal(simcore_get_faults(sim)->n_rules, 2);
    }
    simcore_free(sim);
}

/* ---- request handling ------------------------------------------------------------- */

static void test_auth_and_protocol_errors(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    int st;
    simcore_response resp;
    cJSON *j = call_full(sim, "GET", API "/batches/x", NULL, NULL, NULL, NULL, T0, &st, NULL);
    assert_int_equal(st, 401);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    assert_int_equal(json_int64(err, "status", 0), 401);
    cJSON_Delete(j);
    j = call_full(sim, "GET", API "/batches/x", "Bearer " TOKEN, NULL, NULL, NULL, T0, &st, NULL);
    assert_int_equal(st, 401);
    cJSON_Delete(j);
    j = call_full(sim, "GET", API "/batches/x", "Token wrong", NULL, NULL, NULL, T0, &st, NULL);
    assert_int_equal(st, 401);
    cJSON_Delete(j);
    /* Unknown path: 404 even without a token. */
    j = call_full(sim, "GET", "/api/v1/nothing", NULL, NULL, NULL, NULL, T0, &st, NULL);
    assert_int_equal(st, 404);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "error"));
    cJSON_Delete(j);
    j = call_full(sim, "DELETE", API "/datasets", "Token " TOKEN, NULL, NULL, NULL, T0, &st, &resp);
    assert_int_equal(st, 405);
    assert_string_equal(resp.allow, "POST");
    simcore_response_free(&resp);
    cJSON_Delete(j);
    j = call_full(sim, "POST", API "/datasets", "Token " TOKEN, "text/plain", SCHEMA_TG, NULL, T0,
                  &st, NULL);
    assert_int_equal(st, 415);
    cJSON_Delete(j);
    j = call(sim, "POST", API "/datasets", "{\"name\": ", T0, &st);
    assert_int_equal(st, 400);
    assert_non_null(strstr(json_str(cJSON_GetObjectItemCaseSensitive(j, "error"), "detail"),
                           "JSON parse error"));
    cJSON_Delete(j);
    j = call(sim, "POST", API "/datasets", "{} trailing", T0, &st);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    j = call(sim, "POST", API "/datasets", "[1,2]", T0, &st);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    j = call_full(sim, "POST", API "/datasets", "Token " TOKEN, "application/json; charset=utf-8",
                  SCHEMA_TG, NULL, T0, &st, NULL);
    assert_int_equal(st, 201);
    cJSON_Delete(j);
    simcore_free(sim);
}

static void test_dataset_validation_and_get(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    int st;
    cJSON *j = call(sim, "POST", API "/datasets",
                    "{\"name\":\"x\",\"workspace_id\":\"" WS "\",\"schema\":{\"strict\":true,"
                    "\"fields\":{\"a\":{\"type\":\"bogus\"}}}}",
                    T0, &st);
    assert_int_equal(st, 400);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "error"));
    cJSON_Delete(j);
    char *ds = create_dataset(sim, SCHEMA_TG);
    char *path = xasprintf(API "/datasets/%s", ds);
    j = call(sim, "GET", path, NULL, T0 + 5, &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_str(j, "id"), ds);
    assert_string_equal(json_str(j, "workspace_id"), WS);
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "imports")));
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "schema")));
    cJSON_Delete(j);
    j = call(sim, "GET", API "/datasets/00000000-0000-7000-8000-000000000000", NULL, T0, &st);
    assert_int_equal(st, 404);
    cJSON_Delete(j);
    /* Upload URLs: .csv and .jsonl only, 201, a new import per call, newest first. */
    char *bad = xasprintf(API "/datasets/%s/upload-url/data.txt", ds);
    j = call(sim, "GET", bad, NULL, T0, &st);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    free(bad);
    upload_info u1, u2;
    get_upload_url(sim, ds, "a.jsonl", T0 + 1, &u1);
    get_upload_url(sim, ds, "b.csv", T0 + 2, &u2);
    assert_string_equal(u1.content_type, "application/x-ndjson");
    assert_string_equal(u2.content_type, "text/csv");
    assert_string_not_equal(u1.import_id, u2.import_id);
    j = call(sim, "GET", path, NULL, T0 + 5, &st);
    const cJSON *imps = cJSON_GetObjectItemCaseSensitive(j, "imports");
    assert_int_equal(cJSON_GetArraySize(imps), 2);
    assert_string_equal(json_str(cJSON_GetArrayItem(imps, 0), "import_id"), u2.import_id);
    assert_string_equal(json_str(cJSON_GetArrayItem(imps, 1), "status"), "uninitialised");
    cJSON_Delete(j);
    free(path);
    free(ds);
    simcore_free(sim);
}

static void test_upload_refusals(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    upload_info u;
    get_upload_url(sim, ds, "data.jsonl", T0, &u);
    simcore_response resp;
    assert_int_equal(
        put(sim, &u, "Token " TOKEN, u.content_type, u.signature, SEED_JSONL, T0 + 1, &resp), 400);
    assert_non_null(strstr(resp.body, "<Code>InvalidArgument</Code>"));
    simcore_response_free(&resp);
    assert_int_equal(put(sim, &u, NULL, "text/csv", u.signature, SEED_JSONL, T0 + 1, &resp), 403);
    assert_non_null(strstr(resp.body, "SignatureDoesNotMatch"));
    simcore_response_free(&resp);
    assert_int_equal(put(sim, &u, NULL, u.content_type, "deadbeef", SEED_JSONL, T0 + 1, NULL), 403);
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, SEED_JSONL, T0 + 60000, &resp),
                     403);
    assert_non_null(strstr(resp.body, "Request has expired"));
    simcore_response_free(&resp);
    upload_info unknown = u;
    strlcpy_bd(unknown.file_key, "nope/nope/x.jsonl", sizeof unknown.file_key);
    assert_int_equal(
        put(sim, &unknown, NULL, u.content_type, u.signature, SEED_JSONL, T0 + 1, NULL), 403);
    /* None of the refusals started the import. */
    assert_string_equal(simcore_import_status(sim, u.import_id, T0 + 100000), "uninitialised");
    free(ds);
    simcore_free(sim);
}

static void test_import_lifecycle_complete(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    upload_info u;
    get_upload_url(sim, ds, "data.jsonl", T0, &u);
    simcore_response resp;
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, SEED_JSONL, T0 + 10, &resp),
                     200);
    assert_null(resp.body);
    assert_true(resp.etag[0] == '"');
    simcore_response_free(&resp);
    assert_string_equal(simcore_import_status(sim, u.import_id, T0 + 10), "queued");
    assert_string_equal(simcore_import_status(sim, u.import_id, T0 + 209), "queued");
    assert_string_equal(simcore_import_status(sim, u.import_id, T0 + 210), "processing");
    assert_string_equal(simcore_import_status(sim, u.import_id, T0 + 709), "processing");
    cJSON *j = get_import(sim, ds, u.import_id, T0 + 710);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_int_equal(json_int64(j, "accepted_count", -1), 3);
    assert_string_equal(json_str(j, "type"), "file_upload");
    assert_string_equal(json_str(j, "filename"), "data.jsonl");
    cJSON_Delete(j);
    free(ds);
    simcore_free(sim);
}

/* Imports of one dataset run one at a time in the order their files arrive (not the
 * order their URLs were issued), and one that arrives after the previous finished is not
 * held back. */
static void test_import_arrival_order(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    char *other = create_dataset(sim, SCHEMA_PLAIN);
    upload_info a, b, c, o;
    get_upload_url(sim, ds, "a.jsonl", T0, &a);
    get_upload_url(sim, ds, "b.jsonl", T0, &b);
    get_upload_url(sim, ds, "c.jsonl", T0, &c);
    get_upload_url(sim, other, "o.jsonl", T0, &o);
    /* b arrives first, a 100 ms later: b runs 200..700, a waits for it and runs 700..1200. */
    assert_int_equal(put(sim, &b, NULL, b.content_type, b.signature, SEED_JSONL, T0, NULL), 200);
    assert_int_equal(put(sim, &a, NULL, a.content_type, a.signature, SEED_JSONL, T0 + 100, NULL),
                     200);
    /* Another dataset's import does not wait for this one's. */
    assert_int_equal(put(sim, &o, NULL, o.content_type, o.signature,
                         "{\"prompt\": \"p\", \"answer\": \"a\"}\n", T0 + 100, NULL),
                     200);
    assert_string_equal(simcore_import_status(sim, b.import_id, T0 + 200), "processing");
    assert_string_equal(simcore_import_status(sim, a.import_id, T0 + 300), "queued");
    assert_string_equal(simcore_import_status(sim, o.import_id, T0 + 300), "processing");
    assert_string_equal(simcore_import_status(sim, a.import_id, T0 + 699), "queued");
    assert_string_equal(simcore_import_status(sim, b.import_id, T0 + 699), "processing");
    assert_string_equal(simcore_import_status(sim, b.import_id, T0 + 700), "complete");
    assert_string_equal(simcore_import_status(sim, a.import_id, T0 + 700), "processing");
    assert_string_equal(simcore_import_status(sim, a.import_id, T0 + 1199), "processing");
    assert_string_equal(simcore_import_status(sim, a.import_id, T0 + 1200), "complete");
    /* The API shows it too: a started processing when b finished. */
    cJSON *ja = get_import(sim, ds, a.import_id, T0 + 1200);
    cJSON *jb = get_import(sim, ds, b.import_id, T0 + 1200);
    assert_non_null(json_str(ja, "processing_started_at"));
    assert_string_equal(json_str(ja, "processing_started_at"), json_str(jb, "updated_at"));
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    /* c arrives long after a finished: only its own queue time. */
    assert_int_equal(put(sim, &c, NULL, c.content_type, c.signature, SEED_JSONL, T0 + 5000, NULL),
                     200);
    assert_string_equal(simcore_import_status(sim, c.import_id, T0 + 5199), "queued");
    assert_string_equal(simcore_import_status(sim, c.import_id, T0 + 5200), "processing");
    assert_string_equal(simcore_import_status(sim, c.import_id, T0 + 5700), "complete");
    free(ds);
    free(other);
    simcore_free(sim);
}

static void test_import_partial_and_failed(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    upload_info p, f, e;
    get_upload_url(sim, ds, "p.jsonl", T0, &p);
    get_upload_url(sim, ds, "f.jsonl", T0, &f);
    get_upload_url(sim, ds, "e.jsonl", T0, &e);
    char *partial = xasprintf("%s{\"prompt\": 5}\nnot json\n", SEED_JSONL);
    assert_int_equal(put(sim, &p, NULL, p.content_type, p.signature, partial, T0, NULL), 200);
    free(partial);
    assert_int_equal(put(sim, &f, NULL, f.content_type, f.signature, "{\"x\": 1}\n[]\n", T0, NULL),
                     200);
    assert_int_equal(put(sim, &e, NULL, e.content_type, e.signature, "", T0, NULL), 200);
    /* One at a time, in arrival order: p 200..700, f 700..1200, e 1200..1700. */
    assert_string_equal(simcore_import_status(sim, f.import_id, T0 + 500), "queued");
    assert_string_equal(simcore_import_status(sim, f.import_id, T0 + 800), "processing");
    assert_string_equal(simcore_import_status(sim, e.import_id, T0 + 1199), "queued");
    cJSON *j = get_import(sim, ds, p.import_id, T0 + 2000);
    assert_string_equal(json_str(j, "status"), "partial");
    assert_int_equal(json_int64(j, "accepted_count", -1), 3);
    assert_int_equal(json_int64(j, "rejected_count", -1), 2);
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(j, "errors");
    assert_true(cJSON_GetArraySize(errs) >= 2);
    const cJSON *e0 = cJSON_GetArrayItem(errs, 0);
    assert_int_equal(json_int64(e0, "record_index", -1), 3);
    assert_non_null(json_str(e0, "field"));
    assert_non_null(json_str(e0, "reason"));
    const cJSON *last = cJSON_GetArrayItem(errs, cJSON_GetArraySize(errs) - 1);
    assert_int_equal(json_int64(last, "record_index", -1), 4);
    assert_string_equal(json_str(last, "field"), "_raw");
    cJSON_Delete(j);
    j = get_import(sim, ds, f.import_id, T0 + 2000);
    assert_string_equal(json_str(j, "status"), "failed");
    assert_non_null(json_str(j, "reason"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "accepted_count"));
    cJSON_Delete(j);
    j = get_import(sim, ds, e.import_id, T0 + 2000);
    assert_string_equal(json_str(j, "status"), "failed");
    cJSON_Delete(j);
    /* Datapoints count only usable imports. */
    char *path = xasprintf(API "/datasets/%s", ds);
    int st;
    j = call(sim, "GET", path, NULL, T0 + 2000, &st);
    assert_int_equal(json_int64(j, "total_datapoint_count", -1), 3);
    cJSON_Delete(j);
    free(path);
    free(ds);
    simcore_free(sim);
}

static void test_error_list_is_capped(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    upload_info u;
    get_upload_url(sim, ds, "d.jsonl", T0, &u);
    strbuf sb;
    strbuf_init(&sb);
    strbuf_puts(&sb, "{\"prompt\":\"p\",\"answer\":\"a\"}\n");
    for (int i = 0; i < 250; i++)
        strbuf_puts(&sb, "{\"prompt\":\"p\"}\n");
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, sb.data, T0, NULL), 200);
    strbuf_free(&sb);
    cJSON *j = get_import(sim, ds, u.import_id, T0 + 5000);
    assert_string_equal(json_str(j, "status"), "partial");
    assert_int_equal(json_int64(j, "rejected_count", -1), 250);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "errors")), 100);
    cJSON_Delete(j);
    free(ds);
    simcore_free(sim);
}

static void run_setup(simcore *sim, const char *batch, const char *body, int64_t now, int expect)
{
    char *path = xasprintf(API "/batches/%s/setup", batch);
    int st;
    cJSON *j = call(sim, "POST", path, body, now, &st);
    free(path);
    assert_int_equal(st, expect);
    if (expect == 202) {
        assert_true(cJSON_IsObject(j));
        assert_null(j->child);
    }
    cJSON_Delete(j);
}

static void test_seed_workflow_groups(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    char *batch = create_batch(sim, ds, "prompt", 201);
    /* Before any complete import, setup is refused. */
    run_setup(sim, batch, "{\"tasks_per_group\": 1}", T0, 400);
    upload_info u;
    get_upload_url(sim, ds, "data.jsonl", T0, &u);
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, SEED_JSONL, T0, NULL), 200);
    run_setup(sim, batch, "{\"tasks_per_group\": 1}", T0 + 300, 400); /* still processing */
    run_setup(sim, batch, "{\"tasks_per_group\": 3}", T0 + 1000, 202);
    assert_string_equal(simcore_batch_status(sim, batch, T0 + 1000), "PROCESSING");
    run_setup(sim, batch, "{\"tasks_per_group\": 3}", T0 + 1001, 400); /* not UNINITIALISED */
    assert_string_equal(simcore_batch_status(sim, batch, T0 + 2000), "READY");
    char *path = xasprintf(API "/batches/%s", batch);
    int st;
    cJSON *j = call(sim, "GET", path, NULL, T0 + 2000, &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_str(j, "status"), "READY");
    assert_int_equal(json_int64(j, "total_task_count", -1), 3);
    assert_int_equal(json_int64(j, "total_task_groups", -1), 2); /* session_001, session_002 */
    cJSON_Delete(j);
    char *spath = xasprintf(API "/batches/%s/status", batch);
    j = call(sim, "GET", spath, NULL, T0 + 1500, &st);
    assert_string_equal(json_str(j, "status"), "PROCESSING");
    cJSON_Delete(j);
    free(spath);
    free(path);
    free(batch);
    free(ds);
    simcore_free(sim);
}

static void test_csv_tasks_per_group_and_error(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    upload_info u;
    get_upload_url(sim, ds, "d.csv", T0, &u);
    const char *csv = "prompt,answer\r\n\"a, b\",x\r\nc,y\r\nd,z\r\ne,\"multi\nline\"\r\nf,g\r\n";
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, csv, T0, NULL), 200);
    cJSON *j = get_import(sim, ds, u.import_id, T0 + 1000);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_int_equal(json_int64(j, "accepted_count", -1), 5);
    cJSON_Delete(j);
    char *batch = create_batch(sim, ds, "answer", 201);
    run_setup(sim, batch, "{\"tasks_per_group\": 2}", T0 + 1000, 202);
    char *path = xasprintf(API "/batches/%s", batch);
    int st;
    j = call(sim, "GET", path, NULL, T0 + 2000, &st);
    assert_int_equal(json_int64(j, "total_task_count", -1), 5);
    assert_int_equal(json_int64(j, "total_task_groups", -1), 3); /* ceil(5 / 2) */
    cJSON_Delete(j);
    free(path);
    free(batch);
    /* batch_error = 1: setup ends in ERROR. */
    simcore_get_faults(sim)->batch_error = 1.0;
    batch = create_batch(sim, ds, "answer", 201);
    run_setup(sim, batch, "", T0 + 1000, 202); /* an empty body means the defaults */
    assert_string_equal(simcore_batch_status(sim, batch, T0 + 2000), "ERROR");
    free(batch);
    free(ds);
    simcore_free(sim);
}

static void test_csv_task_group_column(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    upload_info u;
    get_upload_url(sim, ds, "d.csv", T0, &u);
    const char *csv = "session_id,prompt,response_a,response_b\n"
                      "g1,p,a,b\n\"g1\",p2,a,b\ng2,p3,a,b\n\"g,3\",p4,a,b\n";
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, csv, T0, NULL), 200);
    char *batch = create_batch(sim, ds, "prompt", 201);
    run_setup(sim, batch, "{\"tasks_per_group\": 10}", T0 + 1000, 202);
    char *path = xasprintf(API "/batches/%s", batch);
    int st;
    cJSON *j = call(sim, "GET", path, NULL, T0 + 2000, &st);
    assert_int_equal(json_int64(j, "total_task_count", -1), 4);
    assert_int_equal(json_int64(j, "total_task_groups", -1), 3); /* tasks_per_group ignored */
    cJSON_Delete(j);
    free(path);
    free(batch);
    free(ds);
    simcore_free(sim);
}

static void test_batch_create_rules(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    int st;
    /* dataset_field naming a field the schema lacks: 422 INVALID_BATCH_ITEMS. */
    char *body = xasprintf(BATCH_FMT, WS, ds, "nope");
    cJSON *j = call(sim, "POST", API "/batches", body, T0, &st);
    free(body);
    assert_int_equal(st, 422);
    assert_string_equal(json_str(j, "type"), "INVALID_BATCH_ITEMS");
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "issues")) >= 1);
    cJSON_Delete(j);
    /* task_group_id fields cannot be shown. */
    body = xasprintf(BATCH_FMT, WS, ds, "session_id");
    j = call(sim, "POST", API "/batches", body, T0, &st);
    free(body);
    assert_int_equal(st, 422);
    cJSON_Delete(j);
    /* Unknown dataset: 400 on dataset_id. */
    body = xasprintf(BATCH_FMT, WS, "00000000-0000-7000-8000-000000000000", "prompt");
    j = call(sim, "POST", API "/batches", body, T0, &st);
    free(body);
    assert_int_equal(st, 400);
    const cJSON *detail =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "detail");
    assert_non_null(cJSON_GetObjectItemCaseSensitive(detail, "dataset_id"));
    cJSON_Delete(j);
    /* Dataset of another workspace: 400. */
    body = xasprintf(BATCH_FMT, "aaaaaaaaaaaaaaaaaaaaaaaa", ds, "prompt");
    j = call(sim, "POST", API "/batches", body, T0, &st);
    free(body);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    /* Missing task_details: 400 envelope. */
    j = call(sim, "POST", API "/batches", "{\"name\":\"x\",\"workspace_id\":\"" WS "\"}", T0, &st);
    assert_int_equal(st, 400);
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "error"));
    cJSON_Delete(j);
    /* Created batch echoes ids on items and counts the inputs. */
    char *b = create_batch(sim, ds, "prompt", 201);
    char *path = xasprintf(API "/batches/%s", b);
    j = call(sim, "GET", path, NULL, T0, &st);
    assert_string_equal(json_str(j, "status"), "UNINITIALISED");
    assert_int_equal(json_int64(j, "total_instruction_count", -1), 1);
    const cJSON *page = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "batch_items"), 0);
    assert_non_null(json_str(page, "id"));
    cJSON_Delete(j);
    free(path);
    /* List, with and without the trailing slash; workspace_id required. */
    query_kv q[] = {{"workspace_id", WS}, {NULL, NULL}};
    query_kv other[] = {{"workspace_id", "bbbbbbbbbbbbbbbbbbbbbbbb"}, {NULL, NULL}};
    const char *paths[] = {API "/batches", API "/batches/"};
    for (size_t i = 0; i < 2; i++) {
        j = call_full(sim, "GET", paths[i], "Token " TOKEN, NULL, NULL, q, T0, &st, NULL);
        assert_int_equal(st, 200);
        assert_int_equal(json_int64(cJSON_GetObjectItemCaseSensitive(j, "meta"), "count", -1), 1);
        assert_string_equal(
            json_str(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "results"), 0), "id"),
            b);
        cJSON_Delete(j);
    }
    j = call_full(sim, "GET", paths[0], "Token " TOKEN, NULL, NULL, other, T0, &st, NULL);
    assert_int_equal(json_int64(cJSON_GetObjectItemCaseSensitive(j, "meta"), "count", -1), 0);
    cJSON_Delete(j);
    j = call_full(sim, "GET", paths[1], "Token " TOKEN, NULL, NULL, NULL, T0, &st, NULL);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    free(b);
    free(ds);
    simcore_free(sim);
}

static void test_request_log(void **state)
{
    (void)state;
    simcore_config cfg = {.max_log = 3, .upload_ttl_ms = 1000};
    simcore *sim = simcore_new(&cfg);
    for (int i = 0; i < 5; i++) {
        simcore_log_entry e = {.t_ms = T0 + i,
                               .method = "GET",
                               .path = "/p",
                               .endpoint = SIMCORE_EP_GET_BATCH,
                               .status = i == 4 ? 0 : 200,
                               .auth = i % 2 == 0,
                               .fault = i == 4 ? SIMCORE_FAULT_DROP : SIMCORE_FAULT_NONE,
                               .retry_after_ms = -1};
        assert_int_equal(simcore_log_request(sim, &e), (uint64_t)i + 1);
    }
    cJSON *all = simcore_requests_json(sim, 0);
    assert_int_equal(cJSON_GetArraySize(all), 3); /* oldest forgotten */
    const cJSON *first = cJSON_GetArrayItem(all, 0);
    assert_int_equal(json_int64(first, "seq", -1), 3);
    assert_string_equal(json_str(first, "endpoint"), "get_batch");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(first, "fault")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(first, "retry_after_ms")));
    const cJSON *lastj = cJSON_GetArrayItem(all, 2);
    assert_string_equal(json_str(lastj, "fault"), "drop");
    assert_int_equal(json_int64(lastj, "status", -1), 0);
    cJSON_Delete(all);
    cJSON *since = simcore_requests_json(sim, 4);
    assert_int_equal(cJSON_GetArraySize(since), 1);
    cJSON_Delete(since);
    cJSON *st = simcore_state_json(sim, T0);
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(st, "datasets")));
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(st, "batches")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(st, "requests")), 3);
    cJSON_Delete(st);
    simcore_free(sim);
    simcore_free(NULL);
}

/* ---- hostile replies ---------------------------------------------------------------- */

static void test_hostile_parse_and_json(void **state)
{
    (void)state;
    simcore_fault_rule r;
    char err[256];
    static const char *const kinds[] = {"echo",     "echo-raw",    "echo-json",    "echo-pct",
                                        "echo-b64", "echo-header", "echo-429",     "huge",
                                        "deep",     "badutf8",     "badutf8-text", "oddid"};
    for (size_t i = 0; i < BD_ARRAY_LEN(kinds); i++) {
        char *spec = xasprintf("%s=2x@get_import", kinds[i]);
        assert_int_equal(simcore_fault_parse(spec, &r, err, sizeof err), 0);
        assert_string_equal(simcore_fault_kind_name(r.kind), kinds[i]);
        assert_true(r.counted && r.count == 2 && r.endpoint == SIMCORE_EP_GET_IMPORT);
        assert_int_equal(simcore_fault_is_hostile(r.kind), strcmp(kinds[i], "oddid") != 0);
        free(spec);
    }
    assert_false(simcore_fault_is_hostile(SIMCORE_FAULT_503));
    assert_false(simcore_fault_is_hostile(SIMCORE_FAULT_SLOW));
    assert_int_equal(simcore_fault_parse("echo-rot13=1", &r, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "echo-b64"));

    simcore *sim = new_sim();
    simcore_faults *f = simcore_get_faults(sim);
    assert_int_equal(f->hostile_status, 400);
    assert_int_equal(f->huge_bytes, 9 * 1024 * 1024);
    assert_int_equal(f->deep_levels, 100000);
    assert_int_equal(f->odd_id_mode, SIMCORE_ODD_ID_LIST);
    cJSON *j = cJSON_Parse("{\"faults\":[{\"kind\":\"huge\",\"count\":1}],\"hostile_status\":503,"
                           "\"huge_bytes\":7340032,\"deep_levels\":1001,\"odd_id\":\"../../etc\"}");
    assert_int_equal(simcore_faults_from_json(f, j, err, sizeof err), 0);
    cJSON_Delete(j);
    assert_int_equal(f->hostile_status, 503);
    assert_int_equal(f->huge_bytes, 7340032);
    assert_int_equal(f->deep_levels, 1001);
    assert_int_equal(f->odd_id_mode, SIMCORE_ODD_ID_STRING);
    assert_string_equal(f->odd_id, "../../etc");
    cJSON *out = simcore_faults_to_json(f);
    assert_int_equal(json_int64(out, "hostile_status", 0), 503);
    assert_int_equal(json_int64(out, "huge_bytes", 0), 7340032);
    assert_int_equal(json_int64(out, "deep_levels", 0), 1001);
    assert_string_equal(json_str(out, "odd_id"), "../../etc");
    assert_string_equal(json_str(cJSON_GetArrayItem(cJSON_GetObjectItem(out, "faults"), 0), "kind"),
                        "huge");
    cJSON_Delete(out);
    j = cJSON_Parse("{\"odd_id\":12345}");
    assert_int_equal(simcore_faults_from_json(f, j, err, sizeof err), 0);
    cJSON_Delete(j);
    assert_int_equal(f->odd_id_mode, SIMCORE_ODD_ID_NUMBER);
    out = simcore_faults_to_json(f);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(out, "odd_id")));
    cJSON_Delete(out);
    j = cJSON_Parse("{\"odd_id\":null}");
    assert_int_equal(simcore_faults_from_json(f, j, err, sizeof err), 0);
    cJSON_Delete(j);
    assert_int_equal(f->odd_id_mode, SIMCORE_ODD_ID_LIST);
    /* Bad values are refused and change nothing. */
    static const char *const bad[] = {"{\"hostile_status\":200}", "{\"hostile_status\":400.5}",
                                      "{\"huge_bytes\":-1}",      "{\"deep_levels\":0}",
                                      "{\"odd_id\":true}",        "{\"odd_id\":[\"x\"]}"};
    for (size_t i = 0; i < BD_ARRAY_LEN(bad); i++) {
        j = cJSON_Parse(bad[i]);
        assert_int_equal(simcore_faults_from_json(f, j, err, sizeof err), -EINVAL);
        cJSON_Delete(j);
    }
    assert_int_equal(f->hostile_status, 503);
    assert_int_equal(f->deep_levels, 1001);
    simcore_free(sim);
}

static void set_rule(simcore *sim, const char *spec)
{
    char err[256];
    simcore_faults *f = simcore_get_faults(sim);
    assert_int_equal(simcore_fault_parse(spec, &f->rules[f->n_rules], err, sizeof err), 0);
    f->n_rules++;
}

static void test_hostile_decide(void **state)
{
    (void)state;
    simcore *a = new_sim(), *b = new_sim();
    set_rule(a, "echo=1");
    set_rule(b, "echo=1");
    bool seen[SIMCORE_FAULT_ODDID + 1] = {false};
    for (int i = 0; i < 100; i++) {
        simcore_fault_decision da, db;
        simcore_fault_decide(a, SIMCORE_EP_CREATE_DATASET, T0, &da);
        simcore_fault_decide(b, SIMCORE_EP_CREATE_DATASET, T0, &db);
        assert_int_equal(da.kind, db.kind); /* seeded */
        assert_true(da.kind >= SIMCORE_FAULT_ECHO_RAW && da.kind <= SIMCORE_FAULT_ECHO_HEADER);
        assert_int_equal(da.status, 400);
        seen[da.kind] = true;
    }
    for (int k = SIMCORE_FAULT_ECHO_RAW; k <= SIMCORE_FAULT_ECHO_HEADER; k++)
        assert_true(seen[k]);
    simcore_free(a);
    simcore_free(b);

    simcore *sim = new_sim();
    simcore_get_faults(sim)->hostile_status = 502;
    set_rule(sim, "oddid=1x");
    set_rule(sim, "echo-429=1x@get_import");
    set_rule(sim, "deep=1x@get_import");
    simcore_fault_decision d;
    /* An oddid rule is not used up by a reply without an id. */
    simcore_fault_decide(sim, SIMCORE_EP_GET_IMPORT, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_ECHO_429);
    assert_int_equal(d.status, 429);
    assert_int_equal(d.retry_after_ms, 1000);
    simcore_fault_decide(sim, SIMCORE_EP_GET_IMPORT, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_DEEP);
    assert_int_equal(d.status, 502);
    simcore_fault_decide(sim, SIMCORE_EP_GET_IMPORT, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_NONE);
    assert_int_equal(simcore_get_faults(sim)->rules[0].count, 1);
    simcore_fault_decide(sim, SIMCORE_EP_UPLOAD_URL, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_ODDID);
    assert_int_equal(d.status, 0); /* it acts */
    assert_true(d.variant < simcore_odd_id_count());
    assert_int_equal(simcore_get_faults(sim)->rules[0].count, 0);
    simcore_free(sim);
}

static void hostile(simcore *sim, simcore_fault_kind kind, int status, simcore_response *resp)
{
    static const simcore_header headers[] = {
        {"Host", "127.0.0.1:9"},
        {"Authorization", "Token " TOKEN},
        {"Content-Type", "application/json"},
    };
    simcore_request req = {.method = "POST",
                           .path = API "/datasets",
                           .uri = API "/datasets",
                           .authorization = "Token " TOKEN,
                           .headers = headers,
                           .n_headers = BD_ARRAY_LEN(headers),
                           .now_ms = T0};
    simcore_fault_decision d = {.kind = kind, .status = status, .retry_after_ms = -1};
    simcore_hostile_response(sim, &d, &req, resp);
    assert_int_equal(resp->status, status);
    assert_non_null(resp->body);
}

static const char *error_detail(const cJSON *j)
{
    return json_str(cJSON_GetObjectItemCaseSensitive(j, "error"), "detail");
}

static void test_hostile_echo(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    simcore_response r;
    /* raw: the headers as text, the token among them. */
    hostile(sim, SIMCORE_FAULT_ECHO_RAW, 400, &r);
    assert_string_equal(r.content_type, "text/plain; charset=utf-8");
    assert_non_null(strstr(r.body, "\nAuthorization: Token " TOKEN "\n"));
    assert_non_null(strstr(r.body, "POST " API "/datasets HTTP/1.1\n"));
    simcore_response_free(&r);
    /* json: not in the bytes, but in the text once parsed. */
    hostile(sim, SIMCORE_FAULT_ECHO_JSON, 403, &r);
    assert_null(strstr(r.body, TOKEN));
    assert_non_null(strstr(r.body, "\\u0074\\u0030\\u006b\\u0065\\u006e")); /* t0ken */
    cJSON *j = cJSON_Parse(r.body);
    assert_non_null(j);
    assert_non_null(strstr(error_detail(j), "Authorization: Token " TOKEN));
    assert_string_equal(
        json_str(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "headers"), "Authorization"),
        "Token " TOKEN);
    cJSON_Delete(j);
    simcore_response_free(&r);
    /* pct: every byte. */
    hostile(sim, SIMCORE_FAULT_ECHO_PCT, 404, &r);
    assert_null(strstr(r.body, TOKEN));
    assert_non_null(strstr(r.body, "Authorization=%54%6F%6B%65%6E%20%74%30%6B%65%6E"));
    j = cJSON_Parse(r.body);
    assert_non_null(j);
    cJSON_Delete(j);
    simcore_response_free(&r);
    /* b64 of the header value. */
    hostile(sim, SIMCORE_FAULT_ECHO_B64, 500, &r);
    assert_null(strstr(r.body, TOKEN));
    assert_non_null(strstr(r.body, "Authorization=VG9rZW4gdDBrZW4=")); /* "Token t0ken" */
    simcore_response_free(&r);
    /* header: a clean body, the token in X-Echo-Authorization. */
    hostile(sim, SIMCORE_FAULT_ECHO_HEADER, 400, &r);
    assert_null(strstr(r.body, TOKEN));
    assert_string_equal(r.echo_header, "Token " TOKEN);
    assert_null(r.retry_after);
    simcore_response_free(&r);
    /* 429: in Retry-After, the echo header and the body. */
    simcore_get_faults(sim)->retry_after_s = 2;
    hostile(sim, SIMCORE_FAULT_ECHO_429, 429, &r);
    assert_string_equal(r.retry_after, "2; echo=\"Token " TOKEN "\"");
    assert_string_equal(r.echo_header, "Token " TOKEN);
    j = cJSON_Parse(r.body);
    assert_non_null(strstr(error_detail(j), "Authorization: Token " TOKEN));
    cJSON_Delete(j);
    simcore_response_free(&r);
    assert_null(r.retry_after);
    assert_null(r.echo_header);
    simcore_free(sim);
}

static void test_hostile_bodies(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    simcore_response r;
    /* huge: exactly huge_bytes, JSON with the text in detail; 9 MiB by default. */
    hostile(sim, SIMCORE_FAULT_HUGE, 400, &r);
    assert_int_equal(strlen(r.body), 9 * 1024 * 1024);
    simcore_response_free(&r);
    simcore_get_faults(sim)->huge_bytes = 100000;
    hostile(sim, SIMCORE_FAULT_HUGE, 400, &r);
    assert_int_equal(strlen(r.body), 100000);
    cJSON *j = cJSON_Parse(r.body);
    assert_non_null(j);
    assert_true(strlen(error_detail(j)) > 99000);
    cJSON_Delete(j);
    simcore_response_free(&r);
    /* deep: deep_levels arrays in detail. */
    simcore_get_faults(sim)->deep_levels = 3;
    hostile(sim, SIMCORE_FAULT_DEEP, 400, &r);
    assert_non_null(strstr(r.body, "\"detail\":[[[\"deep\"]]]}}"));
    simcore_response_free(&r);
    simcore_get_faults(sim)->deep_levels = 1001;
    hostile(sim, SIMCORE_FAULT_DEEP, 400, &r);
    assert_null(cJSON_Parse(r.body)); /* past cJSON's nesting limit */
    simcore_response_free(&r);
    simcore_get_faults(sim)->deep_levels = 100000;
    hostile(sim, SIMCORE_FAULT_DEEP, 400, &r);
    assert_true(strlen(r.body) > 200000);
    simcore_response_free(&r);
    /* badutf8: invalid UTF-8 and raw control characters inside JSON strings. */
    hostile(sim, SIMCORE_FAULT_BADUTF8, 400, &r);
    assert_false(utf8_valid(r.body, strlen(r.body)));
    assert_non_null(strchr(r.body, '\x1b'));
    assert_non_null(strstr(r.body, "\xed\xa0\x80")); /* an encoded surrogate */
    assert_non_null(strstr(r.body, "\\u0000"));
    assert_int_equal(r.body_len, 0);
    simcore_response_free(&r);
    /* badutf8-text: a NUL byte inside, so the length is explicit. */
    hostile(sim, SIMCORE_FAULT_BADUTF8_TEXT, 400, &r);
    assert_true(r.body_len > strlen(r.body));
    assert_non_null(memmem(r.body, r.body_len, "after a NUL byte", 16));
    assert_string_equal(r.content_type, "text/plain; charset=utf-8");
    simcore_response_free(&r);
    simcore_free(sim);
}

static void test_hostile_oddid(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    for (size_t i = 0; i < simcore_odd_id_count(); i++) {
        simcore_response resp;
        int st;
        cJSON *j = call_full(sim, "POST", API "/datasets", "Token " TOKEN, "application/json",
                             SCHEMA_PLAIN, NULL, T0, &st, &resp);
        assert_int_equal(st, 201);
        char *real = xstrdup(json_str(j, "id"));
        cJSON_Delete(j);
        simcore_fault_decision d = {.kind = SIMCORE_FAULT_ODDID, .variant = (unsigned)i};
        simcore_hostile_rewrite(sim, &d, SIMCORE_EP_CREATE_DATASET, &resp);
        j = cJSON_Parse(resp.body);
        assert_non_null(j);
        bool number;
        const char *odd = simcore_odd_id(i, &number);
        const cJSON *id = cJSON_GetObjectItem(j, "id");
        if (number)
            assert_true(cJSON_IsNumber(id) && id->valuedouble == strtod(odd, NULL));
        else
            assert_string_equal(id->valuestring, odd);
        assert_string_equal(json_str(j, "name"), "ds2"); /* the rest as it was */
        assert_non_null(sim_find_dataset(sim, real));    /* the sim keeps its real id */
        cJSON_Delete(j);
        simcore_response_free(&resp);
        free(real);
    }
    assert_null(simcore_odd_id(simcore_odd_id_count(), NULL));
    /* A given odd id; the import id of an upload URL; errors are left alone. */
    simcore_faults *f = simcore_get_faults(sim);
    f->odd_id_mode = SIMCORE_ODD_ID_STRING;
    strlcpy_bd(f->odd_id, "x?y=1", sizeof f->odd_id);
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    char *path = xasprintf(API "/datasets/%s/upload-url/d.jsonl", ds);
    simcore_response resp;
    int st;
    cJSON *j = call_full(sim, "GET", path, "Token " TOKEN, NULL, NULL, NULL, T0, &st, &resp);
    assert_int_equal(st, 201);
    char *real_import = xstrdup(json_str(j, "import_id"));
    cJSON_Delete(j);
    simcore_fault_decision d = {.kind = SIMCORE_FAULT_ODDID};
    simcore_hostile_rewrite(sim, &d, SIMCORE_EP_UPLOAD_URL, &resp);
    j = cJSON_Parse(resp.body);
    assert_string_equal(json_str(j, "import_id"), "x?y=1");
    assert_string_equal(json_str(j, "dataset_id"), ds);
    assert_string_equal(simcore_import_status(sim, real_import, T0), "uninitialised");
    cJSON_Delete(j);
    simcore_response_free(&resp);
    simcore_response_error(&resp, 400, "no");
    char *before = xstrdup(resp.body);
    simcore_hostile_rewrite(sim, &d, SIMCORE_EP_CREATE_DATASET, &resp);
    assert_string_equal(resp.body, before);
    simcore_response_free(&resp);
    free(before);
    free(real_import);
    free(path);
    free(ds);
    simcore_free(sim);
}

static void test_request_log_uri(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    simcore_log_entry e = {.method = "GET",
                           .path = API "/datasets/../x",
                           .uri = API "/datasets/%2e%2e/x?y=1",
                           .endpoint = SIMCORE_EP_NONE,
                           .status = 404,
                           .retry_after_ms = -1};
    simcore_log_request(sim, &e);
    e.uri = NULL;
    simcore_log_request(sim, &e);
    cJSON *all = simcore_requests_json(sim, 0);
    assert_string_equal(json_str(cJSON_GetArrayItem(all, 0), "uri"), API "/datasets/%2e%2e/x?y=1");
    assert_string_equal(json_str(cJSON_GetArrayItem(all, 0), "path"), API "/datasets/../x");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetArrayItem(all, 1), "uri")));
    cJSON_Delete(all);
    simcore_free(sim);
}

/* ---- append, sync, export ------------------------------------------------------------ */

/* n records for SCHEMA_PLAIN, or for SCHEMA_TG with the group keys in groups (one per
 * record, e.g. "aabc"). */
static char *records(int n, const char *groups)
{
    strbuf sb;
    strbuf_init(&sb);
    for (int i = 0; i < n; i++) {
        if (groups)
            strbuf_printf(&sb,
                          "{\"prompt\":\"p%d\",\"response_a\":\"a\",\"response_b\":\"b\","
                          "\"session_id\":\"s-%c\"}\n",
                          i, groups[i]);
        else
            strbuf_printf(&sb, "{\"prompt\":\"p%d\",\"answer\":\"a\"}\n", i);
    }
    return strbuf_steal(&sb);
}

/* Requests an upload URL on ds (one that may already hold data) and uploads data at now. */
static void append(simcore *sim, const char *ds, const char *data, int64_t now, upload_info *u)
{
    get_upload_url(sim, ds, "more.jsonl", now, u);
    assert_int_equal(put(sim, u, NULL, u->content_type, u->signature, data, now, NULL), 200);
}

static cJSON *post_sync(simcore *sim, const char *batch, int64_t now, int expect)
{
    char *path = xasprintf(API "/batches/%s/sync", batch);
    int st;
    /* No body, as the CLI sends it (with a JSON Content-Type). */
    cJSON *j = call_full(sim, "POST", path, "Token " TOKEN, "application/json", NULL, NULL, now,
                         &st, NULL);
    free(path);
    assert_int_equal(st, expect);
    return j;
}

static cJSON *get_sync(simcore *sim, const char *batch, const char *sync, int64_t now)
{
    char *path = xasprintf(API "/batches/%s/syncs/%s", batch, sync);
    int st;
    cJSON *j = call(sim, "GET", path, NULL, now, &st);
    free(path);
    assert_int_equal(st, 200);
    return j;
}

typedef struct sync_counts {
    int64_t tasks, datapoints, created, expanded, total_tasks, total_groups;
} sync_counts;

/* POSTs a sync at now, checks queued → processing → complete at the configured times
 * (100 ms queued, 300 ms processing) and the counts, and the batch's totals after it. */
static void sync_expect(simcore *sim, const char *batch, int64_t now, const sync_counts *want)
{
    cJSON *j = post_sync(sim, batch, now, 202);
    assert_string_equal(json_str(j, "status"), "queued");
    assert_string_equal(json_str(j, "batch_id"), batch);
    assert_non_null(json_str(j, "dataset_id"));
    assert_non_null(json_str(j, "created_at"));
    assert_non_null(json_str(j, "updated_at"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "tasks_created"));
    char *id = xstrdup(json_str(j, "sync_id"));
    cJSON_Delete(j);
    assert_string_equal(simcore_sync_status(sim, batch, id, now + 99), "queued");
    j = get_sync(sim, batch, id, now + 100);
    assert_string_equal(json_str(j, "status"), "processing");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "groups_created"));
    cJSON_Delete(j);
    j = get_sync(sim, batch, id, now + 400);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "reason"));
    assert_int_equal(json_int64(j, "tasks_created", -1), want->tasks);
    assert_int_equal(json_int64(j, "datapoints_processed", -1), want->datapoints);
    assert_int_equal(json_int64(j, "groups_created", -1), want->created);
    assert_int_equal(json_int64(j, "groups_expanded", -1), want->expanded);
    cJSON_Delete(j);
    char *path = xasprintf(API "/batches/%s", batch);
    int st;
    j = call(sim, "GET", path, NULL, now + 399, &st); /* not yet: the old totals */
    assert_int_equal(json_int64(j, "total_task_count", -1), want->total_tasks - want->tasks);
    cJSON_Delete(j);
    j = call(sim, "GET", path, NULL, now + 400, &st);
    assert_int_equal(json_int64(j, "total_task_count", -1), want->total_tasks);
    assert_int_equal(json_int64(j, "total_task_groups", -1), want->total_groups);
    cJSON_Delete(j);
    free(path);
    free(id);
}

/* A READY batch over ds made from data; returns its id. */
static char *ready_batch(simcore *sim, const char *ds, const char *data, const char *setup)
{
    upload_info u;
    get_upload_url(sim, ds, "seed.jsonl", T0, &u);
    assert_int_equal(put(sim, &u, NULL, u.content_type, u.signature, data, T0, NULL), 200);
    char *batch = create_batch(sim, ds, "prompt", 201);
    run_setup(sim, batch, setup, T0 + 1000, 202);
    assert_string_equal(simcore_batch_status(sim, batch, T0 + 2000), "READY");
    return batch;
}

/* tasks_per_group: the open group is topped up first, then new groups; groups_expanded
 * stays 0 as the spec says. */
static void test_sync_fixed_groups(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    char *data = records(5, NULL);
    char *batch = ready_batch(sim, ds, data, "{\"tasks_per_group\": 2}"); /* 5 tasks, 3 groups */
    free(data);
    static const struct {
        int n;
        sync_counts want;
    } appends[] = {
        {2, {2, 2, 1, 0, 7, 4}},  /* 1 tops up group 3, 1 starts group 4 */
        {3, {3, 3, 1, 0, 10, 5}}, /* 1 fills group 4, 2 make group 5 */
        {4, {4, 4, 2, 0, 14, 7}}, /* no open group: 2 new ones */
    };
    int64_t t = T0 + 10000;
    for (size_t i = 0; i < BD_ARRAY_LEN(appends); i++, t += 10000) {
        upload_info u;
        data = records(appends[i].n, NULL);
        append(sim, ds, data, t, &u);
        free(data);
        assert_string_equal(simcore_import_status(sim, u.import_id, t + 700), "complete");
        sync_expect(sim, batch, t + 700, &appends[i].want);
    }
    /* Nothing new: a legal sync with zero counts. */
    sync_expect(sim, batch, t, &(sync_counts){0, 0, 0, 0, 14, 7});
    free(batch);
    free(ds);
    simcore_free(sim);
}

/* task_group_id: a datapoint joins its key's group or starts one; a group counts once per
 * sync. */
static void test_sync_keyed_groups(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    char *data = records(3, "aab");
    char *batch = ready_batch(sim, ds, data, "{\"tasks_per_group\": 1}"); /* 3 tasks, 2 groups */
    free(data);
    static const struct {
        const char *groups;
        sync_counts want;
    } appends[] = {
        {"bc", {2, 2, 1, 1, 5, 3}},   /* b grows, c is new */
        {"ccde", {4, 4, 2, 1, 9, 5}}, /* c grows (once), d and e are new */
        {"a", {1, 1, 0, 1, 10, 5}},   /* a grows */
    };
    int64_t t = T0 + 10000;
    for (size_t i = 0; i < BD_ARRAY_LEN(appends); i++, t += 10000) {
        upload_info u;
        data = records((int)strlen(appends[i].groups), appends[i].groups);
        append(sim, ds, data, t, &u);
        free(data);
        sync_expect(sim, batch, t + 700, &appends[i].want);
    }
    free(batch);
    free(ds);
    simcore_free(sim);
}

static void expect_failed(simcore *sim, const char *batch, int64_t now, const char *reason_part)
{
    cJSON *j = post_sync(sim, batch, now, 202);
    char *id = xstrdup(json_str(j, "sync_id"));
    cJSON_Delete(j);
    j = get_sync(sim, batch, id, now + 100);
    assert_string_equal(json_str(j, "status"), "failed");
    if (!strstr(json_str(j, "reason"), reason_part))
        fail_msg("reason \"%s\" lacks \"%s\"", json_str(j, "reason"), reason_part);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "tasks_created"));
    cJSON_Delete(j);
    free(id);
}

/* failed with a reason: a batch that is not READY, or an import of the dataset running
 * when the sync starts; imports into an existing dataset run one after another. */
static void test_sync_failed_and_serialised(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    char *unset = create_batch(sim, ds, "prompt", 201);
    expect_failed(sim, unset, T0, "READY status");
    char *data = records(4, NULL);
    char *batch = ready_batch(sim, ds, data, "{\"tasks_per_group\": 4}");
    expect_failed(sim, batch, T0 + 1500, "(it is PROCESSING)");
    /* Two appends back to back: the second waits for the first (200..700, then 700..1200
     * after t). A sync starting while either runs fails. */
    int64_t t = T0 + 10000;
    upload_info a, b;
    append(sim, ds, data, t, &a);
    append(sim, ds, data, t + 10, &b);
    assert_string_equal(simcore_import_status(sim, b.import_id, t + 699), "queued");
    assert_string_equal(simcore_import_status(sim, a.import_id, t + 700), "complete");
    assert_string_equal(simcore_import_status(sim, b.import_id, t + 700), "processing");
    expect_failed(sim, batch, t + 50, "import in progress");
    expect_failed(sim, batch, t + 1000, b.import_id);
    /* Serialised: the second sync starts when the first finishes. */
    cJSON *j1 = post_sync(sim, batch, t + 2000, 202);
    cJSON *j2 = post_sync(sim, batch, t + 2000, 202);
    assert_string_not_equal(json_str(j1, "sync_id"), json_str(j2, "sync_id"));
    const char *s2 = json_str(j2, "sync_id");
    assert_string_equal(simcore_sync_status(sim, batch, s2, t + 2399), "queued");
    assert_string_equal(simcore_sync_status(sim, batch, s2, t + 2400), "processing");
    cJSON *g1 = get_sync(sim, batch, json_str(j1, "sync_id"), t + 2700);
    cJSON *g2 = get_sync(sim, batch, s2, t + 2700);
    assert_int_equal(json_int64(g1, "tasks_created", -1), 8); /* both appends */
    assert_int_equal(json_int64(g1, "groups_created", -1), 2);
    assert_int_equal(json_int64(g2, "tasks_created", -1), 0); /* the first took them all */
    cJSON_Delete(g1);
    cJSON_Delete(g2);
    cJSON_Delete(j1);
    cJSON_Delete(j2);
    /* Unknown ids, wrong method. */
    char *path = xasprintf(API "/batches/%s/syncs/nope", batch);
    int st;
    cJSON_Delete(call(sim, "GET", path, NULL, t, &st));
    assert_int_equal(st, 404);
    free(path);
    cJSON_Delete(post_sync(sim, "nope", t, 404));
    path = xasprintf(API "/batches/%s/sync", batch);
    cJSON_Delete(call(sim, "GET", path, NULL, t, &st));
    assert_int_equal(st, 405);
    free(path);
    free(data);
    free(unset);
    free(batch);
    free(ds);
    simcore_free(sim);
}

/* POSTs a sync at now; its id, malloc'd. */
static char *sync_id_at(simcore *sim, const char *batch, int64_t now)
{
    cJSON *j = post_sync(sim, batch, now, 202);
    char *id = xstrdup(json_str(j, "sync_id"));
    cJSON_Delete(j);
    return id;
}

/* Sync id is queued until start, then processing, and complete 300 ms later with tasks. */
static void expect_runs_from(simcore *sim, const char *batch, const char *id, int64_t start,
                             int64_t tasks)
{
    assert_string_equal(simcore_sync_status(sim, batch, id, start - 1), "queued");
    assert_string_equal(simcore_sync_status(sim, batch, id, start), "processing");
    cJSON *j = get_sync(sim, batch, id, start + 300);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_int_equal(json_int64(j, "tasks_created", -1), tasks);
    cJSON_Delete(j);
}

/* A refused sync ends at once: the next one waits only for its own queue time, not for the
 * processing time the refused one never had. */
static void test_sync_after_refused(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    char *data = records(4, NULL);
    char *batch = ready_batch(sim, ds, data, "{\"tasks_per_group\": 4}");
    int64_t t = T0 + 10000;
    upload_info a;
    append(sim, ds, data, t, &a);                             /* its import runs until t + 700 */
    expect_failed(sim, batch, t + 550, "import in progress"); /* starts at t + 650 */
    char *id = sync_id_at(sim, batch, t + 680);
    expect_runs_from(sim, batch, id, t + 780, 4);
    free(id);
    /* The same when the second is asked for while the first still waits in its queue: once
     * the first is refused at its start, the second moves up to its own queue time. */
    int64_t t2 = t + 5000;
    append(sim, ds, data, t2, &a);                  /* until t2 + 700 */
    char *first = sync_id_at(sim, batch, t2 + 550); /* starts at t2 + 650: refused */
    id = sync_id_at(sim, batch, t2 + 620);
    assert_string_equal(simcore_sync_status(sim, batch, first, t2 + 719), "failed");
    expect_runs_from(sim, batch, id, t2 + 720, 4);
    free(first);
    free(id);
    free(data);
    free(batch);
    free(ds);
    simcore_free(sim);
}

/* ---- export ---------------------------------------------------------------------- */

/* ZIP's CRC-32, bit by bit: an independent check of the sim's table version. */
static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffU;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320U & (0U - (c & 1)));
    }
    return ~c;
}

static uint32_t rd16(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t rd32(const unsigned char *p)
{
    return rd16(p) | rd16(p + 2) << 16;
}

typedef struct zip_member {
    char name[64];
    const unsigned char *data;
    uint32_t size;
} zip_member;

/* A tiny ZIP reader: the end record, each central entry, its local header (same CRC and
 * sizes), stored data whose CRC matches. Returns the number of members. */
static size_t zip_parse(const unsigned char *z, size_t n, zip_member *out, size_t max)
{
    assert_true(n >= 22);
    const unsigned char *eocd = z + n - 22;
    assert_int_equal(rd32(eocd), 0x06054b50);
    size_t count = rd16(eocd + 10);
    uint32_t cd_size = rd32(eocd + 12), cd_off = rd32(eocd + 16);
    assert_int_equal((size_t)cd_off + cd_size, n - 22);
    assert_true(count <= max);
    const unsigned char *c = z + cd_off;
    for (size_t i = 0; i < count; i++) {
        assert_int_equal(rd32(c), 0x02014b50);
        assert_int_equal(rd16(c + 10), 0); /* stored */
        uint32_t crc = rd32(c + 16), size = rd32(c + 24), nlen = rd16(c + 28);
        assert_int_equal(rd32(c + 20), size);
        const unsigned char *l = z + rd32(c + 42);
        assert_int_equal(rd32(l), 0x04034b50);
        assert_int_equal(rd32(l + 14), crc);
        assert_int_equal(rd32(l + 22), size);
        assert_int_equal(rd16(l + 26), nlen);
        assert_memory_equal(l + 30, c + 46, nlen);
        out[i].data = l + 30 + nlen + rd16(l + 28);
        out[i].size = size;
        assert_true(out[i].data + size <= z + cd_off);
        assert_int_equal(crc_bitwise(out[i].data, size), crc);
        assert_true(nlen < sizeof out[i].name);
        memcpy(out[i].name, c + 46, nlen);
        out[i].name[nlen] = '\0';
        c += 46 + nlen + rd16(c + 30) + rd16(c + 32);
    }
    return count;
}

/* Lines of a JSONL member, each checked to be a JSON object. */
static size_t jsonl_lines(const zip_member *m, const char *key)
{
    size_t lines = 0;
    const unsigned char *p = m->data, *end = m->data + m->size;
    while (p < end) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        cJSON *j = cJSON_ParseWithLength((const char *)p, (size_t)(nl - p));
        assert_true(cJSON_IsObject(j));
        assert_non_null(json_str(j, key));
        assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "responses")));
        cJSON_Delete(j);
        lines++;
        p = nl + 1;
    }
    return lines;
}

/* Splits a download URL into its path and (up to 7) query arguments. */
typedef struct split_url {
    char path[512];
    char buf[1024];
    query_kv q[8];
} split_url;

static void url_split(const char *url, split_url *u)
{
    const char *p = strstr(url, "/_download/");
    assert_non_null(p);
    const char *qm = strchr(p, '?');
    assert_non_null(qm);
    snprintf(u->path, sizeof u->path, "%.*s", (int)(qm - p), p);
    strlcpy_bd(u->buf, qm + 1, sizeof u->buf);
    size_t n = 0;
    for (char *save = NULL, *kv = strtok_r(u->buf, "&", &save); kv && n < 7;
         kv = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(kv, '=');
        assert_non_null(eq);
        *eq = '\0';
        u->q[n++] = (query_kv){kv, eq + 1};
    }
    u->q[n] = (query_kv){NULL, NULL};
}

/* GETs a download URL at now; on 200 returns the whole ZIP (caller frees) in *out. */
static int download(simcore *sim, const char *url, const char *auth, int64_t now, strbuf *out)
{
    split_url u;
    url_split(url, &u);
    simcore_request req = {.method = "GET",
                           .path = u.path,
                           .authorization = auth,
                           .query = lookup,
                           .query_ud = u.q,
                           .now_ms = now};
    simcore_response resp;
    simcore_handle(sim, TOKEN, &req, &resp);
    int st = resp.status;
    if (st == 200) {
        assert_non_null(resp.stream);
        assert_int_equal(simcore_stream_prepare(resp.stream), 0);
        char buf[1000]; /* small reads: the stream crosses every boundary mid-read */
        int64_t n;
        uint64_t pos = 0;
        while ((n = simcore_stream_read(resp.stream, pos, buf, sizeof buf)) > 0) {
            strbuf_append(out, buf, (size_t)n);
            pos += (uint64_t)n;
        }
        assert_int_equal(n, 0);
        assert_int_equal(pos, simcore_stream_size(resp.stream));
        assert_int_equal(simcore_stream_read(resp.stream, 5, buf, sizeof buf), -EINVAL);
    } else {
        assert_null(resp.stream);
        assert_string_equal(resp.content_type, "application/xml");
    }
    simcore_response_free(&resp);
    return st;
}

static cJSON *export_call(simcore *sim, const char *method, const char *batch, const char *id,
                          int64_t now, int expect)
{
    char *path = id ? xasprintf(API "/batches/%s/export/%s", batch, id)
                    : xasprintf(API "/batches/%s/export", batch);
    int st;
    cJSON *j = call_full(sim, method, path, "Token " TOKEN, NULL, NULL, NULL, now, &st, NULL);
    if (st != expect)
        fail_msg("%s %s at +%lld: %d, not %d", method, path, (long long)(now - T0), st, expect);
    free(path);
    return j;
}

/* POST export at now; the job's id (caller frees). */
static char *start_export(simcore *sim, const char *batch, int64_t now)
{
    cJSON *j = export_call(sim, "POST", batch, NULL, now, 202);
    assert_string_equal(json_str(j, "status"), "generating");
    char *id = xstrdup(json_str(j, "export_id"));
    cJSON_Delete(j);
    return id;
}

/* The url of a complete export, fetched at now (caller frees); *expires from expires_at. */
static char *export_url(simcore *sim, const char *batch, const char *id, int64_t now,
                        int64_t *expires)
{
    cJSON *j = export_call(sim, "GET", batch, id, now, 200);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "export_id"));
    assert_int_equal(time_parse_rfc3339(json_str(j, "expires_at"), expires), 0);
    char *url = xstrdup(json_str(j, "url"));
    cJSON_Delete(j);
    return url;
}

static void check_zip(const strbuf *zip, size_t tasks, size_t submissions)
{
    zip_member m[4];
    assert_int_equal(zip_parse((const unsigned char *)zip->data, zip->len, m, 4), 2);
    assert_string_equal(m[0].name, "responses-by-task.jsonl");
    assert_string_equal(m[1].name, "responses-by-submission.jsonl");
    assert_int_equal(jsonl_lines(&m[0], "task_id"), tasks);
    assert_int_equal(jsonl_lines(&m[1], "submission_id"), submissions);
}

/* generating → complete with a URL that expires; the ZIP is real and the same bytes for
 * the same batch; the download refuses a token, a wrong signature and an expired URL. */
static void test_export_download(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    char *data = records(5, NULL);
    char *batch = ready_batch(sim, ds, data, "{\"tasks_per_group\": 2}");
    free(data);
    int64_t t = T0 + 10000;
    char *id = start_export(sim, batch, t);
    cJSON *j = export_call(sim, "GET", batch, id, t + 999, 200);
    assert_string_equal(json_str(j, "status"), "generating");
    assert_string_equal(json_str(j, "export_id"), id);
    cJSON_Delete(j);
    int64_t expires;
    char *url = export_url(sim, batch, id, t + 1000, &expires);
    assert_int_equal(expires, t + 1000 + 3600 * 1000); /* 1 h (t is whole seconds) */
    strbuf a, b;
    strbuf_init(&a);
    strbuf_init(&b);
    assert_int_equal(download(sim, url, NULL, t + 2000, &a), 200);
    check_zip(&a, 5, 3);
    /* Deterministic: another export of the same batch is the same bytes. */
    char *id2 = start_export(sim, batch, t + 5000);
    char *url2 = export_url(sim, batch, id2, t + 6000, &expires);
    assert_int_equal(download(sim, url2, NULL, t + 6000, &b), 200);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    /* The presigned URL never takes the token; a changed signature fails. */
    assert_int_equal(download(sim, url, "Token " TOKEN, t + 2000, NULL), 400);
    char *bad = xstrdup(url);
    char *sig = strstr(bad, "X-Amz-Signature=") + 16;
    sig[0] = sig[0] == '0' ? '1' : '0';
    assert_int_equal(download(sim, bad, NULL, t + 2000, NULL), 403);
    free(bad);
    /* Only GET: S3's 405 (an XML error, not the API's envelope). */
    split_url su;
    url_split(url, &su);
    int st;
    simcore_response resp;
    cJSON_Delete(call_full(sim, "PUT", su.path, NULL, NULL, NULL, su.q, t + 2000, &st, &resp));
    assert_int_equal(st, 405);
    assert_string_equal(resp.content_type, "application/xml");
    assert_string_equal(resp.allow, "GET");
    simcore_response_free(&resp);
    /* Expired at expires_at; a new GET hands out a fresh URL. */
    int64_t exp1 = t + 1000 + 3600 * 1000;
    assert_int_equal(download(sim, url, NULL, exp1, NULL), 403);
    free(url);
    url = export_url(sim, batch, id, exp1, &expires);
    assert_true(expires > exp1);
    strbuf_reset(&b);
    assert_int_equal(download(sim, url, NULL, exp1 + 1, &b), 200);
    /* Deleted: the job and its ZIP are gone. */
    cJSON_Delete(export_call(sim, "DELETE", batch, id, exp1 + 2, 204));
    cJSON_Delete(export_call(sim, "GET", batch, id, exp1 + 2, 404));
    assert_int_equal(download(sim, url, NULL, exp1 + 2, NULL), 404);
    strbuf_free(&a);
    strbuf_free(&b);
    free(url);
    free(url2);
    free(id);
    free(id2);
    free(batch);
    free(ds);
    simcore_free(sim);
}

/* The 10-job cap, delete (not while generating), the list, the filters, and both
 * documented POST behaviours. */
static void test_export_cap_delete_modes(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_PLAIN);
    char *data = records(3, NULL);
    char *batch = ready_batch(sim, ds, data, "");
    free(data);
    int64_t t = T0 + 10000;
    char *ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = start_export(sim, batch, t + i * 2000); /* each complete before the next */
    int64_t now = t + 30000;
    cJSON *j = export_call(sim, "POST", batch, NULL, now, 409); /* the cap */
    cJSON_Delete(j);
    j = export_call(sim, "GET", batch, NULL, now, 200);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "results")), 10);
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "results"), 0);
    assert_string_equal(json_str(first, "export_id"), ids[9]); /* most recent first */
    cJSON_Delete(j);
    cJSON_Delete(export_call(sim, "DELETE", batch, ids[0], now, 204));
    cJSON_Delete(export_call(sim, "DELETE", batch, ids[0], now, 404));
    /* A slot is free: a new job, and the same filters while it generates give it back. */
    char *fresh = start_export(sim, batch, now);
    char *again = start_export(sim, batch, now + 10);
    assert_string_equal(fresh, again);
    cJSON_Delete(export_call(sim, "DELETE", batch, fresh, now + 10, 409)); /* generating */
    /* Other filters are another job: over the cap. A bad from is refused first. */
    char *path = xasprintf(API "/batches/%s/export", batch);
    query_kv study[] = {{"study_id", "60ffe5c8371090c7041d43f8"}, {NULL, NULL}};
    query_kv bad_from[] = {{"from", "yesterday"}, {NULL, NULL}};
    int st;
    cJSON_Delete(
        call_full(sim, "POST", path, "Token " TOKEN, NULL, NULL, study, now + 20, &st, NULL));
    assert_int_equal(st, 409);
    cJSON_Delete(
        call_full(sim, "POST", path, "Token " TOKEN, NULL, NULL, bad_from, now + 20, &st, NULL));
    assert_int_equal(st, 400);
    free(path);
    /* Old behaviour: once a job is complete, POST answers 200 with its url. */
    simcore_get_faults(sim)->export_mode = SIMCORE_EXPORT_OLD;
    j = export_call(sim, "POST", batch, NULL, now + 500, 202); /* fresh is generating */
    assert_string_equal(json_str(j, "export_id"), fresh);
    cJSON_Delete(j);
    j = export_call(sim, "POST", batch, NULL, now + 2000, 200);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_non_null(strstr(json_str(j, "url"), "/_download/exports/"));
    assert_non_null(json_str(j, "expires_at"));
    cJSON_Delete(j);
    cJSON_Delete(export_call(sim, "GET", "nope", NULL, now, 404));
    cJSON_Delete(export_call(sim, "PUT", batch, NULL, now, 405));
    cJSON_Delete(export_call(sim, "POST", batch, fresh, now, 405));
    for (int i = 0; i < 10; i++)
        free(ids[i]);
    free(fresh);
    free(again);
    free(batch);
    free(ds);
    simcore_free(sim);
}

/* Predetermined grouping in the ZIP, the padding knob, and /_sim/state. */
static void test_export_keyed_pad_state(void **state)
{
    (void)state;
    simcore *sim = new_sim();
    char *ds = create_dataset(sim, SCHEMA_TG);
    char *data = records(5, "aabbc");
    char *batch = ready_batch(sim, ds, data, "");
    free(data);
    simcore_get_faults(sim)->export_pad = 3000;
    int64_t t = T0 + 10000, expires;
    char *id = start_export(sim, batch, t);
    char *url = export_url(sim, batch, id, t + 1000, &expires);
    strbuf z;
    strbuf_init(&z);
    assert_int_equal(download(sim, url, NULL, t + 1000, &z), 200);
    check_zip(&z, 5, 3); /* 3 groups: 3 submissions */
    assert_true(z.len > 8 * 3000);
    cJSON_Delete(post_sync(sim, batch, t, 202));
    int st;
    cJSON *j = call(sim, "GET", "/_sim/state", NULL, t + 1000, &st);
    assert_int_equal(st, 200);
    const cJSON *b = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "batches"), 0);
    const cJSON *syncs = cJSON_GetObjectItemCaseSensitive(b, "syncs");
    const cJSON *exports = cJSON_GetObjectItemCaseSensitive(b, "exports");
    assert_int_equal(cJSON_GetArraySize(syncs), 1);
    assert_string_equal(json_str(cJSON_GetArrayItem(syncs, 0), "status"), "complete");
    assert_int_equal(cJSON_GetArraySize(exports), 1);
    assert_string_equal(json_str(cJSON_GetArrayItem(exports, 0), "export_id"), id);
    cJSON_Delete(j);
    strbuf_free(&z);
    free(url);
    free(id);
    free(batch);
    free(ds);
    simcore_free(sim);
}

static void test_sync_export_routes_and_faults(void **state)
{
    (void)state;
    simcore_route r;
    simcore_route_request("POST", API "/batches/b1/sync", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_SYNC);
    simcore_route_request("GET", API "/batches/b1/syncs/s1", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_GET_SYNC);
    assert_string_equal(r.sub, "s1");
    simcore_route_request("GET", API "/batches/b1/export", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_LIST_EXPORTS);
    simcore_route_request("DELETE", API "/batches/b1/export/e1", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_DELETE_EXPORT);
    simcore_route_request("POST", API "/batches/b1/export/e1", &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "GET, DELETE");
    simcore_route_request("GET", "/_download/exports/x.zip", &r);
    assert_int_equal(r.endpoint, SIMCORE_EP_DOWNLOAD);
    assert_false(simcore_endpoint_is_control(r.endpoint));
    /* Faults are keyed by the new endpoints too. */
    static const char *const names[] = {"sync",       "get_sync",      "export",  "list_exports",
                                        "get_export", "delete_export", "download"};
    for (size_t i = 0; i < BD_ARRAY_LEN(names); i++) {
        simcore_fault_rule rule;
        char *spec = xasprintf("503=1x@%s", names[i]);
        assert_int_equal(simcore_fault_parse(spec, &rule, NULL, 0), 0);
        assert_string_equal(simcore_endpoint_name(rule.endpoint), names[i]);
        free(spec);
    }
    simcore *sim = new_sim();
    set_rule(sim, "500=1x@download");
    simcore_fault_decision d;
    simcore_fault_decide(sim, SIMCORE_EP_EXPORT, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_NONE);
    simcore_fault_decide(sim, SIMCORE_EP_DOWNLOAD, T0, &d);
    assert_int_equal(d.status, 500);
    /* The export knobs through /_sim/faults. */
    cJSON *f = cJSON_Parse("{\"export_mode\":\"old\",\"export_pad\":10}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), f, NULL, 0), 0);
    cJSON_Delete(f);
    assert_int_equal(simcore_get_faults(sim)->export_mode, SIMCORE_EXPORT_OLD);
    assert_int_equal(simcore_get_faults(sim)->export_pad, 10);
    f = cJSON_Parse("{\"export_mode\":\"older\"}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), f, NULL, 0), -EINVAL);
    cJSON_Delete(f);
    simcore_free(sim);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_fault_parse),
        cmocka_unit_test(test_fault_decide_seeded),
        cmocka_unit_test(test_fault_endpoint_and_json),
        cmocka_unit_test(test_fault_parse_count),
        cmocka_unit_test(test_fault_count_decide),
        cmocka_unit_test(test_fault_count_json),
        cmocka_unit_test(test_auth_and_protocol_errors),
        cmocka_unit_test(test_dataset_validation_and_get),
        cmocka_unit_test(test_upload_refusals),
        cmocka_unit_test(test_import_lifecycle_complete),
        cmocka_unit_test(test_import_arrival_order),
        cmocka_unit_test(test_import_partial_and_failed),
        cmocka_unit_test(test_error_list_is_capped),
        cmocka_unit_test(test_seed_workflow_groups),
        cmocka_unit_test(test_csv_tasks_per_group_and_error),
        cmocka_unit_test(test_csv_task_group_column),
        cmocka_unit_test(test_batch_create_rules),
        cmocka_unit_test(test_request_log),
        cmocka_unit_test(test_hostile_parse_and_json),
        cmocka_unit_test(test_hostile_decide),
        cmocka_unit_test(test_hostile_echo),
        cmocka_unit_test(test_hostile_bodies),
        cmocka_unit_test(test_hostile_oddid),
        cmocka_unit_test(test_request_log_uri),
        cmocka_unit_test(test_sync_fixed_groups),
        cmocka_unit_test(test_sync_keyed_groups),
        cmocka_unit_test(test_sync_failed_and_serialised),
        cmocka_unit_test(test_sync_after_refused),
        cmocka_unit_test(test_export_download),
        cmocka_unit_test(test_export_cap_delete_modes),
        cmocka_unit_test(test_export_keyed_pad_state),
        cmocka_unit_test(test_sync_export_routes_and_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
