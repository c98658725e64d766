/* test-deps: curl util simcore */
/* Drives the real batchd-sim binary ($BATCHD_SIM) over HTTP with libcurl: the
 * pairwise example's workflow, auth and validation failures, every import outcome, each fault
 * kind, shutdown with slow answers pending, many connections and a streamed upload. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "batchd/util.h"
#include "simcore.h"

#define WS   "6278acb09062db3b35bcbeb0"
#define AUTH "Authorization: Token sim-token"

typedef struct sim_proc {
    pid_t pid;
    int port;
    char base[64]; /* http://127.0.0.1:PORT */
} sim_proc;

/* The sim a test started, so that a failed assertion does not leave it running. */
static pid_t g_running = -1;

static int kill_leftover(void **state)
{
    (void)state;
    if (g_running > 0) {
        kill(g_running, SIGKILL);
        waitpid(g_running, NULL, 0);
        g_running = -1;
    }
    return 0;
}

static void sim_start(sim_proc *s, const char *const *extra)
{
    const char *bin = getenv("BATCHD_SIM");
    assert_non_null(bin);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    static const char *const fixed[] = {"--listen", "127.0.0.1:0", "--quiet", "--seed", "7"};
    char *argv[40];
    size_t n = 0;
    argv[n++] = xstrdup(bin);
    for (size_t i = 0; i < BD_ARRAY_LEN(fixed); i++)
        argv[n++] = xstrdup(fixed[i]);
    for (size_t i = 0; extra && extra[i] && n < 38; i++)
        argv[n++] = xstrdup(extra[i]);
    argv[n] = NULL;
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(bin, argv);
        _exit(127);
    }
    g_running = s->pid;
    for (size_t i = 0; i < n; i++)
        free(argv[i]);
    close(fds[1]);
    /* Wait (with a deadline) for the one line that says where it listens. */
    char line[256] = "";
    size_t len = 0;
    int64_t deadline = time_mono_ms() + 10000;
    while (len < sizeof line - 1 && !memchr(line, '\n', len)) {
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        int64_t left = deadline - time_mono_ms();
        assert_true(left > 0);
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        ssize_t r = read(fds[0], line + len, sizeof line - 1 - len);
        assert_true(r > 0);
        len += (size_t)r;
        line[len] = '\0';
    }
    close(fds[0]);
    static const char prefix[] = "listening on http://127.0.0.1:";
    assert_memory_equal(line, prefix, sizeof prefix - 1);
    char *end;
    s->port = (int)strtol(line + sizeof prefix - 1, &end, 10);
    assert_true(*end == '\n');
    assert_true(s->port > 0);
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
}

/* SIGTERM; the sim must exit 0 within timeout_ms. */
static void sim_stop(sim_proc *s, int64_t timeout_ms)
{
    assert_int_equal(kill(s->pid, SIGTERM), 0);
    int64_t deadline = time_mono_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid) {
            g_running = -1;
            break;
        }
        if (time_mono_ms() > deadline) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
            fail_msg("batchd-sim did not exit within %lld ms of SIGTERM", (long long)timeout_ms);
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- HTTP --------------------------------------------------------------------------- */

typedef struct reply {
    CURLcode rc;
    long status;
    strbuf body;
    char retry_after[128];
    char allow[64];
    char etag[64];
    char content_type[64];
    char echo[128]; /* X-Echo-Authorization */
} reply;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    strbuf_append(&((reply *)ud)->body, p, size * n);
    return size * n;
}

static void copy_header(const char *line, size_t len, const char *name, char *dst, size_t cap)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0)
        return;
    const char *v = line + nl;
    size_t vl = len - nl;
    while (vl && (*v == ' '))
        v++, vl--;
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
        vl--;
    if (vl >= cap)
        vl = cap - 1;
    memcpy(dst, v, vl);
    dst[vl] = '\0';
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    reply *r = ud;
    copy_header(p, size * n, "Retry-After:", r->retry_after, sizeof r->retry_after);
    copy_header(p, size * n, "Allow:", r->allow, sizeof r->allow);
    copy_header(p, size * n, "ETag:", r->etag, sizeof r->etag);
    copy_header(p, size * n, "Content-Type:", r->content_type, sizeof r->content_type);
    copy_header(p, size * n, "X-Echo-Authorization:", r->echo, sizeof r->echo);
    return size * n;
}

typedef struct request {
    const char *method;
    const char *url;
    const char *body;
    size_t body_len;
    const char *headers[6];
    long timeout_ms;
} request;

static CURL *make_easy(const request *q, reply *r, struct curl_slist **hl)
{
    memset(r, 0, sizeof *r);
    strbuf_init(&r->body);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, q->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, q->timeout_ms ? q->timeout_ms : 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    *hl = curl_slist_append(NULL, "Expect:");
    for (size_t i = 0; i < BD_ARRAY_LEN(q->headers) && q->headers[i]; i++)
        *hl = curl_slist_append(*hl, q->headers[i]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hl);
    if (q->body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
    }
    return c;
}

static void finish_easy(CURL *c, reply *r, struct curl_slist *hl)
{
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
}

static void do_request(const request *q, reply *r)
{
    struct curl_slist *hl;
    CURL *c = make_easy(q, r, &hl);
    r->rc = curl_easy_perform(c);
    finish_easy(c, r, hl);
}

static void reply_free(reply *r)
{
    strbuf_free(&r->body);
}

static cJSON *reply_json(const reply *r)
{
    cJSON *j = r->body.data ? cJSON_Parse(r->body.data) : NULL;
    assert_non_null(j);
    return j;
}

/* An API call with the token; returns the JSON (or NULL when the body is not JSON). */
static cJSON *api(const sim_proc *s, const char *method, const char *path, const char *json,
                  long *status)
{
    char *url = xasprintf("%s/api/v1/data-collection%s", s->base, path);
    request q = {.method = method,
                 .url = url,
                 .body = json,
                 .body_len = json ? strlen(json) : 0,
                 .headers = {AUTH, json ? "Content-Type: application/json" : NULL}};
    reply r;
    do_request(&q, &r);
    free(url);
    assert_int_equal(r.rc, CURLE_OK);
    *status = r.status;
    cJSON *j = r.body.data ? cJSON_Parse(r.body.data) : NULL;
    reply_free(&r);
    return j;
}

static cJSON *sim_get(const sim_proc *s, const char *path)
{
    char *url = xasprintf("%s%s", s->base, path);
    request q = {.method = "GET", .url = url};
    reply r;
    do_request(&q, &r);
    free(url);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    cJSON *j = reply_json(&r);
    reply_free(&r);
    return j;
}

