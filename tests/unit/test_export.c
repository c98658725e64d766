/* Unit tests of export, the pure machine of one export, with a fake clock: both answers of
 * POST .../export, polling on the [poll] schedule, the download and the DELETE after it, every
 * retry class (429 with Retry-After, 5xx, network, a local file error, a bad ZIP), permanent
 * refusals, an expired or refused URL, a vanished export_id, the 401 hold, the generating
 * timeout, resume after a restart, the record's JSON round trip and hostile records, the
 * destination names and the keep pruning. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/apitext.h"
#include "batchd/export.h"
#include "batchd/util.h"

#define T0     1796208300000LL /* 2026-12-02T10:45:00Z */
#define RND    0x8000000000000000ULL
#define SECRET "tok-SECRET-123456"

static int64_t now = T0;

static export_params params(void)
{
    export_params p;
    export_params_default(&p);
    return p;
}

static export_reply api(long status, const char *body)
{
    return (export_reply){.net = EXPORT_NET_OK,
                          .status = status,
                          .body = body,
                          .body_len = body ? strlen(body) : 0,
                          .secret = SECRET};
}

static export_reply net(export_net n, const char *text)
{
    return (export_reply){.net = n, .error_text = text, .secret = SECRET};
}

/* export_next must say exactly this. */
static void expect_next(export_job *e, const export_params *p, export_action_kind k, export_op op)
{
    bool changed;
    export_action a = export_next(e, p, now, &changed);
    if (a.kind != k || a.op != op)
        fail_msg("export_next: kind %d op %s, want kind %d op %s (state %s)", a.kind,
                 export_op_name(a.op), k, export_op_name(op), export_state_name(e->state));
}

static void send_reply(export_job *e, const export_params *p, export_op op, export_reply r)
{
    expect_next(e, p, EXPORT_ACT_SEND, op);
    export_mark_sent(e, op, now);
    assert_false(export_on_reply(e, op, &r, p, now, RND));
}

static char *complete_body(const char *id, int64_t expires)
{
    char at[40];
    time_format_rfc3339(expires, false, at, sizeof at);
    if (id)
        return xasprintf("{\"status\":\"complete\",\"export_id\":\"%s\",\"url\":"
                         "\"https://store.example/exp.zip?sig=abc\",\"expires_at\":\"%s\"}",
                         id, at);
    return xasprintf("{\"status\":\"complete\",\"url\":\"https://store.example/exp.zip?sig=abc\","
                     "\"expires_at\":\"%s\"}",
                     at);
}

static export_reply downloaded(const char *path)
{
    export_reply r = api(200, NULL);
    r.path = path;
    return r;
}

/* A new export at T0 whose POST was answered 202 with id, at the time of its first poll. */
static export_job *generating(const export_params *p, const char *id)
{
    now = T0;
    export_job *e = export_new(now);
    char *body = xasprintf("{\"status\":\"generating\",\"export_id\":\"%s\"}", id);
    send_reply(e, p, EXPORT_OP_REQUEST, api(202, body));
    free(body);
    assert_int_equal(e->state, EXPORT_GENERATING);
    now = e->poll_at;
    return e;
}

/* A new export (at the current time) whose POST was answered 200 with a URL valid one hour;
 * id may be NULL (the older form without export_id). */
static export_job *downloading(const export_params *p, const char *id)
{
    export_job *e = export_new(now);
    char *body = complete_body(id, now + 3600 * 1000);
    send_reply(e, p, EXPORT_OP_REQUEST, api(200, body));
    free(body);
    assert_int_equal(e->state, EXPORT_DOWNLOADING);
    return e;
}

