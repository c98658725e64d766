/* varlink: NUL-framed JSON calls on Unix stream sockets, served from a libuv loop.
 *
 * One call in flight per connection: once a complete message is dispatched, the connection
 * stops reading until the call is over and its reply has been written out (the write
 * callback), then takes the next message already buffered, and only then reads more. So
 * pipelining costs the server one read buffer at most, never a queue of replies, and each
 * connection gets at most one unit of work per loop turn (a oneway call, whose turn has no
 * write to wait for, has the next message taken on the next turn).
 *
 * A streaming call (more) keeps the connection's call until it ends. The connection keeps
 * reading meanwhile, so that a peer that hangs up is noticed at once (EOF) and its call
 * cancelled rather than left holding a slot and a backlog until the next notification; what
 * it sends in the meantime is buffered up to max_message like any message and dispatched after
 * the stream ends (more is a protocol error: the connection is closed).
 *
 * Every byte held for clients is counted (input buffers, unsent output) against a budget for
 * the whole server, and bounded per connection: input by max_message, a reply by
 * max_pending_out, a stream's backlog by max_stream_out. Unprivileged peers get busy_error
 * once three quarters of the budget are used; root and the server's own uid the last quarter,
 * as they get a reserve of connections. Refusals are logged at most once a second per uid. */
#include "batchd/varlink.h"

#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/util.h"

#define VL_READ_CHUNK (64 * 1024)
#define VL_MAX_GROUPS 65536
#define VL_SERVICE    "org.varlink.service"
/* At most one log line about refusals per peer uid per this many milliseconds. */
#define VL_REFUSED_LOG_MS 1000
/* An input buffer this large or smaller is kept between messages; a larger one is given back. */
#define VL_IN_KEEP 4096
/* Unprivileged calls are taken only from the run queue, once per loop turn, and stop being
 * taken after this long; the rest wait for the next turn (in order), so that other events, and
 * the operator's calls (taken as soon as they are read), never wait behind more than this plus
 * one call. */
#define VL_TURN_MS 10
/* A message longer than this is never a quick call (see quick_methods). */
#define VL_QUICK_MAX 1024
/* File descriptors kept for the rest of the process beyond the control connections. */
#define VL_FD_SPARE 256

const char varlink_service_description[] =
    "# The Varlink Service Interface is provided by every varlink service. It\n"
    "# describes the service and the interfaces it implements.\n"
    "interface org.varlink.service\n"
    "\n"
    "# Get a list of all the interfaces a service provides and information\n"
    "# about the implementation.\n"
    "method GetInfo() -> (\n"
    "  vendor: string,\n"
    "  product: string,\n"
    "  version: string,\n"
    "  url: string,\n"
    "  interfaces: []string\n"
    ")\n"
    "\n"
    "# Get the description of an interface that is implemented by this service.\n"
    "method GetInterfaceDescription(interface: string) -> (description: string)\n"
    "\n"
    "# The requested interface was not found.\n"
    "error InterfaceNotFound (interface: string)\n"
    "\n"
    "# The requested method was not found\n"
    "error MethodNotFound (method: string)\n"
    "\n"
    "# The interface defines the requested method, but the service does not\n"
    "# implement it.\n"
    "error MethodNotImplemented (method: string)\n"
    "\n"
    "# One of the passed parameters is invalid.\n"
    "error InvalidParameter (parameter: string)\n"
    "\n"
    "# Client is denied access\n"
    "error PermissionDenied ()\n"
    "\n"
    "# Method is expected to be called with 'more' set to true, but wasn't\n"
    "error ExpectedMore ()\n";

typedef struct vl_method {
    char *name;
    unsigned flags;
    varlink_method_fn fn;
    void *ud;
} vl_method;

typedef struct vl_iface {
    char *name;
    char *description;
} vl_iface;

typedef struct vl_conn vl_conn;

struct varlink_call {
    vl_conn *conn;
    char *method;
    bool open;
    bool more;
    bool oneway;
    varlink_cancel_fn cancel;
    void *cancel_ud;
};

struct vl_conn {
    uv_pipe_t pipe;
    uv_timer_t idle;
    varlink_server *srv;
    vl_conn *prev, *next;
    varlink_peer peer;
    strbuf in;
    size_t scanned; /* bytes of `in` known to hold no NUL */
    varlink_call call;
    int handles; /* libuv handles not yet closed */
    bool timer_init;
    bool listed; /* counted in srv->conns */
    bool closing;
    bool processing;
    bool privileged;  /* root or the server's own uid (or what is_privileged says) */
    bool reading;     /* uv_read_start is in effect */
    bool queued;      /* on srv->runq: take the next buffered message on the next turn */
    bool progress;    /* a write completed since the idle timer last looked */
    size_t out_bytes; /* output queued and not yet written out (held until write_cb) */
    size_t in_acct;   /* in.cap as counted in srv->held */
    vl_conn *runq_next;
};

typedef struct vl_write {
    uv_write_t req;
    char *data;
    size_t len;
} vl_write;

struct varlink_server {
    uv_loop_t *loop;
    size_t pending_handles;
    vl_conn *conns;
    size_t n_conns;
    vl_iface *ifaces;
    size_t n_ifaces;
    vl_method *methods;
    size_t n_methods;
    char *unlink_path;
    size_t held;               /* bytes held for clients: input buffers and unsent output */
    size_t n_privileged;       /* connections of privileged peers */
    int64_t accept_log_ms;     /* when a failed accept was last logged */
    int64_t turn_start_ms;     /* when this turn's run of the queue began */
    vl_conn *runq, *runq_tail; /* FIFO of connections with a message to take next turn */
    size_t runq_len;
    char *owned[8];
    uv_idle_t kick;           /* runs runq on the next turn */
    varlink_server_options o; /* its strings point at `owned` */
    uv_pipe_t listener;
    varlink_ratelimit refused;
    uid_t self_uid;
    bool listener_init;
    bool stopping;
    bool kick_init;
    bool in_runq; /* kick_cb is running the queue */
    char readbuf[VL_READ_CHUNK];
};

