/* A small strict JSON parser (RFC 8259, bounded depth, no extensions) and an
 * escaping writer, for file headers. Thread-safe: no shared state; a parsed
 * document is read-only and may be read from any number of threads. */
#ifndef TM_JSON_H
#define TM_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Nesting deeper than this is rejected, so hostile input cannot exhaust the
 * stack of the recursive parser. */
#define TM_JSON_MAX_DEPTH 64

typedef enum {
    TM_JSON_NULL,
    TM_JSON_BOOL,
    TM_JSON_NUMBER,
    TM_JSON_STRING,
    TM_JSON_ARRAY,
    TM_JSON_OBJECT,
} tm_json_type;

typedef struct tm_json tm_json;
struct tm_json {
    tm_json_type type;
    const char *key;    /* member name inside an object (NUL-terminated), else NULL */
    size_t key_len;     /* bytes in key; may differ from strlen if it holds \u0000 */
    const char *str;    /* decoded UTF-8 of a string (NUL-terminated) */
    size_t str_len;     /* bytes in str */
    bool boolean;       /* value of a BOOL */
    bool is_uint;       /* NUMBER that is a plain non-negative integer fitting 64 bits */
    uint64_t uint;      /* its value when is_uint */
    const tm_json *child; /* first element or member of an ARRAY / OBJECT */
    const tm_json *next;  /* next sibling in the parent */
    size_t count;       /* elements or members of an ARRAY / OBJECT */
};

typedef struct tm_json_doc tm_json_doc;

/* Parses text[0..len) as one JSON value followed only by whitespace. The text
 * need not be NUL-terminated and is not referenced after the call. Returns
 * TM_OK with *out set, TM_EFORMAT with a message "byte N: what is wrong", or
 * TM_EHOSTMEM. */
int tm_json_parse(tm_json_doc **out, const char *text, size_t len);
/* The top-level value of a parsed document. */
const tm_json *tm_json_root(const tm_json_doc *doc);
/* Frees a document and every node and string in it; NULL is a no-op. */
void tm_json_free(tm_json_doc *doc);

/* The member of object obj named key (first match), or NULL. */
const tm_json *tm_json_get(const tm_json *obj, const char *key);
/* A member name that occurs twice in object obj, or NULL if all are distinct.
 * O(n log n); returns TM_EHOSTMEM through *status if scratch space fails. */
const tm_json *tm_json_duplicate_key(const tm_json *obj, int *status);
/* Whether s[0..n) is well-formed UTF-8 (no overlongs, surrogates or values
 * past U+10FFFF), as JSON text must be. */
bool tm_json_utf8_valid(const char *s, size_t n);

/* A growable output buffer. An allocation failure sets failed and turns every
 * later append into a no-op, so a writer checks once at the end. */
typedef struct {
    char *data;  /* bytes written so far (not NUL-terminated) */
    size_t len;  /* bytes in data */
    size_t cap;  /* bytes allocated */
    bool failed; /* an allocation failed */
} tm_json_out;

void tm_json_out_raw(tm_json_out *o, const char *s, size_t n);
/* Appends s as a quoted JSON string, escaping quotes, backslashes and
 * control characters; other bytes are copied as they are. */
void tm_json_out_string(tm_json_out *o, const char *s);
void tm_json_out_uint(tm_json_out *o, uint64_t v);
void tm_json_out_free(tm_json_out *o);

#endif
