/* IDX files (the MNIST / Fashion-MNIST format, gzip-compressed or plain) and the
 * host-memory dataset built from them. Thread-safe: no shared state; a loaded
 * dataset is read-only after load and normalisation, so threads may share it. */
#ifndef TM_IDX_H
#define TM_IDX_H

#include <stddef.h>
#include <stdint.h>

/* Debian's dataset-fashion-mnist package puts the files here. */
#define TM_DATASET_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define TM_DATASET_CLASSES 10
/* Larger files are refused: the real ones are 47 MB at most, and a corrupt
 * header must not make us try to allocate gigabytes. */
#define TM_IDX_MAX_BYTES (1u << 30)
#define TM_IDX_MAX_DIMS 3

/* One IDX array of unsigned bytes. */
typedef struct {
    uint8_t *data;                   /* (count,) row-major */
    int ndim;                        /* 1 for labels, 3 for images */
    uint32_t dims[TM_IDX_MAX_DIMS];  /* first ndim are used */
    size_t count;                    /* product of dims */
} tm_idx;

/* Reads path, which must hold an unsigned-byte IDX array of ndim dimensions
 * (magic 0x00000800 + ndim) and exactly as many data bytes as the dimensions
 * say. Returns TM_EIO if path cannot be opened, TM_EFORMAT naming the file
 * and the problem (bad magic, zero or oversized dimensions, truncated or
 * corrupt gzip data, trailing data), TM_EINVAL for ndim outside 1..3,
 * TM_EHOSTMEM. On error *out is left empty. */
int tm_idx_read(tm_idx *out, const char *path, int ndim);
/* Frees out's data and empties it; an empty tm_idx is fine. */
void tm_idx_free(tm_idx *a);

/* Images with their labels, in host memory (plain malloc: the dataset lives
 * outside every device arena and is staged into devices per micro-batch). */
typedef struct {
    float *images;   /* (n, dim) pixel / 255, in [0, 1] until standardised */
    uint8_t *labels; /* (n,) each < n_classes */
    int n;           /* number of examples */
    int rows, cols;  /* image size (28 x 28 for Fashion-MNIST) */
    int dim;         /* rows * cols: the model's input width */
    int n_classes;   /* TM_DATASET_CLASSES */
} tm_dataset;

/* Loads dir/<split>-images-idx3-ubyte.gz and dir/<split>-labels-idx1-ubyte.gz
 * (split is "train" or "t10k") and checks that the counts agree and every
 * label is a class. Errors as tm_idx_read; on error *out is left empty. */
int tm_dataset_load(tm_dataset *out, const char *dir, const char *split);
/* Frees the dataset's arrays and empties it; an empty dataset is fine. */
void tm_dataset_free(tm_dataset *d);

/* Mean and (population) standard deviation of every pixel of every image,
 * one scalar each, accumulated in double. */
void tm_dataset_stats(const tm_dataset *d, double *mean, double *std);
/* Replaces every pixel x by (x - mean) / std. Returns TM_EINVAL unless std is
 * positive and finite. */
int tm_dataset_standardize(tm_dataset *d, double mean, double std);

/* Synthetic data for any model shape: n samples of dim inputs, each
 * uniform with mean 0 and variance 1, from PCG32 stream 2000 + split of
 * seed (split 0: training set, 1: test set); labels are the argmax of a
 * random linear "teacher" W x (W from stream 1999, shared by both splits),
 * so a model can learn them. rows = 1, cols = dim. TM_EINVAL for n or dim
 * below 1 or classes outside 2 .. TM_SYNTHETIC_MAX_CLASSES, TM_EHOSTMEM. */
#define TM_SYNTHETIC_MAX_CLASSES 256
int tm_dataset_synthetic(tm_dataset *out, int n, int dim, int classes, uint64_t seed, int split);

/* Fashion-MNIST's name for class c ("T-shirt/top", ...), or "?" out of range. */
const char *tm_dataset_class_name(int c);

#endif