static void conn_close(vl_conn *c);
static void conn_process(vl_conn *c);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void log_refusal(varlink_server *s, const varlink_peer *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------- rate limit */

bool varlink_ratelimit_check(varlink_ratelimit *rl, uid_t uid, int64_t now_ms, int64_t interval_ms,
                             size_t *suppressed)
{
    size_t slot = VARLINK_RATELIMIT_SLOTS, oldest = 0;
    for (size_t i = 0; i < VARLINK_RATELIMIT_SLOTS; i++) {
        if (rl->e[i].used && rl->e[i].uid == uid) {
            slot = i;
            break;
        }
        if (!rl->e[i].used || (rl->e[oldest].used && rl->e[i].last_ms < rl->e[oldest].last_ms))
            oldest = i;
    }
    *suppressed = 0;
    if (slot == VARLINK_RATELIMIT_SLOTS) {
        slot = oldest;
        rl->e[slot].used = true;
        rl->e[slot].uid = uid;
        rl->e[slot].quiet = 0;
    } else if (now_ms - rl->e[slot].last_ms < interval_ms) {
        rl->e[slot].quiet++;
        return false;
    }
    *suppressed = rl->e[slot].quiet;
    rl->e[slot].quiet = 0;
    rl->e[slot].last_ms = now_ms;
    return true;
}

/* ---------------------------------------------------------------- parsing */

int varlink_request_parse(const char *buf, size_t len, varlink_request *req, const char **why)
{
    memset(req, 0, sizeof(*req));
    if (len == 0) {
        *why = "empty message";
        return -EBADMSG;
    }
    if (!utf8_valid(buf, len)) {
        *why = "message is not valid UTF-8";
        return -EBADMSG;
    }
    /* buf[len] is the frame's NUL: requiring it rejects trailing garbage after the object. */
    cJSON *msg = cJSON_ParseWithLengthOpts(buf, len + 1, NULL, true);
    if (!msg) {
        *why = "message is not valid JSON";
        return -EBADMSG;
    }
    const char *what = NULL;
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(msg, "method");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "parameters");
    if (!cJSON_IsObject(msg))
        what = "message is not a JSON object";
    else if (!cJSON_IsString(method) || !method->valuestring[0])
        what = "message has no \"method\" string";
    else if (params && !cJSON_IsNull(params) && !cJSON_IsObject(params))
        what = "\"parameters\" is not an object";
    else {
        static const char *const flags[] = {"more", "oneway", "upgrade"};
        for (size_t i = 0; i < BD_ARRAY_LEN(flags) && !what; i++) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(msg, flags[i]);
            if (f && !cJSON_IsBool(f) && !cJSON_IsNull(f))
                what = i == 0 ? "\"more\" is not a boolean"
                              : (i == 1 ? "\"oneway\" is not a boolean"
                                        : "\"upgrade\" is not a boolean");
        }
    }
    if (what) {
        cJSON_Delete(msg);
        *why = what;
        return -EBADMSG;
    }
    req->msg = msg;
    req->method = method->valuestring;
    req->parameters = cJSON_IsObject(params) ? params : NULL;
    req->more = json_bool(msg, "more", false);
    req->oneway = json_bool(msg, "oneway", false);
    req->upgrade = json_bool(msg, "upgrade", false);
    return 0;
}

void varlink_request_clear(varlink_request *req)
{
    cJSON_Delete(req->msg);
    memset(req, 0, sizeof(*req));
}

/* ---------------------------------------------------------------- server setup */

/* libuv writes to connections with write(2), which raises SIGPIPE when the peer has gone (a
 * Watch client that quits with replies in flight): that must cost the connection (EPIPE),
 * never the process. A handler the program installed itself is left alone. */
static void ignore_sigpipe(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

int varlink_server_new(uv_loop_t *loop, const varlink_server_options *opts, varlink_server **out)
{
    ignore_sigpipe();
    varlink_server *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->self_uid = geteuid();
    s->o = *opts;
    s->o.max_connections = opts->max_connections ? opts->max_connections : 1024;
    s->o.max_per_uid = opts->max_per_uid ? opts->max_per_uid : 256;
    s->o.max_message = opts->max_message ? opts->max_message : 1024 * 1024;
    s->o.reserved_connections = opts->reserved_connections ? opts->reserved_connections : 32;
    s->o.max_pending_out = opts->max_pending_out ? opts->max_pending_out : 4 * 1024 * 1024;
    s->o.max_stream_out = opts->max_stream_out ? opts->max_stream_out : 1024 * 1024;
    s->o.memory_budget = opts->memory_budget ? opts->memory_budget : 48 * 1024 * 1024;
    s->o.now_ms = opts->now_ms ? opts->now_ms : time_mono_ms;
    s->o.idle_timeout_ms = opts->idle_timeout_ms ? opts->idle_timeout_ms : 60000;
    s->o.vendor = s->owned[0] = xstrdup(opts->vendor ? opts->vendor : "");
    s->o.product = s->owned[1] = xstrdup(opts->product ? opts->product : "");
    s->o.version = s->owned[2] = xstrdup(opts->version ? opts->version : "");
    s->o.url = s->owned[3] = xstrdup(opts->url ? opts->url : "");
    s->o.protocol_error = s->owned[4] = opts->protocol_error ? xstrdup(opts->protocol_error) : NULL;
    s->o.limit_error = s->owned[5] = opts->limit_error ? xstrdup(opts->limit_error) : NULL;
    s->o.busy_error = s->owned[6] = opts->busy_error ? xstrdup(opts->busy_error) : NULL;
    s->o.too_large_error = s->owned[7] =
        opts->too_large_error ? xstrdup(opts->too_large_error) : NULL;
    uv_idle_init(loop, &s->kick);
    s->kick.data = s;
    s->kick_init = true;
    s->pending_handles++;
    *out = s;
    return 0;
}

static void server_destroy(varlink_server *s)
{
    for (size_t i = 0; i < s->n_ifaces; i++) {
        free(s->ifaces[i].name);
        free(s->ifaces[i].description);
    }
    for (size_t i = 0; i < s->n_methods; i++)
        free(s->methods[i].name);
    free(s->ifaces);
    free(s->methods);
    for (size_t i = 0; i < BD_ARRAY_LEN(s->owned); i++)
        free(s->owned[i]);
    free(s->unlink_path);
    free(s);
}

static void server_handle_closed(varlink_server *s)
{
    s->pending_handles--;
    if (s->stopping && s->pending_handles == 0)
        server_destroy(s);
}

static void listener_close_cb(uv_handle_t *h)
{
    server_handle_closed(h->data);
}

void varlink_server_free(varlink_server *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    if (s->listener_init)
        uv_close((uv_handle_t *)&s->listener, listener_close_cb);
    if (s->kick_init)
        uv_close((uv_handle_t *)&s->kick, listener_close_cb);
    while (s->conns)
        conn_close(s->conns);
    if (s->unlink_path && unlink(s->unlink_path) < 0 && errno != ENOENT)
        log_warn("control socket %s: cannot remove it: %s", s->unlink_path, strerror(errno));
    if (s->pending_handles == 0)
        server_destroy(s);
}

static const vl_iface *find_iface(const varlink_server *s, const char *name, size_t len)
{
    for (size_t i = 0; i < s->n_ifaces; i++)
        if (strlen(s->ifaces[i].name) == len && memcmp(s->ifaces[i].name, name, len) == 0)
            return &s->ifaces[i];
    return NULL;
}

static const vl_method *find_method(const varlink_server *s, const char *name)
{
    for (size_t i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].name, name) == 0)
            return &s->methods[i];
    return NULL;
}

