// MSPError: the errors the core throws; the C ABI maps each case to an msp_status.

/// An error from an msp algorithm. Every case carries a message meant for the user, naming the
/// argument or position at fault.
public enum MSPError: Error, Equatable, Sendable {
    /// An argument is out of its documented range, or input data contains NaN.
    case invalidArgument(String)
    /// Scratch memory could not be allocated.
    case outOfMemory(String)
    /// No plan satisfies the budget and the bounds.
    case infeasible(String)
    /// A callback asked to stop.
    case cancelled(String)
    /// A call came out of order on a stateful object.
    case invalidState(String)

    /// The message for the user.
    public var message: String {
        switch self {
        case .invalidArgument(let m), .outOfMemory(let m), .infeasible(let m), .cancelled(let m),
            .invalidState(let m):
            return m
        }
    }
}