static void assert_envelope(const cJSON *j, int status)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    assert_non_null(e);
    assert_int_equal(json_int64(e, "status", -1), status);
    assert_non_null(json_str(e, "title"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(e, "detail"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(e, "error_code"));
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the workflow's steps ------------------------------------------------------------ */

#define TG_SCHEMA                                                                                  \
    "{\"strict\":true,\"fields\":{\"prompt\":{\"type\":\"text\"},\"response_a\":{\"type\":"        \
    "\"text\"},\"response_b\":{\"type\":\"text\"},\"session_id\":{\"type\":\"task_group_id\"}}}"

static const char *SEED_JSONL =
    "{\"prompt\": \"Explain gravity\", \"response_a\": \"...\", \"response_b\": \"...\", "
    "\"session_id\": \"session_001\"}\n"
    "{\"prompt\": \"What is AI?\", \"response_a\": \"...\", \"response_b\": \"...\", "
    "\"session_id\": \"session_001\"}\n"
    "{\"prompt\": \"Describe photosynthesis\", \"response_a\": \"...\", \"response_b\": "
    "\"...\", \"session_id\": \"session_002\"}\n";

/* The pairwise example's layout (examples/pairwise). */
#define SEED_BATCH_FMT                                                                             \
    "{\"name\":\"Response evaluation batch\",\"workspace_id\":\"" WS "\",\"dataset_id\":\"%s\","   \
    "\"task_details\":{\"task_name\":\"Evaluate AI Responses\",\"task_introduction\":"             \
    "\"<p>Compare two AI responses and choose the better one.</p>\",\"task_steps\":"               \
    "\"<ol><li>Read the prompt</li><li>Read both responses</li><li>Select the better "             \
    "response</li></ol>\"},\"batch_items\":[{\"rows\":[{\"columns\":[{\"items\":["                 \
    "{\"type\":\"rich_text\",\"content\":\"<strong>Prompt</strong>\"},"                            \
    "{\"type\":\"dataset_field\",\"field\":\"prompt\"}]}]},{\"columns\":[{\"items\":["             \
    "{\"type\":\"rich_text\",\"content\":\"<strong>Response A</strong>\"},"                        \
    "{\"type\":\"dataset_field\",\"field\":\"response_a\"}]},{\"items\":["                         \
    "{\"type\":\"rich_text\",\"content\":\"<strong>Response B</strong>\"},"                        \
    "{\"type\":\"dataset_field\",\"field\":\"%s\"}]}]},{\"columns\":[{\"items\":["                 \
    "{\"type\":\"multiple_choice\",\"description\":\"Which response is more helpful?\","           \
    "\"answer_limit\":1,\"options\":[{\"label\":\"Response A\",\"value\":\"a\"},"                  \
    "{\"label\":\"Response B\",\"value\":\"b\"},{\"label\":\"Neither\","                           \
    "\"value\":\"neither\"}]}]}]}]}]}"

static char *create_dataset(const sim_proc *s)
{
    long st;
    cJSON *j = api(s, "POST", "/datasets",
                   "{\"name\":\"eval\",\"workspace_id\":\"" WS "\",\"schema\":" TG_SCHEMA "}", &st);
    assert_int_equal(st, 201);
    char *id = xstrdup(json_str(j, "id"));
    cJSON_Delete(j);
    return id;
}

typedef struct upload_url {
    char *url;
    char *content_type;
    char *import_id;
} upload_url;

static void get_upload_url(const sim_proc *s, const char *ds, const char *filename, upload_url *u)
{
    char *path = xasprintf("/datasets/%s/upload-url/%s", ds, filename);
    long st;
    cJSON *j = api(s, "GET", path, NULL, &st);
    free(path);
    assert_int_equal(st, 201);
    u->url = xstrdup(json_str(j, "upload_url"));
    u->content_type = xstrdup(json_str(j, "content_type"));
    u->import_id = xstrdup(json_str(j, "import_id"));
    assert_string_equal(json_str(j, "http_method"), "PUT");
    assert_non_null(json_str(j, "expires_at"));
    cJSON_Delete(j);
}

static void upload_url_free(upload_url *u)
{
    free(u->url);
    free(u->content_type);
    free(u->import_id);
}

static long put_file(const upload_url *u, const char *ctype_header, const char *auth,
                     const char *data, reply *out)
{
    char *ct = xasprintf("Content-Type: %s", ctype_header);
    request q = {.method = "PUT",
                 .url = u->url,
                 .body = data,
                 .body_len = strlen(data),
                 .headers = {ct, auth}};
    reply r;
    do_request(&q, &r);
    free(ct);
    assert_int_equal(r.rc, CURLE_OK);
    long st = r.status;
    if (out)
        *out = r;
    else
        reply_free(&r);
    return st;
}

/* Polls the import until it leaves the running states (deadline 10 s); returns its JSON. */
static cJSON *wait_import(const sim_proc *s, const char *ds, const char *imp)
{
    char *path = xasprintf("/datasets/%s/imports/%s", ds, imp);
    int64_t deadline = time_mono_ms() + 10000;
    for (;;) {
        long st;
        cJSON *j = api(s, "GET", path, NULL, &st);
        assert_int_equal(st, 200);
        const char *status = json_str(j, "status");
        assert_non_null(status);
        if (strcmp(status, "queued") != 0 && strcmp(status, "processing") != 0 &&
            strcmp(status, "uninitialised") != 0) {
            free(path);
            return j;
        }
        cJSON_Delete(j);
        assert_true(time_mono_ms() < deadline);
        pause_ms(10);
    }
}

static const char *wait_batch(const sim_proc *s, const char *batch)
{
    char *path = xasprintf("/batches/%s/status", batch);
    int64_t deadline = time_mono_ms() + 10000;
    static char out[32];
    for (;;) {
        long st;
        cJSON *j = api(s, "GET", path, NULL, &st);
        assert_int_equal(st, 200);
        strlcpy_bd(out, json_str(j, "status"), sizeof out);
        cJSON_Delete(j);
        if (strcmp(out, "PROCESSING") != 0 && strcmp(out, "UNINITIALISED") != 0)
            break;
        assert_true(time_mono_ms() < deadline);
        pause_ms(10);
    }
    free(path);
    return out;
}

static const char *const FAST[] = {
    "--import-queued", "20ms", "--import-processing", "30ms", "--batch-processing", "50ms", NULL};

/* ---- tests ---------------------------------------------------------------------------- */

static void test_seed_workflow(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, FAST);
    char *ds = create_dataset(&s);
    upload_url u;
    get_upload_url(&s, ds, "seed.jsonl", &u);
    assert_string_equal(u.content_type, "application/x-ndjson");
    reply r;
    assert_int_equal(put_file(&u, u.content_type, NULL, SEED_JSONL, &r), 200);
    assert_true(r.etag[0] != '\0');
    reply_free(&r);
    cJSON *imp = wait_import(&s, ds, u.import_id);
    assert_string_equal(json_str(imp, "status"), "complete");
    assert_int_equal(json_int64(imp, "accepted_count", -1), 3);
    cJSON_Delete(imp);

    char *body = xasprintf(SEED_BATCH_FMT, ds, "response_b");
    long st;
    cJSON *b = api(&s, "POST", "/batches", body, &st);
    free(body);
    assert_int_equal(st, 201);
    assert_string_equal(json_str(b, "status"), "UNINITIALISED");
    char *batch = xstrdup(json_str(b, "id"));
    cJSON_Delete(b);
    char *setup = xasprintf("/batches/%s/setup", batch);
    cJSON *j = api(&s, "POST", setup, "{\"tasks_per_group\": 3}", &st);
    assert_int_equal(st, 202);
    assert_true(cJSON_IsObject(j) && j->child == NULL);
    cJSON_Delete(j);
    assert_string_equal(wait_batch(&s, batch), "READY");
    char *bpath = xasprintf("/batches/%s", batch);
    j = api(&s, "GET", bpath, NULL, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_int64(j, "total_task_count", -1), 3);
    assert_int_equal(json_int64(j, "total_task_groups", -1), 2);
    cJSON_Delete(j);
    /* Listing finds it, with the CLI's trailing slash too. */
    j = api(&s, "GET", "/batches/?workspace_id=" WS, NULL, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_int64(cJSON_GetObjectItemCaseSensitive(j, "meta"), "count", -1), 1);
    cJSON_Delete(j);
    j = api(&s, "GET", "/batches?workspace_id=" WS, NULL, &st);
    assert_int_equal(st, 200);
    cJSON_Delete(j);

    /* The request log: the PUT went without Authorization, every API call with it. */
    cJSON *log = sim_get(&s, "/_sim/requests?since=0");
    const cJSON *e;
    int puts = 0, apis = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(log, "requests"))
    {
        const char *ep = json_str(e, "endpoint");
        assert_non_null(ep);
        assert_true(json_int64(e, "t_ms", 0) > 0);
        if (strcmp(ep, "upload") == 0) {
            puts++;
            assert_false(json_bool(e, "auth", true));
            assert_int_equal(json_int64(e, "status", 0), 200);
        } else {
            apis++;
            assert_true(json_bool(e, "auth", false));
        }
    }
    assert_int_equal(puts, 1);
    assert_true(apis >= 6);
    cJSON_Delete(log);
    cJSON *stj = sim_get(&s, "/_sim/state");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(stj, "datasets")), 1);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(stj, "batches")), 1);
    cJSON_Delete(stj);
    free(bpath);
    free(setup);
    free(batch);
    upload_url_free(&u);
    free(ds);
    sim_stop(&s, 5000);
}

