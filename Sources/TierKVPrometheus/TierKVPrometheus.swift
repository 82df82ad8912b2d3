import CoreMetrics
import Prometheus

/// Prometheus export of TierKV's metrics (and anything else reported through swift-metrics).
///
/// Call `bootstrap()` once at start-up, before opening a hierarchy, then serve `exposition()` on
/// the engine's `/metrics` endpoint (text format 0.0.4). Engines with their own swift-metrics
/// backend skip this module: the hierarchy reports to whatever backend is bootstrapped.
public enum TierKVPrometheus {
    /// Installs a Prometheus backend as the process's metrics system and returns its registry.
    /// swift-metrics allows one bootstrap per process; a second call traps inside swift-metrics,
    /// so call it from `main` only.
    @discardableResult
    public static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }

    /// The registry's metrics in the Prometheus text exposition format.
    public static func exposition(_ registry: PrometheusCollectorRegistry) -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
