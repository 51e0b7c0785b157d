/*
 * fuzz_planning: msp_problem_* (create, groups, bounds, target, range, check_plan), msp_prior_plan
 * and msp_solve_additive.
 *
 * Layer sizes (up to overflowing sums), level sets (N:M, ratios or raw values), groups, bounds,
 * targets, tolerances, sensitivities, prior parameters and costs (NaN, inf, subnormal) come from the
 * fuzzer, as does the order of the calls. Every plan the library returns must pass
 * msp_problem_check_plan; every error must leave the problem (its reachable range) and the caller's
 * out-buffers unchanged.
 */
#include "fuzz_common.h"

#define MAX_LAYERS 12
#define MAX_LEVELS 12
#define SENTINEL (-77)

/* A level set: N:M levels, ratio levels, a mix, or raw fuzzer values. */
static int64_t make_levels(fz_input *in, msp_level *levels) {
    int64_t k = fz_range(in, 1, MAX_LEVELS);
    uint8_t mode = fz_u8(in) % 4;
    if (mode == 0) {
        int32_t m = (int32_t)fz_range(in, 1, MSP_MAX_M);
        if (k > m) k = m;
        int32_t top = (int32_t)fz_range(in, k, m); /* n from top down to top - k + 1 */
        for (int64_t i = 0; i < k; i++) {
            int32_t n = top - (int32_t)i;
            levels[i] = (msp_level){1.0 - (double)n / m, n, m};
        }
    } else if (mode == 1) {
        double s = fz_u8(in) / 512.0;
        for (int64_t i = 0; i < k; i++) {
            levels[i] = (msp_level){s, 0, 0};
            s += (1 + fz_u8(in)) / 1024.0;
            if (s >= 1) s = 0.9999999;
        }
    } else if (mode == 2) {
        /* common N:8 set with the occasional unstructured level */
        for (int64_t i = 0; i < k; i++) levels[i] = (msp_level){i / (double)(k + 1), 0, 0};
        if (fz_bool(in) && k >= 2) levels[1] = (msp_level){0.5, 4, 8};
    } else {
        for (int64_t i = 0; i < k; i++) {
            levels[i].sparsity = fz_double(in);
            levels[i].n = (int32_t)fz_range(in, -1, 33);
            levels[i].m = (int32_t)fz_range(in, -1, 33);
        }
    }
    return k;
}

/* The problem's reachable range, for the unchanged-on-error checks. */
static void range_of(const msp_problem *p, double r[2]) {
    fz_status(msp_problem_range(p, &r[0], &r[1]), "msp_problem_range");
    FZ_CHECK(r[0] <= r[1] && r[0] >= 0 && r[1] < 1, "range [%g, %g]", r[0], r[1]);
}