int varlink_server_add_interface(varlink_server *s, const char *name, const char *description)
{
    if (!name || !description || !strchr(name, '.') || strcmp(name, VL_SERVICE) == 0)
        return -EINVAL;
    if (find_iface(s, name, strlen(name)))
        return -EEXIST;
    s->ifaces = xrealloc(s->ifaces, (s->n_ifaces + 1) * sizeof(*s->ifaces));
    s->ifaces[s->n_ifaces++] = (vl_iface){xstrdup(name), xstrdup(description)};
    return 0;
}

int varlink_server_add_method(varlink_server *s, const char *method, unsigned flags,
                              varlink_method_fn fn, void *ud)
{
    const char *dot = method ? strrchr(method, '.') : NULL;
    if (!dot || !dot[1] || !fn)
        return -EINVAL;
    if (!find_iface(s, method, (size_t)(dot - method)))
        return -ENOENT;
    if (find_method(s, method))
        return -EEXIST;
    s->methods = xrealloc(s->methods, (s->n_methods + 1) * sizeof(*s->methods));
    s->methods[s->n_methods++] = (vl_method){xstrdup(method), flags, fn, ud};
    return 0;
}

size_t varlink_server_connections(const varlink_server *s)
{
    return s->n_conns;
}

size_t varlink_server_held(const varlink_server *s)
{
    return s->held;
}

/* ---------------------------------------------------------------- accounting */

/* Counts the input buffer's current capacity in srv->held. */
static void conn_account_in(vl_conn *c)
{
    c->srv->held -= c->in_acct;
    c->in_acct = c->in.cap;
    c->srv->held += c->in_acct;
}

/* The budget a peer may fill: unprivileged peers stop at three quarters so that the operator's
 * calls still find room, as they find a reserve of connections. */
static size_t budget_for(const vl_conn *c)
{
    size_t b = c->srv->o.memory_budget;
    return c->privileged ? b : b / 4 * 3;
}

/* Whether `more` bytes for c fit in the budget. */
static bool budget_allows(const vl_conn *c, size_t more)
{
    size_t b = budget_for(c);
    return c->srv->held <= b && more <= b - c->srv->held;
}

/* One call per connection: the next message is taken only when nothing is in flight. */
static bool conn_idle_for_calls(const vl_conn *c)
{
    return !c->closing && !c->call.open && c->out_bytes == 0;
}

static vl_conn *runq_pop(varlink_server *s)
{
    vl_conn *c = s->runq;
    if (!c)
        return NULL;
    s->runq = c->runq_next;
    if (!s->runq)
        s->runq_tail = NULL;
    c->runq_next = NULL;
    c->queued = false;
    s->runq_len--;
    return c;
}

static void runq_remove(vl_conn *c)
{
    varlink_server *s = c->srv;
    if (!c->queued)
        return;
    vl_conn *prev = NULL;
    for (vl_conn *q = s->runq; q; prev = q, q = q->runq_next) {
        if (q != c)
            continue;
        if (prev)
            prev->runq_next = c->runq_next;
        else
            s->runq = c->runq_next;
        if (s->runq_tail == c)
            s->runq_tail = prev;
        break;
    }
    c->runq_next = NULL;
    c->queued = false;
    s->runq_len--;
}

/* Runs the connections queued before this turn; those they queue again wait for the next. */
static void kick_cb(uv_idle_t *h)
{
    varlink_server *s = h->data;
    s->turn_start_ms = time_mono_ms();
    s->in_runq = true;
    for (size_t n = s->runq_len; n > 0; n--) {
        vl_conn *c = runq_pop(s);
        if (!c)
            break;
        conn_process(c);
    }
    s->in_runq = false;
    if (!s->runq)
        uv_idle_stop(&s->kick);
}

/* Schedules conn_process for the next loop turn (bounded work per turn and connection). */
static void conn_kick(vl_conn *c)
{
    varlink_server *s = c->srv;
    if (c->queued || c->closing)
        return;
    c->queued = true;
    c->runq_next = NULL;
    if (s->runq_tail)
        s->runq_tail->runq_next = c;
    else
        s->runq = c;
    s->runq_tail = c;
    s->runq_len++;
    uv_idle_start(&s->kick, kick_cb);
}

/* ---------------------------------------------------------------- output */

static void write_cb(uv_write_t *req, int status)
{
    vl_write *w = (vl_write *)req;
    vl_conn *c = req->handle->data;
    c->out_bytes -= w->len;
    c->srv->held -= w->len;
    free(w->data);
    free(w);
    if (status < 0) {
        if (!c->closing) {
            log_debug("control connection (pid %d): write failed: %s", (int)c->peer.pid,
                      uv_strerror(status));
            conn_close(c);
        }
        return;
    }
    c->progress = true;
    /* The reply is out: the connection may take its next call. */
    if (c->out_bytes == 0)
        conn_process(c);
}

