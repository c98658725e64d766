/* records internals shared by records.c and records_json.c (and the unit tests): a strict,
 * allocation-free JSON checker for one JSONL record, and the byte-level UTF-8 scan.
 * Our own parser rather than cJSON because it must never recurse on hostile input, must
 * report where a line is broken, and must not touch cJSON's global error state from the
 * thread pool. */
#ifndef BATCHD_RECORDS_INTERNAL_H
#define BATCHD_RECORDS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "batchd/util.h"

/* Deepest nesting accepted inside one member value. Values of schema fields must be
 * strings anyway; this only bounds what an unknown key may hold. */
#define RJ_MAX_DEPTH 64

typedef enum rj_type {
    RJ_STRING = 0,
    RJ_NUMBER,
    RJ_OBJECT,
    RJ_ARRAY,
    RJ_TRUE,
    RJ_FALSE,
    RJ_NULL,
} rj_type;

/* A syntax problem: pos is the 0-based byte offset in the record. */
typedef struct rj_error {
    size_t pos;
    char msg[160];
} rj_error;

/* One member of the top-level object. key is decoded (escapes resolved); val/val_len is
 * the string's content between its quotes, still escaped when val_escaped (decode with
 * rj_decode_string), and NULL for other types. */
typedef void (*rj_member_fn)(void *ud, const char *key, size_t key_len, rj_type type,
                             const char *val, size_t val_len, bool val_escaped);

/* Checks that s/len is exactly one JSON object (RFC 8259, surrounding whitespace allowed)
 * and calls fn for each member in order. Strings must not contain raw control characters
 * or escaped NUL / lone surrogates. The caller has checked UTF-8 already. key_buf is
 * scratch space for decoding escaped keys. Returns 0, or -EINVAL with *err filled; members
 * seen before a syntax error have already been passed to fn. */
int rj_parse_object(const char *s, size_t len, strbuf *key_buf, rj_member_fn fn, void *ud,
                    rj_error *err);

/* Decodes a validated string body (between the quotes) into out (reset first). */
void rj_decode_string(const char *s, size_t len, strbuf *out);

/* Human name of a JSON type: "a number", "an object", ... */
const char *rj_type_name(rj_type t);

/* Finds the first NUL byte or invalid UTF-8 sequence in s. Returns true when there is
 * none; otherwise false with *bad_off at the offending byte and *is_nul telling which. */
bool rj_utf8_scan(const char *s, size_t len, size_t *bad_off, bool *is_nul);

/* Bytes allocated for the current record's buffer: tests check that it stays within
 * max_record + 1 whatever the input. */
typedef struct records_validator records_validator;
size_t records_buffer_capacity(const records_validator *v);

#endif
