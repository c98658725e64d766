/* runner_append.c: the runner's side of append jobs (PRODUCT §11). The machine (job.h) knows
 * no other job, and intake (on the pool) knows no job at all, so the runner does what needs
 * the job table, on the loop:
 *   - resolves append_to NAME to a ready job and hands its dataset.schema to a second
 *     validation (the first, without it, stops after the manifest with "needs_target");
 *   - keeps appends to one dataset one at a time, in claim order: a job whose manifest says
 *     it appends waits in queued, with a note naming the one ahead of it, until
 *     runner_append_blocker (pure) finds nothing ahead of it. Once admitted it is "active"
 *     on its dataset until it is finished, so no later one overtakes it.
 * The validation's result is only given to the machine (job_on_validated) when the job's
 * turn has come, with the target's ids. */
#include "runner_internal.h"
#include "batchd/util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- the pure decision ---- */

long runner_append_blocker(const runner_append_slot *slots, size_t n, size_t me)
{
    const char *ds = slots[me].dataset_id;
    long ahead = -1;
    for (size_t i = 0; i < n; i++) {
        if (i == me)
            continue;
        bool same = ds && slots[i].dataset_id && strcmp(ds, slots[i].dataset_id) == 0;
        /* One running on the dataset (whatever its place in the line): it is the one. */
        if (slots[i].kind == RUNNER_APPEND_ACTIVE && same)
            return (long)i;
        /* An earlier job that may append to it (not yet validated), or does and waits too:
         * claim order; the nearest of them is the one named. */
        if (i < me && (slots[i].kind == RUNNER_APPEND_UNKNOWN ||
                       (slots[i].kind == RUNNER_APPEND_WAITING && same)))
            ahead = (long)i;
    }
    return ahead;
}

/* ---- the job table as the decision sees it ---- */

static runner_append_slot slot_of(const rjob *e)
{
    const job *j = e->j;
    runner_append_slot s = {RUNNER_APPEND_NONE, NULL};
    if (e->finished || job_state_terminal(j->state))
        return s;
    if (e->append.admitted) {
        s.kind = RUNNER_APPEND_ACTIVE;
        s.dataset_id = e->append.dataset_id;
    } else if (j->state != JOB_QUEUED && j->state != JOB_VALIDATING) {
        /* Past validation (also a job recovered from its record): it uploads into its
         * dataset, an append's being the target's. */
        s.kind = j->dataset_id ? RUNNER_APPEND_ACTIVE : RUNNER_APPEND_NONE;
        s.dataset_id = j->dataset_id;
    } else if (e->append.known) {
        s.kind = e->append.dataset_id ? RUNNER_APPEND_WAITING : RUNNER_APPEND_NONE;
        s.dataset_id = e->append.dataset_id;
    } else {
        s.kind = RUNNER_APPEND_UNKNOWN;
    }
    return s;
}

/* The job that keeps r from starting, or NULL. */
static rjob *blocker_of(const rjob *r)
{
    runner *rn = r->rn;
    runner_append_slot *slots = xcalloc(rn->n_jobs ? rn->n_jobs : 1, sizeof *slots);
    size_t me = rn->n_jobs;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        slots[i] = slot_of(rn->jobs[i]);
        if (rn->jobs[i] == r)
            me = i;
    }
    long b = -1;
    if (me < rn->n_jobs) {
        slots[me].kind = RUNNER_APPEND_WAITING;
        slots[me].dataset_id = r->append.dataset_id;
        b = runner_append_blocker(slots, rn->n_jobs, me);
    }
    free(slots);
    return b < 0 ? NULL : rn->jobs[b];
}

/* Notes (once per job ahead) what r waits for. Returns true when the record changed. */
static bool note_waiting(rjob *r, const rjob *ahead, int64_t now)
{
    if (r->append.waiting_for && strcmp(r->append.waiting_for, ahead->j->id) == 0)
        return false;
    free(r->append.waiting_for);
    r->append.waiting_for = xstrdup(ahead->j->id);
    char *note =
        xasprintf("waits for %s (%s), ahead of it on dataset %s: appends to one dataset "
                  "run one at a time, in claim order",
                  ahead->j->name ? ahead->j->name : "?", ahead->j->id, r->append.dataset_id);
    if (r->j->state == JOB_QUEUED)
        job_note(r->j, now, "%s", note);
    else
        job_set_state(r->j, JOB_QUEUED, now, note);
    free(note);
    return true;
}