static void test_auth_failures(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, NULL);
    const char *auths[] = {NULL, "Authorization: Token wrong", "Authorization: Bearer sim-token",
                           "Authorization: sim-token"};
    for (size_t i = 0; i < BD_ARRAY_LEN(auths); i++) {
        char *url = xasprintf("%s/api/v1/data-collection/datasets", s.base);
        request q = {.method = "POST",
                     .url = url,
                     .body = "{}",
                     .body_len = 2,
                     .headers = {"Content-Type: application/json", auths[i]}};
        reply r;
        do_request(&q, &r);
        free(url);
        assert_int_equal(r.status, 401);
        cJSON *j = reply_json(&r);
        assert_envelope(j, 401);
        cJSON_Delete(j);
        reply_free(&r);
    }
    cJSON *log = sim_get(&s, "/_sim/requests");
    const cJSON *reqs = cJSON_GetObjectItemCaseSensitive(log, "requests");
    assert_int_equal(cJSON_GetArraySize(reqs), 4);
    assert_false(json_bool(cJSON_GetArrayItem(reqs, 0), "auth", true));
    assert_true(json_bool(cJSON_GetArrayItem(reqs, 1), "auth", false));
    assert_int_equal(json_int64(cJSON_GetArrayItem(reqs, 1), "status", 0), 401);
    cJSON_Delete(log);
    sim_stop(&s, 5000);
}

static void test_validation_classes(void **state)
{
    (void)state;
    const char *const extra[] = {"--max-body", "4096", NULL};
    sim_proc s;
    sim_start(&s, extra);
    char *url = xasprintf("%s/api/v1/data-collection/datasets", s.base);
    reply r;
    /* 415: not JSON. */
    request q = {.method = "POST",
                 .url = url,
                 .body = "name=x",
                 .body_len = 6,
                 .headers = {AUTH, "Content-Type: application/x-www-form-urlencoded"}};
    do_request(&q, &r);
    assert_int_equal(r.status, 415);
    cJSON *j = reply_json(&r);
    assert_envelope(j, 415);
    cJSON_Delete(j);
    reply_free(&r);
    /* 400: malformed JSON, binary garbage, deep nesting. */
    const char *bad[] = {"{\"name\": \"x\",", "\xff\xfe\x00garbage", NULL};
    char deep[4001]; /* deeper than cJSON's nesting limit, within --max-body */
    memset(deep, '[', 4000);
    deep[4000] = '\0';
    bad[2] = deep;
    for (size_t i = 0; i < 3; i++) {
        request b = {.method = "POST",
                     .url = url,
                     .body = bad[i],
                     .body_len = i == 1 ? 10 : strlen(bad[i]),
                     .headers = {AUTH, "Content-Type: application/json"}};
        do_request(&b, &r);
        assert_int_equal(r.status, 400);
        reply_free(&r);
    }
    /* 413: over --max-body. */
    char *huge = xmalloc(100000);
    memset(huge, ' ', 99999);
    huge[0] = '{';
    huge[99998] = '}';
    huge[99999] = '\0';
    request h = {.method = "POST",
                 .url = url,
                 .body = huge,
                 .body_len = strlen(huge),
                 .headers = {AUTH, "Content-Type: application/json"}};
    do_request(&h, &r);
    assert_int_equal(r.status, 413);
    reply_free(&r);
    free(huge);
    /* 400: a schema the reference forbids (two task_group_id fields, unknown type). */
    long st;
    j = api(&s, "POST", "/datasets",
            "{\"name\":\"x\",\"workspace_id\":\"" WS "\",\"schema\":{\"strict\":true,\"fields\":{"
            "\"a\":{\"type\":\"task_group_id\"},\"b\":{\"type\":\"task_group_id\"}}}}",
            &st);
    assert_int_equal(st, 400);
    assert_envelope(j, 400);
    cJSON_Delete(j);
    j = api(&s, "POST", "/datasets", "{\"name\":5,\"workspace_id\":\"" WS "\"}", &st);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    /* 404 unknown path and unknown ids; 405 with Allow. */
    j = api(&s, "GET", "/nothing", NULL, &st);
    assert_int_equal(st, 404);
    assert_envelope(j, 404);
    cJSON_Delete(j);
    j = api(&s, "GET", "/batches/00000000-0000-7000-8000-000000000000", NULL, &st);
    assert_int_equal(st, 404);
    cJSON_Delete(j);
    request m = {.method = "DELETE", .url = url, .headers = {AUTH}};
    do_request(&m, &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "POST");
    reply_free(&r);
    /* list without workspace_id: 400. */
    j = api(&s, "GET", "/batches/", NULL, &st);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    /* upload-url for a file type a V4 dataset does not take: 400. */
    char *ds = create_dataset(&s);
    char *p = xasprintf("/datasets/%s/upload-url/data.zip", ds);
    j = api(&s, "GET", p, NULL, &st);
    assert_int_equal(st, 400);
    cJSON_Delete(j);
    free(p);
    /* 422: dataset_field naming an unknown field. */
    char *body = xasprintf(SEED_BATCH_FMT, ds, "no_such_field");
    j = api(&s, "POST", "/batches", body, &st);
    free(body);
    assert_int_equal(st, 422);
    assert_string_equal(json_str(j, "type"), "INVALID_BATCH_ITEMS");
    const cJSON *issue = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "issues"), 0);
    assert_int_equal(json_int64(issue, "row", -1), 1);
    assert_int_equal(json_int64(issue, "column", -1), 1);
    assert_int_equal(json_int64(issue, "item", -1), 1);
    cJSON_Delete(j);
    /* setup before any complete import: 400. */
    body = xasprintf(SEED_BATCH_FMT, ds, "response_b");
    j = api(&s, "POST", "/batches", body, &st);
    free(body);
    assert_int_equal(st, 201);
    char *setup = xasprintf("/batches/%s/setup", json_str(j, "id"));
    cJSON_Delete(j);
    j = api(&s, "POST", setup, "{\"tasks_per_group\": 1}", &st);
    assert_int_equal(st, 400);
    assert_envelope(j, 400);
    cJSON_Delete(j);
    free(setup);
    free(ds);
    free(url);
    sim_stop(&s, 5000);
}

static void test_upload_refusals(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, NULL);
    char *ds = create_dataset(&s);
    upload_url u;
    get_upload_url(&s, ds, "d.jsonl", &u);
    reply r;
    assert_int_equal(put_file(&u, u.content_type, AUTH, SEED_JSONL, &r), 400);
    assert_non_null(strstr(r.body.data, "<Error><Code>InvalidArgument</Code>"));
    reply_free(&r);
    assert_int_equal(put_file(&u, "application/json", NULL, SEED_JSONL, &r), 403);
    assert_non_null(strstr(r.body.data, "SignatureDoesNotMatch"));
    reply_free(&r);
    upload_url bad = u;
    char *tampered = xstrdup(u.url);
    tampered[strlen(tampered) - 1] = tampered[strlen(tampered) - 1] == '0' ? '1' : '0';
    bad.url = tampered;
    assert_int_equal(put_file(&bad, u.content_type, NULL, SEED_JSONL, NULL), 403);
    free(tampered);
    bad.url = xasprintf("%s/_upload/nope/nope/x.jsonl?X-Amz-Signature=00", s.base);
    assert_int_equal(put_file(&bad, u.content_type, NULL, SEED_JSONL, NULL), 403);
    free(bad.url);
    /* Any other method on an upload URL: 405, and the sim keeps running. */
    request g = {.method = "GET", .url = u.url};
    do_request(&g, &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.allow, "PUT");
    reply_free(&r);
    upload_url_free(&u);
    free(ds);
    sim_stop(&s, 5000);
    /* A URL that has expired. */
    const char *const ttl[] = {"--upload-ttl", "0", NULL};
    sim_start(&s, ttl);
    ds = create_dataset(&s);
    get_upload_url(&s, ds, "d.jsonl", &u);
    assert_int_equal(put_file(&u, u.content_type, NULL, SEED_JSONL, &r), 403);
    assert_non_null(strstr(r.body.data, "Request has expired"));
    reply_free(&r);
    upload_url_free(&u);
    free(ds);
    sim_stop(&s, 5000);
}