/* Checks a plan written by the library: in range, feasible by msp_problem_check_plan. */
static void check_plan(const msp_problem *p, const int32_t *plan, int64_t layers, int64_t levels, const char *who) {
    for (int64_t l = 0; l < layers; l++)
        FZ_CHECK(plan[l] >= 0 && plan[l] < levels, "%s: plan[%lld] = %d", who, (long long)l, (int)plan[l]);
    double avg = -1;
    msp_status st = fz_status(msp_problem_check_plan(p, plan, &avg), "msp_problem_check_plan");
    FZ_CHECK(st == MSP_OK, "%s returned a plan that msp_problem_check_plan rejects (%d, average %.17g)", who, (int)st, avg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    int64_t layers = fz_range(&in, 1, MAX_LAYERS);
    int64_t sizes[MAX_LAYERS];
    uint8_t size_mode = fz_u8(&in) % 8;
    for (int64_t l = 0; l < layers; l++) {
        if (size_mode == 0) sizes[l] = INT64_MAX / (1 + fz_range(&in, 0, 3)) - fz_u8(&in); /* sums may overflow */
        else if (size_mode == 1) sizes[l] = (int64_t)fz_u64(&in);                           /* anything */
        else sizes[l] = 1 + (int64_t)fz_u16(&in) * (1 + fz_u8(&in) % 16);
    }
    msp_level levels[MAX_LEVELS];
    int64_t num_levels = make_levels(&in, levels);
    int64_t create_layers = layers, create_levels = num_levels;
    uint8_t bad = fz_u8(&in);
    if (bad == 1) create_layers = -fz_range(&in, 0, 2);
    if (bad == 2) create_levels = fz_bool(&in) ? 0 : -5;
    if (bad == 3) create_layers = INT64_MIN;

    msp_problem *problem = (msp_problem *)&in;
    msp_status st = fz_status(msp_problem_create(sizes, create_layers, levels, create_levels, &problem), "msp_problem_create");
    if (st != MSP_OK) {
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "msp_problem_create: status %d", (int)st);
        FZ_CHECK(problem == (msp_problem *)&in, "msp_problem_create changed *out on error");
        return 0;
    }
    FZ_CHECK(bad < 1 || bad > 3, "msp_problem_create accepted layers %lld / levels %lld", (long long)create_layers,
             (long long)create_levels);
    FZ_CHECK(problem != NULL, "msp_problem_create gave NULL");

    int64_t groups[MAX_LAYERS];
    int steps = fz_range(&in, 1, 24);
    for (int s = 0; s < steps && in.size > 0; s++) {
        uint8_t op = fz_u8(&in) % 8;
        double before[2], after[2];
        range_of(problem, before);
        if (op == 0) {
            int null_groups = fz_u8(&in) % 4 == 0;
            for (int64_t l = 0; l < layers; l++) groups[l] = fz_u8(&in) < 250 ? fz_range(&in, 0, 4) : (int64_t)fz_u64(&in);
            st = fz_status(msp_problem_set_groups(problem, null_groups ? NULL : groups), "msp_problem_set_groups");
        } else if (op == 1) {
            int32_t lo[MAX_LAYERS], hi[MAX_LAYERS];
            for (int64_t l = 0; l < layers; l++) {
                lo[l] = fz_u8(&in) < 250 ? (int32_t)fz_range(&in, 0, num_levels - 1) : (int32_t)fz_u32(&in);
                hi[l] = fz_u8(&in) < 250 ? (int32_t)fz_range(&in, lo[l] < 0 ? 0 : lo[l], num_levels) : (int32_t)fz_u32(&in);
            }
            uint8_t which = fz_u8(&in) % 4;
            st = fz_status(msp_problem_set_bounds(problem, which & 1 ? lo : NULL, which & 2 ? hi : NULL),
                           "msp_problem_set_bounds");
        } else if (op == 2) {
            uint8_t tmode = fz_u8(&in);
            double target = tmode < 200   ? before[0] + (before[1] - before[0]) * fz_u16(&in) / 65535.0
                            : tmode < 240 ? before[tmode & 1]
                                          : fz_double(&in);
            /* tolerance 0 (or a subnormal one) makes solves use the finest grid: allowed, but slow under ASan */
            uint8_t tolmode = fz_u8(&in);
            double tol = tolmode < 250 ? fz_range(&in, 1, 50) / 1000.0 : fz_double(&in);
            st = fz_status(msp_problem_set_target(problem, target, tol), "msp_problem_set_target");
            /* The plan at every lower (upper) bound reaches the range's ends exactly. */
            if ((target == before[0] || target == before[1]) && target < 1 && tol >= 0 && tol <= 0.5)
                FZ_CHECK(st == MSP_OK, "set_target(%.17g, %g) at an end of the range [%.17g, %.17g] gave %d", target, tol,
                         before[0], before[1], (int)st);
        } else if (op == 3) {
            int32_t plan[MAX_LAYERS];
            for (int64_t l = 0; l < layers; l++) plan[l] = (int32_t)fz_range(&in, -1, num_levels);
            double avg = 1234.5;
            st = fz_status(msp_problem_check_plan(problem, plan, &avg), "msp_problem_check_plan");
            if (st == MSP_ERR_INVALID_ARGUMENT) FZ_CHECK(avg == 1234.5, "check_plan wrote average_out on error");
        } else if (op == 4 || op == 5) {
            double sensitivity[MAX_LAYERS];
            uint8_t mode = fz_u8(&in) % 4;
            for (int64_t l = 0; l < layers; l++)
                sensitivity[l] = mode == 0 ? fz_double(&in) : mode == 1 ? (double)fz_u8(&in) : exp((double)(int8_t)fz_u8(&in));
            msp_prior_params params = msp_prior_params_default();
            FZ_CHECK(params.struct_size == sizeof params, "msp_prior_params_default struct_size");
            uint8_t pmode = fz_u8(&in) % 4;
            if (pmode >= 1) {
                params.strength = fz_u8(&in) < 200 ? fz_u8(&in) / 32.0 : fz_double(&in);
                params.per_parameter = (int32_t)fz_u8(&in) - 100;
            }
            if (pmode == 3) params.struct_size = fz_u32(&in);
            int32_t plan[MAX_LAYERS];
            for (int64_t l = 0; l < layers; l++) plan[l] = SENTINEL;
            st = fz_status(msp_prior_plan(problem, sensitivity, pmode ? &params : NULL, plan), "msp_prior_plan");
            if (st == MSP_OK) check_plan(problem, plan, layers, num_levels, "msp_prior_plan");
            else
                for (int64_t l = 0; l < layers; l++) FZ_CHECK(plan[l] == SENTINEL, "msp_prior_plan wrote plan_out on error");
        } else if (op == 6) {
            double costs[MAX_LAYERS * MAX_LEVELS];
            uint8_t mode = fz_u8(&in) % 4;
            for (int64_t i = 0; i < layers * num_levels; i++)
                costs[i] = mode == 0 ? fz_double(&in) : mode == 1 ? (double)fz_u8(&in) : (double)(int16_t)fz_u16(&in) / 7.0;
            int32_t plan[MAX_LAYERS];
            for (int64_t l = 0; l < layers; l++) plan[l] = SENTINEL;
            double total = 4321.5;
            int want_total = fz_bool(&in);
            st = fz_status(msp_solve_additive(problem, costs, plan, want_total ? &total : NULL), "msp_solve_additive");
            if (st == MSP_OK) {
                check_plan(problem, plan, layers, num_levels, "msp_solve_additive");
                if (want_total) {
                    long double sum = 0, mag = 0;
                    for (int64_t l = 0; l < layers; l++) {
                        sum += costs[l * num_levels + plan[l]];
                        mag += fabs(costs[l * num_levels + plan[l]]);
                    }
                    FZ_CHECK(fabsl(total - sum) <= 1e-9L * mag + 1e-300L, "solve_additive total %.17g, plan's %.17Lg", total, sum);
                }
            } else {
                for (int64_t l = 0; l < layers; l++) FZ_CHECK(plan[l] == SENTINEL, "msp_solve_additive wrote plan_out on error");
                FZ_CHECK(total == 4321.5, "msp_solve_additive wrote total_out on error");
            }
        } else {
            /* NULL arguments are errors, never crashes. */
            double r0, r1, avg;
            int32_t plan[MAX_LAYERS] = {0};
            double costs[MAX_LAYERS * MAX_LEVELS] = {0}, sens[MAX_LAYERS] = {1};
            FZ_CHECK(fz_status(msp_problem_range(NULL, &r0, &r1), "range(NULL)") == MSP_ERR_INVALID_ARGUMENT, "range");
            FZ_CHECK(fz_status(msp_problem_range(problem, NULL, &r1), "range(min NULL)") == MSP_ERR_INVALID_ARGUMENT, "r");
            FZ_CHECK(fz_status(msp_problem_check_plan(problem, NULL, &avg), "check(NULL)") == MSP_ERR_INVALID_ARGUMENT, "c");
            FZ_CHECK(fz_status(msp_problem_check_plan(problem, plan, NULL), "check(avg NULL)") == MSP_ERR_INVALID_ARGUMENT,
                     "c2");
            FZ_CHECK(fz_status(msp_problem_set_target(NULL, 0.5, 0.01), "target(NULL)") == MSP_ERR_INVALID_ARGUMENT, "t");
            FZ_CHECK(fz_status(msp_problem_set_groups(NULL, NULL), "groups(NULL)") == MSP_ERR_INVALID_ARGUMENT, "g");
            FZ_CHECK(fz_status(msp_problem_set_bounds(NULL, NULL, NULL), "bounds(NULL)") == MSP_ERR_INVALID_ARGUMENT, "b");
            FZ_CHECK(fz_status(msp_prior_plan(problem, NULL, NULL, plan), "prior(sens NULL)") == MSP_ERR_INVALID_ARGUMENT, "p");
            FZ_CHECK(fz_status(msp_prior_plan(problem, sens, NULL, NULL), "prior(out NULL)") == MSP_ERR_INVALID_ARGUMENT, "p2");
            FZ_CHECK(fz_status(msp_solve_additive(problem, NULL, plan, NULL), "solve(NULL)") == MSP_ERR_INVALID_ARGUMENT, "s");
            FZ_CHECK(fz_status(msp_solve_additive(NULL, costs, plan, NULL), "solve(p NULL)") == MSP_ERR_INVALID_ARGUMENT, "s2");
            msp_problem_free(NULL);
            st = MSP_OK;
        }
        range_of(problem, after);
        if (st != MSP_OK && op <= 2)
            FZ_CHECK(before[0] == after[0] && before[1] == after[1], "op %u failed (%d) but changed the range", op, (int)st);
    }
    msp_problem_free(problem);
    return 0;
}
