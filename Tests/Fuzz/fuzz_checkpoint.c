/*
 * fuzz_checkpoint: msp_search_save_size, msp_search_save and msp_search_load.
 *
 * A small valid search (problem, settings, proxy tables and a call sequence from the fuzzer) is
 * saved; then one of:
 *   - the checkpoint loads unchanged and the loaded search continues exactly like the saved one
 *     (the same batches, best plans and progress, and the same bytes when saved again);
 *   - the checkpoint is mutated (bytes overwritten, flipped, inserted or removed, truncated or
 *     extended), with the trailing FNV-1a checksum recomputed most of the time so that the loader's
 *     checks behind it are reached;
 *   - the fuzzer's own bytes are loaded as they are (the seed corpus holds real checkpoints).
 * A load must give MSP_OK or MSP_ERR_INVALID_ARGUMENT with a message and *out unchanged; a search
 * it accepts must behave: ask within its max batch and with level indices in range, tell, best,
 * progress, and a save that loads again to the same bytes.
 */
#include "fuzz_common.h"

#define MAX_LAYERS 8
#define MAX_STEPS 24

static uint64_t fnv1a(const uint8_t *data, size_t size) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 0x100000001b3ull;
    return h;
}

/* Rewrites the last 8 bytes as the checksum of the bytes before them. */
static void reseal(uint8_t *data, size_t size) {
    if (size < 8) return;
    uint64_t h = fnv1a(data, size - 8);
    for (int i = 0; i < 8; i++) data[size - 8 + i] = (uint8_t)(h >> (8 * i));
}

/* A deterministic fitness: some plans score +inf. */
static double fitness_of(const int32_t *plan, int64_t layers, int32_t fidelity) {
    uint64_t h = 0x9E3779B97F4A7C15ull + (uint64_t)fidelity;
    double value = 0;
    for (int64_t l = 0; l < layers; l++) {
        h = (h ^ (uint64_t)plan[l]) * 0x100000001B3ull;
        value += (double)((l % 5) + 1) * plan[l] * plan[l];
    }
    return (h >> 9) % 19 == 0 ? INFINITY : value + (double)(h >> 54);
}

/* One ask, or a tell of the pending batch; returns the batch size asked (0 when done), -1 for a tell. */
static int64_t step(msp_search *s, int32_t *plans, int64_t capacity, int64_t layers, int64_t *pending,
                    int32_t *fidelity, double *values, const char *who) {
    if (*pending > 0) {
        for (int64_t i = 0; i < *pending; i++) values[i] = fitness_of(plans + i * layers, layers, *fidelity);
        msp_status st = fz_status(msp_search_tell(s, values, *pending), who);
        FZ_CHECK(st == MSP_OK, "%s: tell of the pending batch gave %d", who, (int)st);
        *pending = 0;
        return -1;
    }
    int64_t count = -1;
    msp_status st = fz_status(msp_search_ask(s, plans, capacity, &count, fidelity), who);
    FZ_CHECK(st == MSP_OK, "%s: ask gave %d", who, (int)st);
    FZ_CHECK(count >= 0 && count <= capacity, "%s: ask count %lld", who, (long long)count);
    for (int64_t i = 0; i < count * layers; i++) FZ_CHECK(plans[i] >= 0 && plans[i] < 256, "%s: level %d", who, (int)plans[i]);
    *pending = count;
    return count;
}

/* The checkpoint of a search (heap, *size bytes). */
static uint8_t *save(const msp_search *s, int64_t *size) {
    FZ_CHECK(fz_status(msp_search_save_size(s, size), "msp_search_save_size") == MSP_OK && *size > 28, "save_size");
    uint8_t *bytes = fz_alloc((size_t)*size);
    int64_t written = -1;
    FZ_CHECK(fz_status(msp_search_save(s, bytes, *size, &written), "msp_search_save") == MSP_OK && written == *size,
             "save wrote %lld of %lld", (long long)written, (long long)*size);
    return bytes;
}

/* Loads bytes; checks the status contract; NULL when refused. */
static msp_search *load(const uint8_t *data, size_t size) {
    msp_search *out = (msp_search *)(uintptr_t)0x5A5A;
    msp_status st = fz_status(msp_search_load(data, (int64_t)size, &out), "msp_search_load");
    if (st != MSP_OK) {
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT || st == MSP_ERR_OUT_OF_MEMORY, "msp_search_load gave %d", (int)st);
        FZ_CHECK(out == (msp_search *)(uintptr_t)0x5A5A, "msp_search_load changed *out on error");
        return NULL;
    }
    FZ_CHECK(out != NULL && out != (msp_search *)(uintptr_t)0x5A5A, "msp_search_load gave no handle");
    return out;
}

