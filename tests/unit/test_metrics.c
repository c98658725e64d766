/* Unit tests of metrics: the text exposition format (golden output, byte for byte), label
 * escaping of hostile values, histogram buckets, series caps, and batchd's families fed with
 * a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchd/metrics.h"
#include "batchd/util.h"

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_golden(void **state)
{
    (void)state;
    metrics_registry *r = metrics_registry_new();
    metrics_family *c = metrics_family_add(r, "x_requests_total", METRICS_COUNTER,
                                           "Requests.\nSecond line with a \\ backslash.",
                                           L("endpoint", "class"), NULL, 0);
    metrics_family *g = metrics_family_add(r, "x_up", METRICS_GAUGE, "Up.", NULL, NULL, 0);
    static const double b[] = {0.005, 0.5, 10};
    metrics_family *h =
        metrics_family_add(r, "x_duration_seconds", METRICS_HISTOGRAM, "Time.", L("op"), b, 3);
    assert_int_equal(metrics_inc(c, L("create", "2xx"), 1), 0);
    assert_int_equal(metrics_inc(c, L("upload", "5xx"), 2), 0);
    assert_int_equal(metrics_inc(c, L("create", "2xx"), 1.5), 0);
    assert_int_equal(metrics_set(g, NULL, 1), 0);
    assert_int_equal(metrics_observe(h, L("a"), 0.005), 0); /* on the bound: in it */
    assert_int_equal(metrics_observe(h, L("a"), 0.25), 0);
    assert_int_equal(metrics_observe(h, L("a"), 30), 0); /* only +Inf */
    char *text = metrics_registry_render(r);
    const char *want = "# HELP x_requests_total Requests.\\nSecond line with a \\\\ backslash.\n"
                       "# TYPE x_requests_total counter\n"
                       "x_requests_total{endpoint=\"create\",class=\"2xx\"} 2.5\n"
                       "x_requests_total{endpoint=\"upload\",class=\"5xx\"} 2\n"
                       "# HELP x_up Up.\n"
                       "# TYPE x_up gauge\n"
                       "x_up 1\n"
                       "# HELP x_duration_seconds Time.\n"
                       "# TYPE x_duration_seconds histogram\n"
                       "x_duration_seconds_bucket{op=\"a\",le=\"0.005\"} 1\n"
                       "x_duration_seconds_bucket{op=\"a\",le=\"0.5\"} 2\n"
                       "x_duration_seconds_bucket{op=\"a\",le=\"10\"} 2\n"
                       "x_duration_seconds_bucket{op=\"a\",le=\"+Inf\"} 3\n"
                       "x_duration_seconds_sum{op=\"a\"} 30.255\n"
                       "x_duration_seconds_count{op=\"a\"} 3\n";
    assert_string_equal(text, want);
    free(text);
    metrics_registry_free(r);
}

static void test_hostile_label_values(void **state)
{
    (void)state;
    metrics_registry *r = metrics_registry_new();
    metrics_family *c = metrics_family_add(r, "x_total", METRICS_COUNTER, "X.", L("v"), NULL, 0);
    metrics_inc(c, L("a\"b\\c\nd"), 1);
    metrics_inc(c, L("bad\xff\xc0utf8 \xe2\x82"), 1);
    metrics_inc(c, L("caf\xc3\xa9 \x01"), 1); /* valid UTF-8 and a control byte stay as they are */
    metrics_inc(c, L("} 1\nx_total 9"), 1);
    char *text = metrics_registry_render(r);
    const char *want = "# HELP x_total X.\n"
                       "# TYPE x_total counter\n"
                       "x_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"
                       "x_total{v=\"bad\xef\xbf\xbd\xef\xbf\xbdutf8 \xef\xbf\xbd\xef\xbf\xbd\"} 1\n"
                       "x_total{v=\"caf\xc3\xa9 \x01\"} 1\n"
                       "x_total{v=\"} 1\\nx_total 9\"} 1\n";
    assert_string_equal(text, want);
    assert_true(utf8_valid(text, strlen(text)));
    free(text);
    metrics_registry_free(r);
}

