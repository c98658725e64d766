/* varlink: a generic varlink server on a libuv loop. It owns the listening Unix socket (bound,
 * or taken from systemd socket activation), every connection, the NUL framing, method dispatch,
 * org.varlink.service (GetInfo, GetInterfaceDescription), streaming (more/continues), oneway
 * calls, peer credentials, and the limits that keep a hostile or stuck peer from hurting anyone
 * else: message size, outbound backlog, idle time, connections in total and per uid. It knows
 * nothing about what the methods do. Single-threaded: call everything from the loop's thread. */
#ifndef BATCHD_VARLINK_H
#define BATCHD_VARLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <uv.h>

typedef struct varlink_server varlink_server;
/* One method call in progress. Valid from the method handler until its final reply, or until
 * the connection closes (the cancel callback says when). */
typedef struct varlink_call varlink_call;

/* Who is on the other end, read with SO_PEERCRED and SO_PEERGROUPS at accept. */
typedef struct varlink_peer {
    uid_t uid;
    gid_t gid;
    pid_t pid;
    gid_t *groups; /* supplementary groups (may be empty) */
    size_t n_groups;
} varlink_peer;

typedef struct varlink_server_options {
    size_t max_connections; /* ordinary connections, all peers together; 0 = 1024 */
    size_t max_per_uid;     /* one unprivileged uid; 0 = 256 */
    /* Connections beyond max_connections that only privileged peers may use: root and the
     * server's own uid are always accepted while the reserve lasts, even when others hold
     * every ordinary slot. 0 = 32. */
    size_t reserved_connections;
    size_t max_message;      /* inbound message without its NUL; 0 = 1 MiB */
    size_t max_pending_out;  /* a final reply: larger ones are refused with too_large_error, and
                                one connection never holds more unsent; 0 = 4 MiB */
    size_t max_stream_out;   /* unsent output of a streaming call: a peer that lets more pile
                                up is disconnected; 0 = 1 MiB */
    size_t memory_budget;    /* bytes held for all clients (input buffers, unsent output);
                                0 = 48 MiB. Unprivileged calls are refused with busy_error from
                                three quarters of it on, privileged ones only at the whole. */
    int64_t idle_timeout_ms; /* no call and no traffic for this long, or unsent output that
                                makes no progress for this long: closed; 0 = 60 s, <0 never */
    /* Root and the server's own uid are bound by max_connections + reserved_connections only,
     * not by max_per_uid: the cap protects others from an unprivileged flood, not the operator
     * from herself. */
    bool privileged_uncapped;
    /* Who is privileged (reserve, budget, uncapped); NULL = root and the server's own uid.
     * Tests use it to play an unprivileged peer. */
    bool (*is_privileged)(const varlink_peer *peer, void *ud);
    void *is_privileged_ud;
    /* Methods that cost next to nothing (NULL-terminated, e.g. a status call): an
     * unprivileged call of one of them is taken as soon as it is read, like a privileged
     * one, instead of waiting in the run queue behind costly calls. NULL = none. */
    const char *const *quick_methods;
    /* Clock for rate-limited logging, milliseconds; NULL = time_mono_ms. */
    int64_t (*now_ms)(void);
    /* org.varlink.service.GetInfo */
    const char *vendor;
    const char *product;
    const char *version;
    const char *url;
    /* Error sent before the connection is closed for a protocol violation (bad JSON, no
     * method, oversize message), with {"reason": text}; NULL = close silently. */
    const char *protocol_error;
    /* Error sent (with {"limit": n}) to a connection refused by a cap; NULL = close silently. */
    const char *limit_error;
    /* Error answering a call refused because the clients' memory budget is used up, with
     * {"reason": text}; the connection stays. NULL = the connection is closed instead. */
    const char *busy_error;
    /* Error answering a call whose reply would exceed max_pending_out, with {"size": n,
     * "limit": n}; the connection stays. NULL = close the connection instead. */
    const char *too_large_error;
} varlink_server_options;

/* Method flags. */
enum {
    VARLINK_METHOD_MORE = 1, /* streams: the call must have "more": true (else ExpectedMore) */
};

/* Handles one call. params is always an object (borrowed, valid during the call only). The
 * handler answers with varlink_call_reply / varlink_call_error now, or later for a streaming
 * call; a handler that returns without answering a non-streaming call gets
 * org.varlink.service.MethodNotImplemented sent for it. */
typedef void (*varlink_method_fn)(varlink_call *call, const cJSON *params, void *ud);
/* The connection of an open call closed (peer gone, limit hit or server stopped). The call
 * pointer is invalid after this returns. */
