/* The instruction sets the kernels can run, which of them this CPU and OS
 * support, and the one in use (the best, or TM_ISA's pick). Thread-safe: the
 * choice is made once per process, before the first kernel runs. */
#ifndef TM_ISA_H
#define TM_ISA_H

#include <stddef.h>

/* Ordered: each set includes everything below it. */
typedef enum {
    TM_ISA_GENERIC,     /* portable C, any CPU */
    TM_ISA_AVX2,        /* AVX2 + FMA */
    TM_ISA_AVX512,      /* AVX-512 F, VL, BW, DQ */
    TM_ISA_AVX512_BF16, /* AVX-512 + AVX512_BF16 (vdpbf16ps) */
    TM_ISA_COUNT
} tm_isa;

/* "generic", "avx2", "avx512", "avx512_bf16"; "unknown" out of range. */
const char *tm_isa_name(tm_isa isa);
/* Parses a name above; returns 0, or -1 if unknown. */
int tm_isa_parse(const char *name, tm_isa *out);

/* 1 when this CPU has the instructions (cpuid) and the OS saves the
 * registers they use across context switches (XGETBV), else 0. */
int tm_isa_supported(tm_isa isa);
/* The highest supported set. */
tm_isa tm_isa_best(void);

/* The set every kernel runs: the environment variable TM_ISA, read once on
 * first use, when it names a supported set; otherwise the best. An unknown
 * or unsupported name never makes a kernel run an instruction the CPU
 * lacks: tm_isa_check_env reports it so that programs can refuse it. */
tm_isa tm_isa_active(void);

/* 0 when TM_ISA is unset or names a supported set. Otherwise -1, with a
 * one-line message in msg (msg_len bytes, may be 0) naming the value and
 * the sets this CPU has, e.g. "TM_ISA=avx512: not supported by this CPU,
 * which has generic, avx2". */
int tm_isa_check_env(char *msg, size_t msg_len);

#endif
