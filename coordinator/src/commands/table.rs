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

/// An accuracy in percent, with `± se` (in points) when known.
fn with_stderr(value: f64, stderr: Option<f64>) -> String {
    match stderr {
        Some(se) => format!("{:.2} ±{:.2}", 100.0 * value, 100.0 * se),
        None => format!("{:.2}", 100.0 * value),
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
        // Each accuracy with its standard error (lm-evaluation-harness's `mean_stderr`); the
        // average's is that of a mean of independent tasks, √(Σ se²) / k.
        let (mut sum, mut variance, mut count) = (0.0, 0.0, 0);
        for t in &tasks {
            let metric = t.reported_metric().name();
            match r["results"][t.name()][metric].as_f64() {
                Some(v) => {
                    let se = r["results"][t.name()][format!("{metric}_stderr")].as_f64().filter(|s| s.is_finite());
                    (sum, variance, count) = (sum + v, variance + se.unwrap_or(0.0).powi(2), count + 1);
                    cells.push(with_stderr(v, se));
                }
                None => cells.push("–".into()),
            }
        }
        if !tasks.is_empty() {
            let k = count as f64;
            cells.push(if count == tasks.len() { with_stderr(sum / k, Some(variance.sqrt() / k).filter(|s| *s > 0.0)) } else { "–".into() });
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accuracies_carry_their_standard_errors_and_the_average_its_own() {
        // lm-evaluation-harness's keys: BoolQ reports acc, HellaSwag acc_norm.
        let r = json!({"results": {"wikitext2": {"ppl": 56.049}, "boolq": {"acc": 0.625, "acc_stderr": 0.0769},
                                    "hellaswag": {"acc": 0.5, "acc_norm": 0.75, "acc_norm_stderr": 0.0433}}});
        let table = paper_table(&[("dense", &r)]);
        let row = table.lines().last().unwrap();
        // Average of 62.5 and 75 with √(7.69² + 4.33²) / 2 = 4.41 points.
        assert_eq!(row, "| dense | 56.05 | 62.50 ±7.69 | 75.00 ±4.33 | 68.75 ±4.41 |");
        let bare = json!({"results": {"boolq": {"acc": 0.5}}});
        assert_eq!(paper_table(&[("m", &bare)]).lines().last().unwrap(), "| m | 50.00 | 50.00 |");
    }
}
