import Synchronization
import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

@Suite struct StorageFaultTests {
    static let geometry = BlockFile.Geometry(slotByteCount: 16384, slotCount: 16)

    /// EIO on a rewrite: the write fails with the errno, the old copy stays indexed and readable.
    @Test func eioOnWriteKeepsThePreviousCopy() throws {
        let directory = try TemporaryDirectory()
        let failing = Atomic<Bool>(false)
        let injector = IOFaultInjector { isWrite, _ in isWrite && failing.load(ordering: .relaxed) ? EIO : nil }
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry, faultInjector: injector)
        let buffers = SlotBuffers(slotBytes: 16384, count: 3)
        buffers.fill(0, payload: 5000, seed: 1)
        #expect(store.write([BlockStore.Write(key: key(1), buffer: buffers[0], payloadByteCount: 5000)]).allSatisfy { if case .stored = $0 { true } else { false } })
        failing.store(true, ordering: .relaxed)
        buffers.fill(1, payload: 6000, seed: 2)
        let result = store.write([BlockStore.Write(key: key(1), buffer: buffers[1], payloadByteCount: 6000)])[0]
        guard case .failed(let error) = result else { Issue.record("expected EIO"); return }
        #expect(error.errno == EIO)
        #expect(error.message.contains("Input/output error"))
        #expect(store.statistics.writeFailures == 1)
        #expect(store.read([(key: key(1), buffer: buffers[2])])[0] == .hit(payloadByteCount: 5000))
        #expect(buffers.payloadEquals(2, buffers, 0, payload: 5000))
    }

    @Test func eioOnReadIsAMissNeverData() throws {
        let directory = try TemporaryDirectory()
        let injector = IOFaultInjector { isWrite, _ in isWrite ? nil : EIO }
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry, faultInjector: injector)
        let buffers = SlotBuffers(slotBytes: 16384, count: 2)
        _ = store.write([BlockStore.Write(key: key(4), buffer: buffers[0], payloadByteCount: 100)])
        let result = store.read([(key: key(4), buffer: buffers[1])])[0]
        guard case .ioError(let reason) = result else { Issue.record("expected a failed read, got \(result)"); return }
        #expect(reason.contains("Input/output error"))
        // The block stays indexed: a transient error must not lose it.
        #expect(store.contains(key(4)))
        #expect(store.statistics.readErrors == 1 && store.statistics.corruptions == 0)
    }

    @Test func fsckFindsAndQuarantinesCorruptSlots() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        let buffers = SlotBuffers(slotBytes: 16384, count: 4)
        do {
            let store = try BlockStore(directory: path, geometry: Self.geometry)
            for index in 0..<4 { buffers.fill(index, payload: 8000, seed: UInt64(index)) }
            _ = store.write((0..<4).map { BlockStore.Write(key: key($0), buffer: buffers[$0], payloadByteCount: 8000) })
            _ = store.write([BlockStore.Write(key: key(0), buffer: buffers[0], payloadByteCount: 8000)])  // a newer copy of key 0
        }
        let raw = open(path + "/" + BlockFile.fileName, O_RDWR | O_CLOEXEC)
        var byte: UInt8 = 0xFF
        pwrite(raw, &byte, 1, off_t(BlockFile.fileHeaderByteCount + 2 * 16384 + 1000))  // slot 2's payload
        fsync(raw)
        close(raw)
        let first = try BlockFileCheck.run(directory: path, repair: false)
        #expect(first.slots == 16)
        #expect(first.valid == 4 && first.corrupt == 1 && first.empty == 11)
        #expect(first.recovered == 3 && first.superseded == 1)  // keys 0, 1, 3: key 2 lost; key 0 has two copies
        #expect(first.corruptSlots.map(\.slot) == [2])
        let repaired = try BlockFileCheck.run(directory: path, repair: true)
        #expect(repaired.quarantined == 1)
        let after = try BlockFileCheck.run(directory: path, repair: false)
        #expect(after.corrupt == 0 && after.empty == 12)
        let reopened = try BlockStore(directory: path, geometry: Self.geometry)
        #expect(!reopened.contains(key(2)))
        #expect(reopened.read([(key: key(0), buffer: buffers[1])])[0] == .hit(payloadByteCount: 8000))
    }

    /// A real full disk: a 16 MiB ext4 image, loop-mounted. Needs root and loop devices.
    @Test(.enabled(if: LoopFilesystem.isPossible, "needs root and /dev/loop-control for a loop-mounted ext4 image"))
    func aFullDiskIsAClearErrorAndLeavesNothingBehind() throws {
        let filesystem = try LoopFilesystem(megabytes: 16)
        let big = BlockFile.Geometry(slotByteCount: 65536, slotCount: 1024)  // 64 MiB
        do {
            _ = try BlockStore(directory: filesystem.mountPoint + "/cache", geometry: big)
            Issue.record("expected ENOSPC")
        } catch {
            #expect(error.errno == ENOSPC)
            #expect(error.code == .capacityExceeded)
            #expect(error.message.contains("not enough space"))
        }
        #expect(access(filesystem.mountPoint + "/cache/" + BlockFile.fileName, F_OK) != 0, "the half-made file was removed")
        let fits = try BlockStore(directory: filesystem.mountPoint + "/cache", geometry: .init(slotByteCount: 65536, slotCount: 64))
        let buffers = SlotBuffers(slotBytes: 65536, count: 2)
        buffers.fill(0, payload: 60000, seed: 3)
        _ = fits.write([BlockStore.Write(key: key(1), buffer: buffers[0], payloadByteCount: 60000)])
        #expect(fits.read([(key: key(1), buffer: buffers[1])])[0] == .hit(payloadByteCount: 60000))
    }
}

@Suite struct DirectIOFallbackTests {
    static var canMountRamfs: Bool { geteuid() == 0 }

    /// ramfs refuses O_DIRECT (EINVAL): without the fallback that is a clear error naming the
    /// filesystem; with it the store works buffered and says so in `isDirect`.
    @Test(.enabled(if: canMountRamfs, "needs root to mount a ramfs"))
    func aFilesystemWithoutODirectIsAClearErrorOrAnExplicitFallback() throws {
        let directory = try TemporaryDirectory()
        let mountPoint = directory.path + "/ram"
        mkdir(mountPoint, 0o700)
        try LoopFilesystem.shell("mount -t ramfs ramfs \(mountPoint)")
        defer { _ = try? LoopFilesystem.shell("umount \(mountPoint)") }
        let geometry = BlockFile.Geometry(slotByteCount: 8192, slotCount: 8)
        do {
            _ = try BlockStore(directory: mountPoint + "/cache", geometry: geometry)
            Issue.record("expected O_DIRECT to be refused")
        } catch {
            #expect(error.code == .unsupported)
            #expect(error.message.contains("does not support O_DIRECT"))
            #expect(error.message.contains("ramfs"))
        }
        #expect(access(mountPoint + "/cache/" + BlockFile.fileName, F_OK) != 0)
        let store = try BlockStore(directory: mountPoint + "/cache", geometry: geometry, allowBufferedFallback: true)
        #expect(!store.file.isDirect)
        let buffers = SlotBuffers(slotBytes: 8192, count: 2)
        buffers.fill(0, payload: 5000, seed: 8)
        _ = store.write([BlockStore.Write(key: key(1), buffer: buffers[0], payloadByteCount: 5000)])
        #expect(store.read([(key: key(1), buffer: buffers[1])])[0] == .hit(payloadByteCount: 5000))
        #expect(buffers.payloadEquals(1, buffers, 0, payload: 5000))
    }
}