/* Queues data (malloc'd, len bytes including the NUL; taken), counted until written out. The
 * callers decide what may be queued. */
static int conn_write(vl_conn *c, char *data, size_t len)
{
    if (c->closing) {
        free(data);
        return -EPIPE;
    }
    vl_write *w = xmalloc(sizeof(*w));
    w->data = data;
    w->len = len;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    int r = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, write_cb);
    if (r < 0) {
        free(data);
        free(w);
        conn_close(c);
        return -EPIPE;
    }
    c->out_bytes += len;
    c->srv->held += len;
    return 0;
}

/* Prints msg (deleted) as one frame; *len includes the NUL. */
static char *frame(cJSON *msg, size_t *len)
{
    char *text = json_print(msg);
    cJSON_Delete(msg);
    size_t n = strlen(text);
    text = xrealloc(text, n + 1 + 1);
    text[n] = '\0';
    *len = n + 1;
    return text;
}

/* Prints msg (deleted) as one frame and queues it, unchecked: for small messages only (errors),
 * of which a connection has at most one in flight. */
static int conn_send(vl_conn *c, cJSON *msg)
{
    size_t len;
    char *text = frame(msg, &len);
    return conn_write(c, text, len);
}

static cJSON *error_msg(const char *error, cJSON *params)
{
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "error", error);
    cJSON_AddItemToObject(msg, "parameters", params ? params : cJSON_CreateObject());
    return msg;
}

#define BUSY_REASON "the control server is short of memory for its clients; try again later"

static cJSON *busy_msg_params(void)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "reason", BUSY_REASON);
    return p;
}

static cJSON *busy_msg(const varlink_server *s)
{
    return error_msg(s->o.busy_error, busy_msg_params());
}

static cJSON *too_large_msg(const varlink_server *s, size_t size)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddNumberToObject(p, "size", (double)size);
    cJSON_AddNumberToObject(p, "limit", (double)s->o.max_pending_out);
    return error_msg(s->o.too_large_error, p);
}

/* Best effort, never blocking, never queued: for a connection about to be closed. */
static void send_last(vl_conn *c, cJSON *msg)
{
    size_t len;
    char *text = frame(msg, &len);
    uv_buf_t b = uv_buf_init(text, (unsigned)len);
    (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
    free(text);
}

/* Queues a final reply (frame of len bytes, taken) if the caps allow; else answers with an
 * error instead (or closes the connection when the server has no name for it). */
static int conn_send_final(vl_conn *c, char *text, size_t len)
{
    varlink_server *s = c->srv;
    if (c->closing) {
        free(text);
        return -EPIPE;
    }
    if (c->out_bytes > 0 && c->out_bytes + len > s->o.max_pending_out) {
        /* The end of a stream whose backlog is already at the cap. */
        free(text);
        log_refusal(s, &c->peer,
                    "connection closed: it does not read its replies (%zu bytes "
                    "unsent)",
                    c->out_bytes);
        conn_close(c);
        return -ENOBUFS;
    }
    int r = 0;
    cJSON *instead = NULL;
    if (len > s->o.max_pending_out) {
        log_refusal(s, &c->peer, "reply of %zu bytes refused: the limit is %zu", len,
                    s->o.max_pending_out);
        instead = s->o.too_large_error ? too_large_msg(s, len) : NULL;
        r = -EMSGSIZE;
    } else if (!budget_allows(c, len)) {
        log_refusal(s, &c->peer,
                    "reply of %zu bytes refused: %zu bytes are held for clients, the "
                    "budget is %zu",
                    len, s->held, budget_for(c));
        instead = s->o.busy_error ? busy_msg(s) : NULL;
        r = -EBUSY;
    }
    if (r == 0)
        return conn_write(c, text, len);
    free(text);
    if (!instead) {
        conn_close(c);
        return r;
    }
    conn_send(c, instead);
    return r;
}

static void call_finish(varlink_call *call)
{
    call->open = false;
    call->cancel = NULL;
    call->cancel_ud = NULL;
    free(call->method);
    call->method = NULL;
}

static int call_send_final(varlink_call *call, cJSON *msg)
{
    vl_conn *c = call->conn;
    if (!call->open) {
        cJSON_Delete(msg);
        return -EINVAL;
    }
    bool oneway = call->oneway;
    call_finish(call);
    int r = 0;
    if (oneway) {
        cJSON_Delete(msg);
    } else {
        size_t len;
        char *text = frame(msg, &len);
        r = conn_send_final(c, text, len);
    }
    if (!c->closing) {
        uv_timer_again(&c->idle);
        /* An answer given later (not from inside the handler) unblocks buffered calls. */
        conn_process(c);
    }
    return r;
}

int varlink_call_reply(varlink_call *call, cJSON *params)
{
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddItemToObject(msg, "parameters", params ? params : cJSON_CreateObject());
    return call_send_final(call, msg);
}

int varlink_call_error(varlink_call *call, const char *error, cJSON *params)
{
    return call_send_final(call, error_msg(error, params));
}

/* A stream cannot be answered with an error and go on: any message it cannot take ends the
 * connection (the peer is told why when its socket has room). */
int varlink_call_notify_json(varlink_call *call, const char *params_json)
{
    vl_conn *c = call->conn;
    varlink_server *s = c->srv;
    if (!call->open || c->closing)
        return -EPIPE;
    if (call->oneway)
        return 0;
    strbuf sb = {0};
    strbuf_puts(&sb, "{\"parameters\":");
    strbuf_puts(&sb, params_json);
    strbuf_puts(&sb, ",\"continues\":true}");
    strbuf_putc(&sb, '\0');
    size_t len = sb.len;
    cJSON *last = NULL;
    int r = 0;
    if (c->out_bytes > 0 && c->out_bytes + len > s->o.max_stream_out) {
        log_refusal(s, &c->peer,
                    "streaming connection closed: it does not read (%zu bytes unsent, the limit "
                    "is %zu)",
                    c->out_bytes, s->o.max_stream_out);
        r = -ENOBUFS;
    } else if (len > s->o.max_pending_out) {
        log_refusal(s, &c->peer,
                    "streaming connection closed: a reply of %zu bytes is over the "
                    "limit of %zu",
                    len, s->o.max_pending_out);
        last = s->o.too_large_error ? too_large_msg(s, len) : NULL;
        r = -EMSGSIZE;
    } else if (!budget_allows(c, len)) {
        log_refusal(s, &c->peer,
                    "streaming connection closed: %zu bytes are held for clients, "
                    "the budget is %zu",
                    s->held, budget_for(c));
        last = s->o.busy_error ? busy_msg(s) : NULL;
        r = -EBUSY;
    }
    if (r == 0)
        return conn_write(c, strbuf_steal(&sb), len);
    strbuf_free(&sb);
    if (last)
        send_last(c, last);
    conn_close(c);
    return r;
}

const char *varlink_call_method(const varlink_call *c)
{
    return c->method;
}

bool varlink_call_more(const varlink_call *c)
{
    return c->more;
}

bool varlink_call_oneway(const varlink_call *c)
{
    return c->oneway;
}

const varlink_peer *varlink_call_peer(const varlink_call *c)
{
    return &c->conn->peer;
}

void varlink_call_set_cancel(varlink_call *c, varlink_cancel_fn fn, void *ud)
{
    c->cancel = fn;
    c->cancel_ud = ud;
}

/* ---------------------------------------------------------------- connections */

static void conn_handle_closed(uv_handle_t *h)
{
    vl_conn *c = h->data;
    varlink_server *s = c->srv;
    if (--c->handles == 0) {
        strbuf_free(&c->in);
        conn_account_in(c);
        free(c->peer.groups);
        free(c->call.method);
        free(c);
    }
    server_handle_closed(s);
}

static void conn_close(vl_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    varlink_server *s = c->srv;
    if (c->listed) {
        if (c->prev)
            c->prev->next = c->next;
        else
            s->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        c->listed = false;
        s->n_conns--;
        s->n_privileged -= c->privileged;
    }
    runq_remove(c);
    if (c->call.open) {
        varlink_cancel_fn fn = c->call.cancel;
        void *ud = c->call.cancel_ud;
        call_finish(&c->call);
        if (fn)
            fn(&c->call, ud);
    }
    uv_close((uv_handle_t *)&c->pipe, conn_handle_closed);
    if (c->timer_init)
        uv_close((uv_handle_t *)&c->idle, conn_handle_closed);
}

static void protocol_violation(vl_conn *c, const char *why)
{
    log_debug("control connection (uid %u, pid %d): %s; closing it", (unsigned)c->peer.uid,
              (int)c->peer.pid, why);
    if (c->srv->o.protocol_error) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "reason", why);
        conn_send(c, error_msg(c->srv->o.protocol_error, p));
    }
    conn_close(c);
}

