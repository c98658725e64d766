/* simcore_internal: the state types and helpers shared by the simcore_*.c files. Not a
 * public face: only simcore's own files (and its unit test) include it. */
#ifndef BATCHD_SIMCORE_INTERNAL_H
#define BATCHD_SIMCORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "batchd/records.h"
#include "simcore.h"

typedef enum sim_outcome {
    SIM_OUTCOME_COMPLETE = 0,
    SIM_OUTCOME_PARTIAL,
    SIM_OUTCOME_FAILED,
} sim_outcome;

/* A sorted set of 64-bit hashes of task_group_id values: 8 bytes per distinct group
 * instead of the strings, so a big upload keeps memory modest. */
typedef struct sim_hashset {
    uint64_t *v;
    size_t n, cap;
} sim_hashset;

typedef struct sim_import {
    char id[37];
    char *filename;
    char *file_key;
    const char *content_type; /* static */
    char signature[33];
    int64_t created_ms, expires_ms;
    int64_t uploaded_ms; /* -1: uninitialised */
    int64_t start_ms, finish_ms;
    sim_outcome outcome;
    uint64_t accepted, rejected;
    cJSON *errors; /* array of {record_index, field, reason} */
    char *reason;  /* failed */
    sim_hashset groups;
} sim_import;

typedef struct sim_dataset {
    char id[37];
    char *name;
    char *workspace_id;
    int64_t created_ms;
    cJSON *schema;        /* NULL: legacy V3 dataset */
    char *group_field;    /* the task_group_id field, or NULL */
    sim_import **imports; /* arrival order (oldest first) */
    size_t n_imports, cap_imports;
    int64_t last_finish_ms; /* imports run one at a time */
} sim_dataset;

/* One POST …/sync. Its times are fixed when it is made (syncs of a batch run one after
 * another); what it does is decided once, at start_ms, from the state then (resolved). */
typedef struct sim_sync {
    char id[37];
    int64_t created_ms, start_ms, finish_ms;
    bool resolved;
    char *reason; /* failed: why; NULL: complete */
    uint64_t tasks_created, datapoints_processed, groups_created, groups_expanded;
    uint64_t total_tasks, total_groups; /* the batch's counts once this sync completes */
} sim_sync;

/* One export job. Its content is a snapshot of the batch's tasks at the POST. */
typedef struct sim_export {
    char id[37];
    int64_t created_ms, ready_ms;
    bool failed;
    char *study_id, *from, *to; /* the filters it was asked with (NULL: none) */
    uint64_t task_count, task_groups;
    int64_t pad;
} sim_export;

typedef struct sim_batch {
    char id[37];
    char *name;
    char *workspace_id;
    char dataset_id[37]; /* "" when none attached */
    int64_t created_ms;
    cJSON *task_details;
    cJSON *batch_items; /* echoed with ids; NULL when not supplied */
    bool auto_sync_enabled;
    int64_t instruction_count;
    int64_t setup_ms; /* -1: UNINITIALISED */
    int64_t ready_ms;
    bool error;
    int64_t tasks_per_group;
    uint64_t task_count, task_groups; /* what setup made (syncs add to these) */
    sim_hashset taken;  /* hashes of the import ids setup or a sync turned into tasks */
    sim_hashset groups; /* predetermined grouping: the batch's task_group_id hashes */
    sim_sync **syncs;   /* oldest first */
    size_t n_syncs, cap_syncs;
    sim_export **exports; /* oldest first; a deleted one is gone */
    size_t n_exports, cap_exports;
} sim_batch;

typedef struct sim_log_slot {
    uint64_t seq;
    int64_t t_ms;
    char *method;
    char *path;
    char *uri; /* NULL: not known */
    simcore_endpoint endpoint;
    int status;
    bool auth;
    simcore_fault_kind fault;
    int64_t retry_after_ms;
} sim_log_slot;

struct simcore {
    simcore_config cfg;
    char *base_url;
    uint64_t rng;
    simcore_faults faults;
    sim_dataset **datasets;
    size_t n_datasets, cap_datasets;
    sim_batch **batches;
    size_t n_batches, cap_batches;
    sim_log_slot *log; /* ring of cfg.max_log */
    size_t log_head, log_len;
    uint64_t log_seq;
    uint64_t url_secret; /* signs the presigned download URLs */
};

