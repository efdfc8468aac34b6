//! Where an output goes and how it appears: the output directory is checked and
//! created, the name is chosen (the user's, or `<model>-<level>`), and the output is
//! built under a temporary name — `<name>.tmp` for a file (the GGUF stream writer's),
//! `.<name>.partial` for a folder — that is renamed to the final name only once it is
//! complete and checked. A failed run removes its temporary output, except a GGUF
//! `.tmp` that a checkpoint can resume into; nothing a reader would take for a model
//! is left behind.

use crate::error::{PipelineError, Result};
use std::path::{Path, PathBuf};

/// Whether the output is one file or a folder of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    File,
    Folder,
}

/// The checked output directory, created if missing.
pub fn prepare_output_dir(out_dir: &Path) -> Result<()> {
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(PipelineError::invalid(
            format!(
                "output directory {} exists and is not a directory",
                out_dir.display()
            ),
            "Choose another --output-dir",
        ));
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| PipelineError::io("cannot create output directory", out_dir, &e))
}

/// The final path: `out_dir/<requested or default name>`, with the name checked.
pub fn output_path(
    out_dir: &Path,
    requested: Option<&str>,
    default: String,
    kind: OutputKind,
) -> Result<PathBuf> {
    let name = match requested {
        Some(n) if n.contains('/') || n.is_empty() => return Err(bad_name(n, kind)),
        Some(n) if kind == OutputKind::Folder && n.starts_with('.') => {
            return Err(bad_name(n, kind))
        }
        Some(n) => n.to_string(),
        None => default,
    };
    Ok(out_dir.join(name))
}

fn bad_name(n: &str, kind: OutputKind) -> PipelineError {
    match kind {
        OutputKind::File => PipelineError::invalid(
            format!("--output-name `{n}` must be a plain file name"),
            "e.g. -n model-Q4_K_M.gguf",
        ),
        OutputKind::Folder => PipelineError::invalid(
            format!("--output-name `{n}` must be a plain folder name"),
            "e.g. -n model-gptq-4bit",
        ),
    }
}

/// Refuse an output that would replace its own source.
pub fn refuse_source_as_output(output: &Path, source: &Path) -> Result<()> {
    let same = match (output.canonicalize(), source.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same {
        return Err(PipelineError::invalid(
            format!("the output {} is the source model", output.display()),
            "Choose another --output-dir or --output-name",
        ));
    }
    Ok(())
}

/// A folder output being built under `.<name>.partial`.
pub struct StagedFolder {
    pub tmp: PathBuf,
    pub final_dir: PathBuf,
}

impl StagedFolder {
    /// A fresh, empty temporary folder for `final_dir` (a stale one is removed).
    pub fn create(final_dir: &Path) -> Result<StagedFolder> {
        let parent = final_dir.parent().unwrap_or(Path::new("."));
        let name = final_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| PipelineError::io("cannot remove stale partial output", &tmp, &e))?;
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| PipelineError::io("cannot create output folder", &tmp, &e))?;
        Ok(StagedFolder {
            tmp,
            final_dir: final_dir.to_path_buf(),
        })
    }

    /// Remove the temporary folder (the run failed).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }

    /// Put the complete folder in place, replacing an earlier output of that name.
    pub fn commit(self) -> Result<PathBuf> {
        if self.final_dir.exists() {
            std::fs::remove_dir_all(&self.final_dir).map_err(|e| {
                PipelineError::io("cannot replace earlier output", &self.final_dir, &e)
            })?;
        }
        std::fs::rename(&self.tmp, &self.final_dir).map_err(|e| {
            PipelineError::io("cannot rename the finished output to", &self.final_dir, &e)
        })?;
        if let Some(p) = self.final_dir.parent() {
            if let Ok(d) = std::fs::File::open(p) {
                let _ = d.sync_all();
            }
        }
        Ok(self.final_dir)
    }

    /// Bytes of the model files (safetensors) in the finished folder.
    pub fn model_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_folders_are_renamed_only_when_committed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        prepare_output_dir(&out).unwrap();
        assert!(output_path(&out, Some("a/b"), "x".into(), OutputKind::File).is_err());
        assert!(output_path(&out, Some(".h"), "x".into(), OutputKind::Folder).is_err());
        assert_eq!(
            output_path(&out, None, "m-gptq-4bit".into(), OutputKind::Folder).unwrap(),
            out.join("m-gptq-4bit")
        );
        let f = out.join("m");
        let s = StagedFolder::create(&f).unwrap();
        std::fs::write(s.tmp.join("model.safetensors"), b"1234").unwrap();
        assert!(!f.exists(), "nothing under the final name before commit");
        let done = s.commit().unwrap();
        assert_eq!(StagedFolder::model_bytes(&done), 4);
        assert!(!out.join(".m.partial").exists());
        let s = StagedFolder::create(&f).unwrap();
        s.discard();
        assert!(!out.join(".m.partial").exists() && f.exists());
        assert!(refuse_source_as_output(&f, &f).is_err());
        let file = out.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_output_dir(&file).is_err());
    }
}
