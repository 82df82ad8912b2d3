#if canImport(Glibc)
import Glibc
#endif
import CTierKVABI
import TierKV

// The hierarchy half of tierkv.h. Each function checks its arguments and handle, then calls the
// Swift API; the header documents ownership and threading.

@c @implementation public func tierkv_version() -> UnsafePointer<CChar>? { UnsafePointer(versionCString) }

@c @implementation public func tierkv_abi_version() -> Int32 { TIERKV_ABI_VERSION }

@c @implementation public func tierkv_last_error() -> UnsafePointer<CChar>? { LastError.current }

@c @implementation public func tierkv_last_error_copy(_ buffer: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int {
    let message = LastError.current
    let length = strlen(message)
    guard let buffer, capacity > 0 else { return length }
    let copied = min(length, capacity - 1)
    memcpy(buffer, message, copied)
    buffer[copied] = 0
    return length
}

@c @implementation public func tierkv_status_name(_ status: tierkv_status) -> UnsafePointer<CChar>? {
    guard status >= 0, Int(status) < statusNames.count else { return UnsafePointer(unknownStatusName) }
    return UnsafePointer(statusNames[Int(status)])
}

@c @implementation public func tierkv_open(_ configJSON: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> tierkv_status {
    abiCall("tierkv_open") { () throws(TierKVError) in
        let out = try required(out, "out")
        out.pointee = nil
        let text = String(cString: try required(configJSON, "config_json"))
        let configuration = try OpenConfiguration(json: text)
        let hierarchy = try Hierarchy(configuration.hierarchy)
        out.pointee = HandleRegistry.register(HierarchyHandle(
            hierarchy: hierarchy, cpuThreads: configuration.cpuThreads, cpuSpinMicroseconds: configuration.cpuSpinMicroseconds))
    }
}

@c @implementation public func tierkv_close(_ handle: OpaquePointer?, _ flush: Int32) -> tierkv_status {
    abiCall("tierkv_close") { () throws(TierKVError) in
        let owner = try HandleRegistry.remove(handle, as: HierarchyHandle.self, "hierarchy")
        let requests = owner.openRequests.withLock { requests in
            defer { requests.removeAll() }
            return Array(requests)
        }
        for (address, request) in requests {
            guard let pointer = OpaquePointer(bitPattern: address),
                (try? HandleRegistry.remove(pointer, as: RequestHandle.self, "request")) != nil
            else { continue }
            owner.hierarchy.release(request.request)
        }
        let tickets = owner.openTickets.withLock { tickets in
            defer { tickets.removeAll() }
            return Array(tickets)
        }
        for (address, ticket) in tickets {
            guard let pointer = OpaquePointer(bitPattern: address),
                (try? HandleRegistry.remove(pointer, as: PrefetchTicketHandle.self, "prefetch ticket")) != nil
            else { continue }
            try? owner.prefetcher(nil).abandon(ticket.ticket)
        }
        let predictors = owner.openPredictors.withLock { predictors in
            defer { predictors.removeAll() }
            return Array(predictors.keys)
        }
        for address in predictors {
            guard let pointer = OpaquePointer(bitPattern: address) else { continue }
            _ = try? HandleRegistry.remove(pointer, as: PredictorHandle.self, "predictor")
        }
        try owner.hierarchy.close(flushing: flush != 0)
    }
}

@c @implementation public func tierkv_get_layout(_ handle: OpaquePointer?, _ out: UnsafeMutablePointer<tierkv_layout>?) -> tierkv_status {
    abiCall("tierkv_get_layout") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        let layout = owner.hierarchy.configuration.layout
        var result = tierkv_layout()
        result.layers = Int32(layout.layers)
        result.kv_heads = Int32(layout.kvHeads)
        result.query_heads = Int32(layout.queryHeads)
        result.head_dim = Int32(layout.headDim)
        result.tokens_per_block = Int32(layout.tokensPerBlock)
        result.dtype_size = Int32(layout.dtype.byteSize)
        withUnsafeMutableBytes(of: &result.dtype) { bytes in
            let name = Array(layout.dtype.rawValue.utf8.prefix(bytes.count - 1))
            bytes.copyBytes(from: name)
            bytes[name.count] = 0
        }
        result.block_bytes = UInt64(layout.blockByteCount)
        out.pointee = result
    }
}

@c @implementation public func tierkv_get_stats(_ handle: OpaquePointer?, _ out: UnsafeMutablePointer<tierkv_stats>?) -> tierkv_status {
    abiCall("tierkv_get_stats") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        // Callers built against an older header pass a smaller struct: fill the part they know.
        let current = MemoryLayout<tierkv_stats>.size
        let firstVersion = MemoryLayout<tierkv_stats>.offset(of: \tierkv_stats.summarized_blocks)!
        let callerSize = out.pointee.struct_size
        guard callerSize >= UInt64(firstVersion) else {
            throw .invalid("out->struct_size is \(callerSize); set it to sizeof(tierkv_stats) (\(current) with this library's header; at least \(firstVersion))")
        }
        let filled = min(Int(clamping: callerSize), current)
        let statistics = owner.hierarchy.statistics
        func tier(_ tier: TierStatistics) -> tierkv_tier_stats {
            tierkv_tier_stats(
                capacity_blocks: UInt64(tier.capacityBlocks), resident_blocks: UInt64(tier.residentBlocks),
                pinned_blocks: UInt64(tier.pinnedBlocks), hits: UInt64(tier.hits), misses: UInt64(tier.misses))
        }
        var result = tierkv_stats()
        result.struct_size = UInt64(filled)
        result.hot = tier(statistics.hot)
        result.warm = tier(statistics.warm)
        result.cold = tier(statistics.cold)
        result.stored_blocks = UInt64(statistics.storedBlocks)
        result.shared_stores = UInt64(statistics.sharedStores)
        result.bytes_host_to_device = UInt64(statistics.hostToDeviceBytes)
        result.bytes_device_to_host = UInt64(statistics.deviceToHostBytes)
        result.bytes_nvme_read = UInt64(statistics.nvmeReadBytes)
        result.bytes_nvme_written = UInt64(statistics.nvmeWriteBytes)
        result.corrupt_blocks = UInt64(statistics.corruptions)
        result.dropped_blocks = UInt64(statistics.droppedBlocks)
        result.live_sequences = UInt64(statistics.liveSequences)
        result.cold_is_buffered = statistics.coldIsBuffered ? 1 : 0
        result.accelerator_is_emulated = owner.hierarchy.accelerator.deviceDescription.isEmulated ? 1 : 0
        result.summarized_blocks = UInt64(statistics.summarizedBlocks)
        result.summaries_restored = UInt64(statistics.keySummariesRestored)
        withUnsafeBytes(of: &result) { UnsafeMutableRawPointer(out).copyMemory(from: $0.baseAddress!, byteCount: filled) }
    }
}

