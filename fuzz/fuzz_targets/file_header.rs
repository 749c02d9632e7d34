//! The file-transfer header parser and name validation on arbitrary bytes: they never panic, an
//! accepted name is always a safe base name, and a complete header points at its newline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resound::service::files::{Header, parse_header, validate_name};

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = validate_name(data) {
        assert!(!name.is_empty() && name.len() <= 255);
        assert!(name != "." && name != "..");
        assert!(!name.contains(['/', '\\', '\0']));
    }
    match parse_header(data) {
        Header::Framed { name, len, .. } | Header::NameLine { name, len } => {
            assert_eq!(data[len - 1], b'\n');
            assert!(validate_name(name.as_bytes()).is_ok());
            // Every strict prefix (before the newline) must still be waiting.
            let line_end = len - 1;
            for cut in 0..line_end {
                assert!(matches!(parse_header(&data[..cut]), Header::Incomplete { .. }));
            }
        }
        Header::Incomplete { .. } => assert!(!data.contains(&b'\n')),
        Header::Invalid(_) => {}
    }
});
