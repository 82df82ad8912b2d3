/*
 * tierkv.h: the C ABI of TierKV, a tiered KV-cache (accelerator / pinned host RAM / NVMe).
 *
 * C11 and C++17. Link with -ltierkv (pkg-config: tierkv). The library carries its own Swift
 * runtime: a process needs no Swift toolchain.
 *
 * Conventions, for every function below:
 *  - Every call returns a tierkv_status. TIERKV_OK is 0; anything else is an error, and
 *    tierkv_last_error() then describes it. Nothing ever aborts the process on bad input: a
 *    null pointer, a wrong size, a closed or unknown handle is an error return.
 *  - Handles (tierkv_hierarchy, tierkv_request) are opaque. The library checks every handle
 *    against the set it created, so a closed or never-opened handle gives
 *    TIERKV_ERROR_INVALID_HANDLE rather than a crash (a pointer that was never a handle is
 *    still undefined behaviour in C terms; it is detected as long as it is not dereferenced by
 *    the caller).
 *  - Ownership: the caller owns every buffer it passes; the library copies what it keeps
 *    before returning, except where a function says a pointer stays valid "until release".
 *  - Thread safety: every function may be called from any thread at any time, also
 *    concurrently on one hierarchy handle. A request handle may be waited on from several
 *    threads, but released once.
 *  - Sizes are in bytes unless the name says otherwise (`_count` is a number of elements).
 */
#ifndef TIERKV_H
#define TIERKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version; tierkv_abi_version() returns the library's. Bumped on any incompatible change. */
#define TIERKV_ABI_VERSION 1

typedef int32_t tierkv_status;

/* Status codes. */
#define TIERKV_OK 0
#define TIERKV_ERROR_INVALID_ARGUMENT 1 /* a bad pointer, size, shape, key or configuration field */
#define TIERKV_ERROR_INVALID_HANDLE 2   /* the handle is closed, released or was never opened */
#define TIERKV_ERROR_NOT_FOUND 3        /* the block is not cached */
#define TIERKV_ERROR_CAPACITY 4         /* no tier can take the block (all pinned or referenced) */
#define TIERKV_ERROR_CORRUPTION 5       /* a stored copy failed its checksum; it is never returned */
#define TIERKV_ERROR_SYSTEM 6           /* a system call failed (the message names it and errno) */
#define TIERKV_ERROR_UNSUPPORTED 7      /* this machine or filesystem lacks a feature */
#define TIERKV_ERROR_CUDA 8             /* the CUDA driver returned an error */
#define TIERKV_ERROR_CLOSED 9           /* the hierarchy is closed */
#define TIERKV_ERROR_TIMEOUT 10         /* a wait ran out of time; nothing was changed */
#define TIERKV_ERROR_BUFFER_TOO_SMALL 11 /* an output buffer is too small; the needed count is returned */
#define TIERKV_ERROR_INTERNAL 12        /* a bug in TierKV: please report the message */

/* Tiers. */
#define TIERKV_TIER_HOT 0  /* accelerator memory */
#define TIERKV_TIER_WARM 1 /* pinned host memory */
#define TIERKV_TIER_COLD 2 /* NVMe */

/* Priorities of tierkv_make_resident. */
#define TIERKV_PRIORITY_DEMAND 0   /* the engine waits for these blocks now */
#define TIERKV_PRIORITY_PREFETCH 1 /* speculative: after demand fetches */

/* Where tierkv_plan_layer puts a needed block's attention. */
#define TIERKV_PLACE_IN_HOT 0  /* already in hot: the GPU attends it */
#define TIERKV_PLACE_FETCH 1   /* fetch it to hot (a cold block through warm) for the GPU */
#define TIERKV_PLACE_CPU 2     /* attend it on CPU where it sits in warm (tierkv_attend_warm; a cold block is read to warm first) */
#define TIERKV_PLACE_SKIP 3    /* below skip_below_mass: left out (approximate mode only) */
#define TIERKV_PLACE_MISSING 4 /* the hierarchy does not hold it */

/* How tierkv_predict_mass scores a block against the query. */
#define TIERKV_SCORING_DEFAULT 0      /* SKETCH when the hierarchy keeps key sketches, else BOUND_MOMENT */
#define TIERKV_SCORING_BOUND 1        /* Quest's upper bound from the block's per-channel key min/max */
#define TIERKV_SCORING_BOUND_MOMENT 2 /* the bound averaged with a Gaussian moment estimate (summary only) */
#define TIERKV_SCORING_SKETCH 3       /* the block's keys coded in key_sketch_bits: the best predictor */

/* A sequence id that means "no sequence": the block is stored as cache only. */
#define TIERKV_NO_SEQUENCE UINT64_MAX