static void test_import_outcomes(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, FAST);
    char *ds = create_dataset(&s);
    struct {
        const char *file, *data, *status;
        int64_t accepted;
    } cases[] = {
        {"c.jsonl", SEED_JSONL, "complete", 3},
        {"p.jsonl",
         "{\"prompt\":\"p\",\"response_a\":\"a\",\"response_b\":\"b\",\"session_id\":"
         "\"s\"}\n{\"prompt\":\"p\"}\n",
         "partial", 1},
        {"f.jsonl", "this is not json\n", "failed", -1},
        {"c.csv", "prompt,response_a,response_b,session_id\nx,y,z,g1\n", "complete", 1},
        {"f.csv", "nope,header\n1,2\n", "failed", -1},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        upload_url u;
        get_upload_url(&s, ds, cases[i].file, &u);
        assert_int_equal(put_file(&u, u.content_type, NULL, cases[i].data, NULL), 200);
        cJSON *j = wait_import(&s, ds, u.import_id);
        assert_string_equal(json_str(j, "status"), cases[i].status);
        assert_int_equal(json_int64(j, "accepted_count", -1), cases[i].accepted);
        if (strcmp(cases[i].status, "partial") == 0) {
            assert_int_equal(json_int64(j, "rejected_count", -1), 1);
            const cJSON *e0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "errors"), 0);
            assert_int_equal(json_int64(e0, "record_index", -1), 1);
        }
        if (strcmp(cases[i].status, "failed") == 0)
            assert_non_null(json_str(j, "reason"));
        cJSON_Delete(j);
        upload_url_free(&u);
    }
    free(ds);
    sim_stop(&s, 5000);
}

/* One request to create_dataset; returns the curl code and status. */
static void create_raw(const sim_proc *s, long timeout_ms, reply *r)
{
    char *url = xasprintf("%s/api/v1/data-collection/datasets", s->base);
    static const char body[] =
        "{\"name\":\"f\",\"workspace_id\":\"" WS "\",\"schema\":" TG_SCHEMA "}";
    request q = {.method = "POST",
                 .url = url,
                 .body = body,
                 .body_len = strlen(body),
                 .headers = {AUTH, "Content-Type: application/json"},
                 .timeout_ms = timeout_ms};
    do_request(&q, r);
    free(url);
}

static int count_datasets(const sim_proc *s)
{
    cJSON *st = sim_get(s, "/_sim/state");
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(st, "datasets"));
    cJSON_Delete(st);
    return n;
}

static cJSON *last_request(const sim_proc *s)
{
    cJSON *log = sim_get(s, "/_sim/requests");
    const cJSON *reqs = cJSON_GetObjectItemCaseSensitive(log, "requests");
    cJSON *last = cJSON_Duplicate(cJSON_GetArrayItem(reqs, cJSON_GetArraySize(reqs) - 1), 1);
    cJSON_Delete(log);
    return last;
}

static void test_fault_status_kinds(void **state)
{
    (void)state;
    const char *kinds[] = {"500", "502", "503", "5xx", "429"};
    for (size_t i = 0; i < BD_ARRAY_LEN(kinds); i++) {
        char *f = xasprintf("%s=1@create_dataset", kinds[i]);
        const char *const extra[] = {"--fault", f, "--retry-after", "2", NULL};
        sim_proc s;
        sim_start(&s, extra);
        reply r;
        create_raw(&s, 0, &r);
        assert_int_equal(r.rc, CURLE_OK);
        if (strcmp(kinds[i], "5xx") == 0)
            assert_true(r.status == 500 || r.status == 502 || r.status == 503);
        else
            assert_int_equal(r.status, strtol(kinds[i], NULL, 10));
        cJSON *j = reply_json(&r);
        assert_envelope(j, (int)r.status);
        cJSON_Delete(j);
        if (r.status == 429)
            assert_string_equal(r.retry_after, "2");
        else
            assert_string_equal(r.retry_after, "");
        reply_free(&r);
        assert_int_equal(count_datasets(&s), 0); /* the request was not performed */
        cJSON *last = last_request(&s);
        assert_string_equal(json_str(last, "endpoint"), "create_dataset");
        assert_non_null(json_str(last, "fault"));
        if (strcmp(kinds[i], "429") == 0)
            assert_int_equal(json_int64(last, "retry_after_ms", -1), 2000);
        cJSON_Delete(last);
        /* Other endpoints are not affected. */
        long st;
        cJSON *l = api(&s, "GET", "/batches?workspace_id=" WS, NULL, &st);
        assert_int_equal(st, 200);
        cJSON_Delete(l);
        sim_stop(&s, 5000);
        free(f);
    }
    /* Retry-After as an HTTP-date. */
    const char *const extra[] = {"--fault", "429=1", "--retry-after", "date", NULL};
    sim_proc s;
    sim_start(&s, extra);
    reply r;
    create_raw(&s, 0, &r);
    assert_int_equal(r.status, 429);
    int64_t when;
    assert_int_equal(time_parse_http_date(r.retry_after, &when), 0);
    assert_true(when >= time_now_ms() - 1000);
    reply_free(&r);
    sim_stop(&s, 5000);
}

static void test_fault_drop_kinds(void **state)
{
    (void)state;
    /* drop: no answer, nothing done. */
    const char *const drop[] = {"--fault", "drop=1@create_dataset", NULL};
    sim_proc s;
    sim_start(&s, drop);
    reply r;
    create_raw(&s, 0, &r);
    assert_true(r.rc == CURLE_GOT_NOTHING || r.rc == CURLE_RECV_ERROR);
    reply_free(&r);
    assert_int_equal(count_datasets(&s), 0);
    cJSON *last = last_request(&s);
    assert_int_equal(json_int64(last, "status", -1), 0);
    assert_string_equal(json_str(last, "fault"), "drop");
    cJSON_Delete(last);
    sim_stop(&s, 5000);
    /* drop-after: no answer, but the dataset exists. */
    const char *const after[] = {"--fault", "drop-after=1@create_dataset", NULL};
    sim_start(&s, after);
    create_raw(&s, 0, &r);
    assert_true(r.rc == CURLE_GOT_NOTHING || r.rc == CURLE_RECV_ERROR);
    reply_free(&r);
    assert_int_equal(count_datasets(&s), 1);
    last = last_request(&s);
    assert_int_equal(json_int64(last, "status", -1), 0);
    assert_string_equal(json_str(last, "fault"), "drop-after");
    cJSON_Delete(last);
    sim_stop(&s, 5000);
}

static void *slow_client(void *ud)
{
    const sim_proc *s = ud;
    reply r;
    create_raw(s, 60000, &r);
    reply_free(&r);
    return NULL;
}

