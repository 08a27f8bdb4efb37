//! Counting a source's pooled connections, so that work needing several at once takes
//! them together.
//!
//! A split PostgreSQL scan holds its parts' connections and the one keeping their shared
//! snapshot at the same time. Scans that each took some and waited for the rest would
//! wait on each other for ever once the pool is used up; a hash join's probe side started
//! early holds its connections until the build side is read, and would wait for ever if
//! the build side needed one of them. So a pool hands out [`Slots`]' permits, one per
//! connection it may open, and a [`Reservation`] takes all the permits of one scan at once:
//! when its first connection is asked for, or, for work started early, before it starts
//! ([`reserve_now`]), together with the reservations of what it will wait for.
//!
//! Waiting for permits is bounded by the source's `pool_timeout`, if it has one: a pool
//! too small for the work sent to it then fails queries with an error naming the keys to
//! change, rather than queueing them for as long as the work ahead of them takes.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::{Error, Result};

/// The permits of one pool: as many as the connections it may open.
#[derive(Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    size: usize,
    /// The longest a connection is waited for; for ever if `None`.
    wait: Option<Duration>,
    /// The source's key path in the config (`sources[2]`), for the error when the wait
    /// runs out.
    key: Arc<str>,
}

impl fmt::Debug for Slots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Slots({} of {} free)",
            self.semaphore.available_permits(),
            self.size
        )
    }
}

impl Slots {
    /// Permits for a pool of `size` connections (at least one), waited for at most `wait`,
    /// of the source whose config path is `key`.
    pub fn new(size: usize, wait: Option<Duration>, key: &str) -> Self {
        let size = size.max(1);
        Slots {
            semaphore: Arc::new(Semaphore::new(size)),
            size,
            wait,
            key: key.into(),
        }
    }

    /// The most connections the pool opens.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The permit for one connection, once one is free.
    pub async fn one(&self) -> Result<OwnedSemaphorePermit> {
        self.waited(Arc::clone(&self.semaphore).acquire_owned(), 1)
            .await
    }

    /// The permits `acquiring` gets, or an error naming the keys to change once the wait
    /// for `wanted` of them has taken longer than the pool's limit.
    async fn waited<F>(&self, acquiring: F, wanted: usize) -> Result<OwnedSemaphorePermit>
    where
        F: Future<Output = std::result::Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>,
    {
        let acquired = match self.wait {
            None => acquiring.await,
            Some(wait) => tokio::time::timeout(wait, acquiring).await.map_err(|_| {
                let needed = if wanted == 1 {
                    "a connection".to_string()
                } else {
                    format!("{wanted} connections at once")
                };
                Error::Unavailable(format!(
                    "no free connection in the pool after waiting {}: {needed} wanted, {} \
                     of {} in use; raise `{key}.pool_size`, or `{key}.pool_timeout` to \
                     wait longer",
                    humantime::format_duration(wait),
                    self.size - self.semaphore.available_permits(),
                    self.size,
                    key = self.key,
                ))
            })?,
        };
        Ok(acquired.expect("a pool's semaphore is never closed"))
    }

    /// A reservation of `wanted` connections (at most the pool's size), taken when the
    /// first is asked for.
    pub fn reservation(&self, wanted: usize) -> Reservation {
        Reservation {
            slots: self.clone(),
            wanted: wanted.clamp(1, self.size),
            held: Mutex::new(Held::NotYet),
        }
    }
}

/// The connections one piece of work holds at the same time, reserved together. What is
/// reserved and not yet used returns to the pool when this is dropped.
#[derive(Debug)]
pub struct Reservation {
    slots: Slots,
    wanted: usize,
    held: Mutex<Held>,
}

#[derive(Debug)]
enum Held {
    NotYet,
    /// The permits not yet handed out.
    Reserved(OwnedSemaphorePermit),
}

impl Reservation {
    /// The permit for one of the reserved connections: the first call reserves them all
    /// (waiting until that many are free); beyond what was reserved, a call waits for a
    /// free connection like any other.
    pub async fn take(&self) -> Result<OwnedSemaphorePermit> {
        let reserved = {
            let mut held = self.held.lock().await;
            if matches!(*held, Held::NotYet) {
                let slots = &self.slots;
                let all = slots
                    .waited(
                        Arc::clone(&slots.semaphore).acquire_many_owned(self.wanted as u32),
                        self.wanted,
                    )
                    .await?;
                *held = Held::Reserved(all);
            }
            match &mut *held {
                Held::Reserved(left) => left.split(1),
                Held::NotYet => None,
            }
        };
        match reserved {
            Some(permit) => Ok(permit),
            None => self.slots.one().await,
        }
    }

    /// Takes the permits now if they are all free and nothing was reserved before; never
    /// waits. `Some(true)` if it took them, `Some(false)` if they were reserved already
    /// (or are being reserved), `None` if they are not free.
    fn try_reserve(&self) -> Option<bool> {
        let Ok(mut held) = self.held.try_lock() else {
            return Some(false);
        };
        if !matches!(*held, Held::NotYet) {
            return Some(false);
        }
        let all = Arc::clone(&self.slots.semaphore)
            .try_acquire_many_owned(self.wanted as u32)
            .ok()?;
        *held = Held::Reserved(all);
        Some(true)
    }

