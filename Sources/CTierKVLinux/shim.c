#define _GNU_SOURCE 1
#include "CTierKVLinux.h"
#include <liburing.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <cpuid.h>
#include <sched.h>
#include <pthread.h>

int ctierkv_thread_cpus(int *cpus, int capacity) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -errno;
    int count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && count < capacity; cpu++) {
        if (CPU_ISSET(cpu, &set)) cpus[count++] = cpu;
    }
    return count;
}

int ctierkv_attr_set_cpus(pthread_attr_t *attr, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int index = 0; index < count; index++) {
        if (cpus[index] < 0 || cpus[index] >= CPU_SETSIZE) return EINVAL;
        CPU_SET(cpus[index], &set);
    }
    return pthread_attr_setaffinity_np(attr, sizeof set, &set);
}

int ctierkv_current_cpu(void) { return sched_getcpu(); }

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

struct ctierkv_ring { struct io_uring ring; };

unsigned ctierkv_ring_flag_single_issuer(void) {
#ifdef IORING_SETUP_SINGLE_ISSUER
    return IORING_SETUP_SINGLE_ISSUER;
#else
    return 0;
#endif
}
unsigned ctierkv_ring_flag_coop_taskrun(void) {
#ifdef IORING_SETUP_COOP_TASKRUN
    return IORING_SETUP_COOP_TASKRUN;
#else
    return 0;
#endif
}
unsigned ctierkv_ring_flag_sqpoll(void) { return IORING_SETUP_SQPOLL; }

int ctierkv_ring_create(unsigned entries, unsigned flags, ctierkv_ring **out) {
    ctierkv_ring *ring = calloc(1, sizeof *ring);
    if (!ring) return -ENOMEM;
    int result = io_uring_queue_init(entries, &ring->ring, flags);
    if (result < 0) { free(ring); return result; }
    *out = ring;
    return 0;
}

void ctierkv_ring_destroy(ctierkv_ring *ring) {
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

int ctierkv_ring_queue_read(ctierkv_ring *ring, int fd, void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    if (buffer_index >= 0) io_uring_prep_read_fixed(sqe, fd, buffer, length, offset, buffer_index);
    else io_uring_prep_read(sqe, fd, buffer, length, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int ctierkv_ring_queue_write(ctierkv_ring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    if (buffer_index >= 0) io_uring_prep_write_fixed(sqe, fd, buffer, length, offset, buffer_index);
    else io_uring_prep_write(sqe, fd, buffer, length, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int ctierkv_ring_queue_nop(ctierkv_ring *ring, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int ctierkv_ring_submit(ctierkv_ring *ring) { return io_uring_submit(&ring->ring); }

int ctierkv_ring_wait(ctierkv_ring *ring, uint64_t *user_data, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    int status = io_uring_wait_cqe(&ring->ring, &cqe);
    if (status < 0) return status;
    *user_data = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(&ring->ring, cqe);
    return 0;
}

int ctierkv_ring_register_buffers(ctierkv_ring *ring, const struct iovec *buffers, unsigned count) {
    return io_uring_register_buffers(&ring->ring, buffers, count);
}
int ctierkv_ring_unregister_buffers(ctierkv_ring *ring) { return io_uring_unregister_buffers(&ring->ring); }
int ctierkv_ring_register_files(ctierkv_ring *ring, const int *descriptors, unsigned count) {
    return io_uring_register_files(&ring->ring, descriptors, count);
}
int ctierkv_ring_unregister_files(ctierkv_ring *ring) { return io_uring_unregister_files(&ring->ring); }

int ctierkv_ring_probe(ctierkv_ring *ring, uint8_t *supported) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring->ring);
    if (!probe) return -EOPNOTSUPP;
    int count = 0;
    for (int op = 0; op < IORING_OP_LAST && op < 256; op++) {
        supported[op] = io_uring_opcode_supported(probe, op) ? 1 : 0;
        count += supported[op];
    }
    io_uring_free_probe(probe);
    return count;
}

int ctierkv_ring_opcode(const char *name) {
    static const struct { const char *name; int op; } table[] = {
        {"nop", IORING_OP_NOP}, {"readv", IORING_OP_READV}, {"writev", IORING_OP_WRITEV}, {"fsync", IORING_OP_FSYNC},
        {"read_fixed", IORING_OP_READ_FIXED}, {"write_fixed", IORING_OP_WRITE_FIXED}, {"fallocate", IORING_OP_FALLOCATE},
        {"read", IORING_OP_READ}, {"write", IORING_OP_WRITE},
    };
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0) return table[i].op;
    return -1;
}
