/* simcore_response: what every answer shares: freeing one, a JSON body, and the API's
 * error envelope with the status titles it carries. simcore.c and simcore_hostile.c both
 * answer with these. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/rules.h"
#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

void simcore_response_free(simcore_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
    free(resp->retry_after);
    resp->retry_after = NULL;
    free(resp->echo_header);
    resp->echo_header = NULL;
    simcore_stream_free(resp->stream);
    resp->stream = NULL;
}

void sim_respond_json(simcore_response *resp, int status, cJSON *j)
{
    resp->status = status;
    resp->body = json_print(j);
    resp->content_type = "application/json";
    cJSON_Delete(j);
}

const char *sim_status_title(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Request Entity Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

void simcore_response_error(simcore_response *resp, int status, const char *detail)
{
    /* A whole new answer: nothing of an earlier one (its owned headers) may remain. */
    memset(resp, 0, sizeof *resp);
    sim_respond_json(resp, status, rules_error_envelope(status, sim_status_title(status), detail));
}

/* An S3 error document, as presigned URLs answer. */
void sim_s3_error(simcore_response *resp, int status, const char *code, const char *message)
{
    char rid[17];
    unsigned char b[8];
    random_bytes(b, sizeof b);
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(rid + 2 * i, 3, "%02X", b[i]);
    resp->status = status;
    resp->content_type = "application/xml";
    resp->body = xasprintf("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
                           "<Message>%s</Message><RequestId>%s</RequestId></Error>",
                           code, message, rid);
}