/* requested -> 202 generating -> polls -> complete -> download -> complete -> DELETE */
static void test_202_poll_download_delete(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    assert_int_equal(e->state, EXPORT_REQUESTED);
    send_reply(e, &p, EXPORT_OP_REQUEST,
               api(202, "{\"status\":\"generating\",\"export_id\":\"exp-1\"}"));
    assert_int_equal(e->state, EXPORT_GENERATING);
    assert_string_equal(e->export_id, "exp-1");
    /* the first poll after [poll] initial (2 s, jitter 10 %) */
    assert_in_range(e->poll_at - now, 1800, 2200);
    expect_next(e, &p, EXPORT_ACT_WAIT, EXPORT_OP_NONE);
    bool changed;
    assert_int_equal(export_next(e, &p, now, &changed).until, e->poll_at);
    now = e->poll_at;
    send_reply(e, &p, EXPORT_OP_STATUS,
               api(200, "{\"status\":\"generating\",\"export_id\":\"exp-1\"}"));
    assert_int_equal(e->state, EXPORT_GENERATING);
    /* the schedule grows: the second interval is about 4 s */
    assert_in_range(e->poll_at - now, 3600, 4400);
    now = e->poll_at;
    char *body = complete_body(NULL, now + 3600 * 1000);
    send_reply(e, &p, EXPORT_OP_STATUS, api(200, body));
    free(body);
    assert_int_equal(e->state, EXPORT_DOWNLOADING);
    assert_string_equal(e->url, "https://store.example/exp.zip?sig=abc");
    send_reply(e, &p, EXPORT_OP_DOWNLOAD, downloaded("exports/20261202T104500Z.zip"));
    assert_int_equal(e->state, EXPORT_COMPLETE);
    assert_string_equal(e->path, "exports/20261202T104500Z.zip");
    assert_null(e->url);
    assert_true(e->delete_pending);
    assert_int_equal(e->at, now);
    send_reply(e, &p, EXPORT_OP_DELETE, api(204, NULL));
    assert_false(e->delete_pending);
    expect_next(e, &p, EXPORT_ACT_NONE, EXPORT_OP_NONE);
    cJSON *pub = export_to_public(e);
    assert_string_equal(json_str(pub, "state"), "complete");
    assert_string_equal(json_str(pub, "export_id"), "exp-1");
    assert_string_equal(json_str(pub, "path"), "exports/20261202T104500Z.zip");
    assert_non_null(json_str(pub, "at"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(pub, "error")));
    cJSON_Delete(pub);
    export_free(e);
}

/* The older answer form: 200 with a finished URL and no export_id: download, no DELETE. */
static void test_200_complete_at_once(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = downloading(&p, NULL);
    assert_int_equal(e->state, EXPORT_DOWNLOADING);
    assert_null(e->export_id);
    send_reply(e, &p, EXPORT_OP_DOWNLOAD, downloaded("exports/20261202T104500Z.zip"));
    assert_int_equal(e->state, EXPORT_COMPLETE);
    assert_false(e->delete_pending);
    expect_next(e, &p, EXPORT_ACT_NONE, EXPORT_OP_NONE);
    export_free(e);
}

static void test_retry_classes(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    /* 429 with Retry-After: never before it */
    export_reply r = api(429, "{\"error\":\"slow down\"}");
    r.retry_after = "30";
    send_reply(e, &p, EXPORT_OP_REQUEST, r);
    assert_int_equal(e->state, EXPORT_REQUESTED);
    assert_true(e->retry_at >= now + 30000 && e->retry_at <= now + 31000);
    assert_non_null(strstr(e->last_error, "HTTP 429"));
    assert_non_null(strstr(e->last_error, "Retry-After 30"));
    expect_next(e, &p, EXPORT_ACT_WAIT, EXPORT_OP_NONE);
    now = e->retry_at;
    /* 5xx: full jitter within the second attempt's bound (2 s) */
    send_reply(e, &p, EXPORT_OP_REQUEST, api(503, "<html>busy</html>"));
    assert_in_range(e->retry_at - now, 1, 2000);
    assert_int_equal(e->attempts, 2);
    now = e->retry_at;
    /* network errors and timeouts */
    send_reply(e, &p, EXPORT_OP_REQUEST, net(EXPORT_NET_TIMEOUT, "Operation timed out"));
    assert_non_null(strstr(e->last_error, "timed out"));
    now = e->retry_at;
    send_reply(e, &p, EXPORT_OP_REQUEST, net(EXPORT_NET_FAILED, NULL));
    assert_int_equal(e->attempts, 4);
    assert_int_equal(e->state, EXPORT_REQUESTED);
    /* success resets the bound */
    now = e->retry_at;
    send_reply(e, &p, EXPORT_OP_REQUEST,
               api(202, "{\"status\":\"generating\",\"export_id\":\"e2\"}"));
    assert_int_equal(e->attempts, 0);
    assert_null(e->last_error);
    export_free(e);
}

