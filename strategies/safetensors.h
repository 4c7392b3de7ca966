/* safetensors files (Hugging Face's format): an atomic writer and a strict reader.
 * Thread-safe: no shared state; an open file is read-only and may be shared. */
#ifndef TM_SAFETENSORS_H
#define TM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/outfile.h"

/* The reference implementation's limit on the JSON header. */
#define TM_ST_MAX_HEADER 100000000u

/* Element types of the format, named as in the header ("F32"). The sub-byte
 * ones (F4, F6_*) pack elements into bits and so only fill whole bytes for
 * some shapes. */
#define TM_ST_DTYPE_MAP(X)                                                     \
    X(BOOL, 8)                                                                 \
    X(U8, 8)                                                                   \
    X(I8, 8)                                                                   \
    X(F8_E5M2, 8)                                                              \
    X(F8_E4M3, 8)                                                              \
    X(F8_E8M0, 8)                                                              \
    X(I16, 16)                                                                 \
    X(U16, 16)                                                                 \
    X(F16, 16)                                                                 \
    X(BF16, 16)                                                                \
    X(I32, 32)                                                                 \
    X(U32, 32)                                                                 \
    X(F32, 32)                                                                 \
    X(F64, 64)                                                                 \
    X(I64, 64)                                                                 \
    X(U64, 64)                                                                 \
    X(C64, 64)                                                                 \
    X(F4, 4)                                                                   \
    X(F6_E2M3, 6)                                                              \
    X(F6_E3M2, 6)

typedef enum {
#define TM__ST_DTYPE_ENUM(name, bits) TM_ST_##name,
    TM_ST_DTYPE_MAP(TM__ST_DTYPE_ENUM)
#undef TM__ST_DTYPE_ENUM
    TM_ST_DTYPE_COUNT
} tm_st_dtype;

/* Header name of a dtype ("F32"), or "?" for a value outside the enum. */
const char *tm_st_dtype_name(tm_st_dtype dtype);
/* Bits per element of a dtype, or 0 for a value outside the enum. */
int tm_st_dtype_bits(tm_st_dtype dtype);

/* One tensor to write. Its data are shape's product elements, row-major, in
 * the host's byte order (the format is little-endian; so is every host we
 * build on, which safetensors.c asserts at compile time). */
typedef struct {
    const char *name;       /* UTF-8, unique, not "__metadata__" */
    tm_st_dtype dtype;
    int ndim;               /* 0 for a scalar */
    const uint64_t *shape;  /* (ndim,) */
    const void *data;       /* the bytes; may be NULL when there are none */
} tm_st_tensor;

/* One __metadata__ entry: the format allows only string values. */
typedef struct {
    const char *key;   /* UTF-8, unique */
    const char *value; /* UTF-8 */
} tm_st_meta;

/* Writes tensors and metadata into out (runtime/outfile.h), which the caller
 * then commits: a regular file is replaced whole or not at all. Tensors are
 * listed in the header in the given order; their data is laid out by
 * decreasing element size (stable), which with the header padded to 8 bytes
 * keeps every tensor naturally aligned, as the reference writer does.
 * Returns TM_EINVAL for bad arguments (nothing written), TM_EIO if the
 * stream cannot be made (write errors are the commit's), TM_EHOSTMEM. */
int tm_safetensors_write_to(tm_outfile *out, const tm_st_tensor *tensors, int n_tensors,
                            const tm_st_meta *meta, int n_meta);
/* The same into path, opened and committed here (tm_outfile_open's checks
 * and messages): path holds either its old content or the complete new
 * file, never a partial one. TM_EIO if any file operation fails (temporary
 * file removed, path untouched). */
int tm_safetensors_write(const char *path, const tm_st_tensor *tensors, int n_tensors,
                         const tm_st_meta *meta, int n_meta);

/* A tensor of an open file. */
typedef struct {
    const char *name;      /* NUL-terminated */
    tm_st_dtype dtype;
    int ndim;
    const uint64_t *shape; /* (ndim,) */
    const void *data;      /* nbytes raw little-endian bytes, possibly unaligned */
    size_t nbytes;
} tm_st_info;

typedef struct tm_st_file tm_st_file;

/* Reads and validates the whole file at path: header length, JSON syntax,
 * every tensor's dtype, shape and data_offsets, and that the tensors tile the
 * data section exactly (no gap, overlap or trailing byte), as the format
 * requires. Header padding, tensor order and __metadata__ are free.
 * Returns TM_OK with *out set; TM_EIO if path cannot be read; TM_EFORMAT
 * naming the file and the first problem; TM_EHOSTMEM. */
int tm_safetensors_open(tm_st_file **out, const char *path);
/* Frees an open file and everything obtained from it; NULL is a no-op. */
void tm_safetensors_close(tm_st_file *f);

/* Number of tensors, and the i-th in header order (0 <= i < count). */
int tm_st_count(const tm_st_file *f);
const tm_st_info *tm_st_at(const tm_st_file *f, int i);
/* The tensor called name, or NULL. O(log n). */
const tm_st_info *tm_st_find(const tm_st_file *f, const char *name);

/* Number of __metadata__ entries, the i-th (any order), and the value for key
 * (NULL if absent). */
int tm_st_meta_count(const tm_st_file *f);
tm_st_meta tm_st_meta_at(const tm_st_file *f, int i);
const char *tm_st_meta_get(const tm_st_file *f, const char *key);

/* Copies the F32 tensor name into dst after checking that it exists, is F32
 * and has exactly the expected shape. Returns TM_EFORMAT on any mismatch, with
 * a message like "ckpt.safetensors: layers.1.weight: shape [128, 256] in file,
 * model expects [128, 512]". */
int tm_st_read_f32(const tm_st_file *f, const char *name, float *dst /* (prod(shape),) */,
                   int ndim, const uint64_t *shape /* (ndim,) */);

#endif
