import Testing
@testable import AlignersPipeline

@Suite("Stage services")
struct StageServiceTests {
    @Test("service names parse to what serves them and print back unchanged")
    func roundTrip() {
        let cases: [(String, StageService)] = [("generate", .generate), ("inspect", .inspect), ("align.harm-less", .align("harm-less"))]
        for (name, service) in cases {
            #expect(StageService(name: name) == service)
            #expect(service.name == name)
        }
        #expect(StageService(name: "align.") == nil && StageService(name: "score.x") == nil)
        #expect(StageService(name: "inspect.ethical") == nil && StageService(name: "inspect.*") == nil, "per-criterion inspection is gone")
        #expect(StageService.inspect.role == "inspector" && StageService.align("a").role == "aligner")
        #expect(StageService.align("a").criterion == "a" && StageService.inspect.criterion == nil)
    }
}
