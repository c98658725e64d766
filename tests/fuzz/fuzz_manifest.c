// clang-format off
/* Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude -Isrc/lib tests/fuzz/fuzz_manifest.c src/lib/manifest.c src/lib/config.c src/lib/rules.c src/lib/rules_items.c src/lib/fsutil.c src/lib/util.c -lcjson -linih -lm -o fuzz_manifest
 *
 * libFuzzer harness of manifest_resolve: the input is job.json in a job directory that also
 * holds a data file, with the repository's default template configured (the input may name
 * it, or itself as a template). Besides memory errors it aborts when the result breaks the
 * module's promises: success means no errors and a job with every default filled in;
 * failure means at least one error, each with a message. */
// clang-format on
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "batchd/config.h"
#include "batchd/fsutil.h"
#include "batchd/manifest.h"
#include "batchd/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];
static config cfg;

static void init_once(void)
{
    if (dir[0])
        return;
    strcpy(dir, "/tmp/fuzz_manifest.XXXXXX");
    if (!mkdtemp(dir))
        abort();
    config_defaults(&cfg);
    free(cfg.job.template_path);
    cfg.job.template_path = realpath("conf/templates/default.json", NULL); /* run from the repo */
    cfg.api.workspace_id = xstrdup("6278acb09062db3b35bcbeb0");
    char *p = fsutil_join(dir, "data.jsonl");
    if (fsutil_write_atomic(p, "{}\n", 3, 0644) < 0)
        abort();
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    char *p = fsutil_join(dir, "job.json");
    if (fsutil_write_atomic(p, data, size, 0644) < 0)
        abort();
    free(p);
    cJSON *errors = cJSON_CreateArray(), *job = NULL;
    diag d = {0};
    int r = manifest_resolve(dir, "fuzz", &cfg, &job, &d);
    diag_to_json(&d, errors);
    diag_free(&d);
    if (r == 0) {
        const cJSON *ds = cJSON_GetObjectItem(job, "dataset"),
                    *b = cJSON_GetObjectItem(job, "batch");
        if (cJSON_GetArraySize(errors) != 0 || !json_str(job, "workspace_id") ||
            !json_str(ds, "name") || !json_str(ds, "file") || !json_str(b, "name") ||
            !cJSON_GetObjectItem(b, "tasks_per_group") || cJSON_GetObjectItem(job, "template"))
            abort();
    } else {
        if (job || cJSON_GetArraySize(errors) == 0)
            abort();
        const cJSON *e;
        cJSON_ArrayForEach(e, errors)
        {
            if (!json_str(e, "message"))
                abort();
        }
    }
    cJSON_Delete(job);
    cJSON_Delete(errors);
    return 0;
}
