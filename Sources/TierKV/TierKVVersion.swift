@_exported import TierKVCore

/// The library's version, also printed by `tierkv --version` and the C ABI.
public enum TierKVVersion {
    public static let string = "0.1.0"
}