static void test_fault_slow_and_shutdown(void **state)
{
    (void)state;
    const char *const slow[] = {"--fault", "slow=1@create_dataset", "--slow", "2s", NULL};
    sim_proc s;
    sim_start(&s, slow);
    /* A client that waits less than --slow gives up, though the request was performed. */
    reply r;
    create_raw(&s, 500, &r);
    assert_int_equal(r.rc, CURLE_OPERATION_TIMEDOUT);
    reply_free(&r);
    /* The sim may get to the request after the client gave up: wait for it. */
    int64_t until = time_mono_ms() + 10000;
    while (count_datasets(&s) == 0 && time_mono_ms() < until)
        pause_ms(5);
    assert_int_equal(count_datasets(&s), 1);
    /* A patient one gets the answer. */
    int64_t t0 = time_mono_ms();
    create_raw(&s, 10000, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 201);
    assert_true(time_mono_ms() - t0 >= 1990);
    reply_free(&r);
    sim_stop(&s, 5000);

    /* SIGTERM with a 60 s slow answer pending: exit 0 promptly. */
    const char *const slower[] = {"--fault", "slow=1@create_dataset", "--slow", "60s", NULL};
    sim_start(&s, slower);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_client, &s), 0);
    int64_t deadline = time_mono_ms() + 10000;
    while (count_datasets(&s) == 0) {
        assert_true(time_mono_ms() < deadline);
        pause_ms(5);
    }
    sim_stop(&s, 20000); /* well before the 60 s answer: the held answer ends at once */
    pthread_join(th, NULL);
}

typedef struct held {
    const sim_proc *s;
    reply r;
    int64_t answered_ms;
} held;

static void *held_client(void *ud)
{
    held *h = ud;
    create_raw(h->s, 60000, &h->r);
    h->answered_ms = time_mono_ms();
    return NULL;
}

/* An answer held by a slow fault is sent as soon as POST /_sim/faults shortens the delay, so
 * tests release it when they choose instead of racing a fixed delay. */
static void test_slow_answer_released_by_new_faults(void **state)
{
    (void)state;
    const char *const slow[] = {"--fault", "slow=1@create_dataset", "--slow", "60s", NULL};
    sim_proc s;
    sim_start(&s, slow);
    held h = {.s = &s};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, held_client, &h), 0);
    int64_t deadline = time_mono_ms() + 10000;
    while (count_datasets(&s) == 0) {
        assert_true(time_mono_ms() < deadline);
        pause_ms(5);
    }
    char *url = xasprintf("%s/_sim/faults", s.base);
    const char *body = "{\"faults\":[],\"slow_ms\":0}";
    request q = {.method = "POST",
                 .url = url,
                 .body = body,
                 .body_len = strlen(body),
                 .headers = {"Content-Type: application/json"}};
    reply r;
    int64_t released = time_mono_ms();
    do_request(&q, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    pthread_join(th, NULL);
    assert_int_equal(h.r.rc, CURLE_OK);
    assert_int_equal(h.r.status, 201);
    /* Answered once released, far from the 60 s it was held for. */
    assert_true(h.answered_ms - released < 30000);
    reply_free(&h.r);
    free(url);
    sim_stop(&s, 5000);
}

static void test_runtime_faults(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, NULL);
    char *url = xasprintf("%s/_sim/faults", s.base);
    const char *body = "{\"faults\":[{\"kind\":\"503\",\"probability\":1,\"endpoint\":"
                       "\"list_batches\"}],\"retry_after\":1,\"slow_ms\":10,\"batch_error\":0}";
    request q = {.method = "POST",
                 .url = url,
                 .body = body,
                 .body_len = strlen(body),
                 .headers = {"Content-Type: application/json"}};
    reply r;
    do_request(&q, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    long st;
    cJSON *j = api(&s, "GET", "/batches?workspace_id=" WS, NULL, &st);
    assert_int_equal(st, 503);
    cJSON_Delete(j);
    /* /_sim is never faulted; an invalid table is refused and changes nothing. */
    const char *badbody = "{\"faults\":[{\"kind\":\"418\",\"probability\":1}]}";
    request b = {.method = "POST",
                 .url = url,
                 .body = badbody,
                 .body_len = strlen(badbody),
                 .headers = {"Content-Type: application/json"}};
    do_request(&b, &r);
    assert_int_equal(r.status, 400);
    reply_free(&r);
    const char *clear = "{\"faults\":[]}";
    request c = {.method = "POST",
                 .url = url,
                 .body = clear,
                 .body_len = strlen(clear),
                 .headers = {"Content-Type: application/json"}};
    do_request(&c, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    j = api(&s, "GET", "/batches?workspace_id=" WS, NULL, &st);
    assert_int_equal(st, 200);
    cJSON_Delete(j);
    free(url);
    sim_stop(&s, 5000);
}

static long post_faults(const sim_proc *s, const char *body)
{
    char *url = xasprintf("%s/_sim/faults", s->base);
    request q = {.method = "POST",
                 .url = url,
                 .body = body,
                 .body_len = strlen(body),
                 .headers = {"Content-Type: application/json"}};
    reply r;
    do_request(&q, &r);
    free(url);
    assert_int_equal(r.rc, CURLE_OK);
    long st = r.status;
    reply_free(&r);
    return st;
}

/* The count left in rule i of GET /_sim/faults (or of /_sim/state's "faults"); -1 when
 * the rule has no count. */
static int64_t rule_count(const sim_proc *s, const char *path, int i)
{
    cJSON *j = sim_get(s, path);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "faults");
    if (strcmp(path, "/_sim/state") == 0)
        f = cJSON_GetObjectItemCaseSensitive(f, "faults");
    int64_t n = json_int64(cJSON_GetArrayItem(f, i), "count", -1);
    cJSON_Delete(j);
    return n;
}

/* N list_batches requests at once; returns how many got a 503 (the rest must get 200). */
static int concurrent_list_503s(const sim_proc *s, int n)
{
    enum { MAX = 16 };
    assert_true(n <= MAX);
    CURLM *m = curl_multi_init();
    CURL *easy[MAX];
    reply replies[MAX];
    struct curl_slist *lists[MAX];
    char *url = xasprintf("%s/api/v1/data-collection/batches?workspace_id=" WS, s->base);
    for (int i = 0; i < n; i++) {
        request q = {.method = "GET", .url = url, .headers = {AUTH}, .timeout_ms = 20000};
        easy[i] = make_easy(&q, &replies[i], &lists[i]);
        curl_easy_setopt(easy[i], CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(easy[i], CURLOPT_FORBID_REUSE, 1L);
        curl_multi_add_handle(m, easy[i]);
    }
    int running = 1;
    int64_t deadline = time_mono_ms() + 30000;
    while (running) {
        assert_int_equal(curl_multi_perform(m, &running), CURLM_OK);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
        assert_true(time_mono_ms() < deadline);
    }
    int faulted = 0;
    for (int i = 0; i < n; i++) {
        curl_multi_remove_handle(m, easy[i]);
        finish_easy(easy[i], &replies[i], lists[i]);
        if (replies[i].status == 503)
            faulted++;
        else
            assert_int_equal(replies[i].status, 200);
        reply_free(&replies[i]);
    }
    curl_multi_cleanup(m);
    free(url);
    return faulted;
}

static void test_fault_counts(void **state)
{
    (void)state;
    /* --fault 503=2x@create_dataset: the next two get a 503 (and are not performed), then
     * no more; a probability rule after it that never hits changes nothing. */
    const char *const extra[] = {"--fault", "503=2x@create_dataset", "--fault",
                                 "drop=0@create_dataset", NULL};
    sim_proc s;
    sim_start(&s, extra);
    assert_int_equal(rule_count(&s, "/_sim/faults", 0), 2);
    assert_int_equal(rule_count(&s, "/_sim/faults", 1), -1);
    reply r;
    for (int i = 0; i < 2; i++) {
        create_raw(&s, 0, &r);
        assert_int_equal(r.rc, CURLE_OK);
        assert_int_equal(r.status, 503);
        cJSON *j = reply_json(&r);
        assert_envelope(j, 503);
        cJSON_Delete(j);
        reply_free(&r);
        cJSON *last = last_request(&s);
        assert_string_equal(json_str(last, "fault"), "503");
        cJSON_Delete(last);
        assert_int_equal(rule_count(&s, "/_sim/state", 0), 1 - i);
    }
    assert_int_equal(count_datasets(&s), 0);
    for (int i = 0; i < 3; i++) {
        create_raw(&s, 0, &r);
        assert_int_equal(r.status, 201);
        reply_free(&r);
        cJSON *last = last_request(&s);
        assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(last, "fault")));
        cJSON_Delete(last);
    }
    assert_int_equal(count_datasets(&s), 3);
    assert_int_equal(rule_count(&s, "/_sim/faults", 0), 0);

    /* At run time, with requests racing: exactly count of them are faulted. */
    assert_int_equal(post_faults(&s, "{\"faults\":[{\"kind\":\"503\",\"count\":5,\"endpoint\":"
                                     "\"list_batches\"}]}"),
                     200);
    assert_int_equal(rule_count(&s, "/_sim/faults", 0), 5);
    assert_int_equal(concurrent_list_503s(&s, 16), 5);
    assert_int_equal(rule_count(&s, "/_sim/faults", 0), 0);
    assert_int_equal(concurrent_list_503s(&s, 4), 0);
    /* Both a count and a probability: refused, the table is unchanged. */
    assert_int_equal(post_faults(&s, "{\"faults\":[{\"kind\":\"503\",\"count\":1,"
                                     "\"probability\":1}]}"),
                     400);
    assert_int_equal(rule_count(&s, "/_sim/faults", 0), 0);
    sim_stop(&s, 5000);
}

