/*
 * fuzz_search: msp_search_* (create, max_batch, ask, tell, best, get_progress, run, free; the checkpoint
 * functions have their own target, fuzz_checkpoint).
 *
 * A small valid problem (sizes, level set, groups, bounds, target from the fuzzer) and fuzzer-chosen
 * search parameters (sometimes out of range, or with a wrong struct_size), then a fuzzer-chosen call
 * sequence within the header's rules: ask twice before tell, tell before ask, tell with the wrong
 * count or with NaN / -inf / +inf, best before any evaluation, run with callbacks that cancel at a
 * chosen call, reuse after a cancelled run, the problem freed right after create, NULL arguments.
 * A model here tracks the pending batch, the evaluation counts and the best fitness; every
 * candidate and best plan must pass msp_problem_check_plan.
 */
#include "fuzz_common.h"

#define MAX_LAYERS 8
#define MAX_LEVELS 8

typedef struct {
    int64_t pending;   /* plans in the pending batch, 0 for none */
    int32_t fidelity;  /* of the pending batch */
    int64_t evaluations, cheap;
    double best;       /* +inf before the first full-fidelity evaluation */
    int evaluated;     /* whether best exists */
    int done;
} model;

/* What the run callbacks see. */
typedef struct {
    int64_t layers, levels;
    const msp_problem *check;
    int64_t calls, cancel_at; /* the fitness call that cancels, -1 for none */
    int32_t cancel_how;       /* 0 status, 1 NaN, 2 -inf */
    int64_t progress_calls, progress_cancel_at;
    uint64_t salt;
} run_state;

/* A deterministic fitness of a plan: some plans score +inf. */
static double fitness_of(const int32_t *plan, int64_t layers, uint64_t salt) {
    uint64_t h = salt ^ 0x9E3779B97F4A7C15ull;
    for (int64_t l = 0; l < layers; l++) h = (h ^ (uint64_t)plan[l]) * 0x100000001B3ull;
    if ((h >> 7) % 17 == 0) return INFINITY;
    return (double)(h >> 40) / 1024.0;
}

static void check_plan(const msp_problem *p, const int32_t *plan, int64_t layers, int64_t levels, const char *who) {
    for (int64_t l = 0; l < layers; l++)
        FZ_CHECK(plan[l] >= 0 && plan[l] < levels, "%s: plan[%lld] = %d", who, (long long)l, (int)plan[l]);
    double avg = -1;
    msp_status st = fz_status(msp_problem_check_plan(p, plan, &avg), "msp_problem_check_plan");
    FZ_CHECK(st == MSP_OK, "%s gave an infeasible plan (%d, average %.17g)", who, (int)st, avg);
}

static int32_t run_fitness(const int32_t *plan, int64_t num_layers, int32_t fidelity, void *user_data,
                           double *fitness_out) {
    run_state *rs = user_data;
    FZ_CHECK(num_layers == rs->layers, "fitness callback got %lld layers", (long long)num_layers);
    FZ_CHECK(fidelity >= 0 && fidelity < MSP_MAX_FIDELITY_LEVELS, "fitness callback got fidelity %d", (int)fidelity);
    check_plan(rs->check, plan, rs->layers, rs->levels, "msp_search_run candidate");
    *fitness_out = fitness_of(plan, num_layers, rs->salt + (uint64_t)fidelity);
    if (rs->calls++ == rs->cancel_at) {
        if (rs->cancel_how == 0) return 1 + (int32_t)(rs->salt % 5);
        *fitness_out = rs->cancel_how == 1 ? NAN : -INFINITY;
    }
    return 0;
}

static int32_t run_progress(const msp_search_progress *progress, void *user_data) {
    run_state *rs = user_data;
    FZ_CHECK(progress != NULL && progress->evaluations >= 0 && progress->cheap_evaluations >= 0, "progress callback");
    return rs->progress_calls++ == rs->progress_cancel_at ? -1 : 0;
}