/* The hierarchy: all three tiers of one KV layout. */
typedef struct tierkv_hierarchy tierkv_hierarchy;
/* Blocks being made resident in one tier, pinned until tierkv_request_release. */
typedef struct tierkv_request tierkv_request;
typedef struct tierkv_prefetch_ticket tierkv_prefetch_ticket;

/* A block's identity: the 128-bit hash of its token prefix (salted by the namespace) and its layer. */
typedef struct tierkv_block_key {
    uint64_t prefix_high;
    uint64_t prefix_low;
    uint32_t layer;
    uint32_t reserved; /* must be 0 */
} tierkv_block_key;

/* The KV layout of a hierarchy. A block is K then V, each [tokens_per_block][kv_heads][head_dim]
 * of `dtype`; block_bytes = 2 * tokens_per_block * kv_heads * head_dim * dtype size. */
typedef struct tierkv_layout {
    int32_t layers;
    int32_t kv_heads;
    int32_t query_heads;
    int32_t head_dim;
    int32_t tokens_per_block;
    int32_t dtype_size;   /* bytes per element */
    char dtype[16];       /* "fp16", "bf16", "fp32" or "fp8e4m3", NUL-terminated */
    uint64_t block_bytes;
} tierkv_layout;

/* The longest cached prefix, in blocks (every layer of a block must be present). */
typedef struct tierkv_prefix {
    uint64_t in_hot;         /* leading blocks whose every layer is in hot */
    uint64_t in_hot_or_warm; /* ... in hot or warm */
    uint64_t cached;         /* ... in any tier */
    uint64_t requested;      /* blocks asked about */
} tierkv_prefix;

/* Where one block of a request is. */
#define TIERKV_BLOCK_PENDING 0 /* still moving */
#define TIERKV_BLOCK_READY 1   /* resident: device_address (hot) or host_pointer (warm) is valid until release */
#define TIERKV_BLOCK_MISSING 2 /* the hierarchy does not hold the block: recompute it */
#define TIERKV_BLOCK_FAILED 3  /* it could not be brought back (corrupt or unreadable cold copy): recompute it */

typedef struct tierkv_block_location {
    int32_t state;            /* TIERKV_BLOCK_* */
    int32_t tier;             /* the request's tier */
    uint64_t device_address;  /* CUdeviceptr in the hot tier when READY and tier is HOT, else 0 */
    const void *host_pointer; /* pinned host bytes when READY and tier is WARM, else NULL */
    uint64_t byte_count;      /* block_bytes */
} tierkv_block_location;

/* Counters and occupancy. The caller sets `struct_size` to sizeof(tierkv_stats) of its header;
 * the library fills the fields both know and sets struct_size to the bytes it filled, so a
 * newer library serves an older caller and the reverse (any size from the first version's,
 * up to accelerator_is_emulated, is accepted). */
typedef struct tierkv_tier_stats {
    uint64_t capacity_blocks;
    uint64_t resident_blocks;
    uint64_t pinned_blocks;
    uint64_t hits;
    uint64_t misses;
} tierkv_tier_stats;

typedef struct tierkv_stats {
    uint64_t struct_size;
    tierkv_tier_stats hot;
    tierkv_tier_stats warm;
    tierkv_tier_stats cold;
    uint64_t stored_blocks;
    uint64_t shared_stores;       /* stores of a key already cached (prefix sharing) */
    uint64_t bytes_host_to_device;
    uint64_t bytes_device_to_host;
    uint64_t bytes_nvme_read;
    uint64_t bytes_nvme_written;
    uint64_t corrupt_blocks;      /* cold copies that failed their checksum (never returned) */
    uint64_t dropped_blocks;
    uint64_t live_sequences;
    int32_t cold_is_buffered;     /* 1 when the cold file fell back to buffered I/O (reported, never silent) */
    int32_t accelerator_is_emulated; /* 1 when the hot tier is host memory standing in for a GPU */
    /* Added after the first header (a caller built against it does not see them): */
    uint64_t summarized_blocks;   /* blocks with a key summary (key_summaries "from-keys") */
    uint64_t summaries_restored;  /* of those, restored at open from the cache's summaries.tkv */
} tierkv_stats;

/* ---- Library ---- */

/* The library version, e.g. "0.5.0". Static storage; never NULL. */
const char *tierkv_version(void);
/* TIERKV_ABI_VERSION of the library (compare with the header's). */
int32_t tierkv_abi_version(void);

/* The message of the last failed call on this thread ("" when none). Owned by the library and
 * valid until the next tierkv call on this thread; copy it to keep it. */
const char *tierkv_last_error(void);
/* The same message copied into `buffer` (NUL-terminated, truncated to `capacity`). Returns the
 * length of the whole message, so a caller can size a second call. Never fails. */
