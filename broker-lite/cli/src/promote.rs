//! `broker-lite promote`: make a running follower the leader (issue 13), online.
//!
//! The call goes to the follower named by `--addr` (one address: it must not move along a list
//! to another node). See the README's failover runbook for when and how.

use anyhow::{Context, Result, bail};
use broker_lite_client::protocol::{PromoteRequest, Promotion};
use broker_lite_client::{Admin, AdminConfig};
use clap::Args;

/// `promote` flags.
#[derive(Debug, Args)]
pub(crate) struct PromoteArgs {
    /// Promote even when the follower is not in sync; prints what may be lost.
    #[arg(long, conflicts_with = "dry_run")]
    force: bool,
    /// Only report whether the follower is in sync and what a promotion would lose.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `promote` against the follower at `address`.
pub(crate) async fn run(address: &str, args: PromoteArgs) -> Result<()> {
    if address.contains(';') || address.contains(',') {
        return Err(crate::exit::Exit::input(format!(
            "promote needs the address of the one follower to promote, not a list ({address}): \
             pass --addr host:port"
        ))
        .into());
    }
    let mut config = AdminConfig::default();
    // BROKER_LITE_USER / _PASSWORD(_FILE) / _TLS_CA: the user needs the admin permission.
    config.security = broker_lite_client::Security::from_env()?;
    let admin = Admin::connect(address, config)
        .await
        .with_context(|| format!("cannot reach the follower at {address}"))?;
    let request = PromoteRequest {
        force: args.force,
        dry_run: args.dry_run,
    };
    let p = admin.promote(request).await?;
    print_standing(&p);
    if p.promoted {
        println!(
            "promoted: this node leads epoch {} from log position {}",
            p.epoch, p.position
        );
        if !p.in_sync {
            println!("forced: may be lost: {}", p.loss());
        }
    } else if args.dry_run {
        println!(
            "not promoted (dry run); a promotion would lose {}",
            p.loss()
        );
    } else {
        bail!("the follower did not promote itself and gave no reason");
    }
    Ok(())
}

fn print_standing(p: &Promotion) {
    println!(
        "in sync:             {}",
        if p.in_sync { "yes" } else { "no" }
    );
    println!("position:            {}", p.position);
    println!(
        "leader log end:      {} ({} bytes behind)",
        p.leader_log_end,
        p.lag_bytes()
    );
    println!(
        "leader acknowledged: up to {} ({} bytes not held here)",
        p.leader_acked_end,
        p.unreplicated_bytes()
    );
    println!("contact:             {}", p.contact());
}
