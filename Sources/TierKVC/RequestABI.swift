import CTierKVABI
import TierKV

// Residency requests and CPU attention over warm blocks.

@c @implementation public func tierkv_make_resident(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tier: Int32, _ priority: Int32,
    _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> tierkv_status {
    abiCall("tierkv_make_resident") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        out.pointee = nil
        let keys = try blockKeys(keys, count: keyCount, "keys")
        let target: Tier
        switch tier {
        case TIERKV_TIER_HOT: target = .hot
        case TIERKV_TIER_WARM: target = .warm
        default: throw .invalid("tier is \(tier); blocks are made resident in TIERKV_TIER_HOT (0) or TIERKV_TIER_WARM (1)")
        }
        let transferPriority: TransferPriority
        switch priority {
        case TIERKV_PRIORITY_DEMAND: transferPriority = .demand
        case TIERKV_PRIORITY_PREFETCH: transferPriority = .prefetch
        default: throw .invalid("priority is \(priority); expected TIERKV_PRIORITY_DEMAND (0) or TIERKV_PRIORITY_PREFETCH (1)")
        }
        out.pointee = register(try owner.hierarchy.makeResident(keys, in: target, priority: transferPriority), owner: owner)
    }
}

/// A handle for `request`, released with the hierarchy if the caller does not.
private func register(_ request: ResidencyRequest, owner: HierarchyHandle) -> OpaquePointer {
    let requestHandle = RequestHandle(request: request, owner: owner)
    let pointer = HandleRegistry.register(requestHandle)
    owner.openRequests.withLock { $0[UInt(bitPattern: pointer)] = requestHandle }
    return pointer
}

@c @implementation public func tierkv_place_after_prefill(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ mass: UnsafePointer<Float>?, _ keyCount: Int,
    _ layerEnds: UnsafePointer<Int>?, _ layerCount: Int, _ coverage: Double, _ blockLimit: Int,
    _ requestOut: UnsafeMutablePointer<OpaquePointer?>?, _ movedKeysOut: UnsafeMutablePointer<tierkv_block_key>?,
    _ chosenOut: UnsafeMutablePointer<Int>?, _ movedOut: UnsafeMutablePointer<Int>?, _ fromColdOut: UnsafeMutablePointer<Int>?
) -> tierkv_status {
    abiCall("tierkv_place_after_prefill") { () throws(TierKVError) in
        requestOut?.pointee = nil
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let keys = try blockKeys(keys, count: keyCount, "keys")
        let masses = try buffer(mass, count: keyCount, "mass")
        let ends = try buffer(layerEnds, count: layerCount, "layer_ends")
        guard !coverage.isNaN else { throw .invalid("coverage is NaN; expected a share of each layer's mass in (0, 1]") }
        guard blockLimit >= 0 else { throw .invalid("block_limit \(UInt(bitPattern: blockLimit)) is too large") }
        guard ends.last ?? 0 == keyCount else {
            throw .invalid("layer_ends[\(max(0, layerCount - 1))] is \(ends.last.map(String.init) ?? "missing (layer_count 0)"); the last layer ends at key_count \(keyCount)")
        }
        var layers: [(keys: [BlockKey], mass: [Float])] = []
        var start = 0
        for (layer, end) in ends.enumerated() {
            guard end >= start, end <= keyCount else {
                throw .invalid("layer_ends[\(layer)] is \(UInt(bitPattern: end)); expected \(start)...\(keyCount) (non-decreasing, within key_count)")
            }
            layers.append((Array(keys[start..<end]), Array(masses[start..<end])))
            start = end
        }
        let placement = try owner.hierarchy.placeAfterPrefill(layers, coverage: coverage, blockLimit: blockLimit)
        let moved = placement.request?.keys ?? []
        if let movedKeysOut { for (index, key) in moved.enumerated() { movedKeysOut[index] = key.cKey } }
        chosenOut?.pointee = placement.chosen
        movedOut?.pointee = moved.count
        fromColdOut?.pointee = placement.fromCold
        if let request = placement.request {
            if let requestOut { requestOut.pointee = register(request, owner: owner) } else { owner.hierarchy.release(request) }
        }
    }
}

@c @implementation public func tierkv_request_wait(_ handle: OpaquePointer?, _ timeoutSeconds: Double) -> tierkv_status {
    abiCall("tierkv_request_wait") { () throws(TierKVError) in
        let request = try HandleRegistry.lookup(handle, as: RequestHandle.self, "request").request
        guard !timeoutSeconds.isNaN else { throw .invalid("timeout_seconds is NaN") }
        if timeoutSeconds < 0 || timeoutSeconds.isInfinite {
            request.wait()
        } else if !request.wait(seconds: min(timeoutSeconds, 1e9)) {
            throw TierKVError(.timeout, "the request was not ready within \(timeoutSeconds) s")
        }
    }
}

@c @implementation public func tierkv_request_poll(_ handle: OpaquePointer?, _ readyOut: UnsafeMutablePointer<Int32>?) -> tierkv_status {
    abiCall("tierkv_request_poll") { () throws(TierKVError) in
        let request = try HandleRegistry.lookup(handle, as: RequestHandle.self, "request").request
        try required(readyOut, "ready_out").pointee = request.isReady ? 1 : 0
    }
}