size_t tierkv_last_error_copy(char *buffer, size_t capacity);
/* A short name of a status code ("invalid argument"). Static storage; never NULL. */
const char *tierkv_status_name(tierkv_status status);

/* ---- Hierarchy ---- */

/* Opens a hierarchy from a JSON configuration, e.g.
 *   {"layout": {"layers": 32, "kv_heads": 8, "query_heads": 32, "head_dim": 128,
 *               "tokens_per_block": 16, "dtype": "fp16"},
 *    "hot_blocks": 1024, "warm_blocks": 8192, "cold_blocks": 65536,
 *    "cache_dir": "/nvme/tierkv", "accelerator": "cuda:0"}
 * Fields: layout (required); hot_blocks, warm_blocks (required); cold_blocks (0) and cache_dir;
 * namespace ("default"); policy ("lru"; also "lfu", "s3fifo", "h2o", "tova", "streamingllm", "layered", with
 * optional parameters such as "h2o:8" or "streamingllm:1:8"); warm_policy (the warm and cold tiers'
 * policy when it should differ from policy, which then rules hot alone: "layered" in hot, "lru" in warm);
 * accelerator ("cuda:N", or "emulated" for host memory standing in for a GPU: tests only);
 * admit_to_hot (true); inclusive_warm (true); allow_dropping (false); numa_node; lock_memory
 * (false); buffered_fallback (false); key_summaries ("off" or "from-keys": a summary of every stored
 * block's keys, for tierkv_predict_mass, in host memory: 6 KiB per Llama-3-8B block plus its sketch;
 * an open whose full tiers' summaries could not fit in this machine's memory is refused, CAPACITY);
 * key_sketch_bits (0, 1, 2 or 4 bits per key element kept with each summary; 2 when key_summaries
 * is "from-keys", 4 KiB per Llama-3-8B block); cpu_threads (CPU
 * attention workers, the calling thread included; default: every CPU, or every CPU of numa_node);
 * cpu_spin_us (50: how long idle workers poll for the next call before sleeping; 0 frees the CPUs
 * at once); prefetch_bytes_in_flight (4194304: the bytes of prefetches started per link, host to
 * device and cold reads; the rest wait in TierKV's queue, where a demand goes first and a
 * withdrawn prefetch costs nothing). An unknown field is an error naming it. On success *out is a new handle owned by the caller: close it. */
tierkv_status tierkv_open(const char *config_json, tierkv_hierarchy **out);
/* Waits for transfers in flight, flushes every block to the cold tier when `flush` is nonzero,
 * closes, and frees the handle (also when the flush fails: the status says so). Requests still
 * open are released and their handles freed. */
tierkv_status tierkv_close(tierkv_hierarchy *hierarchy, int32_t flush);
tierkv_status tierkv_get_layout(tierkv_hierarchy *hierarchy, tierkv_layout *out);
tierkv_status tierkv_get_stats(tierkv_hierarchy *hierarchy, tierkv_stats *out);

/* The keys of the full blocks of `tokens` at `layer` (a trailing partial block has none). Writes
 * at most `capacity` keys; *count_out is the number of full blocks (BUFFER_TOO_SMALL when it
 * exceeds `capacity`). */
tierkv_status tierkv_block_keys(
    tierkv_hierarchy *hierarchy, const uint32_t *tokens, size_t token_count, uint32_t layer,
    tierkv_block_key *keys_out, size_t capacity, size_t *count_out);

/* The longest cached prefix of `tokens`, per tier. */
tierkv_status tierkv_lookup_prefix(
    tierkv_hierarchy *hierarchy, const uint32_t *tokens, size_t token_count, tierkv_prefix *out);

/* Stores one block (block_bytes bytes, K then V) from host memory for `sequence`
 * (TIERKV_NO_SEQUENCE: cache only). The bytes are copied before the call returns. `position` is
 * the block's index in its sequence. *stored_out (may be NULL) is 1 when the bytes were copied,
 * 0 when the key was already cached (prefix sharing). */
tierkv_status tierkv_store(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *key, int64_t position, const void *bytes,
    size_t byte_count, uint64_t sequence, int32_t *stored_out);
/* The same from accelerator memory (a CUdeviceptr of block_bytes bytes): copied on the
 * library's own stream before the call returns. */
tierkv_status tierkv_store_from_device(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *key, int64_t position, uint64_t device_address,
    size_t byte_count, uint64_t sequence, int32_t *stored_out);

/* Stores `count` blocks that are in accelerator memory (block i: keys[i], positions[i], block_bytes
 * at device_addresses[i], e.g. a layer's slots of the engine's paged cache after a prefill). They
 * are copied to host memory in batches of up to 64 blocks, each batch one submission
 * (cuMemcpyBatchAsync where the driver has it, CUDA >= 12.8) and one wait, instead of one copy and
 * one wait per block as tierkv_store_from_device does. Returns once every block is in host
 * memory. Keys already cached are still copied. stored_out (may be NULL): `count` entries, 1
 * stored, 0 already cached. Every key's layer and position is checked before anything is copied;
 * on a later error the blocks before the one the message names are stored, and *done_out (may be
 * NULL) says how many. */