static void test_gives_up(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    p.retry_attempts_max = 3;
    export_job *e = export_new(now);
    for (int i = 0; i < 3; i++) {
        now += 10 * 60 * 1000;
        send_reply(e, &p, EXPORT_OP_REQUEST, api(500, NULL));
    }
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "gave up after 3 attempts"));
    assert_non_null(strstr(e->error, "HTTP 500"));
    expect_next(e, &p, EXPORT_ACT_NONE, EXPORT_OP_NONE);
    cJSON *pub = export_to_public(e);
    assert_string_equal(json_str(pub, "error"), e->error);
    cJSON_Delete(pub);
    export_free(e);
}

static void test_permanent_refusals(void **state)
{
    (void)state;
    export_params p = params();
    struct {
        long status;
        const char *body, *want;
    } cases[] = {
        {400, "{\"error\":{\"detail\":\"bad filter\"}}", "HTTP 400: bad filter"},
        {403, "{\"detail\":\"nope\"}", "no access to the batch's workspace"},
        {404, "{\"message\":\"no batch\"}", "the batch does not exist"},
        {409, "export cap reached", "HTTP 409: export cap reached"},
        /* a 4xx too large to read is an answer whatever its body */
        {422, NULL, "HTTP 422"},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        now = T0;
        export_job *e = export_new(now);
        export_reply r = api(cases[i].status, cases[i].body);
        if (!cases[i].body)
            r.net = EXPORT_NET_TOO_LARGE;
        send_reply(e, &p, EXPORT_OP_REQUEST, r);
        assert_int_equal(e->state, EXPORT_FAILED);
        if (!strstr(e->error, cases[i].want))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, e->error, cases[i].want);
        export_free(e);
    }
}

/* A token the API rejects holds the daemon: nothing about the export changes. */
static void test_401_holds(void **state)
{
    (void)state;
    export_params p = params();
    export_job *e = generating(&p, "e1");
    export_reply r = api(401, "{\"detail\":\"Invalid token " SECRET "\"}");
    expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_STATUS);
    assert_true(export_on_reply(e, EXPORT_OP_STATUS, &r, &p, now, RND));
    assert_int_equal(e->state, EXPORT_GENERATING);
    assert_int_equal(e->attempts, 0);
    assert_null(strstr(e->last_error, SECRET));
    expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_STATUS);
    export_free(e);
}

/* The URL lives one hour: past its expires_at (less the margin) it is refreshed by polling
 * again; a download refused (403) asks for a fresh one, a bounded number of times. */
static void test_expired_and_refused_url(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    char *body = complete_body("exp-9", now + 3600 * 1000);
    send_reply(e, &p, EXPORT_OP_REQUEST, api(200, body));
    assert_int_equal(e->state, EXPORT_DOWNLOADING);
    assert_string_equal(e->export_id, "exp-9");
    /* the download waited for a retry; by then the URL is about to expire */
    now += 3600 * 1000 - p.url_margin_ms;
    expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_STATUS);
    assert_null(e->url);
    free(body);
    body = complete_body("exp-9", now + 3600 * 1000);
    send_reply(e, &p, EXPORT_OP_STATUS, api(200, body));
    assert_int_equal(e->state, EXPORT_DOWNLOADING);
    for (int i = 0; i < EXPORT_REFUSALS_MAX; i++) {
        send_reply(e, &p, EXPORT_OP_DOWNLOAD, api(403, "<Error>AccessDenied</Error>"));
        assert_int_equal(e->state, EXPORT_DOWNLOADING);
        assert_null(e->url);
        assert_non_null(strstr(e->last_error, "refused"));
        now = e->retry_at;
        send_reply(e, &p, EXPORT_OP_STATUS, api(200, body));
    }
    send_reply(e, &p, EXPORT_OP_DOWNLOAD, api(403, NULL));
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "refused with HTTP 403"));
    free(body);
    export_free(e);
}

/* A URL said to be expired already (a skewed clock) is tried, not refreshed in a loop. */
static void test_skewed_expiry(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    char *body = complete_body("exp-1", now - 1000);
    send_reply(e, &p, EXPORT_OP_REQUEST, api(200, body));
    free(body);
    assert_int_equal(e->url_expires_at, 0);
    expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_DOWNLOAD);
    export_free(e);
}

