/* test-deps: uv cjson job */
/* control: io.batchd served from a real loop on a socket in a temporary directory, backed by a
 * fake job table, exercised with raw varlink clients; access decisions with synthetic peers;
 * and, when running as root, a real unprivileged peer (a child that drops to nobody). */
#include <errno.h>
#include <grp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "batchd/control.h"
#include "batchd/job.h"
#include "batchd/util.h"
#include "vltest.h"

typedef struct fixture {
    uv_loop_t loop;
    control *ctl;
    char dir[64];
    char path[128];
    cJSON *jobs; /* the fake job table */
    bool paused;
    bool reload_fails;
} fixture;

static fixture *F;

/* ---------------------------------------------------------------- fake daemon */

static cJSON *fake_get_info(void *ud)
{
    fixture *f = ud;
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "version", "9.9");
    cJSON_AddBoolToObject(p, "paused", f->paused);
    return p;
}

static cJSON *fake_list(void *ud, const char *const *states, size_t n, size_t limit)
{
    fixture *f = ud;
    cJSON *out = cJSON_CreateArray();
    const cJSON *j;
    cJSON_ArrayForEach(j, f->jobs)
    {
        bool keep = n == 0;
        for (size_t i = 0; i < n; i++)
            keep |= strcmp(states[i], json_str(j, "state")) == 0;
        if (keep && (size_t)cJSON_GetArraySize(out) < limit)
            cJSON_AddItemToArray(out, cJSON_Duplicate(j, 1));
    }
    return out;
}

static cJSON *find(fixture *f, const char *key, const char **err)
{
    cJSON *j, *hit = NULL;
    int n = 0;
    cJSON_ArrayForEach(j, f->jobs)
    {
        if (strcmp(json_str(j, "id"), key) == 0)
            return j;
        if (strcmp(json_str(j, "name"), key) == 0) {
            hit = j;
            n++;
        }
    }
    if (n == 1)
        return hit;
    *err = n ? "io.batchd.AmbiguousJob" : "io.batchd.NoSuchJob";
    return NULL;
}

static cJSON *fake_candidates(void *ud, const char *key)
{
    fixture *f = ud;
    cJSON *ids = cJSON_CreateArray(), *j;
    cJSON_ArrayForEach(j, f->jobs)
    {
        if (strcmp(json_str(j, "name"), key) == 0)
            cJSON_AddItemToArray(ids, cJSON_CreateString(json_str(j, "id")));
    }
    return ids;
}

static cJSON *fake_get_job(void *ud, const char *which, const char **err)
{
    cJSON *j = find(ud, which, err);
    if (!j)
        return NULL;
    cJSON *out = cJSON_Duplicate(j, 1);
    cJSON_AddItemToObject(out, "history", cJSON_CreateArray());
    return out;
}

static int change_state(void *ud, const char *which, const char *from, const char *to, cJSON **out,
                        const char **err, const char **msg)
{
    cJSON *j = find(ud, which, err);
    if (!j) {
        *msg = "no job has this id or name";
        return -ENOENT;
    }
    if (from && strcmp(json_str(j, "state"), from) != 0) {
        *err = "io.batchd.InvalidState";
        *msg = "only failed jobs can be retried";
        return -EINVAL;
    }
    cJSON_ReplaceItemInObject(j, "state", cJSON_CreateString(to));
    *out = cJSON_Duplicate(j, 1);
    return 0;
}

static int fake_retry(void *ud, const char *which, cJSON **out, const char **err, const char **msg)
{
    return change_state(ud, which, "failed", "queued", out, err, msg);
}

static int fake_cancel(void *ud, const char *which, cJSON **out, const char **err, const char **msg)
{
    return change_state(ud, which, NULL, "cancelled", out, err, msg);
}

static void fake_pause(void *ud)
{
    ((fixture *)ud)->paused = true;
}

static void fake_resume(void *ud)
{
    ((fixture *)ud)->paused = false;
}

