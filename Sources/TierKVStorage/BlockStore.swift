import Synchronization
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// The cold tier's store: blocks by `BlockKey` in the slots of a `BlockFile`, written and read in
/// batches through io_uring, every read verified.
///
/// Guarantees:
/// - A write goes to a free slot (copy-on-write); the key's previous copy is freed only after the
///   new one completed and was flushed (`fdatasync`), so a crash mid-write leaves the old copy.
/// - A write is acknowledged (`.stored`) only after its I/O completed and the flush returned.
/// - A read returns data only when the slot's header names the key and the checksum of header
///   and payload matches; otherwise it is a miss and a counted corruption, and the slot is dropped.
/// - On open, the index is rebuilt from the slot headers; for a key with several copies the
///   newest that verifies wins.
///
/// Buffers are slot-sized (`geometry.slotByteCount`), 4 KiB-aligned host memory (warm-arena slots)
/// with the payload at offset `ColdSlotHeader.byteCount`; the store writes the header there.
/// Batches are serialised on one ring (the asynchronous path is `StorageLink`).
public final class BlockStore: @unchecked Sendable {
    // @unchecked: `ring` and `state` are only used while `state`'s lock is held.
    public let file: BlockFile
    let ring: IORing
    let state: Locked<State>
    let allocator: SlotAllocator
    public let syncsWrites: Bool
    /// Test hook: makes chosen completions report an errno, in the same completion handling a real
    /// device error goes through (there is no device-mapper here to produce EIO for real).
    public let faultInjector: IOFaultInjector?

    struct Entry {
        var slot: Int
        var sequence: UInt64
        var payloadByteCount: Int
    }

    struct State {
        var index: [BlockKey: Entry] = [:]
        var nextSequence: UInt64 = 1
        var statistics = Statistics()
        /// Indexed slots freed since the last checkpoint: not reused until the next one.
        var retired: [Int] = []
    }

    public struct Statistics: Sendable, Equatable {
        public var blocks = 0
        public var writes = 0
        public var reads = 0
        public var hits = 0
        public var misses = 0
        public var corruptions = 0
        public var readErrors = 0
        /// I/Os submitted by batch reads and writes (adjacent slots coalesce into one).
        public var ios = 0
        public var writeFailures = 0
        /// Slots found at open: valid copies indexed, corrupt or superseded ones freed.
        public var recoveredBlocks = 0
        public var discardedSlots = 0
        /// Slot headers read at open (all of them without a valid checkpoint).
        public var scannedSlots = 0
        public var checkpoints = 0
        /// Whether the open used a valid checkpoint.
        public var openedFromCheckpoint = false
    }

    public struct Write: @unchecked Sendable {
        // @unchecked: the caller keeps `buffer` alive and untouched until `write` returns.
        public var key: BlockKey
        public var buffer: UnsafeMutableRawPointer
        public var payloadByteCount: Int
        public init(key: BlockKey, buffer: UnsafeMutableRawPointer, payloadByteCount: Int) {
            self.key = key
            self.buffer = buffer
            self.payloadByteCount = payloadByteCount
        }
    }

    public enum WriteResult: Sendable {
        case stored
        case failed(TierKVError)
    }

    public enum ReadResult: Sendable, Equatable {
        /// The payload is at `buffer + ColdSlotHeader.byteCount`, `payloadByteCount` bytes.
        case hit(payloadByteCount: Int)
        case miss
        /// The slot failed verification: treated as a miss, counted, and dropped from the index.
        case corrupt(reason: String)
        /// The read itself failed (EIO, EFAULT...): a miss for now, but the block stays indexed,
        /// since its copy on disk may be fine (a transient error must not lose acknowledged data).
        case ioError(reason: String)
    }

