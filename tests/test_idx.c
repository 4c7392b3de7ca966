/* IDX reader and dataset loader: good files, every kind of broken file (made
 * here with zlib), and the real Fashion-MNIST of the Debian package (which
 * `make test` installs, so its absence is a failure, not a skip). */
#include <criterion/criterion.h>

#include "runtime/status.h"
#include "strategies/idx.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/tm_test_idx_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

TestSuite(idx, .init = make_dir, .fini = remove_dir);

static const char *in_dir(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* An IDX image in memory: magic bytes, big-endian dims, then data. */
static size_t make_idx(uint8_t *buf, uint8_t type, int ndim, const uint32_t *dims,
                       const uint8_t *data, size_t n)
{
    size_t k = 0;
    buf[k++] = 0;
    buf[k++] = 0;
    buf[k++] = type;
    buf[k++] = (uint8_t)ndim;
    for (int i = 0; i < ndim; i++)
        for (int s = 24; s >= 0; s -= 8) buf[k++] = (uint8_t)(dims[i] >> s);
    if (n) memcpy(buf + k, data, n);
    return k + n;
}

static void write_gz(const char *path, const void *buf, size_t n)
{
    gzFile gz = gzopen(path, "wb");
    cr_assert_not_null(gz);
    if (n) cr_assert_eq(gzwrite(gz, buf, (unsigned)n), (int)n);
    cr_assert_eq(gzclose(gz), Z_OK);
}

static void write_plain(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(buf, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

static size_t read_plain(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* A 2x3x4 image file with pixel i = 10 * i. */
static size_t images_2x3x4(uint8_t *buf)
{
    uint8_t px[24];
    for (int i = 0; i < 24; i++) px[i] = (uint8_t)(10 * i);
    return make_idx(buf, 0x08, 3, (uint32_t[]){2, 3, 4}, px, 24);
}

static void expect_format_error(const char *path, int ndim, const char *needle)
{
    tm_idx a;
    int st = tm_idx_read(&a, path, ndim);
    cr_expect_eq(st, TM_EFORMAT, "%s: status %s (%s)", path, tm_err_name(st), tm_error_message());
    cr_expect_not_null(strstr(tm_error_message(), needle), "message \"%s\" lacks \"%s\"",
                       tm_error_message(), needle);
    cr_expect_null(a.data);
}

Test(idx, reads_gzip_and_plain_files)
{
    uint8_t buf[64];
    size_t n = images_2x3x4(buf);
    write_gz(in_dir("img.gz"), buf, n);
    write_plain(in_dir("img.raw"), buf, n);
    char keep[2][512];
    snprintf(keep[0], sizeof keep[0], "%s", in_dir("img.gz"));
    snprintf(keep[1], sizeof keep[1], "%s", in_dir("img.raw"));
    for (int f = 0; f < 2; f++) {
        tm_idx a;
        cr_assert_eq(tm_idx_read(&a, keep[f], 3), TM_OK, "%s", tm_error_message());
        cr_expect_eq(a.ndim, 3);
        cr_expect_eq(a.dims[0], 2);
        cr_expect_eq(a.dims[1], 3);
        cr_expect_eq(a.dims[2], 4);
        cr_expect_eq(a.count, 24);
        for (int i = 0; i < 24; i++) cr_expect_eq(a.data[i], 10 * i, "%s: pixel %d", keep[f], i);
        tm_idx_free(&a);
        cr_expect_null(a.data);
    }
}

Test(idx, data_shorter_than_header_says)
{
    uint8_t buf[64];
    size_t n = images_2x3x4(buf);
    write_gz(in_dir("short.gz"), buf, n - 5);
    expect_format_error(in_dir("short.gz"), 3, "truncated: expected 24 bytes of data, got 19");
}

Test(idx, data_longer_than_header_says)
{
    uint8_t buf[64];
    size_t n = images_2x3x4(buf);
    buf[n] = 7;
    write_gz(in_dir("long.gz"), buf, n + 1);
    expect_format_error(in_dir("long.gz"), 3, "trailing data after the 24 bytes");
}

Test(idx, wrong_magic_type_and_rank)
{
    uint8_t buf[64];
    size_t n = images_2x3x4(buf);
    buf[0] = 0x12;
    write_gz(in_dir("magic.gz"), buf, n);
    expect_format_error(in_dir("magic.gz"), 3,
                        "not an IDX file: magic 0x12000803, expected 0x00000803");
    buf[0] = 0;
    buf[2] = 0x0D; /* float32 */
    write_gz(in_dir("type.gz"), buf, n);
    expect_format_error(in_dir("type.gz"), 3, "element type 0x0d is not unsigned byte");
    buf[2] = 0x08;
    write_gz(in_dir("rank.gz"), buf, n);
    expect_format_error(in_dir("rank.gz"), 1, "3 dimensions, expected 1");
}

Test(idx, zero_and_oversized_dimensions)
{
    uint8_t buf[64];
    size_t n = make_idx(buf, 0x08, 3, (uint32_t[]){2, 0, 4}, NULL, 0);
    write_gz(in_dir("zero.gz"), buf, n);
    expect_format_error(in_dir("zero.gz"), 3, "dimension 1 is zero");
    /* 60000 x 28000 x 28000 bytes would be 47 TB: refused before any malloc. */
    n = make_idx(buf, 0x08, 3, (uint32_t[]){60000, 28000, 28000}, NULL, 0);
    write_gz(in_dir("huge.gz"), buf, n);
    expect_format_error(in_dir("huge.gz"), 3, "byte limit");
    n = make_idx(buf, 0x08, 3, (uint32_t[]){0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, NULL, 0);
    write_gz(in_dir("max.gz"), buf, n);
    expect_format_error(in_dir("max.gz"), 3, "byte limit");
}

Test(idx, truncated_header)
{
    uint8_t buf[64];
    images_2x3x4(buf);
    write_gz(in_dir("h2.gz"), buf, 2);
    expect_format_error(in_dir("h2.gz"), 3, "truncated: 2 of the 4 magic bytes");
    write_gz(in_dir("h9.gz"), buf, 9);
    expect_format_error(in_dir("h9.gz"), 3, "truncated: 5 of the 12 dimension bytes");
    write_plain(in_dir("empty"), buf, 0);
    expect_format_error(in_dir("empty"), 3, "truncated: 0 of the 4 magic bytes");
}

Test(idx, missing_file_is_an_io_error)
{
    tm_idx a;
    cr_expect_eq(tm_idx_read(&a, in_dir("nope.gz"), 1), TM_EIO);
    cr_expect_not_null(
        strstr(tm_error_message(), "nope.gz: cannot open: No such file or directory"), "%s",
        tm_error_message());
    cr_expect_eq(tm_idx_read(&a, dir, 1), TM_EIO, "a directory is not a readable file");
}

Test(idx, garbage_file)
{
    uint8_t junk[300];
    srand(1);
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(rand() >> 7);
    junk[0] = 0x42;
    write_plain(in_dir("junk"), junk, sizeof junk);
    expect_format_error(in_dir("junk"), 3, "not an IDX file");
    /* A gzip magic number followed by junk is a broken stream. */
    junk[0] = 0x1f;
    junk[1] = 0x8b;
    junk[2] = 8;
    junk[3] = 0;
    write_plain(in_dir("junk.gz"), junk, sizeof junk);
    tm_idx a;
    cr_expect_eq(tm_idx_read(&a, in_dir("junk.gz"), 3), TM_EFORMAT, "%s", tm_error_message());
}

/* Every prefix of a gzip file is an error (never a crash, never success). */
Test(idx, every_truncation_of_the_gzip_stream_fails)
{
    uint8_t buf[64], gz[256];
    size_t n = images_2x3x4(buf);
    write_gz(in_dir("full.gz"), buf, n);
    size_t len = read_plain(in_dir("full.gz"), gz, sizeof gz);
    cr_assert_gt(len, 20);
    for (size_t cut = 0; cut < len; cut++) {
        write_plain(in_dir("cut.gz"), gz, cut);
        tm_idx a;
        int st = tm_idx_read(&a, in_dir("cut.gz"), 3);
        cr_expect_eq(st, TM_EFORMAT, "cut at %zu of %zu: %s", cut, len, tm_err_name(st));
    }
    /* Losing only the gzip trailer still names zlib's complaint. */
    write_plain(in_dir("cut.gz"), gz, len - 4);
    expect_format_error(in_dir("cut.gz"), 3, "zlib: unexpected end of file");
}

/* Flipping any one byte gives an error or, where gzip ignores the byte (its
 * header's time stamp), the original data: the CRC catches everything else. */
Test(idx, every_corrupted_byte_is_caught)
{
    uint8_t buf[64], gz[256], bad[256];
    size_t n = images_2x3x4(buf);
    write_gz(in_dir("full.gz"), buf, n);
    size_t len = read_plain(in_dir("full.gz"), gz, sizeof gz);
    int caught = 0;
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, gz, len);
        bad[i] ^= 0x5A;
        write_plain(in_dir("bad.gz"), bad, len);
        tm_idx a;
        int st = tm_idx_read(&a, in_dir("bad.gz"), 3);
        cr_expect(st == TM_OK || st == TM_EFORMAT, "byte %zu: %s", i, tm_err_name(st));
        if (st == TM_OK) {
            cr_expect_eq(a.count, 24, "byte %zu", i);
            cr_expect_arr_eq(a.data, buf + 16, 24, "byte %zu flipped yet accepted with other data",
                             i);
        } else {
            caught++;
        }
        tm_idx_free(&a);
    }
    cr_expect_gt(caught, (int)len - 10, "only %d of %zu flips caught", caught, len);
    memcpy(bad, gz, len);
    bad[len - 8] ^= 1; /* the first byte of the CRC-32 of the data */
    write_plain(in_dir("crc.gz"), bad, len);
    expect_format_error(in_dir("crc.gz"), 3, "incorrect data check");
}

/* Writes a dataset pair: n images of r x c with pixel (i, j) = (i * 31 + j)
 * mod 256 and label i mod 10, into dir with the given split name. */
static void write_pair(const char *split, uint32_t n, uint32_t r, uint32_t c, uint32_t n_labels,
                       uint8_t bad_label)
{
    size_t count = (size_t)n * r * c;
    uint8_t *px = malloc(count), *buf = malloc(count + 64), lab[256];
    for (size_t k = 0; k < count; k++) px[k] = (uint8_t)((k / (r * c)) * 31 + k % (r * c));
    for (uint32_t i = 0; i < n_labels; i++) lab[i] = (uint8_t)(i % 10);
    if (bad_label) lab[n_labels - 1] = bad_label;
    char name[64];
    snprintf(name, sizeof name, "%s-images-idx3-ubyte.gz", split);
    write_gz(in_dir(name), buf, make_idx(buf, 0x08, 3, (uint32_t[]){n, r, c}, px, count));
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte.gz", split);
    write_gz(in_dir(name), buf, make_idx(buf, 0x08, 1, &n_labels, lab, n_labels));
    free(px);
    free(buf);
}

Test(idx, dataset_scales_pixels_and_keeps_labels)
{
    write_pair("train", 7, 3, 5, 7, 0);
    tm_dataset d;
    cr_assert_eq(tm_dataset_load(&d, dir, "train"), TM_OK, "%s", tm_error_message());
    cr_expect_eq(d.n, 7);
    cr_expect_eq(d.rows, 3);
    cr_expect_eq(d.cols, 5);
    cr_expect_eq(d.dim, 15);
    cr_expect_eq(d.n_classes, 10);
    for (int i = 0; i < 7; i++) {
        cr_expect_eq(d.labels[i], i % 10);
        for (int j = 0; j < 15; j++) {
            float want = (float)((i * 31 + j) % 256) / 255.0f;
            cr_expect_eq(d.images[i * 15 + j], want, "pixel (%d, %d)", i, j);
        }
    }
    tm_dataset_free(&d);
    cr_expect_null(d.images);
}

Test(idx, dataset_rejects_mismatches)
{
    tm_dataset d;
    write_pair("count", 7, 3, 5, 6, 0);
    cr_expect_eq(tm_dataset_load(&d, dir, "count"), TM_EFORMAT);
    cr_expect_not_null(strstr(tm_error_message(), "holds 7 images but"), "%s", tm_error_message());
    cr_expect_not_null(strstr(tm_error_message(), "holds 6 labels"), "%s", tm_error_message());
    write_pair("label", 7, 3, 5, 7, 10);
    cr_expect_eq(tm_dataset_load(&d, dir, "label"), TM_EFORMAT);
    cr_expect_not_null(strstr(tm_error_message(), "label 10 of example 6 is not a class"), "%s",
                       tm_error_message());
    cr_expect_null(d.images);
    cr_expect_eq(tm_dataset_load(&d, dir, "t10k"), TM_EIO);
    cr_expect_not_null(strstr(tm_error_message(), "t10k-images-idx3-ubyte.gz: cannot open"), "%s",
                       tm_error_message());
}

Test(idx, stats_and_standardize)
{
    float px[6] = {0, 0.5f, 1, 0.25f, 0.75f, 0.5f};
    tm_dataset d = {.images = px, .n = 2, .rows = 1, .cols = 3, .dim = 3};
    double mean, std;
    tm_dataset_stats(&d, &mean, &std);
    cr_expect_float_eq(mean, 0.5, 1e-12);
    cr_expect_float_eq(std, sqrt(0.625 / 6), 1e-12); /* deviations^2 sum to 0.625 */
    cr_assert_eq(tm_dataset_standardize(&d, mean, std), TM_OK);
    for (int i = 0; i < 6; i++)
        cr_expect_float_eq(px[i], (float)(((double[]){0, 0.5, 1, 0.25, 0.75, 0.5})[i] - 0.5) / std,
                           1e-6, "pixel %d", i);
    tm_dataset_stats(&d, &mean, &std);
    cr_expect_float_eq(mean, 0.0, 1e-7);
    cr_expect_float_eq(std, 1.0, 1e-6);
    cr_expect_eq(tm_dataset_standardize(&d, 0.5, 0.0), TM_EINVAL);
    cr_expect_eq(tm_dataset_standardize(&d, 0.5, NAN), TM_EINVAL);
    cr_expect_str_eq(tm_dataset_class_name(9), "Ankle boot");
    cr_expect_str_eq(tm_dataset_class_name(10), "?");
}

static void check_real_split(const char *split, int n, int per_class)
{
    tm_dataset d;
    cr_assert_eq(tm_dataset_load(&d, TM_DATASET_DEFAULT_DIR, split), TM_OK, "%s",
                 tm_error_message());
    cr_expect_eq(d.n, n);
    cr_expect_eq(d.rows, 28);
    cr_expect_eq(d.cols, 28);
    cr_expect_eq(d.dim, 784);
    int hist[10] = {0};
    for (int i = 0; i < d.n; i++) {
        cr_assert_lt(d.labels[i], 10);
        hist[d.labels[i]]++;
    }
    for (int c = 0; c < 10; c++) cr_expect_eq(hist[c], per_class, "%s: class %d", split, c);
    float lo = 1, hi = 0;
    for (size_t i = 0; i < (size_t)d.n * 784; i++) {
        lo = fminf(lo, d.images[i]);
        hi = fmaxf(hi, d.images[i]);
    }
    cr_expect_eq(lo, 0.0f);
    cr_expect_eq(hi, 1.0f);
    if (strcmp(split, "train") == 0) {
        cr_expect_eq(d.labels[0], 9, "the first training image is an ankle boot");
        double mean, std;
        tm_dataset_stats(&d, &mean, &std);
        /* The widely quoted Fashion-MNIST statistics. */
        cr_expect_float_eq(mean, 0.2860, 1e-4, "mean %f", mean);
        cr_expect_float_eq(std, 0.3530, 1e-4, "std %f", std);
    }
    tm_dataset_free(&d);
}

Test(idx, real_fashion_mnist, .timeout = 120)
{
    struct stat sb;
    cr_assert_eq(stat(TM_DATASET_DEFAULT_DIR, &sb), 0,
                 "%s is absent: install dataset-fashion-mnist (scripts/deps.sh does)",
                 TM_DATASET_DEFAULT_DIR);
    check_real_split("train", 60000, 6000);
    check_real_split("t10k", 10000, 1000);
}
