/* urlcheck: the one transport rule for every URL batchd sends to, parsed by curl's own URL
 * parser (what is checked is what curl will connect to): https:// anywhere, http:// only to a
 * loopback host (127.0.0.0/8, [::1], ::ffff:127.x.y.z, localhost), never user info. The
 * [api] url (config) and the presigned download URLs (http) are both checked here, so the
 * rule exists once. */
#ifndef BATCHD_URLCHECK_H
#define BATCHD_URLCHECK_H

#include <stdbool.h>

typedef enum url_verdict {
    URL_OK = 0,
    URL_BAD_CHARS,   /* white space or control characters */
    URL_BAD_SCHEME,  /* neither https:// nor http:// */
    URL_NO_HOST,     /* no host */
    URL_INVALID,     /* curl cannot parse it */
    URL_USERINFO,    /* USER@ or USER:PASSWORD@ (or ;options) before the host */
    URL_QUERY,       /* ?query or #fragment, when the caller forbids them */
    URL_HTTP_REMOTE, /* http:// to a host that is not loopback (or with an IPv6 zone) */
    URL_NO_MEMORY,   /* curl could not allocate */
} url_verdict;

enum {
    URL_CHECK_NO_QUERY = 1 << 0, /* a query or fragment is URL_QUERY (a base URL) */
};

/* The verdict on url under the transport rule; flags: URL_CHECK_*. */
url_verdict url_check(const char *url, unsigned flags);
/* A short English reason for a verdict other than URL_OK, for messages. */
const char *url_verdict_text(url_verdict v);

#endif
