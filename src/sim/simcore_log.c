/* simcore_log: the request log, a ring of the last cfg.max_log API requests that
 * /_sim/requests and /_sim/state show to tests. */
#include <stdlib.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

uint64_t simcore_log_request(simcore *sim, const simcore_log_entry *e)
{
    size_t max = sim->cfg.max_log;
    size_t at;
    if (sim->log_len == max) {
        at = sim->log_head;
        sim->log_head = (sim->log_head + 1) % max;
        free(sim->log[at].method);
        free(sim->log[at].path);
        free(sim->log[at].uri);
    } else {
        at = (sim->log_head + sim->log_len) % max;
        sim->log_len++;
    }
    sim_log_slot *s = &sim->log[at];
    s->seq = ++sim->log_seq;
    s->t_ms = e->t_ms;
    s->method = xstrdup(e->method ? e->method : "");
    s->path = xstrdup(e->path ? e->path : "");
    s->uri = e->uri ? xstrdup(e->uri) : NULL;
    s->endpoint = e->endpoint;
    s->status = e->status;
    s->auth = e->auth;
    s->fault = e->fault;
    s->retry_after_ms = e->retry_after_ms;
    return s->seq;
}

cJSON *simcore_requests_json(const simcore *sim, uint64_t since)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < sim->log_len; i++) {
        const sim_log_slot *s = &sim->log[(sim->log_head + i) % sim->cfg.max_log];
        if (s->seq <= since)
            continue;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "seq", (double)s->seq);
        cJSON_AddNumberToObject(j, "t_ms", (double)s->t_ms);
        cJSON_AddStringToObject(j, "method", s->method);
        cJSON_AddStringToObject(j, "path", s->path);
        json_add_str_or_null(j, "uri", s->uri);
        json_add_str_or_null(j, "endpoint", simcore_endpoint_name(s->endpoint));
        cJSON_AddNumberToObject(j, "status", s->status);
        cJSON_AddBoolToObject(j, "auth", s->auth);
        json_add_str_or_null(j, "fault", simcore_fault_kind_name(s->fault));
        json_add_int_or_null(j, "retry_after_ms", s->retry_after_ms);
        cJSON_AddItemToArray(arr, j);
    }
    return arr;
}