    /// Opens or creates the store and rebuilds its index from the slots.
    /// - Parameter syncsWrites: flush after each write batch before acknowledging (turn off only
    ///   for benchmarks of the raw device path).
    public init(
        directory: String, geometry: BlockFile.Geometry, allowBufferedFallback: Bool = false, queueDepth: UInt32 = 64,
        syncsWrites: Bool = true, faultInjector: IOFaultInjector? = nil
    ) throws(TierKVError) {
        self.faultInjector = faultInjector
        file = try BlockFile(directory: directory, geometry: geometry, allowBufferedFallback: allowBufferedFallback)
        ring = try IORing(entryCount: queueDepth, preferredFlags: 0)
        allocator = try SlotAllocator(slotCount: geometry.slotCount, shardCount: 1)
        state = Locked(State())
        self.syncsWrites = syncsWrites
        let checkpointPath = file.directory + "/" + Self.checkpointFileName
        if file.wasCreated {
            unlink(checkpointPath)  // an index from an earlier file must not describe this one
        } else {
            try recover()
            // The old checkpoint may name slots recovery just freed; replace it now, or remove it
            // (the next open then scans everything) so it can never hide a later write.
            if (try? state.withLock { (state) throws(TierKVError) in try writeCheckpoint(&state) }) == nil {
                unlink(checkpointPath)
            }
        }
    }

    public var geometry: BlockFile.Geometry { file.geometry }
    /// Largest payload a slot holds.
    public var payloadCapacity: Int { geometry.slotByteCount - ColdSlotHeader.byteCount }
    public var statistics: Statistics { state.withLock { $0.statistics } }
    public func contains(_ key: BlockKey) -> Bool { state.withLock { $0.index[key] != nil } }
    public var keys: [BlockKey] { state.withLock { Array($0.index.keys) } }
    /// Each indexed key with the write sequence of its copy: a copy is identified by (key,
    /// sequence), so data derived from it (the key summaries the hierarchy persists) can be
    /// matched to exactly that copy after a restart.
    public var sequences: [BlockKey: UInt64] { state.withLock { $0.index.mapValues(\.sequence) } }
    /// The write sequence of the indexed copy of each key (nil where none is indexed).
    public func sequences(of keys: [BlockKey]) -> [UInt64?] { state.withLock { state in keys.map { state.index[$0]?.sequence } } }

    /// Forgets a block (its slot becomes free). Not written to disk: after a crash the block may
    /// reappear, which is harmless because keys name content.
    @discardableResult
    public func remove(_ key: BlockKey) -> Bool {
        state.withLock { state in
            guard let entry = state.index.removeValue(forKey: key) else { return false }
            retire(entry.slot, &state)
            state.statistics.blocks = state.index.count
            return true
        }
    }

    // MARK: Writes

    /// Writes a batch; each block's result says whether it is durable. A block that fails keeps
    /// its previous copy (if any) in the index.
    public func write(_ blocks: [Write]) -> [WriteResult] {
        state.withLock { state in
            var results = [WriteResult?](repeating: nil, count: blocks.count)
            var slots = [Int](repeating: -1, count: blocks.count)
            var sequences = [UInt64](repeating: 0, count: blocks.count)
            for (index, block) in blocks.enumerated() {
                guard block.payloadByteCount >= 0, block.payloadByteCount <= payloadCapacity else {
                    results[index] = .failed(.invalid("payload of \(block.payloadByteCount) bytes does not fit a \(payloadCapacity)-byte slot"))
                    continue
                }
                guard let slot = allocateSlot(&state) else {
                    results[index] = .failed(TierKVError(.capacityExceeded, "the cold tier is full (\(geometry.slotCount) slots)"))
                    continue
                }
                slots[index] = slot
                sequences[index] = state.nextSequence
                state.nextSequence += 1
                ColdSlotHeader(key: block.key, payloadByteCount: block.payloadByteCount, sequence: sequences[index]).seal(into: block.buffer)
            }
            let pending = (0..<blocks.count).filter { slots[$0] >= 0 }
            let outcomes = runBatch(pending.map { index in
                (isWrite: true, buffer: blocks[index].buffer, slot: slots[index])
            }, ios: &state.statistics.ios)
            var completed: [Int] = []
            for (position, index) in pending.enumerated() {
                if let error = outcomes[position] {
                    results[index] = .failed(error)
                    try? allocator.free(slots[index])
                } else {
                    completed.append(index)
                }
            }
            if syncsWrites, !completed.isEmpty, fdatasync(file.descriptor) != 0 {
                let error = TierKVError(.systemCall, "flush of the cold tier failed: \(TierKVError.errnoName(errno)); the batch is not durable", operation: "fdatasync", path: file.path, errno: errno)
                for index in completed {
                    results[index] = .failed(error)
                    try? allocator.free(slots[index])
                }
                completed.removeAll()
            }
            for index in completed {
                let key = blocks[index].key
                if let previous = state.index[key] { retire(previous.slot, &state) }
                state.index[key] = Entry(slot: slots[index], sequence: sequences[index], payloadByteCount: blocks[index].payloadByteCount)
                results[index] = .stored
            }
            state.statistics.writes += completed.count
            state.statistics.writeFailures += blocks.count - completed.count
            state.statistics.blocks = state.index.count
            return results.map { $0 ?? .failed(TierKVError(.systemCall, "write was not attempted")) }
        }
    }