static cJSON *fake_reload(void *ud, const char **err, char **msg)
{
    fixture *f = ud;
    if (f->reload_fails) {
        *err = NULL;
        *msg = xstrdup("/etc/batchd/batchd.conf:3: unknown key \"colour\" in [api]");
        return NULL;
    }
    cJSON *p = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(p, "applied");
    cJSON_AddItemToArray(a, cJSON_CreateString("poll.initial"));
    cJSON *r = cJSON_AddArrayToObject(p, "restart_required");
    cJSON_AddItemToArray(r, cJSON_CreateString("control.socket"));
    return p;
}

static cJSON *make_job(const char *id, const char *name, const char *state)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", id);
    cJSON_AddStringToObject(j, "name", name);
    cJSON_AddStringToObject(j, "state", state);
    return j;
}

static void start_control(const char *group)
{
    control_ops ops = {.ud = F,
                       .get_info = fake_get_info,
                       .list_jobs = fake_list,
                       .get_job = fake_get_job,
                       .candidates = fake_candidates,
                       .retry = fake_retry,
                       .cancel = fake_cancel,
                       .pause = fake_pause,
                       .resume = fake_resume,
                       .reload = fake_reload};
    control_options o = {.socket_path = F->path, .group = group, .version = "9.9"};
    char *err = NULL;
    int r = control_start(&F->loop, &o, &ops, &F->ctl, &err);
    if (r < 0)
        fail_msg("control_start: %s", err);
}

static int setup(void **state)
{
    F = calloc(1, sizeof(*F));
    assert_int_equal(uv_loop_init(&F->loop), 0);
    strcpy(F->dir, "/tmp/test_control.XXXXXX");
    assert_non_null(mkdtemp(F->dir));
    snprintf(F->path, sizeof(F->path), "%s/run/io.batchd", F->dir);
    vt_loop = &F->loop;
    vt_path = F->path;
    F->jobs = cJSON_CreateArray();
    cJSON_AddItemToArray(F->jobs, make_job("01AAAAAAAAAAAAAAAAAAAAAAA1", "alpha", "uploading"));
    cJSON_AddItemToArray(F->jobs, make_job("01AAAAAAAAAAAAAAAAAAAAAAA2", "beta", "failed"));
    cJSON_AddItemToArray(F->jobs, make_job("01AAAAAAAAAAAAAAAAAAAAAAA3", "twin", "ready"));
    cJSON_AddItemToArray(F->jobs, make_job("01AAAAAAAAAAAAAAAAAAAAAAA4", "twin", "ready"));
    *state = F;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    control_stop(F->ctl);
    uv_run(&F->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&F->loop), 0);
    char run[160];
    snprintf(run, sizeof(run), "%s/run", F->dir);
    unlink(F->path);
    rmdir(run);
    rmdir(F->dir);
    cJSON_Delete(F->jobs);
    free(F);
    F = NULL;
    return 0;
}

/* One call on c; returns the reply (free it). */
static cJSON *call(client *c, const char *method, const char *params)
{
    char *msg = params ? xasprintf("{\"method\":\"%s\",\"parameters\":%s}", method, params)
                       : xasprintf("{\"method\":\"%s\"}", method);
    cl_send(c, msg);
    free(msg);
    return cl_recv(c);
}

static const cJSON *params_of(const cJSON *m)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(m, "parameters");
    assert_non_null(p);
    return p;
}

/* ---------------------------------------------------------------- tests */