void rj_append_clear(rjob *r)
{
    rj_append *a = &r->append;
    free(a->dataset_id);
    free(a->batch_id);
    free(a->target_id);
    free(a->target_name);
    free(a->waiting_for);
    cJSON_Delete(a->schema);
    memset(a, 0, sizeof *a);
}

bool rj_append_holds(const rjob *r)
{
    return r->append.waiting && r->j->state == JOB_QUEUED;
}

int rj_append_wake(rjob *r, int64_t now)
{
    if (!r->append.waiting)
        return 0;
    if (r->j->state != JOB_QUEUED) {
        r->append.waiting = false; /* cancelled meanwhile: the job goes its way */
        return 0;
    }
    const rjob *ahead = blocker_of(r);
    if (ahead)
        return note_waiting(r, ahead, now) ? 1 : 0;
    r->append.waiting = false;
    r->append.admitted = true;
    free(r->append.waiting_for);
    r->append.waiting_for = NULL;
    job_note(r->j, now, "its turn to append to dataset %s", r->append.dataset_id);
    return 2;
}

/* ---- a finished validation ---- */

/* Fails the job locally (invalid_job) with a message about append_to: no API call. */
static void fail_target(job *j, const job_validation *v, int64_t now, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_target(job *j, const job_validation *v, int64_t now, const char *fmt, ...)
{
    strbuf sb = {0};
    va_list ap;
    va_start(ap, fmt);
    strbuf_vprintf(&sb, fmt, ap);
    va_end(ap);
    cJSON *errors = cJSON_CreateArray();
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "path", "append_to");
    cJSON_AddStringToObject(e, "message", sb.data);
    cJSON_AddItemToArray(errors, e);
    job_validation fv = {
        .ok = false, .code = "invalid_job", .message = sb.data, .errors = errors, .spec = v->spec};
    job_on_validated(j, &fv, now);
    cJSON_Delete(errors);
    strbuf_free(&sb);
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src ? xstrdup(src) : NULL;
}

/* The job append_to names: an exact id, or an exact name (never an id prefix: a mistyped
 * target must not land in another batch). Among namesakes a ready job that made its own batch
 * comes first: a standing batch's drops may well be named as their target (its next day's
 * file), and every earlier one of them is a ready namesake too, appending to that batch. Ready
 * appends alone name their batch when they all grow one; any other namesake is returned for
 * the caller to say why it cannot be used. */
static const job *find_target(const runner *rn, const char *ref, const job *self, bool *ambiguous)
{
    const job *own = NULL, *append = NULL, *other = NULL;
    size_t n_own = 0, n_other = 0;
    bool appends_agree = true;
    *ambiguous = false;
    for (size_t i = 0; i < rn->n_jobs; i++) {
        const job *c = rn->jobs[i]->j;
        if (strcmp(c->id, ref) == 0)
            return c;
        bool named = (c->name && strcmp(c->name, ref) == 0) || (c->dir && strcmp(c->dir, ref) == 0);
        if (c == self || !named)
            continue;
        if (c->state == JOB_READY && !c->append.on) {
            own = c;
            n_own++;
        } else if (c->state == JOB_READY) {
            appends_agree = appends_agree && (!append || (append->batch_id && c->batch_id &&
                                                          !strcmp(append->batch_id, c->batch_id)));
            append = c;
        } else {
            other = c;
            n_other++;
        }
    }
    if (own) {
        *ambiguous = n_own > 1;
        return own;
    }
    if (append) {
        /* Only appends of that name: they grow one batch, whose own job is the target when
         * it is still known (else the append stands for it: same batch and dataset). */
        *ambiguous = !appends_agree;
        for (size_t i = 0; !*ambiguous && append->append.target_job_id && i < rn->n_jobs; i++)
            if (!strcmp(rn->jobs[i]->j->id, append->append.target_job_id))
                return rn->jobs[i]->j;
        return append;
    }
    *ambiguous = n_other > 1;
    return other;
}

