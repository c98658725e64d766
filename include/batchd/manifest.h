/* manifest: a job's job.json and its templates. Loads job.json (or nothing, for a bare data
 * file), resolves the template chain, merges field by field, applies the defaults, finds the
 * data file and checks everything batchd will send against the API rules (rules module), so
 * a mistake is reported with its JSON path before any API call. Blocking file reads; no
 * logging, no globals: safe on libuv's thread pool. */
#ifndef BATCHD_MANIFEST_H
#define BATCHD_MANIFEST_H

#include <stdbool.h>

#include <cjson/cJSON.h>

#include "batchd/config.h"
#include "batchd/util.h"

#define MANIFEST_MAX_TEMPLATE_DEPTH 8
#define MANIFEST_MAX_FILE           (1024 * 1024) /* job.json and templates */
/* append_to: a job's name or id of at most this many bytes, or ids of at most this many. */
#define MANIFEST_APPEND_REF_MAX 255
#define MANIFEST_APPEND_ID_MAX  128

/* Loads job.json from job_dir (absent = {}: a bare data file job), resolves and merges
 * templates (the job's "template", else cfg->job.template_path; "template": null means
 * none), applies defaults (dataset.name and batch.name = job_name, workspace_id =
 * cfg->api.workspace_id, batch.tasks_per_group = 1, dataset.file = the single data file
 * found), validates everything locally. Returns 0 with *out = the resolved job object (owned
 * by the caller, without "template"), or -EINVAL with issues added to errors (util.h's
 * diag; NULL: not wanted), each with its JSON path, with its file when the problem is in a
 * template ("<template path>") or job.json ("job.json"), and line / column for JSON syntax
 * errors; diag_to_json writes them as error.json lists them. */
/* An append job ("append_to" in job.json or a template; null: none) resolves without its
 * "batch" (never sent: the batch exists) and needs no workspace_id, dataset.name or batch
 * members; "append_to" stays in *out. With {"batch_id", "dataset_id"} dataset.schema is
 * required (the records are checked against it); with a job's name or id dataset.schema is
 * dropped (the target's applies: the caller resolves it, see intake_options). */
int manifest_resolve(const char *job_dir, const char *job_name, const config *cfg, cJSON **out,
                     diag *errors);

/* The same for a bare data file outside a job directory (batchctl validate FILE): no
 * job.json is read; the configured template applies; dataset.file = basename(data_path).
 * The data file itself is not opened here. */
int manifest_resolve_bare(const char *data_path, const char *job_name, const config *cfg,
                          cJSON **out, diag *errors);

/* Loads one template (the configured one: any path) with its chain, merged, without
 * defaults or data file, and checks what can be checked without a job (member types,
 * schema, task_details, batch_items against the schema when both are present). For
 * batchd --check-config. Returns 0 or -EINVAL / -ENOENT with issues in errors. */
int manifest_check_template(const char *ref, const config *cfg, diag *errors);

/* The workspace_id the template ref sets (through its chain), malloc'd; NULL when it sets
 * none or cannot be loaded (manifest_check_template reports why). */
char *manifest_template_workspace(const char *ref, const config *cfg);

/* Where a template named by job.json (or by another template) is: always
 * "<dir of cfg->job.template_path>/<ref>.json" (".json" not doubled). Only a name is
 * accepted, never a path: malloc'd, or NULL when manifest_template_name_problem(ref). The
 * resolved file must also lie inside that directory (checked when it is loaded). */
char *manifest_template_path(const char *ref, const config *cfg);
/* Why ref is not a template name (empty, '/', a leading '.', control characters, too
 * long), as a phrase for "it %s"; NULL when it is one. */
const char *manifest_template_name_problem(const char *ref);

/* True for names data-file discovery considers: "*.jsonl" / "*.csv" (any case), not a
 * dotfile, not rejected.jsonl and not our own "*.cleaned.jsonl" / "*.cleaned.csv". */
bool manifest_is_data_name(const char *name);

/* True for a name batchd may write into a job directory itself (cleaned file, rejected.jsonl,
 * error.json, result.json): such files never count as the user's data. */
bool manifest_is_own_name(const char *name);

#endif
