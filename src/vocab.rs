//! The character vocabulary: char ↔ id. Ids are assigned in code-point order so the same text
//! always gives the same vocabulary, and the vocabulary is saved as JSON beside every run so a run
//! directory can be sampled from without the corpus.

use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// A character vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

#[derive(Serialize, Deserialize)]
struct VocabFile {
    version: u32,
    /// One entry per id, each a one-char string.
    chars: Vec<String>,
}

impl Vocab {
    /// Builds the vocabulary of every distinct char in `text`.
    pub fn build(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    fn from_chars(chars: Vec<char>) -> Self {
        let ids = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Vocab { chars, ids }
    }

    /// Number of distinct chars.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// True for a vocabulary of no chars.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The id of `c`, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<u32> {
        self.ids.get(&c).copied()
    }

    /// The char of `id`.
    pub fn char(&self, id: u32) -> Option<char> {
        self.chars.get(id as usize).copied()
    }

    /// Encodes text; a char outside the vocabulary is an error that names it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.id(c).ok_or_else(|| {
                    Error::Sample(format!(
                        "char {c:?} (U+{:04X}) at position {i} is not in the vocabulary",
                        c as u32
                    ))
                })
            })
            .collect()
    }

    /// Decodes ids (ids outside the vocabulary decode to U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.char(i).unwrap_or('\u{FFFD}'))
            .collect()
    }

    /// The vocabulary as JSON.
    pub fn to_json(&self) -> String {
        let file = VocabFile {
            version: 1,
            chars: self.chars.iter().map(|c| c.to_string()).collect(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Saves the vocabulary as JSON (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::write(path, self.to_json().as_bytes())
    }

    /// Loads a vocabulary saved by [`Vocab::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let bad = |message: String| Error::Run {
            path: path.to_path_buf(),
            message,
        };
        let file: VocabFile =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a vocabulary: {e}")))?;
        let mut chars = Vec::with_capacity(file.chars.len());
        for (i, s) in file.chars.iter().enumerate() {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => return Err(bad(format!("entry {i} is not a single char: {s:?}"))),
            }
        }
        let vocab = Self::from_chars(chars);
        if vocab.ids.len() != vocab.chars.len() {
            return Err(bad("duplicate chars".into()));
        }
        Ok(vocab)
    }
}