@c @implementation public func tierkv_block_keys(
    _ handle: OpaquePointer?, _ tokens: UnsafePointer<UInt32>?, _ tokenCount: Int, _ layer: UInt32,
    _ keysOut: UnsafeMutablePointer<tierkv_block_key>?, _ capacity: Int, _ countOut: UnsafeMutablePointer<Int>?
) -> tierkv_status {
    abiCall("tierkv_block_keys") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let tokens = try buffer(tokens, count: tokenCount, "tokens")
        let countOut = try required(countOut, "count_out")
        let layers = owner.hierarchy.configuration.layout.layers
        guard Int(layer) < layers else { throw .invalid("layer \(layer) is out of range; the layout has \(layers) layers") }
        let keys = owner.hierarchy.blockKeys(tokens: Array(tokens), layer: Int(layer))
        countOut.pointee = keys.count
        guard keys.count <= capacity else {
            throw TierKVError(.bufferTooSmall, "keys_out holds \(capacity) keys; \(keys.count) are needed")
        }
        let output = try mutableBuffer(keysOut, count: keys.count, "keys_out")
        for (index, key) in keys.enumerated() { output[index] = key.cKey }
    }
}

@c @implementation public func tierkv_lookup_prefix(
    _ handle: OpaquePointer?, _ tokens: UnsafePointer<UInt32>?, _ tokenCount: Int, _ out: UnsafeMutablePointer<tierkv_prefix>?
) -> tierkv_status {
    abiCall("tierkv_lookup_prefix") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let tokens = try buffer(tokens, count: tokenCount, "tokens")
        let out = try required(out, "out")
        let lookup = owner.hierarchy.lookupPrefix(tokens: Array(tokens))
        out.pointee = tierkv_prefix(
            in_hot: UInt64(lookup.inHot), in_hot_or_warm: UInt64(lookup.inHotOrWarm), cached: UInt64(lookup.cached),
            requested: UInt64(lookup.requested))
    }
}

