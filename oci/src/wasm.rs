//! Recognising WebAssembly binaries by their header.

/// What kind of WebAssembly binary a file holds, from its first eight bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core module (`\0asm`, version 1): run as a WASI preview 1 command.
    Module,
    /// A component (`\0asm`, layer 1): run as a WASI preview 2 `wasi:cli/run`
    /// command or served as `wasi:http/incoming-handler`.
    Component,
}

/// The `\0asm` magic every WebAssembly binary starts with.
pub const MAGIC: [u8; 4] = *b"\0asm";

/// Classifies `header` (the first bytes of a file). Returns `None` when the
/// bytes are not a WebAssembly binary or use an unknown version or layer.
pub fn classify(header: &[u8]) -> Option<WasmKind> {
    if header.len() < 8 || header[..4] != MAGIC {
        return None;
    }
    match header[4..8] {
        [1, 0, 0, 0] => Some(WasmKind::Module),
        // version 0x0d (pre-standard encoding), layer 1 = component
        [_, _, 1, 0] => Some(WasmKind::Component),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_headers() {
        assert_eq!(classify(b"\0asm\x01\0\0\0rest"), Some(WasmKind::Module));
        assert_eq!(classify(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(classify(b"\0asm\x02\0\0\0"), None);
        assert_eq!(classify(b"\0asm"), None);
        assert_eq!(classify(b"#!/bin/sh\n"), None);
        assert_eq!(classify(b"\x7fELF\x02\x01\x01\0"), None);
    }
}