static void test_vanished_export(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    for (int i = 0; i < EXPORT_RENEWALS_MAX; i++) {
        send_reply(e, &p, EXPORT_OP_REQUEST,
                   api(202, "{\"status\":\"generating\",\"export_id\":\"gone-1\"}"));
        now = e->poll_at;
        send_reply(e, &p, EXPORT_OP_STATUS, api(404, "{\"detail\":\"not found\"}"));
        assert_int_equal(e->state, EXPORT_REQUESTED);
        assert_null(e->export_id);
        assert_non_null(strstr(e->last_error, "gone-1 vanished"));
        now = e->retry_at;
    }
    send_reply(e, &p, EXPORT_OP_REQUEST,
               api(202, "{\"status\":\"generating\",\"export_id\":\"g\"}"));
    now = e->poll_at;
    send_reply(e, &p, EXPORT_OP_STATUS, api(404, NULL));
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "requested anew"));
    export_free(e);
}

/* failed while generating fails the export; failed after complete (the archive was deleted
 * at the API) asks anew. */
static export_job *roundtrip(const export_job *e);

static void test_status_failed(void **state)
{
    (void)state;
    export_params p = params();
    export_job *e = generating(&p, "e1");
    send_reply(e, &p, EXPORT_OP_STATUS, api(200, "{\"status\":\"failed\"}"));
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "export e1 failed"));
    /* its API job still takes a slot: deleted, once (and a record read back at that point,
     * a stop before the DELETE, owes it still) */
    assert_true(e->delete_pending);
    export_job *owed = roundtrip(e);
    assert_true(owed->delete_pending);
    assert_int_equal(owed->state, EXPORT_FAILED);
    export_free(owed);
    expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_DELETE);
    send_reply(e, &p, EXPORT_OP_DELETE, api(503, "{}"));
    assert_false(e->delete_pending);
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "export e1 failed"));
    assert_non_null(strstr(e->last_error, "left at the API"));
    expect_next(e, &p, EXPORT_ACT_NONE, EXPORT_OP_NONE);
    export_job *back = roundtrip(e);
    assert_int_equal(back->state, EXPORT_FAILED);
    export_free(back);
    export_free(e);

    e = downloading(&p, "e2");
    now += 3600 * 1000; /* expired: refresh */
    send_reply(e, &p, EXPORT_OP_STATUS, api(200, "{\"status\":\"failed\"}"));
    assert_int_equal(e->state, EXPORT_REQUESTED);
    assert_null(e->export_id);
    assert_non_null(strstr(e->last_error, "archive was deleted"));
    export_free(e);
}

static void test_generate_timeout(void **state)
{
    (void)state;
    export_params p = params();
    p.generate_timeout_ms = 60 * 1000;
    export_job *e = generating(&p, "e1");
    while (e->state == EXPORT_GENERATING) {
        bool changed;
        export_action a = export_next(e, &p, now, &changed);
        if (a.kind == EXPORT_ACT_WAIT) {
            now = a.until;
            continue;
        }
        if (a.kind == EXPORT_ACT_NONE)
            break;
        assert_int_equal(a.op, EXPORT_OP_STATUS);
        export_reply r = api(200, "{\"status\":\"generating\",\"export_id\":\"e1\"}");
        export_on_reply(e, a.op, &r, &p, now, RND);
    }
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_true(now - T0 >= 60 * 1000 && now - T0 < 120 * 1000);
    assert_non_null(strstr(e->error, "not complete after 1m"));
    export_free(e);
}

static void test_download_failures(void **state)
{
    (void)state;
    export_params p = params();
    now = T0;
    export_job *e = downloading(&p, "e1");
    /* a local write error (disk full) and a body that is not a ZIP: retried with the URL */
    send_reply(e, &p, EXPORT_OP_DOWNLOAD,
               net(EXPORT_NET_FILE, "download file: write failed: No space left on device"));
    assert_int_equal(e->state, EXPORT_DOWNLOADING);
    assert_non_null(strstr(e->last_error, "No space left"));
    now = e->retry_at;
    export_reply bad = downloaded(NULL);
    bad.zip_error = "no end-of-central-directory record";
    send_reply(e, &p, EXPORT_OP_DOWNLOAD, bad);
    assert_non_null(strstr(e->last_error, "not a whole ZIP file"));
    assert_non_null(e->url);
    now = e->retry_at;
    /* network trouble in the middle of the body */
    send_reply(e, &p, EXPORT_OP_DOWNLOAD, net(EXPORT_NET_FAILED, "Connection reset"));
    assert_int_equal(e->attempts, 3);
    now = e->retry_at;
    /* over the size cap: final */
    export_reply big = api(200, NULL);
    big.net = EXPORT_NET_TOO_LARGE;
    send_reply(e, &p, EXPORT_OP_DOWNLOAD, big);
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "size cap"));
    export_free(e);

    /* a URL the transport rule refuses (http:// to another host): final, nothing sent */
    e = downloading(&p, "e1");
    send_reply(e, &p, EXPORT_OP_DOWNLOAD,
               net(EXPORT_NET_URL, "download URL refused: it uses http:// to a host that is not "
                                   "loopback"));
    assert_int_equal(e->state, EXPORT_FAILED);
    assert_non_null(strstr(e->error, "loopback"));
    export_free(e);
}

