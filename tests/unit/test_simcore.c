/* Unit tests of simcore: routing, faults, the import and batch lifecycles and the API's
 * answers, driven with a fake clock and no sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
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
    simcore_fault_decide(sim, SIMCORE_EP_GET_BATCH, T0, &d);
    assert_int_equal(d.kind, SIMCORE_FAULT_NONE);
    assert_int_equal(simcore_get_faults(sim)->slow_ms, 250);
    /* A bad table changes nothing. */
    j = cJSON_Parse("{\"faults\":[{\"kind\":\"teapot\",\"probability\":1}],\"slow_ms\":1}");
    assert_int_equal(simcore_faults_from_json(simcore_get_faults(sim), j, err, sizeof err),
                     -EINVAL);
    cJSON_Delete(j);
    assert_int_equal(simcore_get_faults(sim)->n_rules, 1);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
