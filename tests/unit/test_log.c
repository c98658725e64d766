/* Unit tests of log: a log line escapes every control character and is valid UTF-8, whatever
 * the job name or message holds. stderr is captured through a pipe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "batchd/log.h"
#include "batchd/util.h"

/* Runs fn with stderr going into a pipe; returns what it wrote. */
static char *capture(void (*fn)(void))
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(p[1], STDERR_FILENO) >= 0);
    close(p[1]);
    fn();
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    strbuf sb = {0};
    char buf[4096];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof buf)) > 0)
        strbuf_append(&sb, buf, (size_t)n);
    close(p[0]);
    strbuf_append(&sb, "", 0);
    return strbuf_steal(&sb);
}

static void hostile_lines(void)
{
    log_job_fields f = {"01JDLOG", "name\x1b[31m\n\xff\xc2\x9b", "ds\r\x7f", "b\t", "queued"};
    log_job(LOG_LVL_WARNING, &f, "api said: %s", "evil\nforged line\x1b]0;title\x07 \xc0\xaf");
    log_msg(LOG_LVL_ERR, "plain %s", "\x01\x1f\x7f\xc2\x80\xc2\x9f end");
}

static void test_controls_escaped(void **state)
{
    (void)state;
    unsetenv("JOURNAL_STREAM");
    log_init("test", LOG_LVL_DEBUG);
    char *out = capture(hostile_lines);
    size_t n = strlen(out);
    assert_true(utf8_valid(out, n));
    int lines = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c == '\n') {
            lines++;
            continue;
        }
        assert_true(c >= 0x20 && c != 0x7f);
        if (c == 0xc2 && i + 1 < n)
            assert_false((unsigned char)out[i + 1] >= 0x80 && (unsigned char)out[i + 1] <= 0x9f);
    }
    assert_int_equal(lines, 2);
    assert_non_null(strstr(out, "name\\x1b[31m\\x0a\\xff\\x9b"));
    assert_non_null(strstr(out, "evil\\x0aforged line\\x1b]0;title\\x07"));
    assert_non_null(strstr(out, "\\x01\\x1f\\x7f\\x80\\x9f end"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_controls_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