@c @implementation public func tierkv_request_block(
    _ handle: OpaquePointer?, _ index: Int, _ out: UnsafeMutablePointer<tierkv_block_location>?
) -> tierkv_status {
    abiCall("tierkv_request_block") { () throws(TierKVError) in
        let requestHandle = try HandleRegistry.lookup(handle, as: RequestHandle.self, "request")
        let out = try required(out, "out")
        let count = requestHandle.request.keys.count
        guard index >= 0, index < count else {
            throw .invalid("index \(UInt(bitPattern: index)) is out of range; the request has \(count) blocks")
        }
        writeLocations(requestHandle, first: index, count: 1, into: out)
    }
}

@c @implementation public func tierkv_request_blocks(
    _ handle: OpaquePointer?, _ first: Int, _ count: Int, _ out: UnsafeMutablePointer<tierkv_block_location>?
) -> tierkv_status {
    abiCall("tierkv_request_blocks") { () throws(TierKVError) in
        let requestHandle = try HandleRegistry.lookup(handle, as: RequestHandle.self, "request")
        let blocks = requestHandle.request.keys.count
        let first = UInt(bitPattern: first), count = UInt(bitPattern: count)
        guard first <= UInt(blocks), count <= UInt(blocks) - first else {
            throw .invalid("blocks \(first) ..< \(first) + \(count) leave the request, which has \(blocks) blocks")
        }
        guard count > 0 else { return }
        writeLocations(requestHandle, first: Int(first), count: Int(count), into: try required(out, "out"))
    }
}

/// Fills `out[0 ..< count]` with the locations of blocks `first ..< first + count` (a range the
/// caller checked), read under the request's lock once.
private func writeLocations(
    _ requestHandle: RequestHandle, first: Int, count: Int, into out: UnsafeMutablePointer<tierkv_block_location>
) {
    let request = requestHandle.request
    let tier = cTier(request.tier)
    let byteCount = UInt64(requestHandle.owner.hierarchy.configuration.layout.blockByteCount)
    request.forEachLocation(in: first..<(first + count)) { index, block in
        var location = tierkv_block_location()
        location.tier = tier
        location.byte_count = byteCount
        switch block.state {
        case .pending: location.state = TIERKV_BLOCK_PENDING
        case .missing: location.state = TIERKV_BLOCK_MISSING
        case .failed: location.state = TIERKV_BLOCK_FAILED
        case .ready:
            location.state = TIERKV_BLOCK_READY
            location.device_address = block.deviceAddress?.rawValue ?? 0
            location.host_pointer = block.hostBytes?.baseAddress
        }
        out[index - first] = location
    }
}

/// Removes a request handle from the registry and its owner.
func takeRequest(_ handle: OpaquePointer?) throws(TierKVError) -> RequestHandle {
    let requestHandle = try HandleRegistry.remove(handle, as: RequestHandle.self, "request")
    if let handle { _ = requestHandle.owner.openRequests.withLock { $0.removeValue(forKey: UInt(bitPattern: handle)) } }
    return requestHandle
}

@c @implementation public func tierkv_request_release(_ handle: OpaquePointer?) -> tierkv_status {
    abiCall("tierkv_request_release") { () throws(TierKVError) in
        let requestHandle = try takeRequest(handle)
        requestHandle.owner.hierarchy.release(requestHandle.request)
    }
}

@c @implementation public func tierkv_request_cancel(_ handle: OpaquePointer?, _ withdrawnOut: UnsafeMutablePointer<Int>?) -> tierkv_status {
    abiCall("tierkv_request_cancel") { () throws(TierKVError) in
        let requestHandle = try takeRequest(handle)
        let withdrawn = requestHandle.owner.hierarchy.cancel(requestHandle.request)
        withdrawnOut?.pointee = withdrawn
    }
}

// MARK: CPU attention