    // MARK: Reads

    /// Reads a batch of keys into slot-sized buffers, verifying each.
    public func read(_ requests: [(key: BlockKey, buffer: UnsafeMutableRawPointer)]) -> [ReadResult] {
        state.withLock { state in
            var results = [ReadResult](repeating: .miss, count: requests.count)
            var pending: [(index: Int, slot: Int)] = []
            for (index, request) in requests.enumerated() {
                if let entry = state.index[request.key] { pending.append((index, entry.slot)) }
            }
            let outcomes = runBatch(
                pending.map { (isWrite: false, buffer: requests[$0.index].buffer, slot: $0.slot) }, ios: &state.statistics.ios)
            for (position, item) in pending.enumerated() {
                let key = requests[item.index].key
                if let error = outcomes[position] {
                    results[item.index] = .ioError(reason: "read failed: \(error.message)")
                } else {
                    results[item.index] = verifiedRead(requests[item.index].buffer, key: key, slot: item.slot)
                }
                if case .ioError = results[item.index] { state.statistics.readErrors += 1 }
                if case .corrupt = results[item.index] {
                    state.statistics.corruptions += 1
                    if let entry = state.index.removeValue(forKey: key) { retire(entry.slot, &state) }
                }
            }
            for result in results {
                if case .hit = result { state.statistics.hits += 1 } else { state.statistics.misses += 1 }
            }
            state.statistics.reads += requests.count
            state.statistics.blocks = state.index.count
            return results
        }
    }

    /// Judges a slot just read into `buffer`: a hit only when it verifies and names `key`.
    func verifiedRead(_ buffer: UnsafeRawPointer, key: BlockKey, slot: Int) -> ReadResult {
        switch ColdSlotHeader.verify(buffer, slotByteCount: geometry.slotByteCount) {
        case .valid(let header) where header.key == key: .hit(payloadByteCount: header.payloadByteCount)
        case .valid(let header): .corrupt(reason: "slot \(slot) holds \(header.key), not \(key)")
        case .empty: .corrupt(reason: "slot \(slot) is empty")
        case .corrupt(let reason): .corrupt(reason: "slot \(slot): \(reason)")
        }
    }

    // MARK: I/O

    /// Largest single I/O that adjacent slots are merged into.
    public static let maximumCoalescedByteCount = 1 << 20

