// C shim for TierKV: the few things Swift cannot import directly from liburing,
// libnuma and the kernel headers. No logic lives here; every function is a
// one-line wrapper or constant, prefixed `ctierkv_`.
#ifndef CTIERKV_LINUX_H
#define CTIERKV_LINUX_H

// No _GNU_SOURCE here: it changes glibc's struct definitions (fd_set, rusage) and the Swift
// importer then sees two different `fd_set`s. GNU-only constants come from shim.c instead.
// glibc headers first: liburing.h pulls in kernel headers that otherwise
// clash with Glibc's fd_set and friends in the Swift importer.
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <time.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <dlfcn.h>
#include <unistd.h>
#include <pthread.h>

#include <numa.h>
#include <numaif.h>

/// `O_DIRECT` (a GNU extension, defined in shim.c).
int ctierkv_o_direct(void);
/// `O_NOFOLLOW | O_CLOEXEC`, which we always want on cache files.
int ctierkv_o_nofollow_cloexec(void);
/// `RTLD_NOW | RTLD_LOCAL` for loading libcuda.
static inline int ctierkv_rtld_now_local(void) { return RTLD_NOW | RTLD_LOCAL; }
/// `MAP_FAILED`, a macro built from a cast.
static inline void *ctierkv_map_failed(void) { return MAP_FAILED; }
/// `RLIM_INFINITY`.
static inline uint64_t ctierkv_rlim_infinity(void) { return (uint64_t)RLIM_INFINITY; }
/// `RLIMIT_MEMLOCK` (an enum constant whose Swift name varies with glibc versions).
static inline int ctierkv_rlimit_memlock(void) { return RLIMIT_MEMLOCK; }
/// Whether `node` is in libnuma's set of nodes with memory (`numa_all_nodes_ptr`, a global).
static inline int ctierkv_numa_node_has_memory(int node) {
    return numa_all_nodes_ptr != NULL && numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)node);
}
/// io_uring through liburing, behind an opaque handle. liburing.h is included only by shim.c:
/// its struct definitions clash with swift-system's copy of the kernel header (CSystem) when a
/// client imports both, so none of them may appear in this header. Every function returns 0 (or
/// a count) on success and -errno on failure.
typedef struct ctierkv_ring ctierkv_ring;

/// Setup flags (0 when this liburing does not know them).
unsigned ctierkv_ring_flag_single_issuer(void);
unsigned ctierkv_ring_flag_coop_taskrun(void);
unsigned ctierkv_ring_flag_sqpoll(void);

int ctierkv_ring_create(unsigned entries, unsigned flags, ctierkv_ring **ring);
void ctierkv_ring_destroy(ctierkv_ring *ring);
/// Queues a read/write; `buffer_index` >= 0 uses that registered buffer (READ_FIXED/WRITE_FIXED).
/// Returns -EBUSY when the submission queue is full.
int ctierkv_ring_queue_read(ctierkv_ring *ring, int fd, void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data);
int ctierkv_ring_queue_write(ctierkv_ring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data);
int ctierkv_ring_queue_nop(ctierkv_ring *ring, uint64_t user_data);
/// Submits queued entries; returns how many.
int ctierkv_ring_submit(ctierkv_ring *ring);
/// Waits for and consumes one completion.
int ctierkv_ring_wait(ctierkv_ring *ring, uint64_t *user_data, int32_t *result);
int ctierkv_ring_register_buffers(ctierkv_ring *ring, const struct iovec *buffers, unsigned count);
int ctierkv_ring_unregister_buffers(ctierkv_ring *ring);
int ctierkv_ring_register_files(ctierkv_ring *ring, const int *descriptors, unsigned count);
int ctierkv_ring_unregister_files(ctierkv_ring *ring);
/// Fills `supported[op]` (256 entries) with 1 for each opcode the kernel supports; returns the count.
int ctierkv_ring_probe(ctierkv_ring *ring, uint8_t *supported);
/// The opcode number of a named operation this liburing knows ("read_fixed", ...), or -1.
int ctierkv_ring_opcode(const char *name);

/// Software prefetch of one cache line for reading, into all cache levels (inlined into Swift).
static inline void ctierkv_prefetch(const void *address) { __builtin_prefetch(address, 0, 3); }

/// The CPUs the calling thread may run on (`sched_getaffinity`), ascending, into `cpus` (at most
/// `capacity`): the count, or -errno. (`CPU_ISSET` is a macro Swift cannot call.)
int ctierkv_thread_cpus(int *cpus, int capacity);
/// Makes threads created with `attr` run only on `cpus` (`pthread_attr_setaffinity_np`, a GNU
/// extension): 0 or an errno.
int ctierkv_attr_set_cpus(pthread_attr_t *attr, const int *cpus, int count);
/// The CPU the calling thread runs on now (`sched_getcpu`, GNU).
int ctierkv_current_cpu(void);

