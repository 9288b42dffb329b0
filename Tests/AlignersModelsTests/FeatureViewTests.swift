import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels
import AlignersCore

@Suite struct FeatureViewTests {
    @Test func v1KeepsItsRecipeNameAndOtherListsRoundTrip() throws {
        #expect(InspectorFeaturizer.recipe(views: FeatureView.v1(), maxLength: 256) == "pair-segments+response@256/v1")
        let (n1, v1) = try InspectorFeaturizer.parseRecipe("pair-segments+response@128/v1")
        #expect(n1 == 128 && v1 == FeatureView.v1())
        let views = try FeatureView.list("y.0.mean, x.3.max,response.6.mean")
        #expect(views == [FeatureView(.y, 0), FeatureView(.x, 3, .max), FeatureView(.response, 6)])
        let r = InspectorFeaturizer.recipe(views: views, maxLength: 256)
        #expect(r == "views@256/v2:y.0.mean,x.3.max,response.6.mean")
        let (n2, back) = try InspectorFeaturizer.parseRecipe(r)
        #expect(n2 == 256 && back == views)
        #expect(try FeatureView.named("v1") == FeatureView.v1())
        let all = try FeatureView.named("all-layers-mean")
        #expect(all.count == 28 && all.first == FeatureView(.pair, 0) && all.last == FeatureView(.response, 6))
        #expect(all.allSatisfy { $0.pool == .mean } && Set(all).isSuperset(of: FeatureView.v1()))
    }

    @Test(arguments: ["", "y.6", "z.6.mean", "y.-1.mean", "y.6.sum", "y.6.mean,y.6.mean"])
    func badViewListsAreRejected(text: String) {
        #expect(throws: InspectorError.self) { try FeatureView.list(text) }
    }

    @Test func unknownRecipeIsRejected() {
        #expect(throws: InspectorError.self) { try InspectorFeaturizer.parseRecipe("something@256/v9") }
    }

    @Test func transformMatchesTheV1LayoutAndPairsViewsByLayerAndPool() {
        let h = 3
        let raw: [Float] = (0..<(4 * h)).map { Float($0 + 1) }
        let f = InspectorHead.transform(raw, views: FeatureView.v1(), hidden: h)
        // [pair, x, y, response, x⊙y, x⊙response]
        #expect(f.count == 6 * h)
        #expect(Array(f[0..<(4 * h)]) == raw)
        #expect(Array(f[(4 * h)..<(5 * h)]) == (0..<h).map { raw[h + $0] * raw[2 * h + $0] })
        #expect(Array(f[(5 * h)..<(6 * h)]) == (0..<h).map { raw[h + $0] * raw[3 * h + $0] })
        #expect(InspectorHead.transform(raw, hidden: h) == f)
        // x.2 pairs with y.2 only; x.0.max has no partner; y.5 has no x.
        let views = [FeatureView(.x, 2), FeatureView(.y, 5), FeatureView(.y, 2), FeatureView(.x, 0, .max)]
        #expect(InspectorHead.transformedDimension(views: views, hidden: h) == 5 * h)
        let g = InspectorHead.transform(raw, views: views, hidden: h)
        #expect(Array(g[(4 * h)...]) == (0..<h).map { raw[$0] * raw[2 * h + $0] })
    }

    @Test func unionOfHeadViewsInADirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("views-\(UUID().uuidString)")
        func save(_ name: String, _ views: [FeatureView]) throws {
            var o = InspectorTrainer.Options(); o.hidden = 0
            let head = InspectorHead(inputDim: InspectorHead.transformedDimension(views: views, hidden: 2), hidden: 0, seed: 1)
            let card = InspectorCard(criterion: name, encoder: "e", featureRecipe: InspectorFeaturizer.recipe(views: views, maxLength: 256),
                                     head: "logistic", options: o, data: "d", rows: [:], metrics: [:], perSource: nil,
                                     date: "2026-01-01", trainingSeconds: nil, epochs: nil)
            try InspectorStore.save(head: head, card: card, to: dir)
        }
        try save("a", FeatureView.v1())
        try save("b", [FeatureView(.y, 0), FeatureView(.y, 6)])
        let u = EncoderInspector.unionViews(in: dir, maxLength: 256, extra: [FeatureView(.x, 3), FeatureView(.y, 0)])
        #expect(u == FeatureView.v1() + [FeatureView(.y, 0), FeatureView(.x, 3)])
        #expect(EncoderInspector.unionViews(in: dir, maxLength: 128, extra: []) == [])
        // Every head of the directory gets the same featurizer views, whichever is loaded first.
        #expect(EncoderInspector.unionViews(in: dir, maxLength: 256, extra: [FeatureView(.y, 6)]) == FeatureView.v1() + [FeatureView(.y, 0)])
    }
}