tierkv_status tierkv_store_many_from_device(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, const int64_t *positions,
    const uint64_t *device_addresses, size_t count, uint64_t sequence, int32_t *stored_out, size_t *done_out);

/* Copies a block out of whichever tier holds it into `destination` (at least block_bytes). */
tierkv_status tierkv_read(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *key, void *destination, size_t capacity);

/* Which tier holds the block (*tier_out: TIERKV_TIER_*), or NOT_FOUND. */
tierkv_status tierkv_fastest_tier(tierkv_hierarchy *hierarchy, const tierkv_block_key *key, int32_t *tier_out);

/* Makes `keys` resident in `tier` (HOT for GPU attention, WARM for CPU attention) and pins them
 * until tierkv_request_release. Returns at once; wait or poll on the request. */
tierkv_status tierkv_make_resident(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, size_t key_count, int32_t tier,
    int32_t priority, tierkv_request **out);

/* Waits until every block of the request arrived or failed. timeout_seconds < 0 waits for ever;
 * otherwise TIMEOUT when it is not ready in time. */
tierkv_status tierkv_request_wait(tierkv_request *request, double timeout_seconds);
/* *ready_out = 1 when every block arrived or failed. Never blocks. */
tierkv_status tierkv_request_poll(tierkv_request *request, int32_t *ready_out);
/* Where block `index` (in the order of the keys given) is. */
tierkv_status tierkv_request_block(tierkv_request *request, size_t index, tierkv_block_location *out);
/* Where blocks first ..< first + count are, into out[0 ..< count], read at one instant: a layer's
 * block table in one call instead of one call per block. INVALID_ARGUMENT when the range leaves
 * the request. */
tierkv_status tierkv_request_blocks(
    tierkv_request *request, size_t first, size_t count, tierkv_block_location *out);
/* Unpins the blocks and frees the handle. Addresses from the request are invalid afterwards. */
tierkv_status tierkv_request_release(tierkv_request *request);
/* Releases and also withdraws the queued moves nothing else wants (a prefetch that lost its
 * reason). *withdrawn_out (may be NULL): blocks whose moves were withdrawn. Frees the handle. */
tierkv_status tierkv_request_cancel(tierkv_request *request, size_t *withdrawn_out);

/* The attention mass each block received in the last step, for H2O/TOVA. Unknown keys are ignored. */
tierkv_status tierkv_report_attention(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, const float *mass, size_t count);
/* Places a prompt's blocks by the attention the prefill paid them, before decode starts. A prefill
 * writes layer after layer, so at its end hot and warm hold the last layers' blocks and the first
 * layers' went to cold, whatever decode attends next. The attention of the last prompt tokens
 * (SnapKV's observation window: summed over the window's queries and query heads, any scale)
 * predicts it. This reports that attention (as tierkv_report_attention) and makes the blocks that
 * cover `coverage` of each layer's mass resident in warm, at most `block_limit` in all (the
 * best-attended across layers, each layer's mass normalised to 1; the best touched last, so a
 * recency policy keeps them longest), reading them back from cold; blocks in hot stay there.
 * Every argument is checked before anything is reported or moved.
 *   keys / mass / key_count: the blocks of every layer (and sequence), one layer after another;
 *     masses finite and >= 0; a key appears once.
 *   layer_ends / layer_count: where each layer's run ends in `keys` (non-decreasing, the last
 *     equal to key_count); may be NULL / 0 only when key_count is 0.
 *   coverage: the share of each layer's mass to place, in (0, 1] (0.95 is a good start).
 *   block_limit: the most blocks placed; leave warm room for decode's own arrivals (half of it).
 *   request_out (may be NULL: the reads go on, unpinned): pins the moved blocks in warm until
 *     tierkv_request_release (tierkv_request_cancel withdraws the reads not yet started); NULL
 *     when no block moves. Its block i is moved_keys_out[i].
 *   moved_keys_out (may be NULL): room for key_count keys; receives the blocks moved.
 *   chosen_out, moved_out, from_cold_out (may be NULL): blocks chosen (moved + left in hot);
 *     moved to warm; of them, read back from cold. */
tierkv_status tierkv_place_after_prefill(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, const float *mass, size_t key_count,
    const size_t *layer_ends, size_t layer_count, double coverage, size_t block_limit, tierkv_request **request_out,
    tierkv_block_key *moved_keys_out, size_t *chosen_out, size_t *moved_out, size_t *from_cold_out);