static void test_access_decision(void **state)
{
    (void)state;
    gid_t groups[] = {10, 20, 30};
    varlink_peer root = {.uid = 0, .gid = 0};
    varlink_peer self = {.uid = 500, .gid = 500};
    varlink_peer primary = {.uid = 1000, .gid = 42};
    varlink_peer supp = {.uid = 1001, .gid = 1001, .groups = groups, .n_groups = 3};
    varlink_peer other = {.uid = 1002, .gid = 1002, .groups = groups, .n_groups = 2};
    assert_int_equal(control_peer_access(&root, 500, true, 42), CONTROL_READ | CONTROL_WRITE);
    assert_int_equal(control_peer_access(&self, 500, true, 42), CONTROL_READ | CONTROL_WRITE);
    assert_int_equal(control_peer_access(&self, 500, false, 0), CONTROL_READ | CONTROL_WRITE);
    assert_int_equal(control_peer_access(&primary, 500, true, 42), CONTROL_READ);
    assert_int_equal(control_peer_access(&supp, 500, true, 30), CONTROL_READ);
    assert_int_equal(control_peer_access(&other, 500, true, 30), 0);
    assert_int_equal(control_peer_access(&primary, 500, false, 42), 0);

    assert_int_equal(control_method_access("io.batchd.GetInfo"), CONTROL_READ);
    assert_int_equal(control_method_access("io.batchd.ListJobs"), CONTROL_READ);
    assert_int_equal(control_method_access("io.batchd.GetJob"), CONTROL_READ);
    assert_int_equal(control_method_access("io.batchd.Watch"), CONTROL_READ);
    static const char *const writes[] = {"Retry", "Cancel", "Pause", "Resume", "Reload"};
    for (size_t i = 0; i < BD_ARRAY_LEN(writes); i++) {
        char name[64];
        snprintf(name, sizeof(name), "io.batchd.%s", writes[i]);
        assert_int_equal(control_method_access(name), CONTROL_WRITE);
    }
    assert_int_equal(control_method_access("io.batchd.Nope"), 0);
}

static void test_description(void **state)
{
    (void)state;
    start_control(NULL);
    client *c = cl_connect();
    cJSON *m =
        call(c, "org.varlink.service.GetInterfaceDescription", "{\"interface\":\"io.batchd\"}");
    const char *d = json_str(params_of(m), "description");
    assert_non_null(d);
    assert_string_equal(d, control_interface_description);
    static const char *const names[] = {"GetInfo", "ListJobs", "GetJob", "Watch", "Retry",
                                        "Cancel",  "Pause",    "Resume", "Reload"};
    for (size_t i = 0; i < BD_ARRAY_LEN(names); i++) {
        char needle[64];
        snprintf(needle, sizeof(needle), "method %s(", names[i]);
        if (!strstr(d, needle))
            fail_msg("description lacks %s", needle);
    }
    assert_non_null(strstr(d, "interface io.batchd\n"));
    assert_non_null(strstr(d, "error PermissionDenied"));
    assert_non_null(strstr(d, "method ListJobs(states: ?[]string, limit: ?int)"));
    assert_non_null(strstr(d, "error Busy (reason: string)"));
    assert_non_null(strstr(d, "error ReplyTooLarge (size: int, limit: int)"));
    cJSON_Delete(m);
    m = call(c, "org.varlink.service.GetInfo", NULL);
    const cJSON *ifs = cJSON_GetObjectItem(params_of(m), "interfaces");
    assert_string_equal(cJSON_GetArrayItem(ifs, 1)->valuestring, "io.batchd");
    assert_string_equal(json_str(params_of(m), "version"), "9.9");
    cJSON_Delete(m);
    cl_free(c);
}

