/* log: one line per event on stderr. When stderr is the journal (JOURNAL_STREAM names the
 * same device and inode), lines go to journald with structured fields instead (JOB_ID=,
 * DATASET_ID=, BATCH_ID= ...). The token never passes through here: callers log ids and
 * states, never request headers. */
#ifndef BATCHD_LOG_H
#define BATCHD_LOG_H

#include <stdbool.h>

typedef enum log_level {
    LOG_LVL_ERR = 3,
    LOG_LVL_WARNING = 4,
    LOG_LVL_NOTICE = 5,
    LOG_LVL_INFO = 6,
    LOG_LVL_DEBUG = 7,
} log_level;

/* ident: "batchd", "batchd-sim" ... Checks JOURNAL_STREAM once. */
void log_init(const char *ident, log_level max_level);
void log_set_level(log_level max_level);
bool log_to_journal(void);

void log_msg(log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Structured fields for one job: any may be NULL. */
typedef struct log_job_fields {
    const char *job_id;
    const char *job_name;
    const char *dataset_id;
    const char *batch_id;
    const char *state;
} log_job_fields;

void log_job(log_level lvl, const log_job_fields *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(...)  log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_LVL_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LVL_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

#endif