    /// Runs whole-slot reads or writes on the ring, at most `entryCount` in flight; returns per
    /// operation nil (done, full length) or the error. Operations on adjacent slots whose buffers
    /// are also adjacent are merged into one I/O of up to `maximumCoalescedByteCount` bytes (a
    /// failed or short merged I/O fails every member). Call with the state lock held.
    private func runBatch(
        _ operations: [(isWrite: Bool, buffer: UnsafeMutableRawPointer, slot: Int)], ios: inout Int
    ) -> [TierKVError?] {
        var outcomes = [TierKVError?](repeating: nil, count: operations.count)
        let slotBytes = geometry.slotByteCount
        // Group by slot order: a run continues while slot, buffer and direction continue.
        var groups: [[Int]] = []
        for index in operations.indices.sorted(by: { operations[$0].slot < operations[$1].slot }) {
            let operation = operations[index]
            if let lastIndex = groups.last?.last, groups[groups.count - 1].count * slotBytes + slotBytes <= Self.maximumCoalescedByteCount {
                let last = operations[lastIndex]
                if last.isWrite == operation.isWrite, last.slot + 1 == operation.slot, last.buffer + slotBytes == operation.buffer {
                    groups[groups.count - 1].append(index)
                    continue
                }
            }
            groups.append([index])
        }
        var next = 0
        var inFlight = 0
        func fail(_ group: [Int], _ error: TierKVError) { for index in group { outcomes[index] = error } }
        while next < groups.count || inFlight > 0 {
            while next < groups.count, inFlight < Int(ring.entryCount) {
                let first = operations[groups[next][0]]
                let byteCount = groups[next].count * slotBytes
                do {
                    if first.isWrite {
                        try ring.queueWrite(descriptor: file.descriptor, from: first.buffer, byteCount: byteCount,
                            fileOffset: file.offset(ofSlot: first.slot), userData: UInt64(next))
                    } else {
                        try ring.queueRead(descriptor: file.descriptor, into: first.buffer, byteCount: byteCount,
                            fileOffset: file.offset(ofSlot: first.slot), userData: UInt64(next))
                    }
                    inFlight += 1
                } catch {
                    fail(groups[next], error)
                }
                next += 1
            }
            do { try ring.submit() } catch {
                // Nothing queued reached the kernel; fail what was queued and stop.
                for index in 0..<operations.count where outcomes[index] == nil { outcomes[index] = error }
                return outcomes
            }
            guard inFlight > 0 else { continue }
            do {
                let completion = try ring.waitCompletion()
                inFlight -= 1
                let group = groups[Int(completion.userData)]
                let first = operations[group[0]]
                ios += 1
                let injected = group.lazy.compactMap { self.faultInjector?.errno(isWrite: first.isWrite, slot: operations[$0].slot) }.first
                let result = injected.map { -$0 } ?? completion.result
                let what = first.isWrite ? "write" : "read"
                let slots = group.count == 1 ? "slot \(first.slot)" : "slots \(first.slot)...\(first.slot + group.count - 1)"
                if result < 0 {
                    let code = -result
                    fail(group, TierKVError(
                        code == ENOSPC ? .capacityExceeded : .systemCall,
                        "cold-tier \(what) of \(slots) failed: \(TierKVError.errnoName(code))",
                        operation: what, path: file.path, errno: code))
                } else if Int(result) != group.count * slotBytes {
                    fail(group, TierKVError(.systemCall, "short cold-tier \(what) of \(slots): \(result) of \(group.count * slotBytes) bytes", path: file.path))
                }
            } catch {
                for index in 0..<operations.count where outcomes[index] == nil { outcomes[index] = error }
                return outcomes
            }
        }
        return outcomes
    }

