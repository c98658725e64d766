/* test-deps: fsutil */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchd/config.h"
#include "batchd/util.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/test_config.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    unsetenv("CREDENTIALS_DIRECTORY");
    unsetenv("BATCHD_API_TOKEN");
    unsetenv("BATCHD_CONFIG");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static char *write_file(const char *name, const char *text, mode_t mode)
{
    char *p = xasprintf("%s/%s", tmpdir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(chmod(p, mode), 0);
    return p;
}

/* Loads text as a config file; returns config_load's result, diag filled. */
static int load_text(const char *text, config *c, diag *d)
{
    char *p = write_file("batchd.conf", text, 0644);
    int r = config_load(p, c, d);
    free(p);
    return r;
}

static bool diag_has(const diag *d, const char *needle)
{
    for (size_t i = 0; i < d->count; i++)
        if (strstr(d->lines[i], needle))
            return true;
    return false;
}

static void test_defaults(void **state)
{
    (void)state;
    config c;
    config_defaults(&c);
    assert_string_equal(c.api.url, "https://api.prolific.com");
    assert_int_equal(c.api.timeout_ms, 30000);
    assert_int_equal(c.api.max_connections, 8);
    assert_string_equal(c.spool.dir, "/var/spool/batchd");
    assert_int_equal(c.poll.batch_timeout_ms, 6 * 3600 * 1000);
    assert_int_equal(c.job.max_active, 64);
    assert_int_equal(c.job.invalid_records, CONFIG_INVALID_FAIL);
    assert_int_equal(c.job.max_record_bytes, 1024 * 1024);
    assert_null(c.api.workspace_id);
    assert_null(c.metrics.listen); /* off by default */
    config_free(&c);
    config_free(&c); /* second free of a freed (zeroed) config is harmless */
    config_free(NULL);
}

static const char *full_example = "# example\n"
                                  "[api]\n"
                                  "url = https://api.prolific.com\n"
                                  "workspace_id = 6278acb09062db3b35bcbeb0\n"
                                  "token_file = /etc/batchd/api-token\n"
                                  "timeout = 45s              # one HTTP request\n"
                                  "max_rate = 2.5             ; requests per second\n"
                                  "max_connections = 16\n"
                                  "\n"
                                  "[spool]\n"
                                  "dir = /srv/spool\n"
                                  "rescan_interval = 500ms\n"
                                  "[state]\n"
                                  "dir = /srv/state\n"
                                  "[control]\n"
                                  "socket = /run/x/io.batchd\n"
                                  "group = ops\n"
                                  "[poll]\n"
                                  "initial = 1s\n"
                                  "max = 2m\n"
                                  "multiplier = 1.5\n"
                                  "import_timeout = 2h\n"
                                  "batch_timeout = 1d\n"
                                  "[job]\n"
                                  "template = /srv/templates/default.json\n"
                                  "max_active = 3\n"
                                  "invalid_records = skip\n"
                                  "max_record_size = 512k\n";

static void test_full_example(void **state)
{
    (void)state;
    config c;
    diag d = {0};
    assert_int_equal(load_text(full_example, &c, &d), 0);
    assert_int_equal(d.count, 0);
    assert_string_equal(c.api.workspace_id, "6278acb09062db3b35bcbeb0");
    assert_int_equal(c.api.timeout_ms, 45000);
    assert_true(c.api.max_rate == 2.5);
    assert_int_equal(c.api.max_connections, 16);
    assert_string_equal(c.spool.dir, "/srv/spool");
    assert_int_equal(c.spool.rescan_interval_ms, 500);
    assert_string_equal(c.control.group, "ops");
    assert_int_equal(c.poll.max_ms, 120000);
    assert_true(c.poll.multiplier == 1.5);
    assert_int_equal(c.poll.batch_timeout_ms, 86400000);
    assert_int_equal(c.job.max_active, 3);
    assert_int_equal(c.job.invalid_records, CONFIG_INVALID_SKIP);
    assert_int_equal(c.job.max_record_bytes, 512 * 1024);
    assert_string_equal(c.job.template_path, "/srv/templates/default.json");
    assert_non_null(strstr(c.path, "batchd.conf"));
    config_free(&c);
    diag_free(&d);
}

static void test_unknown_section_and_key_with_line(void **state)
{
    (void)state;
    config c;
    diag d = {0};
    int r = load_text("[api]\nurl = https://x.example\nbogus = 1\n\n[nonsense]\na = b\n", &c, &d);
    assert_int_equal(r, -EINVAL);
    assert_int_equal(d.count, 2);
    assert_non_null(strstr(d.lines[0], "batchd.conf:3: unknown key 'bogus' in [api]"));
    assert_non_null(strstr(d.lines[1], "batchd.conf:5: unknown section [nonsense]"));
    config_free(&c);
    diag_free(&d);
}

static void test_bad_values(void **state)
{
    (void)state;
    struct {
        const char *text;
        const char *expect;
    } cases[] = {
        {"[api]\ntimeout = soon\n", "batchd.conf:2: [api] timeout = soon: not a duration"},
        {"[api]\ntimeout = 0\n", "must be longer than 0"},
        {"[api]\nmax_rate = 0\n", "max_rate = 0: must be more than 0"},
        {"[api]\nmax_connections = 0\n", "must be between 1 and 256"},
        {"[api]\nmax_connections = 257\n", "must be between 1 and 256"},
        {"[api]\nmax_connections = 8x\n", "not a whole number"},
        {"[job]\nmax_active = 0\n", "max_active = 0: must be between 1"},
        {"[poll]\nmultiplier = 0.5\n", "must be at least 1"},
        {"[job]\ninvalid_records = maybe\n", "must be fail or skip"},
        {"[job]\nmax_record_size = 1G\n", "not a size"},
        {"[job]\nmax_record_size = 0\n", "must be larger than 0"},
        {"[api]\nurl = ftp://x\n", "must start with https://"},
        {"[api]\nurl = http://api.prolific.com\n", "loopback"},
        {"[api]\nurl = http://10.0.0.1:8080\n", "loopback"},
        {"[api]\nurl = https://\n", "has no host"},
        /* What curl parses decides: the host after the user info, before the fragment. */
        {"[api]\nurl = http://127.0.0.1@evil.com/\n", "has user info"},
        {"[api]\nurl = http://user:pass@127.0.0.1/\n", "token_file"},
        {"[api]\nurl = https://u:hunter2@x.example/\n", "batchd.conf:2: [api] url (not shown"},
        {"[api]\nurl = https://user@api.prolific.com/\n", "would be logged and sent"},
        {"[api]\nurl = http://evil.com#@127.0.0.1\n", "fragment"},
        {"[api]\nurl = https://api.prolific.com/?x=1\n", "query"},
        {"[api]\nurl = http://localhost.evil.com\n", "loopback"},
        {"[api]\nurl = http://127.0.0.1.evil.com/\n", "loopback"},
        {"[api]\nurl = http://[::2]:8080\n", "loopback"},
        {"[api]\nurl = http://[fe80::1%25lo]/\n", "loopback"},
        {"[api]\nurl = http://0x7e.1\n", "loopback"},
        {"[api]\nurl = http://[::1\n", "not a valid URL"},
        {"[poll]\ninitial = 2m\nmax = 1m\n", "initial must not be longer than [poll] max"},
        {"url = https://x\n", "batchd.conf:1: 'url' is outside any section"},
        {"[api]\nurl = https://a.example\nurl = https://b.example\n",
         "batchd.conf:3: [api] url given twice"},
        {"[api]\nthis line is not ini\n", "batchd.conf:2: syntax error"},
        {"[hooks]\non_ready = bin/hook\n", "batchd.conf:2: [hooks] on_ready = bin/hook: must be an "
                                           "absolute path"},
        {"[hooks]\non_failed =\n", "on_failed = : must not be empty"},
        {"[hooks]\nhook_timeout = 0\n", "hook_timeout = 0: must be longer than 0"},
        {"[hooks]\nhook_retries = -1\n", "hook_retries = -1: must be between 0 and 100"},
        {"[hooks]\nhook_max_parallel = 0\n", "must be between 1 and 256"},
        {"[hooks]\non_export = bin/x\n", "on_export = bin/x: must be an absolute path"},
        {"[export]\ninterval = 500ms\n", "interval = 500ms: must be 0 (off) or at least 1s"},
        {"[export]\ninterval = often\n", "not a duration"},
        {"[export]\nwindow = 0\n", "window = 0: must be longer than 0"},
        {"[export]\nkeep = -1\n", "keep = -1: must be between 0"},
        {"[export]\nmax_size = 5T\n", "max_size = 5T: not a size"},
        {"[export]\nbogus = 1\n",
         "unknown key 'bogus' in [export] (known: interval, window, keep, max_size)"},
        {"[metrics]\n\nlisten = 9465\n",
         "batchd.conf:3: [metrics] listen = 9465: must be ADDRESS:PORT"},
        {"[metrics]\nlisten = localhost:9465\n", "not a numeric IPv4 address"},
        {"[metrics]\nlisten = 127.0.0.1:0\n", "from 1 to 65535"},
        {"[metrics]\nlisten = 127.0.0.1:65536\n", "from 1 to 65535"},
        {"[metrics]\nlisten = 127.0.0.1:+80\n", "from 1 to 65535"},
        {"[metrics]\nlisten = ::1:9465\n", "write an IPv6 address as [::1]:9465"},
        {"[metrics]\nlisten = [::1:9465\n", "in brackets"},
        {"[metrics]\nlisten = [zz]:9465\n", "not a numeric IPv6 address"},
        {"[metrics]\nport = 1\n", "unknown key 'port' in [metrics]"},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(cases); i++) {
        config c;
        diag d = {0};
        int r = load_text(cases[i].text, &c, &d);
        if (r != -EINVAL || !diag_has(&d, cases[i].expect)) {
            print_error("case %zu: r=%d, wanted '%s', got:\n", i, r, cases[i].expect);
            for (size_t k = 0; k < d.count; k++)
                print_error("  %s\n", d.lines[k]);
            fail();
        }
        config_free(&c);
        diag_free(&d);
    }
}

static void test_metrics_listen(void **state)
{
    (void)state;
    config c;
    diag d = {0};
    assert_int_equal(load_text("[metrics]\nlisten = 127.0.0.1:9465\n", &c, &d), 0);
    assert_string_equal(c.metrics.listen, "127.0.0.1:9465");
    config_free(&c);
    assert_int_equal(load_text("[metrics]\nlisten = [::1]:80\n", &c, &d), 0);
    assert_string_equal(c.metrics.listen, "[::1]:80");
    struct sockaddr_storage ss;
    unsigned len = 0;
    assert_null(config_parse_listen(c.metrics.listen, &ss, &len));
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(len, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 80);
    config_free(&c);
    assert_int_equal(load_text("[metrics]\nlisten =\n", &c, &d), 0);
    assert_null(c.metrics.listen);
    config_free(&c);
    diag_free(&d);
}

static void test_export_section(void **state)
{
    (void)state;
    config c;
    diag d = {0};
    assert_int_equal(load_text("", &c, &d), 0);
    assert_int_equal(c.export.interval_ms, 0);
    assert_int_equal(c.export.window_ms, 14LL * 86400 * 1000);
    assert_int_equal(c.export.keep, 3);
    assert_int_equal(c.export.max_bytes, 0);
    config_free(&c);
    assert_int_equal(
        load_text("[export]\ninterval = 6h\nwindow = 2d\nkeep = 0\nmax_size = 4G\n", &c, &d), 0);
    assert_int_equal(c.export.interval_ms, 6LL * 3600 * 1000);
    assert_int_equal(c.export.window_ms, 2LL * 86400 * 1000);
    assert_int_equal(c.export.keep, 0);
    assert_int_equal(c.export.max_bytes, 4ULL << 30);
    config_free(&c);
    assert_int_equal(load_text("[export]\ninterval = 0\n", &c, &d), 0);
    assert_int_equal(c.export.interval_ms, 0);
    assert_int_equal(d.count, 0);
    config_free(&c);
    diag_free(&d);
}

static void test_hooks(void **state)
{
    (void)state;
    config c;
    diag d = {0};
    assert_int_equal(load_text("", &c, &d), 0);
    assert_null(c.hooks.on_ready);
    assert_null(c.hooks.on_failed);
    assert_int_equal(c.hooks.timeout_ms, 300000);
    assert_int_equal(c.hooks.retries, 3);
    assert_int_equal(c.hooks.max_parallel, 4);
    assert_int_equal(config_check_hooks(&c, &d), 0);
    config_free(&c);

    char *exe = write_file("hook", "#!/bin/sh\n", 0755);
    char *plain = write_file("plain", "#!/bin/sh\n", 0644);
    char *text = xasprintf("[hooks]\non_ready = %s  # after READY\n\non_failed = %s\n"
                           "hook_timeout = 90s\nhook_retries = 0\nhook_max_parallel = 2\n",
                           exe, plain);
    assert_int_equal(load_text(text, &c, &d), 0);
    assert_string_equal(c.hooks.on_ready, exe);
    assert_string_equal(c.hooks.on_failed, plain);
    assert_int_equal(c.hooks.timeout_ms, 90000);
    assert_int_equal(c.hooks.retries, 0);
    assert_int_equal(c.hooks.max_parallel, 2);
    /* on_ready is fine; on_failed, set on line 4, is not executable. */
    assert_int_equal(config_check_hooks(&c, &d), 1);
    assert_int_equal(d.count, 1);
    assert_true(diag_has(&d, "batchd.conf:4: [hooks] on_failed = "));
    assert_true(diag_has(&d, "not executable"));
    config_free(&c);
    diag_free(&d);
    free(text);

    /* on_export is checked like the others, at its own line. */
    text = xasprintf("[hooks]\non_export = %s\n", plain);
    assert_int_equal(load_text(text, &c, &d), 0);
    assert_string_equal(c.hooks.on_export, plain);
    assert_int_equal(config_check_hooks(&c, &d), 1);
    assert_true(diag_has(&d, "batchd.conf:2: [hooks] on_export = "));
    config_free(&c);
    diag_free(&d);
    free(text);

    text = xasprintf("[hooks]\non_ready = %s/missing\non_failed = %s\n", tmpdir, tmpdir);
    assert_int_equal(load_text(text, &c, &d), 0);
    assert_int_equal(config_check_hooks(&c, &d), 2);
    assert_true(diag_has(&d, "batchd.conf:2: [hooks] on_ready = "));
    assert_true(diag_has(&d, "No such file or directory"));
    assert_true(diag_has(&d, "batchd.conf:3: [hooks] on_failed = "));
    assert_true(diag_has(&d, "not a regular file"));
    config_free(&c);
    diag_free(&d);
    free(text);
    free(exe);
    free(plain);
}

static void test_loopback_http_allowed(void **state)
{
    (void)state;
    /* Loopback in every form curl accepts: it normalises 127.1, 0x7f.1, 2130706433 and
     * percent-encoding to a dotted quad before it connects. */
    const char *ok[] = {"http://127.0.0.1:8080",
                        "http://127.1.2.3/",
                        "http://localhost:9",
                        "http://[::1]:8080/api",
                        "https://api.prolific.com/",
                        "http://[::1]:8080",
                        "http://127.1",
                        "http://0x7f.1",
                        "HTTP://LOCALHOST",
                        "http://%31%32%37.0.0.1",
                        "http://2130706433/",
                        "http://localhost.:9",
                        "http://[0:0:0:0:0:0:0:1]/",
                        "http://[::ffff:127.0.0.1]/"};
    for (size_t i = 0; i < BD_ARRAY_LEN(ok); i++) {
        char *text = xasprintf("[api]\nurl = %s\n", ok[i]);
        config c;
        diag d = {0};
        assert_int_equal(load_text(text, &c, &d), 0);
        assert_string_equal(c.api.url, ok[i]);
        config_free(&c);
        diag_free(&d);
        free(text);
    }
}

static void test_long_line_reported(void **state)
{
    (void)state;
    strbuf sb = {0};
    strbuf_puts(&sb, "[api]\ntoken_file = /");
    for (int i = 0; i < 400; i++)
        strbuf_putc(&sb, 'a');
    strbuf_puts(&sb, "\n[nope]\n");
    config c;
    diag d = {0};
    assert_int_equal(load_text(sb.data, &c, &d), -EINVAL);
    assert_true(diag_has(&d, "batchd.conf:2: line too long"));
    assert_true(diag_has(&d, "batchd.conf:3: unknown section [nope]"));
    config_free(&c);
    diag_free(&d);
    strbuf_free(&sb);
}

static void test_missing_file(void **state)
{
    (void)state;
    config c;
    diag d = {0};
    char *p = xasprintf("%s/absent.conf", tmpdir);
    assert_int_equal(config_load(p, &c, &d), -ENOENT);
    assert_int_equal(d.count, 1);
    assert_non_null(strstr(d.lines[0], "absent.conf: cannot read"));
    /* still usable defaults */
    assert_string_equal(c.spool.dir, "/var/spool/batchd");
    config_free(&c);
    diag_free(&d);
    free(p);
}

static void test_default_path(void **state)
{
    (void)state;
    assert_string_equal(config_default_path("/x.conf"), "/x.conf");
    assert_string_equal(config_default_path(NULL), CONFIG_DEFAULT_PATH);
    setenv("BATCHD_CONFIG", "/env.conf", 1);
    assert_string_equal(config_default_path(NULL), "/env.conf");
    assert_string_equal(config_default_path("/x.conf"), "/x.conf");
    unsetenv("BATCHD_CONFIG");
}

static void test_token_order(void **state)
{
    (void)state;
    config c;
    config_defaults(&c);
    char *tok = NULL;
    const char *src = NULL;
    diag d = {0};

    /* nothing anywhere */
    assert_int_equal(config_load_token(&c, &tok, &src, &d), -ENOENT);
    assert_null(tok);
    assert_true(diag_has(&d, "no API token"));
    diag_free(&d);

    /* environment only */
    setenv("BATCHD_API_TOKEN", "  env-token\n", 1);
    assert_int_equal(config_load_token(&c, &tok, &src, &d), 0);
    assert_string_equal(tok, "env-token");
    assert_string_equal(src, "environment BATCHD_API_TOKEN");
    free(tok);

    /* credentials directory wins over the environment */
    char *cred = xasprintf("%s/cred", tmpdir);
    assert_int_equal(mkdir(cred, 0700), 0);
    char *cp = xasprintf("%s/api-token", cred);
    int fd = open(cp, O_WRONLY | O_CREAT, 0400);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "cred-token\n", 11), 11);
    close(fd);
    setenv("CREDENTIALS_DIRECTORY", cred, 1);
    assert_int_equal(config_load_token(&c, &tok, &src, &d), 0);
    assert_string_equal(tok, "cred-token");
    assert_string_equal(src, "credential api-token");
    free(tok);

    /* token_file wins over both; a missing token_file falls through */
    c.api.token_file = xasprintf("%s/missing-token", tmpdir);
    assert_int_equal(config_load_token(&c, &tok, &src, &d), 0);
    assert_string_equal(tok, "cred-token");
    free(tok);
    free(c.api.token_file);
    c.api.token_file = write_file("token", "file-token\n", 0600);
    assert_int_equal(config_load_token(&c, &tok, &src, &d), 0);
    assert_string_equal(tok, "file-token");
    assert_string_equal(src, "token_file");
    free(tok);
    assert_int_equal(d.count, 0);
    config_free(&c);
    free(cp);
    free(cred);
}

