//! `charlab sweep --dry-run`: what a sweep would run, without running it: one line per listed
//! trial with its swept values, or a search's settings and the domains it draws from.

use super::plan::{self, Plan};
use crate::table::{render, Format};
use std::path::Path;

/// What `--dry-run` says of a TPE search: its settings and the domains it searches.
fn dry_run_search(plan: &Plan, tpe: &plan::TpeSearch, root: &Path) -> String {
    let headers: Vec<String> = ["key", "domain"].map(String::from).to_vec();
    let lines: Vec<Vec<String>> = plan
        .space
        .random
        .iter()
        .map(|(k, s)| vec![k.clone(), s.to_string()])
        .collect();
    let wide = match (tpe.explore > 0.0, tpe.explore_fade) {
        (false, _) => String::new(),
        (true, 0) => format!(
            ", {:.0} % of them from the whole space",
            100.0 * tpe.explore
        ),
        (true, fade) => format!(
            ", {:.0} % of them from the whole space at first, falling to none over {fade} \
             proposals",
            100.0 * tpe.explore
        ),
    };
    format!(
        "{}TPE search: {} trials ({} random first, {} candidates each{wide}), minimising best {} \
         → {}/",
        render(&headers, &lines, Format::Table),
        tpe.trials,
        tpe.startup,
        tpe.candidates,
        tpe.metric.name(),
        root.display()
    )
}

/// The table `--dry-run` prints: one line per trial with its swept values (or, for a TPE
/// search, its settings and domains), and the pruning rule's line where there is one.
/// `runs_root` is where the experiment would go (`--runs`).
pub fn dry_run_table(plan: &Plan, runs_root: &Path) -> String {
    let root = runs_root.join(&plan.experiment.name);
    let pruning =
        (plan.experiment.pruning.as_ref()).map_or(String::new(), |p| format!("\n{}", p.describe()));
    if let Some(tpe) = &plan.search {
        return dry_run_search(plan, tpe, &root) + &pruning;
    }
    let mut out = String::new();
    let keys: Vec<&str> = plan.swept.iter().map(|(k, _)| k.as_str()).collect();
    let rows: Vec<Vec<String>> = plan
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut row = vec![i.to_string(), plan::dir_name(i, t)];
            row.extend(keys.iter().map(|k| {
                t.overrides
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("-".into(), |(_, v)| v.to_string())
            }));
            row
        })
        .collect();
    let mut headers = vec!["trial".to_string(), "run dir".to_string()];
    headers.extend(keys.iter().map(|k| k.to_string()));
    out.push_str(&render(&headers, &rows, Format::Table));
    out.push_str(&format!(
        "{} trials ({} duplicate points collapsed) → {}/",
        plan.trials.len(),
        plan.duplicates,
        root.display()
    ));
    out + &pruning
}
