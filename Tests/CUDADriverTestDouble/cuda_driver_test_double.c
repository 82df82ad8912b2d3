// TEST DOUBLE of the CUDA driver API (libcuda.so.1), NOT a GPU: it exports the symbols TierKV's
// CUDADriverLibrary resolves, backs "device" memory with malloc and performs copies
// synchronously. Tests build it into a temporary .so and load it with TIERKV's dlopen path to
// exercise symbol resolution, CUresult checking and error messages where no CUDA exists.
// `tierkv_double_fail(name, code)` makes the next call of `name` return `code`.
// Built with -DTIERKV_DOUBLE_BATCHED_COPIES it is a CUDA 12.8 driver: cuGetProcAddress_v2 hands
// out a cuMemcpyBatchAsync that checks its arguments the way the driver documents them.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
static char fail_name[64];
static int fail_code;
static long registered_bytes;

void tierkv_double_fail(const char *name, int code) {
    strncpy(fail_name, name, sizeof fail_name - 1);
    fail_code = code;
}
long tierkv_double_registered_bytes(void) { return registered_bytes; }

static int injected(const char *name) {
    if (fail_code != 0 && strcmp(name, fail_name) == 0) {
        int code = fail_code;
        fail_code = 0;
        return code;
    }
    return 0;
}
#define CHECK(name) do { int code = injected(name); if (code) return code; } while (0)

CUresult cuInit(unsigned flags) { (void)flags; CHECK("cuInit"); return 0; }
#ifdef TIERKV_DOUBLE_BATCHED_COPIES
#define DRIVER_VERSION 12080
#else
#define DRIVER_VERSION 12040
#endif
CUresult cuDriverGetVersion(int *version) { *version = DRIVER_VERSION; return 0; }
CUresult cuDeviceGetCount(int *count) { CHECK("cuDeviceGetCount"); *count = 1; return 0; }
CUresult cuDeviceGet(int *device, int ordinal) { if (ordinal != 0) return 101; *device = 0; return 0; }
CUresult cuDeviceGetName(char *name, int length, int device) {
    (void)device; strncpy(name, "TierKV CUDA driver test double", (size_t)length); return 0;
}
CUresult cuDeviceGetPCIBusId(char *bus, int length, int device) {
    (void)device; strncpy(bus, "00000000:00:00.0", (size_t)length); return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *bytes, int device) { (void)device; *bytes = (size_t)1 << 30; return 0; }
CUresult cuDeviceGetAttribute(int *value, int attribute, int device) {
    (void)device; *value = attribute == 75 ? 9 : 0; return 0;
}
CUresult cuGetErrorName(CUresult error, const char **text) {
    switch (error) {
    case 0: *text = "CUDA_SUCCESS"; return 0;
    case 1: *text = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 2: *text = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 3: *text = "CUDA_ERROR_NOT_INITIALIZED"; return 0;
    case 600: *text = "CUDA_ERROR_NOT_READY"; return 0;
    default: *text = 0; return 1;
    }
}
CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case 0: *text = "no error"; return 0;
    case 1: *text = "invalid argument"; return 0;
    case 2: *text = "out of memory"; return 0;
    case 3: *text = "initialization error"; return 0;
    case 600: *text = "device not ready"; return 0;
    default: *text = 0; return 1;
    }
}
CUresult cuDevicePrimaryCtxRetain(void **context, int device) { (void)device; *context = (void *)0x1; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int device) { (void)device; return 0; }
CUresult cuCtxSetCurrent(void *context) { (void)context; return 0; }
CUresult cuMemAlloc_v2(uint64_t *pointer, size_t bytes) {
    CHECK("cuMemAlloc_v2");
    void *memory = malloc(bytes);
    if (!memory) return 2;
    *pointer = (uint64_t)(uintptr_t)memory;
    return 0;
}
CUresult cuMemFree_v2(uint64_t pointer) { free((void *)(uintptr_t)pointer); return 0; }
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) { *free_bytes = (size_t)1 << 29; *total = (size_t)1 << 30; return 0; }
CUresult cuMemcpyHtoDAsync_v2(uint64_t device, const void *host, size_t bytes, void *stream) {
    (void)stream; CHECK("cuMemcpyHtoDAsync_v2"); memcpy((void *)(uintptr_t)device, host, bytes); return 0;
}
CUresult cuMemcpyDtoHAsync_v2(void *host, uint64_t device, size_t bytes, void *stream) {
    (void)stream; CHECK("cuMemcpyDtoHAsync_v2"); memcpy(host, (void *)(uintptr_t)device, bytes); return 0;
}
CUresult cuStreamCreate(void **stream, unsigned flags) { (void)flags; *stream = malloc(1); return 0; }
CUresult cuStreamDestroy_v2(void *stream) { free(stream); return 0; }
CUresult cuStreamSynchronize(void *stream) { (void)stream; return 0; }
CUresult cuEventCreate(void **event, unsigned flags) { (void)flags; *event = malloc(1); return 0; }
CUresult cuEventRecord(void *event, void *stream) { (void)event; (void)stream; return 0; }
CUresult cuEventQuery(void *event) { (void)event; CHECK("cuEventQuery"); return 0; }
CUresult cuEventSynchronize(void *event) { (void)event; return 0; }
CUresult cuEventElapsedTime(float *milliseconds, void *start, void *end) { (void)start; (void)end; *milliseconds = 1.0f; return 0; }
CUresult cuEventDestroy_v2(void *event) { free(event); return 0; }
CUresult cuMemHostRegister_v2(void *pointer, size_t bytes, unsigned flags) {
    (void)pointer; (void)flags; CHECK("cuMemHostRegister_v2"); registered_bytes += (long)bytes; return 0;
}
CUresult cuMemHostUnregister(void *pointer) { (void)pointer; return 0; }

