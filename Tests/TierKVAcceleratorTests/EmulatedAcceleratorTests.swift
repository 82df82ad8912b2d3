import Testing
@testable import TierKV

#if canImport(Glibc)
import Glibc
#endif

@Suite struct EmulatedAcceleratorTests {
    /// 1 MiB at 1 GB/s takes ~1 ms: long enough to look before completion.
    static let slowLink = EmulatedAccelerator.LinkModel(
        hostToDeviceBytesPerSecond: 1e9, deviceToHostBytesPerSecond: 1e9, latencySeconds: 2e-3)

    @Test func readingBeforeTheFenceCompletesSeesStaleBytes() throws {
        // 250 ms of modelled latency: far longer than the few instructions between enqueue and
        // the checks, even on a loaded CI machine.
        let accelerator = EmulatedAccelerator(
            memoryByteCount: 8 << 20,
            link: .init(hostToDeviceBytesPerSecond: 1e9, deviceToHostBytesPerSecond: 1e9, latencySeconds: 0.25))
        #expect(accelerator.deviceDescription.isEmulated)
        #expect(accelerator.deviceDescription.displayName.contains("EMULATED"))
        let device = try accelerator.allocateMemory(byteCount: 1 << 20)
        let host = [UInt8](repeating: 0x3C, count: 1 << 20)
        let stream = try accelerator.makeStream()
        try host.withUnsafeBytes { try stream.copyToDevice(from: $0.baseAddress!, to: device, byteCount: 1 << 20) }
        let fence = try stream.recordFence(timing: true)
        let deviceBytes = try accelerator.deviceBytes(at: device, byteCount: 1 << 20)
        #expect(try fence.isComplete() == false)
        #expect(deviceBytes[0] == 0xA5, "the copy must not have landed yet")
        try fence.wait()
        #expect(try fence.isComplete())
        #expect(deviceBytes.allSatisfy { $0 == 0x3C })
        try accelerator.freeMemory(device)
    }

    @Test func fencesTimeTheModelledLink() throws {
        let accelerator = EmulatedAccelerator(memoryByteCount: 8 << 20, link: Self.slowLink)
        let device = try accelerator.allocateMemory(byteCount: 4 << 20)
        let host = [UInt8](repeating: 1, count: 4 << 20)
        let stream = try accelerator.makeStream()
        let start = try stream.recordFence(timing: true)
        try host.withUnsafeBytes { try stream.copyToDevice(from: $0.baseAddress!, to: device, byteCount: 4 << 20) }
        let end = try stream.recordFence(timing: true)
        try end.wait()
        // 2 ms latency + 4 MiB at 1 GB/s = 6.19 ms, plus whatever real time passed between recording
        // the start fence and enqueuing the copy (idle time counts, as with CUDA events).
        let seconds = try end.seconds(since: start)
        #expect(seconds >= 0.006194 - 1e-6)
        #expect(seconds < 0.006194 + 0.05)
    }

    @Test func copiesOutsideAnAllocationAreIllegal() throws {
        let accelerator = EmulatedAccelerator(memoryByteCount: 1 << 20, link: .instant)
        let device = try accelerator.allocateMemory(byteCount: 4096)
        let stream = try accelerator.makeStream()
        var host = [UInt8](repeating: 0, count: 8192)
        #expect(throws: TierKVError.self) {
            try host.withUnsafeMutableBytes { try stream.copyToHost(from: device, to: $0.baseAddress!, byteCount: 8192) }
        }
        #expect(throws: TierKVError.self) { try accelerator.freeMemory(device + 16) }
    }

    @Test func capacityIsEnforcedWithAClearError() throws {
        let accelerator = EmulatedAccelerator(memoryByteCount: 1 << 20, link: .instant)
        let first = try accelerator.allocateMemory(byteCount: 768 << 10)
        do {
            _ = try accelerator.allocateMemory(byteCount: 512 << 10)
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .capacityExceeded)
            #expect(error.message.contains("256 KiB free of 1 MiB"))
        }
        try accelerator.freeMemory(first)
        _ = try accelerator.allocateMemory(byteCount: 512 << 10)
    }

    @Test func selfTestAndTransferBenchmarkRunOnTheEmulation() throws {
        // A link slow enough that the modelled time, not the real memcpy, decides the rates even
        // under ThreadSanitizer (whose memcpy made 1 MiB copies miss PCIe Gen5's model).
        let link = EmulatedAccelerator.LinkModel(hostToDeviceBytesPerSecond: 1e9, deviceToHostBytesPerSecond: 1e9, latencySeconds: 100e-6)
        let accelerator = EmulatedAccelerator(memoryByteCount: 256 << 20, link: link)
        let outcome = try AcceleratorSelfTest.run(accelerator: accelerator, slotByteCount: 256 << 10, slotCount: 16)
        #expect(outcome.passed)
        #expect(outcome.device.isEmulated)
        let results = try TransferBenchmark(
            accelerator: accelerator, totalByteCount: 16 << 20, blockByteCounts: [64 << 10, 1 << 20], passes: 1,
            locksMemory: false
        ).run()
        #expect(results.count == 2)
        // Per-copy latency makes small blocks slower on the modelled link, as on PCIe.
        #expect(results[0].hostToDeviceGBPerSecond < results[1].hostToDeviceGBPerSecond)
        #expect(results[1].hostToDeviceGBPerSecond < 1.01)
    }

    @Test func deviceSlotPoolCarvesOneAllocation() throws {
        let accelerator = EmulatedAccelerator(memoryByteCount: 1 << 20, link: .instant)
        let pool = try DeviceSlotPool(accelerator: accelerator, slotByteCount: 1000, slotCount: 8)
        #expect(pool.slotStride == 1024)
        let a = try #require(pool.allocateSlot())
        let b = try #require(pool.allocateSlot())
        #expect(pool.address(ofSlot: b).rawValue - pool.address(ofSlot: a).rawValue == UInt64((b - a) * 1024))
        try pool.freeSlot(a)
        #expect(throws: TierKVError.self) { try pool.freeSlot(a) }
        let borrowed = try DeviceSlotPool(
            accelerator: accelerator, borrowing: pool.base, slotByteCount: 512, slotStride: 1024, slotCount: 8)
        #expect(!borrowed.ownsMemory)
    }
}
