//! Instruction records from Alpaca JSON arrays or JSON Lines (Alpaca's `instruction`/`input`/
//! `output`, LaMini's `instruction`/`response`). JSON Lines are indexed, not held: one pass
//! checks every line and keeps its byte offset (8 bytes a record: 21 MB for LaMini's 2.59M),
//! and a record is read back when the training order reaches it. JSON arrays (the 50k-record
//! Alpaca files) are held in memory.

use super::data::Record;
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A record's fields, named once in the shared crate's job settings.
pub use llmprune_shared::jobs::RecordFormat as Format;

/// The field holding a record's answer.
fn output_field(format: Format) -> &'static str {
    match format {
        Format::Alpaca => "output",
        Format::Lamini => "response",
    }
}

pub struct RecordFile {
    path: PathBuf,
    format: Format,
    storage: Storage,
    /// Records skipped as malformed (with `skip_bad`).
    pub skipped: usize,
}

enum Storage {
    /// Byte offset of every good line.
    Lines(Vec<u64>),
    Memory(Vec<Record>),
}

/// One record from a JSON value, checking the format's fields.
fn record(v: serde_json::Value, format: Format) -> std::result::Result<Record, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let text = |k: &str, required: bool| -> std::result::Result<String, String> {
        match obj.get(k) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
            None => Err(format!("missing field `{k}`")),
            Some(_) => Err(format!("field `{k}` is not a string")),
        }
    };
    Ok(Record { instruction: text("instruction", true)?, input: text("input", false)?, output: text(output_field(format), true)? })
}

impl RecordFile {
    /// Opens and checks `path`: a JSON array if its first non-blank byte is `[`, JSON Lines
    /// otherwise. A malformed record is an error naming its line, or skipped and counted.
    pub fn open(path: &Path, format: Format, skip_bad: bool) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let first = loop {
            let buf = reader.fill_buf().map_err(|e| Error::io(path, e))?;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buf[i]),
                None if buf.is_empty() => break None,
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        let (storage, skipped) = match first {
            None => return Err(Error::file(path, "the dataset is empty")),
            Some(b'[') => Self::read_array(path, reader, format, skip_bad)?,
            Some(_) => Self::index_lines(path, format, skip_bad)?,
        };
        let out = Self { path: path.to_path_buf(), format, storage, skipped };
        if out.is_empty() {
            return Err(Error::file(path, format!("no usable records ({skipped} skipped as malformed)")));
        }
        Ok(out)
    }

    fn read_array(path: &Path, reader: impl Read, format: Format, skip_bad: bool) -> Result<(Storage, usize)> {
        let values: Vec<serde_json::Value> = serde_json::from_reader(reader).map_err(|e| Error::file(path, format!("not a JSON array of records: {e}")))?;
        let (mut records, mut skipped) = (Vec::with_capacity(values.len()), 0);
        for (i, v) in values.into_iter().enumerate() {
            match record(v, format) {
                Ok(r) => records.push(r),
                Err(_) if skip_bad => skipped += 1,
                Err(e) => return Err(Error::file(path, format!("record {}: {e} (--skip-bad-records skips it)", i + 1))),
            }
        }
        Ok((Storage::Memory(records), skipped))
    }

    fn index_lines(path: &Path, format: Format, skip_bad: bool) -> Result<(Storage, usize)> {
        let mut reader = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
        let (mut offsets, mut skipped, mut offset, mut line_no) = (Vec::new(), 0, 0u64, 0u64);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if !line.trim().is_empty() {
                let parsed = serde_json::from_str::<serde_json::Value>(&line).map_err(|e| e.to_string()).and_then(|v| record(v, format));
                match parsed {
                    Ok(_) => offsets.push(offset),
                    Err(_) if skip_bad => skipped += 1,
                    Err(e) => return Err(Error::file(path, format!("line {line_no}: {e} (--skip-bad-records skips it)"))),
                }
            }
            offset += n as u64;
        }
        Ok((Storage::Lines(offsets), skipped))
    }

    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Lines(o) => o.len(),
            Storage::Memory(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of records by index (its own file handle: one per thread).
    pub fn reader(&self) -> Result<RecordReader<'_>> {
        let file = match self.storage {
            Storage::Lines(_) => Some(BufReader::new(File::open(&self.path).map_err(|e| Error::io(&self.path, e))?)),
            Storage::Memory(_) => None,
        };
        Ok(RecordReader { source: self, file, line: String::new() })
    }
}

pub struct RecordReader<'a> {
    source: &'a RecordFile,
    file: Option<BufReader<File>>,
    line: String,
}

impl RecordReader<'_> {
    pub fn get(&mut self, i: usize) -> Result<Record> {
        let src = self.source;
        match (&src.storage, self.file.as_mut()) {
            (Storage::Memory(r), _) => r.get(i).cloned().ok_or_else(|| Error::Invalid(format!("record {i} out of range"))),
            (Storage::Lines(offsets), Some(file)) => {
                let offset = *offsets.get(i).ok_or_else(|| Error::Invalid(format!("record {i} out of range")))?;
                file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&src.path, e))?;
                self.line.clear();
                file.read_line(&mut self.line).map_err(|e| Error::io(&src.path, e))?;
                let bad = |e: String| Error::file(&src.path, format!("the record at byte {offset} changed since it was checked: {e}"));
                let v = serde_json::from_str(&self.line).map_err(|e| bad(e.to_string()))?;
                record(v, src.format).map_err(bad)
            }
            (Storage::Lines(_), None) => Err(Error::Invalid("a line reader without its file".into())),
        }
    }
}
