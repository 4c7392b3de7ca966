/* Training data as the trainer sees it — samples of `rows` input rows with
 * one integer target per row — over images (strategies/idx.h: a sample is
 * an image and its label) or text (a sample is a window of T + 1 bytes: its
 * first T bytes are the inputs, its last T the targets), and the text
 * corpora: files read whole and concatenated, or a seeded synthetic source.
 * Thread-safety: a tm_data is read-only once made; threads may share it. */
#ifndef TM_DATA_H
#define TM_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "strategies/idx.h"

typedef enum { TM_DATA_IMAGES, TM_DATA_TEXT } tm_data_kind;

typedef struct {
    tm_data_kind kind;
    int n;                  /* samples */
    int rows;               /* input rows per sample: 1 (image), T (window) */
    int width;              /* 4-byte input elements per row: pixels (float),
                               or one byte value (int32) */
    int n_classes;          /* targets lie in [0, n_classes) */
    const tm_dataset *images; /* TM_DATA_IMAGES */
    const uint8_t *text;    /* TM_DATA_TEXT: window i is text[i T .. i T + T] */
    size_t text_len;
} tm_data;

/* A view of an image set (not copied: it must outlive the view). */
void tm_data_images(tm_data *d, const tm_dataset *images);
/* The windows of T + 1 bytes at stride T over text[0 .. len): floor((len -
 * 1) / T) of them (not copied). TM_EINVAL, naming `what`, when there is not
 * even one. */
int tm_data_text(tm_data *d, const uint8_t *text, size_t len, int T, const char *what);
/* The first n samples of d (n <= d->n). */
tm_data tm_data_head(const tm_data *d, int n);

/* Sample i's input rows into dst (rows x width elements: floats for
 * images, int32 byte values for text). */
void tm_data_input(const tm_data *d, int i, void *dst);
/* Sample i's targets (rows of them) into dst. */
void tm_data_targets(const tm_data *d, int i, int *dst);

/* Debian's fortunes package puts its files here. */
#define TM_CORPUS_DEFAULT_DIR "/usr/share/games/fortunes"
#define TM_CORPUS_MAX_BYTES ((size_t)1 << 30)

/* A text corpus in host memory, and what identifies it in checkpoints. */
typedef struct {
    uint8_t *bytes;
    size_t len;
    char *files;     /* the files' names, comma-separated (or "synthetic:...") */
    uint64_t hash;   /* FNV-1a 64 of the bytes */
} tm_corpus;

/* Reads `spec`, a comma-separated list of files, or (spec NULL) every
 * regular file of TM_CORPUS_DEFAULT_DIR that is not a .dat index and not a
 * symlink, sorted by name bytewise; concatenates them. TM_EIO for a file
 * that cannot be read (missing, a directory), TM_EINVAL for an empty
 * corpus or a file past TM_CORPUS_MAX_BYTES in all, TM_EHOSTMEM. The
 * message names the file. */
int tm_corpus_load(tm_corpus *c, const char *spec);
/* len bytes from a random order-1 Markov source (each byte value has a few
 * likely successors), from PCG32 stream 3000 + split of seed: text whose
 * loss a model can lower. */
int tm_corpus_synthetic(tm_corpus *c, size_t len, uint64_t seed, int split);
void tm_corpus_free(tm_corpus *c);

#endif