#ifdef TIERKV_DOUBLE_BATCHED_COPIES
typedef struct {
    int src_access_order;
    int src_location_type, src_location_id;
    int dst_location_type, dst_location_id;
    unsigned flags;
} memcpy_attributes; /* CUmemcpyAttributes */

static long batch_calls, batch_copies;
long tierkv_double_batch_calls(void) { return batch_calls; }
long tierkv_double_batch_copies(void) { return batch_copies; }

static CUresult memcpy_batch_async(uint64_t *dsts, uint64_t *srcs, size_t *sizes, size_t count,
                                   memcpy_attributes *attrs, size_t *attr_starts, size_t attr_count,
                                   size_t *fail_index, void *stream) {
    if (!dsts || !srcs || !sizes || count == 0 || !attrs || !attr_starts || !fail_index || !stream) return 1;
    if (attr_count == 0 || attr_count > count || attr_starts[0] != 0) return 1;
    for (size_t a = 0; a < attr_count; a++) {
        if (a > 0 && attr_starts[a] <= attr_starts[a - 1]) return 1;
        if (attr_starts[a] >= count) return 1;
        if (attrs[a].src_access_order < 1 || attrs[a].src_access_order > 3 || attrs[a].flags > 1) return 1;
        if (attrs[a].src_location_type < 0 || attrs[a].src_location_type > 4) return 1;
        if (attrs[a].dst_location_type < 0 || attrs[a].dst_location_type > 4) return 1;
    }
    int code = injected("cuMemcpyBatchAsync");
    if (code) {
        *fail_index = count > 1 ? 1 : 0;
        return code;
    }
    for (size_t i = 0; i < count; i++) memcpy((void *)(uintptr_t)dsts[i], (const void *)(uintptr_t)srcs[i], sizes[i]);
    batch_calls += 1;
    batch_copies += (long)count;
    return 0;
}

#endif

/* A 12.4 driver finds no cuMemcpyBatchAsync; a 12.8 one hands out the checked double above. */
CUresult cuGetProcAddress_v2(const char *symbol, void **function, int version, uint64_t flags, int *status) {
    (void)flags;
#ifdef TIERKV_DOUBLE_BATCHED_COPIES
    if (strcmp(symbol, "cuMemcpyBatchAsync") == 0 && version >= 12080) {
        *function = (void *)memcpy_batch_async;
        if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
        return 0;
    }
#else
    (void)symbol; (void)version;
#endif
    *function = 0;
    if (status) *status = 1; /* CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND */
    return 500;                /* CUDA_ERROR_NOT_FOUND */
}
