/* rules_internal: what rules.c and rules_items.c share and nobody else sees: the checking
 * context (the diag issues go to, JSON path being built, batch_items location) and the typed member
 * accessors that report a missing or mistyped member in one place, with one wording. All of
 * it is defined in rules_ctx.c, so neither checker calls into the other. */
#ifndef BATCHD_RULES_INTERNAL_H
#define BATCHD_RULES_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "batchd/rules.h"
#include "batchd/util.h"

/* Where a check is: the path grows and shrinks as the walk descends (rctx_push_* returns a
 * mark; rctx_pop restores it), so no path is allocated until an issue is reported. */
typedef struct rules_ctx {
    diag *r;
    strbuf path;
    const char *param;
    int page, row, column, item;
    const char *item_type;
    const char *field;
} rules_ctx;

void rctx_init(rules_ctx *c, diag *r, const char *prefix, const char *param);
void rctx_fini(rules_ctx *c);
size_t rctx_push_key(rules_ctx *c, const char *key);
size_t rctx_push_index(rules_ctx *c, size_t index);
void rctx_pop(rules_ctx *c, size_t mark);

/* Reports at the current path, or at path.member when member is not NULL. */
void rctx_issue(rules_ctx *c, rules_kind kind, const char *member, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Case-sensitive member lookup (JSON keys are case-sensitive; cJSON's default is not). */
const cJSON *rget(const cJSON *obj, const char *key);

/* "a string", "a number", "true or false", "null", "an array", "an object". */
const char *rjson_kind(const cJSON *v);
/* A short, escaped rendering of a value for messages ("\"foo\"", "3", "[...]"); free(). */
char *rjson_show(const cJSON *v);
/* rjson_show of a string. */
char *rshow_str(const char *s);
/* True when d is integral and fits in int64_t (JSON Schema counts 2.0 as an integer). */
bool rdouble_is_integer(double d, int64_t *out);
/* True when v is a JSON number with an integral value that fits in int64_t. */
bool rjson_is_integer(const cJSON *v, int64_t *out);
/* Number of Unicode characters of a valid UTF-8 string, or -1 when it is not valid UTF-8. */
long rutf8_chars(const char *s);
/* True for 8-4-4-4-12 hexadecimal (the OpenAPI's format: uuid). */
bool ruuid_valid(const char *s);

/* "path.key is V; it must be WANT" and "path.key is missing; it is required (WANT)". */
void rwrong_type(rules_ctx *c, const char *key, const cJSON *v, const char *want);
void rmissing(rules_ctx *c, const char *key, const char *want);

/* Typed member checks. Each reports a REQUEST issue at path.key when the member is present
 * with the wrong type (or missing, for rreq_*) and returns false; absent optional members
 * return true with *out cleared. */
bool rreq_string(rules_ctx *c, const cJSON *obj, const char *key, const char **out);
bool ropt_string(rules_ctx *c, const cJSON *obj, const char *key, const char **out);
bool ropt_bool(rules_ctx *c, const cJSON *obj, const char *key, const cJSON **out);
/* present is set when the member exists with a valid type. */
bool ropt_integer(rules_ctx *c, const cJSON *obj, const char *key, int64_t *out, bool *present);
bool ropt_number(rules_ctx *c, const cJSON *obj, const char *key, double *out, bool *present);
bool rreq_array(rules_ctx *c, const cJSON *obj, const char *key, const cJSON **out);
bool ropt_array(rules_ctx *c, const cJSON *obj, const char *key, const cJSON **out);
/* An optional string member whose value must be one of the NULL-terminated list. */
bool ropt_enum(rules_ctx *c, const cJSON *obj, const char *key, const char *const *allowed,
               const char **out);
/* "a, b or c" for a NULL-terminated list; free(). */
char *rjoin_or(const char *const *list);
/* True when s is one of the NULL-terminated list. */
bool rin_list(const char *s, const char *const *list);

/* The dataset field types, NULL-terminated. */
extern const char *const rules_field_types[];

/* The schema check and the batch_items walk, with a context the caller owns. */
void rules_schema_walk(rules_ctx *c, const cJSON *schema);
void rules_items_walk(rules_ctx *c, const cJSON *batch_items, const cJSON *schema);

#endif