static void test_numbers_and_errors(void **state)
{
    (void)state;
    metrics_registry *r = metrics_registry_new();
    metrics_family *c = metrics_family_add(r, "x_total", METRICS_COUNTER, "X.", NULL, NULL, 0);
    metrics_family *g = metrics_family_add(r, "x_g", METRICS_GAUGE, "G.", L("k"), NULL, 0);
    assert_int_equal(metrics_inc(c, NULL, -1), -EINVAL);
    assert_int_equal(metrics_observe(c, NULL, 1), -EINVAL);
    assert_int_equal(metrics_set(c, NULL, 1), -EINVAL);
    assert_int_equal(metrics_inc(c, NULL, 0.1), 0);
    assert_int_equal(metrics_inc(c, NULL, 0.2), 0);
    metrics_set(g, L("big"), 1e21);
    metrics_set(g, L("neg"), -3);
    metrics_set(g, L("inf"), 1.0 / 0.0);
    char *text = metrics_registry_render(r);
    assert_non_null(strstr(text, "\nx_total 0.30000000000000004\n"));
    assert_non_null(strstr(text, "x_g{k=\"big\"} 1e+21\n"));
    assert_non_null(strstr(text, "x_g{k=\"neg\"} -3\n"));
    assert_non_null(strstr(text, "x_g{k=\"inf\"} +Inf\n"));
    free(text);
    metrics_family_clear(g);
    text = metrics_registry_render(r);
    assert_null(strstr(text, "x_g{"));
    free(text);
    metrics_registry_free(r);
}

static void test_series_cap(void **state)
{
    (void)state;
    metrics_registry *r = metrics_registry_new();
    metrics_family *c = metrics_family_add(r, "x_total", METRICS_COUNTER, "X.", L("v"), NULL, 0);
    char v[32];
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(v, sizeof v, "%d", i);
        assert_int_equal(metrics_inc(c, L(v), 1), 0);
    }
    assert_int_equal(metrics_inc(c, L("one more"), 1), -ENOSPC);
    assert_int_equal(metrics_inc(c, L("7"), 1), 0); /* an existing series still counts */
    metrics_registry_free(r);
}

/* ---- batchd's families ---- */

static job *new_job(const char *id, int64_t at)
{
    return job_new(id, "name", "name", at);
}

static void changed(metrics *m, job *j, job_state s, int64_t at)
{
    j->state = s;
    metrics_job_changed(m, j, NULL, at);
}

