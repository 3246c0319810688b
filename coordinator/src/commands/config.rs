use crate::cli::ConfigArgs;
use crate::settings::Settings;
use anyhow::Result;

pub fn run(settings: &Settings, args: ConfigArgs) -> Result<()> {
    if args.print {
        println!("{settings:#?}");
    }
    Ok(())
}
