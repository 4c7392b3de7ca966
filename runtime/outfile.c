#include "runtime/outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/status.h"

struct tm_outfile {
    char *path;   /* as given, for messages */
    char *target; /* path with its symlinks followed: the file written */
    int direct;   /* a non-regular target, open since tm_outfile_open */
    int fd;       /* the target (direct) or the temporary file, or -1 */
    FILE *f;      /* a stream over fd that records its write errors */
    int err;      /* errno of the first failed write, or 0 */
    int slot;     /* the temporary file's entry in temps[], or -1 */
};

/* The temporary files in existence, so that a signal handler can remove
 * them: a slot is free (0), being filled by its owner (1), or names a
 * temporary file that may exist (2). A slot turns 2 before its file is
 * created and 0 only after the file is renamed or removed, so no file is
 * ever outside the table. States are lock-free atomics and paths fixed
 * arrays: both may be read from a handler. */
#define MAX_TEMPS 16
enum { SLOT_FREE, SLOT_FILLING, SLOT_LIVE };
static struct {
    atomic_int state;
    char path[PATH_MAX];
} temps[MAX_TEMPS];

static int failure(int status, const char *path, const char *why)
{
    return tm_error(status, "cannot write %s: %s", path, why);
}

/* Length of the directory part of p, its last slash included (0: none). */
static size_t dir_len(const char *p)
{
    const char *slash = strrchr(p, '/');
    return slash ? (size_t)(slash - p) + 1 : 0;
}

/* The directory of p, for messages and fsync: "." for a bare name, "/" for
 * a name in the root. */
static void dir_of(const char *p, char *out, size_t n)
{
    size_t len = dir_len(p);
    if (len == 0) {
        snprintf(out, n, ".");
        return;
    }
    if (len > 1) len--; /* drop the slash, but keep the root's */
    snprintf(out, n, "%.*s", (int)len, p);
}

/* path with every symlink followed (at most 40, as the kernel does); a
 * dangling link resolves to the name it points at, so the file is created
 * there. NULL with errno set on failure. */
static char *resolve(const char *path)
{
    char *cur = strdup(path);
    for (int hops = 0; cur != NULL; hops++) {
        struct stat st;
        if (lstat(cur, &st) != 0 || !S_ISLNK(st.st_mode)) return cur;
        char link[PATH_MAX];
        ssize_t n = hops < 40 ? readlink(cur, link, sizeof link) : -1;
        if (hops >= 40) errno = ELOOP;
        if (n >= (ssize_t)sizeof link) errno = ENAMETOOLONG, n = -1;
        if (n < 0) {
            free(cur);
            return NULL;
        }
        size_t dir = link[0] == '/' ? 0 : dir_len(cur);
        char *next = malloc(dir + (size_t)n + 1);
        if (next != NULL) {
            memcpy(next, cur, dir);
            memcpy(next + dir, link, (size_t)n);
            next[dir + (size_t)n] = '\0';
        }
        free(cur);
        cur = next;
    }
    errno = ENOMEM;
    return NULL;
}

/* Creates the temporary file beside target and enters it in temps[]:
 * returns its descriptor and *slot, or -1 with errno set. */
static int temp_create(const char *target, int *slot)
{
    int i = 0;
    for (; i < MAX_TEMPS; i++) {
        int expected = SLOT_FREE;
        if (atomic_compare_exchange_strong(&temps[i].state, &expected, SLOT_FILLING)) break;
    }
    if (i == MAX_TEMPS) {
        errno = EMFILE;
        return -1;
    }
    int len = snprintf(temps[i].path, sizeof temps[i].path, "%s.tmp.%ld.%d", target,
                       (long)getpid(), i);
    if (len >= (int)sizeof temps[i].path) {
        atomic_store(&temps[i].state, SLOT_FREE);
        errno = ENAMETOOLONG;
        return -1;
    }
    atomic_store(&temps[i].state, SLOT_LIVE);
    /* O_NOFOLLOW: a symlink planted at the temporary name is not followed. */
    int fd = open(temps[i].path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) {
        int err = errno;
        atomic_store(&temps[i].state, SLOT_FREE);
        errno = err;
        return -1;
    }
    *slot = i;
    return fd;
}

/* Takes a temporary file out of temps[], removing it unless it was renamed. */
static void temp_release(int slot, int remove)
{
    if (slot < 0) return;
    if (remove) unlink(temps[slot].path);
    atomic_store(&temps[slot].state, SLOT_FREE);
}

void tm_outfile_discard_temps(void)
{
    for (int i = 0; i < MAX_TEMPS; i++)
        if (atomic_load(&temps[i].state) == SLOT_LIVE) unlink(temps[i].path);
}

/* Why a new file cannot be created beside target (errno from the attempt). */
static int dir_failure(const char *path, const char *target, int err)
{
    char dir[PATH_MAX], why[PATH_MAX + 128];
    dir_of(target, dir, sizeof dir);
    if (err == ENOENT)
        snprintf(why, sizeof why, "directory %s does not exist", dir);
    else
        snprintf(why, sizeof why, "cannot create a file in %s: %s", dir, strerror(err));
    return failure(TM_EIO, path, why);
}

/* The checks of tm_outfile_check; on TM_OK *target is the resolved path
 * (the caller frees it) and *direct says whether it is a non-regular file. */