@c @implementation public func tierkv_store(
    _ handle: OpaquePointer?, _ key: UnsafePointer<tierkv_block_key>?, _ position: Int64, _ bytes: UnsafeRawPointer?,
    _ byteCount: Int, _ sequence: UInt64, _ storedOut: UnsafeMutablePointer<Int32>?
) -> tierkv_status {
    abiCall("tierkv_store") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let key = try BlockKey(try required(key, "key").pointee, "key")
        let position = try checkedPosition(position)
        guard let bytes else { throw .invalid("bytes is NULL") }
        guard byteCount >= 0 else { throw .invalid("byte_count \(UInt(bitPattern: byteCount)) is too large") }
        let outcome = try owner.hierarchy.store(
            key, position: position, bytes: UnsafeRawBufferPointer(start: bytes, count: byteCount), sequence: sequenceID(sequence))
        storedOut?.pointee = outcome == .stored ? 1 : 0
    }
}

@c @implementation public func tierkv_store_from_device(
    _ handle: OpaquePointer?, _ key: UnsafePointer<tierkv_block_key>?, _ position: Int64, _ deviceAddress: UInt64,
    _ byteCount: Int, _ sequence: UInt64, _ storedOut: UnsafeMutablePointer<Int32>?
) -> tierkv_status {
    abiCall("tierkv_store_from_device") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let key = try BlockKey(try required(key, "key").pointee, "key")
        let position = try checkedPosition(position)
        let blockBytes = owner.hierarchy.configuration.layout.blockByteCount
        guard byteCount == blockBytes else { throw .invalid("byte_count is \(byteCount); a block has \(blockBytes) bytes") }
        guard deviceAddress != 0 else { throw .invalid("device_address is 0") }
        let outcome = try owner.hierarchy.store(
            key, position: position, deviceAddress: DeviceAddress(deviceAddress), sequence: sequenceID(sequence))
        storedOut?.pointee = outcome == .stored ? 1 : 0
    }
}

@c @implementation public func tierkv_store_many_from_device(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ positions: UnsafePointer<Int64>?,
    _ deviceAddresses: UnsafePointer<UInt64>?, _ count: Int, _ sequence: UInt64, _ storedOut: UnsafeMutablePointer<Int32>?,
    _ doneOut: UnsafeMutablePointer<Int>?
) -> tierkv_status {
    doneOut?.pointee = 0
    return abiCall("tierkv_store_many_from_device") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        guard count > 0 else { return }
        let keys = try required(keys, "keys"), positions = try required(positions, "positions")
        let addresses = try required(deviceAddresses, "device_addresses")
        var blocks: [Hierarchy.DeviceBlock] = []
        blocks.reserveCapacity(count)
        for index in 0..<count {
            let key = try BlockKey(keys[index], "keys[\(index)]")
            let position: Int
            do throws(TierKVError) { position = try checkedPosition(positions[index]) } catch {
                throw .invalid("positions[\(index)]: \(error.message)")
            }
            guard addresses[index] != 0 else { throw .invalid("device_addresses[\(index)] is 0") }
            blocks.append(Hierarchy.DeviceBlock(key: key, position: position, deviceAddress: DeviceAddress(addresses[index])))
        }
        var outcomes: [StoreOutcome] = []
        defer {
            doneOut?.pointee = outcomes.count
            if let storedOut { for (index, outcome) in outcomes.enumerated() { storedOut[index] = outcome == .stored ? 1 : 0 } }
        }
        try owner.hierarchy.store(deviceBlocks: blocks, sequence: sequenceID(sequence), outcomes: &outcomes)
    }
}

