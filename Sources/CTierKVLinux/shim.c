#define _GNU_SOURCE 1
#include "CTierKVLinux.h"
#include <cpuid.h>

int ctierkv_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    int ok = __get_cpuid_count(leaf, subleaf, &a, &b, &c, &d);
    *eax = a; *ebx = b; *ecx = c; *edx = d;
    return ok;
}

uint64_t ctierkv_xgetbv(uint32_t index) {
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(index));
    return ((uint64_t)hi << 32) | lo;
}

int ctierkv_o_direct(void) { return O_DIRECT; }
int ctierkv_o_nofollow_cloexec(void) { return O_NOFOLLOW | O_CLOEXEC; }
