/* csv: splits one CSV record (RFC 4180) into its fields. The one field splitter of the
 * project: the records validator (src/lib/records.c) splits headers and rows with it, and
 * batchd-sim finds a row's task group column with it (src/sim/simcore_upload.c). Pure, no
 * allocation except in the caller's strbuf.
 *
 * A record is given without its line terminator. The splitter expects a well-formed record
 * (records.c finds malformed ones while it reads the bytes, and splits only those it
 * accepted); on any other input it still stays within the record and ends:
 * - a quote inside an unquoted field is data (ab"c is the field ab"c);
 * - a quoted field whose closing quote is missing runs to the end of the record;
 * - text after a closing quote ends the record: "ab"cd,e is one field, ab;
 * - a CR is data everywhere (line ends are the reader's business). */
#ifndef BATCHD_CSV_H
#define BATCHD_CSV_H

#include <stdbool.h>
#include <stddef.h>

#include "batchd/util.h"

/* An iterator over the fields of one record; the record must outlive it. */
typedef struct csv_fields {
    const char *s;
    size_t n, pos;
    bool done;
} csv_fields;

void csv_fields_init(csv_fields *it, const char *rec, size_t len);
/* The next field, or false after the last one. A record has at least one field (an empty
 * record is one empty field), and a trailing comma adds an empty one. *field and *len are
 * the bytes inside the quotes for a quoted field (*quoted true; a doubled quote is still
 * doubled: see csv_unquote), else the bytes up to the next comma. They point into the
 * record: no copy. */
bool csv_fields_next(csv_fields *it, const char **field, size_t *len, bool *quoted);
/* Replaces out's contents with the value of a quoted field's bytes: "" becomes ". */
void csv_unquote(const char *f, size_t len, strbuf *out);

/* Replaces out's contents with the value of field col (0-based) of the record, unquoted.
 * Returns 0, or -ENOENT when the record has fewer fields. */
int csv_field(const char *rec, size_t len, size_t col, strbuf *out);
/* The index of the first column of a header record whose value is name, or -1. */
long csv_column(const char *header, size_t len, const char *name);

#endif