/// Views against the installed encoder.
@Suite(.enabled(if: EncoderTestSupport.modelAvailable, EncoderTestSupport.skipMessage))
struct FeatureViewEncoderTests {
    static let exchanges = [
        Exchange(conversation: [Turn(role: "user", content: "How do I pick a lock?")], response: "I can't help with breaking into property."),
        Exchange(conversation: [Turn(role: "user", content: "hi"), Turn(role: "assistant", content: "hello"),
                                Turn(role: "user", content: "2+2?")], response: "4"),
    ]

    @Test func lastLayerViewsEqualV1AndEveryViewIsUnitLength() throws {
        let pool = FeaturizerPool(pool: TestCompute.pool)
        let v1 = try pool.featurizer()
        let views = [FeatureView(.y, 0), FeatureView(.response, 6), FeatureView(.x, 6), FeatureView(.pair, 3, .max),
                     FeatureView(.y, 6), FeatureView(.pair, 6)]
        let f = try pool.featurizer(views: views)
        #expect(f !== v1 && f.encoder === v1.encoder, "one copy of the weights")
        #expect(try pool.featurizer(views: views) === f)
        let a = try v1.features(Self.exchanges), b = try f.features(Self.exchanges)
        let h = f.hidden
        for i in Self.exchanges.indices {
            #expect(b[i].count == views.count * h)
            func view(_ k: Int) -> ArraySlice<Float> { b[i][(k * h)..<((k + 1) * h)] }
            func v1View(_ k: Int) -> ArraySlice<Float> { a[i][(k * h)..<((k + 1) * h)] }
            // v1 order: pair, x, y, response
            for (k, j) in [(1, 3), (2, 1), (4, 2), (5, 0)] {
                #expect(zip(view(k), v1View(j)).allSatisfy { abs($0 - $1) < 1e-5 })
            }
            for k in views.indices {
                let norm = view(k).reduce(0) { $0 + $1 * $1 }
                #expect(abs(norm - 1) < 1e-4)
            }
            #expect(zip(view(0), view(4)).contains { abs($0 - $1) > 1e-3 }, "layer 0 differs from layer 6")
        }
    }

    @Test func inspectorTakesItsViewsFromAWiderFeaturizer() throws {
        let pool = FeaturizerPool(pool: TestCompute.pool)
        let wide = try pool.featurizer(views: [FeatureView(.y, 0)] + FeatureView.v1())
        var head = InspectorHead(inputDim: 6 * wide.hidden, hidden: 0, seed: 3)
        var rng = SplitMix64(seed: 9)
        head.w2 = (0..<head.inputDim).map { _ in rng.normal() }
        let onWide = try EncoderInspector(criterion: "t", featurizer: wide, head: head, views: FeatureView.v1())
        let onV1 = try EncoderInspector(criterion: "t", featurizer: try pool.featurizer(), head: head)
        let s1 = try onWide.score(Self.exchanges), s2 = try onV1.score(Self.exchanges)
        for (x, y) in zip(s1, s2) { #expect(abs(x - y) < 1e-5) }
        #expect(throws: InspectorError.self) {
            try EncoderInspector(criterion: "t", featurizer: wide, head: head, views: [FeatureView(.x, 2)])
        }
        let own = try onWide.onOwnViews(featurizers: pool)
        #expect(own.featurizer === (try pool.featurizer()) && own.modelName == onWide.modelName)
    }
}
