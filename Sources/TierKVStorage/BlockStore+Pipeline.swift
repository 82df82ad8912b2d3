import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

extension BlockStore {
    /// Registers host memory (a warm arena's `ioRingBufferRegions`) with the store's ring, so
    /// pipelined I/O can name buffers by index: the kernel maps them once, not per I/O, and NVMe
    /// data lands directly in warm slots.
    public func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) throws(TierKVError) {
        try state.withLock { (_) throws(TierKVError) in try ring.registerBuffers(regions) }
    }

    /// How a pipelined run ended.
    public struct PipelineSummary: Sendable, Equatable {
        public var completed = 0
        public var failed = 0
        public var corrupt = 0
        public var misses = 0
    }

    /// Writes `count` blocks keeping `queueDepth` I/Os in flight: as each completes, the next is
    /// submitted into the freed queue position. When the tier is full (no free slot even after
    /// flushing and with nothing in flight) the remaining blocks fail. Every `flushEvery`
    /// completions (and at the end) the
    /// file is flushed and the completed blocks are indexed and acknowledged together
    /// (`acknowledged(indices)`): durability is per flush group, as with any write-back device.
    /// - Parameters:
    ///   - buffers: one slot-sized, 4 KiB-aligned buffer per queue position.
    ///   - prepare: fills `buffers[position]` with block `index`'s payload (at
    ///     `ColdSlotHeader.byteCount`) and returns its key and payload length.
    ///   - shouldContinue: asked before each new submission (a time limit, say).
    ///   - bufferIndices: for each position, the registered buffer (see `registerBuffers`) that
    ///     holds it, to use fixed-buffer I/O; nil for plain I/O.
    public func writePipelined(
        count: Int, buffers: [UnsafeMutableRawPointer], bufferIndices: [Int]? = nil, flushEvery: Int = 64,
        prepare: (_ index: Int, _ position: Int) -> (key: BlockKey, payloadByteCount: Int),
        shouldContinue: () -> Bool = { true }, acknowledged: ([Int]) -> Void = { _ in }
    ) -> PipelineSummary {
        state.withLock { state in
            var summary = PipelineSummary()
            var positions: [Int: (index: Int, key: BlockKey, slot: Int, sequence: UInt64, payload: Int)] = [:]
            var free = Array((0..<min(buffers.count, Int(ring.entryCount))).reversed())
            var done: [(index: Int, key: BlockKey, slot: Int, sequence: UInt64, payload: Int)] = []
            var next = 0
            func flushAndAcknowledge() {
                guard !done.isEmpty else { return }
                if syncsWrites, fdatasync(file.descriptor) != 0 {
                    for item in done { try? allocator.free(item.slot) }
                    summary.failed += done.count
                    summary.completed -= done.count
                } else {
                    for item in done {
                        // Completion order is not submission order: the newest sequence wins.
                        if let previous = state.index[item.key] {
                            if previous.sequence > item.sequence {
                                try? allocator.free(item.slot)
                                continue
                            }
                            retire(previous.slot, &state)
                        }
                        state.index[item.key] = Entry(slot: item.slot, sequence: item.sequence, payloadByteCount: item.payload)
                    }
                    acknowledged(done.map(\.index))
                }
                done.removeAll(keepingCapacity: true)
            }
            while true {
                var queuedNow: [Int] = []
                while next < count, let position = free.last, shouldContinue() {
                    // Copy-on-write needs a free slot; old copies are freed at the flush, so a
                    // transient shortage is resolved by flushing or by waiting, not by failing.
                    var slot = allocateSlot(&state)
                    if slot == nil, !done.isEmpty {
                        flushAndAcknowledge()
                        slot = allocateSlot(&state)
                    }
                    guard let slot else {
                        if !positions.isEmpty { break }  // wait for in-flight writes, then retry
                        summary.failed += count == Int.max ? 1 : count - next
                        next = count
                        break
                    }
                    let (key, payload) = prepare(next, position)
                    guard payload <= payloadCapacity else {
                        try? allocator.free(slot)
                        summary.failed += 1
                        next += 1
                        continue
                    }
                    let sequence = state.nextSequence
                    state.nextSequence += 1
                    ColdSlotHeader(key: key, payloadByteCount: payload, sequence: sequence).seal(into: buffers[position])
                    do {
                        if let bufferIndices {
                            try ring.queueWriteFixed(descriptor: file.descriptor, from: buffers[position], byteCount: geometry.slotByteCount,
                                fileOffset: file.offset(ofSlot: slot), bufferIndex: bufferIndices[position], userData: UInt64(position))
                        } else {
                            try ring.queueWrite(descriptor: file.descriptor, from: buffers[position], byteCount: geometry.slotByteCount,
                                fileOffset: file.offset(ofSlot: slot), userData: UInt64(position))
                        }
                    } catch {
                        try? allocator.free(slot)
                        summary.failed += 1
                        next += 1
                        continue
                    }
                    free.removeLast()
                    positions[position] = (next, key, slot, sequence, payload)
                    queuedNow.append(position)
                    next += 1
                }
                if !queuedNow.isEmpty, (try? ring.submit()) == nil {
                    // Nothing queued in this round reached the kernel: fail it rather than wait forever.
                    for position in queuedNow {
                        if let item = positions.removeValue(forKey: position) { try? allocator.free(item.slot) }
                        free.append(position)
                        summary.failed += 1
                    }
                }
                if positions.isEmpty { break }
                guard let completion = try? ring.waitCompletion() else { break }
                let position = Int(completion.userData)
                guard let item = positions.removeValue(forKey: position) else { continue }
                free.append(position)
                let injected = faultInjector?.errno(isWrite: true, slot: item.slot)
                let result = injected.map { -$0 } ?? completion.result
                if Int(result) == geometry.slotByteCount {
                    done.append(item)
                    summary.completed += 1
                    if done.count >= flushEvery { flushAndAcknowledge() }
                } else {
                    try? allocator.free(item.slot)
                    summary.failed += 1
                }
            }
            flushAndAcknowledge()
            state.statistics.writes += summary.completed
            state.statistics.writeFailures += summary.failed
            state.statistics.blocks = state.index.count
            return summary
        }
    }

    /// Reads `count` blocks keeping `queueDepth` reads in flight, verifying each; `completed` is
    /// called per block (in completion order) with its queue position, whose buffer holds the
    /// block until the call returns. `bufferIndices` as for `writePipelined`.
    public func readPipelined(
        count: Int, buffers: [UnsafeMutableRawPointer], bufferIndices: [Int]? = nil, key: (_ index: Int) -> BlockKey,
        shouldContinue: () -> Bool = { true },
        completed: (_ index: Int, _ position: Int, _ result: ReadResult) -> Void
    ) -> PipelineSummary {
        state.withLock { state in
            var summary = PipelineSummary()
            var positions: [Int: (index: Int, key: BlockKey, slot: Int)] = [:]
            var free = Array((0..<min(buffers.count, Int(ring.entryCount))).reversed())
            var next = 0
            while true {
                var queuedNow: [Int] = []
                while next < count, let position = free.last, shouldContinue() {
                    let wanted = key(next)
                    guard let entry = state.index[wanted] else {
                        summary.misses += 1
                        completed(next, position, .miss)
                        next += 1
                        continue
                    }
                    do {
                        if let bufferIndices {
                            try ring.queueReadFixed(descriptor: file.descriptor, into: buffers[position], byteCount: geometry.slotByteCount,
                                fileOffset: file.offset(ofSlot: entry.slot), bufferIndex: bufferIndices[position], userData: UInt64(position))
                        } else {
                            try ring.queueRead(descriptor: file.descriptor, into: buffers[position], byteCount: geometry.slotByteCount,
                                fileOffset: file.offset(ofSlot: entry.slot), userData: UInt64(position))
                        }
                    } catch {
                        break
                    }
                    free.removeLast()
                    positions[position] = (next, wanted, entry.slot)
                    queuedNow.append(position)
                    next += 1
                }
                if !queuedNow.isEmpty, (try? ring.submit()) == nil {
                    for position in queuedNow {
                        if let item = positions.removeValue(forKey: position) {
                            summary.failed += 1
                            completed(item.index, position, .ioError(reason: "io_uring submission failed"))
                        }
                        free.append(position)
                    }
                }
                if positions.isEmpty { break }
                guard let completion = try? ring.waitCompletion() else { break }
                let position = Int(completion.userData)
                guard let item = positions.removeValue(forKey: position) else { continue }
                let injected = faultInjector?.errno(isWrite: false, slot: item.slot)
                let result = injected.map { -$0 } ?? completion.result
                let outcome: ReadResult
                if Int(result) != geometry.slotByteCount {
                    outcome = .ioError(reason: result < 0 ? "read failed: \(TierKVError.errnoName(-result))" : "short read of \(result) bytes")
                } else {
                    outcome = verifiedRead(buffers[position], key: item.key, slot: item.slot)
                }
                if case .ioError = outcome {
                    summary.failed += 1
                    state.statistics.readErrors += 1
                } else if case .corrupt = outcome {
                    summary.corrupt += 1
                    state.statistics.corruptions += 1
                    if let entry = state.index.removeValue(forKey: item.key) { retire(entry.slot, &state) }
                } else {
                    summary.completed += 1
                }
                completed(item.index, position, outcome)
                free.append(position)
            }
            state.statistics.reads += summary.completed + summary.corrupt + summary.misses + summary.failed
            state.statistics.hits += summary.completed
            state.statistics.misses += summary.corrupt + summary.misses + summary.failed
            state.statistics.blocks = state.index.count
            return summary
        }
    }
}
