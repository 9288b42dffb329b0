import Testing
import AlignersKernels

/// The kernel plan's choice by row count, and the context built from the environment.
struct KernelPlanTests {
    /// The plan reads only a matrix's type and shape: the data pointer is never followed.
    static func matrix(_ type: GGMLType, rows: Int = 1536, cols: Int = 576) -> QuantTensor {
        QuantTensor(type: type, rows: rows, cols: cols, data: UnsafeRawPointer(bitPattern: 64)!, owner: nil)
    }

    @Test func withoutVNNIRowsChooseIntegerKernelsThenSgemm() {
        let plan = KernelPlan(vnni: false)
        let w = [Self.matrix(.q4_1), Self.matrix(.q8_0)]
        #expect(plan.batchThreshold == 32)
        #expect(plan.product(rows: 1, w) == .integerRow)
        #expect(plan.product(rows: 31, w) == .integerSmall)
        #expect(plan.product(rows: 32, w) == .sgemm)
        var noCopies = plan
        noCopies.allowDenseWeights = false
        #expect(noCopies.product(rows: 64, w) == .integerSmall)
        var float = plan
        float.integerDots = false
        #expect(float.product(rows: 1, w) == .floatRows)
        #expect(float.product(rows: 64, w) == .sgemm)
        // A type the integer kernels do not read sends the whole product to the float kernels.
        #expect(plan.product(rows: 4, w + [Self.matrix(.f32)]) == .floatRows)
    }

    @Test func withVNNIBatchesFromTwoRowsWhereTheWeightsInterleave() {
        let plan = KernelPlan(vnni: true)
        guard QuantKernels.vnniSupported else {
            #expect(!plan.vnni && plan.batchThreshold == 32)
            return
        }
        #expect(plan.vnni && plan.batchThreshold == 2)
        #expect(plan.product(rows: 1, [Self.matrix(.q4_1)]) == .integerRow)
        #expect(plan.product(rows: 2, [Self.matrix(.q4_1), Self.matrix(.q8_0)]) == .vnniGemm)
        // 8 rows cannot be interleaved (groups of 16): sgemm for all.
        #expect(plan.product(rows: 2, [Self.matrix(.q4_1), Self.matrix(.q4_1, rows: 8)]) == .sgemm)
    }

    @Test func contextReadsTheEnvironmentItIsGiven() {
        let c = ComputeContext.fromEnvironment(["ALIGNERS_THREADS": "3", "ALIGNERS_VNNI": "0", "ALIGNERS_BATCH_THRESHOLD": "7"])
        #expect(c.pool.threads == 3 && !c.plan.vnni && c.plan.batchThreshold == 7)
        #expect(ComputeContext.fromEnvironment(["ALIGNERS_THREADS": "3"], threads: 1).pool.threads == 1)
        let d = ComputeContext.fromEnvironment(["ALIGNERS_BATCH_THRESHOLD": "zero"])
        #expect(d.plan.vnni == QuantKernels.vnniSupported && d.plan.batchThreshold == (d.plan.vnni ? 2 : 32))
    }
}
