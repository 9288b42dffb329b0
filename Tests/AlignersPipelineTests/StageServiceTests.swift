import Testing
@testable import AlignersPipeline

@Suite("Stage services")
struct StageServiceTests {
    @Test("service names parse to what serves them and print back unchanged")
    func roundTrip() {
        let cases: [(String, StageService)] = [("generate", .generate), ("inspect.ethical", .inspect("ethical")),
                                               ("inspect.*", .inspectAll), ("align.harm-less", .align("harm-less"))]
        for (name, service) in cases {
            #expect(StageService(name: name) == service)
            #expect(service.name == name)
        }
        #expect(StageService(name: "align.") == nil && StageService(name: "score.x") == nil && StageService(name: "inspect") == nil)
        #expect(StageService.inspect("a").role == "inspector" && StageService.inspectAll.isInspection)
        #expect(StageService.align("a").criterion == "a" && StageService.inspectAll.criterion == nil)
    }
}