static void test_read_methods(void **state)
{
    (void)state;
    start_control(NULL);
    client *c = cl_connect();
    cJSON *m = call(c, "io.batchd.GetInfo", NULL);
    assert_string_equal(json_str(params_of(m), "version"), "9.9");
    cJSON_Delete(m);

    m = call(c, "io.batchd.ListJobs", NULL);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), 4);
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"states\":[\"failed\",\"uploading\"]}");
    const cJSON *jobs = cJSON_GetObjectItem(params_of(m), "jobs");
    assert_int_equal(cJSON_GetArraySize(jobs), 2);
    assert_string_equal(json_str(cJSON_GetArrayItem(jobs, 0), "name"), "alpha");
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"states\":[\"bogus\"]}");
    assert_error(m, "io.batchd.InvalidParameter");
    assert_string_equal(json_str(params_of(m), "parameter"), "states");
    assert_string_equal(json_str(params_of(m), "value"), "bogus");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "valid")), 14);
    cJSON_Delete(m);
    /* finished = ready, failed, cancelled; unfinished = every other state. */
    m = call(c, "io.batchd.ListJobs", "{\"states\":[\"finished\"]}");
    int n_finished = cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs"));
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"states\":[\"unfinished\"]}");
    int n_unfinished = cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs"));
    cJSON_Delete(m);
    assert_int_equal(n_finished + n_unfinished, 4);
    m = call(c, "io.batchd.ListJobs", "{\"states\":[\"ready\",\"finished\"]}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), n_finished);
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"states\":\"failed\"}");
    assert_error(m, "org.varlink.service.InvalidParameter");
    cJSON_Delete(m);

    /* limit: at most that many; a negative or non-integer one is refused. */
    m = call(c, "io.batchd.ListJobs", "{\"limit\":2}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), 2);
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"limit\":0,\"states\":[\"ready\"]}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), 0);
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"limit\":1e300}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), 4);
    cJSON_Delete(m);
    m = call(c, "io.batchd.ListJobs", "{\"limit\":null}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), 4);
    cJSON_Delete(m);
    static const char *const bad_limits[] = {"-1", "1.5", "\"3\"", "true", "[]", "-0.5"};
    for (size_t i = 0; i < BD_ARRAY_LEN(bad_limits); i++) {
        char *p = xasprintf("{\"limit\":%s}", bad_limits[i]);
        m = call(c, "io.batchd.ListJobs", p);
        free(p);
        assert_error(m, "org.varlink.service.InvalidParameter");
        assert_string_equal(json_str(params_of(m), "parameter"), "limit");
        cJSON_Delete(m);
    }

    m = call(c, "io.batchd.GetJob", "{\"job\":\"alpha\"}");
    const cJSON *j = cJSON_GetObjectItem(params_of(m), "job");
    assert_string_equal(json_str(j, "id"), "01AAAAAAAAAAAAAAAAAAAAAAA1");
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(j, "history")));
    cJSON_Delete(m);
    m = call(c, "io.batchd.GetJob", "{\"job\":\"01AAAAAAAAAAAAAAAAAAAAAAA4\"}");
    assert_string_equal(json_str(cJSON_GetObjectItem(params_of(m), "job"), "name"), "twin");
    cJSON_Delete(m);
    m = call(c, "io.batchd.GetJob", "{\"job\":\"twin\"}");
    assert_error(m, "io.batchd.AmbiguousJob");
    assert_string_equal(json_str(params_of(m), "job"), "twin");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "candidates")), 2);
    cJSON_Delete(m);
    m = call(c, "io.batchd.GetJob", "{\"job\":\"nope\"}");
    assert_error(m, "io.batchd.NoSuchJob");
    assert_string_equal(json_str(params_of(m), "job"), "nope");
    cJSON_Delete(m);
    m = call(c, "io.batchd.GetJob", "{}");
    assert_error(m, "org.varlink.service.InvalidParameter");
    assert_string_equal(json_str(params_of(m), "parameter"), "job");
    cJSON_Delete(m);
    m = call(c, "io.batchd.GetJob", "{\"job\":\"\"}");
    assert_error(m, "org.varlink.service.InvalidParameter");
    cJSON_Delete(m);
    m = call(c, "io.batchd.Nope", NULL);
    assert_error(m, "org.varlink.service.MethodNotFound");
    cJSON_Delete(m);
    cl_free(c);
}