/* Ends a sequence: its blocks lose its reference (they stay cached for prefix hits). */
tierkv_status tierkv_drop_sequence(tierkv_hierarchy *hierarchy, uint64_t sequence);
/* Makes every block durable in the cold tier and checkpoints its index; with key summaries, also
 * writes the snapshot of the cold blocks' summaries (summaries.tkv, as tierkv_close does; cold
 * writes between snapshots are journaled in summaries.log), so a restart can rank them without
 * reading them back. An error after the blocks are durable says so. Outputs may be NULL. */
tierkv_status tierkv_flush(tierkv_hierarchy *hierarchy, uint64_t *written_out, uint64_t *failed_out);

/* ---- CPU attention over warm blocks ---- */

/* Decode attention for one query over `keys` (in token order) on CPU threads: the blocks are
 * made resident in the warm tier, attended, and released. `query` is query_heads * head_dim fp32;
 * `token_counts` (may be NULL: every block full) gives each block's filled tokens (the last one
 * may be partial). `scale` <= 0 means 1/sqrt(head_dim). Writes the partial result per query head:
 * `output` (query_heads * head_dim, normalised), `max_out` (m, the max logit) and `sum_out`
 * (l = sum of exp(logit - m), natural base), so it merges exactly with partials computed
 * elsewhere (tierkv_merge_partials; LSE = m + ln l). A block the hierarchy lacks or cannot read
 * back is an error naming it (NOT_FOUND / CORRUPTION): nothing is silently left out. The layout's
 * dtype must be fp16, bf16 or fp32 and head_dim one of 64, 80, 96, 128, 256. The worker threads
 * (made on the first call) run on the CPUs of the configuration's numa_node when one is set, so
 * they read the warm arena locally; the calling thread is one of the workers and keeps its own
 * affinity. */
tierkv_status tierkv_attend_warm(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, size_t key_count, const int32_t *token_counts,
    const float *query, size_t query_count, float scale, float *output, float *max_out, float *sum_out);

/* Merges `parts` partials of `heads` heads of `head_dim`: outputs[parts][heads][head_dim],
 * maxima[parts][heads], sums[parts][heads] into output[heads][head_dim], max_out[heads],
 * sum_out[heads]. An empty part has m = -inf and l = 0. Exact: merging is associative. */
tierkv_status tierkv_merge_partials(
    size_t parts, size_t heads, size_t head_dim, const float *outputs, const float *maxima, const float *sums,
    float *output, float *max_out, float *sum_out);

/* ---- Prediction ---- */

/* Predicts the share of a layer's attention each candidate block will receive from `query`
 * (query_heads * head_dim fp32, post-RoPE: the layer's own query to choose what to attend, fetch
 * or skip now, or the freshest hint for it, such as the previous token's query or one speculated
 * from an earlier layer, to prefetch before the layer runs). The best hint measured for layer L
 * is layer L's norm, q_proj and RoPE applied to layer L-1's residual after its attention (top-k
 * recall 0.87-0.91 at a 10% hot budget on a trained 12-layer model; 0.79-0.81 from layer L-1's
 * input, InfiniGen's choice; 0.61 from the previous token's query). Scores come from the key summaries
 * (and sketches) the hierarchy keeps for every block it holds in any tier: open it with
 * key_summaries "from-keys". Nothing is moved: make the best-predicted blocks resident with
 * tierkv_make_resident (TIERKV_PRIORITY_PREFETCH for a layer still ahead).
 *   keys / key_count: the candidates. token_counts (may be NULL: all full) gives their filled tokens.
 *   resident_keys / resident_count (may be NULL / 0): blocks the layer attends that are not
 *     candidates (attention sinks, the recent window). With sketch scoring each query head's
 *     softmax is shared with them, as the real attention is; they get no mass of their own.
 *   tail_keys / tail_tokens (may be NULL / 0): fp32 [tail_tokens][kv_heads][head_dim] keys that no
 *     stored block holds (the partly filled block, the current token), shared the same way.
 *   scale: the softmax scale; <= 0 means 1/sqrt(head_dim). scoring: TIERKV_SCORING_*.
 *   mass_out: key_count floats, each >= 0, summing to at most 1 (the rest belongs to the resident
 *     blocks and the tail).
 *   known_out (may be NULL): key_count flags, 1 where the hierarchy holds the block's summary. A
 *     candidate it does not hold (never stored, or dropped) then gets mass 0 and flag 0; with
 *     known_out NULL it is an error (NOT_FOUND naming the key), never a silent zero; a resident
 *     block it does not hold is then an error too, and with known_out it is left out. After a
 *     restart, the cold blocks get their summaries back from the cache directory (summaries.tkv
 *     and its journal summaries.log, kept up to date by every cold write, a crash included);
 *     those they do not cover (a damaged or lost file) have none until
 *     tierkv_rebuild_key_summaries (stats: summarized_blocks, summaries_restored).
 * Thread-safe; the hierarchy's summaries are read under a lock. */