static int inspect(const char *path, char **target, int *direct)
{
    *target = NULL;
    *direct = 0;
    if (path == NULL || path[0] == '\0')
        return tm_error(TM_EINVAL, "cannot write a file with an empty name");
    char *t = resolve(path);
    if (t == NULL) return failure(errno == ENOMEM ? TM_EHOSTMEM : TM_EIO, path, strerror(errno));
    struct stat st;
    int exists = stat(t, &st) == 0, err = errno, rc = TM_OK;
    if (!exists && err != ENOENT) {
        rc = failure(TM_EIO, path, strerror(err));
    } else if (exists && S_ISDIR(st.st_mode)) {
        rc = failure(TM_EIO, path, "it is a directory");
    } else if (exists && S_ISSOCK(st.st_mode)) {
        rc = failure(TM_EIO, path, "it is a socket");
    } else if (exists && access(t, W_OK) != 0) {
        rc = failure(TM_EIO, path, strerror(errno));
    } else if (exists && !S_ISREG(st.st_mode)) {
        *direct = 1;
    } else {
        /* A regular or new target: prove that its directory takes the
         * temporary file, by creating one (and removing it again). */
        int slot = -1, fd = temp_create(t, &slot);
        if (fd < 0) {
            rc = dir_failure(path, t, errno);
        } else {
            close(fd);
            temp_release(slot, 1);
        }
    }
    if (rc != TM_OK) {
        free(t);
        return rc;
    }
    *target = t;
    return TM_OK;
}

int tm_outfile_check(const char *path)
{
    char *target;
    int direct;
    TM_CHECK(inspect(path, &target, &direct));
    free(target);
    return TM_OK;
}

/* The stream's writes go straight to the descriptor and keep the first
 * error's errno, which a plain FILE would lose by the time it is reported. */
static ssize_t stream_write(void *cookie, const char *buf, size_t n)
{
    tm_outfile *o = cookie;
    size_t done = 0;
    while (done < n && o->err == 0) {
        ssize_t k = write(o->fd, buf + done, n - done);
        if (k < 0 && errno == EINTR) continue;
        if (k > 0)
            done += (size_t)k;
        else /* no progress and no reason given: EIO rather than spin */
            o->err = k < 0 ? errno : EIO;
    }
    /* Fewer bytes than asked tell the stream of the error (a cookie's
     * write must not return a negative count). */
    if (o->err != 0) errno = o->err;
    return (ssize_t)done;
}

/* Gives o its stream over o->fd; the descriptor stays o's to close. */
static int stream_attach(tm_outfile *o)
{
    cookie_io_functions_t io = {.write = stream_write};
    o->f = fopencookie(o, "w", io);
    return o->f != NULL ? 0 : -1;
}

int tm_outfile_open(tm_outfile **out, const char *path)
{
    *out = NULL;
    tm_outfile *o = calloc(1, sizeof *o);
    if (o == NULL) return tm_error(TM_EHOSTMEM, "cannot write %s: out of host memory", path);
    o->slot = -1;
    o->fd = -1;
    int rc = inspect(path, &o->target, &o->direct);
    if (rc == TM_OK && (o->path = strdup(path)) == NULL)
        rc = tm_error(TM_EHOSTMEM, "cannot write %s: out of host memory", path);
    if (rc == TM_OK && o->direct) {
        o->fd = open(o->target, O_WRONLY | O_NOCTTY | O_CLOEXEC);
        if (o->fd < 0 || stream_attach(o) != 0) rc = failure(TM_EIO, path, strerror(errno));
    }
    if (rc != TM_OK) {
        if (o->fd >= 0) close(o->fd);
        free(o->target);
        free(o->path);
        free(o);
        return rc;
    }
    *out = o;
    return TM_OK;
}

FILE *tm_outfile_stream(tm_outfile *o)
{
    if (o->f != NULL) return o->f;
    o->fd = temp_create(o->target, &o->slot);
    if (o->fd < 0) {
        dir_failure(o->path, o->target, errno);
        return NULL;
    }
    if (stream_attach(o) != 0) {
        failure(TM_EIO, o->path, strerror(errno));
        close(o->fd);
        o->fd = -1;
        temp_release(o->slot, 1);
        o->slot = -1;
    }
    return o->f;
}

const char *tm_outfile_path(const tm_outfile *o) { return o->path; }

/* Makes a rename in target's directory durable. Best effort: the file is
 * complete and in place already, so a failure here is not reported. */
static void sync_dir(const char *target)
{
    char dir[PATH_MAX];
    dir_of(target, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static void release(tm_outfile *o)
{
    free(o->target);
    free(o->path);
    free(o);
}

int tm_outfile_commit(tm_outfile *o)
{
    int err = 0;
    if (o->f != NULL) {
        fflush(o->f);
        err = o->err;
        /* Devices and FIFOs have nothing to make durable (fsync fails on
         * some of them); a regular file must reach the disk before the
         * rename makes it the target. */
        if (!err && !o->direct && fsync(o->fd) != 0) err = errno;
        if (close(o->fd) != 0 && !err && errno != EINTR) err = errno;
        fclose(o->f); /* the descriptor is closed: this only frees the stream */
        if (!err && !o->direct && rename(temps[o->slot].path, o->target) != 0) err = errno;
        if (!err && !o->direct) sync_dir(o->target);
        temp_release(o->slot, err != 0);
    }
    int rc = err ? failure(TM_EIO, o->path, strerror(err)) : TM_OK;
    release(o);
    return rc;
}

void tm_outfile_abandon(tm_outfile *o)
{
    if (o == NULL) return;
    if (o->f != NULL) fclose(o->f);
    if (o->fd >= 0) close(o->fd);
    temp_release(o->slot, 1);
    release(o);
}