typedef void (*varlink_cancel_fn)(varlink_call *call, void *ud);

int varlink_server_new(uv_loop_t *loop, const varlink_server_options *opts, varlink_server **out);
/* Closes the listener and every connection (open calls are cancelled synchronously, so their
 * cancel callbacks run before this returns); the memory goes once libuv has closed the handles,
 * so run the loop afterwards. Unlinks the socket file if this server created it. NULL: no-op. */
void varlink_server_free(varlink_server *s);

/* Registers an interface with its varlink interface description (copied). */
int varlink_server_add_interface(varlink_server *s, const char *name, const char *description);
/* Registers "interface.Method" of an interface added before. flags: VARLINK_METHOD_*. */
int varlink_server_add_method(varlink_server *s, const char *method, unsigned flags,
                              varlink_method_fn fn, void *ud);

/* Starts listening on path. When systemd passes a listening Unix stream socket for path (or
 * exactly one socket), that one is used and left alone. Otherwise: creates the parent
 * directory (mode 0750, group dir_gid when not (gid_t)-1) if missing; refuses with
 * -EADDRINUSE if something answers on path; replaces a stale socket file; refuses -EEXIST
 * if path is something else; binds, sets mode and group (sock_gid, (gid_t)-1 = leave).
 * On error *err (when err) is a malloc'd message saying what, where and what to do. */
int varlink_server_listen(varlink_server *s, const char *path, mode_t mode, gid_t sock_gid,
                          char **err);
/* Uses an already listening socket fd (taken over). */
int varlink_server_listen_fd(varlink_server *s, int fd);

size_t varlink_server_connections(const varlink_server *s);
/* Bytes held for clients right now: input buffers and output not yet written. */
size_t varlink_server_held(const varlink_server *s);

/* Logs a refusal (warning) of the call's peer, at most once a second per peer uid; the next
 * line logged for that uid says how many were left out. */
void varlink_call_log_refusal(varlink_call *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The call's method, flags and peer. */
const char *varlink_call_method(const varlink_call *c);
bool varlink_call_more(const varlink_call *c);
bool varlink_call_oneway(const varlink_call *c);
const varlink_peer *varlink_call_peer(const varlink_call *c);
void varlink_call_set_cancel(varlink_call *c, varlink_cancel_fn fn, void *ud);

/* Final reply; params is taken (NULL = {}). The call is over when this returns. 0, -EPIPE when
 * the connection is gone, -ENOBUFS when the peer is too far behind (it was dropped), -EMSGSIZE
 * when the reply was too large or -EBUSY when the memory budget was used up (an error was
 * sent instead; see too_large_error and busy_error). */
int varlink_call_reply(varlink_call *c, cJSON *params);
/* Final error reply; params taken (NULL = {}). */
int varlink_call_error(varlink_call *c, const char *error, cJSON *params);
/* One streamed reply with "continues": true; params_json is a printed JSON object. The call
 * stays open. Same returns as varlink_call_reply; on failure the call is over: either an error
 * ended it (the first reply of a stream was too large or over budget), or the connection was
 * closed and the cancel callback has run before this returns. */
int varlink_call_notify_json(varlink_call *c, const char *params_json);

/* Per-uid rate limit of log lines (pure: the caller passes the time). A fixed table: when it is
 * full, the uid seen longest ago makes room. */
#define VARLINK_RATELIMIT_SLOTS 64
typedef struct varlink_ratelimit {
    struct {
        uid_t uid;
        bool used;
        int64_t last_ms; /* when a line for uid was last allowed */
        size_t quiet;    /* events for uid not logged since */
    } e[VARLINK_RATELIMIT_SLOTS];
} varlink_ratelimit;

/* true: log this event now, *suppressed = events of uid left out since its last line; false:
 * counted, stay quiet. At most one true per interval_ms per uid. */
bool varlink_ratelimit_check(varlink_ratelimit *rl, uid_t uid, int64_t now_ms, int64_t interval_ms,
                             size_t *suppressed);

/* A parsed call message (pure; used by the server and the fuzz harness). */
typedef struct varlink_request {
    cJSON *msg;              /* owns everything below */
    const char *method;      /* never NULL on success */
    const cJSON *parameters; /* object; NULL when absent */
    bool more;
    bool oneway;
    bool upgrade;
} varlink_request;

/* Parses one message (without its NUL). 0, or -EBADMSG with *why (static) describing the
 * problem. On success free with varlink_request_clear. */
int varlink_request_parse(const char *buf, size_t len, varlink_request *req, const char **why);
void varlink_request_clear(varlink_request *req);

/* The interface description of org.varlink.service. */
extern const char varlink_service_description[];

#endif
