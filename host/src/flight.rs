//! Single flight: the loads of one key in one process share one compile.
//!
//! The first load that misses a key leads: it compiles, and its artifact is
//! then held here until the worker has tried to store it. Loads of the same
//! key meanwhile, at the same moment or just after (before the entry is on
//! disk), follow: they wait for the leader and take a clone of its artifact
//! instead of compiling again. A leader that fails or unwinds leaves its
//! followers to compile for themselves, as if no one had led.

use crate::key::Key;
use parking_lot::{Condvar, Mutex};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

type Shared = Arc<dyn Any + Send + Sync>;

/// How a flight ended.
enum Outcome {
    /// The leader's artifact.
    Landed(Shared),
    /// The leader failed or unwound: followers compile for themselves.
    Abandoned,
}

/// One key's compile, under way or done.
pub(crate) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    ended: Condvar,
}

impl Flight {
    /// Waits for the leader; its artifact, or `None` if it has none to share.
    pub(crate) fn wait<T: Clone + 'static>(&self) -> Option<T> {
        let mut outcome = self.outcome.lock();
        while outcome.is_none() {
            self.ended.wait(&mut outcome);
        }
        match outcome.as_ref()? {
            Outcome::Landed(shared) => shared.downcast_ref::<T>().cloned(),
            Outcome::Abandoned => None,
        }
    }

    fn end(&self, outcome: Outcome) {
        *self.outcome.lock() = Some(outcome);
        self.ended.notify_all();
    }
}

/// The flights of one cache.
#[derive(Default)]
pub(crate) struct Flights {
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// What joining a key's flight made of the caller.
pub(crate) enum Joined {
    /// The first: compile, then [`Leader::share`].
    Leader(Leader),
    /// Another load leads: [`Flight::wait`] for it.
    Follower(Arc<Flight>),
}

impl Flights {
    /// Joins the flight of `key`, or starts it.
    pub(crate) fn join(self: &Arc<Self>, key: &Key) -> Joined {
        let mut flights = self.flights.lock();
        if let Some(flight) = flights.get(key) {
            return Joined::Follower(flight.clone());
        }
        let flight = Arc::new(Flight { outcome: Mutex::new(None), ended: Condvar::new() });
        flights.insert(*key, flight.clone());
        Joined::Leader(Leader { flights: self.clone(), key: *key, flight, shared: false })
    }

    /// Ends `key`'s flight: its entry is stored, or will not be. Later loads
    /// look on disk again.
    pub(crate) fn land(&self, key: &Key) {
        self.flights.lock().remove(key);
    }
}

/// The load that compiles for the others.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
    shared: bool,
}

impl Leader {
    /// Hands `artifact` to the followers, and to the loads that come before
    /// [`Flights::land`] is called for its key; returns what calls it.
    pub(crate) fn share<T: Send + Sync + 'static>(mut self, artifact: T) -> impl FnOnce() + Send + 'static {
        self.flight.end(Outcome::Landed(Arc::new(artifact)));
        self.shared = true;
        let (flights, key) = (self.flights.clone(), self.key);
        move || flights.land(&key)
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.shared {
            self.flights.land(&self.key);
            self.flight.end(Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_take_the_leaders_artifact_until_it_lands() {
        let flights = Arc::new(Flights::default());
        let key = Key::of(b"k");
        let Joined::Leader(leader) = flights.join(&key) else { panic!("the first load did not lead") };
        let follower = std::thread::spawn({
            let flights = flights.clone();
            move || match flights.join(&key) {
                Joined::Follower(flight) => flight.wait::<String>(),
                Joined::Leader(_) => panic!("a second leader while the first compiles"),
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let land = leader.share("artifact".to_string());
        assert_eq!(follower.join().unwrap().as_deref(), Some("artifact"));
        // Back to back, before it lands: still shared.
        assert!(matches!(flights.join(&key), Joined::Follower(_)));
        land();
        assert!(matches!(flights.join(&key), Joined::Leader(_)), "a landed flight was still followed");
    }

    #[test]
    fn a_leader_that_fails_leaves_its_followers_to_compile() {
        let flights = Arc::new(Flights::default());
        let key = Key::of(b"k");
        let Joined::Leader(leader) = flights.join(&key) else { panic!() };
        let Joined::Follower(flight) = flights.join(&key) else { panic!() };
        drop(leader);
        assert_eq!(flight.wait::<String>(), None);
        assert!(matches!(flights.join(&key), Joined::Leader(_)));
    }
}
