/* log: see include/batchd/log.h. */
#include "batchd/log.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

static const char *log_ident = "batchd";
static log_level log_max = LOG_LVL_INFO;
static bool log_journal;

/* stderr is the journal when JOURNAL_STREAM ("dev:ino") matches fd 2 (systemd.exec(5)). */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    if (!js || fstat(STDERR_FILENO, &st) < 0)
        return false;
    char *end;
    errno = 0;
    unsigned long long dev = strtoull(js, &end, 10);
    if (errno || *end != ':')
        return false;
    unsigned long long ino = strtoull(end + 1, &end, 10);
    if (errno || *end)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *ident, log_level max_level)
{
    log_ident = ident;
    log_max = max_level;
    log_journal = stderr_is_journal();
}

void log_set_level(log_level max_level)
{
    log_max = max_level;
}

bool log_to_journal(void)
{
    return log_journal;
}

static const char *level_name(log_level lvl)
{
    switch (lvl) {
    case LOG_LVL_ERR:
        return "error";
    case LOG_LVL_WARNING:
        return "warning";
    case LOG_LVL_NOTICE:
        return "notice";
    case LOG_LVL_INFO:
        return "info";
    default:
        return "debug";
    }
}

/* Messages are single lines of text: a newline, an escape sequence or an invalid byte from a
 * job name, a file name or an API body must neither forge a second log line nor reach the
 * terminal of whoever reads the log. Every control character is shown as \xNN. */
static char *esc(const char *s)
{
    return text_escape(s ? s : "");
}

/* A printf-style format: without the attribute clang's -Wformat-nonliteral refuses the
 * strbuf_vprintf below. */
__attribute__((format(printf, 3, 0))) static void emit(log_level lvl, const log_job_fields *f,
                                                       const char *fmt, va_list ap)
{
    if (lvl > log_max)
        return;
    strbuf raw = {0};
    if (f && f->job_id) {
        strbuf_printf(&raw, "job %s", f->job_id);
        if (f->job_name)
            strbuf_printf(&raw, " (%s)", f->job_name);
        if (f->dataset_id)
            strbuf_printf(&raw, " dataset=%s", f->dataset_id);
        if (f->batch_id)
            strbuf_printf(&raw, " batch=%s", f->batch_id);
        strbuf_puts(&raw, ": ");
    }
    strbuf_vprintf(&raw, fmt, ap);
    strbuf msg = {0};
    strbuf_append(&msg, "", 0);
    strbuf_put_escaped(&msg, raw.data, raw.len);
    strbuf_free(&raw);
    if (log_journal) {
        char *id = esc(f ? f->job_id : NULL), *name = esc(f ? f->job_name : NULL),
             *ds = esc(f ? f->dataset_id : NULL), *batch = esc(f ? f->batch_id : NULL),
             *st = esc(f ? f->state : NULL);
        sd_journal_send("MESSAGE=%s", msg.data, "PRIORITY=%d", (int)lvl, "SYSLOG_IDENTIFIER=%s",
                        log_ident, "JOB_ID=%s", id, "JOB_NAME=%s", name, "DATASET_ID=%s", ds,
                        "BATCH_ID=%s", batch, "JOB_STATE=%s", st, NULL);
        free(id);
        free(name);
        free(ds);
        free(batch);
        free(st);
    } else {
        char ts[40];
        time_format_rfc3339(time_now_ms(), true, ts, sizeof ts);
        fprintf(stderr, "%s %s[%ld]: %s: %s\n", ts, log_ident, (long)getpid(), level_name(lvl),
                msg.data);
    }
    strbuf_free(&msg);
}

void log_msg(log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, NULL, fmt, ap);
    va_end(ap);
}

void log_job(log_level lvl, const log_job_fields *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, f, fmt, ap);
    va_end(ap);
}
