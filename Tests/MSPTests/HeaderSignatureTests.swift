// Pins every exported entry point to its declaration in include/msp.h: each line compiles only if
// the Swift @_cdecl function has exactly the type the header declares. scripts/check_exports.py
// checks that every declared function is listed here and exported by libmsp.so.

import CMSPHeader
import MSP
import Testing

/// Compiles only when both functions have the same type.
private func same<F>(_: F, _: F) {}

@Test func exportedSignaturesMatchTheHeader() {
    same(CMSPHeader.msp_version_string, MSP.msp_version_string)
    same(CMSPHeader.msp_abi_version, MSP.msp_abi_version)
    same(CMSPHeader.msp_status_string, MSP.msp_status_string)
    same(CMSPHeader.msp_last_error_message, MSP.msp_last_error_message)
    same(CMSPHeader.msp_set_num_threads, MSP.msp_set_num_threads)
    same(CMSPHeader.msp_get_num_threads, MSP.msp_get_num_threads)
    same(CMSPHeader.msp_get_limits, MSP.msp_get_limits)
    same(CMSPHeader.msp_nm_mask, MSP.msp_nm_mask)
    same(CMSPHeader.msp_nm_prune, MSP.msp_nm_prune)
    same(CMSPHeader.msp_topk_prune, MSP.msp_topk_prune)
    same(CMSPHeader.msp_sum_squares, MSP.msp_sum_squares)
    same(CMSPHeader.msp_fisher_create, MSP.msp_fisher_create)
    same(CMSPHeader.msp_fisher_free, MSP.msp_fisher_free)
    same(CMSPHeader.msp_fisher_add, MSP.msp_fisher_add)
    same(CMSPHeader.msp_fisher_end_sample, MSP.msp_fisher_end_sample)
    same(CMSPHeader.msp_fisher_num_samples, MSP.msp_fisher_num_samples)
    same(CMSPHeader.msp_fisher_traces, MSP.msp_fisher_traces)
    same(CMSPHeader.msp_fisher_reset, MSP.msp_fisher_reset)
    same(CMSPHeader.msp_fisher_add_diagonal, MSP.msp_fisher_add_diagonal)
    same(CMSPHeader.msp_problem_create, MSP.msp_problem_create)
    same(CMSPHeader.msp_problem_free, MSP.msp_problem_free)
    same(CMSPHeader.msp_problem_set_groups, MSP.msp_problem_set_groups)
    same(CMSPHeader.msp_problem_set_bounds, MSP.msp_problem_set_bounds)
    same(CMSPHeader.msp_problem_set_target, MSP.msp_problem_set_target)
    same(CMSPHeader.msp_problem_range, MSP.msp_problem_range)
    same(CMSPHeader.msp_problem_check_plan, MSP.msp_problem_check_plan)
    same(CMSPHeader.msp_prior_params_default, MSP.msp_prior_params_default)
    same(CMSPHeader.msp_prior_plan, MSP.msp_prior_plan)
    same(CMSPHeader.msp_solve_additive, MSP.msp_solve_additive)
    same(CMSPHeader.msp_search_params_default, MSP.msp_search_params_default)
    same(CMSPHeader.msp_search_create, MSP.msp_search_create)
    same(CMSPHeader.msp_search_free, MSP.msp_search_free)
    same(CMSPHeader.msp_search_add_proxy, MSP.msp_search_add_proxy)
    same(CMSPHeader.msp_search_max_batch, MSP.msp_search_max_batch)
    same(CMSPHeader.msp_search_ask, MSP.msp_search_ask)
    same(CMSPHeader.msp_search_tell, MSP.msp_search_tell)
    same(CMSPHeader.msp_search_best, MSP.msp_search_best)
    same(CMSPHeader.msp_search_get_progress, MSP.msp_search_get_progress)
    same(CMSPHeader.msp_search_run, MSP.msp_search_run)
    same(CMSPHeader.msp_search_save_size, MSP.msp_search_save_size)
    same(CMSPHeader.msp_search_save, MSP.msp_search_save)
    same(CMSPHeader.msp_search_load, MSP.msp_search_load)
    same(CMSPHeader.msp_cost_table_energy, MSP.msp_cost_table_energy)
    same(CMSPHeader.msp_cost_table_reconstruction, MSP.msp_cost_table_reconstruction)
}
