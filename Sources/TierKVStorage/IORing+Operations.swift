internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

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
        try queued(ctierkv_ring_queue_read(handle, descriptor, destination, UInt32(byteCount), fileOffset, Int32(bufferIndex), userData))
    }

    /// Queues a write from a registered (fixed) buffer.
    public func queueWriteFixed(
        descriptor: Int32, from source: UnsafeRawPointer, byteCount: Int, fileOffset: UInt64, bufferIndex: Int,
        userData: UInt64
    ) throws(TierKVError) {
        try queued(ctierkv_ring_queue_write(handle, descriptor, source, UInt32(byteCount), fileOffset, Int32(bufferIndex), userData))
    }

    /// Queues a read into any memory (not a registered buffer).
    public func queueRead(
        descriptor: Int32, into destination: UnsafeMutableRawPointer, byteCount: Int, fileOffset: UInt64, userData: UInt64
    ) throws(TierKVError) {
        try queued(ctierkv_ring_queue_read(handle, descriptor, destination, UInt32(byteCount), fileOffset, -1, userData))
    }

    /// Queues a write from any memory (not a registered buffer).
    public func queueWrite(
        descriptor: Int32, from source: UnsafeRawPointer, byteCount: Int, fileOffset: UInt64, userData: UInt64
    ) throws(TierKVError) {
        try queued(ctierkv_ring_queue_write(handle, descriptor, source, UInt32(byteCount), fileOffset, -1, userData))
    }

    /// Queues a no-op (used to wake a completion thread).
    public func queueNop(userData: UInt64) throws(TierKVError) {
        try queued(ctierkv_ring_queue_nop(handle, userData))
    }

    private func queued(_ result: Int32) throws(TierKVError) {
        if result == -EBUSY {
            throw TierKVError(.capacityExceeded, "io_uring submission queue is full (\(entryCount) entries); submit first")
        }
        try SystemCall.negativeErrno("io_uring_get_sqe", result)
    }

    /// Sends every queued operation to the kernel; returns how many were sent.
    @discardableResult
    public func submit() throws(TierKVError) -> Int {
        while true {
            let result = ctierkv_ring_submit(handle)
            if result == -EINTR { continue }
            return Int(try SystemCall.negativeErrno("io_uring_submit", result))
        }
    }

    /// Blocks until one completion is available and consumes it.
    public func waitCompletion() throws(TierKVError) -> IORingCompletion {
        var userData: UInt64 = 0
        var result: Int32 = 0
        while true {
            let status = ctierkv_ring_wait(handle, &userData, &result)
            if status == -EINTR { continue }
            try SystemCall.negativeErrno("io_uring_wait_cqe", status)
            return IORingCompletion(userData: userData, result: result)
        }
    }
}
