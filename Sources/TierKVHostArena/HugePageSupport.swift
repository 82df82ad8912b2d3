import TierKVCore

/// Transparent and explicit (hugetlbfs) huge pages as the kernel reports them.
public struct HugePageSupport: Sendable {
    /// THP mode: `always`, `madvise` or `never` (the bracketed word in sysfs); nil without THP.
    public var transparentMode: String?
    /// THP defrag mode.
    public var transparentDefrag: String?
    /// Default hugetlb page size in bytes (`Hugepagesize` in /proc/meminfo).
    public var hugetlbPageByteCount: UInt64?
    public var hugetlbTotalPages: Int
    public var hugetlbFreePages: Int

    public static func current() -> HugePageSupport {
        let meminfo = TextFile.read("/proc/meminfo") ?? ""
        func field(_ name: String) -> UInt64? {
            for line in meminfo.split(separator: "\n") where line.hasPrefix(name + ":") {
                let parts = line.dropFirst(name.count + 1).split(separator: " ")
                guard let value = parts.first.flatMap({ UInt64($0) }) else { return nil }
                return parts.count > 1 && parts[1] == "kB" ? value * 1024 : value
            }
            return nil
        }
        return HugePageSupport(
            transparentMode: selected(TextFile.read("/sys/kernel/mm/transparent_hugepage/enabled")),
            transparentDefrag: selected(TextFile.read("/sys/kernel/mm/transparent_hugepage/defrag")),
            hugetlbPageByteCount: field("Hugepagesize"),
            hugetlbTotalPages: Int(field("HugePages_Total") ?? 0),
            hugetlbFreePages: Int(field("HugePages_Free") ?? 0))
    }

    /// `always [madvise] never` → `madvise`.
    static func selected(_ text: String?) -> String? {
        guard let text, let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close
        else { return nil }
        return String(text[text.index(after: open)..<close])
    }

    public var json: JSONValue {
        .object([
            ("thp_enabled", .optional(transparentMode)), ("thp_defrag", .optional(transparentDefrag)),
            ("hugetlb_page_bytes", hugetlbPageByteCount.map { .int($0) } ?? .null),
            ("hugetlb_total", .int(hugetlbTotalPages)), ("hugetlb_free", .int(hugetlbFreePages)),
        ])
    }
}
