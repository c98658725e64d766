/* control: the io.batchd varlink interface on the control socket. It owns the interface
 * description, who may call what (read for the control group, write for root and the daemon's
 * own uid), parameter checking, and the fan-out of job changes to Watch subscribers. The job
 * table stays the daemon's: control reaches it only through control_ops and Job objects. */
#ifndef BATCHD_CONTROL_H
#define BATCHD_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "batchd/varlink.h"

typedef struct control control;

typedef enum control_access { CONTROL_READ = 1, CONTROL_WRITE = 2 } control_access;

typedef struct control_ops {
    void *ud;
    cJSON *(*get_info)(void *ud); /* io.batchd.GetInfo reply parameters */
    /* array of Job objects, newest first, at most limit of them; states NULL/0 = all */
    cJSON *(*list_jobs)(void *ud, const char *const *states, size_t n_states, size_t limit);
    /* Job object with history, or NULL: *err = "io.batchd.NoSuchJob" / "io.batchd.AmbiguousJob" */
    cJSON *(*get_job)(void *ud, const char *job, const char **err);
    /* retry/cancel: 0 and *job_out = Job object, or -errno with *err = varlink error name
     * ("io.batchd.NoSuchJob", "io.batchd.InvalidState") and *err_msg (static) */
    int (*retry)(void *ud, const char *job, cJSON **job_out, const char **err,
                 const char **err_msg);
    int (*cancel)(void *ud, const char *job, cJSON **job_out, const char **err,
                  const char **err_msg);
    /* io.batchd.Export, as retry and cancel. */
    int (*export_job)(void *ud, const char *job, cJSON **job_out, const char **err,
                      const char **err_msg);
    /* The ids an ambiguous job reference matches (io.batchd.AmbiguousJob's candidates): a
     * JSON array of strings; may be NULL (then the error has none). */
    cJSON *(*candidates)(void *ud, const char *job);
    void (*pause)(void *ud);
    void (*resume)(void *ud);
    /* Reply parameters, e.g. {"applied": [...], "restart_required": [...]}, or NULL with *err
     * (NULL means "io.batchd.ReloadFailed") and *err_msg: a malloc'd description (e.g. the
     * config file's problems, one per line) that control frees, or NULL. */
    cJSON *(*reload)(void *ud, const char **err, char **err_msg);
    /* The metrics in the Prometheus text exposition format, malloc'd (io.batchd.GetMetrics). */
    char *(*get_metrics)(void *ud);
} control_ops;

typedef struct control_options {
    const char *socket_path; /* e.g. /run/batchd/io.batchd */
    const char *group;       /* control group name (or number): members may read; NULL = only
                                root/own uid; a group that does not exist is warned about */
    /* Limits of the varlink server (see varlink_server_options; 0 = its default). */
    size_t max_connections;      /* ordinary connections, e.g. 1024 */
    size_t max_per_uid;          /* one unprivileged uid, e.g. 256 */
    size_t reserved_connections; /* for root and the daemon's uid beyond the others, e.g. 32 */
    size_t max_message;          /* inbound message, e.g. 64 KiB */
    size_t max_pending_out;      /* a reply, e.g. 4 MiB (larger: io.batchd.ReplyTooLarge) */
    size_t max_stream_out;       /* a Watch's unsent backlog, e.g. 1 MiB (more: closed) */
    size_t memory_budget;        /* all clients together, e.g. 48 MiB (io.batchd.Busy) */
    int64_t idle_timeout_ms;     /* e.g. 60000; a Watch connection is not idle */
    const char *version;
} control_options;

/* Binds the socket (or takes it from sd_listen_fds), creating the directory 0750 if missing,
 * socket 0660 with the group set; refuses (-EADDRINUSE, *err message) if another daemon
 * answers; replaces a stale file. *err is malloc'd (free it) on failure. */
int control_start(uv_loop_t *loop, const control_options *opts, const control_ops *ops,
                  control **out, char **err);
/* Called by the daemon after every change of a job, with its Job object (borrowed): sent to
 * every Watch subscriber in order as {"parameters": {"job": Job}, "continues": true}. */
void control_job_changed(control *c, const cJSON *job);
/* Closes everything asynchronously (run the loop to let libuv finish), unlinks the socket file
 * if it made it. NULL: no-op. */
void control_stop(control *c);

/* Number of Watch subscribers (for tests and the status line). */
size_t control_watchers(const control *c);

/* The access a peer has: CONTROL_READ|CONTROL_WRITE for root and self_uid, CONTROL_READ for a
 * member of the control group (primary or supplementary), else 0. Pure. */
unsigned control_peer_access(const varlink_peer *peer, uid_t self_uid, bool have_group,
                             gid_t group);
/* The access io.batchd method `method` needs (0 for unknown methods). Pure. */
unsigned control_method_access(const char *method);

/* ListJobs without a limit, and the snapshot that opens a Watch: the newest this many jobs. */
#define CONTROL_LIST_DEFAULT 1000
/* At most this many ids in io.batchd.AmbiguousJob's candidates. */
#define CONTROL_CANDIDATES_MAX 50

/* The varlink interface description of io.batchd. */
extern const char control_interface_description[];

#endif
