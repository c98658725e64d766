/* vlclient: blocking varlink calls over a Unix stream socket. The socket is non-blocking and
 * every wait is a poll() with the caller's deadline, so a stuck server never hangs batchctl
 * beyond what the caller asked for. */
#include "batchd/vlclient.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "batchd/util.h"

#define VLC_DEFAULT_MAX (64u * 1024 * 1024)

struct vlclient {
    int fd;
    strbuf in;
    size_t scanned; /* bytes of `in` known to hold no NUL */
    size_t max_reply;
    bool eof;
};

/* Milliseconds left until deadline (-1: none), for poll(). */
static int remaining(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - time_mono_ms();
    if (left <= 0)
        return 0;
    return left > 60000 ? 60000 : (int)left;
}

static int64_t deadline_of(int64_t timeout_ms)
{
    return timeout_ms < 0 ? -1 : time_mono_ms() + timeout_ms;
}

/* Waits for events on fd; 0 when ready, -ETIMEDOUT, or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, remaining(deadline));
        if (r > 0)
            return 0;
        if (r == 0) {
            if (deadline >= 0 && time_mono_ms() >= deadline)
                return -ETIMEDOUT;
            continue;
        }
        if (errno != EINTR)
            return -errno;
    }
}

int vlclient_connect(const char *path, int64_t timeout_ms, vlclient **out)
{
    *out = NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strlcpy_bd(sa.sun_path, path, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int64_t deadline = deadline_of(timeout_ms);
    int r;
    /* A full listen backlog gives EAGAIN on a non-blocking Unix connect: retry until the
     * deadline rather than failing a busy daemon's client at once. */
    while ((r = connect(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 &&
           (errno == EAGAIN || errno == EINTR)) {
        int w = wait_fd(fd, POLLOUT, deadline);
        if (w < 0) {
            close(fd);
            return w;
        }
        if (deadline >= 0 && time_mono_ms() >= deadline) {
            close(fd);
            return -ETIMEDOUT;
        }
    }
    if (r < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    vlclient *c = xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->max_reply = VLC_DEFAULT_MAX;
    *out = c;
    return 0;
}

void vlclient_free(vlclient *c)
{
    if (!c)
        return;
    close(c->fd);
    strbuf_free(&c->in);
    free(c);
}

void vlclient_set_max_reply(vlclient *c, size_t max)
{
    c->max_reply = max ? max : VLC_DEFAULT_MAX;
}

int vlclient_fd(const vlclient *c)
{
    return c->fd;
}

static int write_all(vlclient *c, const char *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(c->fd, buf + done, len - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            int r = wait_fd(c->fd, POLLOUT, deadline_of(30000));
            if (r < 0)
                return r;
            continue;
        }
        return n < 0 ? -errno : -EPIPE;
    }
    return 0;
}

int vlclient_send(vlclient *c, const char *method, const cJSON *params, unsigned flags)
{
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "method", method);
    if (params)
        cJSON_AddItemToObject(msg, "parameters", cJSON_Duplicate(params, 1));
    if (flags & VLCLIENT_MORE)
        cJSON_AddTrueToObject(msg, "more");
    if (flags & VLCLIENT_ONEWAY)
        cJSON_AddTrueToObject(msg, "oneway");
    char *text = json_print(msg);
    cJSON_Delete(msg);
    int r = write_all(c, text, strlen(text) + 1); /* with the NUL */
    free(text);
    return r;
}

/* Takes one framed message out of the buffer, if there is one. */
static int take_message(vlclient *c, vlclient_reply *out, bool *got)
{
    *got = false;
    char *nul = c->in.len > c->scanned
                    ? memchr(c->in.data + c->scanned, '\0', c->in.len - c->scanned)
                    : NULL;
    if (!nul) {
        c->scanned = c->in.len;
        return c->in.len > c->max_reply ? -EMSGSIZE : 0;
    }
    size_t len = (size_t)(nul - c->in.data);
    if (len > c->max_reply)
        return -EMSGSIZE;
    cJSON *msg = utf8_valid(c->in.data, len)
                     ? cJSON_ParseWithLengthOpts(c->in.data, len + 1, NULL, true)
                     : NULL;
    memmove(c->in.data, nul + 1, c->in.len - len - 1);
    c->in.len -= len + 1;
    c->in.data[c->in.len] = '\0';
    c->scanned = 0;
    if (!cJSON_IsObject(msg)) {
        cJSON_Delete(msg);
        return -EBADMSG;
    }
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "parameters");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(msg, "error");
    if (!params || cJSON_IsNull(params)) {
        cJSON_DeleteItemFromObjectCaseSensitive(msg, "parameters");
        params = cJSON_AddObjectToObject(msg, "parameters");
    }
    if (!cJSON_IsObject(params) || (error && !cJSON_IsString(error))) {
        cJSON_Delete(msg);
        return -EBADMSG;
    }
    out->msg = msg;
    out->parameters = params;
    out->error = error ? error->valuestring : NULL;
    out->continues = json_bool(msg, "continues", false);
    *got = true;
    return 0;
}

static int fill(vlclient *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            strbuf_append(&c->in, buf, (size_t)n);
            if ((size_t)n < sizeof(buf))
                return 0;
            continue;
        }
        if (n == 0) {
            c->eof = true;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        return errno == ECONNRESET ? (c->eof = true, 0) : -errno;
    }
}

int vlclient_recv(vlclient *c, int64_t timeout_ms, vlclient_reply *out)
{
    memset(out, 0, sizeof(*out));
    int64_t deadline = deadline_of(timeout_ms);
    for (;;) {
        bool got = false;
        int r = take_message(c, out, &got);
        if (r < 0 || got)
            return r;
        if (c->eof)
            return -ECONNRESET;
        if (timeout_ms != 0) {
            r = wait_fd(c->fd, POLLIN, deadline);
            if (r < 0)
                return r;
        }
        size_t before = c->in.len;
        r = fill(c);
        if (r < 0)
            return r;
        if (timeout_ms == 0 && c->in.len == before && !c->eof) {
            r = take_message(c, out, &got);
            return r < 0 ? r : (got ? 0 : -EAGAIN);
        }
    }
}

int vlclient_call(vlclient *c, const char *method, const cJSON *params, int64_t timeout_ms,
                  vlclient_reply *out)
{
    memset(out, 0, sizeof(*out));
    int r = vlclient_send(c, method, params, 0);
    /* A server that refuses the connection (too many) writes its error and hangs up before
     * reading: that error is still the answer. */
    if (r < 0 && r != -EPIPE && r != -ECONNRESET)
        return r;
    int rr = vlclient_recv(c, timeout_ms, out);
    if (rr == -ECONNRESET && r < 0)
        return r;
    return rr;
}

void vlclient_reply_clear(vlclient_reply *r)
{
    if (!r)
        return;
    cJSON_Delete(r->msg);
    memset(r, 0, sizeof(*r));
}
