//! Population-based training (Jaderberg et al. 2017), asynchronous as Ray Tune's: the
//! `[random]` draw gives `population` members, each a run of the sweep trained in pieces of
//! `interval` steps by ordinary `sweep-worker`s (the worker pauses it at each boundary). Before a
//! member's next piece, it is ranked against every member that has reached the same boundary
//! (their val loss there); in the bottom `quantile` it copies a top member's checkpoint (weights,
//! optimizer state, carried state and data position) and config, then explores: each explored
//! key is drawn anew with probability `resample`, else multiplied by one of `factors` (a choice
//! moves to a neighbour), inside its domain.
//!
//! Every decision is a pure function of (seed, member, step, the ranking it saw) and is written
//! to the manifest before it is acted on, and acting on it is idempotent: a sweep killed at any
//! point and run again applies what was decided and decides nothing twice. A member's weights at
//! a boundary are kept (`checkpoints/pbt-<step>.safetensors`) until every member has passed it,
//! so a copy always takes the donor as it was ranked.
//!
//! Three rooms: [`policy`] decides (pure: rankings in, a donor and new values out),
//! [`population`] acts on the run directories (snapshots, the copy, tidying), [`lineage`] reads
//! what was decided back (the log's lines, compare's column, the schedule scalars, the replay).

mod lineage;
mod policy;
mod population;

pub use lineage::{ancestry, describe, lineage, lineage_text, replay, schedule};
pub use policy::{decide, explore_value, pick_donor, quantile_count, Outcome};
pub use population::{current_config, Population};