tierkv_status tierkv_predict_mass(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, size_t key_count, const int32_t *token_counts,
    const tierkv_block_key *resident_keys, size_t resident_count, const float *tail_keys, size_t tail_tokens,
    const float *query, size_t query_count, float scale, int32_t scoring, float *mass_out, int32_t *known_out);

/* Computes the key summaries (and sketches) of every block the hierarchy holds without one. After
 * a restart, cold blocks that summaries.tkv and summaries.log did not cover (a damaged or lost
 * file) have none until they come back to warm, so tierkv_predict_mass could not rank them; call
 * this once after tierkv_open (it may run on a background thread; it reads nothing when every
 * block has its summary). Each block is brought to warm at prefetch priority, summarised and
 * released, `batch_blocks` at a time (0: a quarter of warm_blocks). Outputs (each may be NULL):
 * blocks that lacked a summary, those that now have one, and those that could not be read back
 * (corrupt or unreadable copies, or dropped meanwhile). */
tierkv_status tierkv_rebuild_key_summaries(
    tierkv_hierarchy *hierarchy, size_t batch_blocks, uint64_t *missing_out, uint64_t *rebuilt_out, uint64_t *failed_out);

/* ---- Placement ----
 * For one layer, where each block it needs gets its attention computed: a cost model from the
 * link rates and the CPU attention rate (measure them with `tierkv bench transfer`, `tierkv bench
 * storage` and `tierkv bench attention`), greedy in arrival order, each block going where the
 * layer finishes sooner (the layer finishes at max(last fetch + gpu_seconds, last CPU block)). */
typedef struct tierkv_placement_options {
    uint64_t struct_size;               /* sizeof(tierkv_placement_options) */
    double host_to_device_bytes_per_s;  /* > 0 */
    double cold_read_bytes_per_s;       /* > 0 */
    double cpu_attention_bytes_per_s;   /* K/V bytes per second CPU attention reads; 0: CPU attention off */
    double gpu_seconds;                 /* the layer's GPU time once its blocks are in hot, >= 0 */
    float skip_below_mass;              /* approximate mode: skip blocks below this mass; 0: exact, never skip */
    int32_t reserved;                   /* 0 */
} tierkv_placement_options;

/* Plans one layer: `keys` are the blocks it needs, `mass` (may be NULL unless skipping) their
 * predicted or reported shares of its attention. Fetches are capped at the hot slots neither
 * pinned nor holding the layer's blocks; with CPU attention on the rest go to the CPU, without
 * it they stay FETCH and the engine attends the layer in rounds (hot holds fewer blocks than it
 * needs). decisions_out: key_count TIERKV_PLACE_* values;
 * estimated_seconds_out (may be NULL): the model's estimate of when the layer finishes. Nothing
 * moves: make the FETCH blocks resident in hot, attend the CPU ones with tierkv_attend_warm and
 * merge the partials (tierkv_merge_partials). */
tierkv_status tierkv_plan_layer(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, size_t key_count, const float *mass,
    const tierkv_placement_options *options, int32_t *decisions_out, double *estimated_seconds_out);

/* ---- Prefetch ----
 * tierkv_predict_mass plus the moves: the best-predicted blocks of a coming layer are made
 * resident in hot (and, below them, cold ones staged into warm) at prefetch priority, under a
 * budget, a coverage cut and the time left before the layer runs. When the layer has run, settle
 * the ticket with the attention it computed: the library then knows what the prediction was
 * worth (tierkv_get_prefetch_stats: precision, recall, timeliness, wasted bytes). */
typedef struct tierkv_prefetch_options {
    uint64_t struct_size;              /* sizeof(tierkv_prefetch_options) */
    uint32_t budget_blocks;            /* best-predicted blocks made resident in hot (pinned until settled) */
    uint32_t staging_blocks;           /* best-predicted blocks, counting those, staged cold->warm; 0: none */
    double seconds_until_needed;       /* time before the layer runs; <= 0 or INFINITY: no deadline */
    double host_to_device_bytes_per_s; /* the link rates a deadline is planned with (needed with one) */
    double cold_read_bytes_per_s;
    float coverage;                    /* stop once the chosen blocks hold this share of the predicted mass; 0: 1 */
    float scale;                       /* softmax scale; <= 0: 1/sqrt(head_dim) */
    int32_t scoring;                   /* TIERKV_SCORING_* */
    int32_t reserved;                  /* 0 */
} tierkv_prefetch_options;

