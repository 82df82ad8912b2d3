@_exported import TierKVAccelerator
@_exported import TierKVAttention
@_exported import TierKVCore
@_exported import TierKVHostArena
@_exported import TierKVStorage
@_exported import TierKVTransfer
@_exported import TierKVPolicies
@_exported import TierKVPrediction

/// The library's version, also printed by `tierkv --version` and the C ABI.
public enum TierKVVersion {
    public static let string = "0.1.0"
}