/* An export asked for at now, answered complete at once and downloaded: its DELETE is next. */
static export_job *downloaded_export(const export_params *p)
{
    export_job *e = export_new(now);
    char *body = complete_body("e1", now + 3600 * 1000);
    send_reply(e, p, EXPORT_OP_REQUEST, api(200, body));
    free(body);
    send_reply(e, p, EXPORT_OP_DOWNLOAD, downloaded("exports/20261202T104500Z.zip"));
    return e;
}

static void test_delete_outcomes(void **state)
{
    (void)state;
    export_params p = params();
    long statuses[] = {404, 403, 409, 503};
    for (size_t i = 0; i < BD_ARRAY_LEN(statuses); i++) {
        now = T0;
        export_job *e = downloaded_export(&p);
        send_reply(e, &p, EXPORT_OP_DELETE, api(statuses[i], "{\"detail\":\"x\"}"));
        /* the ZIP is here whatever the clean-up at the API says */
        assert_int_equal(e->state, EXPORT_COMPLETE);
        if (statuses[i] == 404) {
            assert_false(e->delete_pending);
        } else if (statuses[i] == 403) {
            assert_false(e->delete_pending);
            assert_non_null(strstr(e->last_error, "refused to delete export e1"));
        } else {
            assert_true(e->delete_pending);
            expect_next(e, &p, EXPORT_ACT_WAIT, EXPORT_OP_NONE);
            now = e->retry_at;
            expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_DELETE);
            /* refused every time: the clean-up is given up, the export stays complete */
            for (int k = 0; k < p.retry_attempts_max && e->delete_pending; k++) {
                send_reply(e, &p, EXPORT_OP_DELETE, api(statuses[i], "{}"));
                now = e->retry_at > now ? e->retry_at : now;
            }
            assert_false(e->delete_pending);
            assert_int_equal(e->state, EXPORT_COMPLETE);
            assert_null(e->error);
        }
        export_free(e);
    }
}

/* A proxy's page of several KiB refusing the DELETE: the note it leaves is capped like every
 * kept text, so the record still reads back (it was once too long and the export was lost at
 * the next start). */
static void test_long_refusal_reads_back(void **state)
{
    (void)state;
    export_params p = params();
    now = T0;
    export_job *e = downloaded_export(&p);
    size_t n = 3 * APITEXT_MAX;
    char *page = malloc(n + 1);
    assert_non_null(page);
    memset(page, 'x', n);
    memcpy(page, "<html>", 6);
    page[n] = '\0';
    send_reply(e, &p, EXPORT_OP_DELETE, api(403, page));
    free(page);
    assert_int_equal(e->state, EXPORT_COMPLETE);
    assert_non_null(strstr(e->last_error, "refused to delete export e1"));
    assert_true(strlen(e->last_error) <= APITEXT_MAX);
    export_job *back = roundtrip(e);
    assert_string_equal(back->last_error, e->last_error);
    assert_string_equal(back->path, "exports/20261202T104500Z.zip");
    export_free(back);
    export_free(e);
}

/* What the API sends is untrusted: an id not fit for a path, a URL holding the token, a
 * missing url, a body that is not JSON, an unknown status. */
