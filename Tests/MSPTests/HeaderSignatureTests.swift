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
    same(CMSPHeader.msp_nm_mask, MSP.msp_nm_mask)
    same(CMSPHeader.msp_nm_prune, MSP.msp_nm_prune)
    same(CMSPHeader.msp_topk_prune, MSP.msp_topk_prune)
}