typedef struct tierkv_prefetch_stats {
    uint64_t struct_size;             /* sizeof(tierkv_prefetch_stats) */
    uint64_t predictions;             /* tierkv_prefetch calls */
    uint64_t settled;
    uint64_t abandoned;
    uint64_t fetched_blocks;          /* moved (or moving) to hot when settled */
    uint64_t staged_blocks;           /* read (or being read) cold->warm when settled */
    uint64_t withdrawn_blocks;        /* issued but withdrawn before their move started */
    uint64_t wasted_blocks;           /* moved but not needed by the layer */
    uint64_t top_k_blocks;            /* the layers' true top-k blocks, summed */
    uint64_t top_k_resident_in_time;  /* of those, in hot when settled */
    double wasted_bytes;              /* link bytes spent on blocks not needed */
    double precision;                 /* moved blocks that were in the true top-k */
    double recall;                    /* true top-k blocks in hot in time */
    double timeliness;                /* moved blocks that had arrived when settled */
} tierkv_prefetch_stats;

/* Predicts the candidates `keys` (as tierkv_predict_mass, the same arguments up to `query_count`)
 * and moves the best of them under `options` (required; struct_size set, reserved 0).
 * Blocks already in hot are pinned, the others fetched best first while each is expected to
 * arrive in time; those the hierarchy does not hold are skipped and counted. *out is a ticket
 * owned by the caller: settle or abandon it (tierkv_close abandons what is left). Outputs may be
 * NULL: blocks sent to hot, blocks staged to warm, candidates the hierarchy does not hold. */
tierkv_status tierkv_prefetch(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, size_t key_count, const int32_t *token_counts,
    const tierkv_block_key *resident_keys, size_t resident_count, const float *tail_keys, size_t tail_tokens,
    const float *query, size_t query_count, const tierkv_prefetch_options *options, tierkv_prefetch_ticket **out,
    uint64_t *fetched_out, uint64_t *staged_out, uint64_t *unknown_out);
/* tierkv_prefetch from masses the engine predicted itself (attention history it keeps on the GPU,
 * its own mix of predictors, ...) instead of a query: mass holds key_count finite floats >= 0, one
 * per key (higher moves first; they need not sum to 1, and `coverage` is a share of their sum).
 * The keys are one layer's; no key summaries are needed. options as for tierkv_prefetch, with
 * scale and scoring 0; the ticket and the outputs (unknown_out: keys the hierarchy does not hold)
 * are the same, settled or abandoned the same way. */
tierkv_status tierkv_prefetch_mass(
    tierkv_hierarchy *hierarchy, const tierkv_block_key *keys, size_t key_count, const float *mass,
    const tierkv_prefetch_options *options, tierkv_prefetch_ticket **out, uint64_t *fetched_out, uint64_t *staged_out,
    uint64_t *unknown_out);
/* Waits until the ticket's moves have landed (or failed); timeout < 0 waits for ever. TIMEOUT
 * when they have not. An engine need not wait: its own demand request for the layer does. */
tierkv_status tierkv_prefetch_wait(tierkv_prefetch_ticket *ticket, double timeout_seconds);
/* Settles and frees a ticket when its layer has run, before the layer's own demand request:
 * `actual_mass` is the attention each candidate received (key_count floats, in the order given
 * to tierkv_prefetch), `needed` (may be NULL) flags the candidates the layer used (NULL: its
 * top_k blocks), `top_k` the k of the recall (0: the ticket's budget_blocks). The pins are
 * released and moves not yet started are withdrawn. */
tierkv_status tierkv_prefetch_settle(
    tierkv_prefetch_ticket *ticket, const float *actual_mass, const int32_t *needed, size_t top_k);
/* Frees a ticket whose layer will not run; its queued moves are withdrawn. */
tierkv_status tierkv_prefetch_abandon(tierkv_prefetch_ticket *ticket);
tierkv_status tierkv_get_prefetch_stats(tierkv_hierarchy *hierarchy, tierkv_prefetch_stats *out);

/* ---- Learned prediction ----
 * A predictor that mixes three views of a coming layer and learns, per layer, how far to trust
 * each: a query speculated for the layer from an earlier one (InfiniGen), the freshest query the
 * engine has for it (the previous token's, or its own once known), both scored as in
 * tierkv_predict_mass, and the layer's attention history (H2O: the mass each block received,
 * decayed per step of the layer, blended with recency). Each part's masses are normalised, then
 * mixed by weight; a part with nothing to go on (its query not passed, no history yet for the
 * layer) is left out and the others renormalised. With adapt_top_k, every tierkv_predictor_observe
 * scores each part's last prediction for that layer by its mass coverage at adapt_top_k (the
 * attention mass of its top-k blocks / that of the true top-k) and a part's weight becomes its
 * given weight * exp(-adapt_rate * (its average loss - the best part's)), exponential weights as
 * in Hedge. On a trained 12-layer model's trace this took the mix's top-k recall from 0.71 to
 * 0.80 at a 10% hot budget (docs/measurements.md). Feed the result to tierkv_prefetch_mass.
 * A predictor belongs to its hierarchy: tierkv_close releases those still open. Thread-safe:
 * predictions of one predictor run one at a time; observe and predict may come from any thread. */