static void test_hostile_replies(void **state)
{
    (void)state;
    export_params p = params();
    struct {
        const char *body, *want;
    } cases[] = {
        {"{\"status\":\"generating\",\"export_id\":\"../../batches\"}", "cannot be used in a URL"},
        {"{\"status\":\"complete\",\"url\":\"https://x/?t=" SECRET "\"}", "contains the API token"},
        {"{\"status\":\"complete\"}", "complete without a url"},
        {"<html>ok</html>", "not a JSON object"},
        {"{\"status\":\"generating\"}", "without an export_id"},
        {"{\"status\":\"\\u001b[31mweird\"}", "status \\x1b[31mweird"},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        now = T0;
        export_job *e = export_new(now);
        send_reply(e, &p, EXPORT_OP_REQUEST, api(200, cases[i].body));
        assert_int_equal(e->state, EXPORT_FAILED);
        if (!strstr(e->error, cases[i].want))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, e->error, cases[i].want);
        assert_null(strstr(e->error, SECRET));
        assert_null(e->url);
        export_free(e);
    }
}

static export_job *roundtrip(const export_job *e)
{
    cJSON *j = export_to_json(e);
    char *text = json_print(j);
    cJSON_Delete(j);
    /* the presigned URL never reaches a record */
    assert_null(strstr(text, "store.example"));
    cJSON *back = cJSON_Parse(text);
    free(text);
    char err[256];
    export_job *r = export_from_json(back, err, sizeof err);
    if (!r)
        fail_msg("export_from_json: %s", err);
    cJSON_Delete(back);
    return r;
}

/* Each state survives a restart; the resume rules: a known export_id is polled again, a
 * download in progress asks for a fresh URL, a 200-form download (no id) asks anew. */
static void test_roundtrip_and_resume(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    export_mark_sent(e, EXPORT_OP_REQUEST, now);
    export_job *r = roundtrip(e);
    assert_int_equal(r->state, EXPORT_REQUESTED);
    assert_int_equal(r->pending, EXPORT_OP_REQUEST);
    export_recovered(r, now);
    expect_next(r, &p, EXPORT_ACT_SEND, EXPORT_OP_REQUEST);
    export_free(r);

    export_reply rep = api(202, "{\"status\":\"generating\",\"export_id\":\"e1\"}");
    assert_false(export_on_reply(e, EXPORT_OP_REQUEST, &rep, &p, now, RND));
    r = roundtrip(e);
    assert_int_equal(r->state, EXPORT_GENERATING);
    assert_string_equal(r->export_id, "e1");
    assert_int_equal(r->wait_started_at, e->wait_started_at);
    export_recovered(r, now);
    expect_next(r, &p, EXPORT_ACT_SEND, EXPORT_OP_STATUS);
    export_free(r);

    now = e->poll_at;
    char *body = complete_body("e1", now + 3600 * 1000);
    send_reply(e, &p, EXPORT_OP_STATUS, api(200, body));
    free(body);
    r = roundtrip(e);
    assert_int_equal(r->state, EXPORT_DOWNLOADING);
    assert_null(r->url);
    export_recovered(r, now);
    expect_next(r, &p, EXPORT_ACT_SEND, EXPORT_OP_STATUS);
    export_free(r);

    send_reply(e, &p, EXPORT_OP_DOWNLOAD, downloaded("exports/20261202T104500Z-2.zip"));
    r = roundtrip(e);
    assert_int_equal(r->state, EXPORT_COMPLETE);
    assert_string_equal(r->path, "exports/20261202T104500Z-2.zip");
    assert_true(r->delete_pending);
    export_recovered(r, now);
    expect_next(r, &p, EXPORT_ACT_SEND, EXPORT_OP_DELETE);
    export_free(r);
    export_free(e);

    /* downloading a 200-form export (no id): after a restart it is requested anew */
    e = downloading(&p, NULL);
    r = roundtrip(e);
    export_recovered(r, now);
    assert_int_equal(r->state, EXPORT_REQUESTED);
    expect_next(r, &p, EXPORT_ACT_SEND, EXPORT_OP_REQUEST);
    export_free(r);
    export_free(e);

    /* failed keeps its reason; a retry time beyond any Retry-After (a clock jump) is dropped */
    e = export_new(now);
    e->retry_at = now + EXPORT_RETRY_AFTER_MAX_MS + 1;
    r = roundtrip(e);
    export_recovered(r, now);
    assert_int_equal(r->retry_at, 0);
    export_free(r);
    export_free(e);
}

