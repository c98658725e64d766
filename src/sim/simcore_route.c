/* simcore_route: maps a request's method and path to one of the sim's endpoints, so that
 * faults, the request log and the handlers all agree on the endpoint names. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "batchd/util.h"
#include "simcore.h"

#define API_PREFIX "/api/v1/data-collection"

static const char *const endpoint_names[SIMCORE_EP_COUNT_] = {
    [SIMCORE_EP_NONE] = NULL,
    [SIMCORE_EP_CREATE_DATASET] = "create_dataset",
    [SIMCORE_EP_GET_DATASET] = "get_dataset",
    [SIMCORE_EP_UPLOAD_URL] = "upload_url",
    [SIMCORE_EP_UPLOAD] = "upload",
    [SIMCORE_EP_GET_IMPORT] = "get_import",
    [SIMCORE_EP_CREATE_BATCH] = "create_batch",
    [SIMCORE_EP_LIST_BATCHES] = "list_batches",
    [SIMCORE_EP_GET_BATCH] = "get_batch",
    [SIMCORE_EP_BATCH_STATUS] = "batch_status",
    [SIMCORE_EP_SETUP] = "setup",
    [SIMCORE_EP_SYNC] = "sync",
    [SIMCORE_EP_GET_SYNC] = "get_sync",
    [SIMCORE_EP_EXPORT] = "export",
    [SIMCORE_EP_LIST_EXPORTS] = "list_exports",
    [SIMCORE_EP_GET_EXPORT] = "get_export",
    [SIMCORE_EP_DELETE_EXPORT] = "delete_export",
    [SIMCORE_EP_DOWNLOAD] = "download",
    [SIMCORE_EP_SIM_STATE] = "_sim_state",
    [SIMCORE_EP_SIM_REQUESTS] = "_sim_requests",
    [SIMCORE_EP_SIM_FAULTS] = "_sim_faults",
};

const char *simcore_endpoint_name(simcore_endpoint ep)
{
    if ((int)ep < 0 || ep >= SIMCORE_EP_COUNT_)
        return NULL;
    return endpoint_names[ep];
}

int simcore_endpoint_from_name(const char *name, simcore_endpoint *out)
{
    if (!name)
        return -EINVAL;
    for (int i = SIMCORE_EP_CREATE_DATASET; i <= SIMCORE_EP_DOWNLOAD; i++) {
        if (strcmp(endpoint_names[i], name) == 0) {
            *out = (simcore_endpoint)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool simcore_endpoint_is_control(simcore_endpoint ep)
{
    return ep == SIMCORE_EP_SIM_STATE || ep == SIMCORE_EP_SIM_REQUESTS ||
           ep == SIMCORE_EP_SIM_FAULTS;
}

/* Copies one path segment (up to the next '/' or the end) into dst. Returns the rest of
 * the path after the segment, or NULL when the segment is empty or too long. */
static const char *take_segment(const char *p, char *dst, size_t cap)
{
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= cap)
        return NULL;
    memcpy(dst, p, n);
    dst[n] = '\0';
    return p + n;
}

static void set(simcore_route *r, simcore_endpoint ep, const char *method, const char *allowed)
{
    r->endpoint = ep;
    if (strcmp(method, allowed) == 0) {
        r->status = 0;
        r->allow = NULL;
    } else {
        r->status = 405;
        r->allow = allowed;
    }
}

static void route_datasets(const char *method, const char *p, simcore_route *r)
{
    if (*p == '\0') {
        set(r, SIMCORE_EP_CREATE_DATASET, method, "POST");
        return;
    }
    if (*p != '/')
        return;
    p = take_segment(p + 1, r->id, sizeof r->id);
    if (!p)
        return;
    if (*p == '\0') {
        set(r, SIMCORE_EP_GET_DATASET, method, "GET");
        return;
    }
    simcore_endpoint ep;
    if (strncmp(p, "/upload-url/", 12) == 0) {
        ep = SIMCORE_EP_UPLOAD_URL;
        p += 12;
    } else if (strncmp(p, "/imports/", 9) == 0) {
        ep = SIMCORE_EP_GET_IMPORT;
        p += 9;
    } else {
        return;
    }
    p = take_segment(p, r->sub, sizeof r->sub);
    if (!p || *p != '\0')
        return;
    set(r, ep, method, "GET");
}