/* The hostile kinds over HTTP: the echo headers reach the client, a body with a NUL byte
 * is sent whole, a huge body has its size, an odd id is given, the table is set at run
 * time, and the log keeps the request target as sent. */
static void test_hostile_kinds(void **state)
{
    (void)state;
    const char *const extra[] = {"--fault",
                                 "echo-header=1x@create_dataset",
                                 "--fault",
                                 "echo-429=1x@create_dataset",
                                 "--fault",
                                 "badutf8-text=1x@create_dataset",
                                 "--fault",
                                 "huge=1x@create_dataset",
                                 "--fault",
                                 "oddid=1x",
                                 "--odd-id",
                                 "../../etc",
                                 "--huge-size",
                                 "9437184",
                                 "--hostile-status",
                                 "403",
                                 "--retry-after",
                                 "3",
                                 NULL};
    sim_proc s;
    sim_start(&s, extra);
    reply r;
    create_raw(&s, 0, &r);
    assert_int_equal(r.status, 403);
    assert_string_equal(r.echo, "Token sim-token");
    assert_null(strstr(r.body.data, "sim-token"));
    reply_free(&r);
    create_raw(&s, 0, &r);
    assert_int_equal(r.status, 429);
    assert_string_equal(r.retry_after, "3; echo=\"Token sim-token\"");
    assert_non_null(strstr(r.body.data, "Authorization: Token sim-token"));
    reply_free(&r);
    create_raw(&s, 0, &r);
    assert_int_equal(r.status, 403);
    assert_true(r.body.len > strlen(r.body.data)); /* the NUL byte and what follows came */
    assert_non_null(memmem(r.body.data, r.body.len, "after a NUL byte", 16));
    assert_false(utf8_valid(r.body.data, strlen(r.body.data)));
    reply_free(&r);
    create_raw(&s, 0, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 403);
    assert_int_equal(r.body.len, 9437184);
    reply_free(&r);
    assert_int_equal(count_datasets(&s), 0); /* none of them acted */
    create_raw(&s, 0, &r);
    assert_int_equal(r.status, 201);
    cJSON *j = reply_json(&r);
    assert_string_equal(json_str(j, "id"), "../../etc");
    cJSON_Delete(j);
    reply_free(&r);
    assert_int_equal(count_datasets(&s), 1); /* oddid acted */
    cJSON *last = last_request(&s);
    assert_string_equal(json_str(last, "fault"), "oddid");
    cJSON_Delete(last);

    /* At run time: an echo of every header, in the seeded variant, as a 451. */
    assert_int_equal(post_faults(&s, "{\"faults\":[{\"kind\":\"echo-raw\",\"count\":1}],"
                                     "\"hostile_status\":451}"),
                     200);
    cJSON *f = sim_get(&s, "/_sim/faults");
    assert_int_equal(json_int64(f, "hostile_status", 0), 451);
    assert_string_equal(json_str(f, "odd_id"), "../../etc");
    cJSON_Delete(f);
    create_raw(&s, 0, &r);
    assert_int_equal(r.status, 451);
    assert_string_equal(r.content_type, "text/plain; charset=utf-8");
    assert_non_null(strstr(r.body.data, "\nAuthorization: Token sim-token\n"));
    reply_free(&r);

    /* The log: the target as sent (not decoded), with its query. */
    char *url = xasprintf("%s/api/v1/data-collection/datasets/%%2e%%2e/x?y=1", s.base);
    request q = {.method = "GET", .url = url, .headers = {AUTH}};
    do_request(&q, &r);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    free(url);
    last = last_request(&s);
    assert_string_equal(json_str(last, "uri"), "/api/v1/data-collection/datasets/%2e%2e/x?y=1");
    assert_string_equal(json_str(last, "path"), "/api/v1/data-collection/datasets/../x");
    cJSON_Delete(last);
    sim_stop(&s, 5000);
}

static void test_many_connections(void **state)
{
    (void)state;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 1200 && rl.rlim_max >= 1200) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    enum { N = 500 };
    sim_proc s;
    sim_start(&s, NULL);
    CURLM *m = curl_multi_init();
    static CURL *easy[N];
    static reply replies[N];
    static struct curl_slist *lists[N];
    char *url = xasprintf("%s/api/v1/data-collection/batches?workspace_id=" WS, s.base);
    for (int i = 0; i < N; i++) {
        request q = {.method = "GET", .url = url, .headers = {AUTH}, .timeout_ms = 60000};
        easy[i] = make_easy(&q, &replies[i], &lists[i]);
        curl_easy_setopt(easy[i], CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(easy[i], CURLOPT_FORBID_REUSE, 1L);
        curl_multi_add_handle(m, easy[i]);
    }
    int running = 1;
    int64_t deadline = time_mono_ms() + 60000;
    while (running) {
        assert_int_equal(curl_multi_perform(m, &running), CURLM_OK);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
        assert_true(time_mono_ms() < deadline);
    }
    int ok = 0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)))
        if (msg->msg == CURLMSG_DONE && msg->data.result == CURLE_OK)
            ok++;
    for (int i = 0; i < N; i++) {
        curl_multi_remove_handle(m, easy[i]);
        finish_easy(easy[i], &replies[i], lists[i]);
        assert_int_equal(replies[i].status, 200);
        reply_free(&replies[i]);
    }
    assert_int_equal(ok, N);
    curl_multi_cleanup(m);
    free(url);
    sim_stop(&s, 5000);
}

/* A streamed upload of many records: the sim counts them all and its memory stays flat. */
typedef struct gen {
    size_t records, sent;
    char line[128];
    size_t line_len, line_off;
} gen;

static size_t gen_read(char *buf, size_t size, size_t n, void *ud)
{
    gen *g = ud;
    size_t cap = size * n, out = 0;
    while (out < cap) {
        if (g->line_off == g->line_len) {
            if (g->sent == g->records)
                break;
            g->line_len = (size_t)snprintf(g->line, sizeof g->line,
                                           "{\"prompt\":\"p%zu\",\"response_a\":\"a\","
                                           "\"response_b\":\"b\",\"session_id\":\"g%zu\"}\n",
                                           g->sent, g->sent / 4);
            g->line_off = 0;
            g->sent++;
        }
        size_t k = g->line_len - g->line_off;
        if (k > cap - out)
            k = cap - out;
        memcpy(buf + out, g->line + g->line_off, k);
        g->line_off += k;
        out += k;
    }
    return out;
}

