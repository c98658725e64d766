/* upload_rss: proves that http uploads stream from the file in fixed memory. It uploads a
 * small file and then a 1 GiB sparse-ish file (zeros with a marker every 64 MiB) through the
 * real client on a real libuv loop to an in-process libmicrohttpd server on 127.0.0.1 that
 * counts and discards the bytes, and prints peak RSS (getrusage) after each. Exits 1 when the
 * big upload raised peak RSS by more than the allowed slack or did not arrive whole. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <microhttpd.h>
#include <uv.h>

#include "batchd/http.h"
#include "batchd/util.h"

#define SLACK_KIB (16 * 1024) /* growth allowed: allocator noise, not the file */

typedef struct upload_count {
    uint64_t bytes;
} upload_count;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    uint64_t *received = cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload;
    if (!*con_cls) {
        *con_cls = received;
        *received = 0;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        __atomic_add_fetch(received, *upload_size, __ATOMIC_RELAXED);
        *upload_size = 0;
        return MHD_YES;
    }
    static char ok[] = "ok";
    struct MHD_Response *r = MHD_create_response_from_buffer(2, ok, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static char *make_file(const char *dir, uint64_t size)
{
    char *path = xasprintf("%s/upload_rss.XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
        perror(path);
        exit(2);
    }
    /* a marker every 64 MiB so that the content is not all zeros */
    for (uint64_t off = 0; off + 64 <= size; off += 64u << 20) {
        char mark[64];
        snprintf(mark, sizeof mark, "batchd upload_rss marker at %" PRIu64 "\n", off);
        if (pwrite(fd, mark, strlen(mark), (off_t)off) < 0) {
            perror(path);
            exit(2);
        }
    }
    close(fd);
    return path;
}

typedef struct outcome {
    bool done;
    long status;
    enum http_error error;
    uint64_t sent;
} outcome;

static void on_done(void *ud, const http_response *r)
{
    outcome *o = ud;
    o->done = true;
    o->status = r->status;
    o->error = r->error;
    o->sent = r->bytes_sent;
    if (r->error != HTTP_OK)
        fprintf(stderr, "upload failed: %s: %s\n", http_error_name(r->error), r->error_text);
}

static int upload(uv_loop_t *loop, http_client *c, const char *url, const char *path, uint64_t size,
                  const volatile uint64_t *received)
{
    outcome o = {0};
    http_request req = {.method = "PUT", .url = url, .upload_path = path, .timeout_ms = 600000};
    int64_t t0 = time_mono_ms();
    if (!http_start(c, &req, on_done, NULL, &o))
        return -1;
    while (!o.done)
        uv_run(loop, UV_RUN_ONCE);
    double secs = (double)(time_mono_ms() - t0) / 1000.0;
    uint64_t got = __atomic_load_n(received, __ATOMIC_RELAXED);
    printf("  %10" PRIu64 " bytes: status %ld, sent %" PRIu64 ", server got %" PRIu64
           ", %.1f MiB/s, peak RSS %ld KiB\n",
           size, o.status, o.sent, got, secs > 0 ? (double)size / 1048576.0 / secs : 0.0,
           peak_rss_kib());
    return o.error == HTTP_OK && o.status == 200 && got == size && o.sent == size ? 0 : -1;
}

static void on_closed(void *ud)
{
    *(bool *)ud = true;
}

int main(int argc, char **argv)
{
    uint64_t big = argc > 1 ? strtoull(argv[1], NULL, 10) : (uint64_t)1 << 30;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    uint64_t received = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request, &received,
                         MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "cannot start the server\n");
        return 2;
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/upload",
             (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);

    uv_loop_t loop;
    uv_loop_init(&loop);
    http_client_options opts = {.timeout_ms = 30000, .max_connections = 2};
    http_client *c = http_client_new(&loop, &opts);
    char *small_path = make_file(dir, 1u << 20);
    char *big_path = make_file(dir, big);

    printf("upload_rss: peak RSS at start %ld KiB\n", peak_rss_kib());
    int rc = upload(&loop, c, url, small_path, 1u << 20, &received);
    long after_small = peak_rss_kib();
    rc |= upload(&loop, c, url, big_path, big, &received);
    long after_big = peak_rss_kib();
    long growth = after_big - after_small;
    printf("upload_rss: peak RSS grew by %ld KiB for a %" PRIu64 " MiB file (allowed %d KiB)\n",
           growth, big >> 20, SLACK_KIB);

    bool closed = false;
    http_client_close(c, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_loop_close(&loop);
    MHD_stop_daemon(d);
    unlink(small_path);
    unlink(big_path);
    free(small_path);
    free(big_path);
    if (rc != 0) {
        printf("upload_rss: FAIL: an upload did not arrive whole\n");
        return 1;
    }
    if (growth > SLACK_KIB) {
        printf("upload_rss: FAIL: memory grew with the file size\n");
        return 1;
    }
    printf("upload_rss: OK\n");
    return 0;
}
