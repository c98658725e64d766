/* Fuzz harness for inbound varlink messages: the NUL framing and varlink_request_parse, the
 * code every byte from a control-socket peer goes through before any method sees it.
 *
 * Build and run (from the repository root):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -DBATCHD_VERSION='"fuzz"'
 * -Iinclude \
 *     tests/fuzz/fuzz_varlink.c src/lib/varlink.c src/lib/util.c src/lib/log.c \
 *     src/lib/fsutil.c $(pkg-config --cflags --libs libcjson libuv libsystemd) \
 *     -o fuzz_varlink
 *   ./fuzz_varlink -max_len=65536 -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/varlink.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Frame exactly as the server does: each NUL ends a message; the tail without a NUL is
     * an incomplete message and is never parsed. */
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    size_t start = 0;
    for (size_t i = 0; i < size; i++) {
        if (buf[i] != '\0')
            continue;
        varlink_request req;
        const char *why = NULL;
        int r = varlink_request_parse(buf + start, i - start, &req, &why);
        if (r == 0) {
            /* What the server relies on after a successful parse. */
            if (!req.method || !req.method[0])
                abort();
            if (req.parameters && !cJSON_IsObject(req.parameters))
                abort();
            varlink_request_clear(&req);
        } else if (!why || req.msg) {
            abort();
        }
        start = i + 1;
    }
    free(buf);
    return 0;
}
