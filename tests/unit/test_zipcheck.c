/* Unit tests of zipcheck: hand-built ZIPs (good, with a comment, empty, ZIP64) pass; truncated
 * ones, garbage after the end, offsets beyond the file, inconsistent counts and multi-disk
 * archives are refused with a reason; the fd form reads only the tail and the directory's
 * first signature. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "batchd/util.h"
#include "batchd/zipcheck.h"

typedef struct zbuf {
    unsigned char *d;
    size_t len, cap;
} zbuf;

static void put(zbuf *z, const void *p, size_t n)
{
    if (z->len + n > z->cap) {
        z->cap = (z->len + n) * 2;
        z->d = xrealloc(z->d, z->cap);
    }
    memcpy(z->d + z->len, p, n);
    z->len += n;
}

static void put16(zbuf *z, unsigned v)
{
    unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(z, b, 2);
}

static void put32(zbuf *z, uint32_t v)
{
    put16(z, v & 0xffff);
    put16(z, v >> 16);
}

static void put64(zbuf *z, uint64_t v)
{
    put32(z, (uint32_t)v);
    put32(z, (uint32_t)(v >> 32));
}

static void wr32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

typedef struct zopts {
    unsigned entries;
    size_t data_len; /* bytes of each stored entry */
    size_t comment;  /* comment length */
    int zip64;       /* write ZIP64 end record + locator, 0xffff... in the EOCD */
} zopts;

/* A stored-method archive: local headers and data, the central directory, then the end. */
static zbuf build(const zopts *o)
{
    zbuf z = {0};
    uint32_t offs[64];
    for (unsigned i = 0; i < o->entries; i++) {
        offs[i] = (uint32_t)z.len;
        put32(&z, 0x04034b50);
        put16(&z, 20), put16(&z, 0), put16(&z, 0), put16(&z, 0), put16(&z, 0);
        put32(&z, 0), put32(&z, (uint32_t)o->data_len), put32(&z, (uint32_t)o->data_len);
        put16(&z, 5), put16(&z, 0);
        char name[16]; /* "f%04u" of an unsigned: room for any, 5 used */
        snprintf(name, sizeof name, "f%04u", i);
        put(&z, name, 5);
        for (size_t k = 0; k < o->data_len; k++)
            put(&z, "d", 1);
    }
    size_t cd = z.len;
    for (unsigned i = 0; i < o->entries; i++) {
        put32(&z, 0x02014b50);
        put16(&z, 20), put16(&z, 20), put16(&z, 0), put16(&z, 0), put16(&z, 0), put16(&z, 0);
        put32(&z, 0), put32(&z, (uint32_t)o->data_len), put32(&z, (uint32_t)o->data_len);
        put16(&z, 5), put16(&z, 0), put16(&z, 0), put16(&z, 0), put16(&z, 0);
        put32(&z, 0), put32(&z, offs[i]);
        char name[16]; /* "f%04u" of an unsigned: room for any, 5 used */
        snprintf(name, sizeof name, "f%04u", i);
        put(&z, name, 5);
    }
    size_t cd_size = z.len - cd;
    if (o->zip64) {
        size_t rec = z.len;
        put32(&z, 0x06064b50);
        put64(&z, 44);
        put16(&z, 45), put16(&z, 45), put32(&z, 0), put32(&z, 0);
        put64(&z, o->entries), put64(&z, o->entries), put64(&z, cd_size), put64(&z, cd);
        put32(&z, 0x07064b50);
        put32(&z, 0), put64(&z, rec), put32(&z, 1);
    }
    put32(&z, 0x06054b50);
    put16(&z, 0), put16(&z, 0);
    put16(&z, o->zip64 ? 0xffff : o->entries), put16(&z, o->zip64 ? 0xffff : o->entries);
    put32(&z, o->zip64 ? 0xffffffffu : (uint32_t)cd_size);
    put32(&z, o->zip64 ? 0xffffffffu : (uint32_t)cd);
    put16(&z, (unsigned)o->comment);
    for (size_t k = 0; k < o->comment; k++)
        put(&z, "c", 1);
    return z;
}

/* The EOCD of an archive built without a comment is its last 22 bytes. */
static unsigned char *eocd_of(zbuf *z, size_t comment)
{
    return z->d + z->len - comment - 22;
}

static void expect_bad(const zbuf *z, const char *needle)
{
    const char *why = NULL;
    assert_int_equal(zipcheck_buffer(z->d, z->len, NULL, &why), -EINVAL);
    assert_non_null(why);
    if (!strstr(why, needle))
        fail_msg("reason \"%s\" does not say \"%s\"", why, needle);
}

