//! Group commit: one fsync covers every line written before it started, so requests that
//! wait at the same time share it instead of queueing one fsync each.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::telemetry::{AUDIT_SYNCS, AUDIT_SYNC_SECONDS};

/// Lines are numbered from 1 in the order they were written; `synced` is the highest number
/// known to be on disk. One caller at a time (the holder of `turn`) runs an fsync.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    synced: AtomicU64,
    turn: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Returns once line `number` is on disk. If no finished fsync covers it, waits for its
    /// turn; `plan`, given the highest line already on disk, returns the number of the last
    /// line written so far and the blocking fsync that makes it durable, which then runs
    /// off the async workers. An fsync error goes to the caller that ran it; later callers
    /// try again.
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
        let (upto, fsync) = plan(synced);
        let started = Instant::now();
        tokio::task::spawn_blocking(fsync)
            .await
            .map_err(io::Error::other)??;
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
    async fn a_failed_fsync_fails_its_caller_and_the_next_caller_tries_again() {
        let commit = GroupCommit::default();
        let failed = commit
            .cover(1, |synced| {
                assert_eq!(synced, 0);
                (1, || Err(io::Error::other("disk gone")))
            })
            .await;
        assert!(failed.is_err());
        commit
            .cover(1, |synced| {
                assert_eq!(synced, 0, "a failed fsync moves nothing forward");
                (2, || Ok(()))
            })
            .await
            .unwrap();
        let unreachable = |_| -> (u64, fn() -> io::Result<()>) { panic!("line 2 is on disk") };
        commit.cover(2, unreachable).await.unwrap();
    }
}
