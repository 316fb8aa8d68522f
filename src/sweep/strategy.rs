//! What decides a sweep's trials, behind one interface whatever the method: the trials listed
//! up front (a grid, random draws, `refine`), a TPE search that proposes each next trial from
//! the results so far ([`super::search`]), or a population whose members are decided on between
//! pieces ([`super::pbt`]). The engine ([`super::engine`]) asks it the same questions at the same
//! moments for every launcher, as Ray Tune's runner asks its searcher and scheduler.

use super::manifest::Manifest;
use super::pbt::Population;
use super::plan::Plan;
use super::search::Proposer;
use crate::error::Result;
use std::path::{Path, PathBuf};

/// A sweep's method of choosing what runs next.
pub enum Strategy<'a> {
    /// Every trial is in the manifest from the start.
    List,
    /// Proposes trials one by one as results come in.
    Tpe(Proposer<'a>),
    /// Decides on each member at its boundaries.
    Pbt(Population<'a>),
}

impl<'a> Strategy<'a> {
    /// The strategy `plan` asks for.
    pub fn of(plan: &'a Plan, root: &Path) -> Strategy<'a> {
        if let Some(p) = Proposer::new(plan, root) {
            Strategy::Tpe(p)
        } else if let Some(p) = Population::new(plan, root) {
            Strategy::Pbt(p)
        } else {
            Strategy::List
        }
    }

    /// On (re)start, and whenever results may have come in unseen: records what ended while
    /// no one was watching and does what was decided but not done.
    pub fn catch_up(&self, manifest: &mut Manifest) -> Result<()> {
        match self {
            Strategy::List => Ok(()),
            Strategy::Tpe(p) => p.catch_up(manifest),
            Strategy::Pbt(p) => p.catch_up(manifest),
        }
    }

    /// Trials it may still add to the manifest.
    pub fn remaining(&self, manifest: &Manifest) -> usize {
        match self {
            Strategy::Tpe(p) => p.remaining(manifest),
            Strategy::List | Strategy::Pbt(_) => 0,
        }
    }

    /// A new trial, written to the manifest before it runs, with the log's line on what it was
    /// based on; `None` when there is none to add.
    pub fn next(&self, manifest: &mut Manifest) -> Result<Option<(usize, String)>> {
        let Strategy::Tpe(p) = self else {
            return Ok(None);
        };
        Ok(p.propose(manifest)?.map(|i| (i, p.describe(manifest, i))))
    }

    /// Trial `index` ended for good (final or failed): its result is now part of the history.
    pub fn ended(&self, manifest: &mut Manifest, index: usize) -> Result<()> {
        match self {
            Strategy::Tpe(p) => p.finished(manifest, index),
            Strategy::List | Strategy::Pbt(_) => Ok(()),
        }
    }

    /// Trial `index` paused at a boundary: what the others are ranked against is kept. Returns
    /// the boundary's step.
    pub fn paused(&self, manifest: &Manifest, index: usize) -> Result<u64> {
        match self {
            Strategy::Pbt(p) => p.paused(manifest, index),
            Strategy::List | Strategy::Tpe(_) => Ok(0),
        }
    }

    /// The step trial `index` starts its next piece from (0 for a trial run in one piece).
    pub fn stands_at(&self, manifest: &Manifest, index: usize) -> Result<u64> {
        match self {
            Strategy::Pbt(p) => p.stands_at(manifest, index),
            Strategy::List | Strategy::Tpe(_) => Ok(0),
        }
    }

    /// Just before trial `index` (re)starts: a member's decision at its boundary, made and
    /// acted on, with the log's line when it copied.
    pub fn before_start(&self, manifest: &mut Manifest, index: usize) -> Result<Option<String>> {
        match self {
            Strategy::Pbt(p) => p.before_piece(manifest, index),
            Strategy::List | Strategy::Tpe(_) => Ok(None),
        }
    }

    /// The whole population's steps, for a population (its progress counts steps, not trials).
    pub fn population_steps(&self) -> Option<u64> {
        match self {
            Strategy::Pbt(p) => Some(p.total_steps()),
            Strategy::List | Strategy::Tpe(_) => None,
        }
    }

    /// After the last trial: what the method leaves besides the runs (a population's replay
    /// config), with the path written.
    pub fn finish(&self, manifest: &Manifest) -> Result<Option<PathBuf>> {
        match self {
            Strategy::Pbt(p) => p.finish(manifest),
            Strategy::List | Strategy::Tpe(_) => Ok(None),
        }
    }
}