static cJSON *param_obj(const char *key, const char *value)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, key, value);
    return p;
}

static void service_get_info(varlink_call *call)
{
    const varlink_server *s = call->conn->srv;
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "vendor", s->o.vendor);
    cJSON_AddStringToObject(p, "product", s->o.product);
    cJSON_AddStringToObject(p, "version", s->o.version);
    cJSON_AddStringToObject(p, "url", s->o.url);
    cJSON *ifs = cJSON_AddArrayToObject(p, "interfaces");
    cJSON_AddItemToArray(ifs, cJSON_CreateString(VL_SERVICE));
    for (size_t i = 0; i < s->n_ifaces; i++)
        cJSON_AddItemToArray(ifs, cJSON_CreateString(s->ifaces[i].name));
    varlink_call_reply(call, p);
}

static void service_get_description(varlink_call *call, const cJSON *params)
{
    const char *name = json_str(params, "interface");
    if (!name) {
        varlink_call_error(call, VL_SERVICE ".InvalidParameter",
                           param_obj("parameter", "interface"));
        return;
    }
    const char *text = NULL;
    if (strcmp(name, VL_SERVICE) == 0)
        text = varlink_service_description;
    else {
        const vl_iface *i = find_iface(call->conn->srv, name, strlen(name));
        text = i ? i->description : NULL;
    }
    if (!text)
        varlink_call_error(call, VL_SERVICE ".InterfaceNotFound", param_obj("interface", name));
    else
        varlink_call_reply(call, param_obj("description", text));
}

/* Answers calls the server knows cannot be served; true when it did. */
static bool dispatch_refusal(vl_conn *c, const varlink_request *req, const vl_method *m)
{
    varlink_call *call = &c->call;
    if (req->upgrade) {
        varlink_call_error(call, VL_SERVICE ".InvalidParameter", param_obj("parameter", "upgrade"));
        return true;
    }
    if (!m) {
        const char *dot = strrchr(req->method, '.');
        if (!dot || !find_iface(c->srv, req->method, (size_t)(dot - req->method))) {
            char *iface = xstrndup(req->method, dot ? (size_t)(dot - req->method) : 0);
            varlink_call_error(call, VL_SERVICE ".InterfaceNotFound",
                               param_obj("interface", iface));
            free(iface);
        } else {
            varlink_call_error(call, VL_SERVICE ".MethodNotFound",
                               param_obj("method", req->method));
        }
        return true;
    }
    if ((m->flags & VARLINK_METHOD_MORE) && !req->more) {
        varlink_call_error(call, VL_SERVICE ".ExpectedMore", NULL);
        return true;
    }
    return false;
}

