import Testing
import TierKV
import TierKVTestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite struct HierarchyLifetimeTests {
    @Test(arguments: [0, 1, 2, 3])
    func aHierarchyIsFreedWhenTheLastReferenceGoes(stage: Int) throws {
        let directory = try TemporaryDirectory()
        weak var weakHierarchy: Hierarchy?
        do {
            let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
            weakHierarchy = hierarchy
            if stage >= 1 { try hierarchy.storeTestBlock(testKey(0), position: 0, sequence: SequenceID(1)) }
            if stage >= 2 { _ = try hierarchy.holdsTestPattern(testKey(0)) }
            if stage >= 3 { for index in 1..<10 { try hierarchy.storeTestBlock(testKey(index), position: index, sequence: SequenceID(1)) } }
            try hierarchy.close()
        }
        // The last completion thread may hold it a moment longer; a cycle would hold it forever.
        var waitedMilliseconds = 0
        while weakHierarchy != nil, waitedMilliseconds < 2000 {
            usleep(1000)
            waitedMilliseconds += 1
        }
        #expect(weakHierarchy == nil)
    }
}
