//! Group commit: one fsync covers every line written before it started, so requests that
//! wait at the same time share it instead of queueing one fsync each.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::telemetry::{AUDIT_SYNCS, AUDIT_SYNC_SECONDS};

/// Lines are numbered from 1 in the order they were written; `synced` is the highest number
/// known to be on disk. One caller at a time (the holder of `turn`) runs an fsync.
///
/// A failed fsync stops the log for good: the kernel may have dropped the lines it did not
/// write and report a later fsync as a success, so no line that was not on disk before the
/// failure is ever confirmed (as PostgreSQL does after an fsync failure, only a restart
/// recovers).
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    synced: AtomicU64,
    failed: AtomicBool,
    turn: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Returns once line `number` is on disk. If no finished fsync covers it, waits for its
    /// turn; `plan`, given the highest line already on disk, returns the number of the last
    /// line written so far and the blocking fsync that makes it durable, which then runs
    /// off the async workers.
    pub(super) async fn cover<S>(
        &self,
        number: u64,
        plan: impl FnOnce(u64) -> (u64, S),
    ) -> io::Result<()>
    where
        S: FnOnce() -> io::Result<()> + Send + 'static,
    {
        if self.synced.load(Ordering::Acquire) >= number {
            return Ok(());
        }
        let _turn = self.turn.lock().await;
        let synced = self.synced.load(Ordering::Acquire);
        if synced >= number {
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier fsync of the audit log failed; restart the server",
            ));
        }
        let (upto, fsync) = plan(synced);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(fsync)
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        if let Err(e) = result {
            self.failed.store(true, Ordering::Release);
            tracing::error!(
                error = %e,
                "fsync of the audit log failed: no key is handed out until the server restarts"
            );
            return Err(e);
        }
        metrics::counter!(AUDIT_SYNCS).increment(1);
        metrics::histogram!(AUDIT_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fsync_covers_every_line_written_while_the_previous_one_ran() {
        let commit = Arc::new(GroupCommit::default());
        let written = Arc::new(AtomicU64::new(0));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let waiters: Vec<_> = (0..200)
            .map(|_| {
                let (commit, written, fsyncs) = (
                    Arc::clone(&commit),
                    Arc::clone(&written),
                    Arc::clone(&fsyncs),
                );
                tokio::spawn(async move {
                    let number = written.fetch_add(1, Ordering::SeqCst) + 1;
                    commit
                        .cover(number, |_| {
                            (written.load(Ordering::SeqCst), move || {
                                std::thread::sleep(Duration::from_millis(10));
                                fsyncs.fetch_add(1, Ordering::SeqCst);
                                Ok(())
                            })
                        })
                        .await
                })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        let fsyncs = fsyncs.load(Ordering::SeqCst);
        assert!((1..=10).contains(&fsyncs), "200 lines took {fsyncs} fsyncs");
        assert_eq!(commit.synced.load(Ordering::SeqCst), 200);
    }

    #[tokio::test]
    async fn after_a_failed_fsync_only_lines_on_disk_before_it_are_confirmed() {
        let commit = GroupCommit::default();
        commit.cover(1, |_| (1, || Ok(()))).await.unwrap();
        let failed = commit
            .cover(2, |synced| {
                assert_eq!(synced, 1);
                (3, || Err(io::Error::other("disk gone")))
            })
            .await;
        assert!(failed.is_err());
        let unreachable =
            |_| -> (u64, fn() -> io::Result<()>) { panic!("no fsync after a failure") };
        commit.cover(1, unreachable).await.unwrap();
        for number in [2, 3, 4] {
            assert!(commit.cover(number, unreachable).await.is_err());
        }
    }
}
