/* simcore_zip: an export's ZIP, made on the fly from a snapshot of the batch so that a
 * download of any size (see export_pad) keeps memory flat. Two entries, stored (no
 * compression), in the layout the API documents (api-2 §4.5): responses-by-task.jsonl and
 * responses-by-submission.jsonl, with made-up responses that depend only on the snapshot,
 * so two exports of one batch are the same bytes. The record shapes are not documented
 * (api-2 §11 item 4); the responses inside are the documented TaskResponse (api-2 §5).
 * A first pass over the bytes gives each entry's CRC-32 and size for its local header; the
 * second pass is the download. No ZIP64: a ZIP of 4 GiB or more is refused. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchd/util.h"
#include "simcore.h"
#include "simcore_internal.h"

#define N_ENTRIES 2
#define CHUNK     65536

typedef struct zip_instr {
    char *id;
    char *type;
    char **values; /* multiple choice option values */
    size_t n_values;
} zip_instr;

/* Yields one entry's bytes, record by record: the record's JSON (without its closing
 * brace when padded), then the padding, then the end of the record. */
typedef struct producer {
    int entry;
    uint64_t rec, n_rec;
    int phase; /* 0: make the next record, 1: its text, 2: padding, 3: its end */
    strbuf buf;
    size_t off;
    int64_t pad_left;
} producer;

typedef struct zip_entry {
    const char *name;
    uint32_t crc;
    uint64_t size, lfh_off;
} zip_entry;

struct simcore_stream {
    char batch_id[37];
    uint64_t seed;
    int64_t base_ms;
    uint64_t tasks, groups;
    int64_t tpg;
    int64_t pad;
    zip_instr *instr;
    size_t n_instr;
    zip_entry ent[N_ENTRIES];
    uint64_t total;
    bool prepared;
    uint32_t table[256];
    /* The reading cursor: section 2k is entry k's local header, 2k+1 its data, the last
     * the central directory and its end record. */
    uint64_t pos;
    int section;
    strbuf hdr;
    size_t hdr_off;
    producer prod;
};

static void crc_table(uint32_t t[256])
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
        t[n] = c;
    }
}

