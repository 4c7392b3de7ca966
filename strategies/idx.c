#include "strategies/idx.h"

#include "runtime/status.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* IDX element type byte for unsigned bytes, the only one the datasets use. */
#define IDX_UBYTE 0x08
/* Decompressing in pieces keeps the byte count of a truncated file close to
 * the truth: zlib drops the count of a read that hits the broken end. */
#define READ_CHUNK (1u << 16)

/* Reads up to n bytes; *got is how many arrived before the end of the file
 * or an error. Returns TM_EIO if the file itself could not be read; otherwise
 * TM_OK with *zerr the zlib error code (Z_OK at a clean end) and *zmsg its
 * message. */
static int read_some(gzFile gz, const char *path, uint8_t *buf, size_t n, size_t *got, int *zerr,
                     const char **zmsg)
{
    *got = 0;
    while (*got < n) {
        unsigned want = n - *got < READ_CHUNK ? (unsigned)(n - *got) : READ_CHUNK;
        int k = gzread(gz, buf + *got, want);
        if (k > 0) *got += (size_t)k;
        if ((unsigned)k != want) break;
    }
    int err = errno;
    *zmsg = gzerror(gz, zerr);
    if (*zerr == Z_ERRNO) return tm_error(TM_EIO, "%s: read failed: %s", path, strerror(err));
    /* zlib names the file "<fd:N>" since we opened it; our messages already
     * name it. */
    const char *sep = strncmp(*zmsg, "<fd:", 4) == 0 ? strstr(*zmsg, ": ") : NULL;
    if (sep) *zmsg = sep + 2;
    return TM_OK;
}

/* The tail of a message about a short read: " (zlib: ...)" when zlib saw an
 * error, nothing when the file simply ended. */
static const char *zlib_note(char *buf, size_t size, int err, const char *zmsg)
{
    if (err == Z_OK)
        buf[0] = '\0';
    else
        snprintf(buf, size, " (zlib: %s)", zmsg);
    return buf;
}

static int read_body(tm_idx *a, gzFile gz, const char *path, int ndim)
{
    uint8_t head[4 + 4 * TM_IDX_MAX_DIMS];
    size_t got;
    const char *zmsg;
    char note[160];
    int err;
    TM_CHECK(read_some(gz, path, head, 4, &got, &err, &zmsg));
    if (got < 4)
        return tm_error(TM_EFORMAT, "%s: truncated: %zu of the 4 magic bytes%s", path, got,
                        zlib_note(note, sizeof note, err, zmsg));
    uint32_t magic =
        (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
    uint32_t want = IDX_UBYTE << 8 | (uint32_t)ndim;
    if (head[0] != 0 || head[1] != 0)
        return tm_error(TM_EFORMAT, "%s: not an IDX file: magic 0x%08x, expected 0x%08x", path,
                        magic, want);
    if (head[2] != IDX_UBYTE)
        return tm_error(TM_EFORMAT, "%s: element type 0x%02x is not unsigned byte (0x08)", path,
                        head[2]);
    if (head[3] != ndim)
        return tm_error(TM_EFORMAT,
                        "%s: %d dimensions, expected %d (magic 0x%08x, expected 0x%08x)", path,
                        head[3], ndim, magic, want);

    TM_CHECK(read_some(gz, path, head + 4, 4 * (size_t)ndim, &got, &err, &zmsg));
    if (got < 4 * (size_t)ndim)
        return tm_error(TM_EFORMAT, "%s: truncated: %zu of the %d dimension bytes%s", path, got,
                        4 * ndim, zlib_note(note, sizeof note, err, zmsg));
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        const uint8_t *d = head + 4 + 4 * i;
        a->dims[i] = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
        if (a->dims[i] == 0) return tm_error(TM_EFORMAT, "%s: dimension %d is zero", path, i);
        count *= a->dims[i]; /* at most 2^30 * 2^32 after the check below: no overflow */
        if (count > TM_IDX_MAX_BYTES)
            return tm_error(TM_EFORMAT,
                            "%s: dimensions hold more than the %u-byte limit (dimension %d is %u)",
                            path, TM_IDX_MAX_BYTES, i, a->dims[i]);
    }
    a->ndim = ndim;
    a->count = (size_t)count;
    a->data = malloc(a->count);
    if (a->data == NULL)
        return tm_error(TM_EHOSTMEM, "%s: out of host memory for %zu bytes", path, a->count);
    TM_CHECK(read_some(gz, path, a->data, a->count, &got, &err, &zmsg));
    if (got < a->count)
        return tm_error(TM_EFORMAT, "%s: truncated: expected %zu bytes of data, got %zu%s", path,
                        a->count, got, zlib_note(note, sizeof note, err, zmsg));
    /* One more byte must hit the end: it also makes zlib check the gzip
     * trailer (CRC and length), which it reads only past the last data byte. */
    uint8_t extra;
    TM_CHECK(read_some(gz, path, &extra, 1, &got, &err, &zmsg));
    if (got > 0)
        return tm_error(TM_EFORMAT, "%s: trailing data after the %zu bytes the header declares",
                        path, a->count);
    if (err != Z_OK)
        return tm_error(TM_EFORMAT, "%s: corrupt or truncated gzip data (zlib: %s)", path, zmsg);
    return TM_OK;
}

