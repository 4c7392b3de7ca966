/* Instruction-set detection: cpuid says what the CPU implements, XGETBV what
 * the OS has enabled in XCR0 (a CPU with AVX-512 under an OS or hypervisor
 * that does not save the zmm and mask registers must not use them). */
#include "kernels/isa.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

static const char *const isa_names[TM_ISA_COUNT] = {
    [TM_ISA_GENERIC] = "generic",
    [TM_ISA_AVX2] = "avx2",
    [TM_ISA_AVX512] = "avx512",
    [TM_ISA_AVX512_BF16] = "avx512_bf16",
};

const char *tm_isa_name(tm_isa isa)
{
    return (unsigned)isa < TM_ISA_COUNT ? isa_names[isa] : "unknown";
}

int tm_isa_parse(const char *name, tm_isa *out)
{
    if (name == NULL) return -1;
    for (int i = 0; i < TM_ISA_COUNT; i++) {
        if (strcmp(name, isa_names[i]) == 0) {
            *out = (tm_isa)i;
            return 0;
        }
    }
    return -1;
}

static tm_isa best_isa = TM_ISA_GENERIC;
static tm_isa active_isa = TM_ISA_GENERIC;
static int env_state; /* 0 unset or valid, -1 unknown name, -2 unsupported */
static char env_value[32]; /* TM_ISA as read, cut to fit, for the message */
/* pthread_once rather than C11 call_once: ThreadSanitizer sees the order
 * pthread_once makes, not the one glibc's call_once does. */
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__)
/* XCR0 bits: 1 SSE, 2 AVX (ymm upper halves), 5 opmask, 6 and 7 the zmm
 * registers. */
enum { XCR0_YMM = 0x6, XCR0_ZMM = 0xe6 };

static unsigned long long xgetbv0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static tm_isa detect(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return TM_ISA_GENERIC;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1;
    if (!osxsave || __get_cpuid_max(0, NULL) < 7) return TM_ISA_GENERIC;
    unsigned long long xcr0 = xgetbv0();
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1;
    int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
    unsigned leaf7_1_eax = 0;
    if (a >= 1) {
        unsigned a1, b1, c1, d1;
        __cpuid_count(7, 1, a1, b1, c1, d1);
        leaf7_1_eax = a1;
    }
    int bf16 = (leaf7_1_eax >> 5) & 1;
    if (!(avx2 && fma && (xcr0 & XCR0_YMM) == XCR0_YMM)) return TM_ISA_GENERIC;
    if (!(avx512 && (xcr0 & XCR0_ZMM) == XCR0_ZMM)) return TM_ISA_AVX2;
    return bf16 ? TM_ISA_AVX512_BF16 : TM_ISA_AVX512;
}
#else
static tm_isa detect(void) { return TM_ISA_GENERIC; }
#endif

static void detect_and_read_env(void)
{
    best_isa = detect();
    active_isa = best_isa;
    const char *env = getenv("TM_ISA");
    if (env == NULL || env[0] == '\0') return;
    snprintf(env_value, sizeof env_value, "%s", env);
    tm_isa want;
    if (tm_isa_parse(env, &want) != 0)
        env_state = -1;
    else if (want > best_isa)
        env_state = -2;
    else
        active_isa = want;
}

int tm_isa_supported(tm_isa isa)
{
    pthread_once(&detect_once, detect_and_read_env);
    return (unsigned)isa < TM_ISA_COUNT && isa <= best_isa;
}

tm_isa tm_isa_best(void)
{
    pthread_once(&detect_once, detect_and_read_env);
    return best_isa;
}

tm_isa tm_isa_active(void)
{
    pthread_once(&detect_once, detect_and_read_env);
    return active_isa;
}

int tm_isa_check_env(char *msg, size_t msg_len)
{
    pthread_once(&detect_once, detect_and_read_env);
    if (env_state == 0) return 0;
    char have[64] = "";
    for (int i = 0; i <= (int)best_isa; i++) {
        strcat(have, i ? ", " : "");
        strcat(have, isa_names[i]);
    }
    if (msg_len > 0)
        snprintf(msg, msg_len, "TM_ISA=%s: %s; this CPU has %s", env_value,
                 env_state == -1 ? "unknown instruction set" : "not supported by this CPU",
                 have);
    return -1;
}
