//! Where a tokenizer comes from: a file or folder of the workspace, the local
//! Hugging Face cache, or training on the train split.

use std::path::Path;

use anyhow::{Context, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GPT-2's end-of-text token, which GPT-Neo also uses as its only special token.
const END_OF_TEXT: &str = "<|endoftext|>";

/// Where the tokenizer comes from (exactly one key).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenizerSource {
    /// A `tokenizer.json`, a `vocab.json` (with `merges.txt` beside it), or a
    /// folder holding either; relative to the manifest's folder.
    Path(String),
    /// A Hugging Face repository id (e.g. `EleutherAI/gpt-neo-125m`), read
    /// from the local Hugging Face cache, downloaded into it first when missing
    /// (unless `HF_HUB_OFFLINE` is set).
    Hub(String),
    /// One of pipe's embedded pretrained models (`all-MiniLM-L6-v2`): its own tokenizer.
    Embedded(String),
    /// A byte-level BPE trained on the train split.
    Train(TrainOptions),
}

/// How to train a byte-level BPE.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct TrainOptions {
    /// The vocabulary size, the 256 byte tokens and `<|endoftext|>` included.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// How often a pair must occur to be merged.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
}

fn default_vocab_size() -> usize {
    8192
}

fn default_min_frequency() -> u64 {
    2
}

/// Loads a tokenizer from a `tokenizer.json`, a `vocab.json` + `merges.txt`
/// pair, or a folder holding either. `shown` names `path` in errors.
pub(crate) fn load_path(path: &Path, shown: &str) -> anyhow::Result<Tokenizer> {
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return from_json(&json, &format!("{shown}/tokenizer.json"));
        }
        let vocab = path.join("vocab.json");
        if vocab.is_file() {
            return byte_level_bpe(&vocab, &path.join("merges.txt"), shown);
        }
        bail!("{shown} holds neither `tokenizer.json` nor `vocab.json` + `merges.txt`");
    }
    if !path.exists() {
        bail!("tokenizer {shown} does not exist");
    }
    if path.file_name().is_some_and(|n| n == "vocab.json") {
        let merges = path.with_file_name("merges.txt");
        return byte_level_bpe(path, &merges, shown);
    }
    from_json(path, shown)
}

fn from_json(path: &Path, shown: &str) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{shown} is not a valid tokenizer.json: {e}"))
}

/// A GPT-2 style byte-level BPE from its `vocab.json` and `merges.txt`,
/// configured as GPT-2's `tokenizer.json` is: no prefix space, GPT-2's split
/// regex, `<|endoftext|>` special when the vocabulary has it.
fn byte_level_bpe(vocab: &Path, merges: &Path, shown: &str) -> anyhow::Result<Tokenizer> {
    if !merges.is_file() {
        bail!("{shown}: `vocab.json` needs `merges.txt` beside it, and there is none");
    }
    let (Some(vocab_str), Some(merges_str)) = (vocab.to_str(), merges.to_str()) else {
        bail!("{shown}: the path is not valid UTF-8");
    };
    let model = BPE::from_file(vocab_str, merges_str)
        .build()
        .map_err(|e| anyhow::anyhow!("{shown}: cannot read vocab.json + merges.txt: {e}"))?;
    let has_end_of_text = tokenizers::Model::token_to_id(&model, END_OF_TEXT).is_some();
    let mut tokenizer = byte_level_pipeline(model);
    if has_end_of_text {
        tokenizer
            .add_special_tokens([AddedToken::from(END_OF_TEXT, true)])
            .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    }
    Ok(tokenizer)
}

/// A tokenizer around `model` with GPT-2's byte-level pre-tokenizer,
/// post-processor and decoder.
fn byte_level_pipeline(model: impl Into<ModelWrapper>) -> Tokenizer {
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, false, true)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer
}

/// Loads the tokenizer of hub repository `repo` from the local cache.
pub(crate) fn load_hub(cache: &Path, repo: &str) -> anyhow::Result<Tokenizer> {
    let cached = |file| pipe_models::hub::cached_file(cache, repo, file);
    if let Some(json) = cached("tokenizer.json") {
        return from_json(&json, &format!("{repo}/tokenizer.json"));
    }
    if let (Some(vocab), Some(merges)) = (cached("vocab.json"), cached("merges.txt")) {
        return byte_level_bpe(&vocab, &merges, repo);
    }
    bail!(
        "the tokenizer of `{repo}` is not in the Hugging Face cache ({}); download it with \
         `hf download {repo} tokenizer.json` (or `huggingface-cli download {repo} tokenizer.json`), \
         or point `tokenizer: {{ path: ... }}` at a local copy",
        cache.display()
    )
}