static void test_write_methods(void **state)
{
    (void)state;
    start_control(NULL);
    client *c = cl_connect();
    cJSON *m = call(c, "io.batchd.Retry", "{\"job\":\"alpha\"}");
    assert_error(m, "io.batchd.InvalidState");
    assert_string_equal(json_str(params_of(m), "job"), "alpha");
    assert_string_equal(json_str(params_of(m), "message"), "only failed jobs can be retried");
    cJSON_Delete(m);
    m = call(c, "io.batchd.Retry", "{\"job\":\"beta\"}");
    assert_string_equal(json_str(cJSON_GetObjectItem(params_of(m), "job"), "state"), "queued");
    cJSON_Delete(m);
    m = call(c, "io.batchd.Retry", "{\"job\":\"ghost\"}");
    assert_error(m, "io.batchd.NoSuchJob");
    cJSON_Delete(m);
    m = call(c, "io.batchd.Retry", NULL);
    assert_error(m, "org.varlink.service.InvalidParameter");
    cJSON_Delete(m);
    m = call(c, "io.batchd.Cancel", "{\"job\":\"alpha\"}");
    assert_string_equal(json_str(cJSON_GetObjectItem(params_of(m), "job"), "state"), "cancelled");
    cJSON_Delete(m);

    m = call(c, "io.batchd.Pause", NULL);
    assert_null(json_str(m, "error"));
    assert_int_equal(cJSON_GetArraySize(params_of(m)), 0);
    cJSON_Delete(m);
    assert_true(F->paused);
    m = call(c, "io.batchd.Resume", NULL);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    assert_false(F->paused);

    m = call(c, "io.batchd.Reload", NULL);
    assert_string_equal(
        cJSON_GetArrayItem(cJSON_GetObjectItem(params_of(m), "restart_required"), 0)->valuestring,
        "control.socket");
    cJSON_Delete(m);
    F->reload_fails = true;
    m = call(c, "io.batchd.Reload", NULL);
    assert_error(m, "io.batchd.ReloadFailed");
    assert_non_null(strstr(json_str(params_of(m), "message"), "batchd.conf:3"));
    cJSON_Delete(m);
    cl_free(c);
}

static void test_watch(void **state)
{
    (void)state;
    start_control(NULL);
    client *a = cl_connect(), *b = cl_connect();
    cJSON *m = call(a, "io.batchd.Watch", NULL);
    assert_error(m, "org.varlink.service.ExpectedMore");
    cJSON_Delete(m);
    cl_send(a, "{\"method\":\"io.batchd.Watch\",\"more\":true}");
    cl_send(b, "{\"method\":\"io.batchd.Watch\",\"more\":true}");
    client *both[] = {a, b};
    for (int i = 0; i < 2; i++) {
        m = cl_recv(both[i]);
        assert_true(json_bool(m, "continues", false));
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(params_of(m), "jobs")), 4);
        cJSON_Delete(m);
    }
    assert_int_equal(control_watchers(F->ctl), 2);

    static const char *const states[] = {"uploading", "importing", "creating_batch", "ready"};
    for (size_t i = 0; i < BD_ARRAY_LEN(states); i++) {
        cJSON *j = make_job("01X", "delta", states[i]);
        control_job_changed(F->ctl, j);
        cJSON_Delete(j);
    }
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < BD_ARRAY_LEN(states); i++) {
            m = cl_recv(both[k]);
            assert_true(json_bool(m, "continues", false));
            assert_string_equal(json_str(cJSON_GetObjectItem(params_of(m), "job"), "state"),
                                states[i]);
            cJSON_Delete(m);
        }
    /* A subscriber that leaves is forgotten; the other keeps getting changes. */
    cl_free(a);
    int64_t end = time_mono_ms() + DEADLINE_MS;
    while (control_watchers(F->ctl) != 1 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(control_watchers(F->ctl), 1);
    cJSON *j = make_job("01X", "delta", "failed");
    control_job_changed(F->ctl, j);
    cJSON_Delete(j);
    m = cl_recv(b);
    assert_string_equal(json_str(cJSON_GetObjectItem(params_of(m), "job"), "state"), "failed");
    cJSON_Delete(m);
    cl_free(b);
}

static void test_second_daemon_refused(void **state)
{
    (void)state;
    start_control(NULL);
    control *two = NULL;
    control_ops ops = {.ud = F, .list_jobs = fake_list};
    control_options o = {.socket_path = F->path};
    char *err = NULL;
    assert_int_equal(control_start(&F->loop, &o, &ops, &two, &err), -EADDRINUSE);
    assert_null(two);
    assert_non_null(strstr(err, "another batchd"));
    free(err);
    /* The first still answers. */
    client *c = cl_connect();
    cJSON *m = call(c, "io.batchd.GetInfo", NULL);
    assert_null(json_str(m, "error"));
    cJSON_Delete(m);
    cl_free(c);
}

