/* urlcheck: see include/batchd/urlcheck.h. */
#include "batchd/urlcheck.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

/* A host as curl parsed it (numeric IPv4 forms such as 127.1 or 0x7f.1 and percent-encoding
 * already normalised to dotted quads, IPv6 in brackets) is loopback: 127.0.0.0/8, ::1 (also
 * as ::ffff:127.x.y.z) or the name localhost (with or without its trailing dot). Anything
 * else, e.g. localhost.evil.com, would be resolved through DNS and is not. */
static bool host_is_loopback(const char *host)
{
    if (!strcasecmp(host, "localhost") || !strcasecmp(host, "localhost."))
        return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    size_t len = strlen(host);
    char buf[INET6_ADDRSTRLEN + 2];
    if (len < 3 || len >= sizeof buf || host[0] != '[' || host[len - 1] != ']')
        return false;
    memcpy(buf, host + 1, len - 2);
    buf[len - 2] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, buf, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

/* Reads one part of a parsed URL; NULL when it is absent. */
static char *url_part(CURLU *u, CURLUPart part)
{
    char *v = NULL;
    if (curl_url_get(u, part, &v, 0) != CURLUE_OK)
        return NULL;
    return v;
}

typedef struct url_parts {
    char *scheme, *host, *user, *password, *options, *query, *fragment, *zone;
} url_parts;

static void parts_free(url_parts *p)
{
    curl_free(p->scheme);
    curl_free(p->host);
    curl_free(p->user);
    curl_free(p->password);
    curl_free(p->options);
    curl_free(p->query);
    curl_free(p->fragment);
    curl_free(p->zone);
}

static url_verdict judge(const url_parts *p, unsigned flags)
{
    /* User info would be logged with the URL and sent as Basic credentials. */
    if (p->user || p->password || p->options)
        return URL_USERINFO;
    if (!p->host || !*p->host)
        return URL_NO_HOST;
    if ((flags & URL_CHECK_NO_QUERY) && (p->query || p->fragment))
        return URL_QUERY;
    if (!p->scheme || (strcmp(p->scheme, "https") != 0 && strcmp(p->scheme, "http") != 0))
        return URL_BAD_SCHEME;
    /* Clear text only where it never crosses a network. */
    if (strcmp(p->scheme, "http") == 0 && (p->zone || !host_is_loopback(p->host)))
        return URL_HTTP_REMOTE;
    return URL_OK;
}

url_verdict url_check(const char *url, unsigned flags)
{
    if (!url)
        return URL_INVALID;
    for (const char *c = url; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            return URL_BAD_CHARS;
    if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0)
        return URL_BAD_SCHEME;
    CURLU *u = curl_url();
    if (!u)
        return URL_NO_MEMORY;
    url_verdict v;
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc == CURLUE_NO_HOST) {
        v = URL_NO_HOST;
    } else if (rc != CURLUE_OK) {
        v = URL_INVALID;
    } else {
        url_parts p = {
            .scheme = url_part(u, CURLUPART_SCHEME),
            .host = url_part(u, CURLUPART_HOST),
            .user = url_part(u, CURLUPART_USER),
            .password = url_part(u, CURLUPART_PASSWORD),
            .options = url_part(u, CURLUPART_OPTIONS),
            .query = url_part(u, CURLUPART_QUERY),
            .fragment = url_part(u, CURLUPART_FRAGMENT),
            .zone = url_part(u, CURLUPART_ZONEID),
        };
        v = judge(&p, flags);
        parts_free(&p);
    }
    curl_url_cleanup(u);
    return v;
}

const char *url_verdict_text(url_verdict v)
{
    switch (v) {
    case URL_OK:
        return "ok";
    case URL_BAD_CHARS:
        return "contains white space or control characters";
    case URL_BAD_SCHEME:
        return "is neither https:// nor http://";
    case URL_NO_HOST:
        return "has no host";
    case URL_INVALID:
        return "is not a valid URL";
    case URL_USERINFO:
        return "has user info before the host";
    case URL_QUERY:
        return "has a query or fragment";
    case URL_HTTP_REMOTE:
        return "uses http:// to a host that is not loopback (https:// is required)";
    case URL_NO_MEMORY:
        break;
    }
    return "cannot be parsed (out of memory)";
}