static void test_batchd_families(void **state)
{
    (void)state;
    metrics *m = metrics_new("1.2.3");
    int64_t t = 1700000000000;
    job *a = new_job("01A", t);
    changed(m, a, JOB_QUEUED, t);
    changed(m, a, JOB_VALIDATING, t + 2000);
    metrics_job_changed(m, a, "creating_dataset", t + 2500); /* passed through */
    changed(m, a, JOB_UPLOADING, t + 3000);
    changed(m, a, JOB_UPLOADING, t + 3500); /* progress: no transition */
    changed(m, a, JOB_READY, t + 95000);
    metrics_job_finished(m, a, t + 95000);
    changed(m, a, JOB_READY, t + 96000); /* a hook's note: no stage, not finished again */
    job *b = new_job("01B", t);
    changed(m, b, JOB_PROCESSING, t);
    b->error_code = xstrdup("api_rejected");
    changed(m, b, JOB_FAILED, t + 1000);
    metrics_job_finished(m, b, t + 1000);
    job *old = new_job("01C", t); /* finished before this process saw it: not counted */
    changed(m, old, JOB_READY, t);
    job *rejected = new_job("01D", t); /* a rejected claim: failed from its first change */
    rejected->error_code = xstrdup("invalid_job");
    changed(m, rejected, JOB_FAILED, t);
    metrics_job_finished(m, rejected, t);
    metrics_request_done(
        m, &(metrics_request){.endpoint = "create_dataset", .status = 201, .latency_ms = 40});
    metrics_request_done(m, &(metrics_request){.endpoint = "upload",
                                               .status = 0,
                                               .latency_ms = 12000,
                                               .retry_reason = "network",
                                               .upload_bytes = 4096});
    metrics_hook_run(m, "on_ready", "ok");
    metrics_export_ended(m, true);
    metrics_export_ended(m, true);
    metrics_snapshot s = {.incoming = 3,
                          .waiting_for_slot = 2,
                          .stuck = 1,
                          .paused = true,
                          .pause_reason = "api_token_rejected",
                          .rate_limit_wait_seconds = 0.25,
                          .process_cpu_seconds = 1.5,
                          .process_resident_bytes = 4096,
                          .process_virtual_bytes = -1,
                          .process_open_fds = 9,
                          .process_max_fds = 1024,
                          .process_start_time_seconds = 1700000000};
    s.jobs_by_state[JOB_READY] = 1;
    char *text = metrics_render(m, &s);
    static const char *const want[] = {
        "batchd_build_info{version=\"1.2.3\"} 1\n",
        "batchd_jobs{state=\"ready\"} 1\n",
        "batchd_jobs{state=\"queued\"} 0\n",
        "batchd_jobs_finished_total{outcome=\"ready\",code=\"none\"} 1\n",
        "batchd_jobs_finished_total{outcome=\"failed\",code=\"api_rejected\"} 1\n",
        "batchd_jobs_finished_total{outcome=\"failed\",code=\"invalid_job\"} 1\n",
        "batchd_job_ready_duration_seconds_bucket{le=\"60\"} 0\n",
        "batchd_job_ready_duration_seconds_bucket{le=\"120\"} 1\n",
        "batchd_job_ready_duration_seconds_count 1\n",
        "batchd_job_stage_duration_seconds_sum{stage=\"queued\"} 2\n",
        "batchd_job_stage_duration_seconds_sum{stage=\"validating\"} 0.5\n",
        "batchd_job_stage_duration_seconds_sum{stage=\"creating_dataset\"} 0.5\n",
        "batchd_job_stage_duration_seconds_sum{stage=\"uploading\"} 92\n",
        "batchd_job_stage_duration_seconds_count{stage=\"processing\"} 1\n",
        "batchd_incoming_entries 3\n",
        "batchd_waiting_for_slot_entries 2\n",
        "batchd_stuck_entries 1\n",
        "batchd_paused{reason=\"operator\"} 0\n",
        "batchd_paused{reason=\"api_token_rejected\"} 1\n",
        "batchd_api_requests_total{endpoint=\"create_dataset\",status_class=\"2xx\"} 1\n",
        "batchd_api_requests_total{endpoint=\"upload\",status_class=\"network\"} 1\n",
        "batchd_api_request_duration_seconds_bucket{endpoint=\"create_dataset\",le=\"0.05\"} 1\n",
        "batchd_api_request_duration_seconds_bucket{endpoint=\"upload\",le=\"10\"} 0\n",
        "batchd_api_retries_total{reason=\"network\"} 1\n",
        "batchd_upload_bytes_total 4096\n",
        "batchd_rate_limit_wait_seconds_total 0.25\n",
        "batchd_hook_runs_total{hook=\"on_ready\",outcome=\"ok\"} 1\n",
        "batchd_exports_total{outcome=\"complete\"} 2\n",
        "batchd_exports_total{outcome=\"failed\"} 0\n",
        "process_cpu_seconds_total 1.5\n",
        "process_open_fds 9\n",
        "# TYPE batchd_job_ready_duration_seconds histogram\n",
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(want); i++)
        if (!strstr(text, want[i]))
            fprintf(stderr, "missing: %s\nin:\n%s", want[i], text), fail();
    assert_null(strstr(text, "\nprocess_virtual_memory_bytes "));
    assert_null(strstr(text, "outcome=\"ready\",code=\"none\"} 2"));
    free(text);
    job_free(a);
    job_free(b);
    job_free(old);
    job_free(rejected);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_hostile_label_values),
        cmocka_unit_test(test_numbers_and_errors),
        cmocka_unit_test(test_series_cap),
        cmocka_unit_test(test_batchd_families),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
