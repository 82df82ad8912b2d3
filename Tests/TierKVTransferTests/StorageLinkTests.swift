import CTierKVLinux
import Dispatch
import Synchronization
import Testing
import TierKVTestSupport
@testable import TierKV

#if canImport(Glibc)
import Glibc
#endif

@Suite struct StorageLinkTests {
    /// Warm slots → file → other warm slots, through the scheduler and io_uring fixed buffers.
    @Test func writesAndReadsWholeSlotsThroughFixedBuffers() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cold"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC | ctierkv_o_direct(), 0o600)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        let slotBytes = 64 << 10
        let arena = try HostArena(.init(slotByteCount: slotBytes, slotCount: 16, locksMemory: false))
        var generator = SeededGenerator(seed: 11)
        for slot in 0..<8 {
            let words = arena.address(ofSlot: slot).assumingMemoryBound(to: UInt64.self)
            for index in 0..<(slotBytes / 8) { words[index] = generator.next() }
        }
        let writer = try StorageLink(direction: .write, registeredBuffers: arena.ioRingBufferRegions)
        let reader = try StorageLink(direction: .read, registeredBuffers: arena.ioRingBufferRegions)
        defer { writer.shutdown(); reader.shutdown() }
        let writes = TransferScheduler(link: writer, maximumBytesInFlight: 4 * slotBytes)
        let reads = TransferScheduler(link: reader, maximumBytesInFlight: 4 * slotBytes)

        let written = Completion()
        let requests = (0..<8).map { slot in
            [StorageTransfer(descriptor: descriptor, fileOffset: UInt64(slot * slotBytes), host: arena.address(ofSlot: slot),
                byteCount: slotBytes, bufferIndex: arena.ioRingBufferIndex(ofSlot: slot))]
        }
        let remaining = Countdown(requests.count) { written.signal(.completed) }
        for request in requests { writes.submit(request, priority: .writeBack) { remaining.tick($0) } }
        written.wait()
        #expect(remaining.allSucceeded)
        #expect(writes.statistics.completedBytes[.writeBack] == 8 * slotBytes)

        let read = Completion()
        // One request of 8 I/Os, read in reverse order into slots 8..<16.
        let batch = (0..<8).map { index in
            StorageTransfer(descriptor: descriptor, fileOffset: UInt64((7 - index) * slotBytes), host: arena.address(ofSlot: 8 + index),
                byteCount: slotBytes, bufferIndex: arena.ioRingBufferIndex(ofSlot: 8 + index))
        }
        reads.submit(batch, priority: .demand) { read.signal($0) }
        read.wait()
        #expect(read.succeeded)
        for index in 0..<8 {
            #expect(memcmp(arena.address(ofSlot: 8 + index), arena.address(ofSlot: 7 - index), slotBytes) == 0)
        }
    }

    @Test func anIOErrorFailsTheRequestWithItsErrno() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/readonly"
        close(open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600))
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(descriptor) }
        let arena = try HostArena(.init(slotByteCount: 4096, slotCount: 1, locksMemory: false))
        let writer = try StorageLink(direction: .write, registeredBuffers: arena.ioRingBufferRegions)
        defer { writer.shutdown() }
        let done = Completion()
        let outcome = OutcomeBox()
        writer.start([StorageTransfer(descriptor: descriptor, fileOffset: 0, host: arena.base, byteCount: 4096, bufferIndex: 0)]) {
            outcome.set($0)
            done.signal($0)
        }
        done.wait()
        #expect(!done.succeeded)
        #expect(outcome.errno == EBADF)
    }
}

/// Counts completions down and calls `finished` after the last.
final class Countdown: Sendable {
    private let state: Locked<(left: Int, failures: Int)>
    private let finished: @Sendable () -> Void
    init(_ count: Int, finished: @escaping @Sendable () -> Void) {
        state = Locked((count, 0))
        self.finished = finished
    }
    func tick(_ outcome: TransferOutcome) {
        let done = state.withLock { state in
            if case .completed = outcome {} else { state.failures += 1 }
            state.left -= 1
            return state.left == 0
        }
        if done { finished() }
    }
    var allSucceeded: Bool { state.withLock { $0.failures == 0 } }
}

final class OutcomeBox: Sendable {
    private let value = Locked<Int32?>(nil)
    func set(_ outcome: TransferOutcome) {
        if case .failed(let error) = outcome { value.withLock { $0 = error.errno } }
    }
    var errno: Int32? { value.withLock { $0 } }
}