/* The peak resident size of pid since peak_reset: a buffer built whole and freed again by
 * the end still shows in it, which the current size would not. */
static long peak_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

static void peak_reset(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/clear_refs", (int)pid);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("5", f); /* resets VmHWM to the current size */
    assert_int_equal(fclose(f), 0);
}

/* GCC says __SANITIZE_ADDRESS__, clang (the asan preset) __has_feature(address_sanitizer). */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static void test_streamed_upload(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, FAST);
    char *ds = create_dataset(&s);
    upload_url u;
    get_upload_url(&s, ds, "big.jsonl", &u);
    peak_reset(s.pid);
    long before = peak_kib(s.pid);
#ifdef UNDER_ASAN
    /* ASan's quarantine and shadow memory hide the sim's own use; count, do not weigh. */
    gen g = {.records = 100000};
#else
    gen g = {.records = 400000}; /* about 32 MB */
#endif
    reply r;
    request q = {.method = "PUT",
                 .url = u.url,
                 .headers = {"Content-Type: application/x-ndjson"},
                 .timeout_ms = 300000};
    struct curl_slist *hl;
    CURL *c = make_easy(&q, &r, &hl);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, gen_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &g);
    r.rc = curl_easy_perform(c);
    finish_easy(c, &r, hl);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    long after = peak_kib(s.pid);
#ifndef UNDER_ASAN
    /* 32 MB went through; the sim keeps only the group hashes (100000 x 8 bytes). */
    assert_true(after - before < 16 * 1024);
#else
    (void)before;
    (void)after;
#endif
    cJSON *j = wait_import(&s, ds, u.import_id);
    assert_string_equal(json_str(j, "status"), "complete");
    assert_int_equal(json_int64(j, "accepted_count", -1), (int64_t)g.records);
    cJSON_Delete(j);
    upload_url_free(&u);
    free(ds);
    sim_stop(&s, 5000);
}

/* ---- append, sync, export over HTTP --------------------------------------------------- */

static const char *const SYNC_FAST[] = {"--import-queued",
                                        "20ms",
                                        "--import-processing",
                                        "30ms",
                                        "--batch-processing",
                                        "50ms",
                                        "--sync-queued",
                                        "20ms",
                                        "--sync-processing",
                                        "30ms",
                                        "--export-generating",
                                        "50ms",
                                        "--export-url-ttl",
                                        "3s",
                                        NULL};

/* Uploads data as a new import of ds and waits for it to complete. */
static void http_append(const sim_proc *s, const char *ds, const char *data)
{
    upload_url u;
    get_upload_url(s, ds, "part.jsonl", &u);
    assert_int_equal(put_file(&u, u.content_type, NULL, data, NULL), 200);
    cJSON *imp = wait_import(s, ds, u.import_id);
    assert_string_equal(json_str(imp, "status"), "complete");
    cJSON_Delete(imp);
    upload_url_free(&u);
}

/* The seed workflow up to READY (3 tasks in groups session_001, session_002). */
static char *http_ready_batch(const sim_proc *s, char **ds_out)
{
    char *ds = create_dataset(s);
    http_append(s, ds, SEED_JSONL);
    char *body = xasprintf(SEED_BATCH_FMT, ds, "response_b");
    long st;
    cJSON *b = api(s, "POST", "/batches", body, &st);
    free(body);
    assert_int_equal(st, 201);
    char *batch = xstrdup(json_str(b, "id"));
    cJSON_Delete(b);
    char *setup = xasprintf("/batches/%s/setup", batch);
    cJSON_Delete(api(s, "POST", setup, "{}", &st));
    assert_int_equal(st, 202);
    free(setup);
    assert_string_equal(wait_batch(s, batch), "READY");
    *ds_out = ds;
    return batch;
}

/* Polls GET path until "status" is none of the running ones (deadline 10 s). */
static cJSON *wait_job(const sim_proc *s, const char *path, const char *running)
{
    int64_t deadline = time_mono_ms() + 10000;
    for (;;) {
        long st;
        cJSON *j = api(s, "GET", path, NULL, &st);
        assert_int_equal(st, 200);
        const char *status = json_str(j, "status");
        assert_non_null(status);
        if (!strstr(running, status))
            return j;
        cJSON_Delete(j);
        assert_true(time_mono_ms() < deadline);
        pause_ms(10);
    }
}

static void test_sync_round_trip(void **state)
{
    (void)state;
    sim_proc s;
    sim_start(&s, SYNC_FAST);
    char *ds;
    char *batch = http_ready_batch(&s, &ds);
    http_append(&s, ds,
                "{\"prompt\":\"p4\",\"response_a\":\"a\",\"response_b\":\"b\","
                "\"session_id\":\"session_002\"}\n"
                "{\"prompt\":\"p5\",\"response_a\":\"a\",\"response_b\":\"b\","
                "\"session_id\":\"session_003\"}\n");
    /* As the CLI sends it: no body. */
    char *url = xasprintf("%s/api/v1/data-collection/batches/%s/sync", s.base, batch);
    request q = {.method = "POST", .url = url, .headers = {AUTH}};
    reply r;
    do_request(&q, &r);
    free(url);
    assert_int_equal(r.status, 202);
    cJSON *j = reply_json(&r);
    reply_free(&r);
    assert_string_equal(json_str(j, "status"), "queued");
    assert_string_equal(json_str(j, "dataset_id"), ds);
    char *path = xasprintf("/batches/%s/syncs/%s", batch, json_str(j, "sync_id"));
    cJSON_Delete(j);
    j = wait_job(&s, path, "queued processing");
    assert_string_equal(json_str(j, "status"), "complete");
    assert_int_equal(json_int64(j, "tasks_created", -1), 2);
    assert_int_equal(json_int64(j, "datapoints_processed", -1), 2);
    assert_int_equal(json_int64(j, "groups_created", -1), 1);  /* session_003 */
    assert_int_equal(json_int64(j, "groups_expanded", -1), 1); /* session_002 */
    cJSON_Delete(j);
    free(path);
    path = xasprintf("/batches/%s", batch);
    long st;
    j = api(&s, "GET", path, NULL, &st);
    assert_int_equal(json_int64(j, "total_task_count", -1), 5);
    assert_int_equal(json_int64(j, "total_task_groups", -1), 3);
    cJSON_Delete(j);
    free(path);
    cJSON *stj = sim_get(&s, "/_sim/state");
    const cJSON *b0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(stj, "batches"), 0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(b0, "syncs")), 1);
    cJSON_Delete(stj);
    free(batch);
    free(ds);
    sim_stop(&s, 5000);
}

static uint32_t le32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

/* Byte checks of a downloaded ZIP: the end record points at a central directory of two
 * stored entries whose local headers, sizes and CRC-32 (simcore_crc32, itself checked
 * against a bitwise CRC in test_simcore) match the bytes; lines counts the JSONL lines of
 * each entry. */
static void check_download(const strbuf *z, size_t lines[2])
{
    assert_true(z->len > 22);
    const char *end = z->data + z->len - 22;
    assert_int_equal(le32(end), 0x06054b50);
    assert_int_equal(le32(end + 8) & 0xffff, 2);
    const char *cd = z->data + le32(end + 16);
    assert_true(cd + (le32(end + 12)) == end);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(le32(cd), 0x02014b50);
        uint32_t crc = le32(cd + 16), size = le32(cd + 24), nlen = le32(cd + 28) & 0xffff;
        const char *lh = z->data + le32(cd + 42);
        assert_int_equal(le32(lh), 0x04034b50);
        assert_int_equal(le32(lh + 18), size);
        const char *data = lh + 30 + nlen + (le32(lh + 28) & 0xffff);
        assert_int_equal(simcore_crc32(0, data, size), crc);
        lines[k] = 0;
        for (uint32_t i = 0; i < size; i++)
            lines[k] += data[i] == '\n';
        assert_true(size == 0 || data[size - 1] == '\n');
        cd += 46 + nlen + (le32(cd + 30) & 0xffff) + (le32(cd + 32) & 0xffff);
    }
}

