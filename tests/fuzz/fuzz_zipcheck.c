/* libFuzzer harness for zipcheck, the check of a downloaded export's end-of-central-directory
 * record (what a truncated, padded or hostile download breaks).
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iinclude \
 *     tests/fuzz/fuzz_zipcheck.c src/lib/zipcheck.c -o /tmp/fuzz_zipcheck
 *   /tmp/fuzz_zipcheck -max_total_time=60 tests/fuzz/corpus/zipcheck
 *
 * The input is a whole file. Checked beyond "no crash, no out-of-bounds read":
 *   - an accepted file's EOCD plus its comment reach exactly to the end, and its central
 *     directory lies inside the file, ending at the EOCD (or, for ZIP64, 76 bytes before it);
 *   - a refusal always comes with a reason;
 *   - the tail form, given any tail that holds the EOCD, the ZIP64 records and the directory's
 *     first header, agrees with the whole-file form. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/zipcheck.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    zipcheck_info info;
    const char *why = NULL;
    /* A copy of exactly size bytes, so that ASan sees any read past the end. */
    unsigned char *buf = malloc(size ? size : 1);
    if (size)
        memcpy(buf, data, size);
    int r = zipcheck_buffer(buf, size, &info, &why);
    if (r != 0) {
        if (!why || !*why)
            abort();
        free(buf);
        return 0;
    }
    if (info.eocd_offset + 22 + info.comment_len != size)
        abort();
    uint64_t end = info.eocd_offset - (info.zip64 ? 76 : 0);
    if (info.cd_offset > end || info.cd_offset + info.cd_size != end)
        abort();
    if (info.entries > info.cd_size / 46)
        abort();
    /* The shortest tail that still holds everything the check reads must agree. */
    uint64_t from = info.entries > 0 ? info.cd_offset : end;
    size_t tail_len = (size_t)(size - from);
    zipcheck_info again;
    if (zipcheck_tail(buf + from, tail_len, size, &again, &why) != 0 ||
        memcmp(&again, &info, sizeof info) != 0)
        abort();
    free(buf);
    return 0;
}