static void test_good(void **state)
{
    (void)state;
    zopts o = {.entries = 2, .data_len = 10};
    zbuf z = build(&o);
    zipcheck_info info;
    const char *why = "unset";
    assert_int_equal(zipcheck_buffer(z.d, z.len, &info, &why), 0);
    assert_int_equal(info.entries, 2);
    assert_int_equal(info.cd_size, 2 * (46 + 5));
    assert_int_equal(info.cd_offset, 2 * (30 + 5 + 10));
    assert_int_equal(info.eocd_offset, z.len - 22);
    assert_int_equal(info.comment_len, 0);
    assert_int_equal(info.zip64, 0);
    free(z.d);
}

static void test_comment(void **state)
{
    (void)state;
    /* The longest comment there is: the EOCD is found 64 KiB before the end. */
    size_t lens[] = {1, 100, 65535};
    for (size_t i = 0; i < BD_ARRAY_LEN(lens); i++) {
        zopts o = {.entries = 1, .data_len = 3, .comment = lens[i]};
        zbuf z = build(&o);
        zipcheck_info info;
        assert_int_equal(zipcheck_buffer(z.d, z.len, &info, NULL), 0);
        assert_int_equal(info.comment_len, lens[i]);
        /* The comment length must reach exactly to the end: one byte less is refused. */
        z.len--;
        expect_bad(&z, "comment length");
        free(z.d);
    }
}

static void test_zero_entries(void **state)
{
    (void)state;
    zopts o = {0};
    zbuf z = build(&o);
    assert_int_equal(z.len, 22);
    zipcheck_info info;
    assert_int_equal(zipcheck_buffer(z.d, z.len, &info, NULL), 0);
    assert_int_equal(info.entries, 0);
    assert_int_equal(info.cd_size, 0);
    free(z.d);
    /* no entries but directory bytes: the count does not fit */
    zopts one = {.entries = 1, .data_len = 1};
    z = build(&one);
    unsigned char *e = eocd_of(&z, 0);
    e[8] = e[10] = 0;
    e[9] = e[11] = 0;
    expect_bad(&z, "entry count");
    free(z.d);
}

static void test_truncated(void **state)
{
    (void)state;
    zopts o = {.entries = 3, .data_len = 1000};
    zbuf z = build(&o);
    size_t full = z.len;
    /* cut inside the EOCD, inside the directory, inside the data, and to nothing */
    size_t cuts[] = {full - 1, full - 10, full - 22 - 20, 1500, 100, 21, 0};
    for (size_t i = 0; i < BD_ARRAY_LEN(cuts); i++) {
        z.len = cuts[i];
        const char *why = NULL;
        assert_int_equal(zipcheck_buffer(z.d, z.len, NULL, &why), -EINVAL);
        assert_non_null(why);
    }
    z.len = 21;
    expect_bad(&z, "too short");
    z.len = 1500;
    expect_bad(&z, "no end-of-central-directory");
    free(z.d);
}

static void test_garbage_tail(void **state)
{
    (void)state;
    zopts o = {.entries = 2, .data_len = 5};
    zbuf z = build(&o);
    put(&z, "trailing garbage", 16);
    expect_bad(&z, "comment length does not match");
    free(z.d);
    /* not a ZIP at all */
    zbuf g = {0};
    for (int i = 0; i < 4000; i++)
        put(&g, "<html>", 6);
    expect_bad(&g, "no end-of-central-directory");
    free(g.d);
}

static void test_offset_beyond_file(void **state)
{
    (void)state;
    zopts o = {.entries = 2, .data_len = 5};
    zbuf z = build(&o);
    unsigned char *e = eocd_of(&z, 0);
    wr32(e + 16, 0x7fffffff); /* cd offset */
    expect_bad(&z, "beyond the end record");
    free(z.d);
    z = build(&o);
    e = eocd_of(&z, 0);
    wr32(e + 12, 0x7fffffff); /* cd size */
    expect_bad(&z, "beyond the end record");
    free(z.d);
    /* a directory that ends before the EOCD: bytes inserted between */
    z = build(&o);
    e = eocd_of(&z, 0);
    wr32(e + 16, (uint32_t)(2 * (30 + 5 + 5) - 1));
    expect_bad(&z, "does not end where the end record starts");
    free(z.d);
    /* the offset is consistent but no directory header is there */
    z = build(&o);
    z.d[2 * (30 + 5 + 5)] = 'X';
    expect_bad(&z, "no central directory header");
    free(z.d);
}