/* GET url with no token unless auth; the body into r. */
static long fetch(const char *url, const char *auth, reply *r)
{
    request q = {.method = "GET", .url = url, .headers = {auth}};
    do_request(&q, r);
    assert_int_equal(r->rc, CURLE_OK);
    return r->status;
}

/* POSTs an export of batch and waits for it; returns the complete job's JSON. */
static cJSON *http_export(const sim_proc *s, const char *batch, char **path_out)
{
    char *path = xasprintf("/batches/%s/export", batch);
    long st;
    cJSON *j = api(s, "POST", path, NULL, &st);
    assert_int_equal(st, 202);
    assert_string_equal(json_str(j, "status"), "generating");
    char *job = xasprintf("%s/%s", path, json_str(j, "export_id"));
    cJSON_Delete(j);
    free(path);
    j = wait_job(s, job, "generating");
    assert_string_equal(json_str(j, "status"), "complete");
    *path_out = job;
    return j;
}

/* Starts the sim, makes a READY batch, sets faults (NULL: none) and exports it; returns
 * the complete job's JSON. */
static cJSON *start_exported(sim_proc *s, const char *faults, char **ds, char **batch, char **job)
{
    sim_start(s, SYNC_FAST);
    *batch = http_ready_batch(s, ds);
    if (faults)
        assert_int_equal(post_faults(s, faults), 200);
    return http_export(s, *batch, job);
}

static void test_export_download_http(void **state)
{
    (void)state;
    sim_proc s;
    char *ds, *batch, *job;
    cJSON *j = start_exported(&s, NULL, &ds, &batch, &job);
    char *url = xstrdup(json_str(j, "url"));
    cJSON_Delete(j);
    reply r;
    assert_int_equal(fetch(url, NULL, &r), 200);
    assert_string_equal(r.content_type, "application/zip");
    size_t lines[2];
    check_download(&r.body, lines);
    assert_int_equal(lines[0], 3); /* one per task */
    assert_int_equal(lines[1], 2); /* one per submission: a group each */
    reply_free(&r);
    /* A presigned URL never takes the token. */
    assert_int_equal(fetch(url, AUTH, &r), 400);
    assert_non_null(strstr(r.body.data, "<Code>InvalidArgument</Code>"));
    reply_free(&r);
    /* Expired: refused as S3 does; a new GET hands out a working URL. The lifetime is 3 s
     * from a whole second (X-Amz-Date has no fraction), so between 2 and 3 s: 1 s could end
     * a few ms after the URL was handed out, before the first fetch above. */
    int64_t deadline = time_mono_ms() + 10000;
    while (fetch(url, NULL, &r) == 200) {
        reply_free(&r);
        assert_true(time_mono_ms() < deadline);
        pause_ms(50);
    }
    assert_int_equal(r.status, 403);
    assert_non_null(strstr(r.body.data, "Request has expired"));
    reply_free(&r);
    long st;
    j = api(&s, "GET", job, NULL, &st);
    assert_int_equal(fetch(json_str(j, "url"), NULL, &r), 200);
    reply_free(&r);
    cJSON_Delete(j);
    /* Deleted: gone from the API and from storage. */
    cJSON_Delete(api(&s, "DELETE", job, NULL, &st));
    assert_int_equal(st, 204);
    cJSON_Delete(api(&s, "GET", job, NULL, &st));
    assert_int_equal(st, 404);
    free(url);
    free(job);
    free(batch);
    free(ds);
    sim_stop(&s, 5000);
}

typedef struct counted {
    uint64_t bytes;
    char tail[22];
} counted;

static size_t on_count(char *p, size_t size, size_t n, void *ud)
{
    counted *c = ud;
    size_t len = size * n;
    c->bytes += len;
    if (len >= sizeof c->tail) {
        memcpy(c->tail, p + len - sizeof c->tail, sizeof c->tail);
    } else {
        memmove(c->tail, c->tail + len, sizeof c->tail - len);
        memcpy(c->tail + sizeof c->tail - len, p, len);
    }
    return len;
}

/* A padded export streams: the sim's memory stays flat while tens of MB go out. */
static void test_export_streams(void **state)
{
    (void)state;
    sim_proc s;
    char *ds, *batch, *job;
    /* 4 MiB a record */
    cJSON *j = start_exported(&s, "{\"export_pad\": 4194304}", &ds, &batch, &job);
    peak_reset(s.pid);
    long before = peak_kib(s.pid);
    counted c = {0};
    reply r;
    request q = {.method = "GET", .url = json_str(j, "url"), .timeout_ms = 120000};
    struct curl_slist *hl;
    CURL *e = make_easy(&q, &r, &hl);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_count);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &c);
    r.rc = curl_easy_perform(e);
    finish_easy(e, &r, hl);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    reply_free(&r);
    long after = peak_kib(s.pid);
    assert_true(c.bytes > 5ULL * 4194304); /* 5 records (3 tasks, 2 submissions) */
    assert_int_equal(le32(c.tail), 0x06054b50);
#ifndef UNDER_ASAN
    assert_true(after - before < 8 * 1024);
#else
    (void)before;
    (void)after;
#endif
    cJSON_Delete(j);
    free(job);
    free(batch);
    free(ds);
    sim_stop(&s, 5000);
}

static void test_cli(void **state)
{
    (void)state;
    const char *bin = getenv("BATCHD_SIM");
    assert_non_null(bin);
    char *cmd = xasprintf("'%s' --help >/dev/null 2>&1", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    free(cmd);
    cmd = xasprintf("'%s' --fault teapot=1 >/dev/null 2>&1", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 64);
    free(cmd);
    cmd = xasprintf("'%s' --fault 503=2.5x >/dev/null 2>&1", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 64);
    free(cmd);
    cmd = xasprintf("'%s' --import-queued soon >/dev/null 2>&1", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 64);
    free(cmd);
    cmd = xasprintf("'%s' --export-mode newest >/dev/null 2>&1", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 64);
    free(cmd);
    cmd = xasprintf("'%s' --export-url-ttl 10ms >/dev/null 2>&1", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 64);
    free(cmd);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cli, kill_leftover),
        cmocka_unit_test_teardown(test_seed_workflow, kill_leftover),
        cmocka_unit_test_teardown(test_auth_failures, kill_leftover),
        cmocka_unit_test_teardown(test_validation_classes, kill_leftover),
        cmocka_unit_test_teardown(test_upload_refusals, kill_leftover),
        cmocka_unit_test_teardown(test_import_outcomes, kill_leftover),
        cmocka_unit_test_teardown(test_fault_status_kinds, kill_leftover),
        cmocka_unit_test_teardown(test_fault_drop_kinds, kill_leftover),
        cmocka_unit_test_teardown(test_fault_slow_and_shutdown, kill_leftover),
        cmocka_unit_test_teardown(test_slow_answer_released_by_new_faults, kill_leftover),
        cmocka_unit_test_teardown(test_runtime_faults, kill_leftover),
        cmocka_unit_test_teardown(test_fault_counts, kill_leftover),
        cmocka_unit_test_teardown(test_hostile_kinds, kill_leftover),
        cmocka_unit_test_teardown(test_many_connections, kill_leftover),
        cmocka_unit_test_teardown(test_streamed_upload, kill_leftover),
        cmocka_unit_test_teardown(test_sync_round_trip, kill_leftover),
        cmocka_unit_test_teardown(test_export_download_http, kill_leftover),
        cmocka_unit_test_teardown(test_export_streams, kill_leftover),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
