//! Outputs get the permissions any file created in their directory gets (0644 and 0755 under
//! the usual umask 022). Files written through temporaries (tempfile's, and safetensors'
//! own) are created 0600 and temporary directories 0700, safe while partial, and would keep
//! those modes after their rename into place.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The mode `File::create` gives a new file in `dir`: 0o666 less the process's umask.
pub fn created_file_mode(dir: &Path) -> io::Result<u32> {
    let probe = dir.join(format!(".llmprune-mode-probe-{}", std::process::id()));
    let file = std::fs::File::create(&probe)?;
    let mode = file.metadata().map(|m| m.permissions().mode() & 0o777);
    drop(file);
    std::fs::remove_file(&probe)?;
    mode
}

/// A directory's mode beside files of `file_mode`: searchable wherever readable.
fn directory_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}

/// Gives `path` (a file, or a directory and everything under it) the modes of files and
/// directories created in `path`'s parent.
pub fn as_created(path: &Path) -> io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mode = created_file_mode(parent)?;
    apply(path, mode)
}

fn apply(path: &Path, file_mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(directory_mode(file_mode)))?;
        for entry in std::fs::read_dir(path)? {
            apply(&entry?.path(), file_mode)?;
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(file_mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_get_the_modes_of_files_created_beside_them() {
        let tmp = tempfile::tempdir().unwrap();
        let want = created_file_mode(tmp.path()).unwrap();
        let out = tempfile::Builder::new().tempdir_in(tmp.path()).unwrap().keep();
        std::fs::create_dir(out.join("adapter")).unwrap();
        let weights = tempfile::NamedTempFile::new_in(out.join("adapter")).unwrap().persist(out.join("adapter/w.safetensors")).unwrap();
        drop(weights);
        assert_eq!(std::fs::metadata(out.join("adapter/w.safetensors")).unwrap().permissions().mode() & 0o777, 0o600);
        as_created(&out).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out.join("adapter/w.safetensors")), want);
        assert_eq!(mode(&out), directory_mode(want));
        assert_eq!(mode(&out.join("adapter")), directory_mode(want));
        assert_eq!(directory_mode(0o644), 0o755);
        assert_eq!(directory_mode(0o600), 0o700);
    }
}
