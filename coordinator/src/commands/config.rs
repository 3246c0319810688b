use crate::cli::ConfigArgs;
use crate::settings::Settings;
use anyhow::Result;

/// Prints the merged configuration as JSON (the cluster token masked).
pub fn run(settings: &Settings, args: ConfigArgs) -> Result<()> {
    if args.print {
        let mut shown = settings.clone();
        if shown.cluster.token.is_some() {
            shown.cluster.token = Some("***".into());
        }
        println!("{}", serde_json::to_string_pretty(&shown)?);
    }
    Ok(())
}