static void test_token_mode_refused(void **state)
{
    (void)state;
    config c;
    config_defaults(&c);
    setenv("BATCHD_API_TOKEN", "env-token", 1);
    c.api.token_file = write_file("token", "secret-value-123\n", 0640);
    char *tok = NULL;
    const char *src = NULL;
    diag d = {0};
    /* refused, not skipped: a world-readable token must be fixed, not worked around */
    assert_int_equal(config_load_token(&c, &tok, &src, &d), -EPERM);
    assert_null(tok);
    assert_true(diag_has(&d, "accessible by group or others (mode 0640)"));
    assert_true(diag_has(&d, "chmod 600"));
    assert_false(diag_has(&d, "secret-value-123"));
    diag_free(&d);
    config_free(&c);
}

static void test_token_bad_content(void **state)
{
    (void)state;
    config c;
    config_defaults(&c);
    char *tok = NULL;
    const char *src = NULL;
    diag d = {0};
    c.api.token_file = write_file("token", " \n\n", 0600);
    assert_int_equal(config_load_token(&c, &tok, &src, &d), -EINVAL);
    assert_true(diag_has(&d, "empty"));
    diag_free(&d);
    free(c.api.token_file);
    c.api.token_file = write_file("token2", "abc\ndef-secret\n", 0600);
    assert_int_equal(config_load_token(&c, &tok, &src, &d), -EINVAL);
    assert_true(diag_has(&d, "control character"));
    assert_false(diag_has(&d, "def-secret"));
    assert_null(tok);
    diag_free(&d);
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_example, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_section_and_key_with_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loopback_http_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_listen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_line_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_mode_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_bad_content, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