static uint32_t crc_update(const uint32_t t[256], uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t simcore_crc32(uint32_t crc, const void *data, size_t len)
{
    uint32_t t[256];
    crc_table(t);
    return crc_update(t, crc, data, len);
}

/* ---- the made-up content ------------------------------------------------------- */

static uint64_t mix(uint64_t seed, uint64_t kind, uint64_t a, uint64_t b)
{
    uint64_t z = seed ^ (kind * 0x9e3779b97f4a7c15ULL) ^ (a * 0xbf58476d1ce4e5b9ULL) ^
                 (b * 0x94d049bb133111ebULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A UUID (version 4 form) or, with hex24, a 24-hex Prolific id, from kind and indexes. */
static void make_id(const simcore_stream *s, uint64_t kind, uint64_t a, uint64_t b, bool hex24,
                    char out[37])
{
    uint64_t x = mix(s->seed, kind, a, b), y = mix(s->seed, kind + 100, a, b);
    if (hex24) {
        snprintf(out, 37, "%016llx%08llx", (unsigned long long)x,
                 (unsigned long long)(y & 0xffffffffULL));
        return;
    }
    snprintf(out, 37, "%08llx-%04llx-4%03llx-8%03llx-%012llx", (unsigned long long)(x >> 32),
             (unsigned long long)((x >> 16) & 0xffff), (unsigned long long)(x & 0xfff),
             (unsigned long long)(y >> 52), (unsigned long long)(y & 0xffffffffffffULL));
}

enum { ID_TASK = 1, ID_GROUP, ID_PARTICIPANT, ID_SUBMISSION, ID_RESPONSE, ID_CHOICE };

static uint64_t n_submissions(const simcore_stream *s)
{
    if (s->tpg > 0)
        return (s->tasks + (uint64_t)s->tpg - 1) / (uint64_t)s->tpg;
    return s->groups < s->tasks ? s->groups : s->tasks;
}

/* Task i's group: fixed-size groups are consecutive; with predetermined grouping the sim
 * does not keep which datapoint had which key, so tasks are dealt round-robin. */
static uint64_t group_of(const simcore_stream *s, uint64_t i)
{
    if (s->tpg > 0)
        return i / (uint64_t)s->tpg;
    uint64_t n = n_submissions(s);
    return n ? i % n : 0;
}

static cJSON *make_answer(const simcore_stream *s, const zip_instr *in, uint64_t i, size_t k)
{
    cJSON *a = cJSON_CreateArray();
    cJSON *o = cJSON_CreateObject();
    uint64_t h = mix(s->seed, ID_CHOICE, i, k);
    const char *choice = in->n_values ? in->values[h % in->n_values] : "a";
    if (strcmp(in->type, "file_upload") == 0) {
        char *name = xasprintf("upload-%llu-%zu.txt", (unsigned long long)i, k);
        cJSON_AddStringToObject(o, "file_key", name);
        cJSON_AddStringToObject(o, "file_name", name);
        cJSON_AddNumberToObject(o, "file_size_mb", 0.01);
        cJSON_AddStringToObject(o, "content_type", "text/plain");
        free(name);
    } else if (strncmp(in->type, "multiple_choice", 15) == 0) {
        cJSON_AddStringToObject(o, "value", choice);
        if (strcmp(in->type, "multiple_choice_with_free_text") == 0)
            cJSON_AddStringToObject(o, "explanation", "made up by batchd-sim");
    } else {
        char *v = xasprintf("answer %llu.%zu (made up by batchd-sim)", (unsigned long long)i, k);
        cJSON_AddStringToObject(o, "value", v);
        free(v);
        if (strcmp(in->type, "free_text_with_unit") == 0)
            cJSON_AddStringToObject(o, "unit", "units");
    }
    cJSON_AddItemToArray(a, o);
    return a;
}

/* The responses to task i, one per instruction, as GET …/responses gives them. */
static void add_responses(const simcore_stream *s, uint64_t i, cJSON *arr)
{
    uint64_t g = group_of(s, i);
    char id[37], part[37], sub[37], task[37];
    make_id(s, ID_PARTICIPANT, g, 0, true, part);
    make_id(s, ID_SUBMISSION, g, 0, true, sub);
    make_id(s, ID_TASK, i, 0, false, task);
    for (size_t k = 0; k < s->n_instr; k++) {
        cJSON *r = cJSON_CreateObject();
        make_id(s, ID_RESPONSE, i, k, false, id);
        cJSON_AddStringToObject(r, "id", id);
        sim_add_time(r, "created_at", s->base_ms + (int64_t)g * 60000 + (int64_t)k * 1000);
        cJSON_AddStringToObject(r, "batch_id", s->batch_id);
        cJSON_AddStringToObject(r, "participant_id", part);
        cJSON_AddStringToObject(r, "submission_id", sub);
        cJSON_AddStringToObject(r, "task_id", task);
        cJSON *resp = cJSON_AddObjectToObject(r, "response");
        cJSON_AddStringToObject(resp, "instruction_id", s->instr[k].id);
        cJSON_AddStringToObject(resp, "type", s->instr[k].type);
        cJSON_AddItemToObject(resp, "answer", make_answer(s, &s->instr[k], i, k));
        cJSON_AddNumberToObject(r, "schema_version", 4);
        cJSON_AddItemToArray(arr, r);
    }
}

static cJSON *task_record(const simcore_stream *s, uint64_t i)
{
    char id[37];
    cJSON *j = cJSON_CreateObject();
    make_id(s, ID_TASK, i, 0, false, id);
    cJSON_AddStringToObject(j, "task_id", id);
    make_id(s, ID_GROUP, group_of(s, i), 0, false, id);
    cJSON_AddStringToObject(j, "task_group_id", id);
    cJSON_AddStringToObject(j, "batch_id", s->batch_id);
    add_responses(s, i, cJSON_AddArrayToObject(j, "responses"));
    return j;
}

static cJSON *submission_record(const simcore_stream *s, uint64_t g)
{
    char id[37];
    cJSON *j = cJSON_CreateObject();
    make_id(s, ID_SUBMISSION, g, 0, true, id);
    cJSON_AddStringToObject(j, "submission_id", id);
    make_id(s, ID_PARTICIPANT, g, 0, true, id);
    cJSON_AddStringToObject(j, "participant_id", id);
    cJSON_AddStringToObject(j, "batch_id", s->batch_id);
    make_id(s, ID_GROUP, g, 0, false, id);
    cJSON_AddStringToObject(j, "task_group_id", id);
    cJSON *arr = cJSON_AddArrayToObject(j, "responses");
    uint64_t n = n_submissions(s);
    if (s->tpg > 0) {
        uint64_t end = (g + 1) * (uint64_t)s->tpg;
        for (uint64_t i = g * (uint64_t)s->tpg; i < end && i < s->tasks; i++)
            add_responses(s, i, arr);
    } else {
        for (uint64_t i = g; n && i < s->tasks; i += n)
            add_responses(s, i, arr);
    }
    return j;
}

/* ---- producing one entry -------------------------------------------------------- */

static void producer_start(const simcore_stream *s, producer *p, int entry)
{
    strbuf_free(&p->buf);
    *p = (producer){.entry = entry, .n_rec = entry == 0 ? s->tasks : n_submissions(s)};
}

static void producer_record(const simcore_stream *s, producer *p)
{
    cJSON *j = p->entry == 0 ? task_record(s, p->rec) : submission_record(s, p->rec);
    char *text = json_print(j);
    cJSON_Delete(j);
    size_t n = strlen(text);
    strbuf_reset(&p->buf);
    if (s->pad > 0) {
        /* The padding is the record's last member, "padding": "xxx…", streamed. */
        strbuf_append(&p->buf, text, n - 1);
        strbuf_puts(&p->buf, ",\"padding\":\"");
    } else {
        strbuf_append(&p->buf, text, n);
        strbuf_putc(&p->buf, '\n');
    }
    free(text);
    p->off = 0;
    p->pad_left = s->pad;
    p->rec++;
    p->phase = 1;
}

/* Copies up to max bytes of the entry; 0 when it is done. */
static size_t producer_read(const simcore_stream *s, producer *p, char *out, size_t max)
{
    static const char tail[] = "\"}\n";
    size_t n = 0;
    while (n < max) {
        if (p->phase == 0) {
            if (p->rec >= p->n_rec)
                break;
            producer_record(s, p);
        }
        size_t want = max - n;
        if (p->phase == 1 || p->phase == 3) {
            const char *src = p->phase == 1 ? p->buf.data : tail;
            size_t len = p->phase == 1 ? p->buf.len : sizeof tail - 1;
            size_t take = len - p->off < want ? len - p->off : want;
            memcpy(out + n, src + p->off, take);
            n += take;
            p->off += take;
            if (p->off == len) {
                p->off = 0;
                p->phase = p->phase == 1 && s->pad > 0 ? 2 : 0;
            }
        } else {
            size_t take = (uint64_t)p->pad_left < want ? (size_t)p->pad_left : want;
            memset(out + n, 'x', take);
            n += take;
            p->pad_left -= (int64_t)take;
            if (p->pad_left == 0)
                p->phase = 3;
        }
    }
    return n;
}

/* ---- the ZIP structure ------------------------------------------------------------ */

static void put16(strbuf *b, unsigned v)
{
    unsigned char x[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    strbuf_append(b, x, 2);
}

static void put32(strbuf *b, uint64_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    strbuf_append(b, x, 4);
}

/* The DOS time and date of base_ms (UTC). */
static void dos_time(int64_t ms, unsigned *t, unsigned *d)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    int year = tm.tm_year + 1900 < 1980 ? 1980 : tm.tm_year + 1900;
    *t = (unsigned)(tm.tm_hour << 11 | tm.tm_min << 5 | tm.tm_sec / 2);
    *d = (unsigned)((year - 1980) << 9 | (tm.tm_mon + 1) << 5 | tm.tm_mday);
}

/* The fields local and central headers share, from "version needed" to the name length. */
static void common_fields(const simcore_stream *s, const zip_entry *e, strbuf *b)
{
    unsigned t, d;
    dos_time(s->base_ms, &t, &d);
    put16(b, 20); /* version needed: 2.0 */
    put16(b, 0);  /* flags */
    put16(b, 0);  /* stored */
    put16(b, t);
    put16(b, d);
    put32(b, e->crc);
    put32(b, e->size);
    put32(b, e->size);
    put16(b, (unsigned)strlen(e->name));
}

static void local_header(const simcore_stream *s, int k, strbuf *b)
{
    strbuf_reset(b);
    put32(b, 0x04034b50);
    common_fields(s, &s->ent[k], b);
    put16(b, 0); /* extra */
    strbuf_puts(b, s->ent[k].name);
}

static void central_directory(const simcore_stream *s, strbuf *b)
{
    strbuf_reset(b);
    uint64_t cd_off = s->ent[N_ENTRIES - 1].lfh_off + 30 + strlen(s->ent[N_ENTRIES - 1].name) +
                      s->ent[N_ENTRIES - 1].size;
    for (int k = 0; k < N_ENTRIES; k++) {
        put32(b, 0x02014b50);
        put16(b, 3 << 8 | 20); /* made by: Unix, 2.0 */
        common_fields(s, &s->ent[k], b);
        put16(b, 0);                       /* extra */
        put16(b, 0);                       /* comment */
        put16(b, 0);                       /* disk */
        put16(b, 0);                       /* internal attributes */
        put32(b, (uint64_t)0100644 << 16); /* a regular file, rw-r--r-- */
        put32(b, s->ent[k].lfh_off);
        strbuf_puts(b, s->ent[k].name);
    }
    size_t cd_size = b->len;
    put32(b, 0x06054b50);
    put16(b, 0);
    put16(b, 0);
    put16(b, N_ENTRIES);
    put16(b, N_ENTRIES);
    put32(b, cd_size);
    put32(b, cd_off);
    put16(b, 0); /* comment */
}

/* ---- the stream ------------------------------------------------------------------ */

static void copy_instructions(simcore_stream *s, const cJSON *arr)
{
    const cJSON *o;
    cJSON_ArrayForEach(o, arr)
    {
        const char *type = json_str(o, "type");
        const char *id = json_str(o, "id");
        if (sim_is_input_item(type) && id) {
            s->instr = xrealloc(s->instr, (s->n_instr + 1) * sizeof *s->instr);
            zip_instr *in = &s->instr[s->n_instr++];
            *in = (zip_instr){.id = xstrdup(id), .type = xstrdup(type)};
            const cJSON *opt;
            cJSON_ArrayForEach(opt, cJSON_GetObjectItemCaseSensitive(o, "options"))
            {
                const char *v = json_str(opt, "value");
                if (!v)
                    continue;
                in->values = xrealloc(in->values, (in->n_values + 1) * sizeof *in->values);
                in->values[in->n_values++] = xstrdup(v);
            }
        }
        static const char *const kids[] = {"rows", "columns", "items"};
        for (size_t i = 0; i < BD_ARRAY_LEN(kids); i++)
            copy_instructions(s, cJSON_GetObjectItemCaseSensitive(o, kids[i]));
    }
}

simcore_stream *sim_zip_new(const sim_zip_source *src)
{
    simcore_stream *s = xcalloc(1, sizeof *s);
    strlcpy_bd(s->batch_id, src->batch_id, sizeof s->batch_id);
    s->seed = sim_hash(s->batch_id, strlen(s->batch_id));
    s->base_ms = src->base_ms;
    s->tasks = src->task_count;
    s->groups = src->task_groups;
    s->tpg = src->tasks_per_group;
    s->pad = src->pad;
    copy_instructions(s, src->batch_items);
    s->ent[0].name = "responses-by-task.jsonl";
    s->ent[1].name = "responses-by-submission.jsonl";
    crc_table(s->table);
    return s;
}

int simcore_stream_prepare(simcore_stream *s)
{
    char *buf = xmalloc(CHUNK);
    uint64_t off = 0;
    for (int k = 0; k < N_ENTRIES; k++) {
        zip_entry *e = &s->ent[k];
        producer_start(s, &s->prod, k);
        e->crc = 0;
        e->size = 0;
        size_t n;
        while ((n = producer_read(s, &s->prod, buf, CHUNK)) > 0) {
            e->crc = crc_update(s->table, e->crc, buf, n);
            e->size += n;
        }
        e->lfh_off = off;
        off += 30 + strlen(e->name) + e->size;
    }
    free(buf);
    central_directory(s, &s->hdr);
    s->total = off + s->hdr.len;
    if (off > 0xffffffffULL - 1)
        return -EFBIG;
    s->prepared = true;
    s->pos = 0;
    s->section = 0;
    local_header(s, 0, &s->hdr);
    s->hdr_off = 0;
    return 0;
}

uint64_t simcore_stream_size(const simcore_stream *s)
{
    return s->total;
}

/* Moves to the next section and makes its header bytes, if it has any. */
static void next_section(simcore_stream *s)
{
    if (s->section >= 2 * N_ENTRIES) {
        s->section++; /* past the end */
        return;
    }
    s->section++;
    s->hdr_off = 0;
    if (s->section % 2 == 1)
        producer_start(s, &s->prod, s->section / 2);
    else if (s->section / 2 < N_ENTRIES)
        local_header(s, s->section / 2, &s->hdr);
    else
        central_directory(s, &s->hdr);
}

int64_t simcore_stream_read(simcore_stream *s, uint64_t pos, char *buf, size_t max)
{
    if (!s->prepared || pos != s->pos)
        return -EINVAL;
    size_t n = 0;
    while (n < max && s->section <= 2 * N_ENTRIES) {
        if (s->section % 2 == 1) {
            size_t got = producer_read(s, &s->prod, buf + n, max - n);
            n += got;
            if (got == 0)
                next_section(s);
            continue;
        }
        size_t take = s->hdr.len - s->hdr_off < max - n ? s->hdr.len - s->hdr_off : max - n;
        memcpy(buf + n, s->hdr.data + s->hdr_off, take);
        n += take;
        s->hdr_off += take;
        if (s->hdr_off == s->hdr.len)
            next_section(s);
    }
    s->pos += n;
    return (int64_t)n;
}

void simcore_stream_free(simcore_stream *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_instr; i++) {
        for (size_t v = 0; v < s->instr[i].n_values; v++)
            free(s->instr[i].values[v]);
        free(s->instr[i].values);
        free(s->instr[i].id);
        free(s->instr[i].type);
    }
    free(s->instr);
    strbuf_free(&s->prod.buf);
    strbuf_free(&s->hdr);
    free(s);
}
