//! Time as the lease loops see it: a [`Clock`] seam (tokio's clock in the
//! daemon, a virtual one in unit tests) and the shared [`Backoff`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Now and sleeping: what the watcher and the keeper need of time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;

    /// Resolves at `at` (at once if it passed).
    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send;

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        self.sleep_until(self.now() + d)
    }
}

/// Tokio's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(at)
    }
}

/// Exponential backoff: 100 ms doubling to 5 s (upstream's watch backoff).
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
}

/// A virtual clock for unit tests: sleeping moves it forward at once (like
/// tokio's paused clock), so a test runs in no real time and can still
/// assert when things happened.
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct FakeClock {
    start: Instant,
    elapsed: std::sync::Arc<std::sync::Mutex<Duration>>,
}

#[cfg(test)]
impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

#[cfg(test)]
impl FakeClock {
    pub fn new() -> Self {
        FakeClock {
            start: Instant::now(),
            elapsed: Default::default(),
        }
    }

    /// Virtual time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap()
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    async fn sleep_until(&self, at: Instant) {
        {
            let mut e = self.elapsed.lock().unwrap();
            *e = (*e).max(at.saturating_duration_since(self.start));
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[tokio::test]
    async fn the_fake_clock_moves_when_slept_on() {
        let c = FakeClock::new();
        c.sleep(Duration::from_secs(3)).await;
        assert_eq!(c.elapsed(), Duration::from_secs(3));
        // A deadline in the past does not move it back.
        c.sleep_until(c.now() - Duration::from_secs(1)).await;
        assert_eq!(c.elapsed(), Duration::from_secs(3));
    }
}
