// clang-format off
/* Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude tests/fuzz/fuzz_config.c src/lib/config.c src/lib/fsutil.c src/lib/util.c -lcjson -linih -lm -o fuzz_config
 *
 * libFuzzer harness of config_load: the input is the configuration file (handed over as a
 * memfd, so no file system churn). Besides memory errors it aborts when the result breaks
 * the module's promises: a load either succeeds with no diagnostics and values in their
 * documented ranges, or fails with at least one diagnostic, each naming the file. */
// clang-format on
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "batchd/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.conf", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    config c;
    diag d = {0};
    int r = config_load(path, &c, &d);
    if (r == 0) {
        if (d.count != 0 || c.api.max_connections < 1 || c.api.max_connections > 256 ||
            !(c.api.max_rate > 0) || c.job.max_active < 1 || !(c.poll.multiplier >= 1) ||
            c.api.timeout_ms <= 0 || c.poll.initial_ms > c.poll.max_ms ||
            c.job.max_record_bytes == 0 || !c.api.url || !c.spool.dir)
            abort();
    } else {
        if (d.count == 0)
            abort();
        for (size_t i = 0; i < d.count; i++)
            if (strncmp(d.lines[i], path, strlen(path)) != 0)
                abort();
    }
    diag_free(&d);
    config_free(&c);
    close(fd);
    return 0;
}