/* A path that takes two methods: GET and POST, or GET and DELETE. */
static void set2(simcore_route *r, const char *method, simcore_endpoint get,
                 const char *other_method, simcore_endpoint other, const char *allow)
{
    bool is_other = strcmp(method, other_method) == 0;
    r->endpoint = is_other ? other : get;
    bool ok = is_other || strcmp(method, "GET") == 0;
    r->status = ok ? 0 : 405;
    r->allow = ok ? NULL : allow;
}

/* The paths below one batch after its id: /syncs/{id} and /export/{id}. */
static void route_batch_sub(const char *method, const char *p, simcore_route *r)
{
    if (strncmp(p, "/syncs/", 7) == 0) {
        p = take_segment(p + 7, r->sub, sizeof r->sub);
        if (p && *p == '\0')
            set(r, SIMCORE_EP_GET_SYNC, method, "GET");
    } else if (strncmp(p, "/export/", 8) == 0) {
        p = take_segment(p + 8, r->sub, sizeof r->sub);
        if (p && *p == '\0')
            set2(r, method, SIMCORE_EP_GET_EXPORT, "DELETE", SIMCORE_EP_DELETE_EXPORT,
                 "GET, DELETE");
    }
}

static void route_batches(const char *method, const char *p, simcore_route *r)
{
    /* The CLI uses "/batches/?workspace_id=" and the contract test says both forms work. */
    if (*p == '\0' || strcmp(p, "/") == 0) {
        set2(r, method, SIMCORE_EP_LIST_BATCHES, "POST", SIMCORE_EP_CREATE_BATCH, "GET, POST");
        return;
    }
    if (*p != '/')
        return;
    p = take_segment(p + 1, r->id, sizeof r->id);
    if (!p)
        return;
    if (*p == '\0')
        set(r, SIMCORE_EP_GET_BATCH, method, "GET");
    else if (strcmp(p, "/status") == 0)
        set(r, SIMCORE_EP_BATCH_STATUS, method, "GET");
    else if (strcmp(p, "/setup") == 0)
        set(r, SIMCORE_EP_SETUP, method, "POST");
    /* The API's own spelling: singular "sync" to start one, plural "syncs" to read one. */
    else if (strcmp(p, "/sync") == 0)
        set(r, SIMCORE_EP_SYNC, method, "POST");
    else if (strcmp(p, "/export") == 0)
        set2(r, method, SIMCORE_EP_LIST_EXPORTS, "POST", SIMCORE_EP_EXPORT, "GET, POST");
    else
        route_batch_sub(method, p, r);
}

static void route_sim(const char *method, const char *p, simcore_route *r)
{
    if (strcmp(p, "state") == 0) {
        set(r, SIMCORE_EP_SIM_STATE, method, "GET");
    } else if (strcmp(p, "requests") == 0) {
        set(r, SIMCORE_EP_SIM_REQUESTS, method, "GET");
    } else if (strcmp(p, "faults") == 0) {
        r->endpoint = SIMCORE_EP_SIM_FAULTS;
        bool ok = strcmp(method, "GET") == 0 || strcmp(method, "POST") == 0;
        r->status = ok ? 0 : 405;
        r->allow = ok ? NULL : "GET, POST";
    }
}

void simcore_route_request(const char *method, const char *path, simcore_route *r)
{
    memset(r, 0, sizeof *r);
    r->endpoint = SIMCORE_EP_NONE;
    r->status = 404;
    if (!method || !path)
        return;
    if (strncmp(path, API_PREFIX "/", sizeof API_PREFIX) == 0) {
        const char *p = path + sizeof API_PREFIX;
        if (strncmp(p, "datasets", 8) == 0)
            route_datasets(method, p + 8, r);
        else if (strncmp(p, "batches", 7) == 0)
            route_batches(method, p + 7, r);
    } else if (strncmp(path, "/_upload/", 9) == 0) {
        size_t n = strlen(path + 9);
        if (n > 0 && n < sizeof r->sub) {
            memcpy(r->sub, path + 9, n + 1);
            set(r, SIMCORE_EP_UPLOAD, method, "PUT");
        }
    } else if (strncmp(path, "/_download/", 11) == 0) {
        size_t n = strlen(path + 11);
        if (n > 0 && n < sizeof r->sub) {
            memcpy(r->sub, path + 11, n + 1);
            set(r, SIMCORE_EP_DOWNLOAD, method, "GET");
        }
    } else if (strncmp(path, "/_sim/", 6) == 0) {
        route_sim(method, path + 6, r);
    }
    if (r->endpoint == SIMCORE_EP_NONE)
        r->status = 404;
}