/* Builds a small problem with a feasible target; NULL when the fuzzer's choice is infeasible. */
static msp_problem *make_problem(fz_input *in, int64_t *layers_out, int64_t *levels_out, int64_t sizes[],
                                 msp_level levels[], int64_t groups[], int32_t lo[], int32_t hi[], double *target,
                                 double *tol, int *use_groups, int *use_bounds, int again) {
    if (!again) {
        *layers_out = fz_range(in, 1, MAX_LAYERS);
        for (int64_t l = 0; l < *layers_out; l++) sizes[l] = 1 + fz_u16(in) * (int64_t)(1 + fz_u8(in) % 8);
        int64_t k = fz_range(in, 1, MAX_LEVELS);
        if (fz_bool(in)) {
            if (k > 8) k = 8;
            for (int64_t i = 0; i < k; i++) levels[i] = (msp_level){1.0 - (8.0 - (double)i) / 8.0, (int32_t)(8 - i), 8};
        } else {
            double s = fz_u8(in) / 1024.0;
            for (int64_t i = 0; i < k; i++) {
                levels[i] = (msp_level){s, 0, 0};
                s += (1 + fz_u8(in)) / 600.0;
                if (s >= 1) s = 0.999;
            }
        }
        *levels_out = k;
        *use_groups = fz_u8(in) % 3 == 0;
        for (int64_t l = 0; l < *layers_out; l++) groups[l] = fz_range(in, 0, 3);
        *use_bounds = fz_u8(in) % 3 == 0;
        for (int64_t l = 0; l < *layers_out; l++) {
            lo[l] = (int32_t)fz_range(in, 0, k - 1);
            hi[l] = (int32_t)fz_range(in, lo[l], k - 1);
        }
        *target = fz_u16(in) / 65535.0;
        /* Not 0: tolerance 0 makes every exact solve (each prior, each repair that falls back to it)
         * use the finest grid of 2^21 cells, ~0.1 s each under ASan; fuzz_planning covers it. */
        *tol = fz_range(in, 1, 60) / 1000.0;
    }
    msp_problem *p = NULL;
    if (msp_problem_create(sizes, *layers_out, levels, *levels_out, &p) != MSP_OK) return NULL;
    if (*use_groups && msp_problem_set_groups(p, groups) != MSP_OK) *use_groups = 0;
    if (*use_bounds && msp_problem_set_bounds(p, lo, hi) != MSP_OK) *use_bounds = 0;
    double r0, r1;
    fz_status(msp_problem_range(p, &r0, &r1), "msp_problem_range");
    if (!again) *target = r0 + (r1 - r0) * *target;
    if (*target >= 1) *target = r1;
    if (msp_problem_set_target(p, *target, *tol) != MSP_OK) {
        msp_problem_free(p);
        return NULL;
    }
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    int64_t layers, num_levels, sizes[MAX_LAYERS], groups[MAX_LAYERS];
    msp_level levels[MAX_LEVELS];
    int32_t lo[MAX_LAYERS], hi[MAX_LAYERS];
    double target, tol;
    int use_groups, use_bounds;
    msp_problem *problem = make_problem(&in, &layers, &num_levels, sizes, levels, groups, lo, hi, &target, &tol,
                                        &use_groups, &use_bounds, 0);
    if (!problem) return 0;

    msp_search_params params = msp_search_params_default();
    FZ_CHECK(params.struct_size == sizeof params, "msp_search_params_default struct_size");
    uint8_t pmode = fz_u8(&in) % 8;
    if (pmode >= 1) {
        params.generations = (int32_t)fz_range(&in, 1, 6);
        params.offspring = (int32_t)fz_range(&in, 1, 16);
        params.survivors = (int32_t)fz_range(&in, 1, 8);
        params.mutation_rate = fz_u8(&in) / 255.0;
        params.crossover_rate = fz_u8(&in) / 255.0;
        params.seed = fz_u64(&in);
        params.prior_strength = fz_u8(&in) / 40.0;
        params.prior_per_parameter = (int32_t)fz_u8(&in) - 128;
        params.prior_grid = fz_bool(&in);
        params.max_evaluations = fz_range(&in, 0, 40);
        params.patience = (int32_t)fz_range(&in, 0, 3);
        params.fidelity_levels = (int32_t)fz_range(&in, 1, 3);
        params.fidelity_keep = (1 + fz_u8(&in)) / 256.0;
        params.surrogate_candidates = (int32_t)fz_range(&in, 0, 4);
        params.surrogate_ridge = (1 + fz_u8(&in)) / 32.0;
        params.surrogate_exploration = fz_u8(&in) / 64.0;
        params.pair_rate = fz_u8(&in) / 255.0;
    } else {
        params.generations = 3;
    }
    int invalid_params = 0;
    if (pmode == 7) {
        /* one field out of range, or anything */
        switch (fz_u8(&in) % 16) {
        case 0: params.generations = -(int32_t)fz_u8(&in); break;
        case 1: params.offspring = (int32_t)fz_u32(&in); invalid_params = params.offspring <= 0 || params.offspring > MSP_MAX_OFFSPRING; break;
        case 2: params.survivors = -(int32_t)fz_u8(&in); break;
        case 3: params.mutation_rate = fz_double(&in); invalid_params = !(params.mutation_rate >= 0 && params.mutation_rate <= 1); break;
        case 4: params.crossover_rate = fz_double(&in); invalid_params = !(params.crossover_rate >= 0 && params.crossover_rate <= 1); break;
        case 5: params.prior_strength = fz_double(&in); invalid_params = !(isfinite(params.prior_strength) && params.prior_strength >= 0); break;
        case 6: params.max_evaluations = (int64_t)fz_u64(&in); invalid_params = params.max_evaluations < 0; break;
        case 7: params.patience = -1 - (int32_t)fz_u8(&in); break;
        case 8: params.fidelity_levels = (int32_t)fz_u32(&in); invalid_params = params.fidelity_levels < 1 || params.fidelity_levels > MSP_MAX_FIDELITY_LEVELS; break;
        case 9: params.fidelity_keep = fz_double(&in); invalid_params = !(params.fidelity_keep > 0 && params.fidelity_keep <= 1); break;
        case 10: params.struct_size = fz_u32(&in); invalid_params = params.struct_size != sizeof params; break;
        case 11: params.surrogate_candidates = (int32_t)fz_u32(&in); invalid_params = params.surrogate_candidates < 0 || params.surrogate_candidates > 1 << 20; break;
        case 12: params.surrogate_ridge = fz_double(&in); invalid_params = !(isfinite(params.surrogate_ridge) && params.surrogate_ridge > 0); break;
        case 13: params.surrogate_exploration = fz_double(&in); invalid_params = !(isfinite(params.surrogate_exploration) && params.surrogate_exploration >= 0); break;
        case 14: params.pair_rate = fz_double(&in); invalid_params = !(params.pair_rate >= 0 && params.pair_rate <= 1); break;
        default: params.generations = 0; break;
        }
        if (!invalid_params && (params.generations <= 0 || params.survivors <= 0 || params.patience < 0)) invalid_params = 1;
        if (!invalid_params && (params.offspring > 64 || params.fidelity_levels > 3)) params.offspring = 8, params.fidelity_levels = 2;
    }

    double sensitivity[MAX_LAYERS];
    uint8_t smode = fz_u8(&in) % 4;
    int invalid_sens = 0;
    for (int64_t l = 0; l < layers; l++) {
        sensitivity[l] = smode == 0 ? fz_double(&in) : smode == 1 ? (double)fz_u8(&in) : exp((double)(int8_t)fz_u8(&in) / 4);
        if (!(isfinite(sensitivity[l]) && sensitivity[l] >= 0)) invalid_sens = 1;
    }

    msp_search *search = (msp_search *)&in;
    msp_status st = fz_status(msp_search_create(problem, sensitivity, pmode ? &params : NULL, &search), "msp_search_create");
    if (st != MSP_OK) {
        FZ_CHECK(search == (msp_search *)&in, "msp_search_create changed *out on error");
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT || st == MSP_ERR_INFEASIBLE, "msp_search_create: status %d", (int)st);
        if (st == MSP_ERR_INVALID_ARGUMENT && !invalid_params && !invalid_sens) {
            /* allowed: all-zero sensitivities have no smallest positive value */
            int all_zero = 1;
            for (int64_t l = 0; l < layers; l++) all_zero &= sensitivity[l] == 0;
            FZ_CHECK(all_zero, "msp_search_create rejected valid params and sensitivities");
        }
        msp_problem_free(problem);
        return 0;
    }
    FZ_CHECK(!invalid_params && !invalid_sens, "msp_search_create accepted invalid params (%d) / sensitivities (%d)",
             invalid_params, invalid_sens);
    int32_t last_fidelity = pmode ? params.fidelity_levels - 1 : 0;

    /* The search copied the problem: free ours now, and check plans against an identical twin. */
    if (fz_bool(&in)) {
        msp_problem_free(problem);
        problem = make_problem(&in, &layers, &num_levels, sizes, levels, groups, lo, hi, &target, &tol, &use_groups,
                               &use_bounds, 1);
        FZ_CHECK(problem != NULL, "rebuilding the same problem failed");
    }

    int64_t max_batch = msp_search_max_batch(search);
    FZ_CHECK(max_batch >= 1 && max_batch <= 64, "msp_search_max_batch = %lld", (long long)max_batch);
    FZ_CHECK(msp_search_max_batch(NULL) == 0, "msp_search_max_batch(NULL)");
    size_t plan_ints = (size_t)(max_batch * layers);
    int32_t *plans = fz_alloc(plan_ints * sizeof(int32_t)), *last = fz_alloc(plan_ints * sizeof(int32_t));
    int32_t *plans0 = fz_alloc(plan_ints * sizeof(int32_t));
    double *values = fz_alloc((size_t)(max_batch + 2) * sizeof(double));
    model md = {0, 0, 0, 0, INFINITY, 0, 0};

    int steps = fz_range(&in, 1, 80);
    for (int s = 0; s < steps && in.size > 0; s++) {
        uint8_t op = fz_u8(&in) % 10;
        if (op <= 2) {
            /* ask: usually with the documented capacity, sometimes smaller */
            int64_t capacity = fz_u8(&in) < 230 ? max_batch : fz_range(&in, -1, max_batch);
            for (size_t i = 0; i < plan_ints; i++) plans[i] = -5;
            memcpy(plans0, plans, plan_ints * sizeof(int32_t));
            int64_t count = -3;
            int32_t fidelity = -3;
            st = fz_status(msp_search_ask(search, plans, capacity, &count, &fidelity), "msp_search_ask");
            if (st != MSP_OK) {
                FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT && capacity < max_batch, "msp_search_ask: status %d (capacity %lld)",
                         (int)st, (long long)capacity);
                FZ_CHECK(count == -3 && fidelity == -3 && fz_same(plans, plans0, plan_ints * sizeof(int32_t)),
                         "msp_search_ask wrote on error");
                /* Whether a refused ask leaves its batch pending is not specified: ask properly to resynchronise. */
                capacity = max_batch;
                st = fz_status(msp_search_ask(search, plans, capacity, &count, &fidelity), "msp_search_ask");
                FZ_CHECK(st == MSP_OK, "msp_search_ask with capacity max_batch gave %d", (int)st);
            }
            FZ_CHECK(count >= 0 && count <= capacity && count <= max_batch, "ask count %lld", (long long)count);
            FZ_CHECK(fidelity >= 0 && fidelity <= last_fidelity, "ask fidelity %d", (int)fidelity);
            if (md.pending) {
                FZ_CHECK(count == md.pending && fidelity == md.fidelity, "ask again before tell gave another batch");
                FZ_CHECK(memcmp(plans, last, (size_t)(count * layers) * sizeof(int32_t)) == 0,
                         "ask again before tell gave other plans");
            }
            if (count == 0) {
                md.done = 1;
                FZ_CHECK(md.pending == 0, "ask finished with a batch pending");
            }
            if (md.done) FZ_CHECK(count == 0, "ask gave %lld plans after finishing", (long long)count);
            for (int64_t i = 0; i < count; i++) check_plan(problem, plans + i * layers, layers, num_levels, "msp_search_ask");
            memcpy(last, plans, (size_t)(count * layers) * sizeof(int32_t));
            md.pending = count;
            md.fidelity = fidelity;
        } else if (op <= 4) {
            /* tell: the pending count, or another */
            int64_t count = fz_u8(&in) < 220 ? md.pending : fz_range(&in, -1, max_batch + 1);
            int poison = 0;
            uint8_t vmode = fz_u8(&in) % 8;
            for (int64_t i = 0; i < count; i++) {
                values[i] = vmode == 0 || i >= md.pending ? fz_double(&in)
                                                          : fitness_of(last + i * layers, layers, (uint64_t)md.fidelity);
                if (isnan(values[i]) || values[i] == -INFINITY) poison = 1;
            }
            int null_values = fz_u8(&in) == 0 && count > 0;
            st = fz_status(msp_search_tell(search, null_values ? NULL : values, count), "msp_search_tell");
            if (md.pending == 0 || count != md.pending) {
                FZ_CHECK(st == MSP_ERR_INVALID_STATE || (st == MSP_ERR_INVALID_ARGUMENT && (null_values || count < 0)),
                         "tell with %lld values for a batch of %lld gave %d", (long long)count, (long long)md.pending, (int)st);
            } else if (poison || null_values) {
                FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "tell with NaN / -inf / NULL gave %d", (int)st);
            } else {
                FZ_CHECK(st == MSP_OK, "tell of the pending batch gave %d", (int)st);
                if (md.fidelity == last_fidelity) {
                    md.evaluations += count;
                    for (int64_t i = 0; i < count; i++)
                        if (values[i] < md.best) md.best = values[i];
                    md.evaluated = 1;
                } else {
                    md.cheap += count;
                }
                md.pending = 0;
            }
        } else if (op == 5) {
            int32_t plan[MAX_LAYERS];
            for (int i = 0; i < MAX_LAYERS; i++) plan[i] = -9;
            double fit = -9;
            st = fz_status(msp_search_best(search, plan, &fit), "msp_search_best");
            if (!md.evaluated) {
                FZ_CHECK(st == MSP_ERR_INVALID_STATE, "best before any evaluation gave %d", (int)st);
                FZ_CHECK(plan[0] == -9 && fit == -9, "best wrote on error");
            } else {
                FZ_CHECK(st == MSP_OK, "best gave %d", (int)st);
                FZ_CHECK(fit == md.best, "best fitness %.17g, want %.17g", fit, md.best);
                check_plan(problem, plan, layers, num_levels, "msp_search_best");
            }
        } else if (op == 6) {
            msp_search_progress pr;
            memset(&pr, 0xAB, sizeof pr);
            fz_status(msp_search_get_progress(search, &pr), "msp_search_get_progress");
            FZ_CHECK(pr.evaluations == md.evaluations && pr.cheap_evaluations == md.cheap,
                     "progress evaluations %lld/%lld, want %lld/%lld", (long long)pr.evaluations,
                     (long long)pr.cheap_evaluations, (long long)md.evaluations, (long long)md.cheap);
            FZ_CHECK(pr.best_fitness == md.best, "progress best %.17g, want %.17g", pr.best_fitness, md.best);
            FZ_CHECK(pr.generation >= -1, "progress generation %d", (int)pr.generation);
            if (md.done) FZ_CHECK(pr.done, "progress not done after ask gave 0");
        } else if (op == 7) {
            run_state rs = {layers, num_levels, problem, 0, -1, 0, 0, -1, fz_u64(&in)};
            if (fz_bool(&in)) rs.cancel_at = fz_range(&in, 0, 30), rs.cancel_how = (int32_t)fz_range(&in, 0, 2);
            if (fz_u8(&in) % 4 == 0) rs.progress_cancel_at = fz_range(&in, 0, 4);
            int with_progress = fz_bool(&in) || rs.progress_cancel_at >= 0;
            st = fz_status(msp_search_run(search, run_fitness, with_progress ? run_progress : NULL, &rs), "msp_search_run");
            FZ_CHECK(st == MSP_OK || st == MSP_ERR_CANCELLED, "msp_search_run gave %d", (int)st);
            if (st == MSP_OK) FZ_CHECK(rs.cancel_at < 0 || rs.calls <= rs.cancel_at, "run ignored a cancel");
            /* Resynchronise the model: no batch is pending after a run. */
            msp_search_progress pr;
            fz_status(msp_search_get_progress(search, &pr), "msp_search_get_progress");
            FZ_CHECK(pr.evaluations >= md.evaluations && pr.best_fitness <= md.best, "run lost evaluations");
            md.pending = 0;
            md.evaluations = pr.evaluations;
            md.cheap = pr.cheap_evaluations;
            md.best = pr.best_fitness;
            md.evaluated = md.evaluations > 0;
            md.done = st == MSP_OK;
            FZ_CHECK(st != MSP_OK || pr.done, "run returned OK before the search finished");
        } else if (op == 8) {
            /* NULL arguments */
            int64_t count;
            int32_t fidelity, plan[MAX_LAYERS];
            double fit;
            msp_search_progress pr;
            FZ_CHECK(fz_status(msp_search_ask(NULL, plans, max_batch, &count, &fidelity), "ask(NULL)") == MSP_ERR_INVALID_ARGUMENT, "a");
            FZ_CHECK(fz_status(msp_search_ask(search, NULL, max_batch, &count, &fidelity), "ask(plans NULL)") == MSP_ERR_INVALID_ARGUMENT, "b");
            FZ_CHECK(fz_status(msp_search_ask(search, plans, max_batch, NULL, &fidelity), "ask(count NULL)") == MSP_ERR_INVALID_ARGUMENT, "c");
            FZ_CHECK(fz_status(msp_search_ask(search, plans, max_batch, &count, NULL), "ask(fid NULL)") == MSP_ERR_INVALID_ARGUMENT, "d");
            FZ_CHECK(fz_status(msp_search_tell(NULL, values, 1), "tell(NULL)") == MSP_ERR_INVALID_ARGUMENT, "e");
            FZ_CHECK(fz_status(msp_search_best(NULL, plan, &fit), "best(NULL)") == MSP_ERR_INVALID_ARGUMENT, "f");
            FZ_CHECK(fz_status(msp_search_best(search, NULL, &fit), "best(plan NULL)") == MSP_ERR_INVALID_ARGUMENT, "g");
            FZ_CHECK(fz_status(msp_search_best(search, plan, NULL), "best(fit NULL)") == MSP_ERR_INVALID_ARGUMENT, "h");
            FZ_CHECK(fz_status(msp_search_get_progress(NULL, &pr), "progress(NULL)") == MSP_ERR_INVALID_ARGUMENT, "i");
            FZ_CHECK(fz_status(msp_search_get_progress(search, NULL), "progress(out NULL)") == MSP_ERR_INVALID_ARGUMENT, "j");
            FZ_CHECK(fz_status(msp_search_run(NULL, run_fitness, NULL, NULL), "run(NULL)") == MSP_ERR_INVALID_ARGUMENT, "k");
            FZ_CHECK(fz_status(msp_search_run(search, NULL, NULL, NULL), "run(fitness NULL)") == MSP_ERR_INVALID_ARGUMENT, "l");
            msp_search_free(NULL);
        } else {
            /* A second, independent search on the same problem: handles do not share state. */
            msp_search *other = NULL;
            if (msp_search_create(problem, sensitivity, pmode ? &params : NULL, &other) == MSP_OK) {
                run_state rs = {layers, num_levels, problem, 0, fz_range(&in, -1, 5), 0, 0, -1, 7};
                st = fz_status(msp_search_run(other, run_fitness, NULL, &rs), "msp_search_run(other)");
                FZ_CHECK(st == MSP_OK || st == MSP_ERR_CANCELLED, "run(other) gave %d", (int)st);
                msp_search_free(other);
            }
        }
    }
    msp_search_free(search);
    msp_problem_free(problem);
    free(plans);
    free(plans0);
    free(last);
    free(values);
    return 0;
}