static void dispatch(vl_conn *c, const char *buf, size_t len)
{
    varlink_request req;
    const char *why = NULL;
    if (varlink_request_parse(buf, len, &req, &why) < 0) {
        protocol_violation(c, why);
        return;
    }
    if (req.oneway && req.more) {
        varlink_request_clear(&req);
        protocol_violation(c, "\"oneway\" and \"more\" cannot be combined");
        return;
    }
    varlink_call *call = &c->call;
    call->open = true;
    call->more = req.more;
    call->oneway = req.oneway;
    call->method = xstrdup(req.method);
    call->cancel = NULL;
    call->cancel_ud = NULL;

    cJSON *empty = NULL;
    const cJSON *params = req.parameters;
    if (!params)
        params = empty = cJSON_CreateObject();
    if (!budget_allows(c, 0)) {
        /* Refused before any work: an answer would only take more of what is short. */
        log_refusal(c->srv, &c->peer,
                    "%s refused: %zu bytes are held for clients, the budget is %zu", req.method,
                    c->srv->held, budget_for(c));
        if (c->srv->o.busy_error)
            varlink_call_error(call, c->srv->o.busy_error, busy_msg_params());
        else
            conn_close(c);
    } else if (strcmp(req.method, VL_SERVICE ".GetInfo") == 0) {
        service_get_info(call);
    } else if (strcmp(req.method, VL_SERVICE ".GetInterfaceDescription") == 0) {
        service_get_description(call, params);
    } else {
        const vl_method *m = find_method(c->srv, req.method);
        if (!dispatch_refusal(c, &req, m)) {
            m->fn(call, params, m->ud);
            bool streaming = (m->flags & VARLINK_METHOD_MORE) != 0;
            if (call->open && !streaming && !c->closing)
                varlink_call_error(call, VL_SERVICE ".MethodNotImplemented",
                                   param_obj("method", req.method));
        }
    }
    cJSON_Delete(empty);
    varlink_request_clear(&req);
}

static void conn_set_reading(vl_conn *c, bool on)
{
    if (on == c->reading || c->closing)
        return;
    if (on && uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) < 0) {
        conn_close(c);
        return;
    }
    if (!on)
        uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = on;
}

/* Takes the next buffered message when nothing is in flight, then decides whether to read:
 * only when there is no complete message to take (no read-ahead), or during a stream (to
 * notice the peer's hang-up; see the top of the file). Re-entry (an answer given from inside a
 * handler) is a no-op: the outer call finishes the job. */
/* True when the len-byte message is a call of one of the server's quick methods. Only short
 * messages are looked at, so the look costs little whatever a peer sends. */
static bool quick_call(const varlink_server *s, const char *msg, size_t len)
{
    if (!s->o.quick_methods || len > VL_QUICK_MAX)
        return false;
    cJSON *m = cJSON_ParseWithLength(msg, len);
    const char *method = json_str(m, "method");
    bool quick = false;
    for (const char *const *q = s->o.quick_methods; method && *q && !quick; q++)
        quick = strcmp(method, *q) == 0;
    cJSON_Delete(m);
    return quick;
}

static void conn_process(vl_conn *c)
{
    if (c->processing || c->closing)
        return;
    c->processing = true;
    varlink_server *s = c->srv;
    size_t max = s->o.max_message;
    bool complete = false;
    /* An unprivileged call is taken from the run queue only, within the turn's time. */
    bool now = c->privileged ||
               (s->in_runq && !c->queued && time_mono_ms() - s->turn_start_ms < VL_TURN_MS);
    if (!now && !c->queued && conn_idle_for_calls(c) && c->in.len > 0) {
        /* A cheap call (GetInfo) answers at once: a member's status check never waits behind
         * another member's flood of costly calls. */
        size_t look = c->in.len < VL_QUICK_MAX + 1 ? c->in.len : VL_QUICK_MAX + 1;
        char *nul = memchr(c->in.data, '\0', look);
        now = nul && quick_call(s, c->in.data, (size_t)(nul - c->in.data));
    }
    if (conn_idle_for_calls(c) && c->in.len > 0 && now) {
        char *nul = memchr(c->in.data + c->scanned, '\0', c->in.len - c->scanned);
        if (!nul) {
            c->scanned = c->in.len;
        } else if ((size_t)(nul - c->in.data) > max) {
            protocol_violation(c, "message too large");
        } else {
            size_t len = (size_t)(nul - c->in.data);
            dispatch(c, c->in.data, len);
            if (!c->closing) {
                memmove(c->in.data, c->in.data + len + 1, c->in.len - len - 1);
                c->in.len -= len + 1;
                c->in.data[c->in.len] = '\0';
                c->scanned = 0;
            }
        }
    }
    if (!c->closing && c->in.len > 0) {
        char *nul = memchr(c->in.data + c->scanned, '\0', c->in.len - c->scanned);
        complete = nul != NULL;
        if (!nul)
            c->scanned = c->in.len;
    }
    /* Unframed bytes beyond the cap, or too much input queued behind a streaming call. */
    if (!c->closing && c->in.len > max + 1) {
        char why[96];
        snprintf(why, sizeof(why), "message too large (limit %zu bytes)", max);
        protocol_violation(c, why);
    }
    if (!c->closing && c->in.len == 0 && c->in.cap > VL_IN_KEEP) {
        strbuf_free(&c->in);
        c->scanned = 0;
        conn_account_in(c);
    }
    if (!c->closing) {
        bool ready = conn_idle_for_calls(c);
        if (ready && complete)
            conn_kick(c); /* taken from the run queue */
        conn_set_reading(c, ready ? !complete : (c->call.open && c->call.more));
    }
    c->processing = false;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    vl_conn *c = h->data;
    /* One shared buffer: libuv calls read_cb right after alloc_cb, on this thread. */
    *buf = uv_buf_init(c->srv->readbuf, sizeof(c->srv->readbuf));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    vl_conn *c = st->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;
    if (!c->call.open)
        uv_timer_again(&c->idle);
    strbuf_append(&c->in, buf->base, (size_t)nread);
    conn_account_in(c);
    /* A small buffer is let through (each connection has one at most, and the call it holds is
     * then refused with busy_error); a growing one must fit in the budget. */
    if (c->in.cap > VL_IN_KEEP && c->srv->held > budget_for(c)) {
        log_refusal(c->srv, &c->peer,
                    "connection closed: %zu bytes are held for clients, the budget is %zu",
                    c->srv->held, budget_for(c));
        if (c->srv->o.busy_error)
            send_last(c, busy_msg(c->srv));
        conn_close(c);
        return;
    }
    conn_process(c);
}

/* Closes a connection that has no call and sends nothing, and one whose unsent output has not
 * moved for a whole period (a peer that stopped reading, a Watch included). A stream with
 * nothing unsent is not idle. */
