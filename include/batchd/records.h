/* records: streaming validation of dataset records (JSONL and RFC 4180 CSV) against a
 * schema. Fed in chunks of any size, it holds at most one record (bounded by max_record)
 * in memory, so memory does not grow with the file. Pure: no I/O; the caller reads the
 * file (batchd on libuv's thread pool, batchd-sim on upload) and feeds the bytes. */
#ifndef BATCHD_RECORDS_H
#define BATCHD_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "batchd/util.h"

typedef enum records_format {
    RECORDS_JSONL = 0,
    RECORDS_CSV = 1,
} records_format;

/* Picks the format from a file name's extension (".jsonl" or ".csv", case-insensitive).
 * Returns 0, or -EINVAL for anything else. */
int records_format_from_name(const char *filename, records_format *out);

/* A schema as the validator needs it, built from a DatasetSchema object. */
typedef struct records_schema records_schema;
/* Returns NULL when the object is not a usable schema (run rules_check_schema first). */
records_schema *records_schema_new(const cJSON *schema);
void records_schema_free(records_schema *s);

/* Called once per data record, in order. raw/raw_len is the record's exact bytes without
 * its line terminator (a CSV record may span several lines), so that a caller can write the
 * valid ones to a cleaned file; it is valid only during the call. A record longer than
 * max_record is not kept: it comes with raw "" and raw_len 0 (and an error). record is the
 * record's 0-based index among data records. errors (util.h) are that record's problems
 * (errors->count == 0: valid), at most RECORDS_MAX_ERRORS, the last one then summarising the
 * rest; each has line (1-based, where the record starts; CSV: the header is line 1), field
 * (NULL when the problem is about the whole record; at most RECORDS_FIELD_MAX - 1 bytes) and
 * message (at most RECORDS_MESSAGE_MAX - 1 bytes). errors is valid only during the call; a
 * valid record costs no allocation. A non-zero return stops validation and is returned by
 * feed/finish. */
#define RECORDS_MAX_ERRORS  16
#define RECORDS_FIELD_MAX   132
#define RECORDS_MESSAGE_MAX 200

typedef int (*records_record_cb)(void *ud, const char *raw, size_t raw_len, uint64_t record,
                                 const diag *errors);

typedef struct records_options {
    records_format format;
    const records_schema *schema; /* borrowed; must outlive the validator */
    size_t max_record;            /* longest record accepted, in bytes; 0: 1 MiB */
    records_record_cb on_record;  /* may be NULL */
    void *ud;
} records_options;

typedef struct records_validator records_validator;

typedef struct records_stats {
    uint64_t records; /* data records seen (blank JSONL lines excluded) */
    uint64_t valid;   /* records without problems */
    uint64_t invalid; /* records with at least one problem */
    uint64_t lines;   /* physical lines read */
    uint64_t bytes;   /* bytes fed */
} records_stats;

/* Returns NULL when opts has no schema or an unknown format.
 *
 * Input rules: JSONL is one object per line; lines holding only spaces, tabs or CR are
 * skipped, as are empty lines in CSV. LF or CRLF line ends. A UTF-8 byte-order mark is
 * stripped from the start of a CSV file (Excel writes one) but is a file error at the start
 * of a JSONL file (JSON forbids it; stripping would upload a file the API may refuse). */
records_validator *records_new(const records_options *opts);
void records_free(records_validator *v);
/* Feeds the next chunk (any size, boundaries anywhere). Returns 0, the callback's non-zero
 * value, or -EINVAL after finish. */
int records_feed(records_validator *v, const void *data, size_t len);
/* Ends the input: flushes a last record without a terminator and decides the file-level
 * problems (empty file, unterminated header). Returns 0 or the callback's non-zero value. */
int records_finish(records_validator *v);
void records_get_stats(const records_validator *v, records_stats *out);

/* A problem with the file as a whole, reported at finish (or as soon as it is certain):
 * an empty file, a CSV header that is missing, malformed or names keys outside the
 * schema / misses strict keys, a byte-order mark in JSONL. NULL when none. The string is
 * owned by the validator; line is where it was found (0 for an empty file; may be NULL).
 * After a file error the rest of the input is counted but not validated: no more
 * callbacks. */
const char *records_file_error(const records_validator *v, uint64_t *line);
/* For a CSV header error: the first column name it is about (not in the schema, a
 * duplicate, or missing), as in the file (control characters kept); NULL otherwise. Owned
 * by the validator. */
const char *records_file_error_field(const records_validator *v);

/* The CSV header record exactly as read (without terminator), for writing a cleaned
 * file; NULL for JSONL or before the header was read. */
const char *records_csv_header(const records_validator *v, size_t *len);

#endif
