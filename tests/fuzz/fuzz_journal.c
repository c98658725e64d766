/* libFuzzer harness for the record journal's reader (src/lib/store_journal.c): the input is
 * the content of one journal file, read back as the start does (store_replay_read).
 *
 * Build and run: scripts/fuzz (it knows the sources), or by hand from the repository root:
 *   clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Iinclude -Isrc/lib \
 *     tests/fuzz/fuzz_journal.c src/lib/store*.c src/lib/fsutil.c src/lib/job*.c \
 *     src/lib/export*.c src/lib/apitext.c src/lib/backoff.c src/lib/util*.c \
 *     -lcjson -lcrypto -lm -o /tmp/fuzz_journal
 *   /tmp/fuzz_journal -max_total_time=60 -max_len=8192
 *
 * Checked beyond "no crash, no leak": every job the reader returns has an id that is a plain
 * file name and a text of at least one byte lying inside the input, and a damaged file is
 * described by its name. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchd/fsutil.h"
#include "batchd/util.h"
#include "store_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *state_dir;

/* One private state directory for the whole run, removed at exit. */
static void cleanup(void)
{
    char *jobs = fsutil_join(state_dir, "jobs");
    char *file = fsutil_join(jobs, "journal.0000000000000001");
    unlink(file);
    rmdir(jobs);
    rmdir(state_dir);
    free(file);
    free(jobs);
    free(state_dir);
}

static const char *state(void)
{
    if (!state_dir) {
        const char *tmp = getenv("TMPDIR");
        char *tmpl = xasprintf("%s/batchd-fuzz-journal-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(tmpl))
            abort();
        state_dir = tmpl;
        char *jobs = fsutil_join(state_dir, "jobs");
        if (mkdir(jobs, 0700) != 0)
            abort();
        free(jobs);
        atexit(cleanup);
    }
    return state_dir;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *file = fsutil_join(state(), "jobs/journal.0000000000000001");
    FILE *f = fopen(file, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    store_replay *rp = NULL;
    if (store_replay_read(state(), UINT64_MAX, &rp) != 0)
        abort(); /* a readable file always reads */
    for (size_t i = 0; i < store_replay_count(rp); i++) {
        const char *id = store_replay_id(rp, i);
        size_t len = 0;
        const char *text = store_replay_text(rp, id, &len);
        if (!text || len == 0 || len > size || strlen(id) == 0 || strlen(id) > 31 ||
            strchr(id, '/') || strchr(id, '.'))
            abort();
    }
    const char *damage = store_replay_damage(rp);
    if (damage && !strstr(damage, "journal.0000000000000001 (at byte "))
        abort();
    store_replay_free(rp);
    free(file);
    return 0;
}
