import ArgumentParser
import TierKV
import TierKVAccelerator

/// `--device auto|cuda|emulated`: which hot-tier backend a command uses.
enum AcceleratorChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, cuda, emulated

    /// Opens the backend. `auto` picks CUDA when a driver and device are present and says on
    /// stderr when it falls back to the emulation, so the fallback is never silent.
    func open(ordinal: Int = 0, emulatedMemoryByteCount: Int = 4 << 30) throws -> any Accelerator {
        switch self {
        case .cuda:
            do { return try CUDADriver(ordinal: ordinal) } catch { throw CommandFailure(error) }
        case .emulated:
            return EmulatedAccelerator(memoryByteCount: emulatedMemoryByteCount)
        case .auto:
            do {
                return try CUDADriver(ordinal: ordinal)
            } catch {
                Output.printError("note: no CUDA device (\(error.message)); using the EMULATED accelerator (host memory, modelled PCIe Gen5 link)")
                return EmulatedAccelerator(memoryByteCount: emulatedMemoryByteCount)
            }
        }
    }
}