/* simcore_fault.c: uniform double in [0, 1) from the seeded generator. */
double sim_rand01(simcore *sim);
uint64_t sim_rand64(simcore *sim);

/* simcore_state.c: finding things and the lifecycles derived from timestamps. */
void *sim_grow(void *p, size_t *cap, size_t n, size_t elem);
sim_dataset *sim_find_dataset(const simcore *sim, const char *id);
sim_import *sim_find_import(const sim_dataset *d, const char *id);
sim_batch *sim_find_batch(const simcore *sim, const char *id);
sim_import *sim_find_import_by_key(const simcore *sim, const char *file_key, sim_dataset **ds_out);

const char *sim_import_status_at(const sim_import *imp, int64_t now_ms);
/* Uploaded, finished by now_ms and not failed: its datapoints are in the dataset. */
bool sim_import_usable_at(const sim_import *imp, int64_t now_ms);
/* Uploaded and not finished at now_ms (queued or processing). */
bool sim_import_running_at(const sim_import *imp, int64_t now_ms);
const char *sim_batch_status_at(const sim_batch *b, int64_t now_ms);
/* The input item types of batch_items (the ones participants answer). */
bool sim_is_input_item(const char *type);
void sim_add_time(cJSON *o, const char *key, int64_t ms);
/* 404 with the Error envelope naming what was not found. */
void sim_respond_not_found(simcore_response *resp, const char *what, const char *id);

/* simcore_sync.c: sync jobs. */
void sim_handle_sync(simcore *sim, const simcore_route *rt, int64_t now, simcore_response *resp);
void sim_handle_get_sync(simcore *sim, const simcore_route *rt, int64_t now,
                         simcore_response *resp);
/* Resolves the syncs of b that started by now_ms; then the batch's counts as of now_ms. */
void sim_batch_counts_at(simcore *sim, sim_batch *b, int64_t now_ms, uint64_t *tasks,
                         uint64_t *groups);
cJSON *sim_syncs_json(simcore *sim, sim_batch *b, int64_t now_ms);
void sim_syncs_free(sim_batch *b);

/* simcore_export.c: export jobs and the presigned download. */
void sim_handle_export(simcore *sim, const simcore_route *rt, const simcore_request *req,
                       simcore_response *resp);
void sim_handle_download(simcore *sim, const simcore_route *rt, const simcore_request *req,
                         simcore_response *resp);
cJSON *sim_exports_json(const sim_batch *b, int64_t now_ms);
void sim_exports_free(sim_batch *b);

/* simcore_zip.c: the ZIP of one export, made on the fly. */
typedef struct sim_zip_source {
    const char *batch_id;
    int64_t base_ms; /* responses are dated from here */
    uint64_t task_count, task_groups;
    int64_t tasks_per_group; /* 0: predetermined grouping */
    const cJSON *batch_items;
    int64_t pad;
} sim_zip_source;
/* Copies what it needs from src. */
simcore_stream *sim_zip_new(const sim_zip_source *src);

/* simcore.c: the JSON forms. */
cJSON *sim_import_json(const sim_dataset *d, const sim_import *imp, int64_t now_ms);
cJSON *sim_dataset_json(const sim_dataset *d, int64_t now_ms);
cJSON *sim_batch_json(simcore *sim, sim_batch *b, int64_t now_ms);

void sim_import_free(sim_import *imp);

/* simcore_hashset.c */
void sim_hashset_add(sim_hashset *s, uint64_t h);
bool sim_hashset_has(const sim_hashset *s, uint64_t h);
void sim_hashset_merge(sim_hashset *dst, const sim_hashset *src);
void sim_hashset_free(sim_hashset *s);
uint64_t sim_hash(const void *data, size_t len);

/* simcore_response.c: "Bad Request", ...: the title of an error envelope. */
const char *sim_status_title(int status);
/* An S3 XML error (presigned upload and download URLs). */
void sim_s3_error(simcore_response *resp, int status, const char *code, const char *message);
/* Sets resp's status and JSON body from j, which it frees. */
void sim_respond_json(simcore_response *resp, int status, cJSON *j);

#endif
