/* intake: the whole local check of one job before any API call: the manifest (manifest
 * module), the data file's own properties (regular, readable, not empty) and every record
 * (records module, streamed in fixed-size chunks so memory stays flat). With
 * invalid_records = skip it writes the cleaned upload file and rejected.jsonl. Also runs
 * batchd --check-config (error.json is built by util's error_json_new). Thread-safe: no globals, no
 * logging. */
#ifndef BATCHD_INTAKE_H
#define BATCHD_INTAKE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "batchd/config.h"

#define INTAKE_MAX_ERRORS    1000
#define INTAKE_REJECTED_NAME "rejected.jsonl"

typedef struct intake_result {
    /* NULL when valid, else "invalid_job", "invalid_records", "cancelled", or "needs_target":
     * the job appends to a job by name (append_to) and no target_schema was given; the
     * manifest is resolved (job) and nothing else was checked. */
    const char *code;
    char *message;     /* one line for people: "3 records do not match the schema" */
    cJSON *errors;     /* array of {"line", "field", "message"} (field null for a whole record)
                          or {"path", "message"} (+ "file", "column"); capped at
                          INTAKE_MAX_ERRORS entries plus a final {"message": "... and N more"}.
                          Never NULL after intake_check. In skip mode a valid job still lists
                          the rejected records' problems here. */
    cJSON *job;        /* the resolved job (manifest_resolve) when the manifest is valid */
    char *data_path;   /* the data file found: job_dir joined with dataset.file */
    char *upload_path; /* file to upload: data_path, or the cleaned file in skip mode */
    char *upload_name; /* file name to request the upload URL with (the data file's name) */
    uint64_t records;  /* valid records: those uploaded when the job is valid */
    uint64_t rejected; /* records that do not match the schema: skipped in skip mode; also
                          counted when they fail the job (code "invalid_records") */
    uint64_t bytes;    /* size of upload_path */
    /* SHA-256 (lower-case hex) of exactly the bytes validated for upload: the data file as
     * read, or the cleaned file as written in skip mode. The upload is checked against it
     * (the producer still owns the data file). "" when the job is not valid, or in a dry
     * run that would have written a cleaned file. */
    char sha256[65];
} intake_result;

typedef struct intake_options {
    /* Check only: never write the cleaned file or rejected.jsonl, even in skip mode (the
     * counts are the same). For batchctl validate. */
    bool dry_run;
    /* Bytes read at a time; 0 = 64 KiB. */
    size_t chunk;
    /* For tests: called between skip mode's counting pass and its writing pass, where a
     * producer may still change the file. */
    void (*between_passes)(void *ud);
    void *between_passes_ud;
    /* An append job by name: the target job's dataset.schema, which the records are checked
     * against and which becomes the resolved job's dataset.schema. Borrowed for the call (a
     * copy the caller's thread no longer touches: intake runs on the pool). */
    const cJSON *target_schema;
} intake_options;

/* Blocking: resolves the manifest and streams every record through the validator. job_dir is
 * a job directory, or a regular data file checked as a bare job (the configured template,
 * no job.json). With cfg->job.invalid_records == CONFIG_INVALID_SKIP and some invalid (but
 * some valid) records, writes <stem>.cleaned.<ext> (header + valid records) and
 * rejected.jsonl ({"line", "errors": [{"field", "message"}], "record": "<raw>"} per line)
 * into job_dir, durably, and the job is valid. Never modifies the job's own files. cancel,
 * if non-NULL, is polled between chunks (returns early with code "cancelled").
 * out is always filled (intake_result_free it). Returns 0 when the check ran to its end
 * (out->code says valid or not); -ECANCELED when cancelled; another -errno when a file
 * could not be read or written (out->code is then set too, with the reason in message):
 * -EACCES for a data file without read permission (even as root), -ENOENT when job_dir does
 * not exist, -EIO ... */
int intake_check(const char *job_dir, const char *job_name, const config *cfg,
                 const atomic_int *cancel, intake_result *out);
int intake_check_ex(const char *job_dir, const char *job_name, const config *cfg,
                    const atomic_int *cancel, const intake_options *opts, intake_result *out);
void intake_result_free(intake_result *r);

/* batchd --check-config: loads the config at path, reads the token (never printed),
 * checks the directories, control group and the configured template; prints each problem
 * on its own line to out, then a summary. Returns 0 (fine) or 78 (EX_CONFIG). */
int intake_check_config(const char *path, FILE *out);

#endif