static void idle_cb(uv_timer_t *t)
{
    vl_conn *c = t->data;
    if (c->out_bytes > 0) {
        if (c->progress) {
            c->progress = false;
            return;
        }
        log_refusal(c->srv, &c->peer,
                    "connection closed: it has not read its replies for %lld ms (%zu bytes "
                    "unsent)",
                    (long long)c->srv->o.idle_timeout_ms, c->out_bytes);
        conn_close(c);
        return;
    }
    if (c->call.open)
        return;
    log_debug("control connection (uid %u, pid %d) idle; closing it", (unsigned)c->peer.uid,
              (int)c->peer.pid);
    conn_close(c);
}

static int read_peer(int fd, varlink_peer *p)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return -errno;
    p->uid = cred.uid;
    p->gid = cred.gid;
    p->pid = cred.pid;
    size_t n = 32;
    for (;;) {
        gid_t *g = xmalloc(n * sizeof(gid_t));
        socklen_t glen = (socklen_t)(n * sizeof(gid_t));
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &glen) == 0) {
            p->groups = g;
            p->n_groups = glen / sizeof(gid_t);
            return 0;
        }
        int e = errno;
        free(g);
        if (e == ERANGE && glen / sizeof(gid_t) > n && glen / sizeof(gid_t) <= VL_MAX_GROUPS) {
            n = glen / sizeof(gid_t);
            continue;
        }
        /* Without SO_PEERGROUPS the primary group still counts. */
        return e == ENOPROTOOPT ? 0 : -e;
    }
}

/* A flood of refusals must not become a flood of log lines: one line per second per peer
 * uid, with the count of that uid's refusals left out since its last line. */
static void log_refusal(varlink_server *s, const varlink_peer *p, const char *fmt, ...)
{
    size_t quiet = 0;
    if (!varlink_ratelimit_check(&s->refused, p->uid, s->o.now_ms(), VL_REFUSED_LOG_MS, &quiet))
        return;
    char *what;
    va_list ap;
    va_start(ap, fmt);
    what = xvasprintf(fmt, ap);
    va_end(ap);
    if (quiet)
        log_warn("control connection (uid %u, pid %d): %s; %zu more refusals for uid %u since "
                 "the last report",
                 (unsigned)p->uid, (int)p->pid, what, quiet, (unsigned)p->uid);
    else
        log_warn("control connection (uid %u, pid %d): %s", (unsigned)p->uid, (int)p->pid, what);
    free(what);
}

void varlink_call_log_refusal(varlink_call *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *what = xvasprintf(fmt, ap);
    va_end(ap);
    log_refusal(c->conn->srv, &c->conn->peer, "%s", what);
    free(what);
}

static size_t uid_connections(const varlink_server *s, uid_t uid)
{
    size_t n = 0;
    for (const vl_conn *c = s->conns; c; c = c->next)
        n += c->peer.uid == uid;
    return n;
}

static void refuse(vl_conn *c, size_t limit, const char *what)
{
    varlink_server *s = c->srv;
    log_refusal(s, &c->peer, "connection refused: %s (%zu)", what, limit);
    if (s->o.limit_error) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "limit", (double)limit);
        /* Best effort and never blocking: the peer may not even read it. */
        send_last(c, error_msg(s->o.limit_error, p));
    }
    conn_close(c);
}

static bool peer_privileged(const varlink_server *s, const varlink_peer *p)
{
    if (s->o.is_privileged)
        return s->o.is_privileged(p, s->o.is_privileged_ud);
    return p->uid == 0 || p->uid == s->self_uid;
}

/* Unprivileged peers share max_connections (and max_per_uid each); privileged ones may also
 * use the reserve above it, which unprivileged peers therefore never reach. */
static int admit(varlink_server *s, vl_conn *c)
{
    size_t total = s->o.max_connections;
    if (c->privileged) {
        if (s->n_conns >= total + s->o.reserved_connections) {
            refuse(c, total + s->o.reserved_connections, "too many connections");
            return -EMFILE;
        }
    } else if (s->n_conns - s->n_privileged >= total ||
               s->n_conns >= total + s->o.reserved_connections) {
        refuse(c, total, "too many connections");
        return -EMFILE;
    }
    if (!(c->privileged && s->o.privileged_uncapped) &&
        uid_connections(s, c->peer.uid) >= s->o.max_per_uid) {
        refuse(c, s->o.max_per_uid, "too many connections from this uid");
        return -EMFILE;
    }
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    varlink_server *s = server->data;
    if (status < 0) {
        /* E.g. EMFILE under a flood: libuv has already shed the pending connection. */
        int64_t now = s->o.now_ms();
        if (!s->accept_log_ms || now - s->accept_log_ms >= VL_REFUSED_LOG_MS) {
            log_warn("control socket: accept failed: %s", uv_strerror(status));
            s->accept_log_ms = now;
        }
        return;
    }
    vl_conn *c = xcalloc(1, sizeof(*c));
    c->srv = s;
    c->call.conn = c;
    uv_pipe_init(s->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->handles = 1;
    s->pending_handles++;
    uv_os_fd_t fd;
    int r = uv_accept(server, (uv_stream_t *)&c->pipe);
    if (r == 0)
        r = uv_fileno((uv_handle_t *)&c->pipe, &fd);
    if (r == 0)
        r = read_peer(fd, &c->peer);
    if (r < 0) {
        log_warn("control socket: cannot accept a connection: %s", strerror(-r));
        conn_close(c);
        return;
    }
    c->privileged = peer_privileged(s, &c->peer);
    if (admit(s, c) < 0)
        return;
    uv_timer_init(s->loop, &c->idle);
    c->idle.data = c;
    c->timer_init = true;
    c->handles = 2;
    s->pending_handles++;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    c->listed = true;
    s->n_conns++;
    s->n_privileged += c->privileged;
    if (s->o.idle_timeout_ms > 0) {
        uint64_t t = (uint64_t)s->o.idle_timeout_ms;
        uv_timer_start(&c->idle, idle_cb, t, t);
    }
    conn_set_reading(c, true);
}

/* ---------------------------------------------------------------- listening */

/* Every connection is a file descriptor: short of them, accept(2) fails before the caps (and
 * the reserve) are even consulted. Raises the soft limit as far as needed and allowed, and
 * otherwise shrinks the ordinary cap so that the reserve still has descriptors. */
static void fit_fd_limit(varlink_server *s)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t need = (rlim_t)(s->o.max_connections + s->o.reserved_connections + VL_FD_SPARE);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        struct rlimit nl = rl;
        nl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
            rl.rlim_cur = nl.rlim_cur;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return;
    size_t other = s->o.reserved_connections + VL_FD_SPARE;
    size_t room = rl.rlim_cur > other + 1 ? (size_t)rl.rlim_cur - other : 1;
    log_warn("control socket: %llu file descriptors allowed (LimitNOFILE=): at most %zu ordinary "
             "control connections instead of %zu; raise the limit to %llu",
             (unsigned long long)rl.rlim_cur, room, s->o.max_connections, (unsigned long long)need);
    s->o.max_connections = room;
}