/// The longest pre-token, in bytes of the text, that BPE training sees: longer ones (a
/// megabyte of base64 in one CSV cell) are cut into pieces of this size. The trainer's
/// work per merge grows with the length of the words holding the merged pair, so one
/// long word made training quadratic; pieces keep it linear in the text, and merges
/// never span more than this anyway. Encoding is not cut: the trained tokenizer splits
/// text as GPT-2 does.
pub(crate) const MAX_TRAINING_PRE_TOKEN: usize = 256;

/// The pre-tokenizer of training: GPT-2's byte-level pre-tokenizer, each of its pieces
/// then cut into runs of at most [`MAX_TRAINING_PRE_TOKEN`] characters (one character
/// per byte of the text after the byte-level mapping).
fn training_pre_tokenizer() -> anyhow::Result<PreTokenizerWrapper> {
    let pattern = format!(".{{1,{MAX_TRAINING_PRE_TOKEN}}}");
    let cut = Split::new(
        SplitPattern::Regex(pattern),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow::anyhow!("cannot build the training pre-tokenizer: {e}"))?;
    Ok(Sequence::new(vec![ByteLevel::new(false, true, true).into(), cut.into()]).into())
}

/// Trains a byte-level BPE on `texts`. The result depends only on the texts
/// and their order, not on thread scheduling: the trainer's merges are
/// ordered by count, then by token ids. Pre-tokens are capped at
/// [`MAX_TRAINING_PRE_TOKEN`] bytes; `on_text` is called once per text read.
pub(crate) fn train<'a>(
    options: &TrainOptions,
    texts: impl Iterator<Item = &'a str> + Send,
    on_text: &(dyn Fn() + Sync),
) -> anyhow::Result<Tokenizer> {
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(options.vocab_size)
            .min_frequency(options.min_frequency)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build(),
    );
    let mut training = byte_level_pipeline(BPE::default());
    training.with_pre_tokenizer(Some(training_pre_tokenizer()?));
    training
        .train(&mut trainer, texts.inspect(|_| on_text()))
        .map_err(|e| anyhow::anyhow!("cannot train the tokenizer: {e}"))
        .context("training a byte-level BPE on the train split")?;
    let mut tokenizer = byte_level_pipeline(training.get_model().clone());
    tokenizer
        .add_special_tokens([AddedToken::from(END_OF_TEXT, true)])
        .map_err(|e| anyhow::anyhow!("cannot add {END_OF_TEXT} to the tokenizer: {e}"))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn options() -> TrainOptions {
        TrainOptions {
            vocab_size: 300,
            min_frequency: 2,
        }
    }

    /// A ~1 MB run of letters without whitespace, as a base64 cell would be.
    fn long_token() -> String {
        let mut state = 7u64;
        (0..1_000_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (b'a' + ((state >> 33) % 26) as u8) as char
            })
            .collect()
    }

    #[test]
    fn training_sees_no_pre_token_longer_than_the_cap() {
        let text = format!("short words {} and more", long_token());
        let mut pre = PreTokenizedString::from(text.as_str());
        training_pre_tokenizer()
            .unwrap()
            .pre_tokenize(&mut pre)
            .unwrap();
        let splits = pre.get_splits(OffsetReferential::Original, OffsetType::Byte);
        let longest = splits.iter().map(|(_, (a, b), _)| b - a).max().unwrap();
        assert_eq!(longest, MAX_TRAINING_PRE_TOKEN);
        let covered: usize = splits.iter().map(|(_, (a, b), _)| b - a).sum();
        assert_eq!(covered, text.len(), "the pieces cover the whole text");
    }

    #[test]
    fn the_cap_changes_nothing_for_ordinary_text() {
        let texts: Vec<String> = (0..300)
            .map(|i| format!("row number {i} says hello to {} friends", i % 17))
            .collect();
        let capped = train(&options(), texts.iter().map(String::as_str), &|| {}).unwrap();
        // What training did before the cap: the tokenizer's own pre-tokenizer.
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .vocab_size(300)
                .min_frequency(2)
                .show_progress(false)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
                .build(),
        );
        let mut plain = byte_level_pipeline(BPE::default());
        plain
            .train(&mut trainer, texts.iter().map(String::as_str))
            .unwrap();
        assert_eq!(
            capped.to_string(false).unwrap(),
            plain.to_string(false).unwrap()
        );
    }

    #[test]
    fn a_megabyte_token_trains_and_encodes_to_valid_ids() {
        let long = long_token();
        let texts = ["a few ordinary words", long.as_str(), "more ordinary words"];
        let tokenizer = train(&options(), texts.into_iter(), &|| {}).unwrap();
        let vocab = tokenizer.get_vocab_size(true) as u32;
        let encoding = tokenizer.encode(long.as_str(), false).unwrap();
        assert!(!encoding.get_ids().is_empty());
        assert!(encoding.get_ids().iter().all(|&id| id < vocab));
        let decoded = tokenizer.decode(encoding.get_ids(), false).unwrap();
        assert_eq!(decoded, long);
    }
}
