/* simcore_hostile: the sim's hostile replies, for testing that batchd treats everything
 * the API sends back as untrusted text. An echo reply shows the request's headers (the
 * token among them) the way a debugging proxy or a careless API does, in the encodings
 * such echoes come in; huge, deep and badutf8 replies are error bodies a parser or a
 * store can choke on; oddid answers a create with an id that is not safe in a URL path.
 * The decision (which kind, which variant) is made by simcore_fault_decide, seeded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/rules.h"
#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

/* ---- the hostile ids ---------------------------------------------------------------- */

#define A10  "aaaaaaaaaa"
#define A50  A10 A10 A10 A10 A10
#define A200 A50 A50 A50 A50

/* Each breaks an id's rule (letters, digits, '-' and '_', 1 to 128 characters) in its own
 * way; the ones with '/', '.', '%', '?' and '#' change the meaning of a URL path. */
static const char *const odd_ids[] = {
    "../../etc",
    "a/b",
    "%2e%2e",
    "x?y=1",
    "id#frag",
    A200,
    "",
    "id with spaces",
    "\xc3\xaf"
    "d-\xc3\xbc"
    "n\xc3\xaf"
    "c\xc3\xb8"
    "d\xc3\xa9",
    "12345", /* sent as the JSON number 12345 */
    ".",
    "..",
    "a%2Fb",
    "id\001ctl",
};
#define ODD_NUMBER_INDEX 9

size_t simcore_odd_id_count(void)
{
    return BD_ARRAY_LEN(odd_ids);
}

const char *simcore_odd_id(size_t i, bool *is_number)
{
    if (i >= BD_ARRAY_LEN(odd_ids))
        return NULL;
    if (is_number)
        *is_number = i == ODD_NUMBER_INDEX;
    return odd_ids[i];
}

static cJSON *odd_value(const simcore *sim, const simcore_fault_decision *d)
{
    const simcore_faults *f = &sim->faults;
    if (f->odd_id_mode == SIMCORE_ODD_ID_STRING)
        return cJSON_CreateString(f->odd_id);
    if (f->odd_id_mode == SIMCORE_ODD_ID_NUMBER)
        return cJSON_CreateNumber(f->odd_id_number);
    bool number = false;
    const char *id = simcore_odd_id(d->variant % simcore_odd_id_count(), &number);
    return number ? cJSON_CreateNumber(strtod(id, NULL)) : cJSON_CreateString(id);
}

static void replace_member(cJSON *o, const char *key, cJSON *v)
{
    if (cJSON_GetObjectItemCaseSensitive(o, key))
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
    else
        cJSON_Delete(v);
}

void simcore_hostile_rewrite(const simcore *sim, const simcore_fault_decision *d,
                             simcore_endpoint ep, simcore_response *resp)
{
    if (d->kind != SIMCORE_FAULT_ODDID || resp->status < 200 || resp->status > 299 || !resp->body)
        return;
    cJSON *j = cJSON_Parse(resp->body);
    if (!j)
        return;
    switch (ep) {
    case SIMCORE_EP_CREATE_DATASET:
    case SIMCORE_EP_CREATE_BATCH:
        replace_member(j, "id", odd_value(sim, d));
        break;
    case SIMCORE_EP_UPLOAD_URL:
        replace_member(j, "import_id", odd_value(sim, d));
        break;
    case SIMCORE_EP_SYNC:
        replace_member(j, "sync_id", odd_value(sim, d));
        break;
    case SIMCORE_EP_EXPORT:
        /* A 200 (old behaviour) carries no export_id: replace_member leaves it alone. */
        replace_member(j, "export_id", odd_value(sim, d));
        break;
    case SIMCORE_EP_LIST_BATCHES: {
        cJSON *results = cJSON_GetObjectItemCaseSensitive(j, "results");
        cJSON *b;
        cJSON_ArrayForEach(b, results)
        {
            replace_member(b, "id", odd_value(sim, d));
        }
        break;
    }
    default:
        break;
    }
    free(resp->body);
    resp->body = json_print(j);
    resp->body_len = 0;
    cJSON_Delete(j);
}

