import CTierKVLinux
import TierKVCore

/// A completed operation: the `userData` it was submitted with and its result (bytes moved).
public struct IORingCompletion: Sendable, Hashable {
    public var userData: UInt64
    /// Bytes transferred, or a negative errno (use `checkedByteCount`).
    public var result: Int32

    /// The byte count, or the operation's errno as an error.
    public func checkedByteCount(_ operation: String, path: String? = nil) throws(TierKVError) -> Int {
        Int(try SystemCall.negativeErrno(operation, path: path, result))
    }
}

extension IORing {
    /// Queues a read into a registered (fixed) buffer. Nothing is sent until `submit()`.
    /// - Parameters:
    ///   - destination: inside the registered buffer `bufferIndex`.
    ///   - fileOffset: byte offset in the file (aligned for O_DIRECT files).
    /// - Throws: `.capacityExceeded` when the submission queue is full (submit first).
    public func queueReadFixed(
        descriptor: Int32, into destination: UnsafeMutableRawPointer, byteCount: Int, fileOffset: UInt64,
        bufferIndex: Int, userData: UInt64
    ) throws(TierKVError) {
        let sqe = try nextSubmission()
        io_uring_prep_read_fixed(sqe, descriptor, destination, UInt32(byteCount), fileOffset, Int32(bufferIndex))
        io_uring_sqe_set_data64(sqe, userData)
    }

    /// Queues a write from a registered (fixed) buffer.
    public func queueWriteFixed(
        descriptor: Int32, from source: UnsafeRawPointer, byteCount: Int, fileOffset: UInt64, bufferIndex: Int,
        userData: UInt64
    ) throws(TierKVError) {
        let sqe = try nextSubmission()
        io_uring_prep_write_fixed(sqe, descriptor, source, UInt32(byteCount), fileOffset, Int32(bufferIndex))
        io_uring_sqe_set_data64(sqe, userData)
    }

    /// Queues a read into any memory (not a registered buffer).
    public func queueRead(
        descriptor: Int32, into destination: UnsafeMutableRawPointer, byteCount: Int, fileOffset: UInt64, userData: UInt64
    ) throws(TierKVError) {
        let sqe = try nextSubmission()
        io_uring_prep_read(sqe, descriptor, destination, UInt32(byteCount), fileOffset)
        io_uring_sqe_set_data64(sqe, userData)
    }

    /// Queues a write from any memory (not a registered buffer).
    public func queueWrite(
        descriptor: Int32, from source: UnsafeRawPointer, byteCount: Int, fileOffset: UInt64, userData: UInt64
    ) throws(TierKVError) {
        let sqe = try nextSubmission()
        io_uring_prep_write(sqe, descriptor, source, UInt32(byteCount), fileOffset)
        io_uring_sqe_set_data64(sqe, userData)
    }

    /// Queues a no-op (used to wake a completion thread).
    public func queueNop(userData: UInt64) throws(TierKVError) {
        let sqe = try nextSubmission()
        io_uring_prep_nop(sqe)
        io_uring_sqe_set_data64(sqe, userData)
    }

    private func nextSubmission() throws(TierKVError) -> UnsafeMutablePointer<io_uring_sqe> {
        guard let sqe = io_uring_get_sqe(ring) else {
            throw TierKVError(.capacityExceeded, "io_uring submission queue is full (\(entryCount) entries); submit first")
        }
        return sqe
    }

    /// Sends every queued operation to the kernel; returns how many were sent.
    @discardableResult
    public func submit() throws(TierKVError) -> Int {
        while true {
            let result = io_uring_submit(ring)
            if result == -EINTR { continue }
            return Int(try SystemCall.negativeErrno("io_uring_submit", result))
        }
    }

    /// Blocks until one completion is available and consumes it.
    public func waitCompletion() throws(TierKVError) -> IORingCompletion {
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        while true {
            let result = io_uring_wait_cqe(ring, &cqe)
            if result == -EINTR { continue }
            try SystemCall.negativeErrno("io_uring_wait_cqe", result)
            break
        }
        guard let cqe else { throw TierKVError(.systemCall, "io_uring_wait_cqe returned no completion") }
        let completion = IORingCompletion(userData: io_uring_cqe_get_data64(cqe), result: cqe.pointee.res)
        io_uring_cqe_seen(ring, cqe)
        return completion
    }
}
