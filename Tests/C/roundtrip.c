/*
 * The C ABI round trip: store -> evict to cold -> fetch (hot and warm) -> CPU attention, checked
 * against a direct computation; then bad input, which must give error codes and messages, never
 * a crash. Valid C11 and C++17: tools/test compiles it both ways.
 *
 * Usage: roundtrip CACHE_DIR
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include "tierkv.h"

static int failures = 0;

#define CHECK(condition, ...)                                                             \
    do {                                                                                  \
        if (!(condition)) {                                                               \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #condition);          \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fprintf(stderr, " (last error: %s)\n", tierkv_last_error());                 \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

#define CHECK_OK(call) CHECK((call) == TIERKV_OK, "%s", #call)

/* Expects `status` from `call` and a message containing `fragment`. */
#define CHECK_ERROR(call, status, fragment)                                                        \
    do {                                                                                           \
        tierkv_status got_ = (call);                                                               \
        CHECK(got_ == (status), "%s returned %d (%s), expected %s", #call, got_,                  \
              tierkv_status_name(got_), tierkv_status_name(status));                              \
        CHECK(strstr(tierkv_last_error(), (fragment)) != NULL, "message lacks \"%s\"", fragment); \
    } while (0)

enum { LAYERS = 1, KV_HEADS = 2, QUERY_HEADS = 4, HEAD_DIM = 64, TOKENS_PER_BLOCK = 16, BLOCKS = 12 };
enum { ROW = KV_HEADS * HEAD_DIM, BLOCK_FLOATS = 2 * TOKENS_PER_BLOCK * ROW };

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float next_float(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Attention of one query over `blocks` blocks (the last with `last_tokens` tokens), in double. */
static void reference_attention(
    float blocks_data[][BLOCK_FLOATS], int blocks, int last_tokens, const float *query, double *output) {
    const double scale = 1.0 / sqrt((double)HEAD_DIM);
    for (int head = 0; head < QUERY_HEADS; head++) {
        int kv_head = head / (QUERY_HEADS / KV_HEADS);
        double maximum = -INFINITY, sum = 0;
        double accumulated[HEAD_DIM] = {0};
        for (int pass = 0; pass < 2; pass++) {
            for (int block = 0; block < blocks; block++) {
                int tokens = block == blocks - 1 ? last_tokens : TOKENS_PER_BLOCK;
                for (int token = 0; token < tokens; token++) {
                    const float *key = blocks_data[block] + token * ROW + kv_head * HEAD_DIM;
                    const float *value = blocks_data[block] + TOKENS_PER_BLOCK * ROW + token * ROW + kv_head * HEAD_DIM;
                    double logit = 0;
                    for (int d = 0; d < HEAD_DIM; d++) logit += (double)query[head * HEAD_DIM + d] * key[d];
                    logit *= scale;
                    if (pass == 0) {
                        if (logit > maximum) maximum = logit;
                    } else {
                        double weight = exp(logit - maximum);
                        sum += weight;
                        for (int d = 0; d < HEAD_DIM; d++) accumulated[d] += weight * value[d];
                    }
                }
            }
        }
        for (int d = 0; d < HEAD_DIM; d++) output[head * HEAD_DIM + d] = accumulated[d] / sum;
    }
}

/* Each block's share of the attention of `query` over `blocks` full blocks, averaged over query
 * heads, in double: what tierkv_predict_mass predicts. */
static void reference_block_mass(float blocks_data[][BLOCK_FLOATS], int blocks, const float *query, double *mass) {
    const double scale = 1.0 / sqrt((double)HEAD_DIM);
    for (int block = 0; block < blocks; block++) mass[block] = 0;
    for (int head = 0; head < QUERY_HEADS; head++) {
        int kv_head = head / (QUERY_HEADS / KV_HEADS);
        double logits[BLOCKS][TOKENS_PER_BLOCK], maximum = -INFINITY, total = 0;
        for (int block = 0; block < blocks; block++) {
            for (int token = 0; token < TOKENS_PER_BLOCK; token++) {
                const float *key = &blocks_data[block][(token * KV_HEADS + kv_head) * HEAD_DIM];
                double dot = 0;
                for (int d = 0; d < HEAD_DIM; d++) dot += (double)query[head * HEAD_DIM + d] * key[d];
                logits[block][token] = dot * scale;
                maximum = fmax(maximum, dot * scale);
            }
        }
        for (int block = 0; block < blocks; block++)
            for (int token = 0; token < TOKENS_PER_BLOCK; token++) total += exp(logits[block][token] - maximum);
        for (int block = 0; block < blocks; block++) {
            double share = 0;
            for (int token = 0; token < TOKENS_PER_BLOCK; token++) share += exp(logits[block][token] - maximum);
            mass[block] += share / total / QUERY_HEADS;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CACHE_DIR\n", argv[0]);
        return 2;
    }
    printf("tierkv %s (ABI %d)\n", tierkv_version(), tierkv_abi_version());
    CHECK(tierkv_abi_version() == TIERKV_ABI_VERSION, "the library's ABI is %d, the header's %d", tierkv_abi_version(),
          TIERKV_ABI_VERSION);

    char config[1024];
    snprintf(config, sizeof config,
             "{\"layout\": {\"layers\": %d, \"kv_heads\": %d, \"query_heads\": %d, \"head_dim\": %d, "
             "\"tokens_per_block\": %d, \"dtype\": \"fp32\"}, \"hot_blocks\": 2, \"warm_blocks\": 8, "
             "\"cold_blocks\": 64, \"cache_dir\": \"%s\", \"accelerator\": \"emulated\", \"cpu_threads\": 2, "
             "\"buffered_fallback\": true, \"key_summaries\": \"from-keys\"}",
             LAYERS, KV_HEADS, QUERY_HEADS, HEAD_DIM, TOKENS_PER_BLOCK, argv[1]);
    tierkv_hierarchy *hierarchy = NULL;
    CHECK_OK(tierkv_open(config, &hierarchy));
    if (hierarchy == NULL) return 1;

    tierkv_layout layout;
    CHECK_OK(tierkv_get_layout(hierarchy, &layout));
    CHECK(layout.block_bytes == sizeof(float) * BLOCK_FLOATS, "block_bytes %llu", (unsigned long long)layout.block_bytes);
    CHECK(strcmp(layout.dtype, "fp32") == 0, "dtype %s", layout.dtype);

    /* Keys of BLOCKS full blocks of one token sequence. */
    uint32_t tokens[BLOCKS * TOKENS_PER_BLOCK];
    for (int i = 0; i < BLOCKS * TOKENS_PER_BLOCK; i++) tokens[i] = (uint32_t)(1000 + i * 7);
    tierkv_block_key keys[BLOCKS];
    size_t key_count = 0;
    CHECK_ERROR(tierkv_block_keys(hierarchy, tokens, BLOCKS * TOKENS_PER_BLOCK, 0, keys, 3, &key_count),
                TIERKV_ERROR_BUFFER_TOO_SMALL, "12 are needed");
    CHECK(key_count == BLOCKS, "count %zu", key_count);
    CHECK_OK(tierkv_block_keys(hierarchy, tokens, BLOCKS * TOKENS_PER_BLOCK, 0, keys, BLOCKS, &key_count));

    /* Store every block for sequence 7: more than hot + warm hold, so some go to cold. */
    static float data[BLOCKS][BLOCK_FLOATS];
    for (int block = 0; block < BLOCKS; block++) {
        for (int i = 0; i < BLOCK_FLOATS; i++) data[block][i] = next_float();
        int32_t stored = -1;
        CHECK_OK(tierkv_store(hierarchy, &keys[block], block, data[block], sizeof data[block], 7, &stored));
        CHECK(stored == 1, "block %d stored=%d", block, stored);
    }
    int32_t stored_again = -1;
    CHECK_OK(tierkv_store(hierarchy, &keys[0], 0, data[0], sizeof data[0], 8, &stored_again));
    CHECK(stored_again == 0, "a second store of a cached key copies nothing (stored=%d)", stored_again);

    tierkv_prefix prefix;
    CHECK_OK(tierkv_lookup_prefix(hierarchy, tokens, BLOCKS * TOKENS_PER_BLOCK, &prefix));
    CHECK(prefix.cached == BLOCKS && prefix.requested == BLOCKS, "cached %llu of %llu", (unsigned long long)prefix.cached,
          (unsigned long long)prefix.requested);

    tierkv_stats stats;
    memset(&stats, 0, sizeof stats);
    CHECK_ERROR(tierkv_get_stats(hierarchy, &stats), TIERKV_ERROR_INVALID_ARGUMENT, "struct_size");
    stats.struct_size = sizeof stats;
    CHECK_OK(tierkv_get_stats(hierarchy, &stats));
    CHECK(stats.cold.resident_blocks > 0, "nothing went to cold (%llu)", (unsigned long long)stats.cold.resident_blocks);
    CHECK(stats.accelerator_is_emulated == 1, "the emulated accelerator is reported as such");
    CHECK(stats.struct_size == sizeof stats, "struct_size came back as %llu", (unsigned long long)stats.struct_size);
    CHECK(stats.summarized_blocks > 0 && stats.summaries_restored == 0, "summaries %llu, restored %llu",
          (unsigned long long)stats.summarized_blocks, (unsigned long long)stats.summaries_restored);
    /* A caller built against the first header knows only the fields up to accelerator_is_emulated:
     * the library fills those, says so in struct_size and writes nothing past them. */
    memset(&stats, 0xAB, sizeof stats);
    stats.struct_size = offsetof(tierkv_stats, summarized_blocks);
    CHECK_OK(tierkv_get_stats(hierarchy, &stats));
    CHECK(stats.struct_size == offsetof(tierkv_stats, summarized_blocks), "an older caller's struct_size came back as %llu",
          (unsigned long long)stats.struct_size);
    CHECK(stats.accelerator_is_emulated == 1 && stats.summarized_blocks == 0xABABABABABABABABull,
          "an older caller's struct was filled wrongly");
    int32_t tier = -1;
    CHECK_OK(tierkv_fastest_tier(hierarchy, &keys[0], &tier));
    CHECK(tier == TIERKV_TIER_COLD, "block 0 should have been evicted to cold, it is in tier %d", tier);

    /* Fetch block 0 from cold into hot; its device copy is stored again under another key
     * (store from device memory) and both read back byte-exact. */
    tierkv_request *request = NULL;
    CHECK_OK(tierkv_make_resident(hierarchy, &keys[0], 1, TIERKV_TIER_HOT, TIERKV_PRIORITY_DEMAND, &request));
    CHECK_OK(tierkv_request_wait(request, 10.0));
    int32_t ready = 0;
    CHECK_OK(tierkv_request_poll(request, &ready));
    CHECK(ready == 1, "ready after wait");
    tierkv_block_location location;
    CHECK_OK(tierkv_request_block(request, 0, &location));
    CHECK(location.state == TIERKV_BLOCK_READY && location.device_address != 0, "state %d address %llu", location.state,
          (unsigned long long)location.device_address);
    CHECK_ERROR(tierkv_request_block(request, 1, &location), TIERKV_ERROR_INVALID_ARGUMENT, "out of range");
    uint32_t other_tokens[TOKENS_PER_BLOCK];
    for (int i = 0; i < TOKENS_PER_BLOCK; i++) other_tokens[i] = (uint32_t)(5 + i);
    tierkv_block_key other_key;
    size_t other_count = 0;
    CHECK_OK(tierkv_block_keys(hierarchy, other_tokens, TOKENS_PER_BLOCK, 0, &other_key, 1, &other_count));
    CHECK_OK(tierkv_request_block(request, 0, &location));
    CHECK_OK(tierkv_store_from_device(hierarchy, &other_key, 0, location.device_address, (size_t)layout.block_bytes,
                                      TIERKV_NO_SEQUENCE, NULL));
    /* Many blocks from device memory in one call: other_key again (already cached) and a new key. */
    uint32_t third_tokens[TOKENS_PER_BLOCK];
    for (int i = 0; i < TOKENS_PER_BLOCK; i++) third_tokens[i] = (uint32_t)(900 + i);
    tierkv_block_key many_keys[2] = {other_key, other_key};
    CHECK_OK(tierkv_block_keys(hierarchy, third_tokens, TOKENS_PER_BLOCK, 0, &many_keys[1], 1, &other_count));
    int64_t many_positions[2] = {0, 0};
    uint64_t many_addresses[2] = {location.device_address, location.device_address};
    int32_t many_stored[2] = {-1, -1};
    size_t many_done = 99;
    CHECK_OK(tierkv_store_many_from_device(hierarchy, many_keys, many_positions, many_addresses, 2, TIERKV_NO_SEQUENCE,
                                           many_stored, &many_done));
    CHECK(many_done == 2 && many_stored[0] == 0 && many_stored[1] == 1, "done %zu, stored %d %d", many_done,
          many_stored[0], many_stored[1]);
    many_addresses[1] = 0;
    CHECK_ERROR(tierkv_store_many_from_device(hierarchy, many_keys, many_positions, many_addresses, 2,
                                              TIERKV_NO_SEQUENCE, many_stored, &many_done),
                TIERKV_ERROR_INVALID_ARGUMENT, "device_addresses[1] is 0");
    CHECK(many_done == 0, "nothing is stored when an argument is bad (done %zu)", many_done);
    CHECK_ERROR(tierkv_store_many_from_device(hierarchy, NULL, many_positions, many_addresses, 2, TIERKV_NO_SEQUENCE,
                                              NULL, NULL),
                TIERKV_ERROR_INVALID_ARGUMENT, "keys is NULL");
    CHECK_OK(tierkv_request_release(request));
    CHECK_ERROR(tierkv_request_release(request), TIERKV_ERROR_INVALID_HANDLE, "not an open request handle");

    static float read_back[BLOCK_FLOATS];
    CHECK_OK(tierkv_read(hierarchy, &keys[0], read_back, sizeof read_back));
    CHECK(memcmp(read_back, data[0], sizeof read_back) == 0, "block 0 read back differs");
    memset(read_back, 0, sizeof read_back);
    CHECK_OK(tierkv_read(hierarchy, &other_key, read_back, sizeof read_back));
    CHECK(memcmp(read_back, data[0], sizeof read_back) == 0, "the block stored from device memory differs");
    memset(read_back, 0, sizeof read_back);
    CHECK_OK(tierkv_read(hierarchy, &many_keys[1], read_back, sizeof read_back));
    CHECK(memcmp(read_back, data[0], sizeof read_back) == 0, "the block stored by tierkv_store_many_from_device differs");

    /* Placement after a prefill: blocks 1 and 2 got the attention, so they end in warm (or stay
     * in hot), read back from cold where the later blocks pushed them. */
    {
        float prefill_mass[BLOCKS] = {0};
        prefill_mass[1] = 2.0f;
        prefill_mass[2] = 1.0f;
        size_t layer_ends[1] = {BLOCKS}, bad_ends[1] = {BLOCKS - 1};
        tierkv_block_key moved_keys[BLOCKS];
        size_t chosen = 0, moved = 0, from_cold = 0;
        CHECK_ERROR(tierkv_place_after_prefill(hierarchy, keys, prefill_mass, BLOCKS, bad_ends, 1, 1.0, 8, NULL, NULL,
                                               NULL, NULL, NULL),
                    TIERKV_ERROR_INVALID_ARGUMENT, "the last layer ends at key_count");
        tierkv_request *placed = NULL;
        CHECK_OK(tierkv_place_after_prefill(hierarchy, keys, prefill_mass, BLOCKS, layer_ends, 1, 1.0, 8, &placed,
                                            moved_keys, &chosen, &moved, &from_cold));
        CHECK(chosen == 2 && moved <= 2 && from_cold <= moved, "chosen %zu, moved %zu, from cold %zu", chosen, moved,
              from_cold);
        CHECK((moved == 0) == (placed == NULL), "a request exactly when blocks move (moved %zu)", moved);
        if (placed != NULL) {
            CHECK_OK(tierkv_request_wait(placed, 10.0));
            for (size_t i = 0; i < moved; i++) {
                CHECK(memcmp(&moved_keys[i], &keys[1], sizeof keys[1]) == 0 ||
                          memcmp(&moved_keys[i], &keys[2], sizeof keys[2]) == 0,
                      "moved key %zu is neither block 1 nor block 2", i);
                CHECK_OK(tierkv_request_block(placed, i, &location));
                CHECK(location.state == TIERKV_BLOCK_READY && location.host_pointer != NULL, "placed block %zu state %d",
                      i, location.state);
            }
            CHECK_OK(tierkv_request_release(placed));
        }
        for (int block = 1; block <= 2; block++) {
            CHECK_OK(tierkv_fastest_tier(hierarchy, &keys[block], &tier));
            CHECK(tier != TIERKV_TIER_COLD, "placed block %d is still only in cold", block);
        }
    }

    /* A whole request's block table in one call: the same as one call per block, at one instant. */
    {
        tierkv_block_key table_keys[BLOCKS + 1];
        memcpy(table_keys, keys, sizeof(tierkv_block_key) * BLOCKS);
        uint32_t absent_tokens[TOKENS_PER_BLOCK];
        for (int i = 0; i < TOKENS_PER_BLOCK; i++) absent_tokens[i] = (uint32_t)(7000 + i);
        size_t absent_count = 0;
        CHECK_OK(tierkv_block_keys(hierarchy, absent_tokens, TOKENS_PER_BLOCK, 0, &table_keys[BLOCKS], 1, &absent_count));
        tierkv_request *table = NULL;
        CHECK_OK(tierkv_make_resident(hierarchy, table_keys, BLOCKS + 1, TIERKV_TIER_WARM, TIERKV_PRIORITY_DEMAND, &table));
        CHECK_OK(tierkv_request_wait(table, 10.0));
        tierkv_block_location all[BLOCKS + 1], one;
        CHECK_OK(tierkv_request_blocks(table, 0, BLOCKS + 1, all));
        for (size_t i = 0; i <= BLOCKS; i++) {
            CHECK_OK(tierkv_request_block(table, i, &one));
            CHECK(all[i].state == one.state && all[i].host_pointer == one.host_pointer &&
                      all[i].device_address == one.device_address && all[i].byte_count == one.byte_count &&
                      all[i].tier == TIERKV_TIER_WARM,
                  "block %zu: the table and the single call disagree", i);
        }
        CHECK(all[0].state == TIERKV_BLOCK_READY && all[0].host_pointer != NULL, "block 0 state %d", all[0].state);
        CHECK(all[BLOCKS].state == TIERKV_BLOCK_MISSING && all[BLOCKS].host_pointer == NULL, "absent block state %d",
              all[BLOCKS].state);
        tierkv_block_location tail[2];
        CHECK_OK(tierkv_request_blocks(table, BLOCKS - 1, 2, tail));
        CHECK(tail[0].state == all[BLOCKS - 1].state && tail[1].state == TIERKV_BLOCK_MISSING, "the tail of the table");
        CHECK_OK(tierkv_request_blocks(table, BLOCKS + 1, 0, NULL));
        CHECK_ERROR(tierkv_request_blocks(table, 1, BLOCKS + 1, all), TIERKV_ERROR_INVALID_ARGUMENT, "leave the request, which has 13 blocks");
        CHECK_ERROR(tierkv_request_blocks(table, (size_t)-1, 2, all), TIERKV_ERROR_INVALID_ARGUMENT, "18446744073709551615 + 2 leave the request");
        CHECK_ERROR(tierkv_request_blocks(table, 0, 1, NULL), TIERKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        CHECK_OK(tierkv_request_release(table));
        CHECK_ERROR(tierkv_request_blocks(table, 0, 1, all), TIERKV_ERROR_INVALID_HANDLE, "not an open request handle");
    }

    /* CPU attention over the first 6 blocks (the last holding 10 tokens), from warm. */
    enum { ATTENDED = 6, LAST_TOKENS = 10 };
    float query[QUERY_HEADS * HEAD_DIM];
    for (int i = 0; i < QUERY_HEADS * HEAD_DIM; i++) query[i] = next_float();
    int32_t token_counts[ATTENDED] = {16, 16, 16, 16, 16, LAST_TOKENS};
    float output[QUERY_HEADS * HEAD_DIM], maxima[QUERY_HEADS], sums[QUERY_HEADS];
    CHECK_OK(tierkv_attend_warm(hierarchy, keys, ATTENDED, token_counts, query, QUERY_HEADS * HEAD_DIM, 0, output, maxima,
                                sums));
    double expected[QUERY_HEADS * HEAD_DIM];
    reference_attention(data, ATTENDED, LAST_TOKENS, query, expected);
    double worst = 0;
    for (int i = 0; i < QUERY_HEADS * HEAD_DIM; i++) worst = fmax(worst, fabs(output[i] - expected[i]));
    printf("CPU attention over %d warm blocks: max abs error %.3g against double\n", ATTENDED, worst);
    CHECK(worst <= 1e-5, "attention error %g", worst);

    /* Two partials (blocks 0-2 and 3-5) merged equal the whole. */
    float parts_output[2][QUERY_HEADS * HEAD_DIM], parts_max[2][QUERY_HEADS], parts_sum[2][QUERY_HEADS];
    CHECK_OK(tierkv_attend_warm(hierarchy, keys, 3, token_counts, query, QUERY_HEADS * HEAD_DIM, 0, parts_output[0],
                                parts_max[0], parts_sum[0]));
    CHECK_OK(tierkv_attend_warm(hierarchy, keys + 3, 3, token_counts + 3, query, QUERY_HEADS * HEAD_DIM, 0,
                                parts_output[1], parts_max[1], parts_sum[1]));
    float merged[QUERY_HEADS * HEAD_DIM], merged_max[QUERY_HEADS], merged_sum[QUERY_HEADS];
    CHECK_OK(tierkv_merge_partials(2, QUERY_HEADS, HEAD_DIM, &parts_output[0][0], &parts_max[0][0], &parts_sum[0][0], merged,
                                   merged_max, merged_sum));
    double merge_error = 0;
    for (int i = 0; i < QUERY_HEADS * HEAD_DIM; i++) merge_error = fmax(merge_error, fabs(merged[i] - output[i]));
    CHECK(merge_error <= 1e-5, "merged partials differ from the whole by %g", merge_error);
    for (int head = 0; head < QUERY_HEADS; head++) {
        CHECK(fabsf(merged_max[head] - maxima[head]) <= 1e-6f, "head %d max", head);
        CHECK(fabsf(merged_sum[head] - sums[head]) <= 1e-3f * sums[head], "head %d sum", head);
    }

    /* Predicted attention mass per block from the key sketches kept for every stored block (in
     * any tier), against the exact mass; a uniform guess is the baseline it must beat. */
    float mass[BLOCKS];
    int32_t known[BLOCKS];
    double exact_mass[BLOCKS], predicted_error = 0, uniform_error = 0, total_mass = 0;
    CHECK_OK(tierkv_predict_mass(hierarchy, keys, BLOCKS, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, 0,
                                 TIERKV_SCORING_DEFAULT, mass, NULL));
    reference_block_mass(data, BLOCKS, query, exact_mass);
    for (int block = 0; block < BLOCKS; block++) {
        CHECK(mass[block] >= 0, "mass[%d] = %g", block, mass[block]);
        total_mass += mass[block];
        predicted_error += fabs(mass[block] - exact_mass[block]);
        uniform_error += fabs(1.0 / BLOCKS - exact_mass[block]);
    }
    printf("predicted block mass: total %.4f, L1 error %.4f against exact (a uniform guess: %.4f)\n", total_mass,
           predicted_error, uniform_error);
    CHECK(fabs(total_mass - 1) < 1e-4, "the candidates are every attended block, yet the masses add up to %g", total_mass);
    CHECK(predicted_error < 0.6 * uniform_error, "prediction error %g against %g for a uniform guess", predicted_error,
          uniform_error);

    /* Prefetch: the 3 best-predicted blocks go to hot, pinned until the ticket is settled against
     * the exact attention; the prefetch statistics then say what the prediction was worth. */
    tierkv_prefetch_options options;
    memset(&options, 0, sizeof options);
    options.budget_blocks = 3;
    tierkv_prefetch_ticket *ticket = NULL;
    CHECK_ERROR(tierkv_prefetch(hierarchy, keys, BLOCKS, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, &options,
                                &ticket, NULL, NULL, NULL),
                TIERKV_ERROR_INVALID_ARGUMENT, "struct_size");
    options.struct_size = sizeof options;
    uint64_t fetched = 0, staged = 0, unknown = 0;
    CHECK_OK(tierkv_prefetch(hierarchy, keys, BLOCKS, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, &options, &ticket,
                             &fetched, &staged, &unknown));
    CHECK(fetched + staged <= 3 && unknown == 0, "fetched %llu, staged %llu, unknown %llu", (unsigned long long)fetched,
          (unsigned long long)staged, (unsigned long long)unknown);
    CHECK_OK(tierkv_prefetch_wait(ticket, 10));
    float actual[BLOCKS];
    for (int block = 0; block < BLOCKS; block++) actual[block] = (float)exact_mass[block];
    CHECK_OK(tierkv_prefetch_settle(ticket, actual, NULL, 0));
    CHECK_ERROR(tierkv_prefetch_settle(ticket, actual, NULL, 0), TIERKV_ERROR_INVALID_HANDLE, "prefetch ticket");
    tierkv_prefetch_stats prefetch_stats;
    memset(&prefetch_stats, 0, sizeof prefetch_stats);
    prefetch_stats.struct_size = sizeof prefetch_stats;
    CHECK_OK(tierkv_get_prefetch_stats(hierarchy, &prefetch_stats));
    CHECK(prefetch_stats.predictions == 1 && prefetch_stats.settled == 1 && prefetch_stats.top_k_blocks == 3,
          "predictions %llu, settled %llu, top-k blocks %llu", (unsigned long long)prefetch_stats.predictions,
          (unsigned long long)prefetch_stats.settled, (unsigned long long)prefetch_stats.top_k_blocks);
    printf("prefetch of 3 of %d blocks: %llu fetched, %llu staged; recall %.2f, precision %.2f\n", BLOCKS,
           (unsigned long long)fetched, (unsigned long long)staged, prefetch_stats.recall, prefetch_stats.precision);

    /* The same from masses the engine predicted itself: here the exact attention, so this ticket
     * keeps at least as many of the true top 3 in hot as the query's did (hot has 2 slots; the
     * statistics now count both tickets). */
    float bad_mass[BLOCKS];
    memcpy(bad_mass, actual, sizeof actual);
    bad_mass[1] = -1;
    CHECK_ERROR(tierkv_prefetch_mass(hierarchy, keys, BLOCKS, bad_mass, &options, &ticket, NULL, NULL, NULL),
                TIERKV_ERROR_INVALID_ARGUMENT, "mass[1]");
    options.scoring = TIERKV_SCORING_SKETCH;
    CHECK_ERROR(tierkv_prefetch_mass(hierarchy, keys, BLOCKS, actual, &options, &ticket, NULL, NULL, NULL),
                TIERKV_ERROR_INVALID_ARGUMENT, "scoring");
    options.scoring = 0;
    CHECK_OK(tierkv_prefetch_mass(hierarchy, keys, BLOCKS, actual, &options, &ticket, &fetched, &staged, &unknown));
    CHECK(fetched + staged <= 3 && unknown == 0, "fetched %llu, staged %llu, unknown %llu", (unsigned long long)fetched,
          (unsigned long long)staged, (unsigned long long)unknown);
    CHECK_OK(tierkv_prefetch_wait(ticket, 10));
    CHECK_OK(tierkv_prefetch_settle(ticket, actual, NULL, 0));
    double first_hits = prefetch_stats.recall * 3;
    CHECK_OK(tierkv_get_prefetch_stats(hierarchy, &prefetch_stats));
    CHECK(prefetch_stats.predictions == 2 && prefetch_stats.settled == 2 && prefetch_stats.top_k_blocks == 6,
          "predictions %llu, settled %llu, top-k blocks %llu", (unsigned long long)prefetch_stats.predictions,
          (unsigned long long)prefetch_stats.settled, (unsigned long long)prefetch_stats.top_k_blocks);
    double second_hits = prefetch_stats.recall * 6 - first_hits;
    CHECK(second_hits >= first_hits - 1e-9 && second_hits >= 2 - 1e-9, "top-3 blocks in hot: %.1f from the exact masses, %.1f from the query",
          second_hits, first_hits);
    printf("prefetch from the engine's own masses: %llu fetched, %llu staged; recall over both tickets %.2f\n",
           (unsigned long long)fetched, (unsigned long long)staged, prefetch_stats.recall);

    /* A learned predictor: with the query alone it predicts what tierkv_predict_mass does; with
     * no hint and no history it has nothing to go on; once it observed the layer, its history
     * part is the observed mass blended with recency; with adaptation, a part that keeps
     * predicting the wrong blocks loses weight to the one that predicts the right ones. */
    tierkv_predictor_options predictor_options;
    memset(&predictor_options, 0, sizeof predictor_options);
    tierkv_predictor *predictor = NULL;
    CHECK_ERROR(tierkv_predictor_create(hierarchy, &predictor_options, &predictor), TIERKV_ERROR_INVALID_ARGUMENT,
                "TIERKV_PREDICTOR_OPTIONS_INIT");
    tierkv_predictor_options defaults = TIERKV_PREDICTOR_OPTIONS_INIT;
    predictor_options = defaults;
    predictor_options.history_decay = 0;
    CHECK_ERROR(tierkv_predictor_create(hierarchy, &predictor_options, &predictor), TIERKV_ERROR_INVALID_ARGUMENT,
                "history decay is 0");
    CHECK(predictor == NULL, "no handle on error");
    predictor_options = defaults;
    CHECK_OK(tierkv_predictor_create(hierarchy, &predictor_options, &predictor));
    float mixed[BLOCKS], history_only[BLOCKS];
    CHECK_OK(tierkv_predictor_predict(predictor, keys, BLOCKS, NULL, NULL, -1, NULL, 0, NULL, 0, NULL, query,
                                      QUERY_HEADS * HEAD_DIM, mixed, NULL));
    double largest_difference = 0;
    for (int block = 0; block < BLOCKS; block++) largest_difference = fmax(largest_difference, fabs(mixed[block] - mass[block]));
    CHECK(largest_difference < 1e-5, "the query part alone differs from tierkv_predict_mass by %g", largest_difference);
    CHECK_OK(tierkv_predictor_predict(predictor, keys, BLOCKS, NULL, NULL, -1, NULL, 0, NULL, 0, NULL, NULL,
                                      QUERY_HEADS * HEAD_DIM, history_only, NULL));
    double nothing = 0;
    for (int block = 0; block < BLOCKS; block++) nothing += history_only[block];
    CHECK(nothing == 0, "with no hint and no history the masses add up to %g, expected 0", nothing);
    CHECK_ERROR(tierkv_predictor_observe(predictor, keys, BLOCKS, bad_mass), TIERKV_ERROR_INVALID_ARGUMENT, "mass[1]");
    CHECK_OK(tierkv_predictor_observe(predictor, keys, BLOCKS, actual));
    CHECK_OK(tierkv_predictor_predict(predictor, keys, BLOCKS, NULL, NULL, -1, NULL, 0, NULL, 0, NULL, NULL,
                                      QUERY_HEADS * HEAD_DIM, history_only, NULL));
    double recency[BLOCKS], recency_sum = 0, actual_sum = 0, history_error = 0;
    for (int block = 0; block < BLOCKS; block++) {
        recency[block] = exp(-(double)(BLOCKS - 1 - block) / 8.0);
        recency_sum += recency[block];
        actual_sum += actual[block];
    }
    for (int block = 0; block < BLOCKS; block++) {
        double expected = 0.8 * actual[block] / actual_sum + 0.2 * recency[block] / recency_sum;
        history_error = fmax(history_error, fabs(history_only[block] - expected));
    }
    CHECK(history_error < 1e-5, "the history part differs from 0.8 x observed + 0.2 x recency by %g", history_error);
    float weights[3];
    CHECK_OK(tierkv_predictor_weights(predictor, 0, weights));
    CHECK(weights[0] == 0.5f && weights[1] == 0.3f && weights[2] == 0.2f, "fixed weights came back as %g %g %g", weights[0],
          weights[1], weights[2]);
    CHECK_OK(tierkv_predictor_release(predictor));
    CHECK_ERROR(tierkv_predictor_release(predictor), TIERKV_ERROR_INVALID_HANDLE, "predictor");

    float wrong_query[QUERY_HEADS * HEAD_DIM];
    for (int index = 0; index < QUERY_HEADS * HEAD_DIM; index++) wrong_query[index] = -query[index];
    predictor_options = defaults;
    predictor_options.history_weight = 0;
    predictor_options.adapt_top_k = 3;
    CHECK_OK(tierkv_predictor_create(hierarchy, &predictor_options, &predictor));
    for (int step = 0; step < 4; step++) {
        CHECK_OK(tierkv_predictor_predict(predictor, keys, BLOCKS, NULL, NULL, -1, NULL, 0, NULL, 0, wrong_query, query,
                                          QUERY_HEADS * HEAD_DIM, mixed, known));
        CHECK_OK(tierkv_predictor_observe(predictor, keys, BLOCKS, actual));
    }
    CHECK_OK(tierkv_predictor_weights(predictor, 0, weights));
    CHECK(weights[1] > 0.3f * 0.99f && weights[0] < 0.5f * 0.5f, "adapted weights %g (speculated, wrong) and %g (query, right)",
          weights[0], weights[1]);
    printf("predictor: history part exact to %.1e; adapted weights %.3g (wrong speculation) and %.3g (the query)\n",
           history_error, weights[0], weights[1]);

    /* Placement of one layer: the blocks already in hot stay there; without CPU attention the rest
     * are fetched; with a CPU far faster than the link they are attended on CPU, since hot has no
     * room left for them (2 slots); a key that is not cached is MISSING. */
    tierkv_block_key plan_keys[BLOCKS + 1];
    memcpy(plan_keys, keys, sizeof(tierkv_block_key) * BLOCKS);
    plan_keys[BLOCKS] = keys[0];
    plan_keys[BLOCKS].prefix_low ^= 1;
    int in_hot = 0;
    int is_hot[BLOCKS];
    for (int block = 0; block < BLOCKS; block++) {
        CHECK_OK(tierkv_fastest_tier(hierarchy, &keys[block], &tier));
        is_hot[block] = tier == TIERKV_TIER_HOT;
        in_hot += is_hot[block];
    }
    tierkv_placement_options placement;
    memset(&placement, 0, sizeof placement);
    placement.host_to_device_bytes_per_s = 1e9;
    placement.cold_read_bytes_per_s = 1e8;
    int32_t decisions[BLOCKS + 1];
    double finish = -1;
    CHECK_ERROR(tierkv_plan_layer(hierarchy, plan_keys, BLOCKS + 1, NULL, &placement, decisions, &finish),
                TIERKV_ERROR_INVALID_ARGUMENT, "struct_size");
    placement.struct_size = sizeof placement;
    placement.host_to_device_bytes_per_s = 0;
    CHECK_ERROR(tierkv_plan_layer(hierarchy, plan_keys, BLOCKS + 1, NULL, &placement, decisions, &finish),
                TIERKV_ERROR_INVALID_ARGUMENT, "host_to_device_bytes_per_s");
    placement.host_to_device_bytes_per_s = 1e9;
    CHECK_OK(tierkv_plan_layer(hierarchy, plan_keys, BLOCKS + 1, NULL, &placement, decisions, &finish));
    for (int block = 0; block < BLOCKS; block++) {
        int32_t expected_decision = is_hot[block] ? TIERKV_PLACE_IN_HOT : TIERKV_PLACE_FETCH;
        CHECK(decisions[block] == expected_decision, "CPU attention off: block %d placed %d, expected %d", block,
              decisions[block], expected_decision);
    }
    CHECK(decisions[BLOCKS] == TIERKV_PLACE_MISSING, "an uncached key placed %d", decisions[BLOCKS]);
    CHECK(in_hot == BLOCKS || finish > 0, "fetches planned, yet the layer finishes at %g s", finish);
    placement.cpu_attention_bytes_per_s = 1e15;
    CHECK_OK(tierkv_plan_layer(hierarchy, plan_keys, BLOCKS + 1, NULL, &placement, decisions, NULL));
    int on_cpu = 0;
    for (int block = 0; block < BLOCKS; block++) {
        if (is_hot[block]) CHECK(decisions[block] == TIERKV_PLACE_IN_HOT, "block %d is in hot, placed %d", block, decisions[block]);
        on_cpu += decisions[block] == TIERKV_PLACE_CPU;
    }
    CHECK(on_cpu == BLOCKS - in_hot, "a CPU 10^6 times faster than the link attends %d of the %d blocks outside hot", on_cpu,
          BLOCKS - in_hot);
    printf("plan_layer: %d in hot, %d on CPU\n", in_hot, on_cpu);

    /* A ticket left open is abandoned by tierkv_close. */
    CHECK_OK(tierkv_prefetch(hierarchy, keys, BLOCKS, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, &options, &ticket,
                             NULL, NULL, NULL));

    /* Bad input: an error code and a message naming the problem, never a crash. */
    CHECK_ERROR(tierkv_store(NULL, &keys[0], 0, data[0], sizeof data[0], 7, NULL), TIERKV_ERROR_INVALID_HANDLE, "NULL");
    CHECK_ERROR(tierkv_store(hierarchy, &keys[0], 0, data[0], 100, 7, NULL), TIERKV_ERROR_INVALID_ARGUMENT, "has 100 bytes");
    CHECK_ERROR(tierkv_store(hierarchy, &keys[0], 0, NULL, sizeof data[0], 7, NULL), TIERKV_ERROR_INVALID_ARGUMENT, "bytes is NULL");
    CHECK_ERROR(tierkv_store(hierarchy, &keys[0], -1, data[0], sizeof data[0], 7, NULL), TIERKV_ERROR_INVALID_ARGUMENT, "position");
    CHECK_ERROR(tierkv_store_from_device(hierarchy, &other_key, 0, 0x10, (size_t)layout.block_bytes, 7, NULL),
                TIERKV_ERROR_INVALID_ARGUMENT, "");
    tierkv_block_key bad_key = keys[0];
    bad_key.reserved = 3;
    CHECK_ERROR(tierkv_read(hierarchy, &bad_key, read_back, sizeof read_back), TIERKV_ERROR_INVALID_ARGUMENT, "reserved");
    bad_key = keys[0];
    bad_key.prefix_low ^= 1;
    CHECK_ERROR(tierkv_read(hierarchy, &bad_key, read_back, sizeof read_back), TIERKV_ERROR_NOT_FOUND, "not cached");
    CHECK_ERROR(tierkv_read(hierarchy, &keys[0], read_back, 16), TIERKV_ERROR_BUFFER_TOO_SMALL, "holds 16 bytes");
    CHECK_ERROR(tierkv_make_resident(hierarchy, keys, 2, TIERKV_TIER_COLD, TIERKV_PRIORITY_DEMAND, &request),
                TIERKV_ERROR_INVALID_ARGUMENT, "tier is 2");
    CHECK(request == NULL, "no handle on error");
    CHECK_ERROR(tierkv_attend_warm(hierarchy, keys, 2, NULL, query, 5, 0, output, maxima, sums), TIERKV_ERROR_INVALID_ARGUMENT,
                "query_count is 5");
    CHECK_ERROR(tierkv_attend_warm(hierarchy, &bad_key, 1, NULL, query, QUERY_HEADS * HEAD_DIM, 0, output, maxima, sums),
                TIERKV_ERROR_NOT_FOUND, "not cached");
    tierkv_block_key candidates[2] = {keys[0], bad_key};
    CHECK_ERROR(tierkv_predict_mass(hierarchy, candidates, 2, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, 0,
                                    TIERKV_SCORING_SKETCH, mass, NULL),
                TIERKV_ERROR_NOT_FOUND, "keys[1]");
    CHECK_OK(tierkv_predict_mass(hierarchy, candidates, 2, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, 0,
                                 TIERKV_SCORING_SKETCH, mass, known));
    CHECK(known[0] == 1 && known[1] == 0 && mass[1] == 0 && fabsf(mass[0] - 1) < 1e-5f, "known %d %d, mass %g %g", known[0],
          known[1], mass[0], mass[1]);
    CHECK_ERROR(tierkv_predict_mass(hierarchy, keys, 2, NULL, NULL, 0, NULL, 0, query, QUERY_HEADS * HEAD_DIM, 0, 9, mass, NULL),
                TIERKV_ERROR_INVALID_ARGUMENT, "scoring is 9");
    CHECK_ERROR(tierkv_merge_partials(1, 0, HEAD_DIM, NULL, NULL, NULL, NULL, NULL, NULL), TIERKV_ERROR_INVALID_ARGUMENT,
                "must be positive");
    char small[8];
    size_t length = tierkv_last_error_copy(small, sizeof small);
    CHECK(length > 7 && strlen(small) == 7, "the message is truncated to the buffer (length %zu)", length);
    tierkv_hierarchy *unopened = NULL;
    CHECK_ERROR(tierkv_open("{\"layout\": {\"layers\": 1, \"kv_heads\": 2, \"query_heads\": 4, \"head_dim\": 64}, "
                            "\"hot_blocks\": 2, \"warm_blocks\": 8, \"accelerator\": \"emulated\", \"hot_blcks\": 3}",
                            &unopened),
                TIERKV_ERROR_INVALID_ARGUMENT, "unknown configuration field \"hot_blcks\"");
    CHECK_ERROR(tierkv_open("{\"layout\": {\"layers\": 1, \"kv_heads\": 2, \"query_heads\": 4, \"head_dim\": 64}, "
                            "\"hot_blocks\": 2, \"warm_blocks\": 8}",
                            &unopened),
                TIERKV_ERROR_INVALID_ARGUMENT, "\"accelerator\" is required");
    CHECK_ERROR(tierkv_open("{\"layout\": ", &unopened), TIERKV_ERROR_INVALID_ARGUMENT, "JSON at byte");
    CHECK(unopened == NULL, "no handle on error");

    /* Drop the sequences, flush everything to cold and close; the handle is then invalid. */
    CHECK_OK(tierkv_drop_sequence(hierarchy, 7));
    CHECK_OK(tierkv_drop_sequence(hierarchy, 8));
    uint64_t written = 0, failed = 0;
    CHECK_OK(tierkv_flush(hierarchy, &written, &failed));
    CHECK(failed == 0, "flush failed %llu", (unsigned long long)failed);
    CHECK_OK(tierkv_make_resident(hierarchy, keys, 2, TIERKV_TIER_WARM, TIERKV_PRIORITY_PREFETCH, &request));
    CHECK_OK(tierkv_close(hierarchy, 0));
    CHECK_ERROR(tierkv_request_wait(request, 1.0), TIERKV_ERROR_INVALID_HANDLE, "not an open request handle");
    CHECK_ERROR(tierkv_predictor_weights(predictor, 0, weights), TIERKV_ERROR_INVALID_HANDLE, "not an open predictor handle");
    CHECK_ERROR(tierkv_get_layout(hierarchy, &layout), TIERKV_ERROR_INVALID_HANDLE, "not an open hierarchy handle");
    CHECK_ERROR(tierkv_close(hierarchy, 0), TIERKV_ERROR_INVALID_HANDLE, "not an open hierarchy handle");

    /* A restart finds every flushed block in cold, byte-exact. */
    CHECK_OK(tierkv_open(config, &hierarchy));
    if (hierarchy != NULL) {
        for (int block = 0; block < BLOCKS; block++) {
            CHECK_OK(tierkv_read(hierarchy, &keys[block], read_back, sizeof read_back));
            CHECK(memcmp(read_back, data[block], sizeof read_back) == 0, "block %d differs after a restart", block);
        }
        CHECK_OK(tierkv_close(hierarchy, 0));
    }

    if (failures > 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("C ABI round trip: all checks passed\n");
    return 0;
}