static void expect_rejected(const char *text, const char *want)
{
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    char err[256];
    export_job *e = export_from_json(j, err, sizeof err);
    cJSON_Delete(j);
    if (e)
        fail_msg("accepted: %s", text);
    if (!strstr(err, want))
        fail_msg("\"%s\": error \"%s\" lacks \"%s\"", text, err, want);
}

static void test_hostile_records(void **state)
{
    (void)state;
    expect_rejected("[]", "not a JSON object");
    expect_rejected("{\"state\":\"exploded\"}", "export.state");
    expect_rejected("{\"state\":\"requested\",\"url\":\"https://x\"}", "unknown member \"url\"");
    expect_rejected("{\"state\":\"generating\",\"export_id\":\"../../x\"}", "export.export_id");
    expect_rejected("{\"state\":\"generating\"}", "without an export_id");
    expect_rejected("{\"state\":\"complete\",\"path\":\"../../etc/passwd\"}", "export.path");
    expect_rejected("{\"state\":\"complete\",\"path\":\"exports/notes.txt\"}", "export.path");
    expect_rejected("{\"state\":\"complete\",\"path\":\"exports/../20261202T104500Z.zip\"}",
                    "export.path");
    expect_rejected("{\"state\":\"complete\"}", "without a path");
    expect_rejected("{\"state\":\"requested\",\"path\":\"exports/20261202T104500Z.zip\"}",
                    "export.path: set while the state is not complete");
    expect_rejected("{\"state\":\"failed\"}", "without an error");
    expect_rejected("{\"state\":\"requested\",\"attempts\":-1}", "export.attempts");
    expect_rejected("{\"state\":\"requested\",\"attempts\":1.5}", "export.attempts");
    expect_rejected("{\"state\":\"requested\",\"attempts\":\"3\"}", "export.attempts");
    expect_rejected("{\"state\":\"requested\",\"retry_at\":1e300}", "export.retry_at");
    expect_rejected("{\"state\":\"requested\",\"delete_pending\":1}", "export.delete_pending");
    expect_rejected("{\"state\":\"requested\",\"delete_pending\":true}",
                    "export.delete_pending: set without");
    expect_rejected("{\"state\":\"requested\",\"pending\":\"delete\"}", "export.pending");
    expect_rejected("{\"state\":\"requested\",\"error\":7}", "export.error");
    /* strings that are not UTF-8, or huge */
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "state", "failed");
    cJSON_AddStringToObject(j, "error", "bad \xff byte");
    char err[256];
    assert_null(export_from_json(j, err, sizeof err));
    assert_non_null(strstr(err, "export.error"));
    cJSON_Delete(j);
    char *huge = xmalloc(100001);
    memset(huge, 'a', 100000);
    huge[100000] = '\0';
    j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "state", "failed");
    cJSON_AddStringToObject(j, "error", huge);
    assert_null(export_from_json(j, err, sizeof err));
    cJSON_Delete(j);
    free(huge);
    /* and the smallest accepted record */
    j = cJSON_Parse("{\"state\":\"requested\"}");
    export_job *e = export_from_json(j, err, sizeof err);
    assert_non_null(e);
    export_free(e);
    cJSON_Delete(j);
    assert_null(export_from_json(NULL, NULL, 0));
}

static bool taken_upto(void *ud, const char *name)
{
    int *n = ud;
    (*n)--;
    (void)name;
    return *n >= 0;
}

static bool all_taken(void *ud, const char *name)
{
    (void)ud;
    (void)name;
    return true;
}

