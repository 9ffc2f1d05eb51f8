//! `broker-lite dlq redrive`: dead letters sent back page by page, with progress.
//!
//! One `REDRIVE_DEAD_LETTERS` call for a whole queue answers only at the end, and an operator
//! re-driving thousands of messages in an incident sees nothing until then. So the command lists
//! the group's pending dead letters a page at a time and re-drives each page by its ids, showing
//! a progress bar on a terminal and a line per page otherwise (a log or a pipe). A re-driven
//! dead letter leaves the pending listing; one that fails again and comes back is not re-driven a
//! second time by the same command, so the command always ends.

use std::collections::HashSet;
use std::io::IsTerminal;

use anyhow::{Context, Result};
use broker_lite_client::Admin;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

/// Dead letters listed and re-driven per call.
const PAGE: u32 = 100;

/// Re-drives the dead letters of `group` (only `ids`, when given); returns how many.
pub(crate) async fn redrive(admin: &Admin, group: &str, ids: Vec<Uuid>) -> Result<u64> {
    let progress = Progress::new(group, (!ids.is_empty()).then_some(ids.len() as u64));
    let mut redriven = 0;
    if ids.is_empty() {
        let mut seen = HashSet::new();
        loop {
            let page: Vec<Uuid> = admin
                .dead_letters(group, PAGE)
                .await
                .with_context(|| format!("listing the dead letters of group {group}"))?
                .into_iter()
                .map(|m| m.message_id)
                .filter(|id| seen.insert(*id))
                .collect();
            if page.is_empty() {
                break;
            }
            redriven += redrive_page(admin, group, page).await?;
            progress.show(redriven);
        }
    } else {
        for page in ids.chunks(PAGE as usize) {
            redriven += redrive_page(admin, group, page.to_vec()).await?;
            progress.show(redriven);
        }
    }
    progress.finish();
    Ok(redriven)
}

async fn redrive_page(admin: &Admin, group: &str, ids: Vec<Uuid>) -> Result<u64> {
    admin
        .redrive_dead_letters(group, ids)
        .await
        .with_context(|| {
            format!(
                "re-driving dead letters of group {group} (the pages before this one were \
             re-driven; run the command again for the rest)"
            )
        })
}

/// A bar on a terminal, a line per page elsewhere.
struct Progress {
    group: String,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(group: &str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            let template = match total {
                Some(_) => "re-driving {bar:40} {pos}/{len} ({per_sec})",
                None => "re-driving {spinner} {pos} so far ({per_sec})",
            };
            bar.with_style(ProgressStyle::with_template(template).expect("a valid template"))
        });
        Self {
            group: group.to_owned(),
            bar,
        }
    }

    fn show(&self, redriven: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(redriven),
            None => eprintln!(
                "re-driven {redriven} dead letters of group {} so far",
                self.group
            ),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