/* ---- encodings an echo comes in --------------------------------------------------- */

static void put_pct_all(strbuf *sb, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        strbuf_putc(sb, '%');
        strbuf_putc(sb, hex[*p >> 4]);
        strbuf_putc(sb, hex[*p & 15]);
    }
}

static void put_base64(strbuf *sb, const char *s)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        strbuf_putc(sb, tab[(v >> 18) & 63]);
        strbuf_putc(sb, tab[(v >> 12) & 63]);
        strbuf_putc(sb, i + 1 < n ? tab[(v >> 6) & 63] : '=');
        strbuf_putc(sb, i + 2 < n ? tab[v & 63] : '=');
    }
}

/* A JSON string literal with every character escaped as \uXXXX (bytes of non-ASCII text
 * as Latin-1 code points: header values are ASCII in practice). */
static void put_json_u(strbuf *sb, const char *s)
{
    strbuf_putc(sb, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        strbuf_printf(sb, "\\u%04x", *p);
    strbuf_putc(sb, '"');
}

static const char *authorization_of(const simcore_request *req)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name && strcasecmp(req->headers[i].name, "Authorization") == 0)
            return req->headers[i].value;
    return req->authorization;
}

/* The request line and headers, as a proxy prints them. */
static void put_dump(strbuf *sb, const simcore_request *req)
{
    strbuf_printf(sb, "%s %s HTTP/1.1\n", req->method ? req->method : "?",
                  req->uri ? req->uri : (req->path ? req->path : "?"));
    bool auth_seen = false;
    for (size_t i = 0; i < req->n_headers; i++) {
        const simcore_header *h = &req->headers[i];
        if (!h->name)
            continue;
        auth_seen |= strcasecmp(h->name, "Authorization") == 0;
        strbuf_printf(sb, "%s: %s\n", h->name, h->value ? h->value : "");
    }
    if (!auth_seen && req->authorization)
        strbuf_printf(sb, "Authorization: %s\n", req->authorization);
}

/* ---- the replies ------------------------------------------------------------------ */

static void set_json(simcore_response *resp, cJSON *j)
{
    resp->body = json_print(j);
    resp->content_type = "application/json";
    cJSON_Delete(j);
}

static cJSON *envelope(int status, const char *code, const char *detail)
{
    cJSON *j = rules_error_envelope(status, sim_status_title(status), detail);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (e && code)
        cJSON_ReplaceItemInObjectCaseSensitive(e, "error_code", cJSON_CreateString(code));
    return j;
}

/* A JSON error whose detail lists every header value in one encoding, with "headers"
 * mapping each name to its encoded value. */
static void echo_encoded(const simcore_request *req, int status, bool base64,
                         simcore_response *resp)
{
    strbuf detail;
    strbuf_init(&detail);
    strbuf_printf(&detail, "request echo (%s): ", base64 ? "base64 values" : "percent-encoded");
    cJSON *headers = cJSON_CreateObject();
    bool auth_seen = false;
    for (size_t i = 0; i <= req->n_headers; i++) {
        const char *name, *value;
        if (i < req->n_headers) {
            name = req->headers[i].name;
            value = req->headers[i].value ? req->headers[i].value : "";
            if (!name)
                continue;
            auth_seen |= strcasecmp(name, "Authorization") == 0;
        } else if (!auth_seen && req->authorization) {
            name = "Authorization";
            value = req->authorization;
        } else {
            break;
        }
        strbuf one;
        strbuf_init(&one);
        if (base64)
            put_base64(&one, value);
        else
            put_pct_all(&one, value);
        strbuf_printf(&detail, "%s=%s; ", name, one.data ? one.data : "");
        cJSON_AddStringToObject(headers, name, one.data ? one.data : "");
        strbuf_free(&one);
    }
    cJSON *j = envelope(status, "request_echo", detail.data);
    cJSON_AddItemToObject(cJSON_GetObjectItemCaseSensitive(j, "error"), "headers", headers);
    set_json(resp, j);
    strbuf_free(&detail);
}

