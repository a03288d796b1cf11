//! The frames ferrite's guest init (`resources/run/init.c`) writes on the
//! serial console, decoded. A frame is one console line,
//! `ESC 'F' KIND PAYLOAD`, so that kernel messages (which never contain
//! ESC) stay apart from the command's output:
//!
//! | kind | payload | meaning |
//! |---|---|---|
//! | `S` | empty | the command starts now |
//! | `1` | escaped bytes | the command wrote them to stdout |
//! | `2` | escaped bytes | ... to stderr |
//! | `X` | decimal | the command's exit status (128 + N if signal N killed it) |
//! | `E` | text | init itself failed (no root disk, no command) |
//!
//! Escapes: `\\` is a backslash, `\n` a newline, `\xHH` any byte.

/// The bytes that start a frame line.
pub const FRAME_START: &[u8] = b"\x1bF";

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The command starts.
    Started,
    /// Bytes of the command's stdout.
    Stdout(Vec<u8>),
    /// Bytes of the command's stderr.
    Stderr(Vec<u8>),
    /// The command's exit status.
    Exit(i32),
    /// Init failed before or instead of running the command.
    InitError(String),
}

/// The frame on `line` (without its line end), or `None` for any other
/// console line. A frame whose kind is unknown or whose status does not
/// parse is `None` too: it is then shown as console output.
pub fn parse(line: &[u8]) -> Option<Frame> {
    let rest = line.strip_prefix(FRAME_START)?;
    let (&kind, payload) = rest.split_first()?;
    Some(match kind {
        b'S' => Frame::Started,
        b'1' => Frame::Stdout(unescape(payload)),
        b'2' => Frame::Stderr(unescape(payload)),
        b'X' => Frame::Exit(std::str::from_utf8(payload).ok()?.parse().ok()?),
        b'E' => Frame::InitError(String::from_utf8_lossy(&unescape(payload)).into_owned()),
        _ => return None,
    })
}

/// Undoes init's escapes; a malformed escape is kept as it is.
pub fn unescape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut i = 0;
    while i < payload.len() {
        let b = payload[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        match payload.get(i + 1) {
            Some(b'\\') => (out.push(b'\\'), i += 2),
            Some(b'n') => (out.push(b'\n'), i += 2),
            Some(b'x') => match payload.get(i + 2..i + 4).and_then(hex_byte) {
                Some(v) => (out.push(v), i += 4),
                None => (out.push(b), i += 1),
            },
            _ => (out.push(b), i += 1),
        };
    }
    out
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    u8::from_str_radix(std::str::from_utf8(two).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What init.c's `frame()` writes, for the round trip.
    fn escape(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &c in data {
            match c {
                b'\\' => out.extend(b"\\\\"),
                b'\n' => out.extend(b"\\n"),
                c if c < 0x20 || c == 0x7f => out.extend(format!("\\x{c:02x}").bytes()),
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn every_byte_survives_the_round_trip() {
        let all: Vec<u8> = (0..=255u8).chain(*b"\\n\\x4").collect();
        assert_eq!(unescape(&escape(&all)), all);
        assert!(!escape(&all).contains(&b'\n'));
        assert!(!escape(&all).contains(&0x1b));
    }

    #[test]
    fn frames_and_other_lines() {
        assert_eq!(parse(b"\x1bFS"), Some(Frame::Started));
        assert_eq!(
            parse(b"\x1bF1a b\\n"),
            Some(Frame::Stdout(b"a b\n".to_vec()))
        );
        assert_eq!(
            parse(b"\x1bF2x\\x1b"),
            Some(Frame::Stderr(b"x\x1b".to_vec()))
        );
        assert_eq!(parse(b"\x1bFX42"), Some(Frame::Exit(42)));
        assert_eq!(
            parse(b"\x1bFEroot: no"),
            Some(Frame::InitError("root: no".into()))
        );
        for other in [
            &b"[ 1.0] Run /init"[..],
            b"\x1bFX4x",
            b"\x1bFQ",
            b"\x1bF",
            b"",
        ] {
            assert_eq!(parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(unescape(b"a\\"), b"a\\");
        assert_eq!(unescape(b"\\xZZ\\q"), b"\\xZZ\\q");
    }
}
