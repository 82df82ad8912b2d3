import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// A small ext4 filesystem in a file, loop-mounted for the life of the value.
public final class LoopFilesystem {
    public let image: String
    public let mountPoint: String
    private let directory: TemporaryDirectory

    public static var isPossible: Bool { geteuid() == 0 && access("/dev/loop-control", F_OK) == 0 && access("/usr/sbin/mkfs.ext4", X_OK) == 0 }

    public init(megabytes: Int) throws {
        directory = try TemporaryDirectory()
        image = directory.path + "/fs.img"
        mountPoint = directory.path + "/mnt"
        mkdir(mountPoint, 0o700)
        try Self.shell("truncate -s \(megabytes)M \(image) && mkfs.ext4 -q -F \(image) && mount -o loop \(image) \(mountPoint)")
    }

    deinit {
        _ = try? Self.shell("umount \(mountPoint)")
        unlink(image)
        rmdir(mountPoint)
    }

    public static func shell(_ command: String) throws {
        var pid: pid_t = 0
        let arguments = ["/bin/sh", "-c", command]
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ) == 0 else { throw TierKVError(.systemCall, "cannot run /bin/sh") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        guard status == 0 else { throw TierKVError(.systemCall, "`\(command)` failed with status \(status)") }
    }
}
