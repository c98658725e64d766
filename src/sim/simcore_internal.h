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
    uint64_t task_count, task_groups;
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
};

/* simcore_fault.c: uniform double in [0, 1) from the seeded generator. */
double sim_rand01(simcore *sim);
uint64_t sim_rand64(simcore *sim);

/* simcore.c: the state and its JSON forms. */
sim_dataset *sim_find_dataset(const simcore *sim, const char *id);
sim_import *sim_find_import(const sim_dataset *d, const char *id);
sim_batch *sim_find_batch(const simcore *sim, const char *id);
sim_import *sim_find_import_by_key(const simcore *sim, const char *file_key, sim_dataset **ds_out);

const char *sim_import_status_at(const sim_import *imp, int64_t now_ms);
const char *sim_batch_status_at(const sim_batch *b, int64_t now_ms);
cJSON *sim_import_json(const sim_dataset *d, const sim_import *imp, int64_t now_ms);
cJSON *sim_dataset_json(const sim_dataset *d, int64_t now_ms);
cJSON *sim_batch_json(const simcore *sim, const sim_batch *b, int64_t now_ms);

void sim_import_free(sim_import *imp);

/* simcore_hashset.c */
void sim_hashset_add(sim_hashset *s, uint64_t h);
void sim_hashset_merge(sim_hashset *dst, const sim_hashset *src);
void sim_hashset_free(sim_hashset *s);
uint64_t sim_hash(const void *data, size_t len);

/* simcore_response.c: "Bad Request", ...: the title of an error envelope. */
const char *sim_status_title(int status);
/* Sets resp's status and JSON body from j, which it frees. */
void sim_respond_json(simcore_response *resp, int status, cJSON *j);

#endif