static void test_dest_name(void **state)
{
    (void)state;
    char buf[EXPORT_NAME_MAX];
    assert_int_equal(export_dest_name(T0 + 999, NULL, NULL, buf, sizeof buf), 0);
    assert_string_equal(buf, "exports/20261202T104500Z.zip");
    int taken = 2;
    assert_int_equal(export_dest_name(T0, taken_upto, &taken, buf, sizeof buf), 0);
    assert_string_equal(buf, "exports/20261202T104500Z-3.zip");
    assert_int_equal(export_dest_name(T0, all_taken, NULL, buf, sizeof buf), -EEXIST);
    assert_int_equal(export_dest_name(-1, NULL, NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(export_dest_name(T0, NULL, NULL, buf, 10), -EINVAL);
    /* the names it makes are the names it recognises */
    int64_t at;
    unsigned sfx;
    assert_true(export_name_parse("20261202T104500Z-3.zip", &at, &sfx));
    assert_int_equal(at, T0);
    assert_int_equal(sfx, 3);
    assert_true(export_name_parse("20261202T104500Z.zip", &at, &sfx));
    assert_int_equal(sfx, 1);
    const char *foreign[] = {"notes.txt",
                             "20261302T000000Z.zip",
                             "20261202T104500Z-1.zip",
                             "20261202T104500Z-02.zip",
                             EXPORT_TMP_NAME,
                             "x20261202T104500Z.zip",
                             "20261202T104500Z.zip.bak",
                             "20260230T000000Z.zip",
                             "20261202T104500Z-1001.zip",
                             "20261202t104500z.zip",
                             ""};
    for (size_t i = 0; i < BD_ARRAY_LEN(foreign); i++)
        if (export_name_parse(foreign[i], NULL, NULL))
            fail_msg("accepted \"%s\"", foreign[i]);
}

static void test_prune(void **state)
{
    (void)state;
    const char *names[] = {
        "20261201T000000Z.zip",    /* 0 */
        "notes.txt",               /* 1: never */
        "20261202T104500Z.zip",    /* 2 */
        "20261202T104500Z-2.zip",  /* 3: newest */
        EXPORT_TMP_NAME,           /* 4: never */
        "20251111T111111Z.zip",    /* 5: oldest */
        "my-20251111T111111Z.zip", /* 6: never */
    };
    size_t out[BD_ARRAY_LEN(names)];
    size_t n = export_prune(names, BD_ARRAY_LEN(names), 2, NULL, out);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 5);
    n = export_prune(names, BD_ARRAY_LEN(names), 1, NULL, out);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 2);
    assert_int_equal(out[2], 5);
    /* the ZIP just downloaded is never removed, even when its name sorts old (clock set back) */
    n = export_prune(names, BD_ARRAY_LEN(names), 1, "20251111T111111Z.zip", out);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 2);
    assert_int_equal(export_prune(names, BD_ARRAY_LEN(names), 0, NULL, out), 0);
    assert_int_equal(export_prune(names, BD_ARRAY_LEN(names), 10, NULL, out), 0);
}

static void test_request_again(void **state)
{
    (void)state;
    now = T0;
    export_params p = params();
    export_job *e = export_new(now);
    assert_int_equal(export_request_again(e, now), -EBUSY);
    send_reply(e, &p, EXPORT_OP_REQUEST,
               api(202, "{\"status\":\"generating\",\"export_id\":\"e1\"}"));
    assert_int_equal(export_request_again(e, now), -EBUSY);
    now = e->poll_at;
    send_reply(e, &p, EXPORT_OP_STATUS, api(200, "{\"status\":\"failed\"}"));
    assert_int_equal(e->state, EXPORT_FAILED);
    now += 1000;
    assert_int_equal(export_request_again(e, now), 0);
    assert_int_equal(e->state, EXPORT_REQUESTED);
    assert_null(e->export_id);
    assert_null(e->error);
    assert_int_equal(e->requested_at, now);
    expect_next(e, &p, EXPORT_ACT_SEND, EXPORT_OP_REQUEST);
    export_free(e);
    export_free(NULL);
    assert_string_equal(export_state_name(EXPORT_DOWNLOADING), "downloading");
    assert_int_equal(export_state_from_name("complete"), EXPORT_COMPLETE);
    assert_int_equal(export_state_from_name("nope"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_202_poll_download_delete),
        cmocka_unit_test(test_200_complete_at_once),
        cmocka_unit_test(test_retry_classes),
        cmocka_unit_test(test_gives_up),
        cmocka_unit_test(test_permanent_refusals),
        cmocka_unit_test(test_401_holds),
        cmocka_unit_test(test_expired_and_refused_url),
        cmocka_unit_test(test_skewed_expiry),
        cmocka_unit_test(test_vanished_export),
        cmocka_unit_test(test_status_failed),
        cmocka_unit_test(test_generate_timeout),
        cmocka_unit_test(test_download_failures),
        cmocka_unit_test(test_delete_outcomes),
        cmocka_unit_test(test_long_refusal_reads_back),
        cmocka_unit_test(test_hostile_replies),
        cmocka_unit_test(test_roundtrip_and_resume),
        cmocka_unit_test(test_hostile_records),
        cmocka_unit_test(test_dest_name),
        cmocka_unit_test(test_prune),
        cmocka_unit_test(test_request_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