/// The spin-wait hint (x86 `pause`): lets the sibling hyperthread run and saves power in a poll loop.
static inline void ctierkv_cpu_relax(void) { __builtin_ia32_pause(); }

/// Lane-wise min/max of 8 floats (imported as SIMD8<Float>): one vminps/vmaxps where Swift's
/// generic `pointwiseMin` is an out-of-line call and `replacing(with:where:)` a scalar loop.
/// A NaN lane of `b` is ignored (the result is `a`'s lane), which is what x86 min/max do with
/// these operands. `__builtin_elementwise_min` (IEEE minNum) cost a compare and a blend per
/// lane-wise min on top of it: measured, the key-summary kernel ran at 0.6 of its speed.
typedef float ctierkv_float8 __attribute__((ext_vector_type(8)));
static inline ctierkv_float8 ctierkv_min8(ctierkv_float8 a, ctierkv_float8 b) { return b < a ? b : a; }
static inline ctierkv_float8 ctierkv_max8(ctierkv_float8 a, ctierkv_float8 b) { return b > a ? b : a; }

/// 8 fp16 / bf16 values at `p` (any alignment) widened to fp32. Inlined into the caller: with
/// F16C (the kernel target builds for x86-64-v3) the fp16 load is one vcvtph2ps, bf16 a
/// vpmovzxwd plus a shift. Swift's generic `SIMD8<Float>(SIMD8<Float16>)` was left as an
/// out-of-line call inside the kernels' hot loops (measured: 10% of the time in the call, and
/// the spills around it cut the attention kernel to a third of its speed).
typedef _Float16 ctierkv_half8 __attribute__((ext_vector_type(8)));
typedef uint16_t ctierkv_ushort8 __attribute__((ext_vector_type(8)));
typedef uint32_t ctierkv_uint8 __attribute__((ext_vector_type(8)));
static inline ctierkv_float8 ctierkv_load_fp16x8(const void *p) {
    ctierkv_half8 h;
    __builtin_memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, ctierkv_float8);
}
static inline ctierkv_float8 ctierkv_load_bf16x8(const void *p) {
    ctierkv_ushort8 h;
    __builtin_memcpy(&h, p, sizeof h);
    ctierkv_uint8 widened = __builtin_convertvector(h, ctierkv_uint8) << 16;
    ctierkv_float8 out;
    __builtin_memcpy(&out, &widened, sizeof out);
    return out;
}

/// The 8 codes of a key-sketch word (1- or 2-bit codes: token j in bits j·bits and up) left
/// in place: lane j is `word & masks[j]` as a float, that is code_j · 2^(j·bits); the caller
/// scales lane j by 2^(−j·bits) once, after its sums. A broadcast, an and and one vcvtdq2ps:
/// Swift's variable shift of a broadcast word compiled to scalar shifts and lane inserts.
typedef int32_t ctierkv_int32x8 __attribute__((ext_vector_type(8)));
static inline ctierkv_float8 ctierkv_sketch_lanes8(uint32_t word, ctierkv_uint8 masks) {
    ctierkv_uint8 bits = word & masks;
    return __builtin_convertvector((ctierkv_int32x8)bits, ctierkv_float8);
}

/// The same for 4-bit codes, whose top lanes would reach bit 31 in place (beyond the signed
/// conversion): lanes 0-3 from the low 16 bits, lanes 4-7 from the high 16 bits.
static inline ctierkv_float8 ctierkv_sketch_nibbles8(uint32_t word, ctierkv_uint8 masks) {
    uint32_t high = word >> 16;
    ctierkv_uint8 halves = {word, word, word, word, high, high, high, high};
    ctierkv_uint8 bits = halves & masks;
    return __builtin_convertvector((ctierkv_int32x8)bits, ctierkv_float8);
}

