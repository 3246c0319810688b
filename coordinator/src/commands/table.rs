//! `llmprune table`: results of several evaluations side by side in the layout of the paper's
//! Table 1 (perplexity columns, the seven tasks with the metric the paper reports, average).

use crate::cli::TableArgs;
use anyhow::{Context, Result};
use llmprune_worker::eval::zeroshot::tasks::Task;
use serde_json::Value;

const PPL: [(&str, &str); 2] = [("wikitext2", "WikiText2↓"), ("ptb", "PTB↓")];

fn header(task: Task) -> &'static str {
    match task {
        Task::BoolQ => "BoolQ",
        Task::Piqa => "PIQA",
        Task::HellaSwag => "HellaSwag",
        Task::WinoGrande => "WinoGrande",
        Task::ArcEasy => "ARC-e",
        Task::ArcChallenge => "ARC-c",
        Task::OpenBookQa => "OBQA",
    }
}

/// A Markdown table with one row per `(name, results.json)`: the columns any of them has.
pub fn paper_table(rows: &[(&str, &Value)]) -> String {
    let has = |key: &str| rows.iter().any(|(_, r)| r["results"].get(key).is_some());
    let ppl: Vec<(&str, &str)> = PPL.into_iter().filter(|(k, _)| has(k)).collect();
    let tasks: Vec<Task> = Task::ALL.into_iter().filter(|t| has(t.name())).collect();
    let mut head = vec!["Model".to_string()];
    head.extend(ppl.iter().map(|(_, h)| h.to_string()));
    head.extend(tasks.iter().map(|t| format!("{} ({})", header(*t), t.reported_metric().name())));
    if !tasks.is_empty() {
        head.push("Average".into());
    }
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for (name, r) in rows {
        let mut cells = vec![name.to_string()];
        cells.extend(ppl.iter().map(|(k, _)| r["results"][*k]["ppl"].as_f64().map_or("–".into(), |v| format!("{v:.2}"))));
        let mut sum = (0.0, 0);
        for t in &tasks {
            match r["results"][t.name()][t.reported_metric().name()].as_f64() {
                Some(v) => {
                    sum = (sum.0 + v, sum.1 + 1);
                    cells.push(format!("{:.2}", 100.0 * v));
                }
                None => cells.push("–".into()),
            }
        }
        if !tasks.is_empty() {
            cells.push(if sum.1 == tasks.len() { format!("{:.2}", 100.0 * sum.0 / sum.1 as f64) } else { "–".into() });
        }
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.trim_end().to_string()
}

pub fn run(args: TableArgs) -> Result<()> {
    let mut loaded = Vec::new();
    for (i, path) in args.results.iter().enumerate() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        if !v["results"].is_object() {
            anyhow::bail!("{}: no `results` object (not written by `llmprune eval`)", path.display());
        }
        let name = args
            .names
            .as_ref()
            .and_then(|n| n.split(',').nth(i))
            .map(str::to_string)
            .or_else(|| v["name"].as_str().map(str::to_string))
            .unwrap_or_else(|| path.display().to_string());
        loaded.push((name, v));
    }
    let rows: Vec<(&str, &Value)> = loaded.iter().map(|(n, v)| (n.as_str(), v)).collect();
    println!("{}", paper_table(&rows));
    Ok(())
}
