/* csv: the field splitter (see include/batchd/csv.h). */
#include <errno.h>
#include <string.h>

#include "batchd/csv.h"
#include "batchd/util.h"

void csv_fields_init(csv_fields *it, const char *rec, size_t len)
{
    *it = (csv_fields){.s = rec, .n = len};
}

bool csv_fields_next(csv_fields *it, const char **field, size_t *len, bool *quoted)
{
    if (it->done)
        return false;
    const char *s = it->s;
    if (it->pos < it->n && s[it->pos] == '"') {
        size_t i = it->pos + 1;
        while (i < it->n) {
            if (s[i] == '"') {
                if (i + 1 < it->n && s[i + 1] == '"') {
                    i += 2;
                    continue;
                }
                break;
            }
            i++;
        }
        *field = s + it->pos + 1;
        *len = i - it->pos - 1;
        *quoted = true;
        it->pos = i < it->n ? i + 1 : i;
    } else {
        const char *comma = memchr(s + it->pos, ',', it->n - it->pos);
        size_t end = comma ? (size_t)(comma - s) : it->n;
        *field = s + it->pos;
        *len = end - it->pos;
        *quoted = false;
        it->pos = end;
    }
    /* Only a comma goes on to another field: after a closing quote, anything else ends the
     * record (see the header). */
    if (it->pos < it->n && s[it->pos] == ',')
        it->pos++;
    else
        it->done = true;
    return true;
}

void csv_unquote(const char *f, size_t len, strbuf *out)
{
    strbuf_reset(out);
    strbuf_append(out, "", 0); /* out->data is a string even for an empty value */
    for (size_t i = 0; i < len; i++) {
        strbuf_putc(out, f[i]);
        if (f[i] == '"' && i + 1 < len && f[i + 1] == '"')
            i++;
    }
}

int csv_field(const char *rec, size_t len, size_t col, strbuf *out)
{
    csv_fields it;
    csv_fields_init(&it, rec, len);
    const char *f;
    size_t flen;
    bool quoted;
    for (size_t i = 0; csv_fields_next(&it, &f, &flen, &quoted); i++) {
        if (i != col)
            continue;
        if (quoted) {
            csv_unquote(f, flen, out);
        } else {
            strbuf_reset(out);
            strbuf_append(out, f, flen);
        }
        return 0;
    }
    return -ENOENT;
}

long csv_column(const char *header, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    strbuf v;
    strbuf_init(&v);
    long found = -1;
    for (size_t col = 0; found < 0 && csv_field(header, len, col, &v) == 0; col++)
        if (v.len == nlen && memcmp(v.data, name, nlen) == 0)
            found = (long)col;
    strbuf_free(&v);
    return found;
}
