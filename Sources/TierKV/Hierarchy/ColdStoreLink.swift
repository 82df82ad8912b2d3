import Dispatch
import TierKVCore
import TierKVStorage
import TierKVTransfer

/// One batch of cold-tier I/O: whole blocks between warm slots and the block store.
struct ColdBatch: Sendable {
    var isWrite: Bool
    var keys: [BlockKey]
    /// Warm slot addresses (slot-sized, payload at `ColdSlotHeader.byteCount`).
    var buffers: [UInt]
    var payloadByteCount: Int
    /// Filled by the link before it completes.
    let results: ColdBatchResults
}

final class ColdBatchResults: Sendable {
    let writes = Locked<[BlockStore.WriteResult]>([])
    let reads = Locked<[BlockStore.ReadResult]>([])
}

/// The host↔NVMe link of the hierarchy: runs `BlockStore` batches (checksummed, coalesced,
/// acknowledged after flush) on a serial queue per direction, under a `TransferScheduler` that
/// orders them by priority. The block store serialises batches on its ring; this queue keeps the
/// submitting thread from waiting for the device.
final class ColdStoreLink: TransferLink, @unchecked Sendable {
    // @unchecked: immutable; `BlockStore` is thread-safe.
    let store: BlockStore
    let name: String
    private let queue: DispatchQueue

    /// Called on the link's queue with the keys of each write batch's durable blocks, before
    /// the batch completes (the key-summary journal).
    private let afterWrite: (@Sendable ([BlockKey]) -> Void)?

    init(store: BlockStore, isWrite: Bool, afterWrite: (@Sendable ([BlockKey]) -> Void)? = nil) {
        self.store = store
        self.afterWrite = afterWrite
        self.name = isWrite ? "nvme_write" : "nvme_read"
        self.queue = DispatchQueue(label: "tierkv.cold.\(name)")
    }

    func byteCount(of request: ColdBatch) -> Int { request.keys.count * request.payloadByteCount }

    func start(_ request: ColdBatch, completion: @escaping @Sendable (TransferOutcome) -> Void) {
        queue.async { [store, afterWrite] in
            if request.isWrite {
                let writes = zip(request.keys, request.buffers).map { key, address in
                    BlockStore.Write(key: key, buffer: UnsafeMutableRawPointer(bitPattern: address)!, payloadByteCount: request.payloadByteCount)
                }
                let results = store.write(writes)
                if let afterWrite {
                    afterWrite(zip(request.keys, results).compactMap { key, result in
                        if case .stored = result { return key }
                        return nil
                    })
                }
                request.results.writes.withLock { $0 = results }
            } else {
                let results = store.read(zip(request.keys, request.buffers).map { key, address in
                    (key: key, buffer: UnsafeMutableRawPointer(bitPattern: address)!)
                })
                request.results.reads.withLock { $0 = results }
            }
            completion(.completed)
        }
    }
}