/* A search the loader accepted, of an unknown problem: it must answer every call within the contract. */
static void exercise(msp_search *s) {
    int64_t size = 0;
    uint8_t *bytes = save(s, &size);
    msp_search *again = load(bytes, (size_t)size);
    FZ_CHECK(again != NULL, "a saved search did not load again");
    int64_t size2 = 0;
    uint8_t *bytes2 = save(again, &size2);
    FZ_CHECK(size2 == size && memcmp(bytes, bytes2, (size_t)size) == 0, "save -> load -> save changed the bytes");
    msp_search_free(again);
    free(bytes);
    free(bytes2);

    int64_t capacity = msp_search_max_batch(s);
    FZ_CHECK(capacity >= 1 && capacity <= (1 << 20), "max_batch %lld", (long long)capacity);
    /* The layer count is unknown: size plans for the largest problem a checkpoint this size holds. */
    int64_t layers = size / 8;
    if (capacity * layers > (1 << 22)) return; /* a legal but huge batch: too slow to drive here */
    int32_t *plans = fz_alloc((size_t)(capacity * layers) * sizeof(int32_t));
    double *values = fz_alloc((size_t)capacity * sizeof(double));
    msp_search_progress pr;
    FZ_CHECK(fz_status(msp_search_get_progress(s, &pr), "progress") == MSP_OK, "progress");
    for (int i = 0; i < 6; i++) {
        int64_t count = -1;
        int32_t fidelity = -1;
        msp_status st = fz_status(msp_search_ask(s, plans, capacity, &count, &fidelity), "ask (loaded)");
        FZ_CHECK(st == MSP_OK && count >= 0 && count <= capacity && fidelity >= 0 && fidelity < 16, "ask (loaded)");
        if (count == 0) break;
        for (int64_t j = 0; j < count; j++) values[j] = (double)(j % 7) - 2.5 * (double)i;
        st = fz_status(msp_search_tell(s, values, count), "tell (loaded)");
        FZ_CHECK(st == MSP_OK, "tell (loaded) gave %d", (int)st);
    }
    double fit;
    msp_status st = fz_status(msp_search_best(s, plans, &fit), "best (loaded)");
    FZ_CHECK(st == MSP_OK || st == MSP_ERR_INVALID_STATE, "best (loaded) gave %d", (int)st);
    free(plans);
    free(values);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    uint8_t mode = fz_u8(&in) % 4;
    if (mode == 3) { /* the rest of the input, as a checkpoint */
        msp_search *s = load(in.data, in.size);
        if (s) exercise(s);
        msp_search_free(s);
        return 0;
    }

    /* A small problem: equal or mixed sizes, N:8 levels, a reachable target. */
    int64_t layers = fz_range(&in, 1, MAX_LAYERS), sizes[MAX_LAYERS];
    for (int64_t l = 0; l < layers; l++) sizes[l] = 8 * (1 + fz_u8(&in) % 4);
    int64_t num_levels = fz_range(&in, 2, 8);
    msp_level levels[8];
    for (int64_t k = 0; k < num_levels; k++) levels[k] = (msp_level){(double)k / 8.0, (int32_t)(8 - k), 8};
    msp_problem *problem = NULL;
    FZ_CHECK(msp_problem_create(sizes, layers, levels, num_levels, &problem) == MSP_OK, "problem");
    if (fz_bool(&in)) {
        int64_t groups[MAX_LAYERS];
        for (int64_t l = 0; l < layers; l++) groups[l] = fz_range(&in, 0, 2);
        (void)msp_problem_set_groups(problem, groups);
    }
    double lo, hi;
    msp_problem_range(problem, &lo, &hi);
    if (msp_problem_set_target(problem, lo + (hi - lo) * fz_u8(&in) / 255.0, 0.02 + fz_u8(&in) / 2550.0) != MSP_OK) {
        msp_problem_free(problem);
        return 0;
    }
    msp_search_params params = msp_search_params_default();
    params.generations = (int32_t)fz_range(&in, 1, 5);
    params.offspring = (int32_t)fz_range(&in, 1, 8);
    params.survivors = (int32_t)fz_range(&in, 1, 4);
    params.seed = fz_u64(&in);
    params.fidelity_levels = (int32_t)fz_range(&in, 1, 3);
    params.surrogate_candidates = (int32_t)fz_range(&in, 0, 4);
    params.pair_rate = fz_u8(&in) / 255.0;
    params.prior_grid = fz_bool(&in);
    double sensitivity[MAX_LAYERS];
    for (int64_t l = 0; l < layers; l++) sensitivity[l] = 1 + fz_u8(&in);
    msp_search *search = NULL;
    msp_status st = fz_status(msp_search_create(problem, sensitivity, &params, &search), "msp_search_create");
    if (st != MSP_OK) {
        msp_problem_free(problem);
        return 0;
    }
    int proxies = (int)fz_range(&in, 0, 2);
    double costs[MAX_LAYERS * 8];
    for (int j = 0; j < proxies; j++) {
        for (int64_t i = 0; i < layers * num_levels; i++) costs[i] = (double)(i % num_levels) * (1 + fz_u8(&in) % 5);
        st = fz_status(msp_search_add_proxy(search, costs), "msp_search_add_proxy");
        FZ_CHECK(st == MSP_OK || st == MSP_ERR_INFEASIBLE, "add_proxy gave %d", (int)st);
    }

    int64_t capacity = msp_search_max_batch(search);
    int32_t *plans = fz_alloc((size_t)(capacity * layers) * sizeof(int32_t));
    int32_t *plans2 = fz_alloc((size_t)(capacity * layers) * sizeof(int32_t));
    double *values = fz_alloc((size_t)capacity * sizeof(double));
    int64_t pending = 0, pending2 = 0;
    int32_t fidelity = 0, fidelity2 = 0;
    int steps = (int)fz_range(&in, 0, MAX_STEPS);
    for (int i = 0; i < steps; i++)
        if (step(search, plans, capacity, layers, &pending, &fidelity, values, "before save") == 0) break;

    int64_t saved_size = 0;
    uint8_t *saved = save(search, &saved_size);
    if (mode == 0) {
        /* Unchanged: the loaded search continues in lockstep with the saved one. */
        msp_search *loaded = load(saved, (size_t)saved_size);
        FZ_CHECK(loaded != NULL, "a fresh checkpoint did not load");
        pending2 = pending;
        fidelity2 = fidelity;
        memcpy(plans2, plans, (size_t)(pending * layers) * sizeof(int32_t));
        for (int i = 0; i < 2 * MAX_STEPS; i++) {
            int64_t a = step(search, plans, capacity, layers, &pending, &fidelity, values, "original");
            int64_t b = step(loaded, plans2, capacity, layers, &pending2, &fidelity2, values, "loaded");
            FZ_CHECK(a == b && fidelity == fidelity2, "the loaded search diverged (%lld vs %lld)", (long long)a, (long long)b);
            if (a > 0) FZ_CHECK(memcmp(plans, plans2, (size_t)(a * layers) * sizeof(int32_t)) == 0, "other plans");
            if (a == 0) break;
        }
        msp_search_progress p1, p2;
        msp_search_get_progress(search, &p1);
        msp_search_get_progress(loaded, &p2);
        FZ_CHECK(memcmp(&p1, &p2, sizeof p1) == 0, "progress differs after resuming");
        int64_t s1 = 0, s2 = 0;
        uint8_t *b1 = save(search, &s1), *b2 = save(loaded, &s2);
        FZ_CHECK(s1 == s2 && memcmp(b1, b2, (size_t)s1) == 0, "the two searches saved different bytes");
        free(b1);
        free(b2);
        msp_search_free(loaded);
    } else {
        /* Mutated: overwrite, flip, cut or grow the bytes, usually with a valid checksum. */
        size_t n = (size_t)saved_size;
        uint8_t *damaged = fz_alloc(n + 64);
        memcpy(damaged, saved, n);
        int edits = (int)fz_range(&in, 1, 4);
        for (int e = 0; e < edits; e++) {
            uint8_t kind = fz_u8(&in) % 5;
            size_t at = (size_t)fz_range(&in, 0, (int64_t)n - 1);
            if (kind == 0) damaged[at] = fz_u8(&in);
            else if (kind == 1) damaged[at] ^= (uint8_t)(1u << (fz_u8(&in) % 8));
            else if (kind == 2 && n > 1) {
                memmove(damaged + at, damaged + at + 1, n - at - 1); /* remove a byte */
                n--;
            } else if (kind == 3 && n < (size_t)saved_size + 64) {
                memmove(damaged + at + 1, damaged + at, n - at); /* insert a byte */
                damaged[at] = fz_u8(&in);
                n++;
            } else {
                n = (size_t)fz_range(&in, 0, (int64_t)n); /* truncate */
            }
        }
        if (mode == 1 || fz_u8(&in) % 4 != 0) reseal(damaged, n);
        uint8_t *exact = fz_alloc(n); /* exactly n bytes: ASan sees any read past them */
        memcpy(exact, damaged, n);
        msp_search *loaded = load(exact, n);
        if (loaded) exercise(loaded);
        msp_search_free(loaded);
        free(exact);
        free(damaged);
    }
    free(saved);
    free(plans);
    free(plans2);
    free(values);
    msp_search_free(search);
    msp_problem_free(problem);
    return 0;
}