/* Child side: a blocking client that must be allowed to read and refused to write. */
static int child_checks(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strlcpy_bd(sa.sun_path, path, sizeof(sa.sun_path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return 10;
    static const char calls[] =
        "{\"method\":\"io.batchd.GetInfo\"}\0"
        "{\"method\":\"io.batchd.Pause\"}\0"
        "{\"method\":\"io.batchd.Retry\",\"parameters\":{\"job\":\"beta\"}}";
    if (write(fd, calls, sizeof(calls)) != (ssize_t)sizeof(calls))
        return 11;
    char buf[4096];
    size_t len = 0;
    int nuls = 0;
    while (nuls < 3 && len < sizeof(buf)) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n <= 0)
            return 12;
        for (ssize_t i = 0; i < n; i++)
            nuls += buf[len + (size_t)i] == '\0';
        len += (size_t)n;
    }
    const char *first = buf, *second = first + strlen(first) + 1;
    const char *third = second + strlen(second) + 1;
    if (strstr(first, "\"error\"") || !strstr(first, "9.9"))
        return 13;
    if (!strstr(second, "io.batchd.PermissionDenied") || !strstr(second, "io.batchd.Pause"))
        return 14;
    if (!strstr(third, "io.batchd.PermissionDenied"))
        return 15;
    return 0;
}

static void test_permission_denied_real_peer(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip(); /* needs root to become another user */
    struct group *g = getgrnam("nogroup");
    if (!g)
        skip();
    gid_t gid = g->gr_gid;
    assert_int_equal(chmod(F->dir, 0755), 0);
    start_control("nogroup");
    struct stat st;
    assert_int_equal(stat(F->path, &st), 0);
    assert_int_equal(st.st_gid, gid);
    assert_int_equal(st.st_mode & 0777, 0660);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(65534) < 0)
            _exit(9);
        _exit(child_checks(F->path));
    }
    int status = 0;
    int64_t end = time_mono_ms() + DEADLINE_MS;
    pid_t r = 0;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && time_mono_ms() < end)
        pump(-1, 10);
    assert_int_equal(r, pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_false(F->paused);
    assert_string_equal(json_str(cJSON_GetArrayItem(F->jobs, 1), "state"), "failed");
}

/* The members of a varlink type in the description: "type NAME (\n  a: ..,\n  b: ..\n)". */
static bool type_has_member(const char *type, const char *member)
{
    char head[64], needle[96];
    snprintf(head, sizeof head, "type %s (\n", type);
    const char *start = strstr(control_interface_description, head);
    assert_non_null(start);
    const char *end = strstr(start, "\n)\n");
    assert_non_null(end);
    snprintf(needle, sizeof needle, "\n  %s: ", member);
    const char *at = strstr(start, needle);
    return at && at < end;
}

/* Every member the daemon sends in a Job (and in its append_to) is declared in the
 * description, so a client generated from it sees them all. */
static void test_description_declares_job_members(void **state)
{
    (void)state;
    job *j = job_new("01JDXYZ", "n", "n", 1764405165000LL);
    j->append.on = true;
    j->append.target_job_id = xstrdup("01JDTARGET");
    j->append.target_job_name = xstrdup("target");
    job_fail(j, 1764405165000LL, "sync_failed", "failed");
    cJSON *pub = job_to_public(j, true);
    const cJSON *m;
    cJSON_ArrayForEach(m, pub)
    {
        if (!type_has_member("Job", m->string))
            fail_msg("type Job lacks %s", m->string);
    }
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(pub, "append_to"))
    {
        if (!type_has_member("AppendTo", m->string))
            fail_msg("type AppendTo lacks %s", m->string);
    }
    cJSON_Delete(pub);
    job_free(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_decision),
        cmocka_unit_test_setup_teardown(test_description, setup, teardown),
        cmocka_unit_test(test_description_declares_job_members),
        cmocka_unit_test_setup_teardown(test_read_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_daemon_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_permission_denied_real_peer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