static void test_counts_and_disks(void **state)
{
    (void)state;
    zopts o = {.entries = 2, .data_len = 5};
    zbuf z = build(&o);
    unsigned char *e = eocd_of(&z, 0);
    e[10] = 200; /* 200 entries cannot fit 102 bytes of directory */
    e[8] = 200;
    expect_bad(&z, "entry count");
    free(z.d);
    z = build(&o);
    e = eocd_of(&z, 0);
    e[4] = 1; /* disk 1 */
    expect_bad(&z, "multi-disk");
    free(z.d);
    z = build(&o);
    e = eocd_of(&z, 0);
    e[8] = 1; /* entries on this disk differ from the total */
    expect_bad(&z, "multi-disk");
    free(z.d);
}

static void test_zip64(void **state)
{
    (void)state;
    zopts o = {.entries = 2, .data_len = 7, .zip64 = 1};
    zbuf z = build(&o);
    zipcheck_info info;
    const char *why = NULL;
    assert_int_equal(zipcheck_buffer(z.d, z.len, &info, &why), 0);
    assert_int_equal(info.zip64, 1);
    assert_int_equal(info.entries, 2);
    assert_int_equal(info.cd_offset, 2 * (30 + 5 + 7));
    free(z.d);
    /* the locator's signature broken: refused, saying so */
    z = build(&o);
    z.d[z.len - 22 - 20] = 'X';
    expect_bad(&z, "no ZIP64 locator");
    free(z.d);
    /* the locator points elsewhere */
    z = build(&o);
    unsigned char *loc = z.d + z.len - 22 - 20;
    wr32(loc + 8, 3);
    expect_bad(&z, "not right before its locator");
    free(z.d);
    /* the ZIP64 record's signature broken */
    z = build(&o);
    z.d[z.len - 22 - 20 - 56] = 'X';
    expect_bad(&z, "no valid ZIP64 end record");
    free(z.d);
}

static char *write_temp(const zbuf *z, int *fd)
{
    char *path = xstrdup("/tmp/test_zipcheck.XXXXXX");
    *fd = mkstemp(path);
    assert_true(*fd >= 0);
    assert_int_equal(write(*fd, z->d, z->len), (ssize_t)z->len);
    return path;
}

static void test_fd(void **state)
{
    (void)state;
    /* With the longest comment, the directory's first header lies before the tail read. */
    zopts o = {.entries = 3, .data_len = 100 * 1024, .comment = 65535};
    zbuf z = build(&o);
    int fd;
    char *path = write_temp(&z, &fd);
    zipcheck_info info;
    const char *why = NULL;
    assert_int_equal(zipcheck_fd(fd, &info, &why), 0);
    assert_int_equal(info.entries, 3);
    assert_true(info.cd_offset < z.len - ZIPCHECK_TAIL_MAX);
    /* the directory's first signature, outside the tail, broken: the fd form still sees it */
    unsigned char x = 'X';
    assert_int_equal(pwrite(fd, &x, 1, (off_t)info.cd_offset), 1);
    assert_int_equal(zipcheck_fd(fd, NULL, &why), -EINVAL);
    assert_non_null(strstr(why, "no central directory header"));
    /* truncated on disk */
    assert_int_equal(ftruncate(fd, (off_t)(z.len - 5)), 0);
    assert_int_equal(zipcheck_fd(fd, NULL, &why), -EINVAL);
    /* empty file */
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(zipcheck_fd(fd, NULL, &why), -EINVAL);
    assert_non_null(strstr(why, "too short"));
    close(fd);
    unlink(path);
    free(path);
    free(z.d);
    /* not a file that can be read */
    assert_true(zipcheck_fd(-1, NULL, &why) < 0);
}

static void test_tail_arguments(void **state)
{
    (void)state;
    zopts o = {.entries = 1, .data_len = 1};
    zbuf z = build(&o);
    /* a tail longer than the file is a caller's mistake */
    assert_int_equal(zipcheck_tail(z.d, z.len, z.len - 1, NULL, NULL), -EINVAL);
    assert_int_equal(zipcheck_tail(NULL, 0, 0, NULL, NULL), -EINVAL);
    /* the last 22 bytes alone, of a longer file: enough for the structure */
    assert_int_equal(zipcheck_tail(z.d + z.len - 22, 22, z.len, NULL, NULL), 0);
    free(z.d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_comment),
        cmocka_unit_test(test_zero_entries),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_garbage_tail),
        cmocka_unit_test(test_offset_beyond_file),
        cmocka_unit_test(test_counts_and_disks),
        cmocka_unit_test(test_zip64),
        cmocka_unit_test(test_fd),
        cmocka_unit_test(test_tail_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
