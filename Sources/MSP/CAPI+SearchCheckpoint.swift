// CAPI+SearchCheckpoint: saving a search to bytes and restoring it.

import CMSPHeader
import MSPCore

/// The size of a search's checkpoint; see `include/msp.h`.
@_cdecl("msp_search_save_size")
public func msp_search_save_size(_ search: OpaquePointer?, _ size_out: UnsafeMutablePointer<Int64>?) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        let out = try required(size_out, "size_out")
        out.pointee = Int64(search.checkpoint().count)
    }
}

/// Writes a search's checkpoint; see `include/msp.h`.
@_cdecl("msp_search_save")
public func msp_search_save(
    _ search: OpaquePointer?, _ buffer: UnsafeMutableRawPointer?, _ capacity: Int64,
    _ size_out: UnsafeMutablePointer<Int64>?
) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        let buffer = try required(buffer, "buffer")
        let out = try required(size_out, "size_out")
        let bytes = search.checkpoint()
        guard Int64(bytes.count) <= capacity else {
            throw MSPError.invalidArgument(
                "capacity (\(capacity)) is smaller than the checkpoint (\(bytes.count) bytes); "
                    + "see msp_search_save_size")
        }
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { buffer.copyMemory(from: base, byteCount: source.count) }
        }
        out.pointee = Int64(bytes.count)
    }
}

/// Restores a search from a checkpoint; see `include/msp.h`.
@_cdecl("msp_search_load")
public func msp_search_load(
    _ data: UnsafeRawPointer?, _ size: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let out = try required(out, "out")
        let data = try required(data, "data")
        guard size >= 0, let count = Int(exactly: size) else {
            throw MSPError.invalidArgument("size (\(size)) must be >= 0")
        }
        let search = try Search(checkpoint: UnsafeRawBufferPointer(start: data, count: count))
        out.pointee = retained(search)
    }
}
