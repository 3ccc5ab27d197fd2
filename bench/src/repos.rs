//! Listing the repository library while sizes are being computed, in process: 300 small
//! repositories and one with 200 000 files (whose size takes the background walker a while),
//! `ListRepos` timed from the first call on.
//!
//! Run: `cargo run --release -p chamberlain-bench -- repos`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chamberlain_actors::as_user::Runner;
use chamberlain_actors::isolation::{Isolation, IsolationConfig, IsolationMode};
use chamberlain_actors::repos::{ListRepos, RepoLibrary};
use chamberlain_actors::{Homes, UsersRoot};

pub fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("repos");
    for i in 0..300 {
        let repo = root.join(format!("repo-{i:03}"));
        std::fs::create_dir_all(&repo)?;
        std::fs::write(repo.join("README"), format!("repo {i}"))?;
    }
    let huge = root.join("huge");
    for d in 0..200 {
        let sub = huge.join(format!("d{d}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..1000 {
            std::fs::File::create(sub.join(format!("f{f}")))?;
        }
    }
    let isolation = Arc::new(Isolation::new(IsolationConfig {
        mode: IsolationMode::None,
        uid_range: (0, 0),
        uid_map: dir.path().join("uids.json"),
        accounts: None,
        read_only: vec![],
        limits: Default::default(),
    })?);
    let system = actix::System::new();
    system.block_on(async move {
        let library = actix::Actor::start(RepoLibrary::new(
            root,
            Arc::new(Homes::new(
                UsersRoot::new(dir.path().join("users")),
                isolation,
                Runner::in_process(),
                dir.path().join("auth.json"),
            )),
            4,
        ));
        let mut while_sizing = Vec::new();
        let mut after = Vec::new();
        let started = Instant::now();
        let mut huge_sized_after = None;
        while started.elapsed() < Duration::from_secs(60) {
            let t = Instant::now();
            let repos = library.send(ListRepos).await?;
            let took = t.elapsed().as_micros() as u64;
            let huge_known = repos
                .iter()
                .any(|r| r.name == "huge" && r.size_bytes.is_some());
            if huge_known {
                huge_sized_after.get_or_insert(started.elapsed());
                after.push(took);
                if after.len() >= 200 {
                    break;
                }
            } else {
                while_sizing.push(took);
            }
        }
        report(
            "while the huge repository is being sized",
            &mut while_sizing,
        );
        report("once every size is known", &mut after);
        if let Some(t) = huge_sized_after {
            println!(
                "  the huge repository's size arrived after {:.0} ms",
                t.as_secs_f64() * 1000.0
            );
        }
        anyhow::Ok(())
    })
}

fn report(what: &str, us: &mut [u64]) {
    us.sort_unstable();
    if us.is_empty() {
        println!("  {what}: no samples");
        return;
    }
    let at = |p: f64| us[((us.len() - 1) as f64 * p) as usize];
    println!(
        "  list of 301 repositories, {what}: {} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        us.len(),
        at(0.5) as f64 / 1000.0,
        at(0.99) as f64 / 1000.0,
        us[us.len() - 1] as f64 / 1000.0
    );
}
