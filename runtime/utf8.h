/* UTF-8 well-formedness, shared by the writers and readers of JSON.
 * Thread-safe: a pure function. */
#ifndef TM_UTF8_H
#define TM_UTF8_H

#include <stddef.h>

/* Length (1-4) of the well-formed UTF-8 sequence starting at s, of which at
 * most n bytes are available, or 0 if it is malformed (RFC 3629: no
 * overlongs, no UTF-16 surrogates, nothing past U+10FFFF). */
size_t tm_utf8_seq(const unsigned char *s, size_t n);

#endif
