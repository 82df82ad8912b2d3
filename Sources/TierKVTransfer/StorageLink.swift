import Synchronization
import TierKVCore
import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

/// One read or write of whole slots between a registered host buffer (a warm slot) and a file
/// (the cold tier), through io_uring fixed buffers: no bounce copy.
public struct StorageTransfer: Sendable {
    public var descriptor: Int32
    public var fileOffset: UInt64
    // Raw address: the caller owns the slot and keeps it alive until completion.
    public var hostAddress: UInt
    public var byteCount: Int
    /// Index of the registered buffer that contains `hostAddress`.
    public var bufferIndex: Int

    public init(descriptor: Int32, fileOffset: UInt64, host: UnsafeMutableRawPointer, byteCount: Int, bufferIndex: Int) {
        self.descriptor = descriptor
        self.fileOffset = fileOffset
        self.hostAddress = UInt(bitPattern: host)
        self.byteCount = byteCount
        self.bufferIndex = bufferIndex
    }
}

/// One direction of the host↔NVMe link. A request is a batch of slot I/Os submitted together;
/// a dedicated completion thread reaps CQEs and reports the request when its last I/O is done,
/// so submitters never wait on the device. A short transfer or an errno fails the request with
/// the operation and errno (the data is not acknowledged).
public final class StorageLink: TransferLink, @unchecked Sendable {
    // @unchecked: the ring's submission side is used only under `submission`; the completion
    // side only by the completion thread; `pending` is behind its lock.
    public enum Direction: String, Sendable {
        case read = "nvme_read"
        case write = "nvme_write"
    }

    public let direction: Direction
    private let ring: RingBox
    private let submission = Locked<UInt64>(1)
    private let pending = Locked<[UInt64: Batch]>([:])
    private var thread = pthread_t()
    /// user_data of the NOP that tells the completion thread to stop.
    private static let shutdownTag: UInt64 = .max

    private struct Batch {
        var remaining: Int
        var failure: TierKVError?
        let expected: [Int]
        let completion: @Sendable (TransferOutcome) -> Void
    }

    /// - Parameters:
    ///   - registeredBuffers: the regions to register as fixed buffers (an arena's
    ///     `ioRingBufferRegions`); `StorageTransfer.bufferIndex` indexes them.
    ///   - queueDepth: submission queue entries; a request larger than this is refused.
    public init(direction: Direction, registeredBuffers: [UnsafeMutableRawBufferPointer], queueDepth: UInt32 = 256) throws(TierKVError) {
        guard queueDepth >= 1, queueDepth <= 32768 else { throw .invalid("queue depth \(queueDepth) is out of range 1...32768") }
        self.direction = direction
        // No SINGLE_ISSUER: submissions come from whichever thread the scheduler dispatches on.
        let ring = try IORing(entryCount: queueDepth, preferredFlags: 0)
        try ring.registerBuffers(registeredBuffers)
        self.ring = RingBox(ring)
        let context = Unmanaged.passRetained(self).toOpaque()
        let created = pthread_create(&thread, nil, { argument in
            let link = Unmanaged<StorageLink>.fromOpaque(argument!).takeUnretainedValue()
            link.reapCompletions()
            return nil
        }, context)
        guard created == 0 else {
            Unmanaged<StorageLink>.fromOpaque(context).release()
            throw TierKVError(.systemCall, "cannot start the io_uring completion thread", operation: "pthread_create", errno: created)
        }
    }

    /// Stops the completion thread after every submitted I/O has completed. Call once, when no
    /// more requests will be started; the link keeps itself alive until then.
    public func shutdown() {
        submission.withLock { _ in
            _ = try? ring.value.queueNop(userData: Self.shutdownTag)
            _ = try? ring.value.submit()
        }
        pthread_join(thread, nil)
    }

    public var name: String { direction.rawValue }

    public func byteCount(of request: [StorageTransfer]) -> Int { request.reduce(0) { $0 + $1.byteCount } }

    public func start(_ request: [StorageTransfer], completion: @escaping @Sendable (TransferOutcome) -> Void) {
        guard !request.isEmpty else { return completion(.completed) }
        guard request.count <= Int(ring.value.entryCount) else {
            return completion(.failed(.invalid("a storage request of \(request.count) I/Os exceeds the queue depth \(ring.value.entryCount)")))
        }
        let outcome: TierKVError? = submission.withLock { (nextBatch: inout UInt64) -> TierKVError? in
            // user_data = batch << 16 | index: a CQE finds its batch without a search.
            let batch = nextBatch
            nextBatch += 1
            let first = batch << 16
            pending.withLock {
                $0[batch] = Batch(remaining: request.count, failure: nil, expected: request.map(\.byteCount), completion: completion)
            }
            do throws(TierKVError) {
                for (index, transfer) in request.enumerated() {
                    let host = UnsafeMutableRawPointer(bitPattern: transfer.hostAddress)!
                    switch direction {
                    case .read:
                        try ring.value.queueReadFixed(descriptor: transfer.descriptor, into: host, byteCount: transfer.byteCount,
                            fileOffset: transfer.fileOffset, bufferIndex: transfer.bufferIndex, userData: first + UInt64(index))
                    case .write:
                        try ring.value.queueWriteFixed(descriptor: transfer.descriptor, from: host, byteCount: transfer.byteCount,
                            fileOffset: transfer.fileOffset, bufferIndex: transfer.bufferIndex, userData: first + UInt64(index))
                    }
                }
                try ring.value.submit()
                return nil
            } catch {
                pending.withLock { _ = $0.removeValue(forKey: batch) }
                return error
            }
        }
        if let outcome { completion(.failed(outcome)) }
    }

    /// The completion thread: waits for CQEs, folds them into their batch, reports finished batches.
    private func reapCompletions() {
        defer { Unmanaged.passUnretained(self).release() }
        while true {
            let completion: IORingCompletion
            do { completion = try ring.value.waitCompletion() } catch { continue }
            if completion.userData == Self.shutdownTag { return }
            let finished: Batch? = pending.withLock { table in
                let key = completion.userData >> 16
                guard var batch = table[key] else { return nil }
                let expected = batch.expected[Int(completion.userData & 0xFFFF)]
                if completion.result < 0 {
                    batch.failure = batch.failure ?? TierKVError(
                        .systemCall, "\(direction.rawValue) failed: \(TierKVError.errnoName(-completion.result))",
                        operation: direction == .read ? "read_fixed" : "write_fixed", errno: -completion.result)
                } else if Int(completion.result) != expected {
                    batch.failure = batch.failure ?? TierKVError(
                        .systemCall, "short \(direction.rawValue): \(completion.result) of \(expected) bytes",
                        operation: direction == .read ? "read_fixed" : "write_fixed")
                }
                batch.remaining -= 1
                if batch.remaining == 0 {
                    table.removeValue(forKey: key)
                    return batch
                }
                table[key] = batch
                return nil
            }
            if let finished { finished.completion(finished.failure.map(TransferOutcome.failed) ?? .completed) }
        }
    }
}

/// Holds the ring so a class can own a ~Copyable value.
final class RingBox: @unchecked Sendable {
    // @unchecked: see StorageLink: submission and completion sides are each used by one thread at a time.
    let value: IORing
    init(_ value: consuming IORing) { self.value = value }
}
