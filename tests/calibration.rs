//! Calibration sampling against the committed reference set
//! (`../shared/data/calib/smollm2_calib_ids.json`: LLM-Pruner's `get_bookcorpus` run in
//! Python on the Austen paragraphs with `random.seed(42)`), and its bad inputs.

use llmprune_tests::{assert_contains, data_dir, smollm2_gguf};
use llmprune_worker::calibration::{read_rows, read_token_ids, sample_windows};
use llmprune_worker::loader::open_model;
use std::path::PathBuf;

fn austen() -> Vec<PathBuf> {
    let names = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"];
    names.iter().map(|n| data_dir().join("books").join(format!("{n}.txt"))).collect()
}

#[test]
fn bookcorpus_sampling_reproduces_the_reference_windows() {
    let opened = open_model(&smollm2_gguf()).unwrap();
    let rows = read_rows(&austen()).unwrap();
    let texts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data_dir().join("calib/smollm2_calib_texts.json")).unwrap()).unwrap();
    assert_eq!(rows.len() as u64, texts["n_rows"].as_u64().unwrap(), "paragraph rows");
    let windows = sample_windows(&rows, &opened.tokenizer, 10, 64, 42).unwrap();
    let want = read_token_ids(&data_dir().join("calib/smollm2_calib_ids.json"), opened.spec.vocab_size).unwrap();
    let got: Vec<Vec<u32>> = windows.iter().map(|w| w.ids.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(windows[0].row, 4506, "the first window's row, as the reference records it");
    assert_eq!(windows[0].start, 125);
    // Another seed draws other windows.
    let other = sample_windows(&rows, &opened.tokenizer, 10, 64, 43).unwrap();
    assert_ne!(other, windows);
}

#[test]
fn too_few_long_rows_fail_instead_of_looping() {
    let opened = open_model(&smollm2_gguf()).unwrap();
    let rows: Vec<String> = vec!["a short row".into(), "word ".repeat(100), "another short one".into()];
    let windows = sample_windows(&rows, &opened.tokenizer, 1, 64, 1).unwrap();
    assert_eq!(windows[0].row, 1);
    let err = sample_windows(&rows, &opened.tokenizer, 2, 64, 1).unwrap_err().to_string();
    assert_contains(&err, &["2 windows of 64 tokens", "only 1 of the 3 rows"]);
}

#[test]
fn bad_token_id_files_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[[1, 2], [3]]", "window 1 has 1 tokens, window 0 has 2"),
        ("[[1, 2], [3, 99]]", "window 1: token id 99 is outside the vocabulary of 50"),
        ("[]", "no windows"),
        ("{\"ids\": 1}", "expected a JSON array of arrays of token ids"),
    ];
    for (i, (json, want)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("ids{i}.json"));
        std::fs::write(&path, json).unwrap();
        let err = read_token_ids(&path, 50).unwrap_err().to_string();
        assert_contains(&err, &[path.to_str().unwrap(), want]);
    }
    let missing = tmp.path().join("missing.json");
    assert_contains(&read_token_ids(&missing, 50).unwrap_err().to_string(), &["missing.json"]);
}