    /// Rebuilds the index by reading every slot header (4 KiB each); keys with several copies are
    /// resolved by verifying whole slots, newest first.
    private func recover() throws(TierKVError) {
        let slotCount = geometry.slotCount
        let slotBytes = geometry.slotByteCount
        let batch = min(64, Int(ring.entryCount))  // never more than the ring holds
        let headers = try AlignedBuffer(byteCount: batch * 4096)
        var candidates: [BlockKey: [(slot: Int, sequence: UInt64, payload: Int)]] = [:]
        var maximumSequence: UInt64 = 0
        // With a valid checkpoint, its slots are known (they are never reused before the next
        // checkpoint) and only the others can hold newer writes; without one, scan them all.
        var toScan = Array(0..<slotCount)
        let checkpoint = loadCheckpoint()
        if let checkpoint {
            var covered = Set<Int>()
            for entry in checkpoint {
                candidates[entry.key, default: []].append((entry.slot, entry.sequence, entry.payload))
                maximumSequence = max(maximumSequence, entry.sequence)
                covered.insert(entry.slot)
            }
            toScan = toScan.filter { !covered.contains($0) }
        }
        var first = 0
        while first < toScan.count {
            let count = min(batch, toScan.count - first)
            for index in 0..<count {
                try ring.queueRead(descriptor: file.descriptor, into: headers.base + index * 4096, byteCount: 4096,
                    fileOffset: file.offset(ofSlot: toScan[first + index]), userData: UInt64(index))
            }
            try ring.submit()
            for _ in 0..<count {
                let completion = try ring.waitCompletion()
                _ = try completion.checkedByteCount("read of a slot header", path: file.path)
            }
            for index in 0..<count {
                let base = headers.base + index * 4096
                let magic = UInt64(littleEndian: base.load(as: UInt64.self))
                guard magic == ColdSlotHeader.magic else { continue }
                // Parse without the payload checksum (verified on read); plausibility only here.
                let payload = Int(UInt32(littleEndian: base.load(fromByteOffset: 36, as: UInt32.self)))
                guard payload <= slotBytes - ColdSlotHeader.byteCount else { continue }
                let key = BlockKey(
                    prefixHash: PrefixHash(high: UInt64(littleEndian: base.load(fromByteOffset: 16, as: UInt64.self)),
                        low: UInt64(littleEndian: base.load(fromByteOffset: 24, as: UInt64.self))),
                    layer: UInt32(littleEndian: base.load(fromByteOffset: 32, as: UInt32.self)))
                let sequence = UInt64(littleEndian: base.load(fromByteOffset: 40, as: UInt64.self))
                maximumSequence = max(maximumSequence, sequence)
                candidates[key, default: []].append((toScan[first + index], sequence, payload))
            }
            first += count
        }
        let scratch = try AlignedBuffer(byteCount: slotBytes)
        var recovered = 0
        var discarded = 0
        var index: [BlockKey: Entry] = [:]
        for (key, copies) in candidates {
            var chosen: (slot: Int, sequence: UInt64, payload: Int)?
            if copies.count == 1 {
                chosen = copies[0]
            } else {
                for copy in copies.sorted(by: { $0.sequence > $1.sequence }) {
                    let got = pread(file.descriptor, scratch.base, slotBytes, off_t(file.offset(ofSlot: copy.slot)))
                    if got == slotBytes, case .valid(let header) = ColdSlotHeader.verify(scratch.base, slotByteCount: slotBytes), header.key == key {
                        chosen = copy
                        break
                    }
                }
            }
            discarded += copies.count - (chosen == nil ? 0 : 1)
            if let chosen {
                index[key] = Entry(slot: chosen.slot, sequence: chosen.sequence, payloadByteCount: chosen.payload)
                recovered += 1
            }
        }
        // Mark the chosen slots allocated: take every slot, then give back the free ones.
        var taken: [Int] = []
        while let slot = allocator.allocate() { taken.append(slot) }
        let used = Set(index.values.map(\.slot))
        for slot in taken where !used.contains(slot) { try? allocator.free(slot) }
        state.withLock { state in
            state.index = index
            state.nextSequence = maximumSequence + 1
            state.statistics.recoveredBlocks = recovered
            state.statistics.discardedSlots = discarded
            state.statistics.scannedSlots = toScan.count
            state.statistics.openedFromCheckpoint = checkpoint != nil
            state.statistics.blocks = index.count
        }
    }
}

/// Chooses I/O completions that should fail, for fault tests. Thread-safe.
public final class IOFaultInjector: Sendable {
    private let rule: @Sendable (_ isWrite: Bool, _ slot: Int) -> Int32?

    /// - Parameter rule: returns the errno an I/O on `slot` should fail with, or nil to let it be.
    public init(_ rule: @escaping @Sendable (_ isWrite: Bool, _ slot: Int) -> Int32?) { self.rule = rule }

    func errno(isWrite: Bool, slot: Int) -> Int32? { rule(isWrite, slot) }
}