typedef struct tierkv_predictor tierkv_predictor;

typedef struct tierkv_predictor_options {
    uint64_t struct_size;         /* sizeof(tierkv_predictor_options) */
    float speculative_weight;     /* the speculated query's part, >= 0 (0.5 in TIERKV_PREDICTOR_OPTIONS_INIT) */
    float query_weight;           /* the freshest query's part, >= 0 (0.3) */
    float history_weight;         /* the attention history's part, >= 0 (0.2); the three may not all be 0 */
    float history_decay;          /* kept share of a block's accumulated mass per step of its layer, in (0, 1] (0.9) */
    float recency_weight;         /* share of the history part given to recency, in [0, 1] (0.2) */
    float recency_window_blocks;  /* recency falls as exp(-age / window), age in blocks behind the newest, > 0 (8) */
    uint32_t adapt_top_k;         /* > 0: learn each layer's weights (set it to the blocks a layer can have in hot); 0: fixed (0) */
    float adapt_rate;             /* how sharply the weights follow the losses, >= 0 (100) */
    float adapt_memory;           /* kept share of a part's average loss per observation, in [0, 1) (0.9) */
    float scale;                  /* softmax scale of the query parts; <= 0: 1/sqrt(head_dim) (0) */
    int32_t scoring;              /* TIERKV_SCORING_* of the query parts (0) */
    int32_t reserved;             /* 0 */
} tierkv_predictor_options;

/* The defaults, the values the simulator measured best (tierkv simulate --prefetch combined). */
#define TIERKV_PREDICTOR_OPTIONS_INIT \
    { sizeof(tierkv_predictor_options), 0.5f, 0.3f, 0.2f, 0.9f, 0.2f, 8.0f, 0u, 100.0f, 0.9f, 0.0f, 0, 0 }

/* A predictor for `hierarchy` (options required; start from TIERKV_PREDICTOR_OPTIONS_INIT). The
 * query parts need key summaries (key_summaries "from-keys"); with none, set speculative_weight
 * and query_weight to 0 for history alone. *out is owned by the caller: tierkv_predictor_release. */
tierkv_status tierkv_predictor_create(
    tierkv_hierarchy *hierarchy, const tierkv_predictor_options *options, tierkv_predictor **out);
/* Predicts the share of a layer's attention each candidate will receive. Arguments as
 * tierkv_predict_mass, plus:
 *   positions (may be NULL: the candidates' order, 0 first): each candidate's block index in its
 *     sequence; newest_position: the sequence's newest block (< 0: the last candidate's). Recency
 *     is measured between them.
 *   speculated_query, query (each may be NULL): query_count floats each, the hints of the two
 *     query parts; a part whose hint is NULL is left out of this prediction.
 *   mass_out: key_count floats >= 0 summing to at most 1; all 0 when no part had anything to go on.
 *   known_out (may be NULL): as tierkv_predict_mass's; a query part in use needs each candidate's
 *     summary, history needs the hierarchy to hold the block. An unknown candidate gets mass 0. */
tierkv_status tierkv_predictor_predict(
    tierkv_predictor *predictor, const tierkv_block_key *keys, size_t key_count, const int32_t *token_counts,
    const int32_t *positions, int32_t newest_position, const tierkv_block_key *resident_keys, size_t resident_count,
    const float *tail_keys, size_t tail_tokens, const float *speculated_query, const float *query, size_t query_count,
    float *mass_out, int32_t *known_out);
/* After the layer ran: the attention each of `keys` (one layer's blocks, resident ones included)
 * received; blocks not listed received none. It feeds the history and, with adapt_top_k, scores
 * the parts' last prediction for the layer. */
tierkv_status tierkv_predictor_observe(
    tierkv_predictor *predictor, const tierkv_block_key *keys, size_t key_count, const float *mass);
/* The weights the next prediction for `layer` uses: weights_out[3] = speculative, query, history. */
tierkv_status tierkv_predictor_weights(tierkv_predictor *predictor, uint32_t layer, float *weights_out);
/* Forgets the history of blocks that left the cache (a dropped sequence). Entries whose decayed
 * mass fell below 1e-6 are forgotten on their own. */
tierkv_status tierkv_predictor_forget(tierkv_predictor *predictor, const tierkv_block_key *keys, size_t key_count);
tierkv_status tierkv_predictor_release(tierkv_predictor *predictor);

#ifdef __cplusplus
}
#endif

#endif /* TIERKV_H */
