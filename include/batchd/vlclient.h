/* vlclient: a small blocking varlink client for batchctl and tests. It owns one connection to a
 * Unix socket, the NUL framing of calls and replies, a bound on the size of one reply, and
 * deadlines on every wait. No event loop: a call waits for its reply (poll with a deadline). */
#ifndef BATCHD_VLCLIENT_H
#define BATCHD_VLCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct vlclient vlclient;

/* One reply. */
typedef struct vlclient_reply {
    cJSON *msg;              /* the whole message; owns the rest */
    const cJSON *parameters; /* object, never NULL after a successful receive */
    const char *error;       /* error name, or NULL for a normal reply */
    bool continues;
} vlclient_reply;

enum {
    VLCLIENT_MORE = 1,
    VLCLIENT_ONEWAY = 2,
};

/* Connects to the socket at path, waiting at most timeout_ms (<0: no limit). 0, or -ENOENT (no
 * socket), -ECONNREFUSED (nobody listening), -EACCES (not allowed to open it), -ETIMEDOUT,
 * -ENAMETOOLONG or another -errno. */
int vlclient_connect(const char *path, int64_t timeout_ms, vlclient **out);
void vlclient_free(vlclient *c);

/* Largest reply accepted (default 64 MiB); a larger one fails the receive with -EMSGSIZE. */
void vlclient_set_max_reply(vlclient *c, size_t max);
/* The socket, for poll() in a caller that also waits for other things. */
int vlclient_fd(const vlclient *c);

/* Sends one call; params may be NULL. flags: VLCLIENT_*. 0 or -errno (-EPIPE when the server
 * has gone). */
int vlclient_send(vlclient *c, const char *method, const cJSON *params, unsigned flags);
/* Receives the next reply within timeout_ms (<0: no limit; 0: only what has already arrived,
 * else -EAGAIN). 0, -ETIMEDOUT, -ECONNRESET (the server closed the connection), -EBADMSG (not
 * a varlink reply), -EMSGSIZE, or -errno. On success clear the reply with vlclient_reply_clear. */
int vlclient_recv(vlclient *c, int64_t timeout_ms, vlclient_reply *out);
/* send + recv. A reply that is an error still returns 0: look at out->error. */
int vlclient_call(vlclient *c, const char *method, const cJSON *params, int64_t timeout_ms,
                  vlclient_reply *out);
void vlclient_reply_clear(vlclient_reply *r);

#endif
