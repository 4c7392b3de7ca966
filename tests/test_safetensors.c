/* safetensors writer and reader: round trips, hand-written files the reference
 * accepts, every corruption we can name, and atomic replacement. */
#include <criterion/criterion.h>

#include "runtime/status.h"
#include "strategies/safetensors.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/tm_test_st_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

/* Removes dir and what is in it (one level of subdirectories). */
static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        if (unlink(p) != 0) remove_tree(p);
    }
    closedir(d);
    rmdir(path);
}

static void remove_dir(void) { remove_tree(dir); }

TestSuite(safetensors, .init = make_dir, .fini = remove_dir);

static char *in_dir(char *buf, const char *name)
{
    snprintf(buf, 512, "%s/%s", dir, name);
    return buf;
}

static size_t slurp(const char *path, unsigned char **out)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    cr_assert_eq(fread(*out, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return (size_t)n;
}

static void spit(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(buf, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* A file made of an explicit header length, header text and data bytes. */
static void write_raw(const char *path, uint64_t hlen, const char *header, size_t header_bytes,
                      const void *data, size_t n)
{
    unsigned char *b = malloc(8 + header_bytes + n + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + 8, header, header_bytes);
    if (n) memcpy(b + 8 + header_bytes, data, n);
    spit(path, b, 8 + header_bytes + n);
    free(b);
}

static void write_header(const char *path, const char *header, size_t data_bytes)
{
    unsigned char *data = calloc(data_bytes + 1, 1);
    write_raw(path, strlen(header), header, strlen(header), data, data_bytes);
    free(data);
}

/* Count of files in dir whose name holds ".tmp.": leftovers of a write. */
static int leftovers(const char *where)
{
    DIR *d = opendir(where);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

Test(safetensors, round_trip)
{
    float w[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 7}, b[4] = {0.25f, 0.5f, 0.75f, 1}, s = 42;
    int64_t step[3] = {INT64_MAX, -1, 12345678901LL};
    uint8_t rng[5] = {1, 2, 3, 254, 255};
    const tm_st_tensor t[] = {
        {"rng", TM_ST_U8, 1, (uint64_t[]){5}, rng},
        {"layers.0.weight", TM_ST_F32, 2, (uint64_t[]){2, 3}, w},
        {"layers.0.bias", TM_ST_F32, 1, (uint64_t[]){4}, b},
        {"optimizer.t", TM_ST_I64, 1, (uint64_t[]){3}, step},
        {"scalar", TM_ST_F32, 0, NULL, &s},
        {"empty", TM_ST_F32, 2, (uint64_t[]){0, 3}, NULL},
    };
    const tm_st_meta m[] = {{"step", "17"}, {"odd \"key\"\\", "line\nbreak\ttab \xc3\xa9 \x01"}};
    char path[512];
    in_dir(path, "ckpt.safetensors");
    cr_assert_eq(tm_safetensors_write(path, t, 6, m, 2), TM_OK, "%s", tm_error_message());
    cr_expect_eq(leftovers(dir), 0);

    unsigned char *raw;
    size_t size = slurp(path, &raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
    cr_expect_eq(hlen % 8, 0, "header padded to 8 bytes");
    cr_expect_eq(raw[8], '{');
    cr_expect_eq(size, 8 + hlen + 5 + 24 + 16 + 24 + 4);
    free(raw);

    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK, "%s", tm_error_message());
    cr_assert_eq(tm_st_count(f), 6);
    for (int i = 0; i < 6; i++) {
        const tm_st_info *a = tm_st_at(f, i);
        cr_expect_str_eq(a->name, t[i].name, "header order");
        cr_expect_eq(tm_st_find(f, t[i].name), a);
        cr_expect_eq(a->dtype, t[i].dtype, "%s", t[i].name);
        cr_expect_eq(a->ndim, t[i].ndim, "%s", t[i].name);
        for (int d = 0; d < a->ndim; d++)
            cr_expect_eq(a->shape[d], t[i].shape[d], "%s dim %d", a->name, d);
        int width = tm_st_dtype_bits(a->dtype) / 8;
        cr_expect_eq((uintptr_t)a->data % (uintptr_t)width, 0, "%s is naturally aligned", a->name);
        if (a->nbytes) cr_expect_arr_eq(a->data, t[i].data, a->nbytes, "%s bytes", a->name);
    }
    cr_expect_eq(tm_st_find(f, "empty")->nbytes, 0);
    cr_expect_null(tm_st_find(f, "layers.1.weight"));
    cr_assert_eq(tm_st_meta_count(f), 2);
    cr_expect_str_eq(tm_st_meta_get(f, "step"), "17");
    cr_expect_str_eq(tm_st_meta_get(f, m[1].key), m[1].value);
    cr_expect_null(tm_st_meta_get(f, "epoch"));

    float back[6];
    cr_expect_eq(tm_st_read_f32(f, "layers.0.weight", back, 2, (uint64_t[]){2, 3}), TM_OK);
    cr_expect_arr_eq(back, w, sizeof w);
    tm_safetensors_close(f);
    tm_safetensors_close(NULL);
}

Test(safetensors, no_tensors_matches_the_reference_bytes)
{
    char path[512];
    in_dir(path, "empty.safetensors");
    cr_assert_eq(tm_safetensors_write(path, NULL, 0, NULL, 0), TM_OK, "%s", tm_error_message());
    unsigned char *raw;
    size_t n = slurp(path, &raw);
    /* The reference serializer's output for an empty dict. */
    const unsigned char want[] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    cr_expect_eq(n, sizeof want);
    cr_expect_arr_eq(raw, want, sizeof want);
    free(raw);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK, "%s", tm_error_message());
    cr_expect_eq(tm_st_count(f), 0);
    cr_expect_eq(tm_st_meta_count(f), 0);
    tm_safetensors_close(f);
}

/* The reference writer's exact bytes for {"attn.0": F32 [1, 2, 3] = 0..5}. */
Test(safetensors, matches_the_reference_serializer)
{
    float v[6] = {0, 1, 2, 3, 4, 5};
    const tm_st_tensor t = {"attn.0", TM_ST_F32, 3, (uint64_t[]){1, 2, 3}, v};
    char path[512];
    in_dir(path, "ref.safetensors");
    cr_assert_eq(tm_safetensors_write(path, &t, 1, NULL, 0), TM_OK, "%s", tm_error_message());
    const char *hdr = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    unsigned char *raw;
    size_t n = slurp(path, &raw);
    cr_assert_eq(n, 8 + 64 + 24);
    cr_expect_eq(raw[0], 64);
    cr_expect_arr_eq(raw + 8, hdr, strlen(hdr));
    cr_expect_arr_eq(raw + 8 + 64, v, 24);
    free(raw);
}

/* Written by hand: odd padding of every kind of JSON whitespace, tensors
 * listed in another order than their data, escapes in a name, an unknown
 * field, no __metadata__ - all valid. */
Test(safetensors, reads_hand_written_files)
{
    const char *h =
        "{ \"b\" : {\"data_offsets\":[8,20], \"shape\":[3], \"dtype\":\"F32\", \"x\":[{}]},\n"
        "\t\"a\\u00e9\\ud83d\\ude00\\/"
        "\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}\r\n \t ";
    int32_t a[2] = {-7, 9};
    float b[3] = {1.5f, -2.5f, 3};
    unsigned char data[20];
    memcpy(data, a, 8);
    memcpy(data + 8, b, 12);
    char path[512];
    in_dir(path, "hand.safetensors");
    write_raw(path, strlen(h), h, strlen(h), data, sizeof data);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK, "%s", tm_error_message());
    cr_assert_eq(tm_st_count(f), 2);
    cr_expect_str_eq(tm_st_at(f, 0)->name, "b");
    cr_expect_str_eq(tm_st_at(f, 1)->name, "a\xc3\xa9\xf0\x9f\x98\x80/");
    const tm_st_info *ta = tm_st_find(f, "a\xc3\xa9\xf0\x9f\x98\x80/");
    cr_assert_not_null(ta);
    cr_expect_eq(ta->dtype, TM_ST_I32);
    cr_expect_arr_eq(ta->data, a, 8);
    float got[3];
    cr_expect_eq(tm_st_read_f32(f, "b", got, 1, (uint64_t[]){3}), TM_OK, "%s", tm_error_message());
    cr_expect_arr_eq(got, b, sizeof b);
    cr_expect_eq(tm_st_meta_count(f), 0);
    tm_safetensors_close(f);
}

/* The reference reads "__metadata__": null as no metadata. */
Test(safetensors, null_metadata_is_no_metadata)
{
    const char *h =
        "{\"__metadata__\":null,\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
    float one = 1;
    char path[512];
    in_dir(path, "null.safetensors");
    write_raw(path, strlen(h), h, strlen(h), &one, 4);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK, "%s", tm_error_message());
    cr_expect_eq(tm_st_meta_count(f), 0);
    cr_expect_eq(tm_st_count(f), 1);
    float got = 0;
    cr_expect_eq(tm_st_read_f32(f, "s", &got, 0, NULL), TM_OK, "%s", tm_error_message());
    cr_expect_eq(got, 1.0f);
    tm_safetensors_close(f);
}

Test(safetensors, read_f32_names_every_mismatch)
{
    float w[6] = {0};
    int32_t k[2] = {0};
    const tm_st_tensor t[] = {
        {"layers.1.weight", TM_ST_F32, 2, (uint64_t[]){2, 3}, w},
        {"k", TM_ST_I32, 1, (uint64_t[]){2}, k},
    };
    char path[512];
    in_dir(path, "m.safetensors");
    cr_assert_eq(tm_safetensors_write(path, t, 2, NULL, 0), TM_OK);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK);
    float dst[16];
    char want[700];
    cr_expect_eq(tm_st_read_f32(f, "layers.1.weight", dst, 2, (uint64_t[]){2, 4}), TM_EFORMAT);
    snprintf(want, sizeof want, "%s: layers.1.weight: shape [2, 3] in file, model expects [2, 4]",
             path);
    cr_expect_str_eq(tm_error_message(), want);
    cr_expect_eq(tm_st_read_f32(f, "layers.1.weight", dst, 1, (uint64_t[]){6}), TM_EFORMAT);
    cr_expect_not_null(strstr(tm_error_message(), "shape [2, 3] in file, model expects [6]"));
    cr_expect_eq(tm_st_read_f32(f, "k", dst, 1, (uint64_t[]){2}), TM_EFORMAT);
    cr_expect_not_null(strstr(tm_error_message(), "k: dtype I32 in file, expected F32"));
    cr_expect_eq(tm_st_read_f32(f, "layers.2.bias", dst, 1, (uint64_t[]){2}), TM_EFORMAT);
    cr_expect_not_null(strstr(tm_error_message(), "no tensor named \"layers.2.bias\""));
    tm_safetensors_close(f);
}

