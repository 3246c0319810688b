//! Calibration windows for importance estimation: drawn from plain text the way LLM-Pruner
//! draws them from BookCorpus (`get_bookcorpus`), or read verbatim from a token-id JSON.

use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use llmprune_shared::PyRandom;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One calibration window and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub ids: Vec<u32>,
    /// Index of the row it was cut from, across all input files in order.
    pub row: usize,
    /// Offset of the window in the row's tokens.
    pub start: usize,
}

/// The rows of plain text: paragraphs separated by blank lines, each with its runs of
/// whitespace collapsed to one space. BookCorpus rows are sentences; paragraphs of books are
/// the stand-in.
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !words.is_empty() {
                rows.push(words.join(" "));
                words.clear();
            }
        } else {
            words.extend(line.split_whitespace());
        }
    }
    rows
}

/// The paragraphs of several text files, in the order given.
pub fn read_rows(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        rows.extend(paragraphs(&text));
    }
    Ok(rows)
}

/// LLM-Pruner's sampling, draw for draw with Python's `random` seeded with `seed`: pick a
/// random row until one has at least `len` tokens and was not picked before, then a random
/// window of `len` tokens in it; `n` times. Where the reference would loop forever (too few
/// long rows), this fails and says how many rows qualify.
pub fn sample_windows(rows: &[String], tokenizer: &TextTokenizer, n: usize, len: usize, seed: u64) -> Result<Vec<Window>> {
    sample_windows_with(rows, tokenizer, n, len, &mut PyRandom::new(seed))
}

/// [`sample_windows`] drawing from `rng`: iterative pruning draws each step's windows from
/// one stream, as the reference does (its `random` is seeded once).
pub fn sample_windows_with(rows: &[String], tokenizer: &TextTokenizer, n: usize, len: usize, rng: &mut PyRandom) -> Result<Vec<Window>> {
    if n == 0 || len == 0 {
        return Err(Error::Invalid(format!("calibration: {n} windows of {len} tokens: both must be positive")));
    }
    if rows.is_empty() {
        return Err(Error::Invalid("calibration: the text has no rows".into()));
    }
    let mut tokens: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut used: HashSet<usize> = HashSet::new();
    let mut windows = Vec::with_capacity(n);
    while windows.len() < n {
        let row = loop {
            let i = rng.randint(0, rows.len() as u64 - 1) as usize;
            if let std::collections::hash_map::Entry::Vacant(e) = tokens.entry(i) {
                e.insert(tokenizer.encode(&rows[i])?);
                if tokens.len() == rows.len() {
                    let long = tokens.values().filter(|t| t.len() >= len).count();
                    if long < n {
                        return Err(Error::Invalid(format!(
                            "calibration: {n} windows of {len} tokens need {n} rows that long; only {long} of the {} rows are",
                            rows.len()
                        )));
                    }
                }
            }
            if tokens[&i].len() >= len && used.insert(i) {
                break i;
            }
        };
        let ids = &tokens[&row];
        let start = rng.randint(0, (ids.len() - len) as u64) as usize;
        windows.push(Window { ids: ids[start..start + len].to_vec(), row, start });
    }
    Ok(windows)
}

/// Windows given as token ids: a JSON array of `n` arrays of the same length, every id
/// inside the vocabulary.
pub fn read_token_ids(path: &Path, vocab_size: usize) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let windows: Vec<Vec<u32>> = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("expected a JSON array of arrays of token ids: {e}")))?;
    let Some(first) = windows.first() else {
        return Err(Error::file(path, "no windows"));
    };
    if let Some((i, w)) = windows.iter().enumerate().find(|(_, w)| w.len() != first.len() || w.is_empty()) {
        return Err(Error::file(path, format!("window {i} has {} tokens, window 0 has {}", w.len(), first.len())));
    }
    if let Some((i, id)) = windows.iter().enumerate().find_map(|(i, w)| w.iter().find(|&&t| t as usize >= vocab_size).map(|t| (i, t))) {
        return Err(Error::file(path, format!("window {i}: token id {id} is outside the vocabulary of {vocab_size}")));
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_split_on_blank_lines_and_collapse_whitespace() {
        let text = "  First  line\nsecond\tline\n\n \n\nNext para.\r\n   \nLast";
        assert_eq!(paragraphs(text), ["First line second line", "Next para.", "Last"]);
        assert!(paragraphs(" \n\n\t\n").is_empty());
    }
}
