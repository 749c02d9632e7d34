//! The broadcast line framer on arbitrary bytes, split at arbitrary points, with an arbitrary
//! limit: it never panics, delivers only whole lines within the limit, and delivers exactly what
//! the unsplit input would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resound::service::broadcast::LineFramer;

fuzz_target!(|input: (u16, Vec<u16>, Vec<u8>)| {
    let (max_line, cuts, data) = input;
    let max_line = usize::from(max_line % 512) + 1;

    let run = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        for piece in pieces {
            let framed = framer.push(piece, max_line);
            if let Some(lines) = &framed.lines {
                assert!(lines.ends_with(b"\n"));
                assert_eq!(lines.iter().filter(|&&b| b == b'\n').count(), framed.count);
                for line in lines.split_inclusive(|&b| b == b'\n') {
                    assert!(line.len() - 1 <= max_line, "an overlong line was delivered");
                }
                out.extend_from_slice(lines);
            }
            if framed.too_long {
                return (out, true);
            }
        }
        (out, false)
    };

    let whole = run(&mut std::iter::once(&data[..]));
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut start = 0;
    let mut pieces = Vec::new();
    for p in points {
        pieces.push(&data[start..p]);
        start = p;
    }
    pieces.push(&data[start..]);
    let split = run(&mut pieces.into_iter());
    assert_eq!(whole, split, "the result depends on how the bytes were split");
});