/* Header texts that must be refused, each with data_bytes zero bytes after
 * it, and a piece of the message that must explain why. */
static const struct {
    const char *header;
    size_t data_bytes;
    const char *why;
} bad_headers[] = {
    {"{\"a\": nope}", 0, "invalid JSON header at byte 6: unexpected character 'n'"},
    {"[1, 2]", 0, "header is not a JSON object"},
    {" {}", 0, "must start with '{'"},
    {"{} x", 0, "byte 3: unexpected character 'x' after the JSON value"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]", 4, "unexpected end inside object"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"a\": missing \"dtype\""},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor \"a\": missing \"shape\""},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor \"a\": missing \"data_offsets\""},
    {"{\"a\":5}", 0, "tensor \"a\": entry is not a JSON object"},
    {"{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "unknown dtype \"F128\""},
    {"{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is not a string"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
     "shape is not an array of non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     "shape is not an array of non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4,
     "shape is not an array of non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4,
     "shape is not an array of non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}", 4,
     "shape is not an array of non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 4,
     "overflows or is not whole bytes"},
    {"{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1,
     "overflows or is not whole bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
     "data_offsets is not [begin, end]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
     "end before they begin"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1000],\"data_offsets\":[0,4000]}}", 16,
     "truncated: tensor \"a\" ends at byte 4000 of the data, which has only 16 bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8,
     "data_offsets [0, 8] hold 8 bytes but shape [2, 2] of F32 needs 16"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
     24, "tensors \"a\" and \"b\" overlap"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
     24, "8 bytes before tensor \"b\" belong to no tensor"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "4 trailing bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, "\"a\" appears twice in the header"},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor \"a\": key \"dtype\" appears twice"},
    {"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "__metadata__ key \"k\" appears twice"},
    {"{\"__metadata__\":[]}", 0, "__metadata__ is not a JSON object"},
    {"{\"__metadata__\":{\"step\":3}}", 0, "__metadata__ \"step\" is not a string"},
    {"{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, "contains a NUL character"},
    {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "contains a NUL character"},
    {"{\"__metadata__\\u0000x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "contains a NUL character"},
    {"{\"a\\x\":1}", 0, "invalid escape '\\x'"},
    {"{\"a\\u12\":1}", 0, "\\u must be followed by 4 hex digits"},
    {"{\"a\\ud800\":1}", 0, "not followed by a low one"},
    {"{\"a\\udc00\":1}", 0, "lone low surrogate"},
    {"{\"a\nb\":1}", 0, "unescaped control character 0x0a"},
    {"{\"\xff\":1}", 0, "invalid UTF-8"},
    {"{\"\xc0\xaf\":1}", 0, "invalid UTF-8"},
    {"{\"\xed\xa0\x80\":1}", 0, "invalid UTF-8"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zero"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}", 4,
     "unexpected character ']'"},
    {"{\"a\":1,}", 0, "expected a string key"},
    {"{\"a\" 1}", 0, "expected ':' after key"},
    {"{\"a\":tru}", 0, "unexpected character 't'"},
    {"{'a':1}", 0, "expected a string key"},
};

Test(safetensors, every_bad_header_is_refused)
{
    char path[512];
    in_dir(path, "bad.safetensors");
    for (size_t i = 0; i < sizeof bad_headers / sizeof *bad_headers; i++) {
        const char *h = bad_headers[i].header;
        write_header(path, h, bad_headers[i].data_bytes);
        tm_st_file *f = (tm_st_file *)1;
        int st = tm_safetensors_open(&f, path);
        cr_expect_eq(st, TM_EFORMAT, "case %zu (%s): %s", i, h, tm_err_name(st));
        cr_expect_null(f, "case %zu", i);
        cr_expect_not_null(strstr(tm_error_message(), bad_headers[i].why),
                           "case %zu: \"%s\" lacks \"%s\"", i, tm_error_message(),
                           bad_headers[i].why);
        cr_expect_not_null(strstr(tm_error_message(), path), "case %zu names the file", i);
        if (st == TM_OK) tm_safetensors_close(f);
    }
}

static void expect_open_error(const char *path, int status, const char *why)
{
    tm_st_file *f = NULL;
    int st = tm_safetensors_open(&f, path);
    cr_expect_eq(st, status, "%s: %s", tm_err_name(st), tm_error_message());
    cr_expect_not_null(strstr(tm_error_message(), why), "\"%s\" lacks \"%s\"", tm_error_message(),
                       why);
    if (st == TM_OK) tm_safetensors_close(f);
}

Test(safetensors, broken_framing)
{
    char path[512];
    in_dir(path, "f.safetensors");
    spit(path, "", 0);
    expect_open_error(path, TM_EFORMAT, "0 bytes is too short for the 8-byte header length");
    spit(path, "\x02\0\0", 3);
    expect_open_error(path, TM_EFORMAT, "3 bytes is too short");
    write_raw(path, 100, "{}", 2, NULL, 0);
    expect_open_error(path, TM_EFORMAT,
                      "header length 100 exceeds the 2 bytes after the length field");
    write_raw(path, 200000000, "{}", 2, NULL, 0);
    expect_open_error(path, TM_EFORMAT, "header length 200000000 exceeds the 100000000-byte limit");
    write_raw(path, UINT64_MAX, "{}", 2, NULL, 0);
    expect_open_error(path, TM_EFORMAT, "exceeds the 100000000-byte limit");
    write_raw(path, 0, "", 0, NULL, 0);
    expect_open_error(path, TM_EFORMAT, "must start with '{'");
    write_raw(path, 6, "{}\0\0\0\0", 6, NULL, 0);
    expect_open_error(path, TM_EFORMAT,
                      "invalid JSON header at byte 2: unexpected byte 0x00 after the JSON value");
    expect_open_error(dir, TM_EIO, "not a regular file");
    in_dir(path, "missing.safetensors");
    expect_open_error(path, TM_EIO, "cannot open: No such file or directory");
}

/* Nesting far past the limit is refused without recursing that deep. */
Test(safetensors, deep_nesting_is_refused)
{
    size_t depth = 1000000;
    char *h = malloc(2 * depth + 16);
    size_t k = 0;
    k += (size_t)sprintf(h, "{\"x\":");
    for (size_t i = 0; i < depth; i++) h[k++] = '[';
    for (size_t i = 0; i < depth; i++) h[k++] = ']';
    h[k++] = '}';
    char path[512];
    in_dir(path, "deep.safetensors");
    write_raw(path, k, h, k, NULL, 0);
    expect_open_error(path, TM_EFORMAT, "nesting deeper than 64 levels");
    /* Exactly at the limit it parses, and is then refused for its meaning. */
    k = (size_t)sprintf(h, "{\"x\":");
    for (int i = 0; i < 63; i++) h[k++] = '[';
    for (int i = 0; i < 63; i++) h[k++] = ']';
    h[k++] = '}';
    write_raw(path, k, h, k, NULL, 0);
    expect_open_error(path, TM_EFORMAT, "tensor \"x\": entry is not a JSON object");
    free(h);
}

/* A real file cut anywhere, or with any byte of its framing and header
 * changed, is refused or (when the change keeps it valid) read - never a
 * crash or an out-of-bounds read, which ASan would report. */
Test(safetensors, every_truncation_and_header_flip)
{
    float w[12];
    for (int i = 0; i < 12; i++) w[i] = (float)i;
    const tm_st_tensor t[] = {{"w", TM_ST_F32, 2, (uint64_t[]){3, 4}, w},
                              {"b", TM_ST_F32, 1, (uint64_t[]){3}, w}};
    const tm_st_meta m = {"epoch", "3"};
    char path[512], cut[512];
    in_dir(path, "good.safetensors");
    in_dir(cut, "cut.safetensors");
    cr_assert_eq(tm_safetensors_write(path, t, 2, &m, 1), TM_OK);
    unsigned char *raw;
    size_t n = slurp(path, &raw);
    for (size_t len = 0; len < n; len++) {
        spit(cut, raw, len);
        tm_st_file *f = NULL;
        int st = tm_safetensors_open(&f, cut);
        cr_expect_eq(st, TM_EFORMAT, "cut at %zu of %zu: %s", len, n, tm_err_name(st));
        if (st == TM_OK) tm_safetensors_close(f);
    }
    cr_assert_eq(raw[1], 0, "the header is under 256 bytes");
    size_t hend = 8 + raw[0];
    int refused = 0;
    for (size_t i = 0; i < hend; i++) {
        unsigned char saved = raw[i];
        raw[i] ^= 0x21;
        spit(cut, raw, n);
        raw[i] = saved;
        tm_st_file *f = NULL;
        int st = tm_safetensors_open(&f, cut);
        cr_expect(st == TM_OK || st == TM_EFORMAT, "byte %zu: %s", i, tm_err_name(st));
        refused += st == TM_EFORMAT;
        if (st == TM_OK) tm_safetensors_close(f);
    }
    cr_expect_gt(refused, (int)hend / 2, "only %d of %zu header flips refused", refused, hend);
    free(raw);
}

Test(safetensors, write_refuses_bad_arguments)
{
    float x[2] = {0};
    char path[512];
    in_dir(path, "inv.safetensors");
    const tm_st_tensor dup[] = {{"a", TM_ST_F32, 1, (uint64_t[]){2}, x},
                                {"a", TM_ST_F32, 1, (uint64_t[]){2}, x}};
    cr_expect_eq(tm_safetensors_write(path, dup, 2, NULL, 0), TM_EINVAL);
    cr_expect_not_null(strstr(tm_error_message(), "name \"a\" given twice"), "%s",
                       tm_error_message());
    const tm_st_meta mdup[] = {{"k", "1"}, {"k", "2"}};
    cr_expect_eq(tm_safetensors_write(path, dup, 1, mdup, 2), TM_EINVAL);
    const tm_st_tensor reserved = {"__metadata__", TM_ST_F32, 1, (uint64_t[]){2}, x};
    cr_expect_eq(tm_safetensors_write(path, &reserved, 1, NULL, 0), TM_EINVAL);
    const tm_st_tensor nodata = {"a", TM_ST_F32, 1, (uint64_t[]){2}, NULL};
    cr_expect_eq(tm_safetensors_write(path, &nodata, 1, NULL, 0), TM_EINVAL);
    const tm_st_tensor utf = {"\xff", TM_ST_F32, 1, (uint64_t[]){2}, x};
    cr_expect_eq(tm_safetensors_write(path, &utf, 1, NULL, 0), TM_EINVAL);
    const tm_st_tensor dtype = {"a", TM_ST_DTYPE_COUNT, 1, (uint64_t[]){2}, x};
    cr_expect_eq(tm_safetensors_write(path, &dtype, 1, NULL, 0), TM_EINVAL);
    const tm_st_tensor huge = {"a", TM_ST_F32, 2, (uint64_t[]){1ull << 62, 8}, x};
    cr_expect_eq(tm_safetensors_write(path, &huge, 1, NULL, 0), TM_EINVAL);
    cr_expect_eq(tm_safetensors_write(NULL, &nodata, 1, NULL, 0), TM_EINVAL);
    cr_expect_eq(tm_safetensors_write(path, NULL, 1, NULL, 0), TM_EINVAL);
    struct stat sb;
    cr_expect_neq(stat(path, &sb), 0, "nothing written");
    cr_expect_eq(leftovers(dir), 0);
}

Test(safetensors, write_into_missing_directory_leaves_nothing)
{
    float x[2] = {1, 2};
    const tm_st_tensor t = {"a", TM_ST_F32, 1, (uint64_t[]){2}, x};
    char path[512], sub[512];
    in_dir(path, "nodir/ckpt.safetensors");
    cr_expect_eq(tm_safetensors_write(path, &t, 1, NULL, 0), TM_EIO);
    cr_expect_not_null(strstr(tm_error_message(), "nodir does not exist"), "%s",
                       tm_error_message());
    struct stat sb;
    cr_expect_neq(stat(in_dir(sub, "nodir"), &sb), 0);
    cr_expect_eq(leftovers(dir), 0);
}

Test(safetensors, write_onto_a_directory_fails_cleanly)
{
    float x[2] = {1, 2};
    const tm_st_tensor t = {"a", TM_ST_F32, 1, (uint64_t[]){2}, x};
    char path[512];
    in_dir(path, "adir");
    cr_assert_eq(mkdir(path, 0755), 0);
    cr_expect_eq(tm_safetensors_write(path, &t, 1, NULL, 0), TM_EIO);
    cr_expect_not_null(strstr(tm_error_message(), "is a directory"), "%s", tm_error_message());
    struct stat sb;
    cr_expect(stat(path, &sb) == 0 && S_ISDIR(sb.st_mode), "the directory is still there");
    cr_expect_eq(leftovers(dir), 0);
}

/* A write that fails half-way (here: past the file size limit) removes its
 * temporary file and leaves the previous checkpoint exactly as it was. */
Test(safetensors, failed_write_keeps_the_old_file)
{
    float x[2] = {1, 2};
    const tm_st_tensor small = {"a", TM_ST_F32, 1, (uint64_t[]){2}, x};
    char path[512];
    in_dir(path, "keep.safetensors");
    cr_assert_eq(tm_safetensors_write(path, &small, 1, NULL, 0), TM_OK);
    unsigned char *before;
    size_t n_before = slurp(path, &before);

    size_t count = 1 << 18;
    float *big = calloc(count, sizeof *big);
    const tm_st_tensor large = {"a", TM_ST_F32, 1, (uint64_t[]){count}, big};
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {64 << 10, 64 << 10};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    cr_expect_eq(tm_safetensors_write(path, &large, 1, NULL, 0), TM_EIO);
    cr_expect_not_null(strstr(tm_error_message(), ": File too large"), "%s", tm_error_message());
    cr_expect_eq(leftovers(dir), 0);

    unsigned char *after;
    size_t n_after = slurp(path, &after);
    cr_expect_eq(n_after, n_before);
    cr_expect_arr_eq(after, before, n_before);
    /* A write that succeeds does replace it. */
    x[0] = 5;
    cr_assert_eq(tm_safetensors_write(path, &small, 1, NULL, 0), TM_OK);
    tm_st_file *f;
    cr_assert_eq(tm_safetensors_open(&f, path), TM_OK);
    float got[2];
    cr_expect_eq(tm_st_read_f32(f, "a", got, 1, (uint64_t[]){2}), TM_OK);
    cr_expect_eq(got[0], 5.0f);
    tm_safetensors_close(f);
    free(before);
    free(after);
    free(big);
}
