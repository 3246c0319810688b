//! `llmprune eval` end to end on a tiny model and tiny task files: the outputs, 1 process and
//! 1 or 3 workers giving identical per-document results, perplexity sharded with the NLLs
//! summed, and bad input refused with the file, line, field or flag named.

use llmprune_tests::{assert_contains, tiny_model_dir, tiny_task_dir as task_dir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llmprune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmprune")).args(args).env_remove("RUST_LOG").output().expect("running llmprune")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output, parts: &[&str]) {
    assert!(!out.status.success(), "should have failed");
    assert_contains(&String::from_utf8_lossy(&out.stderr), parts);
}

fn samples(results: &Path) -> Vec<Value> {
    std::fs::read_to_string(results.with_extension("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn one_process_one_and_three_workers_agree_to_the_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let data = task_dir(tmp.path(), 9);
    let text = tmp.path().join("words.txt");
    std::fs::write(&text, (0..400).map(|i| format!("w{}", 1 + i * 13 % 95)).collect::<Vec<_>>().join(" ")).unwrap();
    let ppl = format!("ptb={}", text.display());
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = tmp.path().join(name).join("results.json");
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--ppl",
            &ppl,
            "--seq-len",
            "16",
            "--batch-tokens",
            "64",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let stdout = ok(&llmprune(&args));
        assert_contains(&stdout, &["| Model |", "BoolQ (acc)", "HellaSwag (acc_norm)", "PTB", "Average"]);
        out
    };
    let single = run("single", &["--latency-chunks", "2"]);
    let r = read(&single);
    for task in ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"] {
        assert_eq!(r["n-samples"][task]["effective"], 9, "{task}");
        let acc = r["results"][task]["acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        // mean_stderr of 0/1 outcomes: sqrt(p(1-p)/(n-1)).
        let se = r["results"][task]["acc_stderr"].as_f64().unwrap();
        assert!((se - (acc * (1.0 - acc) / 8.0).sqrt()).abs() < 1e-12, "{task}: {se}");
        assert_eq!(r["results"][task].get("acc_norm").is_some(), !matches!(task, "boolq" | "winogrande"), "{task}");
    }
    assert!(r["results"]["ptb"]["ppl"].as_f64().unwrap() > 1.0);
    assert_eq!(samples(&single).len(), 63);
    assert!(single.with_extension("md").is_file());

    // Workers score whole batches of one plan: the same bits wherever a batch runs.
    let one = run("one", &["--local-workers", "1"]);
    let three = run("three", &["--local-workers", "3", "--latency-chunks", "2"]);
    assert_eq!(samples(&one), samples(&single));
    assert_eq!(samples(&three), samples(&single));
    assert_eq!(read(&three)["cluster"]["workers"], 3);
    // Table 3 latency, timed in the process or by one worker after the others are done.
    for timed in [&r, &read(&three)] {
        let l = &timed["latency"];
        assert!(l["s_per_chunk"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!((&l["dataset"], &l["chunks"], &l["seq_len"], &l["batch"]), (&json!("ptb"), &json!(2), &json!(16), &json!(1)));
    }
    assert!(read(&one).get("latency").is_none(), "no latency unless asked");
    // The perplexity's NLL sums are added in another order: equal to rounding.
    let (p1, p3) = (r["results"]["ptb"]["ppl"].as_f64().unwrap(), read(&three)["results"]["ptb"]["ppl"].as_f64().unwrap());
    assert!((p1 - p3).abs() < 1e-9 * p1, "{p1} vs {p3}");

    // The table command lines results up.
    let table = ok(&llmprune(&["table", single.to_str().unwrap(), three.to_str().unwrap(), "--names", "dense,three"]));
    assert_contains(&table, &["| dense |", "| three |", "OBQA (acc_norm)"]);
}

#[test]
fn eval_refuses_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let data = task_dir(tmp.path(), 3);
    let out = tmp.path().join("r").join("results.json");
    let (m, d, o) = (model.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let base = |tasks: &str| vec!["eval", "--model", m, "--data-dir", d, "--tasks", tasks.to_string().leak(), "--out", o];

    fails(&llmprune(&base("piqa,mmlu")), &["--tasks", "unknown task `mmlu`", "boolq"]);
    fails(&llmprune(&["eval", "--model", m, "--tasks", "piqa", "--out", o]), &["--data-dir"]);
    fails(
        &llmprune(&{
            let mut a = base("piqa");
            a.extend(["--ppl", "c4=/x"]);
            a
        }),
        &["--ppl", "c4"],
    );
    fails(
        &llmprune(&{
            let mut a = base("piqa");
            a.extend(["--latency-chunks", "4"]);
            a
        }),
        &["--latency-chunks", "--ppl"],
    );

    // A record without a field: the file, its line and the field.
    let piqa = data.join("piqa.validation.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&piqa).unwrap().lines().map(str::to_string).collect();
    lines[1] = json!({"goal": "w1", "sol1": "w2", "label": 0}).to_string();
    std::fs::write(&piqa, lines.join("\n")).unwrap();
    fails(&llmprune(&base("piqa")), &["piqa.validation.jsonl", "line 2", "sol2"]);
    lines[1] = "{not json".into();
    std::fs::write(&piqa, lines.join("\n")).unwrap();
    fails(&llmprune(&base("piqa")), &["piqa.validation.jsonl", "line 2"]);
    // A gold index outside the choices.
    std::fs::write(data.join("arc_easy.test.jsonl"), json!({"question": "w1", "choices": ["w2", "w3"], "gold": 2}).to_string()).unwrap();
    fails(&llmprune(&base("arc_easy")), &["arc_easy.test.jsonl", "line 1", "gold"]);
    // An empty task.
    std::fs::write(data.join("openbookqa.test.jsonl"), "\n").unwrap();
    fails(&llmprune(&base("openbookqa")), &["openbookqa.test.jsonl", "no openbookqa documents"]);

    // A tokenizer whose ids do not fit the model's vocabulary.
    let big = tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), big.join(f)).unwrap();
    }
    llmprune_tests::write_word_tokenizer(&big.join("tokenizer.json"), 500);
    fails(&llmprune(&["eval", "--model", big.to_str().unwrap(), "--data-dir", d, "--tasks", "boolq", "--out", o]), &["tokenizer", "vocab_size"]);
    assert!(!out.exists() && !out.with_extension("samples.jsonl").exists(), "nothing written");
}
