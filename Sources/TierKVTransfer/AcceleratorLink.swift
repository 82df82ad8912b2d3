import Dispatch
import TierKVAccelerator
import TierKVCore

/// One direction of the host↔accelerator link. A request is a batch of copies, merged where they
/// are contiguous on both sides, enqueued on the link's stream as one submission where the
/// backend has one (`AcceleratorStream.batchSubmission`) and completed by one fence. A dedicated
/// completion queue waits for fences in order, so submitters never block on the device.
public final class AcceleratorLink: TransferLink, @unchecked Sendable {
    // @unchecked: `stream` is thread-safe per the AcceleratorStream contract; the rest is immutable.
    public enum Direction: String, Sendable {
        case hostToDevice = "h2d"
        case deviceToHost = "d2h"
    }

    public let direction: Direction
    public let accelerator: any Accelerator
    private let stream: any AcceleratorStream
    private let completions: DispatchQueue

    public init(accelerator: any Accelerator, direction: Direction) throws(TierKVError) {
        self.accelerator = accelerator
        self.direction = direction
        self.stream = try accelerator.makeStream()
        self.completions = DispatchQueue(label: "tierkv.link.\(direction.rawValue).completions")
    }

    public var name: String { direction.rawValue }

    public func byteCount(of request: [DeviceCopy]) -> Int { request.reduce(0) { $0 + $1.byteCount } }

    public func start(_ request: [DeviceCopy], completion: @escaping @Sendable (TransferOutcome) -> Void) {
        let fence: any AcceleratorFence
        do {
            let copies = DeviceCopy.coalescing(request)
            switch direction {
            case .hostToDevice: try stream.copyToDevice(copies)
            case .deviceToHost: try stream.copyToHost(copies)
            }
            fence = try stream.recordFence(timing: false)
        } catch {
            // The copies enqueued before the one that failed still land. Report the failure only
            // once they have, so that the caller never reuses their slots under them.
            let drained = try? stream.recordFence(timing: false)
            let stream = stream
            completions.async {
                if let drained { try? drained.wait() } else { try? stream.synchronize() }
                completion(.failed(error))
            }
            return
        }
        completions.async {
            let outcome: TransferOutcome
            do throws(TierKVError) {
                try fence.wait()
                outcome = .completed
            } catch {
                outcome = .failed(error)
            }
            completion(outcome)
        }
    }
}