int tm_idx_read(tm_idx *out, const char *path, int ndim)
{
    memset(out, 0, sizeof *out);
    if (ndim < 1 || ndim > TM_IDX_MAX_DIMS)
        return tm_error(TM_EINVAL, "%s: ndim %d not in 1..3", path, ndim);
    /* Opening the descriptor ourselves gives a reliable errno for the
     * message; gzopen does not promise one. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tm_error(TM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        close(fd);
        return tm_error(TM_EIO, "%s: is a directory", path);
    }
    gzFile gz = gzdopen(fd, "rb");
    if (gz == NULL) {
        close(fd);
        return tm_error(TM_EHOSTMEM, "%s: out of host memory for the gzip reader", path);
    }
    gzbuffer(gz, 1u << 17);
    int st = read_body(out, gz, path, ndim);
    gzclose(gz);
    if (st != TM_OK) tm_idx_free(out);
    return st;
}

void tm_idx_free(tm_idx *a)
{
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* Training reads random rows of the images every step; in 4 KiB pages each
 * row costs a TLB miss (measured: the batch copy took 14-35% of a training
 * step). 2 MiB pages, where the kernel grants them, make it 3x cheaper.
 * The block stays free()-able. */
static float *host_floats(size_t count)
{
    const size_t huge = (size_t)2 << 20;
    size_t bytes = (count * sizeof(float) + huge - 1) / huge * huge;
    float *p = aligned_alloc(huge, bytes);
    if (p != NULL) madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

int tm_dataset_load(tm_dataset *out, const char *dir, const char *split)
{
    memset(out, 0, sizeof *out);
    size_t len = strlen(dir) + strlen(split) + 32;
    char *img_path = malloc(len), *lab_path = malloc(len);
    tm_idx img = {0}, lab = {0};
    int st = TM_OK;
    if (img_path == NULL || lab_path == NULL) {
        st = tm_error(TM_EHOSTMEM, "out of host memory");
        goto done;
    }
    snprintf(img_path, len, "%s/%s-images-idx3-ubyte.gz", dir, split);
    snprintf(lab_path, len, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    if ((st = tm_idx_read(&img, img_path, 3)) != TM_OK) goto done;
    if ((st = tm_idx_read(&lab, lab_path, 1)) != TM_OK) goto done;
    if (img.dims[0] != lab.dims[0]) {
        st = tm_error(TM_EFORMAT, "%s holds %u images but %s holds %u labels", img_path,
                      img.dims[0], lab_path, lab.dims[0]);
        goto done;
    }
    for (size_t i = 0; i < lab.count; i++)
        if (lab.data[i] >= TM_DATASET_CLASSES) {
            st = tm_error(TM_EFORMAT, "%s: label %u of example %zu is not a class (0..%d)",
                          lab_path, lab.data[i], i, TM_DATASET_CLASSES - 1);
            goto done;
        }
    out->images = host_floats(img.count);
    if (out->images == NULL) {
        st = tm_error(TM_EHOSTMEM, "%s: out of host memory for %zu floats", img_path, img.count);
        goto done;
    }
    /* A table makes every pixel exactly the correctly rounded p / 255. */
    float scale[256];
    for (int p = 0; p < 256; p++) scale[p] = (float)p / 255.0f;
    for (size_t i = 0; i < img.count; i++) out->images[i] = scale[img.data[i]];
    out->labels = lab.data;
    lab.data = NULL;
    out->n = (int)img.dims[0];
    out->rows = (int)img.dims[1];
    out->cols = (int)img.dims[2];
    out->dim = out->rows * out->cols;
    out->n_classes = TM_DATASET_CLASSES;
done:
    tm_idx_free(&img);
    tm_idx_free(&lab);
    free(img_path);
    free(lab_path);
    return st;
}

void tm_dataset_free(tm_dataset *d)
{
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

void tm_dataset_stats(const tm_dataset *d, double *mean, double *std)
{
    size_t n = (size_t)d->n * (size_t)d->dim;
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) sum += d->images[i];
    double m = n ? sum / (double)n : 0;
    /* Two passes: the sum of squared deviations does not cancel the way
     * E[x^2] - E[x]^2 does. */
    for (size_t i = 0; i < n; i++) sq += (d->images[i] - m) * (d->images[i] - m);
    *mean = m;
    *std = n ? sqrt(sq / (double)n) : 0;
}

int tm_dataset_standardize(tm_dataset *d, double mean, double std)
{
    if (!(std > 0) || !isfinite(std) || !isfinite(mean))
        return tm_error(TM_EINVAL, "standardize: mean %g, std %g: std must be positive and finite",
                        mean, std);
    size_t n = (size_t)d->n * (size_t)d->dim;
    for (size_t i = 0; i < n; i++) d->images[i] = (float)((d->images[i] - mean) / std);
    return TM_OK;
}

const char *tm_dataset_class_name(int c)
{
    static const char *const names[TM_DATASET_CLASSES] = {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot",
    };
    return c >= 0 && c < TM_DATASET_CLASSES ? names[c] : "?";
}