static void echo_json_u(const simcore_request *req, int status, simcore_response *resp)
{
    strbuf dump, sb;
    strbuf_init(&dump);
    strbuf_init(&sb);
    put_dump(&dump, req);
    strbuf_printf(&sb,
                  "{\"error\":{\"status\":%d,\"error_code\":\"request_echo\",\"title\":\"%s\","
                  "\"detail\":",
                  status, sim_status_title(status));
    put_json_u(&sb, dump.data ? dump.data : "");
    strbuf_printf(&sb, ",\"headers\":{");
    for (size_t i = 0; i < req->n_headers; i++) {
        if (!req->headers[i].name)
            continue;
        if (i)
            strbuf_putc(&sb, ',');
        put_json_u(&sb, req->headers[i].name);
        strbuf_putc(&sb, ':');
        put_json_u(&sb, req->headers[i].value ? req->headers[i].value : "");
    }
    strbuf_printf(&sb, "}}}");
    resp->body = strbuf_steal(&sb);
    resp->content_type = "application/json";
    strbuf_free(&dump);
}

static void huge(const simcore *sim, int status, simcore_response *resp)
{
    strbuf sb;
    strbuf_init(&sb);
    strbuf_printf(&sb,
                  "{\"error\":{\"status\":%d,\"error_code\":\"huge\",\"title\":\"%s\","
                  "\"detail\":\"",
                  status, sim_status_title(status));
    static const char tail[] = "\"}}";
    static const char fill[] = "batchd-sim huge error body, ";
    size_t want = (size_t)sim->faults.huge_bytes;
    size_t used = sb.len + sizeof tail - 1;
    size_t left = want > used ? want - used : 0;
    while (left) {
        size_t n = left < sizeof fill - 1 ? left : sizeof fill - 1;
        strbuf_append(&sb, fill, n);
        left -= n;
    }
    strbuf_append(&sb, tail, sizeof tail - 1);
    resp->body = strbuf_steal(&sb);
    resp->content_type = "application/json";
}

static void deep(const simcore *sim, int status, simcore_response *resp)
{
    size_t levels = (size_t)sim->faults.deep_levels;
    strbuf sb;
    strbuf_init(&sb);
    strbuf_printf(&sb,
                  "{\"error\":{\"status\":%d,\"error_code\":\"deep\",\"title\":\"%s\","
                  "\"detail\":",
                  status, sim_status_title(status));
    for (size_t i = 0; i < levels; i++)
        strbuf_putc(&sb, '[');
    strbuf_printf(&sb, "\"deep\"");
    for (size_t i = 0; i < levels; i++)
        strbuf_putc(&sb, ']');
    strbuf_printf(&sb, "}}");
    resp->body = strbuf_steal(&sb);
    resp->content_type = "application/json";
}

/* Invalid UTF-8 (a lone continuation byte, overlongs, a surrogate, 0xFE/0xFF, a truncated
 * sequence) and control characters (ESC sequences that recolour or retitle a terminal,
 * BEL, BS, DEL, C1 both encoded and raw), unescaped inside a JSON string. */
static const char BAD_TEXT[] = "lone continuation \x80\xbf, overlong \xc0\xaf and \xe0\x80\xaf, "
                               "surrogate \xed\xa0\x80, bytes \xfe\xff, truncated \xe2\x82, "
                               "ESC \x1b[31mred\x1b[0m \x1b]0;title\x07, C1 \xc2\x9b"
                               " and \x9b, DEL \x7f, BS \x08, CR \r, LF \n";
