import AlignersKernels
import Foundation

/// The tests' compute context: the tests are their own composition root, sized as the CLI is
/// (from the environment), one pool for the whole test process.
enum TestCompute {
    static let context = ComputeContext.fromEnvironment(ProcessInfo.processInfo.environment)
    static var pool: ComputePool { context.pool }
}
