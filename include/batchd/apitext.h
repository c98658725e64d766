/* apitext: the one place that turns untrusted text from the API or the network (response
 * bodies, header values such as Retry-After, transport error texts, ids quoted in messages)
 * into text batchd may keep: valid UTF-8 (invalid bytes, overlongs, surrogates and code points
 * above U+10FFFF become U+FFFD), at most APITEXT_MAX bytes (cut on a character boundary and
 * marked as cut), no NUL, DEL or C1 controls (C0 controls stay: every place that keeps the
 * text is JSON, which escapes them), and the API token replaced by "[redacted]" however it was
 * echoed: raw, JSON-escaped (\/, \uXXXX), percent-encoded, in base64 or base64url (any
 * alignment, so also inside "Token <token>"), split over a line break, or in another case when
 * the token is hex.
 *
 * The token comes in as an argument and is never kept here. */
#ifndef BATCHD_APITEXT_H
#define BATCHD_APITEXT_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

/* Longest text kept, in bytes, including the cut mark. */
#define APITEXT_MAX 4096
/* What replaces the token. */
#define APITEXT_REDACTED "[redacted]"
/* Appended to a text that was cut. */
#define APITEXT_CUT "\u2026[cut]"
/* A body is kept as JSON only within these limits; otherwise it is kept as text. */
#define APITEXT_JSON_MAX_INPUT (64u * 1024)
#define APITEXT_JSON_MAX_DEPTH 16
#define APITEXT_JSON_MAX_NODES 4096
/* The printed size of a kept JSON value. */
#define APITEXT_JSON_MAX_OUTPUT (16u * 1024)

/* The cleaned text of s[0..len) (s may hold NUL bytes); secret may be NULL or empty.
 * malloc'd, never NULL. */
char *apitext_clean(const char *s, size_t len, const char *secret);
/* The same for a NUL-terminated string; NULL for NULL. */
char *apitext_clean_str(const char *s, const char *secret);

/* An API body as a value to keep (api_error): the body's JSON with every key and string
 * cleaned, when it parses within the limits above; otherwise the cleaned text of the body as a
 * JSON string. NULL when there is no body. */
cJSON *apitext_body(const char *body, size_t len, const char *secret);
/* A cleaned copy of an already parsed value (within the limits above, otherwise its cleaned
 * printed text as a string). NULL for NULL. */
cJSON *apitext_json(const cJSON *v, const char *secret);

/* base (batchd's own text, already clean) followed by suffix, within APITEXT_MAX: base is
 * cut (on a character boundary, with the cut mark) to leave room for the whole suffix.
 * malloc'd. */
char *apitext_with_suffix(const char *base, const char *suffix);

/* True when the text holds the secret in one of the forms apitext_clean redacts. */
bool apitext_has_secret(const char *s, size_t len, const char *secret);

/* An id the API gave that may go into a URL path: 1 to 128 of letters, digits, '-', '_'. */
#define APITEXT_ID_MAX 128
bool apitext_id_ok(const char *id);

/* For people and logs: cleaned, control characters shown as \xNN, at most max bytes (with
 * the cut mark). malloc'd. */
char *apitext_display(const char *s, size_t max, const char *secret);

#endif