int varlink_server_listen_fd(varlink_server *s, int fd)
{
    if (s->listener_init)
        return -EALREADY;
    fit_fd_limit(s);
    uv_pipe_init(s->loop, &s->listener, 0);
    s->listener.data = s;
    s->listener_init = true;
    s->pending_handles++;
    int r = uv_pipe_open(&s->listener, fd);
    if (r < 0) {
        close(fd); /* not taken by the handle */
        return r;
    }
    r = uv_listen((uv_stream_t *)&s->listener, SOMAXCONN, on_connection);
    return r;
}

static int activated_fd(const char *path)
{
    int n = sd_listen_fds(0);
    if (n <= 0)
        return -ENOENT;
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++)
        if (sd_is_socket_unix(fd, SOCK_STREAM, 1, path, 0) > 0)
            return fd;
    if (n == 1 && sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, NULL, 0) > 0)
        return SD_LISTEN_FDS_START;
    return -ENOENT;
}

static int fail_msg(char **err, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_msg(char **err, int r, const char *fmt, ...)
{
    if (err) {
        strbuf sb = {0};
        va_list ap;
        va_start(ap, fmt);
        strbuf_vprintf(&sb, fmt, ap);
        va_end(ap);
        *err = strbuf_steal(&sb);
    }
    return r;
}

static int prepare_dir(const char *path, gid_t gid, char **err)
{
    char *copy = xstrdup(path);
    char *dir = dirname(copy);
    struct stat st;
    int r = 0;
    if (stat(dir, &st) < 0) {
        r = fsutil_mkdir_p(dir, 0750);
        if (r < 0) {
            r = fail_msg(err, r, "control socket %s: cannot create directory %s: %s", path, dir,
                         strerror(-r));
        } else if (chmod(dir, 0750) < 0 || (gid != (gid_t)-1 && chown(dir, (uid_t)-1, gid) < 0)) {
            log_warn("control socket directory %s: cannot set mode 0750 and group %u: %s; group "
                     "members will not reach the socket",
                     dir, (unsigned)gid, strerror(errno));
        }
    }
    free(copy);
    return r;
}

/* -EADDRINUSE when a server answers, 0 when path is free or was a stale socket (removed). */
static int check_existing(const char *path, const struct sockaddr_un *sa, char **err)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT
                   ? 0
                   : fail_msg(err, -errno, "control socket %s: %s", path, strerror(errno));
    if (!S_ISSOCK(st.st_mode))
        return fail_msg(err, -EEXIST,
                        "control socket %s: the path exists and is not a socket; remove it or "
                        "set another [control] socket",
                        path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail_msg(err, -errno, "control socket %s: socket(): %s", path, strerror(errno));
    int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int e = errno;
    close(fd);
    if (r == 0)
        return fail_msg(err, -EADDRINUSE,
                        "control socket %s: another batchd is already running and answering "
                        "there; stop it first (or set another [control] socket)",
                        path);
    if (e != ECONNREFUSED)
        return fail_msg(err, -e, "control socket %s: cannot check the existing socket: %s", path,
                        strerror(e));
    log_notice("control socket %s: replacing a stale socket file", path);
    if (unlink(path) < 0 && errno != ENOENT)
        return fail_msg(err, -errno, "control socket %s: cannot remove the stale socket: %s", path,
                        strerror(errno));
    return 0;
}

int varlink_server_listen(varlink_server *s, const char *path, mode_t mode, gid_t sock_gid,
                          char **err)
{
    if (err)
        *err = NULL;
    int afd = activated_fd(path);
    if (afd >= 0) {
        log_info("control socket %s: using the socket passed by systemd", path);
        int r = varlink_server_listen_fd(s, afd);
        return r < 0 ? fail_msg(err, r, "control socket %s: %s", path, uv_strerror(r)) : 0;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return fail_msg(err, -ENAMETOOLONG,
                        "control socket %s: path longer than %zu bytes; choose a shorter "
                        "[control] socket",
                        path, sizeof(sa.sun_path) - 1);
    strlcpy_bd(sa.sun_path, path, sizeof(sa.sun_path));
    int r = prepare_dir(path, sock_gid, err);
    if (r == 0)
        r = check_existing(path, &sa, err);
    if (r < 0)
        return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return fail_msg(err, -errno, "control socket %s: socket(): %s", path, strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = fail_msg(err, -errno, "control socket %s: cannot bind: %s", path, strerror(errno));
        close(fd);
        return r;
    }
    if (chmod(path, mode) < 0 || (sock_gid != (gid_t)-1 && chown(path, (uid_t)-1, sock_gid) < 0))
        log_warn("control socket %s: cannot set mode %04o group %u: %s; group members may not "
                 "reach it",
                 path, (unsigned)mode, (unsigned)sock_gid, strerror(errno));
    if (listen(fd, SOMAXCONN) < 0) {
        r = fail_msg(err, -errno, "control socket %s: listen(): %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return r;
    }
    r = varlink_server_listen_fd(s, fd);
    if (r < 0) {
        unlink(path);
        return fail_msg(err, r, "control socket %s: %s", path, uv_strerror(r));
    }
    s->unlink_path = xstrdup(path);
    return 0;
}