/* The same as JSON escapes, which a parser turns into the characters themselves. */
static const char BAD_ESCAPES[] = " escaped: \\u001b[2J\\u001b[H NUL a\\u0000b, lone surrogate "
                                  "\\ud800 and \\udfff, C1 \\u009b, BEL \\u0007";

static void badutf8(int status, simcore_response *resp)
{
    strbuf sb;
    strbuf_init(&sb);
    strbuf_printf(&sb,
                  "{\"error\":{\"status\":%d,\"error_code\":\"bad\\u001b[1m\xff\","
                  "\"title\":\"Bad \x1b[31m\xc0\xafRequest\",\"detail\":\"%s%s\","
                  "\"message\":\"%s%s\"},\"message\":\"%s%s\",\"detail\":\"%s\"}",
                  status, BAD_TEXT, BAD_ESCAPES, BAD_TEXT, BAD_ESCAPES, BAD_TEXT, BAD_ESCAPES,
                  BAD_TEXT);
    resp->body = strbuf_steal(&sb);
    resp->content_type = "application/json";
}

static void badutf8_text(simcore_response *resp)
{
    strbuf sb;
    strbuf_init(&sb);
    strbuf_printf(&sb, "batchd-sim badutf8-text: %s", BAD_TEXT);
    strbuf_append(&sb, "\0", 1);
    strbuf_printf(&sb, " after a NUL byte: %s", BAD_TEXT);
    resp->body_len = sb.len;
    resp->body = strbuf_steal(&sb);
    resp->content_type = "text/plain; charset=utf-8";
}

void simcore_hostile_response(const simcore *sim, const simcore_fault_decision *d,
                              const simcore_request *req, simcore_response *resp)
{
    memset(resp, 0, sizeof *resp);
    int status = d->status ? d->status : sim->faults.hostile_status;
    resp->status = status;
    const char *auth = authorization_of(req);
    switch (d->kind) {
    case SIMCORE_FAULT_ECHO_RAW: {
        strbuf sb;
        strbuf_init(&sb);
        strbuf_printf(&sb, "batchd-sim echo-raw: HTTP %d; the request as received:\n", status);
        put_dump(&sb, req);
        resp->body = strbuf_steal(&sb);
        resp->content_type = "text/plain; charset=utf-8";
        break;
    }
    case SIMCORE_FAULT_ECHO_JSON:
        echo_json_u(req, status, resp);
        break;
    case SIMCORE_FAULT_ECHO_PCT:
        echo_encoded(req, status, false, resp);
        break;
    case SIMCORE_FAULT_ECHO_B64:
        echo_encoded(req, status, true, resp);
        break;
    case SIMCORE_FAULT_ECHO_HEADER:
        set_json(resp, envelope(status, "request_echo",
                                "The request's Authorization header is echoed in the "
                                "X-Echo-Authorization response header."));
        resp->echo_header = auth ? xstrdup(auth) : NULL;
        break;
    case SIMCORE_FAULT_ECHO_429: {
        strbuf sb;
        strbuf_init(&sb);
        strbuf_printf(&sb, "Request was throttled (simulated); you sent:\n");
        put_dump(&sb, req);
        set_json(resp, envelope(status, "throttled", sb.data));
        strbuf_free(&sb);
        resp->retry_after =
            xasprintf("%lld; echo=\"%s\"", (long long)sim->faults.retry_after_s, auth ? auth : "");
        resp->echo_header = auth ? xstrdup(auth) : NULL;
        break;
    }
    case SIMCORE_FAULT_HUGE:
        huge(sim, status, resp);
        break;
    case SIMCORE_FAULT_DEEP:
        deep(sim, status, resp);
        break;
    case SIMCORE_FAULT_BADUTF8:
        badutf8(status, resp);
        break;
    case SIMCORE_FAULT_BADUTF8_TEXT:
        badutf8_text(resp);
        break;
    default:
        set_json(resp, envelope(status, NULL, "Simulated hostile reply."));
        break;
    }
}