/* append_to NAME: the ready job it names, with a schema. NULL when the job was failed. */
static const job *resolve_name(const rjob *r, const char *ref, const job_validation *v,
                               const cJSON **schema, int64_t now)
{
    bool ambiguous = false;
    const job *t = find_target(r->rn, ref, r->j, &ambiguous);
    job *j = r->j;
    if (t && ambiguous) {
        fail_target(j, v, now, "append_to: %s names more than one job: give the target's id", ref);
    } else if (!t) {
        fail_target(j, v, now,
                    "append_to: no job %s is known to batchd (give the name or id of a ready "
                    "job; for a batch batchd does not know, give batch_id and dataset_id)",
                    ref);
    } else if (t == j) {
        fail_target(j, v, now, "append_to: %s is this job itself", ref);
    } else if (t->state != JOB_READY || !t->dataset_id || !t->batch_id) {
        fail_target(j, v, now,
                    "append_to: job %s (%s) is %s, not ready: only a ready job's "
                    "batch can be appended to",
                    t->name ? t->name : ref, t->id, job_state_name(t->state));
    } else {
        *schema = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(t->spec, "dataset"), "schema");
        if (*schema)
            return t;
        fail_target(j, v, now,
                    "append_to: job %s (%s) keeps no dataset.schema to check records against "
                    "(it finished before batchd kept one): give batch_id and dataset_id, and "
                    "dataset.schema",
                    t->name ? t->name : ref, t->id);
    }
    return NULL;
}

/* Learns where the job appends from its manifest. false when it was failed. For a name,
 * *rerun says the records must be checked (again) with the target's schema. */
static bool learn_target(rjob *r, const cJSON *at, const job_validation *v, bool *rerun,
                         int64_t now)
{
    rj_append *a = &r->append;
    *rerun = false;
    if (cJSON_IsObject(at)) {
        set_str(&a->dataset_id, json_str(at, "dataset_id"));
        set_str(&a->batch_id, json_str(at, "batch_id"));
        set_str(&a->target_id, NULL);
        set_str(&a->target_name, NULL);
    } else {
        const cJSON *schema = NULL;
        const job *t = resolve_name(r, at->valuestring, v, &schema, now);
        if (!t)
            return false;
        *rerun = !a->schema || !a->target_id || strcmp(a->target_id, t->id) != 0 ||
                 (v->code && strcmp(v->code, "needs_target") == 0);
        if (*rerun) {
            cJSON_Delete(a->schema);
            a->schema = cJSON_Duplicate(schema, true);
        }
        set_str(&a->dataset_id, t->dataset_id);
        set_str(&a->batch_id, t->batch_id);
        set_str(&a->target_id, t->id);
        set_str(&a->target_name, t->name);
    }
    a->known = true;
    return true;
}

bool rj_append_take(rjob *r, const job_validation *v, int64_t now)
{
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(v->spec, "append_to");
    if (!at || cJSON_IsNull(at)) {
        r->append.known = true; /* not an append: nothing for the line to wait for */
        return false;
    }
    /* A broken job fails as any other (the machine), unless it only lacks its target. */
    if (v->code && strcmp(v->code, "needs_target") != 0)
        return false;
    bool rerun = false;
    if (!learn_target(r, at, v, &rerun, now))
        return true;
    if (!r->append.admitted) {
        const rjob *ahead = blocker_of(r);
        if (ahead) {
            note_waiting(r, ahead, now);
            r->append.waiting = true;
            return true;
        }
        r->append.admitted = true;
    }
    job *j = r->j;
    if (rerun) {
        job_set_state(j, JOB_QUEUED, now,
                      "target resolved: checking the records against its schema");
        return true;
    }
    job_validation va = *v;
    va.append = true;
    va.dataset_id = r->append.dataset_id;
    va.batch_id = r->append.batch_id;
    va.append_job_id = r->append.target_id;
    va.append_job_name = r->append.target_name;
    job_on_validated(j, &va, now);
    return true;
}

cJSON *rn_append_kept_spec(cJSON *spec, bool ready)
{
    /* What an append to this job checks its records against; nothing else of the resolved
     * job is needed once it is finished (a retry validates again). */
    cJSON *schema = ready ? cJSON_DetachItemFromObjectCaseSensitive(
                                cJSON_GetObjectItemCaseSensitive(spec, "dataset"), "schema")
                          : NULL;
    cJSON_Delete(spec);
    if (!schema)
        return NULL;
    cJSON *kept = cJSON_CreateObject();
    cJSON_AddItemToObject(cJSON_AddObjectToObject(kept, "dataset"), "schema", schema);
    return kept;
}