    /// Gives back what [`try_reserve`](Self::try_reserve) took, if none of it was used.
    fn unreserve(&self) {
        if let Ok(mut held) = self.held.try_lock()
            && matches!(&*held, Held::Reserved(left) if left.num_permits() == self.wanted)
        {
            *held = Held::NotYet;
        }
    }
}

/// Reserves the connections of work about to start early (`early`) and of what it will
/// wait for (`awaited`) now, or none of them; never waits. Work started early holds its
/// connections until what it waits for is done: with every connection of both reserved
/// first, neither waits for the other's, nor for connections others hold while waiting in
/// turn. `early` must all be unreserved and free. Of `awaited`, those reserved already
/// (their work has started, and holds what it needs) count as reserved.
pub fn reserve_now(early: &[Arc<Reservation>], awaited: &[Arc<Reservation>]) -> bool {
    let mut taken: Vec<&Arc<Reservation>> = Vec::new();
    let mut all = true;
    for (reservation, must_take) in early
        .iter()
        .map(|r| (r, true))
        .chain(awaited.iter().map(|r| (r, false)))
    {
        match reservation.try_reserve() {
            Some(true) => taken.push(reservation),
            Some(false) if !must_take => {}
            _ => {
                all = false;
                break;
            }
        }
    }
    if !all {
        for reservation in taken {
            reservation.unreserve();
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reservation_takes_all_its_permits_at_once() {
        let slots = Slots::new(3, None, "sources[0]");
        let scan = slots.reservation(2);
        let first = scan.take().await.unwrap();
        assert_eq!(slots.semaphore.available_permits(), 1);
        let second = scan.take().await.unwrap();
        assert_eq!(slots.semaphore.available_permits(), 1);
        drop((first, second));
        assert_eq!(slots.semaphore.available_permits(), 3);
        // Beyond what it reserved, it takes free ones one at a time.
        let extra = scan.take().await.unwrap();
        assert_eq!(slots.semaphore.available_permits(), 2);
        drop(extra);
    }

    #[tokio::test]
    async fn reserving_now_takes_all_or_nothing() {
        let slots = Slots::new(4, None, "sources[0]");
        let (build, probe) = (
            Arc::new(slots.reservation(1)),
            Arc::new(slots.reservation(3)),
        );
        let other = slots.one().await.unwrap();
        assert!(!reserve_now(
            std::slice::from_ref(&probe),
            std::slice::from_ref(&build)
        ));
        assert_eq!(slots.semaphore.available_permits(), 3);
        drop(other);
        assert!(reserve_now(
            std::slice::from_ref(&probe),
            std::slice::from_ref(&build)
        ));
        assert_eq!(slots.semaphore.available_permits(), 0);
        // Work started early must take its own now: not if reserved already.
        assert!(!reserve_now(std::slice::from_ref(&probe), &[]));
        let _conn = build.take().await.unwrap();
        drop(probe);
        assert_eq!(slots.semaphore.available_permits(), 3);
    }

    #[tokio::test]
    async fn what_is_awaited_may_have_reserved_first() {
        let slots = Slots::new(4, None, "sources[0]");
        let (build, probe) = (
            Arc::new(slots.reservation(1)),
            Arc::new(slots.reservation(3)),
        );
        // The build side started before the join decided.
        let _conn = build.take().await.unwrap();
        assert!(reserve_now(
            std::slice::from_ref(&probe),
            std::slice::from_ref(&build)
        ));
        assert_eq!(slots.semaphore.available_permits(), 0);
    }

    #[test]
    fn a_reservation_never_exceeds_the_pool() {
        assert_eq!(Slots::new(2, None, "sources[0]").reservation(5).wanted, 2);
        assert_eq!(Slots::new(0, None, "sources[0]").reservation(0).wanted, 1);
    }

    #[tokio::test]
    async fn waiting_longer_than_the_limit_fails_naming_the_keys() {
        let slots = Slots::new(2, Some(Duration::from_millis(50)), "sources[3]");
        let held = slots.one().await.unwrap();
        let pair = slots.reservation(2);
        let e = pair.take().await.unwrap_err().to_string();
        assert!(
            e.contains("2 connections at once wanted, 1 of 2 in use")
                && e.contains("`sources[3].pool_size`")
                && e.contains("`sources[3].pool_timeout`")
                && e.contains("50ms"),
            "{e}"
        );
        // The failed wait took nothing: once the holder is done, both are reserved.
        drop(held);
        let _first = pair.take().await.unwrap();
        assert_eq!(slots.semaphore.available_permits(), 0);
        let e = slots.one().await.unwrap_err().to_string();
        assert!(e.contains("a connection wanted, 2 of 2 in use"), "{e}");
    }
}
