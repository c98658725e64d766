/* fsync_count: counts fsync(2) and fdatasync(2) calls per file or directory, for the tests
 * that check how many fsyncs a batch costs. Including it defines both in the test program, which
 * takes the place of libc's for every caller linked into it (the modules are static libraries); the
 * real system call is still made. Include it from one file of a test program only. */
#ifndef BATCHD_TEST_FSYNC_COUNT_H
#define BATCHD_TEST_FSYNC_COUNT_H

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FSYNC_COUNT_MAX 4096

static bool fsync_counting;
static struct stat fsync_seen[FSYNC_COUNT_MAX];
static size_t fsync_seen_n;

/* Called while counting on each fsync, after it is counted and before it is made: a test
 * checks there what must hold at that moment, or returns an errno to make this fsync fail
 * with (it is then not made), or 0. */
static int (*fsync_count_hook)(int fd);
/* fsyncs come from several threads at once (fsutil_parallel): counting and hooks one at a
 * time. */
static pthread_mutex_t fsync_count_lock = PTHREAD_MUTEX_INITIALIZER;

/* Whether fd's path (from /proc/self/fd) contains part: a hook picks a file by name, since
 * concurrent fsyncs come in no fixed order. */
static bool fsync_fd_path_has(int fd, const char *part)
{
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return false;
    path[n] = '\0';
    return strstr(path, part) != NULL;
}

/* The interposed fsync and fdatasync: record what was synced while counting, then sync it. */
static int fsync_count_sync(int fd, long sysno)
{
    struct stat st;
    pthread_mutex_lock(&fsync_count_lock);
    if (fsync_counting && fsync_seen_n < FSYNC_COUNT_MAX && fstat(fd, &st) == 0)
        fsync_seen[fsync_seen_n++] = st;
    int e = fsync_counting && fsync_count_hook ? fsync_count_hook(fd) : 0;
    pthread_mutex_unlock(&fsync_count_lock);
    if (e) {
        errno = e;
        return -1;
    }
    return (int)syscall(sysno, fd);
}

int fsync(int fd) /* NOLINT(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp) */
{
    return fsync_count_sync(fd, SYS_fsync);
}

int fdatasync(int fd) /* NOLINT(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp) */
{
    return fsync_count_sync(fd, SYS_fdatasync);
}

static void fsync_count_start(void)
{
    fsync_seen_n = 0;
    fsync_counting = true;
}

static void fsync_count_stop(void)
{
    fsync_counting = false;
}

/* How many of the counted fsyncs were of path (the same inode). */
static size_t fsync_count_of(const char *path)
{
    struct stat want;
    if (stat(path, &want) != 0)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < fsync_seen_n; i++)
        n += fsync_seen[i].st_dev == want.st_dev && fsync_seen[i].st_ino == want.st_ino;
    return n;
}

/* How many fsyncs were counted in all. */
static size_t fsync_count_all(void)
{
    return fsync_seen_n;
}

#endif
