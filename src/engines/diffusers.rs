//! The diffusers image runner (`engines/diffusers/runner.py`, a Python HTTP server we ship): its argv, as DMR
//! starts its own (`--model-path P --host 127.0.0.1 --port N --served-model-name NAME`; runtime flags are not
//! passed, as in DMR), and where its Python and script are found. Pure functions.

use std::path::{Path, PathBuf};

use super::{Engine, EngineCommand, EngineKind, LaunchSpec, Mode};
use crate::store::{ModelConfig, ModelFormat};

/// The diffusers runner, registered in [`EngineKind::ALL`].
pub const ENGINE: EngineKind = EngineKind::new(&Diffusers);

pub struct Diffusers;

impl Engine for Diffusers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn formats(&self) -> &'static [ModelFormat] {
        &[ModelFormat::Diffusers, ModelFormat::Dduf]
    }

    fn serves(&self, mode: Mode) -> bool {
        mode == Mode::ImageGeneration
    }

    fn resolve(
        &self,
        config: &crate::config::EnginesConfig,
        _path_var: Option<&str>,
        data_dir: &Path,
    ) -> Result<EngineCommand, String> {
        resolve(
            config.diffusers.python.as_deref(),
            config.diffusers.runner.as_deref(),
            data_dir,
        )
    }

    fn argv(&self, spec: &LaunchSpec, port: u16) -> Vec<String> {
        argv(spec, port)
    }

    /// Images have no context.
    fn context_size(&self, _asked: Option<u32>, _model: &ModelConfig) -> u32 {
        0
    }

    fn install_dir(&self, data_dir: &Path) -> PathBuf {
        install_dir(data_dir)
    }

    fn install_recipe(&self) -> &'static [(&'static str, &'static str)] {
        &[
            (
                "install.sh",
                include_str!("../../engines/diffusers/install.sh"),
            ),
            (
                "requirements.txt",
                include_str!("../../engines/diffusers/requirements.txt"),
            ),
            (
                "runner.py",
                include_str!("../../engines/diffusers/runner.py"),
            ),
        ]
    }
}

/// The engine's name in URLs (`/engines/diffusers/v1/images/generations`) and in `/engines/ps`.
pub const NAME: &str = "diffusers";

/// Arguments after `python runner.py`.
pub fn argv(spec: &LaunchSpec, port: u16) -> Vec<String> {
    vec![
        "--model-path".into(),
        spec.model_path.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--served-model-name".into(),
        spec.model_name.clone(),
    ]
}

/// The Python and runner script: as configured, else those `engines/diffusers/install.sh` installs
/// (`<data dir>/engines/diffusers/bin/python` and `.../runner.py`).
pub fn resolve(
    python: Option<&Path>,
    runner: Option<&Path>,
    data_dir: &Path,
) -> Result<EngineCommand, String> {
    let dir = install_dir(data_dir);
    let python = python.map_or_else(|| dir.join("bin/python"), Path::to_path_buf);
    let runner = runner.map_or_else(|| dir.join("runner.py"), Path::to_path_buf);
    if !super::is_executable(&python) {
        return Err(format!(
            "the diffusers runner's Python {} is not an executable file; install it with engines/diffusers/install.sh",
            python.display()
        ));
    }
    if !runner.is_file() {
        return Err(format!(
            "the diffusers runner {} does not exist; install it with engines/diffusers/install.sh",
            runner.display()
        ));
    }
    Ok(EngineCommand {
        program: python,
        prefix: vec![runner.display().to_string()],
    })
}

pub fn install_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("engines/diffusers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeepAlive;

    #[test]
    fn the_command_line_is_dmrs_and_flags_are_not_passed() {
        let spec = LaunchSpec {
            model_name: "ai/sd:latest".into(),
            engine: ENGINE,
            model_path: "/b/model/sd.dduf".into(),
            chat_template: None,
            mmproj: None,
            mode: Mode::ImageGeneration,
            context_size: 0,
            runtime_flags: vec!["--x".into()],
            keep_alive: KeepAlive::DEFAULT,
            pinned: false,
            vllm: Default::default(),
            draft: None,
        };
        assert_eq!(
            argv(&spec, 9),
            [
                "--model-path",
                "/b/model/sd.dduf",
                "--host",
                "127.0.0.1",
                "--port",
                "9",
                "--served-model-name",
                "ai/sd:latest"
            ]
        );
    }
}