/// Horizontal sums of 8 vectors at once: lane i of the result is the sum of the lanes of the
/// i-th argument. Three rounds of pairwise adds (vhaddps-shaped shuffles) instead of eight
/// separate reductions to scalars.
static inline ctierkv_float8 ctierkv_hadd8(ctierkv_float8 a, ctierkv_float8 b) {
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}
static inline ctierkv_float8 ctierkv_sums8(
    ctierkv_float8 v0, ctierkv_float8 v1, ctierkv_float8 v2, ctierkv_float8 v3,
    ctierkv_float8 v4, ctierkv_float8 v5, ctierkv_float8 v6, ctierkv_float8 v7) {
    ctierkv_float8 low = ctierkv_hadd8(ctierkv_hadd8(v0, v1), ctierkv_hadd8(v2, v3));
    ctierkv_float8 high = ctierkv_hadd8(ctierkv_hadd8(v4, v5), ctierkv_hadd8(v6, v7));
    return __builtin_shufflevector(low, high, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(low, high, 4, 5, 6, 7, 12, 13, 14, 15);
}

/// The sums of 4 vectors' lanes: `[Σv0 Σv1 Σv2 Σv3]`.
typedef float ctierkv_float4 __attribute__((ext_vector_type(4)));
static inline ctierkv_float4 ctierkv_sums4(ctierkv_float8 v0, ctierkv_float8 v1, ctierkv_float8 v2, ctierkv_float8 v3) {
    ctierkv_float8 both = ctierkv_hadd8(ctierkv_hadd8(v0, v1), ctierkv_hadd8(v2, v3));
    return __builtin_shufflevector(both, both, 0, 1, 2, 3) + __builtin_shufflevector(both, both, 4, 5, 6, 7);
}

/// 8 floats narrowed to fp16 and stored at `p` (any alignment): rounded down, up or to nearest.
/// F16C's vcvtps2ph with the rounding mode in its immediate; callers build for x86-64-v3.
typedef float ctierkv_v8sf __attribute__((__vector_size__(32)));
typedef short ctierkv_v8hi __attribute__((__vector_size__(16)));
static inline void ctierkv_store_fp16x8_down(void *p, ctierkv_float8 v) {
    ctierkv_v8hi h = __builtin_ia32_vcvtps2ph256((ctierkv_v8sf)v, 1);
    __builtin_memcpy(p, &h, sizeof h);
}
static inline void ctierkv_store_fp16x8_up(void *p, ctierkv_float8 v) {
    ctierkv_v8hi h = __builtin_ia32_vcvtps2ph256((ctierkv_v8sf)v, 2);
    __builtin_memcpy(p, &h, sizeof h);
}
static inline void ctierkv_store_fp16x8_nearest(void *p, ctierkv_float8 v) {
    ctierkv_v8hi h = __builtin_ia32_vcvtps2ph256((ctierkv_v8sf)v, 0);
    __builtin_memcpy(p, &h, sizeof h);
}

/// The same three narrowings stored with a non-temporal hint (vmovntdq): the line goes to memory
/// without being read first, so a pass that writes its results once and does not read them back
/// soon moves a third fewer bytes than with ordinary stores. `p` must be 16-byte aligned; the
/// stores are weakly ordered, so the writer calls `ctierkv_store_fence` before it hands the
/// results to another thread.
static inline void ctierkv_stream_fp16x8_down(void *p, ctierkv_float8 v) {
    __builtin_nontemporal_store(__builtin_ia32_vcvtps2ph256((ctierkv_v8sf)v, 1), (ctierkv_v8hi *)p);
}
static inline void ctierkv_stream_fp16x8_up(void *p, ctierkv_float8 v) {
    __builtin_nontemporal_store(__builtin_ia32_vcvtps2ph256((ctierkv_v8sf)v, 2), (ctierkv_v8hi *)p);
}
static inline void ctierkv_stream_fp16x8_nearest(void *p, ctierkv_float8 v) {
    __builtin_nontemporal_store(__builtin_ia32_vcvtps2ph256((ctierkv_v8sf)v, 0), (ctierkv_v8hi *)p);
}
/// sfence: orders the non-temporal stores before everything stored after it.
static inline void ctierkv_store_fence(void) { __builtin_ia32_sfence(); }

/// The CUDA driver's `CUmemcpyAttributes` (cuda.h, CUDA 12.8 and later), which
/// `cuMemcpyBatchAsync` takes. TierKV loads the driver with dlopen and has no cuda.h, so the layout
/// is declared here for Swift to import with C's layout: an enum, two `CUmemLocation`s (a type
/// enum and an id) and flags, 24 bytes.
typedef struct {
    int32_t src_access_order;  /* CUmemcpySrcAccessOrder; 1 = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM */
    int32_t src_location_type; /* CUmemLocation srcLocHint: 0 = CU_MEM_LOCATION_TYPE_INVALID (no hint) */
    int32_t src_location_id;
    int32_t dst_location_type; /* dstLocHint */
    int32_t dst_location_id;
    uint32_t flags;            /* CUmemcpyFlags; 0 = CU_MEMCPY_FLAG_DEFAULT */
} ctierkv_cu_memcpy_attributes;

/// CPUID leaf/subleaf; returns 0 when the leaf is above the maximum supported.
int ctierkv_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx);
/// XGETBV(index): which register states the OS saves (bit 1 SSE, bit 2 AVX/YMM, bits 5-7 AVX-512).
uint64_t ctierkv_xgetbv(uint32_t index);

#endif