func checkedPosition(_ position: Int64) throws(TierKVError) -> Int {
    guard position >= 0, position <= Int64(Int32.max) else { throw .invalid("position \(position) must be in 0…\(Int32.max)") }
    return Int(position)
}

@c @implementation public func tierkv_read(
    _ handle: OpaquePointer?, _ key: UnsafePointer<tierkv_block_key>?, _ destination: UnsafeMutableRawPointer?, _ capacity: Int
) -> tierkv_status {
    abiCall("tierkv_read") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let key = try BlockKey(try required(key, "key").pointee, "key")
        guard let destination else { throw .invalid("destination is NULL") }
        let blockBytes = owner.hierarchy.configuration.layout.blockByteCount
        guard capacity >= blockBytes else {
            throw TierKVError(.bufferTooSmall, "destination holds \(capacity) bytes; a block has \(blockBytes)")
        }
        try owner.hierarchy.read(key, into: UnsafeMutableRawBufferPointer(start: destination, count: blockBytes))
    }
}

@c @implementation public func tierkv_fastest_tier(
    _ handle: OpaquePointer?, _ key: UnsafePointer<tierkv_block_key>?, _ tierOut: UnsafeMutablePointer<Int32>?
) -> tierkv_status {
    abiCall("tierkv_fastest_tier") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let key = try BlockKey(try required(key, "key").pointee, "key")
        let tierOut = try required(tierOut, "tier_out")
        guard let tier = owner.hierarchy.fastestTier(of: key) else { throw TierKVError(.notFound, "block \(key) is not cached") }
        tierOut.pointee = cTier(tier)
    }
}

func cTier(_ tier: Tier) -> Int32 {
    switch tier {
    case .hot: TIERKV_TIER_HOT
    case .warm: TIERKV_TIER_WARM
    case .cold: TIERKV_TIER_COLD
    }
}

@c @implementation public func tierkv_report_attention(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ mass: UnsafePointer<Float>?, _ count: Int
) -> tierkv_status {
    abiCall("tierkv_report_attention") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let keys = try blockKeys(keys, count: count, "keys")
        let mass = try buffer(mass, count: count, "mass")
        if let bad = mass.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw .invalid("mass[\(bad)] is \(mass[bad]); attention mass must be finite and ≥ 0")
        }
        try owner.hierarchy.reportAttention(keys, mass: Array(mass))
    }
}

@c @implementation public func tierkv_drop_sequence(_ handle: OpaquePointer?, _ sequence: UInt64) -> tierkv_status {
    abiCall("tierkv_drop_sequence") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        guard let id = sequenceID(sequence) else { throw .invalid("TIERKV_NO_SEQUENCE names no sequence to drop") }
        owner.hierarchy.drop(sequence: id)
    }
}

@c @implementation public func tierkv_flush(
    _ handle: OpaquePointer?, _ writtenOut: UnsafeMutablePointer<UInt64>?, _ failedOut: UnsafeMutablePointer<UInt64>?
) -> tierkv_status {
    abiCall("tierkv_flush") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let summary = try owner.hierarchy.flush()
        writtenOut?.pointee = UInt64(summary.written)
        failedOut?.pointee = UInt64(summary.failed)
    }
}
