// TopKScope: the comparison group of unstructured pruning (MSP_SCOPE_ROW, MSP_SCOPE_LAYER).

/// The comparison group of unstructured pruning.
public enum TopKScope: Int32, Sendable {
    /// floor(sparsity * cols) weights pruned in every row (Wanda's comparison group).
    case row = 0
    /// floor(sparsity * rows * cols) weights pruned in the whole matrix (magnitude pruning).
    case layer = 1
}