@c @implementation public func tierkv_attend_warm(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tokenCounts: UnsafePointer<Int32>?,
    _ query: UnsafePointer<Float>?, _ queryCount: Int, _ scale: Float, _ output: UnsafeMutablePointer<Float>?,
    _ maxOut: UnsafeMutablePointer<Float>?, _ sumOut: UnsafeMutablePointer<Float>?
) -> tierkv_status {
    abiCall("tierkv_attend_warm") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let layout = owner.hierarchy.configuration.layout
        guard !scale.isNaN, scale.isFinite else { throw .invalid("scale is \(scale); pass a positive scale or 0 for 1/sqrt(head_dim)") }
        let shape = try AttentionShape(layout: layout, scale: scale > 0 ? scale : nil)
        let keys = try blockKeys(keys, count: keyCount, "keys")
        let counts = tokenCounts == nil ? nil : try buffer(tokenCounts, count: keyCount, "token_counts")
        if let counts, let bad = counts.firstIndex(where: { $0 < 0 || Int($0) > layout.tokensPerBlock }) {
            throw .invalid("token_counts[\(bad)] is \(counts[bad]); a block holds 0…\(layout.tokensPerBlock) tokens")
        }
        let queryElements = shape.queryHeads * shape.headDim
        guard queryCount == queryElements else {
            throw .invalid("query_count is \(queryCount); query_heads × head_dim = \(shape.queryHeads) × \(shape.headDim) = \(queryElements)")
        }
        let query = try buffer(query, count: queryCount, "query")
        if let bad = query.firstIndex(where: { !$0.isFinite }) { throw .invalid("query[\(bad)] is \(query[bad]); queries must be finite") }
        let output = try mutableBuffer(output, count: queryElements, "output")
        let maxima = try mutableBuffer(maxOut, count: shape.queryHeads, "max_out")
        let sums = try mutableBuffer(sumOut, count: shape.queryHeads, "sum_out")
        let attention = try owner.cpuAttention()
        guard !keys.isEmpty else {
            output.update(repeating: 0)
            maxima.update(repeating: -.infinity)
            sums.update(repeating: 0)
            return
        }
        let request = try owner.hierarchy.makeResident(keys, in: .warm)
        defer { owner.hierarchy.release(request) }
        request.wait()
        let half = layout.blockByteCount / 2
        var views: [KVBlockView] = []
        views.reserveCapacity(keys.count)
        for index in keys.indices {
            switch request.state(at: index) {
            case .ready?:
                guard let bytes = request.hostBytes(at: index)?.baseAddress else {
                    throw TierKVError(.internalError, "block \(keys[index]) is ready but has no host bytes")
                }
                views.append(KVBlockView(keys: bytes, values: bytes + half, tokenCount: counts.map { Int($0[index]) } ?? layout.tokensPerBlock))
            case .missing?: throw TierKVError(.notFound, "block \(keys[index]) (keys[\(index)]) is not cached")
            case .failed(let reason)?: throw TierKVError(.corruption, "block \(keys[index]) (keys[\(index)]) could not be read back: \(reason)")
            case .pending?, nil: throw TierKVError(.internalError, "block \(keys[index]) is not ready after wait")
            }
        }
        try views.withUnsafeBufferPointer { (blocks) throws(TierKVError) in
            try attention.attend(
                shape, query: query.baseAddress!, blocks: blocks, output: output.baseAddress!, maxima: maxima.baseAddress!,
                sums: sums.baseAddress!)
        }
    }
}

@c @implementation public func tierkv_merge_partials(
    _ parts: Int, _ heads: Int, _ headDim: Int, _ outputs: UnsafePointer<Float>?, _ maxima: UnsafePointer<Float>?,
    _ sums: UnsafePointer<Float>?, _ output: UnsafeMutablePointer<Float>?, _ maxOut: UnsafeMutablePointer<Float>?,
    _ sumOut: UnsafeMutablePointer<Float>?
) -> tierkv_status {
    abiCall("tierkv_merge_partials") { () throws(TierKVError) in
        guard parts >= 0, heads > 0, headDim > 0, heads <= 1 << 20, headDim <= 1 << 20, parts <= 1 << 24 else {
            throw .invalid("parts \(parts), heads \(heads), head_dim \(headDim): heads and head_dim must be positive, all within limits")
        }
        let (perPart, overflowA) = heads.multipliedReportingOverflow(by: headDim)
        let (total, overflowB) = perPart.multipliedReportingOverflow(by: parts)
        guard !overflowA, !overflowB else { throw .invalid("parts × heads × head_dim overflows") }
        let outputs = try buffer(outputs, count: total, "outputs")
        let maxima = try buffer(maxima, count: parts * heads, "maxima")
        let sums = try buffer(sums, count: parts * heads, "sums")
        let output = try mutableBuffer(output, count: perPart, "output")
        let maxOut = try mutableBuffer(maxOut, count: heads, "max_out")
        let sumOut = try mutableBuffer(sumOut, count: heads, "sum_out")
        var partials: [AttentionPartial] = []
        partials.reserveCapacity(parts)
        for part in 0..<parts {
            for head in 0..<heads {
                let m = maxima[part * heads + head], l = sums[part * heads + head]
                guard !m.isNaN, l >= 0, l.isFinite, m != .infinity else {
                    throw .invalid("part \(part) head \(head) has m = \(m), l = \(l); m must be finite or -inf and l finite and ≥ 0")
                }
            }
            partials.append(AttentionPartial(
                heads: heads, headDim: headDim, output: Array(outputs[(part * perPart)..<((part + 1) * perPart)]),
                maxima: Array(maxima[(part * heads)..<((part + 1) * heads)]), sums: Array(sums[(part * heads)..<((part + 1) * heads)])))
        }
        let merged = parts == 0 ? AttentionPartial.empty(heads: heads, headDim: headDim) : AttentionPartial.merge(partials)
        _ = output.update(fromContentsOf: merged.output)
        _ = maxOut.update(fromContentsOf: merged.maxima)
        _ = sumOut.update(fromContentsOf: merged.sums)
    }
}
