//! The instruction reader at LaMini's scale: a 2.6M-record JSON Lines file (about 400 MB) is
//! checked, indexed and read back in training order while the process's peak resident memory
//! grows by the index (8 bytes a record), not by the file.

use llmprune_worker::train::records::{Format, RecordFile};
use std::io::Write;

/// The process's peak resident set (VmHWM) in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn millions_of_records_are_read_with_flat_memory() {
    const N: usize = 2_600_000;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lamini.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..N {
            writeln!(w, r#"{{"instruction": "Describe item number {i} of the catalogue in one sentence.", "response": "Item {i} is a small, well-made thing that people like to keep on their desks."}}"#).unwrap();
        }
    }
    let bytes = std::fs::metadata(&path).unwrap().len();
    assert!(bytes > 300 << 20, "{bytes}");
    let before = peak_rss();
    let file = RecordFile::open(&path, Format::Lamini, false).unwrap();
    assert_eq!(file.len(), N);
    let mut reader = file.reader().unwrap();
    // A stride through the whole file, as a shuffled epoch visits it.
    for i in (0..N).step_by(9973).chain([N - 1]) {
        let r = reader.get(i).unwrap();
        assert_eq!(r.instruction, format!("Describe item number {i} of the catalogue in one sentence."));
        assert!(r.output.starts_with(&format!("Item {i} is")));
        assert!(r.input.is_empty());
    }
    let grown = peak_rss().saturating_sub(before);
    // The index is 21 MB; allow for allocator slack, nowhere near the file's size.
    assert!(grown < 48 << 20, "peak RSS grew by {} MiB reading a {} MiB file", grown >> 20, bytes >> 20);
}
